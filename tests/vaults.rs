//! Several vaults in one mount (`--vault-url` repeated; docs/SEMANTICS.md, "Several vaults"):
//! each vault is a directory named after it, with its own cache, request budget and errors; one
//! vault's outage does not touch another's files.

mod common;

use std::time::Duration;

use common::{Mount, TestEnv, eventually, names_in};
use kvfs::emulator::{Emulator, EmulatorConfig, Fault, FaultAction};

/// A second emulator on `env`'s state directory: the same CA and token key (one `--ca-file`,
/// one identity endpoint), its own secrets.
fn second_emulator(env: &TestEnv) -> Emulator {
    env.runtime
        .block_on(Emulator::start(EmulatorConfig::new(
            env.dir.path().join("emulator"),
        )))
        .expect("second emulator")
}

/// The directory kvfs names a vault served on 127.0.0.1:PORT.
fn dir_of(emulator: &Emulator) -> String {
    let url = url::Url::parse(&emulator.vault_url()).expect("url");
    format!("127.0.0.1-{}", url.port().expect("port"))
}

#[test]
fn two_vaults_two_directories_each_its_own_faults() {
    let env = TestEnv::start();
    let second = second_emulator(&env);
    env.vault().set_secret("db-password", "from-one");
    env.vault().set_secret("only-one", "1");
    second.vault().set_secret("db-password", "from-two");
    second.vault().set_secret("only-two", "2");
    second
        .vault()
        .set_secret("cold-two", "never read before the outage");
    let path = env.mountpoint("mnt");
    let second_url = second.vault_url();
    let mut cmd = env.command(&path, &["--vault-url", &second_url, "--cache-ttl", "1s"]);
    cmd.env_remove("KVFS_VAULT_URL");
    let m = Mount::start(cmd, path);
    let (one, two) = (dir_of(env.emulator()), dir_of(&second));
    let mut both = vec![one.clone(), two.clone()];
    both.sort();
    assert_eq!(names_in(&m.path), both);
    assert_eq!(names_in(&m.path.join(&one)), ["db-password", "only-one"]);
    assert_eq!(
        names_in(&m.path.join(&two)),
        ["cold-two", "db-password", "only-two"]
    );
    assert_eq!(
        std::fs::read(m.path.join(&one).join("db-password")).expect("one"),
        b"from-one"
    );
    assert_eq!(
        std::fs::read(m.path.join(&two).join("db-password")).expect("two"),
        b"from-two"
    );
    assert_eq!(
        std::fs::read(m.path.join(&two).join("only-one"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::ENOENT),
        "each vault shows its own secrets"
    );
    assert!(m.path.join(&two).join(".versions/only-two").is_dir());
    assert_eq!(
        std::fs::read(m.path.join("db-password"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::ENOENT),
        "the root holds the vaults only"
    );

    // The second vault fails every request: the first one's files are untouched, reads of
    // its new secrets included; the second's cached value is served stale.
    second.vault().add_fault(Fault {
        kind: None,
        name: None,
        action: FaultAction::Status {
            status: 503,
            retry_after: None,
        },
        times: None,
    });
    env.vault().set_secret("new-in-one", "fresh");
    second.vault().reset_counters();
    env.vault().reset_counters();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read(m.path.join(&one).join("new-in-one")).expect("the first vault serves"),
        b"fresh"
    );
    assert_eq!(
        std::fs::read(m.path.join(&two).join("db-password")).expect("stale but served"),
        b"from-two"
    );
    assert_eq!(
        std::fs::read(m.path.join(&two).join("cold-two"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "a cold read of the failing vault fails"
    );
    assert!(
        second.vault().counters().total > 0,
        "the second vault was asked"
    );

    // Rotation reaches the first vault's file while the second still fails.
    env.vault().set_secret("db-password", "rotated-one");
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read(m.path.join(&one).join("db-password")).is_ok_and(|b| b == b"rotated-one")
    }));
    second.vault().clear_faults();
}

#[test]
fn vault_directory_names_must_differ() {
    let env = TestEnv::start();
    let url = env.emulator().vault_url();
    let path = env.mountpoint("mnt");
    let out = env
        .command(&path, &["--vault-url", &url])
        .output()
        .expect("kvfs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--vault-url") && stderr.contains("share the directory"),
        "{stderr}"
    );
}

/// A takeover hands every vault's state over: held files keep reading, numbers stay.
#[test]
fn several_vaults_are_taken_over_live() {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::start();
    let second = second_emulator(&env);
    env.vault().set_secret("a", "one-a");
    second.vault().set_secret("b", "two-b");
    let path = env.mountpoint("mnt");
    let second_url = second.vault_url();
    let args = ["--vault-url", second_url.as_str()];
    let mut first = Mount::start(env.command(&path, &args), path.clone());
    let (one, two) = (dir_of(env.emulator()), dir_of(&second));
    let file = m_path(&first, &two, "b");
    let ino = std::fs::metadata(&file).expect("stat").ino();
    let mut held = std::fs::File::open(&file).expect("open");
    second.vault().set_secret("b", "two-b-rotated");

    let log = path.with_extension("next.log");
    let child = env
        .command(&path, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("successor");
    let mut old = first.child.take().expect("running");
    let status = common::wait_with_deadline(&mut old, Duration::from_secs(30));
    assert!(
        status.success(),
        "the old kvfs exits 0: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut next = Mount {
        path: path.clone(),
        log_path: log,
        child: Some(child),
    };
    let mut buf = String::new();
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.read_to_string(&mut buf).expect("held read");
    assert_eq!(buf, "two-b", "the held descriptor keeps its version");
    assert_eq!(
        std::fs::read(m_path(&next, &one, "a")).expect("vault one"),
        b"one-a"
    );
    assert_eq!(std::fs::metadata(&file).expect("stat").ino(), ino);
    drop(held);
    assert!(next.terminate().success());
}

fn m_path(m: &Mount, vault: &str, name: &str) -> std::path::PathBuf {
    m.path.join(vault).join(name)
}
