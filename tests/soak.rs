//! Soak: one real mount under concurrent reads, rotations, `ls`/`stat` loops and injected
//! faults for a fixed time. Asserts zero wrong bytes, reader errors only EIO, and no growth of
//! kvfs's file descriptors, threads or RSS between a sample after warm-up and the end.
//!
//! Every value encodes its secret and generation (`soak-07#g12#` then padding from the same
//! pair), so a byte from another secret, another generation or a torn read cannot match any
//! value ever written for the secret read.
//!
//! Short in CI: `scripts/loopback-only cargo test --test soak` runs 20 s. Long mode:
//! `KVFS_SOAK_SECS=3600 scripts/loopback-only cargo test --release --test soak -- --nocapture`.
//!
//! Margins between the warm-up sample and the end: fds +8, threads +8 (tokio's blocking pool
//! grows and shrinks on its own schedule), RSS +16 MiB or +25%, whichever is larger.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvfs::emulator::{Fault, FaultAction};

const SECRETS: usize = 20;
const READERS: usize = 4;

fn name(i: usize) -> String {
    format!("soak-{i:02}")
}

/// The value of `name` at generation `g`: self-describing, 40..1000 bytes.
fn value(name: &str, g: u64) -> String {
    let head = format!("{name}#g{g}#");
    let len = 40 + (g as usize * 37) % 960;
    let mut v = head.clone();
    while v.len() < len {
        v.push_str(&head);
    }
    v.truncate(len);
    v
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    fds: usize,
    threads: usize,
    rss_kib: usize,
}

fn sample(pid: i32) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        fds,
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
    }
}

#[test]
fn soak_reads_rotations_and_faults() {
    let secs: u64 = std::env::var("KVFS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let run_for = Duration::from_secs(secs);
    let warm_up = Duration::from_secs_f64((secs as f64 * 0.15).max(3.0));

    let env = common::TestEnv::start();
    // Every value ever written per secret; a value is added before the vault can serve it.
    let written: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    for i in 0..SECRETS {
        let n = name(i);
        let v = value(&n, 0);
        written.lock().unwrap().insert(n.clone(), vec![v.clone()]);
        env.vault().set_secret(&n, &v);
    }
    let mut mount = env.mount(&[
        "--cache-ttl",
        "1s",
        "--list-ttl",
        "2s",
        "--request-timeout",
        "2s",
    ]);
    let pid = mount.pid();
    let root = mount.path.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let faulting = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<(i32, bool), u64>>> = Arc::default();

    std::thread::scope(|s| {
        for r in 0..READERS {
            let (stop, reads, wrong, errors, written, faulting) =
                (&stop, &reads, &wrong, &errors, &written, &faulting);
            let root = root.clone();
            s.spawn(move || {
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    i = (i * 7 + 3) % SECRETS;
                    let n = name(i);
                    match std::fs::read(root.join(&n)) {
                        Ok(bytes) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                            let ok = written.lock().unwrap()[&n]
                                .iter()
                                .any(|v| v.as_bytes() == bytes.as_slice());
                            if !ok {
                                wrong.fetch_add(1, Ordering::Relaxed);
                                eprintln!(
                                    "WRONG BYTES for {n}: {:?}",
                                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                                );
                            }
                        }
                        Err(e) => {
                            let errno = e.raw_os_error().unwrap_or(-1);
                            let during = faulting.load(Ordering::Relaxed);
                            *errors.lock().unwrap().entry((errno, during)).or_default() += 1;
                        }
                    }
                }
            });
        }
        // Rotator: a new generation of one secret every 200 ms.
        let rotations = s.spawn(|| {
            let mut count = 0u64;
            let mut g = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let n = name((g as usize * 11) % SECRETS);
                let v = value(&n, g);
                written.lock().unwrap().get_mut(&n).unwrap().push(v.clone());
                env.vault().set_secret(&n, &v);
                g += 1;
                count += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            count
        });
        // Fault injector: a 300 ms window of one fault kind, then 700 ms without.
        let faults = s.spawn(|| {
            let actions = [
                FaultAction::Status {
                    status: 503,
                    retry_after: None,
                },
                FaultAction::Status {
                    status: 429,
                    retry_after: Some(1),
                },
                FaultAction::Status {
                    status: 429,
                    retry_after: None,
                },
                FaultAction::Latency(Duration::from_millis(300)),
                FaultAction::Drop,
            ];
            let mut windows = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let action = actions[windows as usize % actions.len()].clone();
                faulting.store(true, Ordering::Relaxed);
                env.vault().add_fault(Fault {
                    kind: None,
                    name: None,
                    action,
                    times: None,
                });
                std::thread::sleep(Duration::from_millis(300));
                env.vault().clear_faults();
                // Errors can surface up to the request timeout after a window closes.
                std::thread::sleep(Duration::from_millis(700));
                faulting.store(false, Ordering::Relaxed);
                windows += 1;
                std::thread::sleep(Duration::from_millis(700));
            }
            windows
        });
        // ls and stat loop.
        let listings = s.spawn(|| {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(dir) = std::fs::read_dir(&root) {
                    for entry in dir.flatten() {
                        let _ = std::fs::metadata(entry.path());
                    }
                }
                count += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            count
        });

        std::thread::sleep(warm_up);
        let start = sample(pid);
        std::thread::sleep(run_for.saturating_sub(warm_up));
        stop.store(true, Ordering::Relaxed);
        let rotations = rotations.join().unwrap();
        let windows = faults.join().unwrap();
        let listings = listings.join().unwrap();
        env.vault().clear_faults();
        // Idle for a moment so in-flight requests end before the last sample.
        std::thread::sleep(Duration::from_secs(2));
        let end = sample(pid);
        let errors = errors.lock().unwrap().clone();
        eprintln!(
            "soak {secs}s: {} reads, {rotations} rotations, {windows} fault windows, {listings} ls passes, \
             {} wrong reads; errors (errno, during a fault window) -> count: {errors:?}",
            reads.load(Ordering::Relaxed),
            wrong.load(Ordering::Relaxed),
        );
        eprintln!("kvfs after warm-up: {start:?}; at the end: {end:?}");

        assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong bytes were read");
        assert!(reads.load(Ordering::Relaxed) > 0 && rotations > 0 && windows > 0);
        assert!(
            errors.keys().all(|(errno, _)| *errno == libc::EIO),
            "readers saw errors other than EIO: {errors:?}"
        );
        assert!(end.fds <= start.fds + 8, "fds grew: {start:?} -> {end:?}");
        assert!(
            end.threads <= start.threads + 8,
            "threads grew: {start:?} -> {end:?}"
        );
        let rss_margin = (16 * 1024).max(start.rss_kib / 4);
        assert!(
            end.rss_kib <= start.rss_kib + rss_margin,
            "RSS grew: {start:?} -> {end:?}"
        );
    });
    let exited = mount
        .child
        .as_mut()
        .and_then(|c| c.try_wait().ok().flatten());
    assert!(exited.is_none(), "kvfs exited during the soak: {exited:?}");
    assert!(
        mount.terminate().success(),
        "kvfs exits cleanly after the soak"
    );
}
