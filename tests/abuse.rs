//! No reader can hurt the vault or the other readers: what a hostile or careless reader costs,
//! counted at the emulator, on a real mount. Named after docs/SEMANTICS.md, "Request budget",
//! "Revocation" and "Bounded memory". Figures are printed (`--nocapture`) for the record.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use common::{TestEnv, errno_of, eventually};
use kvfs::emulator::{Fault, FaultAction, RequestKind};

fn requests(env: &TestEnv) -> (u64, u64, u64) {
    let c = env.counters();
    (c.get_secret, c.list_secrets, c.list_versions)
}

#[test]
fn absent_names_cost_no_request() {
    let env = TestEnv::start();
    env.vault().set_secret("present", "v");
    let m = env.mount(&["--negative-ttl", "2s"]);
    env.vault().reset_counters();
    let started = Instant::now();
    for i in 0..10_000 {
        let err = std::fs::metadata(m.file(&format!("absent-{i}")));
        assert_eq!(errno_of(err), libc::ENOENT);
    }
    let took = started.elapsed();
    let (gets, lists, versions) = requests(&env);
    println!(
        "10,000 absent names in {took:?}: {gets} GETs, {lists} list pages, {versions} version listings"
    );
    assert_eq!(gets, 0);
    // At most one re-list per negative TTL (2 s) while the loop ran.
    let bound = took.as_secs() / 2 + 1;
    assert!(lists <= bound, "{lists} listings in {took:?}");

    env.vault().reset_counters();
    for i in 0..2_000 {
        let err = std::fs::metadata(m.path.join(format!(".versions/absent-{i}")));
        assert_eq!(errno_of(err), libc::ENOENT);
    }
    let (gets, lists, versions) = requests(&env);
    println!(
        "2,000 .versions/<absent>: {gets} GETs, {lists} list pages, {versions} version listings"
    );
    assert_eq!((gets, versions), (0, 0));

    // A new secret is found within the negative TTL however many absent names were asked.
    env.vault().set_secret("newcomer", "hello");
    let seen = Instant::now();
    assert!(eventually(Duration::from_secs(6), || m
        .read("newcomer")
        .is_ok()));
    println!("a new secret appeared after {:?}", seen.elapsed());
    assert_eq!(m.read("newcomer").unwrap(), b"hello");
}

#[test]
fn listing_a_large_vault_twice() {
    let env = TestEnv::start();
    for i in 0..5_000 {
        env.vault()
            .set_secret(&format!("s{i:04}"), &format!("value {i}"));
    }
    // The budget is not what this measures: wide enough not to hold requests back.
    let m = env.mount(&[
        "--max-request-rate",
        "100000",
        "--max-request-burst",
        "100000",
        "--list-ttl",
        "10m",
    ]);
    for pass in 1..=2 {
        env.vault().reset_counters();
        let started = Instant::now();
        let out = std::process::Command::new("ls")
            .arg("-l")
            .arg(&m.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5_001);
        let (gets, lists, versions) = requests(&env);
        println!(
            "ls -l of 5,000 secrets, pass {pass}: {gets} GETs, {lists} list pages, {versions} version listings in {:?}",
            started.elapsed()
        );
        if pass == 2 {
            assert_eq!(
                gets + lists + versions,
                0,
                "the second pass is served from memory"
            );
        } else {
            assert!(gets <= 5_000, "one GET per secret at most: {gets}");
        }
    }
    for pass in 1..=2 {
        env.vault().reset_counters();
        let started = Instant::now();
        let out = std::process::Command::new("ls")
            .arg("-lR")
            .arg(m.path.join(".versions"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (gets, lists, versions) = requests(&env);
        println!(
            "ls -lR .versions of 5,000 secrets, pass {pass}: {gets} GETs, {lists} list pages, {versions} version listings in {:?}",
            started.elapsed()
        );
        if pass == 2 {
            assert!(
                gets + lists + versions <= 50,
                "the second pass is served from memory: {gets} + {lists} + {versions}"
            );
        }
    }
}

#[test]
fn the_request_budget_holds_and_says_so() {
    let env = TestEnv::start();
    for i in 0..60 {
        env.vault().set_secret(&format!("c{i}"), "v");
    }
    let m = env.mount(&["--max-request-rate", "20", "--max-request-burst", "10"]);
    env.vault().reset_counters();
    let started = Instant::now();
    std::thread::scope(|s| {
        for i in 0..60 {
            let m = &m;
            s.spawn(move || assert_eq!(m.read(&format!("c{i}")).unwrap(), b"v"));
        }
    });
    let took = started.elapsed();
    let gets = env.counters().get_secret;
    println!("60 cold reads at 20/s, burst 10: {gets} GETs in {took:?}");
    assert_eq!(gets, 60);
    // 50 requests beyond the burst at 20/s take 2.5 s at least.
    assert!(took >= Duration::from_millis(2_300), "{took:?}");
    let log = std::fs::read_to_string(&m.log_path).unwrap();
    let warnings = log.matches("request budget").count();
    assert!(
        (1..=2).contains(&warnings),
        "one rate-limited warning: {warnings}"
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

#[test]
fn one_slow_secret_holds_up_nobody_else() {
    let env = TestEnv::start();
    env.vault().set_secret("slow", "v");
    env.vault().set_secret("cached", "v");
    env.vault().set_secret("late", "v");
    for i in 0..200 {
        env.vault().set_secret(&format!("cold{i}"), "v");
    }
    let m = env.mount(&["--request-timeout", "4s"]);
    assert!(m.read("cached").is_ok());
    env.vault().add_fault(Fault {
        kind: Some(RequestKind::GetSecret),
        name: Some("slow".into()),
        action: FaultAction::Hang,
        times: None,
    });
    let (cached, invalid, cold) = std::thread::scope(|s| {
        let hung = s.spawn(|| errno_of(m.read("slow")));
        std::thread::sleep(Duration::from_millis(200));
        let time = |f: &dyn Fn(usize)| {
            (0..200)
                .map(|i| {
                    let t = Instant::now();
                    f(i);
                    t.elapsed()
                })
                .collect::<Vec<_>>()
        };
        let cached = time(&|i| {
            // A new spelling each time: a lookup that reaches kvfs, served from memory.
            let spelling: String = "cached"
                .chars()
                .enumerate()
                .map(|(j, c)| {
                    if i >> j & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert!(std::fs::metadata(m.file(&spelling)).is_ok());
        });
        let invalid = time(&|i| {
            assert_eq!(
                errno_of(std::fs::metadata(m.file(&format!("bad_{i}")))),
                libc::ENOENT
            )
        });
        let cold = time(&|i| assert_eq!(m.read(&format!("cold{i}")).unwrap(), b"v"));
        assert_eq!(hung.join().unwrap(), libc::EIO, "the hung secret times out");
        (cached, invalid, cold)
    });
    for (what, mut samples) in [("cached", cached), ("invalid", invalid), ("cold", cold)] {
        let (p50, p99) = (
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99),
        );
        println!("while one secret hangs: {what} lookups p50 {p50:?} p99 {p99:?}");
        assert!(p99 < Duration::from_millis(500), "{what}: p99 {p99:?}");
    }
    // The timeout of one secret while others were answered opens no outage window.
    assert_eq!(m.read("cold0").unwrap(), b"v");
    assert_eq!(m.read("late").unwrap(), b"v");
}

/// Reads a file through a descriptor opened before, from the start.
fn read_held(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

fn revocation_reaches_every_path(rotation: &str) {
    let env = TestEnv::start();
    let v1 = env.vault().set_secret("deleted", "old one");
    env.vault().set_secret("deleted", "new one");
    let w1 = env.vault().set_secret("disabled", "old two");
    env.vault().set_secret("disabled", "new two");
    let m = env.mount(&["--cache-ttl", "2s", "--rotation", rotation]);
    let open = |p: &str| std::fs::File::open(m.path.join(p)).unwrap();
    let held = [
        (open("deleted"), "deleted", libc::ENOENT),
        (
            open(&format!(".versions/deleted/{v1}")),
            "deleted",
            libc::ENOENT,
        ),
        (open("disabled"), "disabled", libc::EACCES),
    ];
    for (f, _, _) in &held {
        assert!(
            read_held(f).unwrap().starts_with(b"new") || read_held(f).unwrap().starts_with(b"old")
        );
    }
    let old_disabled = open(&format!(".versions/disabled/{w1}"));
    assert_eq!(read_held(&old_disabled).unwrap(), b"old two");

    env.vault().delete_secret("deleted");
    env.vault().set_enabled("disabled", false);
    let started = Instant::now();
    for (file, name, errno) in &held {
        assert!(
            eventually(Duration::from_secs(5), || read_held(file)
                .err()
                .and_then(|e| e.raw_os_error())
                == Some(*errno)),
            "{rotation}: a held descriptor of {name} still reads"
        );
    }
    println!(
        "{rotation}: every held descriptor refused after {:?}",
        started.elapsed()
    );
    assert_eq!(errno_of(m.read("deleted")), libc::ENOENT);
    assert_eq!(
        errno_of(std::fs::read(
            m.path.join(format!(".versions/deleted/{v1}"))
        )),
        libc::ENOENT
    );
    assert_eq!(errno_of(m.read("disabled")), libc::EACCES);
    // Disabling a secret disables its latest version; an older enabled version stays readable
    // when asked for anew.
    assert!(eventually(Duration::from_secs(5), || std::fs::read(
        m.path.join(format!(".versions/disabled/{w1}"))
    )
    .is_ok_and(|v| v == b"old two")));
}

#[test]
fn revocation_reaches_every_path_new_inode() {
    revocation_reaches_every_path("new-inode");
}

#[test]
fn revocation_reaches_every_path_in_place() {
    revocation_reaches_every_path("in-place");
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn memory_is_bounded_under_any_lookup_pattern() {
    let env = TestEnv::start();
    let name = "abcdefghijklmnopqrst";
    env.vault().set_secret(name, "v");
    let m = env.mount(&[]);
    let spelling = |i: u32| -> String {
        name.chars()
            .enumerate()
            .map(|(j, c)| {
                if i >> j & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    };
    // Warm up: thread pools and allocator arenas reach their working size.
    for i in 0..20_000 {
        let _ = std::fs::metadata(m.file(&spelling(i)));
        let _ = std::fs::metadata(m.file(&format!("warm-{i}")));
    }
    let before = rss_kb(m.pid());
    for i in 20_000..220_000 {
        assert!(std::fs::metadata(m.file(&spelling(i))).is_ok());
    }
    for i in 0..100_000 {
        let _ = std::fs::metadata(m.file(&format!("absent-{i}")));
    }
    let after = rss_kb(m.pid());
    println!(
        "200,000 spellings + 100,000 absent names: RSS {before} kB -> {after} kB ({:+} kB)",
        after as i64 - before as i64
    );
    assert!(after < before + 5 * 1024, "RSS grew {before} -> {after} kB");
    assert_eq!(env.counters().get_secret, 1);
}

#[test]
fn ioctls_are_answered_without_a_log_line() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "v");
    // At the level kvfs logs by default (the test harness's debug level has fuser trace
    // every request).
    let path = env.mountpoint("mnt");
    let mut cmd = env.command(&path, &[]);
    cmd.env_remove("KVFS_LOG");
    let m = common::Mount::start(cmd, path);
    let file = std::fs::File::open(m.file("db-password")).unwrap();
    let before = std::fs::metadata(&m.log_path).unwrap().len();
    for _ in 0..50_000 {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS on an open descriptor with a buffer of the size it fills.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }
    let grown = std::fs::metadata(&m.log_path).unwrap().len() - before;
    println!("50,000 ioctls added {grown} bytes of log");
    assert!(grown < 10 * 1024, "{grown} bytes");
}

#[test]
fn hostile_names_get_an_errno_and_cost_nothing() {
    let env = TestEnv::start();
    let m = env.mount(&[]);
    env.vault().reset_counters();
    let long = "a".repeat(255);
    let names: [&OsStr; 5] = [
        OsStr::from_bytes(b"\xff\xfe"),
        OsStr::from_bytes(long.as_bytes()),
        OsStr::new("a_b"),
        OsStr::new(".git"),
        OsStr::new("x\ny"),
    ];
    for name in names {
        assert_eq!(errno_of(std::fs::metadata(m.path.join(name))), libc::ENOENT);
    }
    assert_eq!(env.counters().total, 0);
}
