//! The filesystem core: inodes, attributes, listings and reads as plain `Result`s.
//!
//! fuser cannot build its reply objects outside itself, so everything worth testing lives here
//! and `fuse.rs` only translates. Shape of the tree: the root directory holds one regular file
//! per enabled secret.
//!
//! Inodes are per *version*: a lookup that finds a new version of a secret gets a new inode,
//! and an old inode keeps its value readable until the kernel forgets it. So a file descriptor
//! never sees its content change under it, and an inode's attributes never change, which lets
//! the kernel cache them and its pages for long.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType, INodeNo};
use tokio::runtime::Handle;

use crate::error::StoreError;
use crate::secret::{Secret, SecretName};
use crate::store::SecretStore;

pub const ROOT: u64 = INodeNo::ROOT.0;
/// Inode numbers handed out in directory listings for names not looked up yet. A listing never
/// fetches values, so it cannot know a secret's version; these never collide with real inodes.
const LISTING_INO_BIT: u64 = 1 << 63;
const BLOCK_SIZE: u32 = 4096;
const XATTR_PREFIX: &str = "user.kvfs.";

#[derive(Clone, Debug)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long the kernel may trust a name -> inode answer before asking again.
    pub entry_ttl: Duration,
    /// How long the kernel may trust an inode's attributes. Per-version inodes never change.
    pub attr_ttl: Duration,
    /// No request waits longer than this for Key Vault or the identity endpoint.
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttribute,
    #[error("attribute buffer too small")]
    Range,
    #[error("unknown directory handle")]
    BadHandle,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// Exhaustive on purpose: a new variant must choose its errno.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound => libc::ENOENT,
            Self::NotDir => libc::ENOTDIR,
            Self::IsDir => libc::EISDIR,
            Self::ReadOnly => libc::EROFS,
            Self::NoAttribute => libc::ENODATA,
            Self::Range => libc::ERANGE,
            Self::BadHandle => libc::EBADF,
            Self::Store(e) => e.errno(),
        }
    }

    /// Routine answers (an absent name, an absent attribute) are logged at debug only.
    pub fn is_routine(&self) -> bool {
        match self {
            Self::NotFound | Self::NoAttribute | Self::Range | Self::ReadOnly => true,
            Self::NotDir | Self::IsDir | Self::BadHandle => false,
            Self::Store(e) => e.is_routine(),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// A name -> inode answer and how long the kernel may keep it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: FileAttr,
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
}

/// One directory entry of a listing, with the offset of the entry after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub next_offset: u64,
    pub kind: FileType,
    pub name: String,
}

/// Bytes of a secret to send back for a read, without copying them out of the cache.
pub struct ReadData {
    secret: Arc<Secret>,
    range: Range<usize>,
}

impl std::fmt::Debug for ReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadData({:?} of {:?})", self.range, self.secret.value)
    }
}

impl ReadData {
    pub fn as_bytes(&self) -> &[u8] {
        self.secret
            .value
            .as_bytes()
            .get(self.range.clone())
            .unwrap_or_default()
    }
}

struct Node {
    secret: Arc<Secret>,
    /// Kernel references (lookups not yet forgotten).
    lookups: u64,
}

#[derive(Default)]
struct Inodes {
    next: u64,
    nodes: HashMap<u64, Node>,
    /// (name key, version) -> inode.
    by_version: HashMap<(String, String), u64>,
}

pub struct SecretFs {
    store: Arc<dyn SecretStore>,
    runtime: Handle,
    config: FsConfig,
    inodes: Mutex<Inodes>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_handle: AtomicU64,
    mounted_at: SystemTime,
}

impl SecretFs {
    pub fn new(store: Arc<dyn SecretStore>, runtime: Handle, config: FsConfig) -> Self {
        Self {
            store,
            runtime,
            config,
            inodes: Mutex::new(Inodes {
                next: ROOT + 1,
                ..Default::default()
            }),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
        }
    }

    /// Runs a store call on the runtime, bounded by the request timeout whatever the store does.
    fn wait<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> FsResult<T> {
        let limit = self.config.request_timeout;
        self.runtime
            .block_on(async { tokio::time::timeout(limit, fut).await })
            .map_err(|_| StoreError::Timeout(limit))?
            .map_err(FsError::from)
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        if parent != ROOT {
            return Err(self.not_a_dir(parent));
        }
        // A name Key Vault cannot hold cannot exist: answer without a request.
        let name = name
            .to_str()
            .and_then(SecretName::parse)
            .ok_or(FsError::NotFound)?;
        let secret = self.wait(self.store.get(&name))?;
        let attr = self.remember(secret);
        Ok(Entry {
            attr,
            entry_ttl: self.config.entry_ttl,
            attr_ttl: self.config.attr_ttl,
        })
    }

    /// Gives the inode for this exact version (new or existing) one more kernel reference.
    fn remember(&self, secret: Arc<Secret>) -> FileAttr {
        let key = (
            secret.properties.name.key(),
            secret.properties.version.clone().unwrap_or_default(),
        );
        let mut inodes = self.inodes();
        let candidate = inodes.next;
        let ino = *inodes.by_version.entry(key).or_insert(candidate);
        if ino == candidate {
            inodes.next += 1;
        }
        let node = inodes
            .nodes
            .entry(ino)
            .or_insert(Node { secret, lookups: 0 });
        node.lookups += 1;
        self.file_attr(ino, &node.secret)
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode (and its value) goes.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut inodes = self.inodes();
        let Some(node) = inodes.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0
            && let Some(node) = inodes.nodes.remove(&ino)
        {
            let p = &node.secret.properties;
            inodes
                .by_version
                .remove(&(p.name.key(), p.version.clone().unwrap_or_default()));
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<(FileAttr, Duration)> {
        if ino == ROOT {
            return Ok((self.dir_attr(), self.config.attr_ttl));
        }
        let secret = self.secret(ino)?;
        Ok((self.file_attr(ino, &secret), self.config.attr_ttl))
    }

    fn secret(&self, ino: u64) -> FsResult<Arc<Secret>> {
        self.inodes()
            .nodes
            .get(&ino)
            .map(|n| n.secret.clone())
            .ok_or(FsError::NotFound)
    }

    fn not_a_dir(&self, ino: u64) -> FsError {
        if self.inodes().nodes.contains_key(&ino) {
            FsError::NotDir
        } else {
            FsError::NotFound
        }
    }

    /// Checks that `ino` is a readable file. Reads are served from the inode's own version.
    pub fn open(&self, ino: u64) -> FsResult<()> {
        if ino == ROOT {
            return Err(FsError::IsDir);
        }
        self.secret(ino).map(|_| ())
    }

    /// Reads `size` bytes at `offset`, clamped to the value: past the end is an empty read.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        if ino == ROOT {
            return Err(FsError::IsDir);
        }
        let secret = self.secret(ino)?;
        let len = secret.value.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Ok(ReadData {
            secret,
            range: start..end,
        })
    }

    /// Snapshots the listing for one open directory, so that paging through it with offsets
    /// sees one consistent list even if the vault changes meanwhile.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        if ino != ROOT {
            return Err(self.not_a_dir(ino));
        }
        let listing = self.wait(self.store.list())?;
        let mut entries = vec![
            DirEntry {
                ino: ROOT,
                next_offset: 1,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: ROOT,
                next_offset: 2,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for p in listing.iter().filter(|p| p.enabled) {
            entries.push(DirEntry {
                ino: listing_ino(&p.name),
                next_offset: entries.len() as u64 + 1,
                kind: FileType::RegularFile,
                name: p.name.as_str().to_owned(),
            });
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle, Arc::new(entries));
        Ok(handle)
    }

    /// The entries of an open directory from `offset` on.
    pub fn readdir(&self, handle: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let entries = self
            .dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&handle)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(entries.get(start..).unwrap_or_default().to_vec())
    }

    pub fn releasedir(&self, handle: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle);
    }

    /// Names of the metadata attributes of `ino`, NUL-terminated, as `listxattr` returns them.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if ino == ROOT {
            return Ok(Vec::new());
        }
        let secret = self.secret(ino)?;
        let mut out = Vec::new();
        for (name, _) in xattrs(&secret) {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if ino == ROOT {
            return Err(FsError::NoAttribute);
        }
        let secret = self.secret(ino)?;
        let wanted = name.to_str().ok_or(FsError::NoAttribute)?;
        xattrs(&secret)
            .into_iter()
            .find(|(n, _)| n == wanted)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }

    fn file_attr(&self, ino: u64, secret: &Secret) -> FileAttr {
        let p = &secret.properties;
        let updated = p.updated.unwrap_or(self.mounted_at);
        let size = secret.value.len() as u64;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: updated,
            mtime: updated,
            ctime: updated,
            crtime: p.created.unwrap_or(updated),
            kind: FileType::RegularFile,
            perm: self.config.file_mode,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    fn dir_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(ROOT),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm: self.config.dir_mode,
            nlink: 2,
            uid: self.config.uid,
            gid: self.config.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }
}

/// A stable inode number for a listed name (FNV-1a of its key), with the listing bit set.
fn listing_ino(name: &SecretName) -> u64 {
    let hash = name.key().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash | LISTING_INO_BIT
}

/// The metadata attributes of one version, in a fixed order. Never the value.
fn xattrs(secret: &Secret) -> Vec<(String, String)> {
    let p = &secret.properties;
    let mut out = Vec::new();
    let mut add = |name: &str, value: String| out.push((format!("{XATTR_PREFIX}{name}"), value));
    if let Some(v) = &p.version {
        add("version", v.clone());
    }
    if let Some(ct) = &p.content_type {
        add("content_type", ct.clone());
    }
    for (name, time) in [
        ("created", p.created),
        ("updated", p.updated),
        ("expires", p.expires),
        ("not_before", p.not_before),
    ] {
        if let Some(t) = time.and_then(rfc3339) {
            add(name, t);
        }
    }
    add("enabled", p.enabled.to_string());
    for (tag, value) in &p.tags {
        add(&format!("tags.{tag}"), value.clone());
    }
    out
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::ffi::OsString;

    struct Fixture {
        _rt: tokio::runtime::Runtime,
        store: Arc<MemoryStore>,
        fs: SecretFs,
    }

    fn fixture() -> Fixture {
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
        let fs = SecretFs::new(
            store.clone(),
            rt.handle().clone(),
            FsConfig {
                uid: 1,
                gid: 2,
                file_mode: 0o400,
                dir_mode: 0o500,
                entry_ttl: Duration::from_secs(1),
                attr_ttl: Duration::from_secs(60),
                request_timeout: Duration::from_millis(200),
            },
        );
        Fixture { _rt: rt, store, fs }
    }

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn lookup_gives_exact_size_and_owner() {
        let f = fixture();
        let e = f.fs.lookup(ROOT, &os("db-password")).unwrap();
        assert_eq!(e.attr.size, 7);
        assert_eq!((e.attr.uid, e.attr.gid, e.attr.perm), (1, 2, 0o400));
        assert_eq!(e.attr.kind, FileType::RegularFile);
    }

    #[test]
    fn invalid_names_cost_no_request() {
        let f = fixture();
        for bad in [".git", "a_b", "foo.swp", "x.y", ""] {
            assert_eq!(
                f.fs.lookup(ROOT, &os(bad)).unwrap_err().errno(),
                libc::ENOENT
            );
        }
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = OsStr::from_bytes(b"\xff\xfe");
        assert_eq!(
            f.fs.lookup(ROOT, not_utf8).unwrap_err().errno(),
            libc::ENOENT
        );
        assert_eq!(f.store.gets(), 0);
    }

    #[test]
    fn errno_rows_reach_the_reader() {
        let f = fixture();
        assert_eq!(
            f.fs.lookup(ROOT, &os("missing")).unwrap_err().errno(),
            libc::ENOENT
        );
        assert_eq!(
            f.fs.lookup(ROOT, &os("off")).unwrap_err().errno(),
            libc::EACCES
        );
        f.store
            .fail_with(Some(StoreError::Throttled { retry_after: None }));
        assert_eq!(
            f.fs.lookup(ROOT, &os("api-key")).unwrap_err().errno(),
            libc::EIO
        );
        f.store.fail_with(None);
        let e = f.fs.lookup(ROOT, &os("db-password")).unwrap();
        assert_eq!(
            f.fs.lookup(e.attr.ino.0, &os("x")).unwrap_err().errno(),
            libc::ENOTDIR
        );
        assert_eq!(
            f.fs.lookup(999, &os("x")).unwrap_err().errno(),
            libc::ENOENT
        );
    }

    #[test]
    fn request_timeout_bounds_a_stalled_store() {
        let f = fixture();
        f.store.set_delay(Duration::from_secs(30));
        let started = std::time::Instant::now();
        let err = f.fs.lookup(ROOT, &os("api-key")).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(matches!(err, FsError::Store(StoreError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn reads_are_clamped() {
        let f = fixture();
        let ino = f.fs.lookup(ROOT, &os("db-password")).unwrap().attr.ino.0;
        assert_eq!(f.fs.read(ino, 0, 4096).unwrap().as_bytes(), b"hunter2");
        assert_eq!(f.fs.read(ino, 2, 3).unwrap().as_bytes(), b"nte");
        assert_eq!(f.fs.read(ino, 7, 10).unwrap().as_bytes(), b"");
        assert_eq!(f.fs.read(ino, u64::MAX, u32::MAX).unwrap().as_bytes(), b"");
        assert_eq!(f.fs.read(ROOT, 0, 1).unwrap_err().errno(), libc::EISDIR);
        assert_eq!(f.fs.read(12345, 0, 1).unwrap_err().errno(), libc::ENOENT);
    }

    #[test]
    fn new_version_new_inode_old_one_readable_until_forgotten() {
        let f = fixture();
        let old = f.fs.lookup(ROOT, &os("api-key")).unwrap().attr.ino.0;
        // Same version looked up again: same inode.
        assert_eq!(f.fs.lookup(ROOT, &os("API-KEY")).unwrap().attr.ino.0, old);
        f.store.put("api-key", "rotated");
        // The store here is uncached, so the next lookup sees the new version.
        let new = f.fs.lookup(ROOT, &os("api-key")).unwrap().attr.ino.0;
        assert_ne!(old, new);
        assert_eq!(f.fs.read(old, 0, 100).unwrap().as_bytes(), b"k");
        assert_eq!(f.fs.read(new, 0, 100).unwrap().as_bytes(), b"rotated");
        f.fs.forget(old, 1);
        assert!(f.fs.read(old, 0, 1).is_ok(), "one reference is left");
        f.fs.forget(old, 1);
        assert_eq!(f.fs.read(old, 0, 1).unwrap_err().errno(), libc::ENOENT);
        assert!(f.fs.read(new, 0, 1).is_ok());
    }

    #[test]
    fn listing_shows_enabled_secrets_and_never_fetches_values() {
        let f = fixture();
        let h = f.fs.opendir(ROOT).unwrap();
        let names: Vec<_> =
            f.fs.readdir(h, 0)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
        assert_eq!(names, [".", "..", "api-key", "db-password"]);
        let rest: Vec<_> =
            f.fs.readdir(h, 3)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
        assert_eq!(rest, ["db-password"]);
        assert!(f.fs.readdir(h, 99).unwrap().is_empty());
        f.fs.releasedir(h);
        assert_eq!(f.fs.readdir(h, 0).unwrap_err().errno(), libc::EBADF);
        assert_eq!(f.store.gets(), 0);
        assert_eq!(f.fs.opendir(42).unwrap_err().errno(), libc::ENOENT);
    }

    #[test]
    fn xattrs_describe_the_version_not_the_value() {
        let f = fixture();
        let ino = f.fs.lookup(ROOT, &os("db-password")).unwrap().attr.ino.0;
        let list = f.fs.listxattr(ino).unwrap();
        let text = String::from_utf8(list).unwrap();
        assert!(text.contains("user.kvfs.version\0"));
        assert!(text.contains("user.kvfs.enabled\0"));
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
}
