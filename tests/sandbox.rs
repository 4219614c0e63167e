//! Least privilege (SECURITY.md, "Least privilege"): once mounted, every thread of kvfs holds
//! CAP_SYS_ADMIN alone, runs with no_new_privs, under the seccomp filter and under the
//! Landlock rules, and every feature still works under it: reads, listings, a rotation
//! reaching readers (refresh and kernel invalidation), a restarted vault with a new CA and
//! token key (CA reload, token renewal), SIGTERM shutdown through the unmount guard, a killed
//! kvfs's mount detached by its guard, and a stale mount (kvfs and guard both killed) cleaned
//! by the next one.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, TestEnv, eventually, is_mounted};
use kvfs::emulator::{Emulator, EmulatorConfig};

/// CAP_SYS_ADMIN is capability 21.
const CAP_SYS_ADMIN_ONLY: u64 = 1 << 21;
const CAP_IPC_LOCK: u64 = 1 << 14;

/// The fields of /proc/<pid>/task/<tid>/status this test reads, for one thread.
#[derive(Debug)]
#[allow(dead_code)] // tid and name are read through Debug, in failure messages.
struct ThreadState {
    tid: String,
    name: String,
    cap_eff: u64,
    cap_prm: u64,
    cap_bnd: u64,
    no_new_privs: u32,
    seccomp: u32,
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
}

fn threads_of(pid: i32) -> Vec<ThreadState> {
    let mut states = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let tid = entry
            .expect("task")
            .file_name()
            .to_string_lossy()
            .into_owned();
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue;
        };
        let hex = |name| u64::from_str_radix(field(&status, name), 16).expect("hex caps");
        states.push(ThreadState {
            name: field(&status, "Name").to_owned(),
            cap_eff: hex("CapEff"),
            cap_prm: hex("CapPrm"),
            cap_bnd: hex("CapBnd"),
            no_new_privs: field(&status, "NoNewPrivs").parse().expect("NoNewPrivs"),
            seccomp: field(&status, "Seccomp").parse().expect("Seccomp"),
            tid,
        });
    }
    states
}

/// Waits for kvfs's "mounted" line: it confines itself after the mount answers, before that line.
fn wait_until_serving(m: &Mount) {
    assert!(
        eventually(Duration::from_secs(10), || log_of(m)
            .contains("kvfs::run: mounted")),
        "kvfs never said it mounted: {}",
        log_of(m)
    );
}

/// Every thread holds CAP_SYS_ADMIN alone, no_new_privs, seccomp filter mode; returns how many
/// threads were checked.
fn assert_confined(m: &Mount) -> usize {
    wait_until_serving(m);
    let threads = threads_of(m.pid());
    // Main, 2 runtime workers and the fuser threads at least.
    assert!(threads.len() >= 4, "{threads:?}");
    // CAP_IPC_LOCK stays too where memory was locked on its strength (RLIMIT_MEMLOCK finite
    // and not raisable): then VmLck shows the locked mappings.
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.pid())).expect("status");
    let locked = field(&status, "VmLck").trim_end_matches("kB").trim() != "0";
    let expected = threads[0].cap_eff;
    assert!(
        expected == CAP_SYS_ADMIN_ONLY || (locked && expected == CAP_SYS_ADMIN_ONLY | CAP_IPC_LOCK),
        "CapEff {expected:#x} (memory locked: {locked})"
    );
    for t in &threads {
        assert_eq!(t.cap_eff, expected, "CapEff of {t:?}");
        assert_eq!(t.cap_prm, expected, "CapPrm of {t:?}");
        assert_eq!(t.cap_bnd, expected, "CapBnd of {t:?}");
        assert_eq!(t.no_new_privs, 1, "NoNewPrivs of {t:?}");
        assert_eq!(t.seccomp, 2, "Seccomp (2 = filter) of {t:?}");
    }
    threads.len()
}

/// The thread ids kvfs reported confined by Landlock, each of which found a write outside the
/// allowed paths denied.
fn landlock_tids(m: &Mount) -> Vec<i32> {
    let log = log_of(m);
    let line = log
        .lines()
        .find(|l| l.contains("landlock:") && l.contains("writes outside the allowed paths denied"))
        .unwrap_or_else(|| panic!("no complete Landlock report: {log}"));
    let tids = line
        .split("tids=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no tids in {line}"));
    tids.split(',').map(|t| t.parse().expect("tid")).collect()
}

/// Every thread of kvfs is under its Landlock rules: each one running now was confined by
/// the round (and found a write denied), or was started after it by a confined thread (thread
/// ids grow, so it has a higher id than every thread the round saw). Returns the number of
/// threads confined by the round.
fn assert_landlocked(m: &Mount) -> usize {
    wait_until_serving(m);
    let confined = landlock_tids(m);
    let newest = *confined.iter().max().expect("some thread");
    assert!(confined.contains(&m.pid()), "the main thread: {confined:?}");
    let threads = threads_of(m.pid());
    for t in &threads {
        let tid: i32 = t.tid.parse().expect("tid");
        assert!(
            confined.contains(&tid) || tid > newest,
            "thread {t:?} was not confined: {confined:?}"
        );
    }
    // Main, 2 runtime workers and the fuser threads at least.
    let fuser = threads
        .iter()
        .filter(|t| t.name.starts_with("fuser"))
        .count();
    assert!(
        fuser >= 1 && confined.len() >= 3 + fuser,
        "{confined:?} {threads:?}"
    );
    confined.len()
}

/// The unmount guard: kvfs's child named kvfs-unmount.
fn guard_of(kvfs_pid: i32) -> i32 {
    let mut found = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            found = children_of(kvfs_pid)
                .into_iter()
                .find(|&pid| comm(pid).as_deref() == Some("kvfs-unmount"));
            found.is_some()
        }),
        "kvfs {kvfs_pid} has no kvfs-unmount child"
    );
    found.expect("found")
}

fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| field(&s, "PPid") == parent.to_string())
        })
        .collect()
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// Gone, or a zombie waiting for whoever adopted it (it holds nothing then).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => field(&status, "State").starts_with('Z'),
    }
}

/// The guard holds CAP_SYS_ADMIN alone, runs under its own seccomp filter, and holds no file
/// but /dev/null (stdin, stdout), stderr and its socket: never /dev/fuse.
fn assert_guard_is_small(guard: i32) {
    let status = std::fs::read_to_string(format!("/proc/{guard}/status")).expect("guard status");
    let cap_eff = u64::from_str_radix(field(&status, "CapEff"), 16).expect("hex");
    assert_eq!(cap_eff & !CAP_IPC_LOCK, CAP_SYS_ADMIN_ONLY, "{status}");
    assert_eq!(field(&status, "Seccomp"), "2", "{status}");
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{guard}/fd"))
        .expect("guard fds")
        .map(|e| {
            let e = e.expect("fd");
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                target.display().to_string(),
            )
        })
        .collect();
    fds.sort();
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0", "1", "2", "3"], "{fds:?}");
    assert_eq!(fds[0].1, "/dev/null", "{fds:?}");
    assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
    assert!(fds.iter().all(|(_, t)| !t.contains("fuse")), "{fds:?}");
}

fn own_cap_eff() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("own status");
    u64::from_str_radix(field(&status, "CapEff"), 16).expect("hex")
}

fn log_of(m: &Mount) -> String {
    std::fs::read_to_string(&m.log_path).unwrap_or_default()
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url)
        .expect("url")
        .port()
        .expect("explicit port")
}

/// Replaces `path`'s content in one step (kvfs never reads half a file).
fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// kvfs pointed at the emulator, with `--ca-file` a copy the test controls.
fn mount_with_own_ca(env: &TestEnv, ca_file: &Path, extra: &[&str]) -> Mount {
    let e = env.emulator();
    std::fs::write(ca_file, e.ca_pem()).expect("ca copy");
    let path = env.mountpoint("mnt");
    let mut cmd = common::kvfs_command();
    cmd.arg("mount")
        .arg(&path)
        .args(["--vault-url", &e.vault_url()])
        .arg("--ca-file")
        .arg(ca_file)
        .args(["--imds-endpoint", &e.imds_endpoint()])
        .arg("--disable-challenge-resource-verification")
        .args(extra);
    Mount::start(cmd, path)
}

fn require_root() {
    assert_eq!(
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() },
        0,
        "the sandbox tests need root: a kvfs without CAP_SYS_ADMIN is not confined"
    );
}

#[test]
fn sandboxed_kvfs_keeps_cap_sys_admin_alone_and_every_feature_works() {
    require_root();
    let mut env = TestEnv::start();
    env.vault().set_secret("plain", "plain-value");
    env.vault().set_secret("rotating", "v1");
    for i in 0..5 {
        env.vault().set_secret(&format!("cold-{i}"), "before");
    }
    let ca_file = env.dir.path().join("kvfs-ca.pem");
    let mut m = mount_with_own_ca(
        &env,
        &ca_file,
        &["--cache-ttl", "1s", "--request-timeout", "5s"],
    );
    let checked = assert_confined(&m);
    let landlocked = assert_landlocked(&m);
    assert!(
        log_of(&m).contains("sandbox on"),
        "kvfs says it is confined: {}",
        log_of(&m)
    );
    let guard = guard_of(m.pid());
    assert_guard_is_small(guard);

    // Reads and a listing.
    assert_eq!(m.read("plain").unwrap(), b"plain-value");
    let mut names: Vec<String> = std::fs::read_dir(&m.path)
        .expect("listing")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cold-0", "cold-1", "cold-2", "cold-3", "cold-4", "plain", "rotating"
        ]
    );

    // A rotation reaches readers: the refresh fetches it, the kernel's cache is invalidated.
    assert_eq!(m.read("rotating").unwrap(), b"v1");
    env.vault().set_secret("rotating", "v2");
    assert!(
        eventually(Duration::from_secs(15), || m.read("rotating").unwrap()
            == b"v2"),
        "the rotation did not reach readers: {}",
        log_of(&m)
    );

    // The vault restarts on the same ports with a new CA and a new token signing key: kvfs
    // must reload --ca-file and renew its token, both under the sandbox.
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
    for i in 0..5 {
        second
            .vault()
            .set_secret(&format!("cold-{i}"), &format!("after-{i}"));
    }
    write_atomically(&ca_file, second.ca_pem());
    env.emulator = Some(second);
    assert!(
        eventually(Duration::from_secs(30), || m.read("cold-0").is_ok()),
        "reads did not recover: {}",
        log_of(&m)
    );
    assert_eq!(m.read("cold-3").unwrap(), b"after-3");
    assert_eq!(env.counters().imds_tokens, 1, "one renewed token");
    let log = log_of(&m);
    assert!(log.contains("--ca-file changed"), "{log}");
    assert!(log.contains("Key Vault rejected the token"), "{log}");

    // Threads started since (the runtime's blocking pool) are confined as well.
    assert_confined(&m);
    assert_landlocked(&m);

    // Shutdown: kvfs asks its guard to detach, and reaps it.
    let status = m.terminate();
    assert!(status.success(), "SIGTERM exit: {status}: {}", log_of(&m));
    assert!(!is_mounted(&m.path), "nothing left mounted");
    assert!(process_gone(guard), "the guard is gone");
    assert!(
        std::fs::read_dir(&m.path).is_ok(),
        "the mountpoint is a plain directory again"
    );
    eprintln!(
        "{checked} threads confined at mount ({landlocked} by Landlock); rotation, CA reload, renewal, shutdown passed"
    );
}

#[test]
fn a_killed_sandboxed_kvfs_is_unmounted_by_its_guard() {
    require_root();
    let env = TestEnv::start();
    env.vault().set_secret("s", "value");
    let mut m = env.mount(&[]);
    assert_landlocked(&m);
    assert_eq!(m.read("s").unwrap(), b"value");
    let guard = guard_of(m.pid());
    let mut child = m.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        eventually(Duration::from_secs(5), || !is_mounted(&m.path)),
        "the guard did not detach the mount of a killed kvfs"
    );
    // No ENOTCONN: the path is the plain, empty directory again.
    let entries = std::fs::read_dir(&m.path).expect("mountpoint lists");
    assert_eq!(entries.count(), 0);
    assert!(
        eventually(Duration::from_secs(5), || process_gone(guard)),
        "the guard exited"
    );

    // The next kvfs mounts there at once, with no stale mount to clean.
    let next = Mount::start(env.command(&m.path, &[]), m.path.clone());
    assert_eq!(next.read("s").unwrap(), b"value");
    assert!(!log_of(&next).contains("stale"), "{}", log_of(&next));
}

#[test]
fn a_sandboxed_kvfs_killed_with_its_guard_leaves_a_stale_mount_the_next_one_cleans() {
    require_root();
    let env = TestEnv::start();
    env.vault().set_secret("s", "value");
    let mut first = env.mount(&[]);
    assert_confined(&first);
    assert_eq!(first.read("s").unwrap(), b"value");
    // The guard first (as a node's OOM killer or `kill -9 -PGID` could), then kvfs.
    let guard = guard_of(first.pid());
    // SAFETY: kill(2) of the guard found above, a child of the kvfs this test started.
    assert_eq!(unsafe { libc::kill(guard, libc::SIGKILL) }, 0);
    assert!(eventually(Duration::from_secs(5), || process_gone(guard)));
    let mut child = first.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        is_mounted(&first.path),
        "kvfs and guard killed leave the mount"
    );
    let stale = std::fs::read_dir(&first.path).expect_err("stale");
    assert_eq!(stale.raw_os_error(), Some(libc::ENOTCONN));

    let second = Mount::start(env.command(&first.path, &[]), first.path.clone());
    assert_eq!(second.read("s").unwrap(), b"value");
    assert_confined(&second);
    let log = log_of(&second);
    assert!(log.contains("sandbox on"), "{log}");
}

#[test]
fn no_sandbox_keeps_every_capability_and_no_filter() {
    require_root();
    let env = TestEnv::start();
    env.vault().set_secret("s", "value");
    let mut m = env.mount(&["--no-sandbox"]);
    assert_eq!(m.read("s").unwrap(), b"value");
    wait_until_serving(&m);
    let ours = own_cap_eff();
    for t in threads_of(m.pid()) {
        assert_eq!(t.cap_eff, ours, "CapEff of {t:?}");
        assert_eq!(t.no_new_privs, 0, "NoNewPrivs of {t:?}");
        assert_eq!(t.seccomp, 0, "Seccomp of {t:?}");
    }
    assert!(log_of(&m).contains("--no-sandbox"), "{}", log_of(&m));
    assert!(!log_of(&m).contains("landlock:"), "{}", log_of(&m));
    // The guard still unmounts, unconfined too.
    let guard = guard_of(m.pid());
    let status = std::fs::read_to_string(format!("/proc/{guard}/status")).expect("guard");
    assert_eq!(field(&status, "Seccomp"), "0", "{status}");
    assert!(m.terminate().success());
    assert!(!is_mounted(&m.path));

    // The environment variable too.
    let path = env.mountpoint("env");
    let mut cmd: Command = env.command(&path, &[]);
    cmd.env("KVFS_NO_SANDBOX", "true");
    let mut m = Mount::start(cmd, path);
    wait_until_serving(&m);
    assert!(threads_of(m.pid()).iter().all(|t| t.seccomp == 0));
    assert!(m.terminate().success());
}
