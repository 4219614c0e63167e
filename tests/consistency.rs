//! docs/SEMANTICS.md "Consistency", for real: rotation through the kernel's caches, no torn
//! reads, stale serving through an outage and its end, polite throttling, secrets appearing
//! and disappearing, versions and metadata.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestEnv, errno_of, eventually};
use kvfs::emulator::{Fault, FaultAction, RequestKind, SecretOptions};

/// Polls until `path` reads exactly `want`; returns how long that took.
fn time_until_read(m: &common::Mount, name: &str, want: &[u8], limit: Duration) -> Duration {
    let started = Instant::now();
    assert!(
        eventually(limit, || m.read(name).is_ok_and(|v| v == want)),
        "{name} never read as the new value within {limit:?}"
    );
    started.elapsed()
}

#[test]
fn rotation_reaches_readers_for_every_size_change() {
    let env = TestEnv::start();
    env.vault().set_secret("rot", "medium-value");
    let m = env.mount(&["--cache-ttl", "2s"]);
    assert_eq!(m.read("rot").unwrap(), b"medium-value");
    // An open file keeps the version it opened.
    let mut held = std::fs::File::open(m.file("rot")).unwrap();
    let mut first = [0u8; 3];
    held.read_exact(&mut first).unwrap();

    let mut worst = Duration::ZERO;
    for (kind, value) in [
        ("same size", "MEDIUM-VALUE"),
        ("longer", "a much longer value than the one before it"),
        ("shorter", "s"),
    ] {
        env.vault().set_secret("rot", value);
        let took = time_until_read(&m, "rot", value.as_bytes(), Duration::from_secs(10));
        assert_eq!(
            std::fs::metadata(m.file("rot")).unwrap().len(),
            value.len() as u64,
            "{kind}"
        );
        // Within the TTL plus one refresh period (0.8 x TTL) and scheduling slack.
        assert!(took < Duration::from_secs(5), "{kind}: {took:?}");
        worst = worst.max(took);
    }
    eprintln!("worst rotation-to-reader time: {worst:?}");
    let mut rest = String::new();
    held.read_to_string(&mut rest).unwrap();
    assert_eq!(
        format!("{}{rest}", String::from_utf8_lossy(&first)),
        "medium-value"
    );
}

#[test]
fn no_torn_reads_across_many_rotations() {
    hammer(&[]);
}

#[test]
fn no_torn_reads_across_many_rotations_in_place() {
    hammer(&["--rotation", "in-place"]);
}

fn hammer(flags: &[&str]) {
    let env = TestEnv::start();
    // Version i is one letter repeated to a length that depends on i: a mix is detectable.
    let value = |i: usize| {
        let letter = (b'A' + (i % 26) as u8) as char;
        letter.to_string().repeat(1000 + (i * 7919) % 24000)
    };
    env.vault().set_secret("hammer", &value(0));
    let mut args = vec!["--cache-ttl", "200ms"];
    args.extend_from_slice(flags);
    let m = env.mount(&args);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, torn) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let (path, stop, reads, torn) =
                (m.file("hammer"), stop.clone(), reads.clone(), torn.clone());
            std::thread::spawn(move || {
                let chunk = [1usize, 7, 4096, 100][t];
                let mut buf = vec![0u8; chunk];
                while !stop.load(Ordering::Relaxed) {
                    let mut f = std::fs::File::open(&path).unwrap();
                    let mut got = Vec::new();
                    loop {
                        let n = f.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    let whole = got.first().is_some_and(|&c| {
                        got.iter().all(|&b| b == c)
                            && (0..200)
                                .any(|i| value(i).len() == got.len() && value(i).as_bytes()[0] == c)
                    });
                    if !whole {
                        torn.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut rotations = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        rotations += 1;
        env.vault().set_secret("hammer", &value(rotations));
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let (reads, torn) = (reads.load(Ordering::Relaxed), torn.load(Ordering::Relaxed));
    eprintln!("{flags:?}: {rotations} rotations, {reads} reads, {torn} torn");
    assert_eq!(torn, 0, "torn reads out of {reads}");
    assert!(reads > 100, "only {reads} reads");
    let seen = env
        .counters()
        .get_by_name
        .get("hammer")
        .copied()
        .unwrap_or(0);
    assert!(seen >= 5, "rotations were fetched ({seen} GETs)");
}

/// A file bind-mounted on its own, as Kubernetes does for a subPath volume mount.
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn bind(source: &std::path::Path, target: &std::path::Path) -> BindMount {
    std::fs::write(target, b"").unwrap();
    let ok = std::process::Command::new("mount")
        .arg("--bind")
        .arg(source)
        .arg(target)
        .status()
        .unwrap()
        .success();
    assert!(ok, "bind mount of {}", source.display());
    BindMount(target.to_owned())
}

#[test]
fn subpath_bind_mount_follows_rotation_in_place() {
    let env = TestEnv::start();
    env.vault().set_secret("sub", "first");
    let m = env.mount(&["--cache-ttl", "1s", "--rotation", "in-place"]);
    let target = env.dir.path().join("subpath-file");
    let _bind = bind(&m.file("sub"), &target);
    assert_eq!(std::fs::read(&target).unwrap(), b"first");
    let mut held = std::fs::File::open(&target).unwrap();
    let mut first = [0u8; 2];
    held.read_exact(&mut first).unwrap();
    for value in ["FIRST", "a longer second value", "3"] {
        env.vault().set_secret("sub", value);
        assert!(
            eventually(Duration::from_secs(5), || std::fs::read(&target)
                .is_ok_and(|v| v == value.as_bytes())),
            "the bind-mounted file reads {value:?}"
        );
        assert_eq!(
            std::fs::metadata(&target).unwrap().len(),
            value.len() as u64
        );
        assert_eq!(m.read("sub").unwrap(), value.as_bytes());
    }
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    assert_eq!(
        [&first[..], &rest].concat(),
        b"first",
        "an open file keeps its version"
    );
}

#[test]
fn subpath_bind_mount_keeps_its_version_with_new_inode_rotation() {
    // The documented trade-off of the default: what a subPath mount pinned stays pinned.
    let env = TestEnv::start();
    env.vault().set_secret("sub", "first");
    let m = env.mount(&["--cache-ttl", "1s"]);
    let target = env.dir.path().join("subpath-file");
    let _bind = bind(&m.file("sub"), &target);
    env.vault().set_secret("sub", "second");
    assert!(eventually(Duration::from_secs(5), || m
        .read("sub")
        .is_ok_and(|v| v == b"second")));
    assert_eq!(std::fs::read(&target).unwrap(), b"first");
}

fn xattr(path: &std::path::Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA),
            "{name}"
        );
        return None;
    }
    buf.truncate(len as usize);
    Some(String::from_utf8(buf).unwrap())
}

#[test]
fn outage_serves_stale_until_max_stale_then_recovers() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "cached");
    let m = env.mount(&[
        "--cache-ttl",
        "1s",
        "--max-stale",
        "4s",
        "--request-timeout",
        "2s",
    ]);
    assert_eq!(m.read("s").unwrap(), b"cached");
    let outage = Instant::now();
    env.vault().add_fault(Fault {
        kind: None,
        name: None,
        action: FaultAction::Status {
            status: 503,
            retry_after: None,
        },
        times: None,
    });
    assert!(
        eventually(Duration::from_secs(3), || xattr(
            &m.file("s"),
            "user.kvfs.stale"
        )
        .is_some()),
        "served stale and says so"
    );
    assert_eq!(m.read("s").unwrap(), b"cached");
    assert!(
        eventually(Duration::from_secs(8), || m.read("s").is_err()),
        "stale serving ends at --max-stale"
    );
    let ended = outage.elapsed();
    assert!(
        ended >= Duration::from_millis(3500),
        "ended after {ended:?}, before --max-stale"
    );
    assert_eq!(errno_of(m.read("s")), libc::EIO);
    env.vault().clear_faults();
    assert!(eventually(Duration::from_secs(5), || m
        .read("s")
        .is_ok_and(|v| v == b"cached")));
    assert_eq!(xattr(&m.file("s"), "user.kvfs.stale"), None);
}

#[test]
fn definitive_answers_are_not_masked_by_stale_serving() {
    let env = TestEnv::start();
    env.vault().set_secret("gone", "v");
    env.vault().set_secret("off", "v");
    let m = env.mount(&["--cache-ttl", "1s"]);
    assert!(m.read("gone").is_ok() && m.read("off").is_ok());
    env.vault().delete_secret("gone");
    env.vault().set_enabled("off", false);
    assert!(eventually(Duration::from_secs(5), || m
        .read("gone")
        .err()
        .and_then(|e| e.raw_os_error())
        == Some(libc::ENOENT)));
    assert!(eventually(Duration::from_secs(5), || m
        .read("off")
        .err()
        .and_then(|e| e.raw_os_error())
        == Some(libc::EACCES)));
}

/// Runs 20 readers of 5 cold secrets while Key Vault answers 429; returns GET attempts.
fn storm(retry_after: Option<u32>) -> (u64, u64) {
    let env = TestEnv::start();
    for i in 0..5 {
        env.vault().set_secret(&format!("s{i}"), "v");
    }
    let m = env.mount(&["--request-timeout", "4s"]);
    env.vault().add_fault(Fault {
        kind: Some(RequestKind::GetSecret),
        name: None,
        action: FaultAction::Status {
            status: 429,
            retry_after,
        },
        times: None,
    });
    env.vault().reset_counters();
    let readers: Vec<_> = (0..20)
        .map(|i| {
            let path = m.file(&format!("s{}", i % 5));
            std::thread::spawn(move || std::fs::read(path).map_err(|e| e.raw_os_error()))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), Err(Some(libc::EIO)));
    }
    let during = env.counters().total;
    env.vault().clear_faults();
    env.vault().reset_counters();
    // Reads fail fast (no request) until the outage window ends, then each secret costs one GET.
    for i in 0..5 {
        let name = format!("s{i}");
        assert!(eventually(Duration::from_secs(12), || m
            .read(&name)
            .is_ok_and(|v| v == b"v")));
    }
    (during, env.counters().total)
}

#[test]
fn throttling_is_polite_with_and_without_retry_after() {
    // 5 secrets, single flight each; retries stop within 70% of the 4 s request timeout.
    let (with_after, after_recovery) = storm(Some(1));
    eprintln!(
        "429 storm with Retry-After: 1 -> {with_after} requests; after recovery {after_recovery}"
    );
    assert!(
        with_after <= 5 * 4,
        "Retry-After 1 s within 2.8 s: at most 4 tries per secret, got {with_after}"
    );
    assert_eq!(
        after_recovery, 5,
        "no burst after recovery: one GET per secret"
    );
    let (without, after_recovery) = storm(None);
    eprintln!(
        "429 storm without Retry-After -> {without} requests; after recovery {after_recovery}"
    );
    assert!(
        without <= 5 * 6,
        "exponential backoff from 250 ms: at most 6 tries per secret, got {without}"
    );
    assert_eq!(after_recovery, 5);
}

#[test]
fn secrets_appear_and_disappear() {
    let env = TestEnv::start();
    env.vault().set_secret("old", "v");
    let m = env.mount(&[
        "--cache-ttl",
        "1s",
        "--list-ttl",
        "1s",
        "--negative-ttl",
        "1s",
    ]);
    let listed = || -> Vec<String> {
        std::fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(errno_of(m.read("fresh")), libc::ENOENT);
    assert!(!listed().contains(&"fresh".to_owned()));
    env.vault().set_secret("fresh", "new");
    assert!(
        eventually(Duration::from_secs(3), || m.read("fresh").is_ok()),
        "readable after --negative-ttl"
    );
    assert!(
        eventually(Duration::from_secs(3), || listed()
            .contains(&"fresh".to_owned())),
        "listed after --list-ttl"
    );
    assert_eq!(m.read("old").unwrap(), b"v");
    env.vault().delete_secret("old");
    assert!(eventually(Duration::from_secs(4), || !listed()
        .contains(&"old".to_owned())));
    assert!(eventually(Duration::from_secs(4), || m
        .read("old")
        .is_err()));
    assert_eq!(errno_of(m.read("old")), libc::ENOENT);
}

#[test]
fn versions_directory() {
    let env = TestEnv::start();
    let v1 = env.vault().set_secret("multi", "one");
    let v2 = env.vault().set_secret("multi", "two two");
    let v3 = env.vault().set_secret("multi", "three");
    let m = env.mount(&[]);
    let top: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top, ["multi"], ".versions is not listed");
    let dir = m.path.join(".versions").join("multi");
    let mut listed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut want = vec![v1.clone(), v2.clone(), v3.clone()];
    want.sort();
    assert_eq!(listed, want);
    for (v, value) in [(v1, "one"), (v2, "two two"), (v3, "three")] {
        assert_eq!(std::fs::read(dir.join(&v)).unwrap(), value.as_bytes());
        assert_eq!(
            std::fs::metadata(dir.join(&v)).unwrap().len(),
            value.len() as u64
        );
    }
    assert_eq!(errno_of(std::fs::read(dir.join("0123"))), libc::ENOENT);
    assert_eq!(
        errno_of(std::fs::read(dir.join("ffffffffffffffffffffffffffffffff"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(std::fs::read_dir(m.path.join(".versions").join("absent"))),
        libc::ENOENT
    );
}

#[test]
fn metadata_as_extended_attributes() {
    let env = TestEnv::start();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("env".to_owned(), "prod".to_owned());
    let version = env.vault().set_secret_with(
        "meta",
        "value",
        SecretOptions {
            content_type: Some("text/plain".into()),
            tags,
            expires: Some(4_102_444_800),
            not_before: Some(1_700_000_000),
            ..Default::default()
        },
    );
    let m = env.mount(&[]);
    let f = m.file("meta");
    assert_eq!(xattr(&f, "user.kvfs.version").unwrap(), version);
    assert_eq!(xattr(&f, "user.kvfs.content_type").unwrap(), "text/plain");
    assert_eq!(xattr(&f, "user.kvfs.tags.env").unwrap(), "prod");
    assert_eq!(xattr(&f, "user.kvfs.enabled").unwrap(), "true");
    assert_eq!(
        xattr(&f, "user.kvfs.expires").unwrap(),
        "2100-01-01T00:00:00Z"
    );
    assert_eq!(
        xattr(&f, "user.kvfs.not_before").unwrap(),
        "2023-11-14T22:13:20Z"
    );
    assert!(xattr(&f, "user.kvfs.updated").unwrap().ends_with('Z'));
    assert!(xattr(&f, "user.kvfs.created").is_some());
    assert_eq!(xattr(&f, "user.kvfs.stale"), None);
    assert_eq!(xattr(&f, "user.kvfs.nope"), None);
    // A buffer too small for the value: ERANGE, as getxattr(2) says.
    let p = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new("user.kvfs.version").unwrap();
    let mut small = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let rc = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            small.as_mut_ptr().cast(),
            small.len(),
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    let out = std::process::Command::new("getfattr")
        .args(["-d", "-m", "user.kvfs"])
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("user.kvfs.tags.env=\"prod\""), "{text}");
    assert!(
        !text.contains("value\""),
        "the value is never an attribute: {text}"
    );
}

#[test]
fn steady_state_refresh_costs_one_listing_per_interval() {
    let env = TestEnv::start();
    for i in 0..30 {
        env.vault().set_secret(&format!("s{i:02}"), "v");
    }
    // Fetched more than a second after being written: no same-second confirmation needed.
    std::thread::sleep(Duration::from_millis(2100));
    let m = env.mount(&["--cache-ttl", "1s"]);
    for i in 0..30 {
        assert_eq!(m.read(&format!("s{i:02}")).unwrap(), b"v");
    }
    std::thread::sleep(Duration::from_millis(900));
    env.vault().reset_counters();
    // 8 readers keep reading every secret for 4 s (5 refresh intervals of 0.8 s).
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (root, stop) = (m.path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..30 {
                        assert_eq!(std::fs::read(root.join(format!("s{i:02}"))).unwrap(), b"v");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let c = env.counters();
    eprintln!("steady state: {reads} reads of 30 secrets in 4 s cost {c:?}");
    assert_eq!(c.get_secret, 0, "nothing changed, nothing fetched: {c:?}");
    // ceil(30 / 25) = 2 pages per interval, 4-6 intervals in 4 s.
    assert!((8..=12).contains(&c.list_secrets), "{c:?}");
    assert_eq!(c.total, c.list_secrets, "{c:?}");
}
