//! `kvfs demo`, as the README's quick start runs it: the real binary starts the bundled emulator
//! with the sample secrets, mounts it, serves it, and unmounts and exits 0 on SIGTERM.
//!
//! The expected names and values come from `sample_seed()`, the seed the demo loads, so this
//! test follows the samples. Safety: the demo's emulator binds 127.0.0.1 and kvfs redirects
//! IMDS to it; the child gets no AZURE_*, KVFS_*, IDENTITY_* or MSI_* variables, so nothing
//! steers it elsewhere, and the suite runs in a loopback-only network namespace.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use common::{Mount, errno_of};
use kvfs::emulator::{SeedSecret, sample_seed};

fn sample<'a>(samples: &'a [SeedSecret], name: &str) -> &'a SeedSecret {
    samples
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} is a sample secret"))
}

#[test]
fn demo_mounts_the_samples_and_sigterm_unmounts() {
    common::require_loopback_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mnt");
    std::fs::create_dir(&path).expect("mountpoint");
    let mut cmd = common::kvfs_command();
    cmd.arg("demo").arg(&path);
    // Waits (30 s at most) until the mountpoint is another filesystem and statfs answers;
    // kvfs's stderr goes to mnt.log beside it. Dropping `m` stops kvfs and detaches the mount.
    let mut m = Mount::start(cmd, path.clone());

    let log = std::fs::read_to_string(&m.log_path).expect("log");
    assert!(
        log.contains("sample vault at https://127.0.0.1:"),
        "the demo's vault is on loopback: {log}"
    );

    let samples = sample_seed().secrets;
    let enabled: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.enabled != Some(false))
        .map(|s| s.name.as_str())
        .collect();
    let disabled: Vec<&str> = samples
        .iter()
        .filter(|s| s.enabled == Some(false))
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        !disabled.is_empty(),
        "the samples include a disabled secret"
    );

    let listed: BTreeSet<String> = std::fs::read_dir(&m.path)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .collect();
    assert!(
        listed.contains("db-password") && listed.contains("api-key"),
        "{listed:?}"
    );
    for name in &disabled {
        assert!(
            !listed.contains(*name),
            "disabled {name} is listed: {listed:?}"
        );
    }
    // Certificate samples also show their four views.
    let views: Vec<String> = samples
        .iter()
        .filter(|s| s.enabled != Some(false))
        .filter(|s| kvfs::views::cert::is_certificate(s.content_type.as_deref()))
        .flat_map(|s| [".pem", ".crt", ".key", ".pfx"].map(|v| format!("{}{v}", s.name)))
        .collect();
    assert!(!views.is_empty(), "the samples include a certificate");
    let mut expected = enabled.clone();
    expected.extend(views.iter().map(String::as_str));
    let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(
        listed, expected,
        "ls shows every enabled sample and its views, nothing else"
    );
    let crt = String::from_utf8(m.read("tls-cert.crt").expect("cat tls-cert.crt")).expect("PEM");
    assert_eq!(
        crt.matches("BEGIN CERTIFICATE").count(),
        3,
        "leaf and chain"
    );
    let key = String::from_utf8(m.read("tls-cert.key").expect("cat tls-cert.key")).expect("PEM");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));

    let db = sample(&samples, "db-password");
    assert_eq!(
        m.read("db-password").expect("cat db-password"),
        db.value.as_bytes(),
        "byte for byte, no newline added"
    );
    assert_eq!(
        std::fs::metadata(m.file("db-password"))
            .expect("stat")
            .len(),
        db.value.len() as u64
    );
    for name in &enabled {
        let sample = sample(&samples, name);
        let want = &sample.value;
        let meta = std::fs::metadata(m.file(name)).expect("stat");
        assert!(meta.is_file(), "{name}");
        if kvfs::views::cert::is_certificate(sample.content_type.as_deref()) {
            // Made anew by each emulator: a key and a chain, not these bytes.
            let pem = String::from_utf8(m.read(name).expect("read")).expect("PEM");
            assert!(pem.contains("PRIVATE KEY") && pem.contains("BEGIN CERTIFICATE"));
            continue;
        }
        assert_eq!(meta.len(), want.len() as u64, "{name}: size");
        assert_eq!(meta.mode() & 0o7777, 0o400, "{name}: default --file-mode");
        assert_eq!(m.read(name).expect("read"), want.as_bytes(), "{name}");
    }
    for name in &disabled {
        assert_eq!(errno_of(m.read(name)), libc::EACCES, "{name} is disabled");
    }

    let status = m.terminate();
    assert!(status.success(), "SIGTERM: kvfs demo exits 0, got {status}");
    assert!(
        !common::is_mounted(&path),
        "{} is still in /proc/self/mountinfo",
        path.display()
    );
}
