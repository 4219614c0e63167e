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
    let wanted = path.canonicalize().expect("canonical").display().to_string();
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
    assert_eq!(mounts_at(&next.path), 1, "exactly one mount, nothing stacked");

    held.seek(SeekFrom::Start(0)).expect("seek");
    buf.clear();
    held.read_to_string(&mut buf).expect("the held file still reads");
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
