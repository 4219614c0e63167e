//! Operating kvfs: the mountpoint checks (a live kvfs refused by pid, a non-empty directory
//! warned about, a stale demo mount cleared) and the logs (JSON lines, verbosity changed at
//! run time). docs/SEMANTICS.md, "Startup and shutdown" and "Logs".

mod common;

use std::time::Duration;

use common::{Mount, TestEnv, eventually};

#[test]
fn a_mountpoint_a_live_kvfs_serves_is_refused_with_its_pid() {
    let env = TestEnv::start();
    env.vault().set_secret("a", "v");
    // A kvfs whose control socket is not where the second one looks: it cannot be taken over
    // (tests/handoff.rs takes over one that can), so it is refused, never stacked on.
    let socket = env.dir.path().join("elsewhere.sock");
    let first = env.mount(&["--control-socket", socket.to_str().unwrap()]);
    let out = env.command(&first.path, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("already served by kvfs (pid {})", first.pid()))
            && stderr.contains("--control-socket"),
        "{stderr}"
    );
    // Nothing was stacked: the first mount still serves, once.
    assert_eq!(first.read("a").unwrap(), b"v");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = first.path.display().to_string();
    let count = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(path.as_str()))
        .count();
    assert_eq!(count, 1);
}

#[test]
fn a_non_empty_mountpoint_gets_a_warning() {
    let env = TestEnv::start();
    let path = env.mountpoint("full");
    std::fs::write(path.join("hidden.txt"), "x").unwrap();
    let m = Mount::start(env.command(&path, &[]), path);
    let log = std::fs::read_to_string(&m.log_path).unwrap();
    assert!(log.contains("the mountpoint is not empty"), "{log}");
}

#[test]
fn demo_clears_a_mount_left_stale_by_a_killed_demo() {
    common::require_loopback_only();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo");
    let mut cmd = common::kvfs_command();
    cmd.arg("demo").arg(&path);
    std::fs::create_dir(&path).unwrap();
    let mut first = Mount::start(cmd, path.clone());
    let mut child = first.child.take().unwrap();
    common::kill_with_guard(&mut child);
    assert_eq!(
        std::fs::read_dir(&path)
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::ENOTCONN),
        "the killed demo left a stale mount"
    );
    let mut cmd = common::kvfs_command();
    cmd.arg("demo").arg(&path);
    let second = Mount::start(cmd, path.clone());
    assert!(second.read("db-password").is_ok());
    drop(second);
    drop(first);
}

#[test]
fn logs_as_json_and_verbosity_changes_at_run_time() {
    let env = TestEnv::start();
    let path = env.mountpoint("json");
    let mut cmd = env.command(&path, &["--log-format", "json"]);
    cmd.env("KVFS_LOG", "info");
    let m = Mount::start(cmd, path);
    let log = || std::fs::read_to_string(&m.log_path).unwrap();
    let lines: Vec<String> = log().lines().map(str::to_owned).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
    // At info, an absent name is not logged (debug).
    let _ = std::fs::metadata(m.file("absent-before"));
    assert!(!log().contains("absent-before") && !log().contains("request failed"));
    // SIGUSR1: one step more verbose, without a restart.
    // SAFETY: kill(2) on the kvfs child's pid.
    unsafe { libc::kill(m.pid(), libc::SIGUSR1) };
    assert!(eventually(Duration::from_secs(5), || log()
        .contains("log filter changed")));
    let _ = std::fs::metadata(m.file("absent-after"));
    assert!(
        eventually(Duration::from_secs(5), || log().contains("request failed")),
        "debug lines after SIGUSR1: {}",
        log()
    );
    // SIGUSR2: back to the startup filter.
    let changes = log().matches("log filter changed").count();
    // SAFETY: as above.
    unsafe { libc::kill(m.pid(), libc::SIGUSR2) };
    assert!(eventually(Duration::from_secs(5), || log()
        .matches("log filter changed")
        .count()
        > changes));
    let before = log().matches("request failed").count();
    let _ = std::fs::metadata(m.file("absent-again"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log().matches("request failed").count(), before);
}
