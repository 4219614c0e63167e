//! Ownership and visibility (docs/SEMANTICS.md, "Ownership and visibility"): `--owner` rules
//! read by real processes running as other uids (setpriv), `--include` / `--exclude` hiding
//! names without a request, `--allow-root`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestEnv, errno_of, eventually};

/// Lets other uids walk down to the mountpoint (the temporary directory is 0700).
fn open_to_others(env: &TestEnv) {
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test directory");
}

/// Runs `cat path` as `uid` (group `uid`, no supplementary groups): its bytes, or the errno
/// its error message names.
fn cat_as(uid: u32, path: &Path) -> Result<Vec<u8>, i32> {
    run_as(uid, "cat", path)
}

fn run_as(uid: u32, tool: &str, path: &Path) -> Result<Vec<u8>, i32> {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(tool)
        .arg(path)
        .output()
        .expect("setpriv runs (util-linux)");
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    for errno in [libc::EACCES, libc::ENOENT, libc::EPERM] {
        let text = std::io::Error::from_raw_os_error(errno).to_string();
        let text = text.split(" (os error").next().unwrap_or_default();
        if stderr.contains(text) {
            return Err(errno);
        }
    }
    panic!(
        "{tool} {} as {uid} failed unexpectedly: {stderr}",
        path.display()
    );
}

#[test]
fn each_reader_sees_only_its_own() {
    let env = TestEnv::start();
    let va = env.vault().set_secret("app-a-db", "alpha-value");
    let vb = env.vault().set_secret("app-b-db", "bravo-value");
    env.vault().set_secret("shared", "shared-value");
    let m = env.mount(&[
        "--allow-other",
        "--dir-mode",
        "0555",
        "--owner",
        "app-a-*=1001:1001:0400",
        "--owner",
        "APP-B-*=1002:1002:0440",
        // Never reached for app-a-db: the first matching rule wins.
        "--owner",
        "app-*=1003:1003:0444",
    ]);
    open_to_others(&env);

    assert_eq!(cat_as(1001, &m.file("app-a-db")).unwrap(), b"alpha-value");
    assert_eq!(cat_as(1002, &m.file("app-b-db")).unwrap(), b"bravo-value");
    assert_eq!(cat_as(1002, &m.file("app-a-db")), Err(libc::EACCES));
    assert_eq!(cat_as(1001, &m.file("app-b-db")), Err(libc::EACCES));
    // Read by its owner first, so its pages are cached: still refused to the other.
    assert_eq!(cat_as(1002, &m.file("app-a-db")), Err(libc::EACCES));
    // No rule: the global owner (root, 0400).
    assert_eq!(cat_as(1001, &m.file("shared")), Err(libc::EACCES));
    assert_eq!(m.read("shared").unwrap(), b"shared-value");

    let meta = |p: &str| std::fs::metadata(m.file(p)).unwrap();
    let owner = |p: &str| {
        let md = meta(p);
        (md.uid(), md.gid(), md.mode() & 0o7777)
    };
    assert_eq!(owner("app-a-db"), (1001, 1001, 0o400));
    assert_eq!(owner("app-b-db"), (1002, 1002, 0o440));
    assert_eq!(owner("shared"), (0, 0, 0o400));
    assert_eq!(owner(".versions/app-a-db"), (1001, 1001, 0o500));
    assert_eq!(owner(".versions/app-b-db"), (1002, 1002, 0o550));
    assert_eq!(
        owner(&format!(".versions/app-a-db/{va}")),
        (1001, 1001, 0o400)
    );
    assert_eq!(
        owner(&format!(".versions/app-b-db/{vb}")),
        (1002, 1002, 0o440)
    );

    // Under .versions, the same split.
    let a_version = m.file(&format!(".versions/app-a-db/{va}"));
    let b_version = m.file(&format!(".versions/app-b-db/{vb}"));
    assert_eq!(cat_as(1001, &a_version).unwrap(), b"alpha-value");
    assert_eq!(cat_as(1002, &a_version), Err(libc::EACCES));
    assert_eq!(cat_as(1002, &b_version).unwrap(), b"bravo-value");
    assert_eq!(cat_as(1001, &b_version), Err(libc::EACCES));
    assert_eq!(
        run_as(1002, "ls", &m.file(".versions/app-a-db")),
        Err(libc::EACCES)
    );
    let listed = run_as(1001, "ls", &m.file(".versions/app-a-db")).unwrap();
    assert_eq!(String::from_utf8(listed).unwrap().trim(), va);
}

#[test]
fn excluded_names_are_hidden_without_a_request() {
    let env = TestEnv::start();
    env.vault().set_secret("visible", "v");
    env.vault().set_secret("hidden-one", "h");
    // A short cache TTL, so that refresh ticks run during the test.
    let m = env.mount(&["--exclude", "hidden-*", "--cache-ttl", "500ms"]);
    let listed: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec!["visible".to_owned()]);
    env.vault().reset_counters();
    assert_eq!(errno_of(m.read("hidden-one")), libc::ENOENT);
    assert_eq!(
        errno_of(std::fs::metadata(m.file("HIDDEN-ONE"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(std::fs::read_dir(m.file(".versions/hidden-one"))),
        libc::ENOENT
    );
    let c = env.counters();
    assert_eq!(
        (c.get_secret, c.list_versions, c.total),
        (0, 0, 0),
        "hidden names cost no request: {c:?}"
    );
    let versions: Vec<String> = std::fs::read_dir(m.file(".versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(versions, vec!["visible".to_owned()]);
    assert_eq!(m.read("visible").unwrap(), b"v");
    // Refresh ticks (each lists the vault) never fetch the hidden secret.
    let lists = env.counters().list_secrets;
    assert!(
        eventually(Duration::from_secs(10), || env.counters().list_secrets
            >= lists + 2),
        "refresh ticks ran"
    );
    assert_eq!(env.counters().get_by_name.get("hidden-one"), None);
}

#[test]
fn include_shows_only_matching_names_and_exclude_wins() {
    let env = TestEnv::start();
    for name in ["app-x", "App-Y", "app-secret-z", "db"] {
        env.vault().set_secret(name, "value");
    }
    let m = env.mount(&["--include", "app-*", "--exclude", "app-secret-*"]);
    let mut listed: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, vec!["App-Y".to_owned(), "app-x".to_owned()]);
    env.vault().reset_counters();
    assert_eq!(errno_of(m.read("db")), libc::ENOENT);
    assert_eq!(errno_of(m.read("app-secret-z")), libc::ENOENT);
    assert_eq!(env.counters().total, 0);
    assert_eq!(m.read("app-x").unwrap(), b"value");
    assert_eq!(env.counters().get_secret, 1);
}

#[test]
fn allow_root_lets_root_in_and_keeps_others_out() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "root-readable");
    let m = env.mount(&["--allow-root", "--file-mode", "0444", "--dir-mode", "0555"]);
    open_to_others(&env);
    // The kernel knows only allow_other: the mount carries it, and kvfs (fuser) refuses
    // requests from users other than root and the owner.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(m.path.to_str().unwrap()))
        .expect("the mount in /proc/self/mounts");
    assert!(line.contains("allow_other"), "{line}");
    // Root reads first, so the file's dentry, attributes and pages are in the kernel's cache:
    // another user's open still reaches kvfs and is refused.
    assert_eq!(m.read("s").unwrap(), b"root-readable");
    assert_eq!(cat_as(1001, &m.file("s")), Err(libc::EACCES));
    assert_eq!(m.read("s").unwrap(), b"root-readable");
}

#[test]
fn allow_root_and_allow_other_conflict() {
    let env = TestEnv::start();
    let out = env
        .command(&env.mountpoint("never"), &["--allow-root", "--allow-other"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    for (flag, bad, says) in [
        ("--owner", "app-*=alice:1:0400", "is not a number"),
        ("--owner", "app-*", "GLOB=UID:GID:MODE"),
        ("--include", "a[", "not a glob"),
        ("--exclude", "", "empty glob"),
    ] {
        let out = env
            .command(&env.mountpoint("never"), &[flag, bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flag} {bad}: {stderr}");
    }
}
