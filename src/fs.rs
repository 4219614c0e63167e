//! The filesystem core: lookups, opens, reads and listings as async calls returning plain
//! `Result`s. fuser cannot build its reply objects outside itself, so everything worth testing
//! lives here and `fuse.rs` only translates; a call that can answer from memory completes at
//! its first poll, on the FUSE thread, and only one that must wait on Key Vault becomes a task.
//!
//! Layout: this file holds the calls by node kind; `inodes` the inode table (numbers, kernel
//! references, keys), `handles` the in-place open handles, `dir` listings, `attr` attributes,
//! `xattr` metadata attributes, `changes` what refreshes and reads learned (rotation,
//! revocation), `state` the handover to a successor. A node kind is a variant of `Node`; the
//! tree is: the root with one regular file per enabled secret, and `.versions`.
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

use std::ffi::OsStr;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, INodeNo};
use tokio::runtime::Handle;

use crate::access::{AccessRules, Owner};
use crate::cache::{Change, Revoked, SecretCache};
use crate::error::StoreError;
use crate::secret::{Secret, SecretName, SecretProperties};
use crate::store::SecretStore;

mod attr;
mod changes;
mod dir;
mod env_file;
mod error;
mod handles;
mod inodes;
mod state;
#[cfg(test)]
mod tests;
mod view;
mod xattr;

pub use dir::{DirEntry, Entries, dir_entries};
pub use error::{FsError, FsResult};
pub use state::FsState;
pub use view::{ENV_FILE, ENV_TAG_PREFIX, Render, ViewRules};

use handles::{Handles, Pinned};
use inodes::{Inodes, Key};
use view::Derived;

pub const ROOT: u64 = INodeNo::ROOT.0;
/// `.versions`: one directory per secret, one file per version. Not listed in the root.
pub const VERSIONS: u64 = 2;
pub const VERSIONS_DIR: &str = ".versions";
const FIRST_DYNAMIC: u64 = 3;
/// How long the kernel may remember that a name Key Vault cannot hold does not exist.
const INVALID_NAME_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may keep a name looked up by another spelling than the vault's (names
/// are case-insensitive, dentries are not). Only the vault's spelling is remembered and
/// invalidated on change; other spellings expire by themselves, so no lookup pattern can make
/// kvfs remember more spellings than the vault has names.
const SPELLING_TTL: Duration = Duration::from_secs(1);

/// How a new version reaches files the kernel already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A name -> inode answer and how long the kernel may keep it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: FileAttr,
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
}

/// What an open found: the handle to give the kernel (in-place rotation only) and the version
/// the opener reads, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub handle: Option<u64>,
    /// The secret's name (`.env` for the env file).
    pub name: String,
    pub version: Option<String>,
}

/// Bytes of a file to send back for a read: a secret's value without copying it out of the
/// cache, or a view's bytes, computed for this read.
pub struct ReadData {
    bytes: Bytes,
    range: Range<usize>,
}

enum Bytes {
    Value(Arc<Secret>),
    Rendered(zeroize::Zeroizing<Vec<u8>>),
    Fixed(Arc<zeroize::Zeroizing<Vec<u8>>>),
}

impl Bytes {
    fn all(&self) -> &[u8] {
        match self {
            Self::Value(secret) => secret.value.as_bytes(),
            Self::Rendered(bytes) => bytes,
            Self::Fixed(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for ReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReadData({:?} of {} bytes)",
            self.range,
            self.bytes.all().len()
        )
    }
}

impl ReadData {
    /// `size` bytes at `offset`, clamped to the bytes: past the end is an empty read.
    fn new(bytes: Bytes, offset: u64, size: u32) -> Self {
        let len = bytes.all().len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Self {
            bytes,
            range: start..end,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.all().get(self.range.clone()).unwrap_or_default()
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
    /// How the file shows the value, and the size it shows.
    render: Render,
    size: u64,
    /// A view whose bytes differ at each rendering (a `.pfx` built from a PEM secret gets
    /// fresh salts), rendered once: every read of the inode must see the same bytes.
    fixed: Option<Arc<zeroize::Zeroizing<Vec<u8>>>>,
    value: Weak<Secret>,
    /// Set when Key Vault said this version is disabled or gone: reads get its error.
    revoked: Option<Revoked>,
}

impl Held {
    fn new(secret: &Arc<Secret>) -> Self {
        Self {
            properties: secret.properties.clone(),
            render: Render::Value,
            size: secret.value.len() as u64,
            fixed: None,
            value: Arc::downgrade(secret),
            revoked: None,
        }
    }

    /// `secret` as `render` shows it; an error when the value does not fit the view.
    fn rendered(secret: &Arc<Secret>, render: Render) -> FsResult<Self> {
        if render.varies() {
            let bytes = Arc::new(render.apply(secret)?);
            return Ok(Self {
                size: bytes.len() as u64,
                fixed: Some(bytes),
                render,
                ..Self::new(secret)
            });
        }
        Ok(Self {
            size: render.size(secret)?,
            render,
            ..Self::new(secret)
        })
    }

    fn version(&self) -> &str {
        self.properties.version.as_deref().unwrap_or_default()
    }
}

/// What an inode is. A new kind of node is a variant here and the file that serves it.
enum Node {
    /// One version of a secret as a file (its value, or a view of it), readable until the
    /// kernel forgets it.
    File(Held),
    /// `.versions/<name>`.
    VersionsOf(SecretName),
    /// `<name>.d` and its subdirectories: a JSON object of one version, by path of keys.
    JsonDir(Held, Vec<String>),
    /// `.env`: the versions it renders, and its size.
    EnvFile(Vec<SecretProperties>, u64),
}

impl Node {
    /// The versions this node serves (what a refresh revalidates while the kernel holds it).
    fn sources(&self) -> Vec<&SecretProperties> {
        match self {
            Self::File(held) | Self::JsonDir(held, _) if held.revoked.is_none() => {
                vec![&held.properties]
            }
            Self::EnvFile(sources, _) => sources.iter().collect(),
            _ => Vec::new(),
        }
    }
}

pub struct SecretFs {
    cache: SecretCache,
    /// In-place rotation: the version each open file handle reads.
    handles: Handles,
    /// Revocations learned on the read path, for the refresher to push to the kernel (a
    /// lookup cannot invalidate a dentry of its own directory: the kernel holds its lock).
    learned: Mutex<Vec<Change>>,
    learned_signal: tokio::sync::Notify,
    runtime: Handle,
    config: FsConfig,
    access: AccessRules,
    views: ViewRules,
    inodes: Mutex<Inodes>,
    invalidator: OnceLock<Arc<dyn Invalidate>>,
    listings: dir::Listings,
    mounted_at: SystemTime,
}

impl SecretFs {
    pub fn new(cache: SecretCache, runtime: Handle, config: FsConfig) -> Self {
        Self {
            cache,
            handles: Handles::new(),
            learned: Mutex::new(Vec::new()),
            learned_signal: tokio::sync::Notify::new(),
            runtime,
            config,
            access: AccessRules::default(),
            views: ViewRules::default(),
            inodes: Mutex::new(Inodes::new(FIRST_DYNAMIC)),
            invalidator: OnceLock::new(),
            listings: dir::Listings::default(),
            mounted_at: SystemTime::now(),
        }
    }

    /// Per-name owners and visibility (default: every secret shown, owned as `FsConfig` says).
    pub fn with_access(mut self, access: AccessRules) -> Self {
        self.access = access;
        self
    }

    /// The views this mount shows (default: certificate views only).
    pub fn with_views(mut self, views: ViewRules) -> Self {
        self.views = views;
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

    /// The runtime store calls and waiting requests run on.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Set once the kernel session exists; before that there is nothing to invalidate.
    pub fn set_invalidator(&self, invalidator: Arc<dyn Invalidate>) {
        let _ = self.invalidator.set(invalidator);
    }

    /// A store call, bounded by the request timeout whatever the store does.
    async fn wait<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> FsResult<T> {
        let limit = self.config.request_timeout;
        tokio::time::timeout(limit, fut)
            .await
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

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let (attr, listed_spelling) = match parent {
            ROOT if name == VERSIONS_DIR => (self.dir_attr(VERSIONS, None), true),
            ROOT => match name.to_str().and_then(|file| self.views.resolve(file)) {
                Some(derived) => (self.lookup_derived(derived).await?, true),
                None => {
                    let name = self.visible(parse_name(name)?)?;
                    let render = self.views.own_render(&name);
                    let per_name = self.config.rotation == Rotation::InPlace;
                    self.lookup_file(&name, render, per_name).await?
                }
            },
            VERSIONS => {
                let name = self.visible(parse_name(name)?)?;
                // Exists when Key Vault lists versions for it (a disabled secret has some too).
                // Some services answer an unknown name with an empty list rather than 404.
                let versions = self.wait(self.cache.list_versions(&name)).await?;
                let Some(first) = versions.first() else {
                    return Err(FsError::NotFound);
                };
                let listed = first.name.as_str() == name.as_str();
                (self.remember_versions_dir(name), listed)
            }
            other => {
                let of = match self.inodes().get(other) {
                    Some(Node::VersionsOf(name)) => Some(name.clone()),
                    Some(Node::JsonDir(..)) => None,
                    Some(Node::File(_) | Node::EnvFile(..)) => return Err(FsError::NotDir),
                    None => return Err(FsError::NotFound),
                };
                let Some(of) = of else {
                    return self.lookup_json_key(other, name).await;
                };
                let version = name
                    .to_str()
                    .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or(FsError::InvalidName)?;
                let secret = self
                    .wait(self.cache.get_version(&of, version))
                    .await
                    .inspect_err(|e| self.learn_gone(&of, Some(version), e))?;
                // Version ids are lowercase: another spelling is not remembered long.
                let listed = secret.properties.version.as_deref() == Some(version);
                (self.remember(secret, Render::Value, false)?, listed)
            }
        };
        Ok(self.entry(attr, listed_spelling))
    }

    fn entry(&self, attr: FileAttr, listed_spelling: bool) -> Entry {
        Entry {
            attr,
            entry_ttl: if listed_spelling {
                self.config.entry_ttl
            } else {
                SPELLING_TTL
            },
            attr_ttl: self.config.attr_ttl,
        }
    }

    /// The current version of `name` as a file shown by `render`, and whether `name` is the
    /// vault's spelling.
    async fn lookup_file(
        &self,
        name: &SecretName,
        render: Render,
        per_name: bool,
    ) -> FsResult<(FileAttr, bool)> {
        let secret = self.current(name).await?;
        if matches!(render, Render::Cert(_)) && !view::is_certificate(&secret) {
            return Err(FsError::NotFound);
        }
        let listed = secret.properties.name.as_str() == name.as_str();
        Ok((self.remember(secret, render, per_name)?, listed))
    }

    /// The current version of a visible secret, from the cache or Key Vault.
    async fn current(&self, name: &SecretName) -> FsResult<Arc<Secret>> {
        self.wait(self.cache.get(name))
            .await
            .inspect_err(|e| self.learn_gone(name, None, e))
    }

    /// A root name that stands for a view or another name of a secret.
    async fn lookup_derived(&self, derived: Derived) -> FsResult<FileAttr> {
        match derived {
            Derived::Alias(name) => {
                let name = self.visible(name)?;
                let render = self.views.own_render(&name);
                let per_name = self.config.rotation == Rotation::InPlace;
                Ok(self.lookup_file(&name, render, per_name).await?.0)
            }
            Derived::Cert(name, view) => {
                let name = self.visible(name)?;
                Ok(self.lookup_file(&name, Render::Cert(view), false).await?.0)
            }
            Derived::JsonDir(name) => {
                let name = self.visible(name)?;
                let secret = self.current(&name).await?;
                // Malformed JSON is EIO on the view; the secret's own file is untouched.
                view::json_entry(&secret, &[])?;
                let held = Held::new(&secret);
                let key = Key::JsonDir(
                    secret.properties.name.key(),
                    held.version().to_owned(),
                    Vec::new(),
                );
                let mut inodes = self.inodes();
                let (ino, _) = inodes.look_up(key, || Node::JsonDir(held, Vec::new()));
                Ok(self.dir_attr(ino, Some(&secret.properties.name)))
            }
            Derived::EnvFile => self.lookup_env_file().await,
        }
    }

    /// `key` in the JSON directory `dir`: a subdirectory for an object, else a file.
    async fn lookup_json_key(&self, dir: u64, key: &OsStr) -> FsResult<Entry> {
        let key = key.to_str().ok_or(FsError::NotFound)?;
        let path = match self.inodes().get(dir) {
            Some(Node::JsonDir(_, path)) => path.clone(),
            _ => return Err(FsError::NotDir),
        };
        let secret = self.secret(dir).await?;
        let mut child = path;
        child.push(key.to_owned());
        let attr = match view::json_entry(&secret, &child)? {
            view::JsonKind::Dir => {
                let held = Held::new(&secret);
                let node_key = Key::JsonDir(
                    secret.properties.name.key(),
                    held.version().to_owned(),
                    child.clone(),
                );
                let mut inodes = self.inodes();
                let (ino, _) = inodes.look_up(node_key, || Node::JsonDir(held, child));
                self.dir_attr(ino, Some(&secret.properties.name))
            }
            view::JsonKind::Leaf => self.remember(secret, Render::JsonKey(child), false)?,
        };
        Ok(self.entry(attr, true))
    }

    /// Gives the inode for this exact version shown by `render` (new or existing) one more
    /// kernel reference. With `per_name`, the inode is the name's one inode, now holding this
    /// version.
    fn remember(&self, secret: Arc<Secret>, render: Render, per_name: bool) -> FsResult<FileAttr> {
        let key = Key::Version(
            secret.properties.name.key(),
            if per_name {
                String::new()
            } else {
                secret.properties.version.clone().unwrap_or_default()
            },
            render.clone(),
        );
        // An inode of this exact version is not rendered again (a view may cost a parse).
        if !per_name && let Some((ino, node)) = self.inodes().refer(&key) {
            return Ok(self.node_attr(ino, node));
        }
        // Rendered before the table is locked: a view's rendering may take milliseconds.
        let held = Held::rendered(&secret, render)?;
        let mut inodes = self.inodes();
        let mut fresh = Some(held);
        let (ino, node) = inodes.look_up(key, || Node::File(fresh.take().expect("made once")));
        if let (Node::File(held), Some(current)) = (&mut *node, fresh) {
            // In place: the name's one inode now holds this version.
            *held = current;
        }
        Ok(self.node_attr(ino, node))
    }

    fn remember_versions_dir(&self, name: SecretName) -> FileAttr {
        let mut inodes = self.inodes();
        let key = Key::VersionsOf(name.key());
        let (ino, _) = inodes.look_up(key, || Node::VersionsOf(name.clone()));
        self.dir_attr(ino, Some(&name))
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode (and its value) goes.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes().forget(ino, n);
    }

    fn properties(&self, ino: u64) -> FsResult<SecretProperties> {
        match self.inodes().get(ino) {
            Some(Node::File(held)) => Ok(held.properties.clone()),
            Some(Node::VersionsOf(_) | Node::JsonDir(..)) => Err(FsError::IsDir),
            Some(Node::EnvFile(..)) => Err(FsError::NoAttribute),
            None if ino == ROOT || ino == VERSIONS => Err(FsError::IsDir),
            None => Err(FsError::NotFound),
        }
    }

    /// The value of `ino`'s version: from memory while the cache holds it, else fetched again
    /// by its exact version (so it is the same bytes, never a newer version).
    async fn secret(&self, ino: u64) -> FsResult<Arc<Secret>> {
        match self.in_memory(ino)? {
            Ok(secret) => Ok(secret),
            Err(properties) => self.refetch(ino, &properties).await,
        }
    }

    /// Fetches `ino`'s evicted value by its exact version, and lets the inode hold it again
    /// while the cache does.
    async fn refetch(&self, ino: u64, properties: &SecretProperties) -> FsResult<Arc<Secret>> {
        let secret = self.fetch_exact(properties).await?;
        if let Some(Node::File(held) | Node::JsonDir(held, _)) = self.inodes().get_mut(ino)
            && held.properties.version == secret.properties.version
            && held.revoked.is_none()
        {
            held.value = Arc::downgrade(&secret);
        }
        Ok(secret)
    }

    /// `ino`'s value if it is in memory, else the properties to fetch it again by. A revoked
    /// version answers its revocation.
    fn in_memory(&self, ino: u64) -> FsResult<Result<Arc<Secret>, SecretProperties>> {
        match self.inodes().get(ino) {
            Some(Node::File(held) | Node::JsonDir(held, _)) => match held.revoked {
                Some(why) => Err(FsError::Store(why.error())),
                None => Ok(held.value.upgrade().ok_or_else(|| held.properties.clone())),
            },
            Some(Node::VersionsOf(_)) => Err(FsError::IsDir),
            Some(Node::EnvFile(..)) => Err(FsError::NotFound),
            None if ino == ROOT || ino == VERSIONS => Err(FsError::IsDir),
            None => Err(FsError::NotFound),
        }
    }

    /// Fetches the version `properties` name again by its exact id (an evicted value, a
    /// handed-over handle), so it is the same bytes, never a newer version; a refusal is
    /// learned as a revocation.
    async fn fetch_exact(&self, properties: &SecretProperties) -> FsResult<Arc<Secret>> {
        let name = &properties.name;
        let version = properties.version.as_deref();
        match version {
            Some(version) => self.wait(self.cache.get_version(name, version)).await,
            None => self.wait(self.cache.get(name)).await,
        }
        .inspect_err(|e| self.learn_gone(name, version, e))
    }

    /// Opens `ino`. With new-inode rotation there is nothing to remember (no handle: the
    /// kernel need not send opens at all); with in-place rotation the handle pins the version
    /// current now, so the file never changes under its reader.
    pub async fn open(&self, ino: u64) -> FsResult<Opened> {
        if let Some(Node::EnvFile(..)) = self.inodes().get(ino) {
            // One inode per set of versions: nothing to pin.
            let handle = (self.config.rotation == Rotation::InPlace)
                .then(|| self.handles.open(Pinned::Inode));
            return Ok(Opened {
                handle,
                name: ENV_FILE.to_owned(),
                version: None,
            });
        }
        match self.config.rotation {
            Rotation::NewInode => self.properties(ino).map(|p| Opened {
                handle: None,
                name: p.name.as_str().to_owned(),
                version: p.version,
            }),
            Rotation::InPlace => {
                let secret = self.secret(ino).await?;
                let opened = Opened {
                    handle: None,
                    name: secret.properties.name.as_str().to_owned(),
                    version: secret.properties.version.clone(),
                };
                let handle = self.handles.open(Pinned::Value(secret));
                Ok(Opened {
                    handle: Some(handle),
                    ..opened
                })
            }
        }
    }

    pub fn release(&self, handle: u64) {
        self.handles.release(handle);
    }

    /// Reads `size` bytes at `offset` of the version `handle` pinned (or the inode's own), as
    /// the inode shows it, clamped: past the end is an empty read.
    pub async fn read(&self, ino: u64, handle: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        // A revoked pin answers its revocation before anything else.
        let pinned = self.pinned(handle)?;
        // One look at the inode: how it shows the value, and the value if still in memory.
        enum Shown {
            File(Render, Result<Arc<Secret>, SecretProperties>),
            Env(Vec<SecretProperties>),
        }
        let shown = match self.inodes().get(ino) {
            Some(Node::File(held)) => match (&held.revoked, &held.fixed) {
                (Some(why), _) => return Err(FsError::Store(why.error())),
                (None, Some(bytes)) => {
                    return Ok(ReadData::new(Bytes::Fixed(bytes.clone()), offset, size));
                }
                (None, None) => Shown::File(
                    held.render.clone(),
                    held.value.upgrade().ok_or_else(|| held.properties.clone()),
                ),
            },
            Some(Node::EnvFile(sources, _)) => Shown::Env(sources.clone()),
            Some(Node::VersionsOf(_) | Node::JsonDir(..)) => return Err(FsError::IsDir),
            None if ino == ROOT || ino == VERSIONS => return Err(FsError::IsDir),
            None => return Err(FsError::NotFound),
        };
        let (render, own) = match shown {
            Shown::File(render, own) => (render, own),
            Shown::Env(sources) => {
                let bytes = self.render_env_file(&sources).await?;
                return Ok(ReadData::new(Bytes::Rendered(bytes), offset, size));
            }
        };
        let secret = match pinned {
            Some(Ok(secret)) => secret,
            Some(Err(properties)) => {
                let secret = self.fetch_exact(&properties).await?;
                if let Some(pinned @ Pinned::Unfetched(_)) = self.handles.lock().get_mut(&handle) {
                    *pinned = Pinned::Value(secret.clone());
                }
                secret
            }
            None => match own {
                Ok(secret) => secret,
                Err(properties) => self.refetch(ino, &properties).await?,
            },
        };
        let bytes = match render {
            Render::Value => Bytes::Value(secret),
            // Rendered once (a node handed over without its bytes): later reads see these.
            view if view.varies() => {
                let mine = Arc::new(view.apply(&secret)?);
                let kept = match self.inodes().get_mut(ino) {
                    Some(Node::File(held)) => held.fixed.get_or_insert(mine).clone(),
                    _ => mine,
                };
                Bytes::Fixed(kept)
            }
            view => Bytes::Rendered(view.apply(&secret)?),
        };
        Ok(ReadData::new(bytes, offset, size))
    }

    /// The version `handle` pinned, if it is an in-place handle (its properties if it must be
    /// fetched first); its revocation if revoked.
    fn pinned(&self, handle: u64) -> FsResult<Option<Result<Arc<Secret>, SecretProperties>>> {
        match self.handles.lock().get(&handle) {
            Some(Pinned::Value(secret)) => Ok(Some(Ok(secret.clone()))),
            Some(Pinned::Unfetched(properties)) => Ok(Some(Err(properties.clone()))),
            Some(Pinned::Revoked(why)) => Err(FsError::Store(why.error())),
            Some(Pinned::Inode) | None => Ok(None),
        }
    }
}

/// A name Key Vault cannot hold cannot exist: it is answered without a request.
fn parse_name(name: &OsStr) -> FsResult<SecretName> {
    name.to_str()
        .and_then(SecretName::parse)
        .ok_or(FsError::InvalidName)
}
