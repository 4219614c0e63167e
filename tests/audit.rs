//! The audit trail (docs/SEMANTICS.md, "Audit"): `--audit-log` writes one JSON line per open
//! by a real process running as another uid, with its pid, uid, gid, command and the version
//! read, and never the value.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Mount, TestEnv, eventually};
use serde_json::Value;

const CANARY: &str = "CANARY-5c1d0e7a-never-in-a-log";

/// Runs `cat path` as `uid`/`uid` with no supplementary groups: its pid, and whether it read
/// `want`.
fn cat_as(uid: u32, path: &Path) -> (u32, std::process::Output) {
    let child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs (util-linux)");
    // setpriv execs cat: the pid is cat's.
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// The JSON lines of `path` once it holds at least `n`, within 10 s.
fn lines(path: &Path, n: usize) -> Vec<Value> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("each audit line is JSON"))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), || read().len() >= n),
        "{} audit lines expected: {:?}",
        n,
        read()
    );
    read()
}

#[test]
fn every_open_is_recorded_with_who_and_which_version_never_the_value() {
    let env = TestEnv::start();
    let version = env.vault().set_secret("audited", CANARY);
    let audit_path = env.dir.path().join("audit.jsonl");
    let m = env.mount(&[
        "--allow-other",
        "--dir-mode",
        "0555",
        "--owner",
        "audited=1001:1001:0400",
        "--audit-log",
        audit_path.to_str().unwrap(),
    ]);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = std::fs::metadata(&audit_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the audit file is private");

    let (first, out) = cat_as(1001, &m.file("audited"));
    assert_eq!(out.stdout, CANARY.as_bytes(), "{out:?}");
    // Refused by the kernel (default_permissions): kvfs never sees it, nothing is recorded.
    let (_, denied) = cat_as(1002, &m.file("audited"));
    assert!(!denied.status.success());
    let (second, out) = cat_as(1001, &m.file("audited"));
    assert_eq!(out.stdout, CANARY.as_bytes());
    let (third, out) = cat_as(1001, &m.file(&format!(".versions/audited/{version}")));
    assert_eq!(out.stdout, CANARY.as_bytes());

    let got = lines(&audit_path, 3);
    assert_eq!(got.len(), 3, "one line per successful open: {got:?}");
    for (line, pid) in got.iter().zip([first, second, third]) {
        assert_eq!(line["secret"], "audited", "{line}");
        assert_eq!(line["version"], version.as_str(), "{line}");
        assert_eq!(line["pid"], pid, "{line}");
        assert_eq!(
            (line["uid"].as_u64(), line["gid"].as_u64()),
            (Some(1001), Some(1001))
        );
        assert_eq!(line["comm"], "cat", "{line}");
        let time = line["time"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{time}"
        );
    }
    // Auditing keeps the page cache: three opens, one fetch.
    assert_eq!(env.counters().get_secret, 1);
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        !audit.contains(CANARY),
        "the value leaked into the audit log"
    );
    let log = std::fs::read_to_string(&m.log_path).unwrap();
    assert!(!log.contains(CANARY), "the value leaked into kvfs's log");
}

#[test]
fn dash_writes_the_trail_to_standard_output() {
    let env = TestEnv::start();
    env.vault().set_secret("s", CANARY);
    let path = env.mountpoint("mnt");
    let stdout = env.dir.path().join("stdout");
    // The harness discards kvfs's stdout: a shell sends it to a file, then becomes kvfs.
    let inner = env.command(&path, &["--audit-log", "-"]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec "$@" >"$KVFS_TEST_STDOUT""#)
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("KVFS_TEST_STDOUT", &stdout);
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let m = Mount::start(cmd, path);
    assert_eq!(m.read("s").unwrap(), CANARY.as_bytes());
    assert_eq!(m.read("s").unwrap(), CANARY.as_bytes());
    let got = lines(&stdout, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    for line in &got {
        assert_eq!(line["secret"], "s");
        // The kernel names the opening task: the thread, in a multi-threaded process.
        // SAFETY: gettid cannot fail and touches no memory.
        assert_eq!(line["pid"], unsafe { libc::gettid() });
        assert_eq!(line["uid"], 0);
    }
    assert!(!std::fs::read_to_string(&stdout).unwrap().contains(CANARY));
}
