//! Live handoff: a kvfs started on a mountpoint a live kvfs serves takes the connection over,
//! and the processes reading secrets do not notice.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestEnv, errno_of, wait_with_deadline};

/// Starts a second kvfs on `mount`'s mountpoint with `extra` flags, logging beside the first.
fn successor(env: &TestEnv, mount: &Mount, extra: &[&str], log: &str) -> (Child, PathBuf) {
    let log_path = mount.path.with_extension(log);
    let child = env
        .command(&mount.path, extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn successor");
    (child, log_path)
}

/// The FUSE mounts at `path`, from this process's mountinfo.
fn mounts_at(path: &Path) -> usize {
    let wanted = path
        .canonicalize()
        .expect("canonical")
        .display()
        .to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&wanted.as_str()) && l.contains(" - fuse")
        })
        .count()
}

/// Waits for `child` (the predecessor) and returns its status.
fn exit_of(mount: &mut Mount) -> ExitStatus {
    let mut child = mount.child.take().expect("running");
    wait_with_deadline(&mut child, Duration::from_secs(30))
}

#[test]
fn a_new_kvfs_takes_the_mount_over_and_readers_keep_reading() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "v1-bytes");
    env.vault().set_secret("api-key", "key-1");
    let mut first = env.mount(&[]);
    let mut held = std::fs::File::open(first.file("db-password")).expect("open");
    let mut buf = String::new();
    held.read_to_string(&mut buf).expect("read");
    assert_eq!(buf, "v1-bytes");
    // A version rotates while the file is held: the holder keeps its version.
    env.vault().set_secret("db-password", "v2-bytes-longer");

    let (child, log) = successor(&env, &first, &[], "next.log");
    let status = exit_of(&mut first);
    assert!(
        status.success(),
        "the old kvfs exits 0 once the new one serves: {status}; new kvfs log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut next = Mount {
        path: first.path.clone(),
        log_path: log,
        child: Some(child),
    };
    assert_eq!(
        mounts_at(&next.path),
        1,
        "exactly one mount, nothing stacked"
    );

    held.seek(SeekFrom::Start(0)).expect("seek");
    buf.clear();
    held.read_to_string(&mut buf)
        .expect("the held file still reads");
    assert_eq!(buf, "v1-bytes", "the held descriptor keeps its version");
    assert_eq!(next.read("api-key").expect("read"), b"key-1");
    assert_eq!(errno_of(next.read("no-such-secret")), libc::ENOENT);
    drop(held);

    let status = next.terminate();
    assert!(status.success(), "{status}");
    assert!(!common::is_mounted(&next.path), "unmounted at the end");
}

#[test]
fn a_successor_with_other_kernel_settings_is_refused_and_the_old_kvfs_keeps_serving() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "v1");
    let first = env.mount(&[]);
    let (mut child, log) = successor(&env, &first, &["--rotation", "in-place"], "next.log");
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "refused: {said}");
    assert!(
        said.contains("--rotation") && said.contains("in-place"),
        "the refusal names the setting: {said}"
    );
    assert_eq!(first.read("db-password").expect("still served"), b"v1");
    assert_eq!(mounts_at(&first.path), 1);
    let started = Instant::now();
    assert_eq!(first.read("db-password").expect("read"), b"v1");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// What one consumer saw.
#[derive(Default, Debug)]
struct Seen {
    ops: u64,
    errors: Vec<String>,
    slowest: Duration,
}

impl Seen {
    fn time<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T, String>) -> Option<T> {
        let started = Instant::now();
        let out = f();
        self.slowest = self.slowest.max(started.elapsed());
        self.ops += 1;
        match out {
            Ok(v) => Some(v),
            Err(e) => {
                if self.errors.len() < 20 {
                    self.errors.push(format!("{what}: {e}"));
                } else {
                    self.errors.push(String::new());
                }
                None
            }
        }
    }
}

const SECRETS: usize = 24;

fn secret_name(i: usize) -> String {
    format!("s-{i:02}")
}

/// The value of version `v` of secret `i`: the name and version are in it, so a reader can
/// tell a wrong secret or a torn value from a legitimate rotation.
fn value_of(i: usize, v: usize) -> String {
    format!("{}:v{v}:{}", secret_name(i), "x".repeat(40 + i))
}

fn well_formed(i: usize, bytes: &[u8]) -> bool {
    let s = String::from_utf8_lossy(bytes);
    let mut parts = s.split(':');
    parts.next() == Some(secret_name(i).as_str())
        && parts
            .next()
            .is_some_and(|v| v.starts_with('v') && v[1..].parse::<usize>().is_ok())
        && parts.next() == Some("x".repeat(40 + i).as_str())
        && parts.next().is_none()
}

/// The number of requests waiting in the kernel for the connection behind `path`.
fn waiting(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let minor = libc::minor(dev);
    let file = format!("/sys/fs/fuse/connections/{minor}/waiting");
    if !Path::new("/sys/fs/fuse/connections/")
        .join(minor.to_string())
        .exists()
    {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"])
            .status();
    }
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Runs the consumers until `stop`, returning what each saw.
fn consumers(
    mnt: &Path,
    stop: &std::sync::atomic::AtomicBool,
    versions_of_s02: &[String],
) -> Vec<(&'static str, Seen)> {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| {
            let mut seen = Seen::default();
            let file = std::fs::File::open(mnt.join(secret_name(0))).expect("open held");
            let expected = value_of(0, 1);
            while !stop.load(Relaxed) {
                seen.time("held pread", || {
                    let mut buf = vec![0u8; 4096];
                    let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0)
                        .map_err(|e| e.to_string())?;
                    if buf[..n] != *expected.as_bytes() {
                        return Err(format!("held descriptor read {n} other bytes"));
                    }
                    Ok(())
                });
            }
            seen
        });
        let opener = scope.spawn(|| {
            let mut seen = Seen::default();
            let mut i = 0;
            while !stop.load(Relaxed) {
                let k = i % SECRETS;
                seen.time("open/read/close", || {
                    let bytes =
                        std::fs::read(mnt.join(secret_name(k))).map_err(|e| e.to_string())?;
                    if !well_formed(k, &bytes) {
                        return Err(format!(
                            "{} read {} wrong bytes",
                            secret_name(k),
                            bytes.len()
                        ));
                    }
                    Ok(())
                });
                i += 1;
            }
            seen
        });
        let lister = scope.spawn(|| {
            let mut seen = Seen::default();
            let mut i = 0;
            while !stop.load(Relaxed) {
                seen.time("ls", || {
                    let n = std::fs::read_dir(mnt).map_err(|e| e.to_string())?.count();
                    if n != SECRETS {
                        return Err(format!("ls listed {n} entries"));
                    }
                    Ok(())
                });
                let k = i % SECRETS;
                seen.time("stat", || {
                    let m =
                        std::fs::metadata(mnt.join(secret_name(k))).map_err(|e| e.to_string())?;
                    if !m.is_file() {
                        return Err("not a file".into());
                    }
                    Ok(())
                });
                i += 1;
            }
            seen
        });
        let versions = scope.spawn(|| {
            let mut seen = Seen::default();
            let mut i = 0;
            while !stop.load(Relaxed) {
                let v = &versions_of_s02[i % versions_of_s02.len()];
                let expected = value_of(2, i % versions_of_s02.len() + 1);
                seen.time(".versions", || {
                    let bytes = std::fs::read(mnt.join(".versions").join(secret_name(2)).join(v))
                        .map_err(|e| e.to_string())?;
                    if bytes != expected.as_bytes() {
                        return Err("a version read other bytes".into());
                    }
                    Ok(())
                });
                i += 1;
            }
            seen
        });
        vec![
            (
                "holder (one open file, pread loop)",
                holder.join().expect("holder"),
            ),
            (
                "open/read/close over 24 secrets",
                opener.join().expect("opener"),
            ),
            ("ls and stat", lister.join().expect("lister")),
            (".versions reads", versions.join().expect("versions")),
        ]
    })
}

#[test]
fn thirty_takeovers_under_load_and_no_consumer_notices() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    const TAKEOVERS: usize = 30;
    let env = TestEnv::start();
    for i in 0..SECRETS {
        env.vault().set_secret(&secret_name(i), &value_of(i, 1));
    }
    let versions_of_s02: Vec<String> = (1..=3)
        .map(|v| env.vault().set_secret(&secret_name(2), &value_of(2, v)))
        .collect();
    let mut current = env.mount(&["--cache-ttl", "2s"]);
    let mnt = current.path.clone();
    // A process whose working directory is inside the mount, reading by relative path.
    let cwd_log = mnt.with_extension("cwd.log");
    let mut cwd_reader = std::process::Command::new("sh")
        .current_dir(&mnt)
        .args(["-c", "while :; do cat s-01 > /dev/null || echo ERR; done"])
        .stdout(std::fs::File::create(&cwd_log).expect("log"))
        .spawn()
        .expect("cwd reader");
    let stop = AtomicBool::new(false);
    let mut drains = Vec::new();
    let mut takeover_times = Vec::new();
    /// Stops the consumers however the takeover loop ends, a failed assertion included
    /// (else the scope would wait on them for ever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Relaxed);
        }
    }
    let seen = std::thread::scope(|scope| {
        let load = scope.spawn(|| consumers(&mnt, &stop, &versions_of_s02));
        let _stop = StopOnDrop(&stop);
        for n in 0..TAKEOVERS {
            std::thread::sleep(Duration::from_millis(150));
            // Rotations at the vault between takeovers: the refresh runs on both sides.
            env.vault()
                .set_secret(&secret_name(3 + n % 5), &value_of(3 + n % 5, n + 2));
            let started = Instant::now();
            let (child, log) = successor(
                &env,
                &current,
                &["--cache-ttl", "2s"],
                &format!("gen{n}.log"),
            );
            let status = exit_of(&mut current);
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                status.success(),
                "takeover {n}: old kvfs {status}; new kvfs said:\n{said}"
            );
            takeover_times.push(started.elapsed());
            if let Some(us) = said
                .split("drain_us=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                drains.push(Duration::from_micros(us));
            }
            let old = std::mem::replace(
                &mut current,
                Mount {
                    path: mnt.clone(),
                    log_path: log,
                    child: Some(child),
                },
            );
            // Not dropped: a `Mount`'s drop unmounts its path, which the new kvfs serves.
            std::mem::forget(old);
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Relaxed);
        load.join().expect("consumers")
    });
    let _ = cwd_reader.kill();
    let _ = cwd_reader.wait();
    let cwd_errors = std::fs::read_to_string(&cwd_log)
        .unwrap_or_default()
        .matches("ERR")
        .count();

    let mut total_ops = 0;
    let mut slowest = Duration::ZERO;
    for (name, s) in &seen {
        println!(
            "HANDOFF consumer {name}: {} operations, {} errors, slowest {:?}",
            s.ops,
            s.errors.len(),
            s.slowest
        );
        total_ops += s.ops;
        slowest = slowest.max(s.slowest);
    }
    drains.sort();
    takeover_times.sort();
    println!(
        "HANDOFF {TAKEOVERS} takeovers, {total_ops} consumer operations, slowest {slowest:?}; \
         drain median {:?} max {:?}; takeover (start of the new kvfs to exit of the old) median {:?} max {:?}; \
         cwd reader errors {cwd_errors}",
        drains.get(drains.len() / 2),
        drains.last(),
        takeover_times[takeover_times.len() / 2],
        takeover_times.last().expect("takeovers"),
    );
    for (name, s) in &seen {
        assert!(s.errors.is_empty(), "{name}: {:?}", s.errors);
        assert!(s.ops > 0, "{name} ran");
    }
    assert_eq!(cwd_errors, 0, "the process with its cwd inside saw errors");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest operation {slowest:?}"
    );
    assert_eq!(drains.len(), TAKEOVERS, "every takeover reported its drain");
    assert_eq!(mounts_at(&mnt), 1, "exactly one mount");
    assert_eq!(
        waiting(&mnt),
        Some(0),
        "no request left waiting in the kernel"
    );
    let status = current.terminate();
    assert!(status.success(), "{status}");
    assert!(!common::is_mounted(&mnt), "a clean unmount at the end");
}

/// systemd's side of the notify protocol: messages, and the descriptors stored with FDSTORE=1.
struct ServiceManager {
    path: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl ServiceManager {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        Self { path, socket }
    }

    /// Waits for a message containing `wanted`; returns it with the descriptors it carried.
    fn wait_for(&self, wanted: &str, limit: Duration) -> (String, Vec<std::os::fd::OwnedFd>) {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            self.socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let Ok(msg) = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                continue;
            };
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel installed these descriptors for this process.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains(wanted) {
                return (text, fds);
            }
            seen.push(text);
        }
        panic!("no {wanted:?} within {limit:?}; got {seen:?}");
    }
}

/// `kvfs mount` started as systemd starts the next instance after a restart: the stored
/// descriptors at 3 and 4, LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (the shell's pid, which
/// `exec` keeps).
fn start_with_listen_fds(
    env: &TestEnv,
    mnt: &Path,
    notify: &Path,
    device: &std::os::fd::OwnedFd,
    state: &std::os::fd::OwnedFd,
    log: &Path,
) -> Child {
    use std::os::fd::AsRawFd;
    // Inheritable copies at fixed numbers; the shell moves them to 3 and 4.
    let inheritable = |fd: &std::os::fd::OwnedFd, at: i32| {
        // SAFETY: dup2 of a valid descriptor onto a number this test owns, closed below.
        let rc = unsafe { libc::dup2(fd.as_raw_fd(), at) };
        assert_eq!(rc, at, "dup2");
    };
    inheritable(device, 200);
    inheritable(state, 201);
    let kvfs = env!("CARGO_BIN_EXE_kvfs");
    // bash: dash takes no descriptor number above 9.
    let mut cmd = std::process::Command::new("bash");
    kvfs::testing::scrub_env(&mut cmd);
    cmd.env(
        "KVFS_LOG",
        "debug,azure_core=info,typespec_client_core=info,hyper=info,rustls=info,reqwest=info",
    );
    cmd.arg("-c")
        .arg("exec 3<&200 4<&201 200<&- 201<&-; LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(kvfs)
        .arg("mount")
        .arg(mnt)
        .args(env.kvfs_args())
        .args(["--systemd-fd-store", "--cache-ttl", "1s"])
        .env("NOTIFY_SOCKET", notify)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "kvfs-fuse:kvfs-state")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"));
    let child = cmd.spawn().expect("spawn");
    // SAFETY: closing this test's own copies, made above.
    unsafe {
        libc::close(200);
        libc::close(201);
    }
    child
}

#[test]
fn systemctl_restart_keeps_the_connection_through_the_fd_store() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "v1-bytes");
    env.vault().set_secret("api-key", "key-1");
    let manager = ServiceManager::bind(env.dir.path());
    let mnt = env.mountpoint("mnt");
    let mut first = {
        let mut cmd = env.command(&mnt, &["--systemd-fd-store", "--cache-ttl", "1s"]);
        cmd.env("NOTIFY_SOCKET", &manager.path);
        Mount::start(cmd, mnt.clone())
    };
    let (_, fds) = manager.wait_for("FDNAME=kvfs-fuse", Duration::from_secs(30));
    let device = fds
        .into_iter()
        .next()
        .expect("the FUSE device with FDSTORE=1");
    manager.wait_for("READY=1", Duration::from_secs(30));
    // The held file lives in another process: a file of the test's own would be closed (a
    // FLUSH to the mount) by every exec the test makes, the second kvfs's included, which
    // would then wait on the very kvfs it is.
    let mut holder = std::process::Command::new("bash")
        .args(["-c", "exec 5<\"$0\"; exec sleep 600"])
        .arg(first.file("db-password"))
        .spawn()
        .expect("holder");
    let held = PathBuf::from(format!("/proc/{}/fd/5", holder.id()));
    assert!(
        common::eventually(Duration::from_secs(5), || held.exists()),
        "the holder opened the file"
    );
    env.vault().set_secret("db-password", "v2-bytes-longer");

    // `systemctl restart`: SIGTERM; kvfs leaves its state in the store and exits 0 mounted.
    let status = first.terminate();
    assert!(status.success(), "{status}");
    let (_, fds) = manager.wait_for("FDNAME=kvfs-state", Duration::from_secs(5));
    let state = fds
        .into_iter()
        .next()
        .expect("the state memfd with FDSTORE=1");
    assert!(
        common::is_mounted(&mnt),
        "still mounted between the two instances"
    );
    // A reader arriving between the two instances waits for the next one, then succeeds.
    let reader = {
        let path = mnt.join("api-key");
        std::thread::spawn(move || {
            let started = Instant::now();
            (std::fs::read(path), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let log = mnt.with_extension("second.log");
    let child = start_with_listen_fds(&env, &mnt, &manager.path, &device, &state, &log);
    let mut second = Mount {
        path: mnt.clone(),
        log_path: log,
        child: Some(child),
    };
    drop(state);
    let (ready, _) = manager.wait_for("READY=1", Duration::from_secs(30));
    let (bytes, waited) = reader.join().expect("reader");
    assert_eq!(
        bytes.expect("the read made during the restart succeeds"),
        b"key-1"
    );
    println!(
        "HANDOFF systemd restart: a read issued between the instances waited {waited:?}; {ready:?}"
    );
    assert_eq!(
        std::fs::read(&held).expect("the held file reads"),
        b"v1-bytes",
        "the held descriptor keeps its version"
    );
    // The rotation made before the restart reaches new opens within the cache TTL, through
    // the new kvfs's refresh of the inodes it took over.
    assert!(
        common::eventually(Duration::from_secs(10), || second
            .read("db-password")
            .is_ok_and(|v| v == b"v2-bytes-longer")),
        "the rotation reached new opens"
    );
    assert_eq!(mounts_at(&mnt), 1);
    assert_eq!(waiting(&mnt), Some(0));
    let said = std::fs::read_to_string(&second.log_path).unwrap_or_default();
    assert!(said.contains("taking the mount over"), "{said}");
    let _ = holder.kill();
    let _ = holder.wait();

    // A plain stop: systemd drops the stored descriptors and the unit's ExecStopPost unmounts.
    let status = second.terminate();
    assert!(status.success(), "{status}");
    drop(device);
    kvfs::testing::unmount_leftover(&mnt);
    assert!(!common::is_mounted(&mnt));
}

/// The negative control: the same consumers across a plain restart (SIGTERM, then a new kvfs
/// mounting afresh, as `--no-handoff` always does). They see errors: what the handoff spares
/// them.
#[test]
fn a_plain_restart_breaks_the_same_consumers() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let env = TestEnv::start();
    for i in 0..SECRETS {
        env.vault().set_secret(&secret_name(i), &value_of(i, 1));
    }
    let versions_of_s02: Vec<String> = (1..=3)
        .map(|v| env.vault().set_secret(&secret_name(2), &value_of(2, v)))
        .collect();
    let flags = ["--no-handoff", "--shutdown-grace", "1s"];
    let mut current = env.mount(&flags);
    let mnt = current.path.clone();
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let load = scope.spawn(|| consumers(&mnt, &stop, &versions_of_s02));
        std::thread::sleep(Duration::from_millis(300));
        let status = current.terminate();
        assert!(status.success(), "{status}");
        let next = Mount::start(env.command(&mnt, &flags), mnt.clone());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Relaxed);
        let seen = load.join().expect("consumers");
        drop(next);
        seen
    });
    let mut errors = 0;
    for (name, s) in &seen {
        println!(
            "HANDOFF control (plain restart) {name}: {} operations, {} errors, first: {:?}",
            s.ops,
            s.errors.len(),
            s.errors.first()
        );
        errors += s.errors.len();
    }
    assert!(errors > 0, "a plain restart is visible to consumers");
}

/// The other negative control: the serving kvfs is killed (SIGKILL) while it drains for a
/// successor, a request still unanswered. Documented outcome: a crash. The old kvfs's unmount
/// guard detaches the mount; the successor, which never got the connection, says so and exits
/// 1; the request in flight and held files fail; a new kvfs then mounts afresh.
#[test]
fn kill_9_during_a_drain_is_a_crash_and_the_next_kvfs_mounts_afresh() {
    let env = TestEnv::start();
    env.vault().set_secret("held", "held-value");
    env.vault().set_secret("slow", "slow-value");
    let mut first = env.mount(&[]);
    let held = std::fs::File::open(first.file("held")).expect("open held");
    // Every Key Vault answer now takes 3 s: a lookup of `slow` stays unanswered that long.
    env.vault().set_service_latency(Duration::from_secs(3));
    // The successor's startup check (one listing) takes those 3 s too; the lookup starts
    // halfway, so that it is still unanswered when the successor asks.
    let (mut child, log) = successor(&env, &first, &[], "next.log");
    std::thread::sleep(Duration::from_millis(1500));
    let slow_path = first.file("slow");
    let in_flight = std::thread::spawn(move || std::fs::read(slow_path));
    let first_log = first.log_path.clone();
    assert!(
        common::eventually(Duration::from_secs(20), || std::fs::read_to_string(
            &first_log
        )
        .unwrap_or_default()
        .contains("takeover asked: draining")),
        "the drain did not start"
    );
    let mut old = first.child.take().expect("running");
    old.kill().expect("SIGKILL");
    old.wait().expect("reaped");
    // The successor cannot serve. Usually it says so and exits 1 at once; in one CI run it
    // was still there 30 s later (see the closing note), so it is stopped here if need be.
    let status = kvfs::testing::terminate_after(&mut child, Duration::from_secs(30));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.as_ref().is_none_or(|s| !s.success()),
        "the successor cannot serve: {said}"
    );
    let in_flight = in_flight.join().expect("reader");
    let mut buf = [0u8; 16];
    let held_read = std::os::unix::fs::FileExt::read_at(&held, &mut buf, 0);
    assert!(
        common::eventually(Duration::from_secs(5), || !common::is_mounted(&first.path)),
        "the guard detached the mount"
    );
    println!(
        "HANDOFF kill -9 during a drain: successor {status:?}: {}; request in flight: {:?}; held file: {:?}",
        said.lines().last().unwrap_or_default(),
        in_flight
            .as_ref()
            .map(|v| v.len())
            .map_err(|e| e.raw_os_error()),
        held_read.map_err(|e| e.raw_os_error()),
    );
    env.vault().set_service_latency(Duration::ZERO);
    drop(held);
    let again = Mount::start(env.command(&first.path, &[]), first.path.clone());
    assert_eq!(again.read("held").expect("read"), b"held-value");
}
