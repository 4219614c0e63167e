//! The mount, for real: kvfs over the emulator, read through the kernel. Named after the
//! sections of docs/SEMANTICS.md.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::{TestEnv, errno_of, eventually};
use kvfs::emulator::{Fault, FaultAction, RequestKind};

#[test]
fn listing_reading_and_stat_over_many_pages() {
    let env = TestEnv::start();
    let mut expected = BTreeSet::new();
    for i in 0..60 {
        let name = format!("secret-{i:02}");
        env.vault()
            .set_secret(&name, &format!("value {i}\nline two"));
        expected.insert(name);
    }
    // A disabled secret is not listed.
    env.vault().set_secret("hidden", "x");
    env.vault().set_enabled("hidden", false);
    let m = env.mount(&["--list-ttl", "1h"]);
    env.vault().reset_counters();

    let listed: BTreeSet<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, expected);
    // The startup check listed the vault (3 pages of 25); ls is served from that listing,
    // and a listing never fetches values.
    let c = env.counters();
    assert_eq!((c.list_secrets, c.get_secret), (0, 0), "{c:?}");

    for i in [0, 24, 25, 59] {
        let name = format!("secret-{i:02}");
        let want = format!("value {i}\nline two");
        assert_eq!(m.read(&name).unwrap(), want.as_bytes(), "no newline added");
        let meta = std::fs::metadata(m.file(&name)).unwrap();
        assert_eq!(meta.len(), want.len() as u64);
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o400);
    }
    assert_eq!(env.counters().get_secret, 4);
}

#[test]
fn listing_follows_next_link_through_every_page() {
    let env = TestEnv::start();
    for i in 0..60 {
        env.vault().set_secret(&format!("s{i}"), "v");
    }
    let m = env.mount(&["--no-startup-check", "--list-ttl", "1h"]);
    assert_eq!(std::fs::read_dir(&m.path).unwrap().count(), 60);
    assert_eq!(std::fs::read_dir(&m.path).unwrap().count(), 60);
    let c = env.counters();
    assert_eq!(c.list_secrets, 3, "ceil(60/25) pages, listed once: {c:?}");
    assert_eq!(c.get_secret, 0);
}

#[test]
fn mtime_is_the_versions_updated_time() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "hunter2");
    let m = env.mount(&[]);
    let meta = std::fs::metadata(m.file("db-password")).unwrap();
    let mtime = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap();
    assert!(
        now.as_secs().abs_diff(mtime.as_secs()) < 120,
        "mtime {mtime:?} vs now {now:?}"
    );
    let xattr = xattr_get(&m.file("db-password"), "user.kvfs.version");
    assert_eq!(xattr.len(), 32, "a version id is 32 hex chars");
}

#[test]
fn missing_and_invalid_names() {
    let env = TestEnv::start();
    env.vault().set_secret("present", "x");
    let m = env.mount(&[]);
    env.vault().reset_counters();
    assert_eq!(errno_of(m.read("absent")), libc::ENOENT);
    let c = env.counters();
    assert_eq!(
        c.total, 0,
        "absent from the startup listing: no request: {c:?}"
    );
    env.vault().reset_counters();
    for bad in [".git", "foo.swp", "a_b", "x.y", &"a".repeat(128)] {
        assert_eq!(errno_of(m.read(bad)), libc::ENOENT, "{bad}");
        assert_eq!(
            errno_of(std::fs::metadata(m.file(bad))),
            libc::ENOENT,
            "{bad}"
        );
    }
    let c = env.counters();
    assert_eq!(c.total, 0, "invalid names cost no request: {c:?}");
    // Names are case-insensitive, as in Key Vault.
    assert_eq!(m.read("PRESENT").unwrap(), b"x");
}

#[test]
fn every_write_type_operation_is_erofs() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let m = env.mount(&[]);
    let f = m.file("s");
    let new = m.file("new");
    use std::os::unix::fs::PermissionsExt;
    let rows: Vec<(&str, std::io::Result<()>)> = vec![
        ("create", std::fs::File::create(&new).map(drop)),
        (
            "write",
            std::fs::OpenOptions::new().write(true).open(&f).map(drop),
        ),
        (
            "truncate",
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&f)
                .map(drop),
        ),
        ("unlink", std::fs::remove_file(&f)),
        ("mkdir", std::fs::create_dir(m.file("d"))),
        ("rmdir", std::fs::remove_dir(m.file("s"))),
        ("rename", std::fs::rename(&f, &new)),
        (
            "chmod",
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)),
        ),
        ("symlink", std::os::unix::fs::symlink("/etc/passwd", &new)),
        ("link", std::fs::hard_link(&f, &new)),
        ("setxattr", xattr_set(&f, "user.kvfs.x", b"1")),
        ("utimes", touch(&f)),
        ("chown", std::os::unix::fs::chown(&f, Some(1), Some(1))),
        ("mknod", mknod(&m.file("node"))),
        ("removexattr", xattr_remove(&f, "user.kvfs.version")),
    ];
    for (op, result) in rows {
        let errno = errno_of(result);
        // rmdir on a file may be refused as ENOTDIR before the read-only check.
        let ok = errno == libc::EROFS || (op == "rmdir" && errno == libc::ENOTDIR);
        assert!(ok, "{op}: errno {errno}, expected EROFS");
    }
    assert_eq!(m.read("s").unwrap(), b"v", "nothing changed");
}

#[test]
fn fifty_concurrent_cold_readers_cost_one_get() {
    let env = TestEnv::start();
    env.vault().set_secret("hot", "value");
    let m = env.mount(&[]);
    env.vault().set_service_latency(Duration::from_millis(300));
    env.vault().reset_counters();
    let path = m.file("hot");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                std::fs::read(path).unwrap()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), b"value");
    }
    assert_eq!(env.counters().get_secret, 1);
}

#[test]
fn cache_ttl_expiry_refetches() {
    let env = TestEnv::start();
    env.vault().set_secret("rot", "old-value");
    let m = env.mount(&["--cache-ttl", "1s"]);
    assert_eq!(m.read("rot").unwrap(), b"old-value");
    env.vault().reset_counters();
    assert_eq!(m.read("rot").unwrap(), b"old-value");
    env.vault().set_secret("rot", "new");
    assert!(
        eventually(Duration::from_secs(5), || m.read("rot").unwrap() == b"new"),
        "the new value is read after the TTL"
    );
    let gets = env.counters().get_secret;
    assert!(
        (1..=4).contains(&gets),
        "refetched about once a second, got {gets}"
    );
}

#[test]
fn negative_cache_then_appearance() {
    let env = TestEnv::start();
    let m = env.mount(&["--negative-ttl", "2s"]);
    env.vault().reset_counters();
    assert_eq!(errno_of(m.read("later")), libc::ENOENT);
    assert_eq!(errno_of(m.read("later")), libc::ENOENT);
    assert_eq!(env.counters().total, 0, "absent from a fresh listing");
    env.vault().set_secret("later", "here");
    let started = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(5), || m
        .read("later")
        .is_ok()));
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "within the negative TTL"
    );
    assert_eq!(m.read("later").unwrap(), b"here");
    let c = env.counters();
    assert_eq!(c.get_secret, 1, "{c:?}");
}

#[test]
fn errno_rows() {
    let env = TestEnv::start();
    for name in ["ok", "off", "t429", "t500", "t503", "hang", "drop", "rbac"] {
        env.vault().set_secret(name, "v");
    }
    env.vault().set_enabled("off", false);
    let m = env.mount(&["--request-timeout", "2s"]);
    let fault = |name: &str, action: FaultAction| Fault {
        kind: Some(RequestKind::GetSecret),
        name: Some(name.into()),
        action,
        times: None,
    };
    let status = |s: u16| FaultAction::Status {
        status: s,
        retry_after: None,
    };
    env.vault().add_fault(fault(
        "t429",
        FaultAction::Status {
            status: 429,
            retry_after: Some(1),
        },
    ));
    env.vault().add_fault(fault("t500", status(500)));
    env.vault().add_fault(fault("t503", status(503)));
    env.vault().add_fault(fault("hang", FaultAction::Hang));
    env.vault().add_fault(fault("drop", FaultAction::Drop));
    // Definitive answers first: once a transient failure opens an outage window, misses
    // fail at once with that failure (docs/SEMANTICS.md, "Waiting").
    assert_eq!(m.read("ok").unwrap(), b"v");
    assert_eq!(errno_of(m.read("missing")), libc::ENOENT, "404");
    assert_eq!(errno_of(m.read("off")), libc::EACCES, "403 SecretDisabled");
    env.vault().set_rbac_allowed(false);
    assert_eq!(
        errno_of(m.read("rbac")),
        libc::EACCES,
        "403 ForbiddenByRbac"
    );
    env.vault().set_rbac_allowed(true);
    // Each transient row in a mount of its own: a transient failure opens an outage window
    // in which later misses fail at once, and each row must reach Key Vault.
    for (name, min_wait) in [
        ("hang", 1900),
        ("t429", 0),
        ("t500", 0),
        ("t503", 0),
        ("drop", 0),
    ] {
        let path = env.mountpoint(&format!("m-{name}"));
        let m = common::Mount::start(env.command(&path, &["--request-timeout", "2s"]), path);
        let faults_before = env.counters().faults_injected;
        let started = Instant::now();
        assert_eq!(errno_of(m.read(name)), libc::EIO, "{name}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(min_wait) && waited < Duration::from_secs(4),
            "{name} waited {waited:?}"
        );
        assert!(
            env.counters().faults_injected > faults_before,
            "{name} reached Key Vault"
        );
    }
}

#[test]
fn untrusted_certificate_is_eio_after_mount() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let other = kvfs::emulator::EmulatorConfig::new(env.dir.path().join("other"));
    let other = env
        .runtime
        .block_on(kvfs::emulator::Emulator::start(other))
        .unwrap();
    // Trust the other emulator's CA only: the vault's certificate is then untrusted.
    let path = env.mountpoint("mnt");
    let mut cmd = common::kvfs_command();
    cmd.arg("mount")
        .arg(&path)
        .args(["--vault-url", &env.emulator().vault_url()])
        .args(["--ca-file", &other.ca_path().display().to_string()])
        .args(["--imds-endpoint", &env.emulator().imds_endpoint()])
        .args([
            "--disable-challenge-resource-verification",
            "--no-startup-check",
        ]);
    let m = common::Mount::start(cmd, path);
    assert_eq!(errno_of(m.read("s")), libc::EIO);
}

#[test]
fn unmount_from_outside_exits_zero() {
    let env = TestEnv::start();
    let mut m = env.mount(&[]);
    // A plain (not lazy) unmount can find the mount busy for a moment while the kernel still
    // holds a reference from the startup probe: retried, with its message kept.
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        let out = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&m.path)
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        out.status.success()
    });
    assert!(ok, "fusermount3 -u: {last}");
    let mut child = m.child.take().unwrap();
    let status = common::wait_with_deadline(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn other_users_are_refused_without_allow_other() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let m = env.mount(&["--file-mode", "0444", "--dir-mode", "0555"]);
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("cat")
        .arg(m.file("s"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(m.read("s").unwrap(), b"v", "the mounting user reads");
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let mut m = env.mount(&[]);
    assert_eq!(m.read("s").unwrap(), b"v");
    let status = m.terminate();
    assert!(status.success(), "{status}");
    assert!(!common::is_mounted(&m.path));
}

#[test]
fn stale_mountpoint_is_cleaned_and_reused() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let mut first = env.mount(&[]);
    let mut child = first.child.take().unwrap();
    common::kill_with_guard(&mut child);
    assert_eq!(errno_of(std::fs::read_dir(&first.path)), libc::ENOTCONN);
    let second = env.mount(&[]);
    assert_eq!(second.read("s").unwrap(), b"v");
}

fn xattr_get(path: &std::path::Path, name: &str) -> Vec<u8> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        len >= 0,
        "getxattr {name}: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(len as usize);
    buf
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a value of the length passed.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn mknod(path: &std::path::Path) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path; a FIFO needs no device number.
    let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | 0o600, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn xattr_remove(path: &std::path::Path, name: &str) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn touch(path: &std::path::Path) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path; a null times pointer means "now".
    let rc = unsafe { libc::utimes(p.as_ptr(), std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn values_never_reach_the_log() {
    let env = TestEnv::start();
    let value = "canary-value-5b9d0c7e";
    env.vault().set_secret("canary", value);
    // The harness runs kvfs at debug level, the SDK at info.
    let mut m = env.mount(&["--cache-ttl", "1s"]);
    assert_eq!(m.read("canary").unwrap(), value.as_bytes());
    env.vault()
        .set_secret("canary", &format!("{value}-rotated"));
    assert!(common::eventually(Duration::from_secs(5), || {
        m.read("canary").unwrap().ends_with(b"-rotated")
    }));
    let _ = std::fs::read_dir(m.path.join(".versions").join("canary"))
        .unwrap()
        .count();
    assert!(m.terminate().success());
    let log = std::fs::read_to_string(&m.log_path).unwrap();
    assert!(
        log.contains("kernel entry invalidated"),
        "debug logging was on"
    );
    assert!(!log.contains("canary-value"), "a value reached the log");
}
