//! Unit tests of `fs`: plain Results over an in-memory store, no mount.
use super::*;
use crate::cache::CacheConfig;
use crate::store::MemoryStore;
use fuser::FileType;
use std::ffi::OsString;
use std::num::NonZeroUsize;

struct Fixture {
    _rt: tokio::runtime::Runtime,
    store: Arc<MemoryStore>,
    fs: SecretFs,
    invalidated: Arc<Mutex<Vec<String>>>,
}

struct Recorder(Arc<Mutex<Vec<String>>>);

impl Invalidate for Recorder {
    fn entry(&self, parent: u64, name: &str) {
        self.0.lock().unwrap().push(format!("{parent}/{name}"));
    }

    fn attributes(&self, ino: u64) {
        self.0.lock().unwrap().push(format!("attr {ino}"));
    }

    fn data(&self, ino: u64) {
        self.0.lock().unwrap().push(format!("data {ino}"));
    }
}

/// A filesystem over an in-memory store behind a cache with `ttl` (zero: every lookup asks).
fn fixture_with_ttl(ttl: Duration) -> Fixture {
    fixture_with(ttl, Rotation::NewInode, 100)
}

fn fixture_with(ttl: Duration, rotation: Rotation, capacity: usize) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    store.put("db-password", "hunter2");
    store.put("api-key", "k");
    store.put("off", "x");
    store.set_enabled("off", false);
    let fs = fs_over(store.clone(), &rt, ttl, rotation, capacity);
    let invalidated = Arc::new(Mutex::new(Vec::new()));
    fs.set_invalidator(Arc::new(Recorder(invalidated.clone())));
    Fixture {
        _rt: rt,
        store,
        fs,
        invalidated,
    }
}

/// A filesystem over `store` (a second one over the same store plays a successor).
fn fs_over(
    store: Arc<MemoryStore>,
    rt: &tokio::runtime::Runtime,
    ttl: Duration,
    rotation: Rotation,
    capacity: usize,
) -> SecretFs {
    let cache = SecretCache::new(
        store.clone(),
        CacheConfig {
            capacity: NonZeroUsize::new(capacity).unwrap(),
            max_bytes: 1 << 20,
            ttl,
            negative_ttl: Duration::ZERO,
            list_ttl: Duration::ZERO,
            max_stale: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
        },
    );
    SecretFs::new(
        cache,
        rt.handle().clone(),
        FsConfig {
            rotation,
            uid: 1,
            gid: 2,
            file_mode: 0o400,
            dir_mode: 0o500,
            entry_ttl: Duration::from_secs(86400),
            attr_ttl: Duration::from_secs(86400),
            negative_ttl: Duration::from_secs(30),
            request_timeout: Duration::from_millis(200),
        },
    )
}

impl Fixture {
    /// The inode a lookup of `name` in `parent` answers (one more kernel reference).
    fn ino(&self, parent: u64, name: &str) -> u64 {
        self.on(self.fs.lookup(parent, &os(name)))
            .unwrap()
            .attr
            .ino
            .0
    }

    /// Runs a filesystem call to its answer, as the adapter's task would.
    fn on<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self._rt.block_on(call)
    }
}

fn fixture() -> Fixture {
    fixture_with_ttl(Duration::ZERO)
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn names((entries, start): (Arc<Vec<DirEntry>>, usize)) -> Vec<String> {
    entries[start..].iter().map(|e| e.name.clone()).collect()
}

#[test]
fn lookup_gives_exact_size_and_owner() {
    let f = fixture();
    let e = f.on(f.fs.lookup(ROOT, &os("db-password"))).unwrap();
    assert_eq!(e.attr.size, 7);
    assert_eq!((e.attr.uid, e.attr.gid, e.attr.perm), (1, 2, 0o400));
    assert_eq!(e.attr.kind, FileType::RegularFile);
}

#[test]
fn invalid_names_cost_no_request_and_are_cached_negative() {
    let f = fixture();
    for bad in [".git", "a_b", "foo.swp", "x.y", ""] {
        let err = f.on(f.fs.lookup(ROOT, &os(bad))).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert_eq!(f.fs.negative_ttl(&err), Some(INVALID_NAME_TTL));
    }
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = OsStr::from_bytes(b"\xff\xfe");
    assert_eq!(
        f.on(f.fs.lookup(ROOT, not_utf8)).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(f.store.gets(), 0);
}

#[test]
fn errno_rows_reach_the_reader() {
    let f = fixture();
    let missing = f.on(f.fs.lookup(ROOT, &os("missing"))).unwrap_err();
    assert_eq!(missing.errno(), libc::ENOENT);
    assert_eq!(f.fs.negative_ttl(&missing), Some(Duration::from_secs(30)));
    let off = f.on(f.fs.lookup(ROOT, &os("off"))).unwrap_err();
    assert_eq!(off.errno(), libc::EACCES);
    assert_eq!(f.fs.negative_ttl(&off), None);
    let e = f.on(f.fs.lookup(ROOT, &os("db-password"))).unwrap();
    assert_eq!(
        f.on(f.fs.lookup(e.attr.ino.0, &os("x")))
            .unwrap_err()
            .errno(),
        libc::ENOTDIR
    );
    assert_eq!(
        f.on(f.fs.lookup(999, &os("x"))).unwrap_err().errno(),
        libc::ENOENT
    );
    // Last: a transient failure opens an outage window in which misses fail at once.
    f.store
        .fail_with(Some(StoreError::Throttled { retry_after: None }));
    assert_eq!(
        f.on(f.fs.lookup(ROOT, &os("api-key"))).unwrap_err().errno(),
        libc::EIO
    );
}

#[test]
fn request_timeout_bounds_a_stalled_store() {
    let f = fixture();
    f.store.set_delay(Duration::from_secs(30));
    let started = std::time::Instant::now();
    let err = f.on(f.fs.lookup(ROOT, &os("api-key"))).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(matches!(err, FsError::Store(StoreError::Timeout(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn reads_are_clamped() {
    let f = fixture();
    let ino = f.ino(ROOT, "db-password");
    assert_eq!(
        f.on(f.fs.read(ino, 0, 0, 4096)).unwrap().as_bytes(),
        b"hunter2"
    );
    assert_eq!(f.on(f.fs.read(ino, 0, 2, 3)).unwrap().as_bytes(), b"nte");
    assert_eq!(f.on(f.fs.read(ino, 0, 7, 10)).unwrap().as_bytes(), b"");
    assert_eq!(
        f.on(f.fs.read(ino, 0, u64::MAX, u32::MAX))
            .unwrap()
            .as_bytes(),
        b""
    );
    assert_eq!(
        f.on(f.fs.read(ROOT, 0, 0, 1)).unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(
        f.on(f.fs.read(12345, 0, 0, 1)).unwrap_err().errno(),
        libc::ENOENT
    );
}

#[test]
fn new_version_new_inode_old_one_readable_until_forgotten() {
    let f = fixture();
    let old = f.ino(ROOT, "api-key");
    assert_eq!(f.ino(ROOT, "API-KEY"), old);
    f.store.put("api-key", "rotated");
    let new = f.ino(ROOT, "api-key");
    assert_ne!(old, new);
    assert_eq!(f.on(f.fs.read(old, 0, 0, 100)).unwrap().as_bytes(), b"k");
    assert_eq!(
        f.on(f.fs.read(new, 0, 0, 100)).unwrap().as_bytes(),
        b"rotated"
    );
    f.fs.forget(old, 1);
    assert!(
        f.on(f.fs.read(old, 0, 0, 1)).is_ok(),
        "one reference is left"
    );
    f.fs.forget(old, 1);
    assert_eq!(
        f.on(f.fs.read(old, 0, 0, 1)).unwrap_err().errno(),
        libc::ENOENT
    );
    assert!(f.on(f.fs.read(new, 0, 0, 1)).is_ok());
}

#[test]
fn listing_shows_enabled_secrets_and_never_fetches_values() {
    let f = fixture();
    assert_eq!(
        names(f.on(f.fs.readdir(ROOT, 0)).unwrap()),
        [".", "..", "api-key", "db-password"]
    );
    assert_eq!(names(f.on(f.fs.readdir(ROOT, 3)).unwrap()), ["db-password"]);
    assert!(names(f.on(f.fs.readdir(ROOT, 99)).unwrap()).is_empty());
    assert_eq!(f.store.gets(), 0);
    assert_eq!(f.on(f.fs.readdir(42, 0)).unwrap_err().errno(), libc::ENOENT);
}

#[test]
fn root_opendir_lets_the_kernel_keep_an_unchanged_listing() {
    let f = fixture();
    assert!(!f.on(f.fs.opendir(ROOT)).unwrap(), "nothing cached yet");
    assert!(f.on(f.fs.opendir(ROOT)).unwrap(), "same listing");
    f.store.put("api-key", "rotated");
    assert!(
        f.on(f.fs.opendir(ROOT)).unwrap(),
        "same names: a new version changes no entry"
    );
    f.store.put("brand-new", "v");
    assert!(!f.on(f.fs.opendir(ROOT)).unwrap(), "a new name");
    assert!(f.on(f.fs.opendir(ROOT)).unwrap());
}

#[test]
fn versions_directory_lists_and_reads_every_version() {
    let f = fixture();
    let old_version = {
        let e = f.on(f.fs.lookup(ROOT, &os("api-key"))).unwrap();
        f.fs.xattrs(&f.fs.properties(e.attr.ino.0).unwrap())[0]
            .1
            .clone()
    };
    f.store.put("api-key", "second");
    let dir = f.on(f.fs.lookup(VERSIONS, &os("api-key"))).unwrap().attr;
    assert_eq!(dir.kind, FileType::Directory);
    let listed = names(f.on(f.fs.readdir(dir.ino.0, 2)).unwrap());
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&old_version));
    let file = f
        .on(f.fs.lookup(dir.ino.0, &os(&old_version)))
        .unwrap()
        .attr;
    assert_eq!(
        f.on(f.fs.read(file.ino.0, 0, 0, 100)).unwrap().as_bytes(),
        b"k"
    );
    assert_eq!(
        f.on(f.fs.lookup(dir.ino.0, &os("nothex")))
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert_eq!(
        f.on(f.fs.lookup(VERSIONS, &os("absent")))
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert!(!names(f.on(f.fs.readdir(ROOT, 0)).unwrap()).contains(&VERSIONS_DIR.to_owned()));
}

#[test]
fn xattrs_describe_the_version_not_the_value() {
    let f = fixture_with_ttl(Duration::from_secs(300));
    let ino = f.ino(ROOT, "db-password");
    let list = f.fs.listxattr(ino).unwrap();
    let text = String::from_utf8(list).unwrap();
    assert!(text.contains("user.kvfs.version\0"));
    assert!(text.contains("user.kvfs.updated\0"));
    assert!(text.contains("user.kvfs.enabled\0"));
    assert!(!text.contains("user.kvfs.stale"));
    assert!(!text.contains("hunter2"));
    assert_eq!(
        f.fs.getxattr(ino, &os("user.kvfs.enabled")).unwrap(),
        b"true"
    );
    assert_eq!(
        f.fs.getxattr(ino, &os("user.other")).unwrap_err().errno(),
        libc::ENODATA
    );
}

#[test]
fn in_place_rotation_keeps_one_inode_and_pins_open_handles() {
    let f = fixture_with(Duration::from_secs(300), Rotation::InPlace, 100);
    let ino = f.ino(ROOT, "api-key");
    let before = f.on(f.fs.open(ino)).unwrap().handle.expect("a handle");
    f.store.put("api-key", "rotated");
    f._rt.block_on(async {
        let held = f.fs.in_use();
        let changes = f.fs.cache().refresh(&held).await.unwrap().changes;
        f.fs.apply(&changes);
    });
    let after = f.on(f.fs.open(ino)).unwrap().handle.expect("a handle");
    assert_eq!(
        f.on(f.fs.read(ino, before, 0, 100)).unwrap().as_bytes(),
        b"k"
    );
    assert_eq!(
        f.on(f.fs.read(ino, after, 0, 100)).unwrap().as_bytes(),
        b"rotated"
    );
    assert_eq!(f.fs.getattr(ino).unwrap().0.size, 7);
    assert!(
        f.invalidated
            .lock()
            .unwrap()
            .contains(&format!("attr {ino}")),
        "the kernel forgets the old size"
    );
    assert_eq!(f.ino(ROOT, "api-key"), ino);
    f.fs.release(before);
    assert_eq!(
        f.on(f.fs.read(ino, before, 0, 100)).unwrap().as_bytes(),
        b"rotated"
    );
}

#[test]
fn capacity_bounds_values_held_by_inodes() {
    let f = fixture_with(Duration::from_secs(300), Rotation::NewInode, 1);
    let a = f.ino(ROOT, "api-key");
    let b = f.ino(ROOT, "db-password");
    assert_eq!(f.store.gets(), 2);
    // db-password evicted api-key's value; the inode fetches its exact version again.
    assert_eq!(f.on(f.fs.read(a, 0, 0, 100)).unwrap().as_bytes(), b"k");
    assert_eq!(f.store.gets(), 3);
    assert_eq!(
        f.fs.getattr(b).unwrap().0.size,
        7,
        "metadata needs no value"
    );
    assert_eq!(f.store.gets(), 3);
}

#[test]
fn only_the_vaults_spelling_is_kept_long_and_invalidated() {
    let f = fixture_with_ttl(Duration::from_secs(300));
    let listed = f.on(f.fs.lookup(ROOT, &os("api-key"))).unwrap();
    let other = f.on(f.fs.lookup(ROOT, &os("API-Key"))).unwrap();
    assert_eq!(listed.attr.ino, other.attr.ino, "one version, one inode");
    assert_eq!(listed.entry_ttl, Duration::from_secs(86400));
    assert_eq!(
        other.entry_ttl, SPELLING_TTL,
        "another spelling expires by itself"
    );
    f.fs.apply(&[Change::Updated(SecretName::parse("api-key").unwrap())]);
    let got = f.invalidated.lock().unwrap().clone();
    assert_eq!(got, ["1/api-key"]);
    assert_eq!(f.fs.in_use().len(), 1);
}

#[test]
fn spellings_cost_no_memory() {
    let f = fixture_with_ttl(Duration::from_secs(300));
    let ino = f.ino(ROOT, "api-key");
    let mut spelling = String::from("api-key");
    for i in 0..2000u32 {
        // Every case variant of the name in turn.
        spelling = "api-key"
            .chars()
            .enumerate()
            .map(|(j, c)| {
                if i >> j & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(f.ino(ROOT, &spelling), ino);
    }
    let inodes = f.fs.inodes();
    assert_eq!(
        (inodes.nodes().count(), inodes.keys().count()),
        (1, 1),
        "{spelling}"
    );
}

#[test]
fn in_use_is_the_newest_version_even_when_an_older_one_was_opened_later() {
    let f = fixture();
    let first = f.ino(ROOT, "api-key");
    let old_version = f.fs.properties(first).unwrap().version.unwrap();
    f.fs.forget(first, 1);
    std::thread::sleep(Duration::from_millis(5)); // `updated` must move
    f.store.put("api-key", "rotated");
    let current = f.ino(ROOT, "api-key");
    let dir = f.ino(VERSIONS, "api-key");
    let old = f.ino(dir, &old_version);
    assert!(old > current, "the old version has the higher inode number");
    let held = f.fs.in_use();
    assert_eq!(held.len(), 1);
    assert_ne!(held[0].version.as_deref(), Some(old_version.as_str()));
}

#[test]
fn revocation_stops_every_inode_and_handle() {
    let f = fixture_with(Duration::from_secs(300), Rotation::InPlace, 100);
    let name = SecretName::parse("db-password").unwrap();
    let ino = f.ino(ROOT, "db-password");
    let handle = f.on(f.fs.open(ino)).unwrap().handle.unwrap();
    let versions = f.ino(VERSIONS, "db-password");
    let version =
        f.fs.cache()
            .peek(&name)
            .unwrap()
            .properties
            .version
            .clone()
            .unwrap();
    let exact = f.ino(versions, &version);
    assert!(f.on(f.fs.read(exact, 0, 0, 100)).is_ok());

    f.fs.apply(&[Change::Gone(
        name,
        Revoked::Denied(crate::error::Forbidden::SecretDisabled),
    )]);
    for (ino, handle) in [(ino, handle), (exact, 0)] {
        let err = f.on(f.fs.read(ino, handle, 0, 100)).unwrap_err();
        assert_eq!(err.errno(), libc::EACCES);
    }
    let got = f.invalidated.lock().unwrap().clone();
    assert!(got.contains(&format!("data {exact}")), "{got:?}");
    assert!(got.contains(&format!("{versions}/{version}")), "{got:?}");
    assert!(got.contains(&"1/db-password".to_owned()), "{got:?}");
    assert!(f.fs.in_use().is_empty(), "nothing revoked is refreshed");
}

/// The fixture plus `hidden-one`, with `--owner DB-*=1001:1002:0440` and `--exclude hidden-*`.
fn fixture_with_access() -> Fixture {
    let mut f = fixture();
    f.store.put("hidden-one", "h");
    let rules = crate::access::AccessRules::new(
        &[crate::access::parse_owner_rule("DB-*=1001:1002:0440").unwrap()],
        &[],
        &["hidden-*".to_owned()],
    )
    .unwrap();
    f.fs = f.fs.with_access(rules);
    f
}

#[test]
fn owner_rules_give_files_and_versions_their_owner_and_mode() {
    let f = fixture_with_access();
    let e = f.on(f.fs.lookup(ROOT, &os("db-password"))).unwrap();
    assert_eq!((e.attr.uid, e.attr.gid, e.attr.perm), (1001, 1002, 0o440));
    let (attr, _) = f.fs.getattr(e.attr.ino.0).unwrap();
    assert_eq!((attr.uid, attr.gid, attr.perm), (1001, 1002, 0o440));
    // `.versions/<name>`: the secret's owner, search added where read is set.
    let dir = f.on(f.fs.lookup(VERSIONS, &os("db-password"))).unwrap();
    assert_eq!(
        (dir.attr.uid, dir.attr.gid, dir.attr.perm, dir.attr.kind),
        (1001, 1002, 0o550, FileType::Directory)
    );
    let (attr, _) = f.fs.getattr(dir.attr.ino.0).unwrap();
    assert_eq!((attr.uid, attr.gid, attr.perm), (1001, 1002, 0o550));
    let (entries, _) = f.on(f.fs.readdir(dir.attr.ino.0, 0)).unwrap();
    let version = entries.last().unwrap().name.clone();
    let v = f.on(f.fs.lookup(dir.attr.ino.0, &os(&version))).unwrap();
    assert_eq!((v.attr.uid, v.attr.gid, v.attr.perm), (1001, 1002, 0o440));
    // No rule matches: the global owner and modes.
    let api = f.on(f.fs.lookup(ROOT, &os("api-key"))).unwrap();
    assert_eq!((api.attr.uid, api.attr.gid, api.attr.perm), (1, 2, 0o400));
    let (root, _) = f.fs.getattr(ROOT).unwrap();
    assert_eq!((root.uid, root.gid, root.perm), (1, 2, 0o500));
    let (versions, _) = f.fs.getattr(VERSIONS).unwrap();
    assert_eq!((versions.uid, versions.gid, versions.perm), (1, 2, 0o500));
}

#[test]
fn hidden_names_are_not_listed_and_cost_no_request() {
    let f = fixture_with_access();
    let gets = f.store.gets();
    for (parent, name) in [
        (ROOT, "hidden-one"),
        (ROOT, "HIDDEN-One"),
        (VERSIONS, "hidden-one"),
    ] {
        let err = f.on(f.fs.lookup(parent, &os(name))).unwrap_err();
        assert!(matches!(err, FsError::Hidden), "{name}: {err:?}");
        assert_eq!(err.errno(), libc::ENOENT);
        assert_eq!(f.fs.negative_ttl(&err), Some(INVALID_NAME_TTL));
    }
    assert_eq!(f.store.gets(), gets, "a hidden name is never fetched");
    for dir in [ROOT, VERSIONS] {
        let mut listed = names(f.on(f.fs.readdir(dir, 2)).unwrap());
        listed.sort();
        assert_eq!(listed, vec!["api-key".to_owned(), "db-password".to_owned()]);
    }
}

#[test]
fn open_names_the_version_read() {
    for rotation in [Rotation::NewInode, Rotation::InPlace] {
        let f = fixture_with(Duration::ZERO, rotation, 100);
        let e = f.on(f.fs.lookup(ROOT, &os("db-password"))).unwrap();
        let opened = f.on(f.fs.open(e.attr.ino.0)).unwrap();
        assert_eq!(opened.name.as_str(), "db-password");
        let version =
            f.fs.getxattr(e.attr.ino.0, &os("user.kvfs.version"))
                .unwrap();
        assert_eq!(
            opened.version.as_deref().map(str::as_bytes),
            Some(&version[..])
        );
        assert_eq!(opened.handle.is_some(), rotation == Rotation::InPlace);
    }
}

fn views() -> ViewRules {
    ViewRules::new(
        &[crate::views::decode::parse_decode_rule("b64=base64").unwrap()],
        &["cfg".to_owned()],
        &[crate::views::names::parse_alias("PASSWORD=db-password").unwrap()],
        None,
        &["api-*".to_owned(), "db-*".to_owned()],
    )
    .unwrap()
}

/// Views survive a handover: the successor restores every view node with its number, its
/// lookups and its render, reads the same bytes by exact version, and finds them by key.
#[test]
fn views_are_handed_over_with_their_renders() {
    let mut f = fixture_with_ttl(Duration::from_secs(300));
    f.store.put("b64", "aGk=");
    f.store.put("cfg", r#"{"a":{"b":"deep"}}"#);
    f.fs = std::mem::replace(
        &mut f.fs,
        fs_over(
            f.store.clone(),
            &f._rt,
            Duration::ZERO,
            Rotation::NewInode,
            1,
        ),
    )
    .with_views(views());
    let fs = &f.fs;
    let b64 = f.on(fs.lookup(ROOT, &os("b64"))).unwrap().attr;
    let alias = f.on(fs.lookup(ROOT, &os("PASSWORD"))).unwrap().attr;
    let dir = f.on(fs.lookup(ROOT, &os("cfg.d"))).unwrap().attr.ino.0;
    let sub = f.on(fs.lookup(dir, &os("a"))).unwrap().attr.ino.0;
    let leaf = f.on(fs.lookup(sub, &os("b"))).unwrap().attr;
    let env = f.on(fs.lookup(ROOT, &os(ENV_FILE))).unwrap().attr;
    let env_text = f
        .on(fs.read(env.ino.0, 0, 0, 4096))
        .unwrap()
        .as_bytes()
        .to_vec();
    assert_eq!(env_text, b"API_KEY='k'\nDB_PASSWORD='hunter2'\n");
    assert_eq!(b64.size, 2);
    assert_eq!(leaf.size, 4);

    let json = serde_json::to_vec(&fs.snapshot()).unwrap();
    let successor = fs_over(
        f.store.clone(),
        &f._rt,
        Duration::ZERO,
        Rotation::NewInode,
        1,
    )
    .with_views(views());
    successor
        .restore(serde_json::from_slice(&json).unwrap())
        .unwrap();
    for (ino, want) in [
        (b64.ino.0, &b"hi"[..]),
        (alias.ino.0, b"hunter2"),
        (leaf.ino.0, b"deep"),
        (env.ino.0, &env_text[..]),
    ] {
        let got = f.on(successor.read(ino, 0, 0, 4096)).unwrap();
        assert_eq!(got.as_bytes(), want, "inode {ino}");
        assert_eq!(successor.getattr(ino).unwrap().0.size, want.len() as u64);
    }
    // Found again by key: the same inodes, not new ones.
    assert_eq!(
        f.on(successor.lookup(ROOT, &os("b64"))).unwrap().attr.ino,
        b64.ino
    );
    assert_eq!(
        f.on(successor.lookup(ROOT, &os("cfg.d")))
            .unwrap()
            .attr
            .ino
            .0,
        dir
    );
    assert_eq!(
        f.on(successor.lookup(sub, &os("b"))).unwrap().attr.ino,
        leaf.ino
    );
    let names: Vec<String> = f.on(successor.readdir(sub, 0)).map(names).unwrap();
    assert_eq!(names, [".", "..", "b"]);
}
