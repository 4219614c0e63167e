//! Helpers shared by the integration tests and the benchmark, which both run the real `kvfs`
//! binary against the bundled emulator: the loopback-only guard, a clean environment for the
//! child, and how to tell that a mount is up.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Environment variables a child kvfs must not inherit: they would select another identity
/// source or change its flags behind the test's back.
const INHERITED_SETTINGS: [&str; 4] = ["AZURE_", "KVFS_", "IDENTITY_", "MSI_"];

/// The network interfaces of this process's namespace other than loopback. Empty inside
/// `scripts/loopback-only`, where nothing can reach 169.254.169.254 or any other host.
pub fn non_loopback_interfaces() -> Vec<String> {
    // /proc/net/dev follows this process's network namespace (/sys/class/net may not).
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|i| i.trim().to_owned()))
        .filter(|i| i != "lo")
        .collect()
}

/// Removes every inherited Azure, identity and kvfs setting from `cmd`'s environment.
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if INHERITED_SETTINGS.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key.as_ref());
        }
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// Whether a live FUSE filesystem other than `parent_dev`'s is mounted on `path`. statfs
/// too, not only stat: a dead earlier mount still stats from the kernel's cache, but its
/// statfs fails (ENOTCONN). And the statfs must come from FUSE: while a new kvfs replaces a
/// dead mount, a stat can see the dead mount and the statfs just after it the directory
/// beneath (seen in CI: the test then read ENOENT). statfs costs kvfs no Key Vault request.
pub fn mount_is_up(path: &Path, parent_dev: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.dev() != parent_dev)
        && crate::mountpoint::fuse_statfs(path).is_ok()
}

/// Stops a kvfs child: SIGTERM (kvfs then unmounts and exits by itself), up to `limit` for it
/// to exit, else SIGKILL and `None`.
pub fn terminate(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits up to `limit` for `child` to exit by itself; then kills it. `None` when it had to be
/// killed.
pub fn terminate_after(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Detaches whatever is still mounted on `path` (a kvfs that was killed leaves its mount).
pub fn unmount_leftover(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(path)
            .status();
    }
}
