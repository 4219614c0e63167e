//! Views on a real mount (docs/SEMANTICS.md, "Views"): decoded values, JSON keys, aliases and
//! mapped names, the env file. Each is read through the kernel, rotates with its source, follows
//! revocation and ownership, shows its source version in xattrs, and costs no Key Vault request
//! of its own.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestEnv, errno_of, eventually, names_in};

/// `user.kvfs.<attr>` of `path`, as text.
fn xattr(path: &Path, attr: &str) -> Option<String> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(format!("user.kvfs.{attr}")).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

#[test]
fn decoded_values_have_their_decoded_size_and_a_bad_one_is_eio() {
    let env = TestEnv::start();
    env.vault().set_secret("blob-b64", "aGVsbG8gd29ybGQ=\n");
    env.vault().set_secret("blob-hex", "DEADBEEF");
    env.vault().set_secret("blob-bad", "not base64!");
    env.vault().set_secret("plain", "aGVsbG8=");
    let m = env.mount(&["--decode", "blob-hex=hex", "--decode", "blob-*=base64"]);
    assert_eq!(m.read("blob-b64").expect("read"), b"hello world");
    let meta = std::fs::metadata(m.file("blob-b64")).expect("stat");
    assert_eq!(meta.len(), 11, "the size is the decoded size");
    // The first matching rule wins.
    assert_eq!(m.read("blob-hex").expect("read"), [0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(errno_of(m.read("blob-bad")), libc::EIO);
    assert_eq!(
        m.read("plain").expect("read"),
        b"aGVsbG8=",
        "no rule: the value as stored"
    );
    let log = std::fs::read_to_string(&m.log_path).expect("log");
    assert!(log.contains("not base64"), "the reason is logged");
    assert!(!log.contains("not base64!"), "never the value");
}

#[test]
fn json_keys_are_files_and_nested_objects_directories() {
    let env = TestEnv::start();
    let v1 = env.vault().set_secret(
        "app-config",
        r#"{"user":"svc","db":{"host":"db.local","port":5432,"tls":true},"tags":["a","b"],"note":"line1\nline2"}"#,
    );
    env.vault().set_secret("app-broken", "{not json");
    env.vault().set_secret("other", r#"{"k":"v"}"#);
    let m = env.mount(&["--json-keys", "app-*", "--cache-ttl", "1s"]);
    let dir = m.file("app-config.d");
    env.vault().reset_counters();
    assert_eq!(names_in(&dir), ["db", "note", "tags", "user"]);
    assert_eq!(std::fs::read(dir.join("user")).expect("user"), b"svc");
    assert_eq!(
        std::fs::read(dir.join("note")).expect("note"),
        b"line1\nline2"
    );
    assert_eq!(
        std::fs::read(dir.join("tags")).expect("tags"),
        br#"["a","b"]"#
    );
    assert!(dir.join("db").is_dir());
    assert_eq!(names_in(&dir.join("db")), ["host", "port", "tls"]);
    assert_eq!(std::fs::read(dir.join("db/port")).expect("port"), b"5432");
    assert_eq!(
        std::fs::read(dir.join("db/host")).expect("host"),
        b"db.local"
    );
    assert_eq!(
        std::fs::metadata(dir.join("db/host")).expect("stat").len(),
        8
    );
    assert_eq!(errno_of(std::fs::read(dir.join("missing"))), libc::ENOENT);
    assert_eq!(
        xattr(&dir.join("db/host"), "version").as_deref(),
        Some(v1.as_str())
    );
    let gets = env.counters().get_secret;
    assert!(
        gets <= 1,
        "the views cost no request of their own: {gets} GETs"
    );
    // Malformed JSON: EIO on the view, the secret's own file untouched.
    assert_eq!(
        errno_of(std::fs::read_dir(m.file("app-broken.d"))),
        libc::EIO
    );
    assert_eq!(m.read("app-broken").expect("raw"), b"{not json");
    // Not matching --json-keys: no directory.
    assert_eq!(errno_of(std::fs::read_dir(m.file("other.d"))), libc::ENOENT);
    let listed = names_in(&m.path);
    assert!(listed.contains(&"app-config.d".to_owned()), "{listed:?}");
    assert!(!listed.contains(&"other.d".to_owned()), "{listed:?}");

    // Rotation: a held file keeps its version, a new open sees the new one.
    let held = std::fs::File::open(dir.join("user")).expect("open");
    let v2 = env
        .vault()
        .set_secret("app-config", r#"{"user":"svc2","db":{"host":"db2"}}"#);
    assert!(
        eventually(Duration::from_secs(10), || {
            std::fs::read(m.file("app-config.d/user")).is_ok_and(|b| b == b"svc2")
        }),
        "the view follows the rotation"
    );
    assert_eq!(
        xattr(&m.file("app-config.d/db/host"), "version").as_deref(),
        Some(v2.as_str())
    );
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &held, &mut old).expect("held read");
    assert_eq!(old, "svc", "a held descriptor keeps its version");
    assert_eq!(names_in(&m.file("app-config.d/db")), ["host"]);

    // Revocation: the view refuses with the source.
    env.vault().set_enabled("app-config", false);
    assert!(
        eventually(Duration::from_secs(10), || {
            std::fs::read(m.file("app-config.d/user"))
                .err()
                .and_then(|e| e.raw_os_error())
                == Some(libc::EACCES)
        }),
        "a disabled secret's view is refused"
    );
}

#[test]
fn aliases_and_mapped_names_open_the_secrets_file() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "hunter2");
    env.vault()
        .set_secret("ConnectionStrings--Main", "Server=x");
    env.vault().set_secret("api-key", "k1");
    let m = env.mount(&[
        "--alias",
        "password.txt=db-password",
        "--name-map",
        "env",
        "--owner",
        "db-*=1234:1234:0440",
        "--cache-ttl",
        "1s",
    ]);
    assert_eq!(m.read("password.txt").expect("alias"), b"hunter2");
    assert_eq!(m.read("DB_PASSWORD").expect("env name"), b"hunter2");
    assert_eq!(m.read("API_KEY").expect("env name"), b"k1");
    assert_eq!(
        m.read("ConnectionStrings:Main").expect("config key"),
        b"Server=x"
    );
    assert_eq!(
        m.read("CONNECTIONSTRINGS__MAIN").expect("env name"),
        b"Server=x"
    );
    // One file under several names: one inode, the secret's owner and mode.
    let own = std::fs::metadata(m.file("db-password")).expect("stat");
    let alias = std::fs::metadata(m.file("DB_PASSWORD")).expect("stat");
    assert_eq!(own.ino(), alias.ino());
    assert_eq!((alias.uid(), alias.mode() & 0o777), (1234, 0o440));
    assert_eq!(errno_of(m.read("NO_SUCH_SECRET")), libc::ENOENT);
    assert_eq!(
        errno_of(m.read("db_password")),
        libc::ENOENT,
        "only names the map makes"
    );
    let listed = names_in(&m.path);
    for name in [
        "DB_PASSWORD",
        "API_KEY",
        "password.txt",
        "ConnectionStrings:Main",
    ] {
        assert!(listed.contains(&name.to_owned()), "{name} in {listed:?}");
    }
    // Rotation reaches every name.
    env.vault().set_secret("db-password", "hunter3");
    assert!(
        eventually(Duration::from_secs(10), || {
            m.read("DB_PASSWORD").is_ok_and(|b| b == b"hunter3")
                && m.read("password.txt").is_ok_and(|b| b == b"hunter3")
        }),
        "aliases follow the rotation"
    );
}

/// Values that break naive quoting, read back by bash's `set -a; source`.
const NASTY: [(&str, &str, &str); 6] = [
    ("app-quote", "APP_QUOTE", r#"it's "quoted""#),
    ("app-dollar", "APP_DOLLAR", "$HOME and ${PATH} and $(id)"),
    ("app-tick", "APP_TICK", "`rm -rf /` \\ back"),
    ("app-lines", "APP_LINES", "line1\nline2\n"),
    ("app-hash", "APP_HASH", "value # not a comment"),
    ("app-trail", "APP_TRAIL", "ends in a backslash\\"),
];

#[test]
fn the_env_file_sources_back_exactly_and_rotates() {
    let env = TestEnv::start();
    for (name, _, value) in NASTY {
        env.vault().set_secret(name, value);
    }
    env.vault().set_secret("other", "not in the file");
    env.vault().set_secret("app-mine", "owned by another uid");
    let tagged = kvfs::emulator::SecretOptions {
        tags: [("env".to_owned(), "app".to_owned())].into(),
        ..Default::default()
    };
    env.vault().set_secret_with("svc-token", "by tag", tagged);
    let other_tag = kvfs::emulator::SecretOptions {
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    env.vault()
        .set_secret_with("svc-other", "other tag value", other_tag);
    let m = env.mount(&[
        "--env-file",
        "app-*",
        "--env-file",
        "tag:env=app",
        "--owner",
        "app-mine=1234:1234:0400",
        "--cache-ttl",
        "1s",
    ]);
    let path = m.file(".env");
    assert!(names_in(&m.path).contains(&".env".to_owned()));
    let vars: Vec<&str> = NASTY.iter().map(|(_, var, _)| *var).collect();
    let source = |vars: &[&str]| -> Vec<String> {
        let printf: String = vars.iter().map(|v| format!(" \"${v}\"")).collect();
        let script = format!(
            "set -a; source '{}'; printf '%s\\0'{printf}",
            path.display()
        );
        let out = Command::new("bash")
            .args(["--noprofile", "--norc", "-c", &script])
            .env_clear()
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .split('\0')
            .take(vars.len())
            .map(str::to_owned)
            .collect()
    };
    let got = source(&vars);
    for ((name, _, want), got) in NASTY.iter().zip(&got) {
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(source(&["SVC_TOKEN"])[0], "by tag", "selected by its tag");
    let text = std::fs::read_to_string(&path).expect(".env");
    assert!(!text.contains("not in the file"));
    assert!(
        !text.contains("other tag value"),
        "another tag value stays out"
    );
    assert!(
        !text.contains("owned by another uid"),
        "a secret with an owner of its own stays out"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        text.len() as u64
    );

    let held = std::fs::File::open(&path).expect("open");
    env.vault().set_secret("app-quote", "rotated");
    assert!(
        eventually(Duration::from_secs(10), || source(&["APP_QUOTE"])[0]
            == "rotated"),
        "the env file follows a rotation of one of its secrets"
    );
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &held, &mut old).expect("held read");
    assert_eq!(old, text, "a held descriptor keeps its file");
}

#[test]
fn views_under_in_place_rotation() {
    let env = TestEnv::start();
    env.vault().set_secret("blob", "b25l"); // "one"
    env.vault().set_secret("cfg", r#"{"k":"one"}"#);
    let m = env.mount(&[
        "--rotation",
        "in-place",
        "--cache-ttl",
        "1s",
        "--decode",
        "blob=base64",
        "--alias",
        "BLOB=blob",
        "--json-keys",
        "cfg",
    ]);
    assert_eq!(m.read("blob").expect("read"), b"one");
    assert_eq!(m.read("BLOB").expect("alias"), b"one");
    assert_eq!(std::fs::read(m.file("cfg.d/k")).expect("key"), b"one");
    let held = std::fs::File::open(m.file("BLOB")).expect("open");
    env.vault().set_secret("blob", "dGhyZWU="); // "three"
    env.vault().set_secret("cfg", r#"{"k":"three"}"#);
    assert!(
        eventually(Duration::from_secs(10), || {
            m.read("blob").is_ok_and(|b| b == b"three")
                && m.read("BLOB").is_ok_and(|b| b == b"three")
                && std::fs::read(m.file("cfg.d/k")).is_ok_and(|b| b == b"three")
        }),
        "in place, the name's one inode shows the new version, decoded"
    );
    assert_eq!(std::fs::metadata(m.file("blob")).expect("stat").len(), 5);
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut old).expect("held read");
    assert_eq!(old, b"one", "an open handle keeps the version it pinned");
}
