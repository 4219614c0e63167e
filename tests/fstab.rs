//! fstab and `mount -t kvfs`: mount(8) runs `/sbin/mount.kvfs` (the kvfs binary under that
//! name), which maps `-o` options to kvfs flags, starts kvfs detached and returns once the
//! mount answers. Each test mounts the emulator's vault that way, reads a secret, unmounts with
//! umount(8) and checks that kvfs exited and nothing stays mounted.
//!
//! mount(8) looks for helpers only in /sbin (and /sbin/fs.d, /sbin/fs): the tests that go
//! through mount(8) install the symlink /sbin/mount.kvfs -> the kvfs under test (as root), one
//! test at a time, and remove it when done. They refuse to replace a /sbin/mount.kvfs that is
//! something else (a real install).

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::TestEnv;

const SBIN_HELPER: &str = "/sbin/mount.kvfs";

/// /sbin/mount.kvfs pointing at the kvfs under test, while this guard lives.
struct InstalledHelper {
    _serial: MutexGuard<'static, ()>,
}

impl InstalledHelper {
    fn install() -> Self {
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let target = Path::new(env!("CARGO_BIN_EXE_kvfs"));
        match std::fs::read_link(SBIN_HELPER) {
            // Left by an earlier run of this test that was killed.
            Ok(existing) if existing == target => {}
            Ok(existing) => panic!(
                "{SBIN_HELPER} exists (-> {}): not replacing it",
                existing.display()
            ),
            Err(_) if Path::new(SBIN_HELPER).exists() => {
                panic!("{SBIN_HELPER} exists and is not a symlink: not replacing it")
            }
            Err(_) => std::os::unix::fs::symlink(target, SBIN_HELPER)
                .unwrap_or_else(|e| panic!("cannot install {SBIN_HELPER} (root needed): {e}")),
        }
        Self { _serial: serial }
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SBIN_HELPER);
    }
}

/// A mount made by the helper: kvfs is nobody's child here. Dropping it stops any kvfs still
/// serving `path` and unmounts what is left.
struct Detached {
    path: PathBuf,
}

impl Drop for Detached {
    fn drop(&mut self) {
        for pid in kvfs_pids(&self.path) {
            // SAFETY: kill(2) on a kvfs this test started (its command line names our mountpoint).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        common::eventually(Duration::from_secs(10), || kvfs_pids(&self.path).is_empty());
        kvfs::testing::unmount_leftover(&self.path);
    }
}

/// Processes running `kvfs mount <path> ...`.
fn kvfs_pids(path: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() > 2 && args[1] == b"mount" && args[2] == path.as_os_str().as_bytes() {
            pids.push(pid);
        }
    }
    pids
}

/// The `-o` options that point kvfs at the emulator.
fn options(env: &TestEnv, extra: &str) -> String {
    let e = env.emulator();
    format!(
        "vault_url={},ca_file={},imds_endpoint={},disable_challenge_resource_verification,log_file={},{extra}",
        e.vault_url(),
        e.ca_path().display(),
        e.imds_endpoint(),
        env.dir.path().join("kvfs.log").display(),
    )
}

/// A command with no Azure or kvfs settings inherited, and kvfs logging at debug.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    kvfs::testing::scrub_env(&mut cmd);
    cmd.env("KVFS_LOG", "debug,azure_core=info,hyper=info,rustls=info");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The mount answers as soon as the helper returned; a secret reads; umount(8) ends kvfs.
fn check_mounted_then_unmount(env: &TestEnv, path: &Path, started: Instant) {
    let returned_after = started.elapsed();
    assert_eq!(std::fs::read(path.join("db-password")).unwrap(), b"hunter2");
    let pids = kvfs_pids(path);
    assert_eq!(
        pids.len(),
        1,
        "one kvfs serves {}: {pids:?}",
        path.display()
    );
    // SAFETY: getsid(2) reads another process's session id.
    let sid = unsafe { libc::getsid(pids[0]) };
    assert_eq!(sid, pids[0], "kvfs runs in a session of its own");
    assert_eq!(env.counters().get_secret, 1, "one read, one GET");

    let out = run(command("umount").arg(path));
    assert!(out.status.success());
    assert!(
        common::eventually(Duration::from_secs(10), || kvfs_pids(path).is_empty()),
        "kvfs still runs after umount"
    );
    assert!(!common::is_mounted(path));
    let log = std::fs::read_to_string(env.dir.path().join("kvfs.log")).unwrap();
    assert!(log.contains("unmounted from outside; exiting"), "{log}");
    assert!(!log.contains("hunter2"));
    eprintln!("mounted and answering {returned_after:?} after the mount command started");
}

fn env_with_secret() -> TestEnv {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "hunter2");
    env
}

#[test]
fn helper_maps_options_and_returns_once_mounted() {
    let env = env_with_secret();
    let path = env.mountpoint("mnt");
    let _cleanup = Detached { path: path.clone() };
    let helper = env.dir.path().join("mount.kvfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvfs"), &helper).unwrap();
    let started = Instant::now();
    let out = run(command(&helper).arg("none").arg(&path).args([
        "-o",
        &options(
            &env,
            "cache_ttl=5m,_netdev,nofail,defaults,x-systemd.automount",
        ),
    ]));
    assert!(out.status.success());
    check_mounted_then_unmount(&env, &path, started);
}

#[test]
fn mount_t_kvfs() {
    let env = env_with_secret();
    let path = env.mountpoint("mnt");
    let _cleanup = Detached { path: path.clone() };
    let _helper = InstalledHelper::install();
    let started = Instant::now();
    let out = run(command("mount")
        .args(["-t", "kvfs", "none"])
        .arg(&path)
        .args(["-o", &options(&env, "cache_ttl=5m")]));
    assert!(out.status.success());
    // Again (as `mount -a` would): refused, not a second kvfs stacked on the first.
    let again = run(command("mount")
        .args(["-t", "kvfs", "none"])
        .arg(&path)
        .args(["-o", &options(&env, "")]));
    assert_eq!(again.status.code(), Some(32));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already served by kvfs (pid "), "{stderr}");
    check_mounted_then_unmount(&env, &path, started);
}

#[test]
fn fstab_line() {
    let env = env_with_secret();
    let path = env.mountpoint("mnt");
    let _cleanup = Detached { path: path.clone() };
    let fstab = env.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# kvfs\nnone {} kvfs {} 0 0\n",
            path.display(),
            options(&env, "_netdev,nofail,file_mode=0440")
        ),
    )
    .unwrap();
    let _helper = InstalledHelper::install();
    let started = Instant::now();
    let out = run(command("mount").arg("--fstab").arg(&fstab).arg(&path));
    assert!(out.status.success());
    let meta = std::fs::metadata(path.join("db-password")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o440,
        "file_mode=0440 reached kvfs"
    );
    check_mounted_then_unmount(&env, &path, started);
}

#[test]
fn a_failing_start_fails_the_mount_with_kvfs_error() {
    let env = env_with_secret();
    env.vault().set_rbac_allowed(false);
    let path = env.mountpoint("mnt");
    let _cleanup = Detached { path: path.clone() };
    let _helper = InstalledHelper::install();
    let out = run(command("mount")
        .args(["-t", "kvfs", "none"])
        .arg(&path)
        .args(["-o", &options(&env, "")]));
    assert_eq!(out.status.code(), Some(32), "mount(8)'s 'mount failure'");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Key Vault Secrets User"), "{stderr}");
    assert!(kvfs_pids(&path).is_empty());
    assert!(!common::is_mounted(&path));
}

#[test]
fn an_unknown_option_is_rejected_by_kvfs() {
    let env = env_with_secret();
    let path = env.mountpoint("mnt");
    let _cleanup = Detached { path: path.clone() };
    let helper = env.dir.path().join("mount.kvfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvfs"), &helper).unwrap();
    let out = run(command(&helper)
        .arg("none")
        .arg(&path)
        .args(["-o", &options(&env, "cache_tll=5m")]));
    assert_eq!(out.status.code(), Some(32));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cache-tll"), "{stderr}");
    assert_eq!(env.counters().total, 0, "kvfs stopped before any request");
    assert!(!common::is_mounted(&path));
}
