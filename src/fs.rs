//! The filesystem core: inodes, attributes, listings and reads as plain `Result`s.
//!
//! fuser cannot build its reply objects outside itself, so everything worth testing lives here
//! and `fuse.rs` only translates. Shape of the tree: the root directory holds one regular file
//! per enabled secret.
//!
//! Inodes are per *version* (the default `Rotation::NewInode`): a lookup that finds a new
//! version of a secret gets a new inode, and an old inode stays readable until the kernel
//! forgets it. So a file descriptor never sees its content change under it, and an inode's
//! attributes never change, which lets the kernel cache them and its pages for long. With
//! `Rotation::InPlace` a name keeps one inode and each open handle pins a version instead.
//! `.versions/<name>/<version>` exposes every version as a file of its own.
//!
//! Every file of a secret (and its `.versions/<name>` directory) carries the owner and mode
//! the access rules give its name; names the rules hide are never listed and never looked up
//! at Key Vault.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType, INodeNo};
use tokio::runtime::Handle;

use crate::access::{AccessRules, Owner};
use crate::cache::{Change, Revoked, SecretCache};
use crate::error::StoreError;
use crate::secret::{Secret, SecretName, SecretProperties};
use crate::store::{Listing, SecretStore};

pub const ROOT: u64 = INodeNo::ROOT.0;
/// `.versions`: one directory per secret, one file per version. Not listed in the root.
pub const VERSIONS: u64 = 2;
pub const VERSIONS_DIR: &str = ".versions";
const FIRST_DYNAMIC: u64 = 3;
/// Inode numbers handed out in directory listings for names not looked up yet. A listing never
/// fetches values, so it cannot know a secret's version; these never collide with real inodes.
const LISTING_INO_BIT: u64 = 1 << 63;
const BLOCK_SIZE: u32 = 4096;
const XATTR_PREFIX: &str = "user.kvfs.";
/// How long the kernel may remember that a name Key Vault cannot hold does not exist.
const INVALID_NAME_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may keep a name looked up by another spelling than the vault's (names
/// are case-insensitive, dentries are not). Only the vault's spelling is remembered and
/// invalidated on change; other spellings expire by themselves, so no lookup pattern can make
/// kvfs remember more spellings than the vault has names.
const SPELLING_TTL: Duration = Duration::from_secs(1);

/// How a new version reaches files the kernel already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rotation {
    /// Each version is its own inode: never torn, an open file keeps its version, reads are
    /// served from the kernel's page cache without a message. A file bind-mounted on its own
    /// (a Kubernetes subPath) stays on the version it was mounted with.
    NewInode,
    /// One inode per name; each open reads the version current at open time, straight from
    /// kvfs (direct I/O, no page cache). Never torn, and bind-mounted files follow rotations,
    /// at the cost of a few kernel round trips per open.
    InPlace,
}

#[derive(Clone, Debug)]
pub struct FsConfig {
    pub rotation: Rotation,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long the kernel may trust a name -> inode answer. Long: changes are pushed to the
    /// kernel by invalidation, not discovered by expiry.
    pub entry_ttl: Duration,
    /// How long the kernel may trust an inode's attributes. Per-version inodes never change.
    pub attr_ttl: Duration,
    /// How long the kernel may remember that a valid name is absent (404).
    pub negative_ttl: Duration,
    /// No request waits longer than this for Key Vault or the identity endpoint.
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("no such file (not a name Key Vault can hold)")]
    InvalidName,
    #[error("no such file (hidden by --include/--exclude)")]
    Hidden,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttribute,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// Exhaustive on purpose: a new variant must choose its errno.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound | Self::InvalidName | Self::Hidden => libc::ENOENT,
            Self::NotDir => libc::ENOTDIR,
            Self::IsDir => libc::EISDIR,
            Self::ReadOnly => libc::EROFS,
            Self::NoAttribute => libc::ENODATA,
            Self::Store(e) => e.errno(),
        }
    }

    /// Routine answers (an absent name, an absent attribute) are logged at debug only.
    pub fn is_routine(&self) -> bool {
        match self {
            Self::NotFound
            | Self::InvalidName
            | Self::Hidden
            | Self::NoAttribute
            | Self::ReadOnly => true,
            Self::NotDir | Self::IsDir => false,
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

/// What an open found: the handle to give the kernel (in-place rotation only) and the version
/// the opener reads, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub handle: Option<u64>,
    pub name: SecretName,
    pub version: Option<String>,
}

/// A directory's entries, shared between the calls that page through them.
pub type Entries = Arc<Vec<DirEntry>>;

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
    /// `size` bytes at `offset`, clamped to the value: past the end is an empty read.
    fn new(secret: Arc<Secret>, offset: u64, size: u32) -> Self {
        let len = secret.value.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Self {
            secret,
            range: start..end,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.secret
            .value
            .as_bytes()
            .get(self.range.clone())
            .unwrap_or_default()
    }
}

/// Tells the kernel to forget a cached name, so that its next use asks again.
pub trait Invalidate: Send + Sync {
    fn entry(&self, parent: u64, name: &str);
    /// Forget the attributes of `ino` (in-place rotation changed its size and times).
    fn attributes(&self, ino: u64);
    /// Forget the cached pages and attributes of `ino` (its version was revoked), so that
    /// even a file held open reads through kvfs, which refuses.
    fn data(&self, ino: u64);
}

/// One version as an inode holds it: its metadata always, its value only while the cache (or
/// a reader) holds it, so that `--cache-capacity` bounds the values in memory however many
/// inodes the kernel keeps. A value evicted meanwhile is fetched again by its exact version.
struct Held {
    properties: SecretProperties,
    size: u64,
    value: Weak<Secret>,
    /// Set when Key Vault said this version is disabled or gone: reads get its error.
    revoked: Option<Revoked>,
}

impl Held {
    fn new(secret: &Arc<Secret>) -> Self {
        Self {
            properties: secret.properties.clone(),
            size: secret.value.len() as u64,
            value: Arc::downgrade(secret),
            revoked: None,
        }
    }

    fn version(&self) -> &str {
        self.properties.version.as_deref().unwrap_or_default()
    }
}

/// What an in-place open handle reads.
enum Pinned {
    Value(Arc<Secret>),
    /// Handed over by the previous kvfs without its value: fetched by exact version at the
    /// first read.
    Unfetched(SecretProperties),
    Revoked(Revoked),
}

impl Pinned {
    fn properties(&self) -> Option<&SecretProperties> {
        match self {
            Self::Value(secret) => Some(&secret.properties),
            Self::Unfetched(properties) => Some(properties),
            Self::Revoked(_) => None,
        }
    }
}

enum Node {
    /// One version of a secret, readable until the kernel forgets it.
    File { held: Held, lookups: u64 },
    /// `.versions/<name>`.
    VersionsOf { name: SecretName, lookups: u64 },
}

#[derive(Default)]
struct Inodes {
    next: u64,
    nodes: HashMap<u64, Node>,
    /// (name key, version) -> file inode; version "" is a name's one inode in place. Ordered,
    /// so that every inode of a name is one range.
    by_version: BTreeMap<(String, String), u64>,
    /// name key -> `.versions/<name>` inode.
    versions_of: BTreeMap<String, u64>,
}

impl Inodes {
    /// The file inodes serving `name_key`, with their version keys.
    fn of_name<'a>(&'a self, name_key: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.by_version
            .range((name_key.to_owned(), String::new())..)
            .take_while(move |((n, _), _)| n == name_key)
            .map(|((_, v), ino)| (v.as_str(), *ino))
    }
}

/// The inode for `key` in `map`, allocated from `next` if there is none yet.
fn ino_for<K: Ord>(next: &mut u64, map: &mut BTreeMap<K, u64>, key: K) -> u64 {
    *map.entry(key).or_insert_with(|| {
        let ino = *next;
        *next += 1;
        ino
    })
}

pub struct SecretFs {
    cache: SecretCache,
    /// In-place rotation: the version each open file handle reads.
    handles: Mutex<HashMap<u64, Pinned>>,
    /// Revocations learned on the read path, for the refresher to push to the kernel (a
    /// lookup cannot invalidate a dentry of its own directory: the kernel holds its lock).
    learned: Mutex<Vec<Change>>,
    learned_signal: tokio::sync::Notify,
    next_handle: std::sync::atomic::AtomicU64,
    runtime: Handle,
    config: FsConfig,
    access: AccessRules,
    inodes: Mutex<Inodes>,
    invalidator: OnceLock<Box<dyn Invalidate>>,
    /// Directory entries built from a listing (root, `.versions`), reused while it is current.
    built_listings: Mutex<HashMap<u64, (Listing, Entries)>>,
    /// The root entries the kernel cached at its last open of the root.
    kernel_root: Mutex<Option<Entries>>,
    mounted_at: SystemTime,
}

impl SecretFs {
    pub fn new(cache: SecretCache, runtime: Handle, config: FsConfig) -> Self {
        Self {
            cache,
            handles: Mutex::new(HashMap::new()),
            learned: Mutex::new(Vec::new()),
            learned_signal: tokio::sync::Notify::new(),
            next_handle: std::sync::atomic::AtomicU64::new(1),
            runtime,
            config,
            access: AccessRules::default(),
            inodes: Mutex::new(Inodes {
                next: FIRST_DYNAMIC,
                ..Default::default()
            }),
            invalidator: OnceLock::new(),
            built_listings: Mutex::new(HashMap::new()),
            kernel_root: Mutex::new(None),
            mounted_at: SystemTime::now(),
        }
    }

    /// Per-name owners and visibility (default: every secret shown, owned as `FsConfig` says).
    pub fn with_access(mut self, access: AccessRules) -> Self {
        self.access = access;
        self
    }

    /// The owner and mode of `name`'s files: its first `--owner` rule, else the global ones.
    fn owner_of(&self, name: &SecretName) -> Owner {
        self.access.owner_of(name.as_str()).unwrap_or(Owner {
            uid: self.config.uid,
            gid: self.config.gid,
            mode: self.config.file_mode,
        })
    }

    /// A name the rules hide does not exist: answered before any cache or Key Vault request.
    fn visible(&self, name: SecretName) -> FsResult<SecretName> {
        if self.access.visible(name.as_str()) {
            Ok(name)
        } else {
            Err(FsError::Hidden)
        }
    }

    pub fn cache(&self) -> &SecretCache {
        &self.cache
    }

    /// The runtime store calls run on; blocking work that waits on them belongs on its
    /// blocking pool.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Set once the kernel session exists; before that there is nothing to invalidate.
    pub fn set_invalidator(&self, invalidator: Box<dyn Invalidate>) {
        let _ = self.invalidator.set(invalidator);
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

    /// How long the kernel may cache "no such name" for this failed lookup, if at all.
    pub fn negative_ttl(&self, err: &FsError) -> Option<Duration> {
        match err {
            // The rules are fixed for the mount's life: a hidden name stays hidden.
            FsError::InvalidName | FsError::Hidden => Some(INVALID_NAME_TTL),
            FsError::NotFound | FsError::Store(StoreError::NotFound) => {
                Some(self.config.negative_ttl)
            }
            _ => None,
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let (attr, listed_spelling) = match parent {
            ROOT if name == VERSIONS_DIR => (self.dir_attr(VERSIONS, None), true),
            ROOT => {
                let name = self.visible(parse_name(name)?)?;
                let secret = self
                    .wait(self.cache.get(&name))
                    .inspect_err(|e| self.learn_gone(&name, None, e))?;
                let listed = secret.properties.name.as_str() == name.as_str();
                let per_name = self.config.rotation == Rotation::InPlace;
                (self.remember(secret, per_name), listed)
            }
            VERSIONS => {
                let name = self.visible(parse_name(name)?)?;
                // Exists when Key Vault lists versions for it (a disabled secret has some too).
                // Some services answer an unknown name with an empty list rather than 404.
                let versions = self.wait(self.cache.list_versions(&name))?;
                let Some(first) = versions.first() else {
                    return Err(FsError::NotFound);
                };
                let listed = first.name.as_str() == name.as_str();
                (self.remember_versions_dir(name), listed)
            }
            other => {
                let of = match self.inodes().nodes.get(&other) {
                    Some(Node::VersionsOf { name, .. }) => name.clone(),
                    Some(Node::File { .. }) => return Err(FsError::NotDir),
                    None => return Err(FsError::NotFound),
                };
                let version = name
                    .to_str()
                    .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or(FsError::InvalidName)?;
                let secret = self
                    .wait(self.cache.get_version(&of, version))
                    .inspect_err(|e| self.learn_gone(&of, Some(version), e))?;
                // Version ids are lowercase: another spelling is not remembered long.
                let listed = secret.properties.version.as_deref() == Some(version);
                (self.remember(secret, false), listed)
            }
        };
        Ok(Entry {
            attr,
            entry_ttl: if listed_spelling {
                self.config.entry_ttl
            } else {
                SPELLING_TTL
            },
            attr_ttl: self.config.attr_ttl,
        })
    }

    /// Gives the inode for this exact version (new or existing) one more kernel reference.
    /// With `per_name`, the inode is the name's one inode, now holding this version.
    fn remember(&self, secret: Arc<Secret>, per_name: bool) -> FileAttr {
        let key = if per_name {
            (secret.properties.name.key(), String::new())
        } else {
            version_key(&secret.properties)
        };
        let mut guard = self.inodes();
        let inodes = &mut *guard;
        let ino = ino_for(&mut inodes.next, &mut inodes.by_version, key);
        let node = inodes.nodes.entry(ino).or_insert_with(|| Node::File {
            held: Held::new(&secret),
            lookups: 0,
        });
        match node {
            Node::File { held, lookups } => {
                if per_name {
                    *held = Held::new(&secret);
                }
                *lookups += 1;
                self.file_attr(ino, held)
            }
            // Unreachable by construction (file and directory inodes come from separate maps);
            // answering with the directory is still a valid reply.
            Node::VersionsOf { lookups, name } => {
                *lookups += 1;
                self.dir_attr(ino, Some(&*name))
            }
        }
    }

    fn remember_versions_dir(&self, name: SecretName) -> FileAttr {
        let mut guard = self.inodes();
        let inodes = &mut *guard;
        let ino = ino_for(&mut inodes.next, &mut inodes.versions_of, name.key());
        let attr = self.dir_attr(ino, Some(&name));
        match inodes
            .nodes
            .entry(ino)
            .or_insert(Node::VersionsOf { name, lookups: 0 })
        {
            Node::VersionsOf { lookups, .. } | Node::File { lookups, .. } => *lookups += 1,
        }
        attr
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode (and its value) goes.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut inodes = self.inodes();
        let Some(node) = inodes.nodes.get_mut(&ino) else {
            return;
        };
        let (Node::File { lookups, .. } | Node::VersionsOf { lookups, .. }) = node;
        *lookups = lookups.saturating_sub(n);
        if *lookups > 0 {
            return;
        }
        match inodes.nodes.remove(&ino) {
            Some(Node::File { held, .. }) => {
                let name_key = held.properties.name.key();
                // A revoked inode's key may already serve a newer inode: remove only our own.
                for key in [
                    (name_key.clone(), String::new()),
                    (name_key, held.version().to_owned()),
                ] {
                    if inodes.by_version.get(&key) == Some(&ino) {
                        inodes.by_version.remove(&key);
                    }
                }
            }
            Some(Node::VersionsOf { name, .. })
                if inodes.versions_of.get(&name.key()) == Some(&ino) =>
            {
                inodes.versions_of.remove(&name.key());
            }
            Some(Node::VersionsOf { .. }) => {}
            None => {}
        }
    }

    /// The newest version of every secret the kernel still holds: what a refresh revalidates.
    /// Newest by `updated`, not by inode number: an old version opened later through
    /// `.versions/` has a higher inode number.
    pub fn in_use(&self) -> Vec<SecretProperties> {
        let inodes = self.inodes();
        let mut newest: HashMap<String, &SecretProperties> = HashMap::new();
        for held in live_files(&inodes) {
            let p = &held.properties;
            let slot = newest.entry(p.name.key()).or_insert(p);
            if p.updated > slot.updated {
                *slot = p;
            }
        }
        newest.into_values().cloned().collect()
    }

    /// Versions served besides the newest of their secret (files open across a rotation,
    /// `.versions` entries, in-place handles), by secret: what `revalidate_versions` checks.
    pub fn older_in_use(&self) -> Vec<(SecretName, Vec<String>)> {
        let newest: HashMap<String, Option<String>> = self
            .in_use()
            .into_iter()
            .map(|p| (p.name.key(), p.version))
            .collect();
        let mut older: BTreeMap<String, (SecretName, Vec<String>)> = BTreeMap::new();
        let mut add = |p: &SecretProperties| {
            let Some(version) = &p.version else { return };
            if newest.get(&p.name.key()) == Some(&Some(version.clone())) {
                return;
            }
            let (_, versions) = older
                .entry(p.name.key())
                .or_insert_with(|| (p.name.clone(), Vec::new()));
            if !versions.contains(version) {
                versions.push(version.clone());
            }
        };
        for held in live_files(&self.inodes()) {
            add(&held.properties);
        }
        for pinned in self.handles().values() {
            if let Some(properties) = pinned.properties() {
                add(properties);
            }
        }
        older.into_values().collect()
    }

    /// Revocations learned on the read path since the last call, to push to the kernel.
    pub fn take_learned(&self) -> Vec<Change> {
        std::mem::take(&mut *self.learned.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves when the read path learned a revocation.
    pub async fn learned_something(&self) {
        self.learned_signal.notified().await;
    }

    /// A read learned from Key Vault that `name` (or one `version` of it) is disabled or gone:
    /// if kvfs serves it, every inode and handle of it stops now, and the kernel is told soon.
    fn learn_gone(&self, name: &SecretName, version: Option<&str>, err: &FsError) {
        let FsError::Store(err) = err else {
            return;
        };
        let Some(why) = Revoked::from_error(err) else {
            return;
        };
        let change = match version {
            None => Change::Gone(name.clone(), why),
            Some(v) => Change::VersionGone(name.clone(), v.to_ascii_lowercase(), why),
        };
        if self.revoke(&change).is_empty() {
            return;
        }
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
        self.learned_signal.notify_one();
    }

    /// Marks every inode and handle serving what `change` revokes, dropping their values.
    /// Returns the revoked inodes. Their keys are released, so that a later lookup (the
    /// secret re-enabled) gets a new inode rather than a revoked one.
    fn revoke(&self, change: &Change) -> Vec<u64> {
        let (name, version, why) = match change {
            Change::Gone(name, why) => (name, None, *why),
            Change::VersionGone(name, version, why) => (name, Some(version.as_str()), *why),
            Change::Updated(_) | Change::Appeared(_) | Change::Expired(_) => return Vec::new(),
        };
        let name_key = name.key();
        let mut guard = self.inodes();
        let inodes = &mut *guard;
        let mut revoked = Vec::new();
        let mut keys = Vec::new();
        for (key_version, ino) in inodes.of_name(&name_key) {
            let Some(Node::File { held, .. }) = inodes.nodes.get(&ino) else {
                continue;
            };
            if version.is_none_or(|v| held.version() == v) && held.revoked.is_none() {
                revoked.push(ino);
                keys.push((name_key.clone(), key_version.to_owned()));
            }
        }
        for key in keys {
            inodes.by_version.remove(&key);
        }
        for ino in &revoked {
            if let Some(Node::File { held, .. }) = inodes.nodes.get_mut(ino) {
                held.revoked = Some(why);
                held.value = Weak::new();
            }
        }
        drop(guard);
        for pinned in self.handles().values_mut() {
            if let Some(p) = pinned.properties()
                && p.name.key() == name_key
                && version.is_none_or(|v| p.version.as_deref() == Some(v))
            {
                *pinned = Pinned::Revoked(why);
            }
        }
        revoked
    }

    /// Pushes what a refresh (or a read) found to the kernel: each changed name is forgotten,
    /// so its next use looks it up again and gets the new version's inode; open files keep
    /// their inode. Revoked versions stop being served on every path, open files included.
    pub fn apply(&self, changes: &[Change]) {
        let Some(invalidator) = self.invalidator.get() else {
            return;
        };
        for change in changes {
            let name = change.name();
            match change {
                Change::Updated(_) if self.config.rotation == Rotation::InPlace => {
                    if let Some(current) = self.cache.peek(name)
                        && let Some(ino) = self.swap_in_place(current)
                    {
                        invalidator.attributes(ino);
                    }
                }
                Change::Gone(..) | Change::VersionGone(..) => {
                    self.revoke(change);
                    // Every revoked inode of the name, those a read revoked earlier included:
                    // its pages go (held descriptors then read through kvfs, which refuses),
                    // and so does its `.versions/<name>/<version>` dentry, so that a version
                    // still enabled is looked up anew.
                    let (revoked, versions_dir) = {
                        let inodes = self.inodes();
                        let dir = inodes.versions_of.get(&name.key()).copied();
                        (revoked_of(&inodes, &name.key()), dir)
                    };
                    for (ino, version) in revoked {
                        invalidator.data(ino);
                        if let Some(dir) = versions_dir
                            && let Some(version) = version
                        {
                            invalidator.entry(dir, &version);
                        }
                    }
                    if let Change::Gone(..) = change {
                        invalidator.entry(VERSIONS, name.as_str());
                    }
                }
                Change::Updated(_) | Change::Appeared(_) | Change::Expired(_) => {}
            }
            if !matches!(change, Change::VersionGone(..)) {
                invalidator.entry(ROOT, name.as_str());
            }
            tracing::debug!(?change, "kernel entry invalidated");
        }
    }

    /// In-place rotation: the name's inode (returned) now holds `current`; files opened
    /// before keep reading their handle's version.
    fn swap_in_place(&self, current: Arc<Secret>) -> Option<u64> {
        let mut inodes = self.inodes();
        let key = (current.properties.name.key(), String::new());
        let ino = *inodes.by_version.get(&key)?;
        if let Some(Node::File { held, .. }) = inodes.nodes.get_mut(&ino) {
            *held = Held::new(&current);
        }
        Some(ino)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<(FileAttr, Duration)> {
        let attr = match ino {
            ROOT | VERSIONS => self.dir_attr(ino, None),
            _ => match self.inodes().nodes.get(&ino) {
                Some(Node::File { held, .. }) => self.file_attr(ino, held),
                Some(Node::VersionsOf { name, .. }) => self.dir_attr(ino, Some(name)),
                None => return Err(FsError::NotFound),
            },
        };
        Ok((attr, self.config.attr_ttl))
    }

    fn properties(&self, ino: u64) -> FsResult<SecretProperties> {
        match self.inodes().nodes.get(&ino) {
            Some(Node::File { held, .. }) => Ok(held.properties.clone()),
            Some(Node::VersionsOf { .. }) => Err(FsError::IsDir),
            None if ino == ROOT || ino == VERSIONS => Err(FsError::IsDir),
            None => Err(FsError::NotFound),
        }
    }

    /// The value of `ino`'s version: from memory while the cache holds it, else fetched again
    /// by its exact version (so it is the same bytes, never a newer version).
    fn secret(&self, ino: u64) -> FsResult<Arc<Secret>> {
        match self.in_memory(ino)? {
            Ok(secret) => Ok(secret),
            Err(properties) => self.refetch(ino, &properties),
        }
    }

    /// `ino`'s value if it is in memory, else the properties to fetch it again by. A revoked
    /// version answers its revocation.
    fn in_memory(&self, ino: u64) -> FsResult<Result<Arc<Secret>, SecretProperties>> {
        match self.inodes().nodes.get(&ino) {
            Some(Node::File { held, .. }) => match held.revoked {
                Some(why) => Err(FsError::Store(why.error())),
                None => Ok(held.value.upgrade().ok_or_else(|| held.properties.clone())),
            },
            Some(Node::VersionsOf { .. }) => Err(FsError::IsDir),
            None if ino == ROOT || ino == VERSIONS => Err(FsError::IsDir),
            None => Err(FsError::NotFound),
        }
    }

    /// Fetches an evicted value again by its exact version, so it is the same bytes, never a
    /// newer version.
    fn refetch(&self, ino: u64, properties: &SecretProperties) -> FsResult<Arc<Secret>> {
        let name = &properties.name;
        let version = properties.version.as_deref();
        let secret = match version {
            Some(version) => self.wait(self.cache.get_version(name, version)),
            None => self.wait(self.cache.get(name)),
        }
        .inspect_err(|e| self.learn_gone(name, version, e))?;
        if let Some(Node::File { held, .. }) = self.inodes().nodes.get_mut(&ino)
            && held.properties.version == secret.properties.version
            && held.revoked.is_none()
        {
            held.value = Arc::downgrade(&secret);
        }
        Ok(secret)
    }

    /// Opens `ino`. With new-inode rotation there is nothing to remember (no handle: the
    /// kernel need not send opens at all); with in-place rotation the handle pins the version
    /// current now, so the file never changes under its reader.
    pub fn open(&self, ino: u64) -> FsResult<Opened> {
        match self.config.rotation {
            Rotation::NewInode => self.properties(ino).map(|p| Opened {
                handle: None,
                name: p.name,
                version: p.version,
            }),
            Rotation::InPlace => {
                let secret = self.secret(ino)?;
                let handle = self
                    .next_handle
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let opened = Opened {
                    handle: Some(handle),
                    name: secret.properties.name.clone(),
                    version: secret.properties.version.clone(),
                };
                self.handles().insert(handle, Pinned::Value(secret));
                Ok(opened)
            }
        }
    }

    /// Whether `ino`'s value was evicted and must be fetched before an in-place open can pin
    /// it: such an open belongs off the FUSE threads.
    pub fn value_evicted(&self, ino: u64) -> bool {
        matches!(self.in_memory(ino), Ok(Err(_)))
    }

    pub fn release(&self, handle: u64) {
        self.handles().remove(&handle);
    }

    /// Reads `size` bytes at `offset` of the version `handle` pinned (or the inode's own),
    /// clamped to the value: past the end is an empty read.
    pub fn read(&self, ino: u64, handle: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let secret = match self.pinned(handle)? {
            Some(Ok(secret)) => secret,
            Some(Err(properties)) => self.fetch_pinned(handle, &properties)?,
            None => self.secret(ino)?,
        };
        Ok(ReadData::new(secret, offset, size))
    }

    /// `read` without waiting: `Ok(None)` when the value was evicted and must be fetched first,
    /// which is `read`'s work, off the FUSE threads.
    pub fn read_now(
        &self,
        ino: u64,
        handle: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Option<ReadData>> {
        let secret = match self.pinned(handle)? {
            Some(Ok(secret)) => secret,
            Some(Err(_)) => return Ok(None),
            None => match self.in_memory(ino)? {
                Ok(secret) => secret,
                Err(_) => return Ok(None),
            },
        };
        Ok(Some(ReadData::new(secret, offset, size)))
    }

    /// The version `handle` pinned, if it is an in-place handle (its properties if it must be
    /// fetched first); its revocation if revoked.
    fn pinned(&self, handle: u64) -> FsResult<Option<Result<Arc<Secret>, SecretProperties>>> {
        match self.handles().get(&handle) {
            Some(Pinned::Value(secret)) => Ok(Some(Ok(secret.clone()))),
            Some(Pinned::Unfetched(properties)) => Ok(Some(Err(properties.clone()))),
            Some(Pinned::Revoked(why)) => Err(FsError::Store(why.error())),
            None => Ok(None),
        }
    }

    /// Fetches a handed-over handle's version by its exact id, and pins it.
    fn fetch_pinned(&self, handle: u64, properties: &SecretProperties) -> FsResult<Arc<Secret>> {
        let name = &properties.name;
        let version = properties.version.as_deref();
        let secret = match version {
            Some(version) => self.wait(self.cache.get_version(name, version)),
            None => self.wait(self.cache.get(name)),
        }
        .inspect_err(|e| self.learn_gone(name, version, e))?;
        if let Some(pinned @ Pinned::Unfetched(_)) = self.handles().get_mut(&handle) {
            *pinned = Pinned::Value(secret.clone());
        }
        Ok(secret)
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, Pinned>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a directory. Returns whether the kernel may keep the entries it cached at the
    /// last open (the root's listing is unchanged since); a directory is then listed without
    /// a single READDIR message.
    pub fn opendir(&self, ino: u64) -> FsResult<bool> {
        if ino != ROOT {
            self.readdir_entries(ino)?;
            return Ok(false);
        }
        let entries = self.readdir_entries(ROOT)?;
        let mut cached = self
            .kernel_root
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let keep = cached
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &entries) || **c == *entries);
        *cached = Some(entries);
        Ok(keep)
    }

    /// The entries of a directory from `offset` on: the whole listing (shared, built once per
    /// listing) and the index to start at. Offsets index the current (cached) listing, so a
    /// listing that changes between two calls may skip or repeat a name.
    pub fn readdir(&self, ino: u64, offset: u64) -> FsResult<(Entries, usize)> {
        let entries = self.readdir_entries(ino)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(entries.len());
        Ok((entries, start))
    }

    fn readdir_entries(&self, ino: u64) -> FsResult<Entries> {
        match ino {
            ROOT | VERSIONS => {
                let listing = self.wait(self.cache.list())?;
                let mut built = self
                    .built_listings
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some((from, entries)) = built.get(&ino)
                    && Arc::ptr_eq(from, &listing)
                {
                    return Ok(entries.clone());
                }
                let kind = if ino == ROOT {
                    FileType::RegularFile
                } else {
                    FileType::Directory
                };
                let names = listing
                    .iter()
                    .filter(|p| p.enabled && self.access.visible(p.name.as_str()))
                    .map(|p| (listing_ino(&p.name), kind, p.name.as_str().to_owned()));
                let entries = Arc::new(dir_entries(ino, ROOT, names));
                built.insert(ino, (listing, entries.clone()));
                Ok(entries)
            }
            _ => {
                let name = match self.inodes().nodes.get(&ino) {
                    Some(Node::VersionsOf { name, .. }) => name.clone(),
                    Some(Node::File { .. }) => return Err(FsError::NotDir),
                    None => return Err(FsError::NotFound),
                };
                let versions = self.wait(self.cache.list_versions(&name))?;
                let files = versions
                    .iter()
                    .filter_map(|p| p.version.clone())
                    .map(|v| (listing_ino_str(&v), FileType::RegularFile, v));
                Ok(Arc::new(dir_entries(ino, VERSIONS, files)))
            }
        }
    }

    /// Names of the metadata attributes of `ino`, NUL-terminated, as `listxattr` returns them.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let properties = match self.properties(ino) {
            Ok(p) => p,
            Err(FsError::IsDir) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (name, _) in self.xattrs(&properties) {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let properties = match self.properties(ino) {
            Ok(p) => p,
            Err(FsError::IsDir) => return Err(FsError::NoAttribute),
            Err(e) => return Err(e),
        };
        let wanted = name.to_str().ok_or(FsError::NoAttribute)?;
        self.xattrs(&properties)
            .into_iter()
            .find(|(n, _)| n == wanted)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }

    /// The metadata attributes of one version, in a fixed order. Never the value.
    fn xattrs(&self, p: &SecretProperties) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add =
            |name: &str, value: String| out.push((format!("{XATTR_PREFIX}{name}"), value));
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
        if let Some(since) = self.cache.stale_since(&p.name).and_then(rfc3339) {
            add("stale", since);
        }
        out
    }

    fn file_attr(&self, ino: u64, held: &Held) -> FileAttr {
        let p = &held.properties;
        let updated = p.updated.unwrap_or(self.mounted_at);
        let size = held.size;
        let owner = self.owner_of(&p.name);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: updated,
            mtime: updated,
            ctime: updated,
            crtime: p.created.unwrap_or(updated),
            kind: FileType::RegularFile,
            perm: owner.mode,
            nlink: 1,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The root and `.versions` (`of` None) have the global owner and `--dir-mode`;
    /// `.versions/<name>` has its secret's owner, and its mode with search where read is set.
    fn dir_attr(&self, ino: u64, of: Option<&SecretName>) -> FileAttr {
        let (uid, gid, perm) = match of {
            Some(name) => {
                let owner = self.owner_of(name);
                (owner.uid, owner.gid, owner.dir_mode())
            }
            None => (self.config.uid, self.config.gid, self.config.dir_mode),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm,
            nlink: 2,
            uid,
            gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }
}

/// `.`, `..` and `children`, each with the offset of the entry after it.
fn dir_entries(
    ino: u64,
    parent: u64,
    children: impl Iterator<Item = (u64, FileType, String)>,
) -> Vec<DirEntry> {
    [
        (ino, FileType::Directory, ".".to_owned()),
        (parent, FileType::Directory, "..".to_owned()),
    ]
    .into_iter()
    .chain(children)
    .enumerate()
    .map(|(i, (ino, kind, name))| DirEntry {
        ino,
        next_offset: i as u64 + 1,
        kind,
        name,
    })
    .collect()
}

/// A name Key Vault cannot hold cannot exist: it is answered without a request.
fn parse_name(name: &OsStr) -> FsResult<SecretName> {
    name.to_str()
        .and_then(SecretName::parse)
        .ok_or(FsError::InvalidName)
}

/// File nodes the kernel holds that still serve their version.
fn live_files(inodes: &Inodes) -> impl Iterator<Item = &Held> {
    inodes.nodes.values().filter_map(|node| match node {
        Node::File { held, lookups } if *lookups > 0 && held.revoked.is_none() => Some(held),
        _ => None,
    })
}

/// Revoked file inodes of `name_key` the kernel still holds, with their versions.
fn revoked_of(inodes: &Inodes, name_key: &str) -> Vec<(u64, Option<String>)> {
    inodes
        .nodes
        .iter()
        .filter_map(|(ino, node)| match node {
            Node::File { held, .. }
                if held.revoked.is_some() && held.properties.name.key() == name_key =>
            {
                Some((*ino, held.properties.version.clone()))
            }
            _ => None,
        })
        .collect()
}

fn version_key(p: &SecretProperties) -> (String, String) {
    (p.name.key(), p.version.clone().unwrap_or_default())
}

fn listing_ino_str(s: &str) -> u64 {
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    });
    hash | LISTING_INO_BIT
}

/// A stable inode number for a listed name (FNV-1a of its key), with the listing bit set.
fn listing_ino(name: &SecretName) -> u64 {
    listing_ino_str(name.as_str())
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

mod state;
#[cfg(test)]
mod tests;

pub use state::FsState;
