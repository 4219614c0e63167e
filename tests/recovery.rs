//! Recovery: shutdown with files held open, a vault that stops accepting kvfs's token, and a
//! rotated `--ca-file`, each against the real `kvfs` binary on a real mount. See
//! docs/SEMANTICS.md, "Shutdown" and "Token and certificate faults".

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestEnv, errno_of, eventually, is_mounted, wait_with_deadline};
use kvfs::emulator::{Emulator, EmulatorConfig, Fault, FaultAction, RequestKind};

fn sigterm(pid: i32) {
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// A process whose cwd is `dir`, for as long as the guard lives.
struct CwdHolder(Child);

impl CwdHolder {
    fn start(dir: &Path) -> Self {
        let child = Command::new("sleep")
            .arg("300")
            .current_dir(dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Self(child)
    }

    /// The holder's cwd, reachable after the mount is detached.
    fn cwd(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/cwd", self.0.id()))
    }
}

impl Drop for CwdHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_at_start(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(0))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn sigterm_with_files_held_open_exits_zero_and_leaves_no_mount() {
    let env = TestEnv::start();
    env.vault().set_secret("held", "held-value");
    env.vault().set_secret("cold", "cold-value");
    env.vault().set_secret("later", "later-value");
    env.vault().set_secret("unread", "unread-value");
    let grace = Duration::from_secs(2);
    let mut m = env.mount(&["--shutdown-grace", "2s"]);
    let mut held = std::fs::File::open(m.file("held")).expect("open held");
    assert_eq!(read_at_start(&mut held).unwrap(), b"held-value");
    // Opened, never read: none of its content is in the page cache.
    let mut unread = std::fs::File::open(m.file("unread")).expect("open unread");
    let holder = CwdHolder::start(&m.path);
    assert!(
        eventually(Duration::from_secs(5), || holder
            .cwd()
            .join("held")
            .exists()),
        "the holder's cwd is inside the mount"
    );

    let mut child = m.child.take().expect("running");
    let start = Instant::now();
    sigterm(child.id() as i32);
    assert!(
        eventually(Duration::from_secs(2), || !is_mounted(&m.path)),
        "the mount is detached at once"
    );
    let detached_after = start.elapsed();
    assert!(
        child.try_wait().unwrap().is_none(),
        "kvfs still serves the holders during the grace"
    );

    // During the grace: the held fd reads, and a secret never read before is looked up and
    // fetched through the detached mount (through the holder's cwd).
    assert_eq!(read_at_start(&mut held).unwrap(), b"held-value");
    assert_eq!(
        std::fs::read(holder.cwd().join("cold")).unwrap(),
        b"cold-value"
    );
    // The mountpoint is free: a new kvfs mounts it while the old one is still in its grace.
    let second = Mount::start(env.command(&m.path, &[]), m.path.clone());
    assert_eq!(second.read("held").unwrap(), b"held-value");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the old kvfs is still in its grace"
    );

    let status = wait_with_deadline(&mut child, grace + Duration::from_secs(3));
    let exited_after = start.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        exited_after >= grace - Duration::from_millis(100),
        "holders are served for the whole grace, exited after {exited_after:?}"
    );

    // After exit: what is in the page cache still reads; anything that needs kvfs fails with
    // ENOTCONN.
    let held_after = read_at_start(&mut held);
    let unread_after = read_at_start(&mut unread);
    let uncached_after = std::fs::read(holder.cwd().join("later"));
    let listing_after = std::fs::read_dir(holder.cwd());
    eprintln!(
        "detached after {detached_after:?}, exited after {exited_after:?}; after exit: held fd {:?}, unread fd {:?}, uncached {:?}, listing {:?}",
        held_after
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        unread_after
            .as_ref()
            .map(|_| "read")
            .map_err(|e| e.raw_os_error()),
        uncached_after
            .as_ref()
            .map(|_| "read")
            .map_err(|e| e.raw_os_error()),
        listing_after
            .as_ref()
            .map(|_| "listed")
            .map_err(|e| e.raw_os_error()),
    );
    assert_eq!(held_after.unwrap(), b"held-value", "page cache");
    assert_eq!(errno_of(unread_after), libc::ENOTCONN);
    assert_eq!(errno_of(uncached_after), libc::ENOTCONN);
    assert_eq!(errno_of(listing_after), libc::ENOTCONN);

    // The new mount is the only one on the path, and unaffected.
    assert_eq!(second.read("cold").unwrap(), b"cold-value");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let on_path = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(m.path.to_str().unwrap()))
        .count();
    assert_eq!(on_path, 1, "{mounts}");
    drop(second);
    assert!(!is_mounted(&m.path));
}

#[test]
fn sigterm_without_holders_exits_at_once() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let mut m = env.mount(&["--shutdown-grace", "30s"]);
    assert_eq!(m.read("s").unwrap(), b"v");
    let mut child = m.child.take().expect("running");
    let start = Instant::now();
    sigterm(child.id() as i32);
    let status = wait_with_deadline(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(!is_mounted(&m.path));
}

#[test]
fn second_signal_ends_the_grace_at_once() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    let mut m = env.mount(&["--shutdown-grace", "60s"]);
    let mut held = std::fs::File::open(m.file("s")).expect("open");
    assert_eq!(read_at_start(&mut held).unwrap(), b"v");
    let mut child = m.child.take().expect("running");
    sigterm(child.id() as i32);
    assert!(eventually(Duration::from_secs(2), || !is_mounted(&m.path)));
    assert!(child.try_wait().unwrap().is_none(), "in its grace");
    let start = Instant::now();
    sigterm(child.id() as i32);
    let status = wait_with_deadline(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url)
        .expect("url")
        .port()
        .expect("explicit port")
}

/// Replaces `path`'s content in one step (a reader never sees half a file).
fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// kvfs pointed at the emulator, with `--ca-file` a copy the test controls.
fn mount_with_own_ca(env: &TestEnv, ca_file: &Path) -> Mount {
    let e = env.emulator();
    write_atomically(ca_file, e.ca_pem());
    let path = env.mountpoint("mnt");
    let mut cmd = common::kvfs_command();
    cmd.arg("mount")
        .arg(&path)
        .args(["--vault-url", &e.vault_url()])
        .arg("--ca-file")
        .arg(ca_file)
        .args(["--imds-endpoint", &e.imds_endpoint()])
        .arg("--disable-challenge-resource-verification")
        .args(["--request-timeout", "5s"]);
    Mount::start(cmd, path)
}

#[test]
fn restarted_vault_with_new_token_key_and_ca_recovers_without_restart() {
    let mut env = TestEnv::start();
    env.vault().set_secret("warm", "warm-value");
    // Listed at startup, so that kvfs asks the restarted vault for them (a name the listing
    // lacks would be absent for --negative-ttl without a request).
    for i in 0..20 {
        env.vault().set_secret(&format!("cold-{i}"), "before");
    }
    let ca_file = env.dir.path().join("kvfs-ca.pem");
    let m = mount_with_own_ca(&env, &ca_file);
    assert_eq!(m.read("warm").unwrap(), b"warm-value");
    assert_eq!(env.counters().imds_tokens, 1);

    // The vault restarts on the same ports with a new CA and a new token signing key: the
    // token kvfs holds (valid for 24 h) is worthless there, and so are its roots.
    let first = env.emulator.take().expect("running");
    let (vault_port, imds_port) = (port_of(&first.vault_url()), port_of(&first.imds_endpoint()));
    env.runtime.block_on(first.shutdown());
    let mut config = EmulatorConfig::new(env.dir.path().join("emulator-restarted"));
    config.vault_port = vault_port;
    config.imds_port = imds_port;
    let second = env
        .runtime
        .block_on(Emulator::start(config))
        .expect("restarted emulator binds the same ports");
    for i in 0..20 {
        second
            .vault()
            .set_secret(&format!("cold-{i}"), &format!("cold-value-{i}"));
    }
    write_atomically(&ca_file, second.ca_pem());
    env.emulator = Some(second);

    let start = Instant::now();
    let mut attempts = 0;
    let recovered = eventually(Duration::from_secs(40), || {
        attempts += 1;
        m.read("cold-0").is_ok()
    });
    let took = start.elapsed();
    assert!(recovered, "reads did not recover within 40 s");
    assert_eq!(m.read("cold-0").unwrap(), b"cold-value-0");
    for i in 1..20 {
        assert_eq!(
            m.read(&format!("cold-{i}")).unwrap(),
            format!("cold-value-{i}").as_bytes()
        );
    }
    assert_eq!(m.read("warm").unwrap(), b"warm-value", "cached meanwhile");
    let c = env.counters();
    eprintln!(
        "recovered after {took:?} ({attempts} attempts); restarted vault: {} token requests, {} challenges, {} GETs",
        c.imds_tokens, c.challenges, c.get_secret
    );
    assert!(took < Duration::from_secs(5), "recovery took {took:?}");
    assert_eq!(c.imds_tokens, 1, "one new token, no storm");
    assert_eq!(c.get_secret, 20);
    let log = std::fs::read_to_string(&m.log_path).unwrap_or_default();
    assert!(log.contains("--ca-file changed"), "{log}");
    assert!(log.contains("Key Vault rejected the token"), "{log}");
    assert!(!log.contains("kvemu."), "no token in the log");
}

#[test]
fn a_vault_that_keeps_rejecting_tokens_costs_one_token_per_interval() {
    let env = TestEnv::start();
    for i in 0..200 {
        env.vault()
            .set_secret(&format!("s-{i}"), &format!("value-{i}"));
    }
    let m = env.mount(&["--request-timeout", "2s"]);
    assert_eq!(m.read("s-0").unwrap(), b"value-0");
    let before = env.counters();
    env.vault().add_fault(Fault {
        kind: Some(RequestKind::GetSecret),
        name: None,
        action: FaultAction::Status {
            status: 401,
            retry_after: None,
        },
        times: None,
    });
    // Reads for 4 s, each of a secret not cached yet.
    let start = Instant::now();
    let mut i = 1;
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(errno_of(m.read(&format!("s-{i}"))), libc::EIO);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = env.counters();
    let rejected = during.faults_injected - before.faults_injected;
    let tokens = during.imds_tokens - before.imds_tokens;
    eprintln!(
        "{} reads, {rejected} rejected requests, {tokens} token requests",
        i - 1
    );
    // The outage window spaces the requests (1, 2 ... s); each one was a rejected token.
    assert!(rejected >= 3, "reads reached the vault: {rejected}");
    assert_eq!(tokens, 1, "one new token per interval, however many 401s");

    env.vault().clear_faults();
    assert!(eventually(Duration::from_secs(10), || m
        .read(&format!("s-{i}"))
        .is_ok()));
    assert_eq!(env.counters().imds_tokens - before.imds_tokens, 1);
}
