//! An LRU cache in front of any `SecretStore`, itself a `SecretStore`, plus the refresh that
//! keeps secrets in use fresh without touching the read path.
//!
//! - Found secrets are served for `ttl` after they were last validated, listings for
//!   `list_ttl`. Versions never change and stay until evicted or revoked. Values are bounded
//!   by count (`capacity`) and by bytes (`max_bytes`), whichever binds first.
//! - Absent names cost no request: a name missing from a listing younger than `negative_ttl`
//!   is absent. A name missing from an older listing makes the vault be listed again, once for
//!   all such names (single flight), so a new secret is found within `negative_ttl` however
//!   many absent names are looked up. 404s from GETs (a name listed but deleted since) sit in
//!   their own small LRU, so a scan of absent names never evicts values.
//! - Concurrent misses of one key share a single fetch (single flight), values and version
//!   listings alike. The fetch runs as its own task, so a reader that gives up (request
//!   timeout) does not cancel it for the others; a drop guard removes its entry even if the
//!   task panics, so a panic costs one EIO, not the secret.
//! - When Key Vault fails transiently (429, 5xx, timeout, connection), an expired secret keeps
//!   being served, marked stale, for up to `max_stale` after it was last validated; the read
//!   path then does not retry for a while (`outage backoff`), so an outage is not hammered. The
//!   window opens on evidence that the vault fails (a 429 or 5xx, or a failure with no success
//!   since it was sent), not on one slow secret while others are answered.
//!   Definitive answers (404, 403) are never masked.
//! - `refresh` revalidates secrets in use with one listing (a page covers 25 secrets) and GETs
//!   only those whose `updated` time moved; `revalidate_versions` checks older versions still
//!   served. What is found deleted or disabled is dropped from memory and reported, so that the
//!   filesystem revokes every inode serving it.
//!
//! Nothing is logged while the state lock is held. Time is tokio's clock, so tests pause and
//! advance it.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use lru::LruCache;
use tokio::time::Instant;

use crate::error::{Forbidden, StoreError};
use crate::secret::{Secret, SecretName, SecretProperties};
use crate::store::{Listing, SecretStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries (secrets, versions, refusals) held at once.
    pub capacity: NonZeroUsize,
    /// Most bytes of values held at once (the newest entry is kept even if larger).
    pub max_bytes: usize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub list_ttl: Duration,
    /// How long after its last validation a secret may still be served while Key Vault fails.
    pub max_stale: Duration,
    /// No fetch runs longer than this (the credential's own retries included); a reader of an
    /// expired copy waits half of it for the revalidation, then gets the copy stale.
    pub request_timeout: Duration,
}

/// After a transient failure, expired entries are served stale without a new request for this
/// long (doubling per failure, up to the cap); the refresh keeps probing on its own schedule.
const OUTAGE_BACKOFF: Duration = Duration::from_secs(1);
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A secret fetched within this long of its `updated` time may have been changed again in the
/// same second, which a listing (1 s resolution) cannot show: it is fetched once more.
const SAME_SECOND_WINDOW: Duration = Duration::from_secs(2);
/// GETs in flight at once when a refresh finds many secrets changed (a mass rotation).
const REFRESH_CONCURRENCY: usize = 8;
/// Names Key Vault answered 404 for although a listing had them (deleted since), remembered
/// for `negative_ttl`. About 100 bytes each.
const ABSENT_CAPACITY: usize = 4096;
/// Version listings kept (each a few hundred bytes per version): enough for `ls -R .versions`
/// of a large vault to be served twice from memory.
const VERSIONS_CAPACITY: usize = 8192;
/// What an entry costs beside its value: key, properties, LRU links.
const ENTRY_OVERHEAD: usize = 256;

type Fetch<T> = Shared<BoxFuture<'static, Result<T, StoreError>>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Latest(String),
    Version(String, String),
}

impl Key {
    fn name_key(&self) -> &str {
        match self {
            Self::Latest(name) | Self::Version(name, _) => name,
        }
    }
}

#[derive(Clone)]
enum Entry {
    Found(Found),
    /// 403 (disabled, no access), remembered for `negative_ttl`: a definitive answer.
    Denied {
        at: Instant,
        why: Forbidden,
    },
}

impl Entry {
    fn bytes(&self) -> usize {
        match self {
            Self::Found(f) => ENTRY_OVERHEAD + f.secret.value.len(),
            Self::Denied { .. } => ENTRY_OVERHEAD,
        }
    }
}

#[derive(Clone)]
struct Found {
    secret: Arc<Secret>,
    validated: Instant,
    fetched_wall: SystemTime,
    /// Whether serving this copy stale has been logged (once per copy).
    stale_logged: bool,
}

impl Found {
    /// A copy just validated; `fetched_wall` is when it was fetched from Key Vault.
    fn fresh(secret: Arc<Secret>, fetched_wall: SystemTime) -> Entry {
        Entry::Found(Found {
            secret,
            validated: Instant::now(),
            fetched_wall,
            stale_logged: false,
        })
    }
}

/// The value entries: an LRU bounded by count and by the bytes of the values it holds.
struct Entries {
    lru: LruCache<Key, Entry>,
    bytes: usize,
    max_bytes: usize,
}

impl Entries {
    fn put(&mut self, key: Key, entry: Entry) {
        self.bytes += entry.bytes();
        let replaces = self.lru.contains(&key);
        // `push` hands back the entry it replaced or evicted: either way it leaves.
        if let Some((_, old)) = self.lru.push(key, entry) {
            if !replaces {
                crate::metrics::cache_eviction();
            }
            self.bytes -= old.bytes();
        }
        while self.bytes > self.max_bytes && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => {
                    crate::metrics::cache_eviction();
                    self.bytes -= old.bytes();
                }
                None => break,
            }
        }
    }

    fn pop(&mut self, key: &Key) -> Option<Entry> {
        let old = self.lru.pop(key)?;
        self.bytes -= old.bytes();
        Some(old)
    }

    /// Drops every entry of `name_key` (its latest copy and every version).
    fn pop_name(&mut self, name_key: &str) {
        let keys: Vec<Key> = self
            .lru
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.name_key() == name_key)
            .cloned()
            .collect();
        for key in keys {
            self.pop(&key);
        }
    }
}

/// What a refresh did: the changes it found (to push to the kernel even when part of it
/// failed, since the cache already holds them) and the transient failure that cut it short.
#[derive(Debug)]
pub struct Refreshed {
    pub changes: Vec<Change>,
    pub failure: Option<StoreError>,
}

/// What a refresh (or a read) found changed, for the filesystem to apply to its inodes and
/// the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new latest version.
    Updated(SecretName),
    /// Deleted or disabled: every version of it stops being served.
    Gone(SecretName, Revoked),
    /// One version deleted or disabled (the secret itself stays).
    VersionGone(SecretName, String, Revoked),
    /// Newly listed.
    Appeared(SecretName),
    /// Past `max_stale` while Key Vault fails: forgotten, so that the next use asks Key Vault
    /// and gets its error rather than an old value.
    Expired(SecretName),
}

impl Change {
    pub fn name(&self) -> &SecretName {
        match self {
            Self::Updated(n)
            | Self::Gone(n, _)
            | Self::VersionGone(n, _, _)
            | Self::Appeared(n)
            | Self::Expired(n) => n,
        }
    }
}

/// Why a secret or version stopped being served: what its readers get from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Revoked {
    /// Deleted (404): ENOENT.
    Deleted,
    /// Disabled or no longer readable by this identity (403): EACCES.
    Denied(Forbidden),
}

impl Revoked {
    /// From a definitive answer; `None` for any other error.
    pub fn from_error(err: &StoreError) -> Option<Self> {
        match err {
            StoreError::NotFound => Some(Self::Deleted),
            StoreError::Forbidden(why) => Some(Self::Denied(*why)),
            _ => None,
        }
    }

    pub fn error(self) -> StoreError {
        match self {
            Self::Deleted => StoreError::NotFound,
            Self::Denied(why) => StoreError::Forbidden(why),
        }
    }
}

struct State {
    entries: Entries,
    /// Keys Key Vault answered 404 for, and when.
    absent: LruCache<Key, Instant>,
    /// Single-flight slots, each with the id of the fetch that holds it.
    fetching: HashMap<Key, (u64, Fetch<Arc<Secret>>)>,
    next_slot: u64,
    listing: Option<(Listing, Instant)>,
    listing_fetch: Option<(u64, Fetch<Listing>)>,
    /// A definitive refusal to list (403), and when.
    list_refused: Option<(StoreError, Instant)>,
    versions: LruCache<String, (Listing, Instant)>,
    versions_fetching: HashMap<String, (u64, Fetch<Listing>)>,
    outage_until: Option<Instant>,
    outage_backoff: Duration,
    /// The failure that opened the current outage window: misses fail fast with it meanwhile.
    outage_error: Option<StoreError>,
    /// When Key Vault last answered (anything but a transient failure).
    last_answer: Option<Instant>,
    /// Names whose held version a predecessor kvfs handed over: checked by version at the
    /// next refresh, since the listing's whole-second `updated` cannot tell two versions of
    /// one second apart.
    unverified: HashSet<String>,
}

impl State {
    /// Key Vault answered: the outage window, if any, is over.
    fn recovered(&mut self) {
        self.outage_until = None;
        self.outage_backoff = OUTAGE_BACKOFF;
        self.outage_error = None;
        self.last_answer = Some(Instant::now());
    }

    fn new_slot_id(&mut self) -> u64 {
        self.next_slot += 1;
        self.next_slot
    }

    fn in_outage(&self, now: Instant) -> bool {
        self.outage_until.is_some_and(|until| now < until)
    }

    /// What the listing says of `name_key` if it is younger than `fresh_for`: `Some(false)`
    /// when the vault does not hold it. `None` when there is no listing that young.
    fn listed(&self, name_key: &str, fresh_for: Duration, now: Instant) -> Option<bool> {
        let (listing, at) = self.listing.as_ref()?;
        if now.duration_since(*at) >= fresh_for {
            return None;
        }
        Some(find(listing, name_key).is_some())
    }

    /// Forgets everything about `name_key`: values, versions, its version listing.
    fn revoke(&mut self, name_key: &str) {
        self.entries.pop_name(name_key);
        self.versions.pop(name_key);
    }
}

/// The listed properties of `name_key` (listings are sorted by name key).
fn find<'a>(listing: &'a [SecretProperties], name_key: &str) -> Option<&'a SecretProperties> {
    listing
        .binary_search_by(|p| compare_key(p.name.as_str(), name_key))
        .ok()
        .and_then(|i| listing.get(i))
}

/// Compares a name with a name key as their keys, without allocating.
fn compare_key(name: &str, key: &str) -> Ordering {
    name.bytes()
        .map(|b| b.to_ascii_lowercase())
        .cmp(key.bytes())
}

struct Inner {
    store: Arc<dyn SecretStore>,
    config: CacheConfig,
    state: Mutex<State>,
}

#[derive(Clone)]
pub struct SecretCache {
    inner: Arc<Inner>,
}

impl SecretCache {
    pub fn new(store: Arc<dyn SecretStore>, config: CacheConfig) -> Self {
        let state = State {
            entries: Entries {
                lru: LruCache::new(config.capacity),
                bytes: 0,
                max_bytes: config.max_bytes,
            },
            absent: LruCache::new(NonZeroUsize::new(ABSENT_CAPACITY).unwrap_or(NonZeroUsize::MIN)),
            fetching: HashMap::new(),
            next_slot: 0,
            listing: None,
            listing_fetch: None,
            list_refused: None,
            versions: LruCache::new(
                NonZeroUsize::new(VERSIONS_CAPACITY).unwrap_or(NonZeroUsize::MIN),
            ),
            versions_fetching: HashMap::new(),
            outage_until: None,
            outage_backoff: OUTAGE_BACKOFF,
            outage_error: None,
            last_answer: None,
            unverified: HashSet::new(),
        };
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                state: Mutex::new(state),
            }),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// Number of value entries (secrets, versions, refusals) held now.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.lru.len()
    }

    /// Bytes of values held now (with the per-entry overhead).
    pub fn bytes(&self) -> usize {
        self.inner.lock().entries.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached latest version of `name`, without a request and whatever its age.
    pub fn peek(&self, name: &SecretName) -> Option<Arc<Secret>> {
        match self
            .inner
            .lock()
            .entries
            .lru
            .peek(&Key::Latest(name.key()))?
        {
            Entry::Found(f) => Some(f.secret.clone()),
            Entry::Denied { .. } => None,
        }
    }

    /// Since when the copy of `name` being served is past its TTL without confirmation (it
    /// is then served stale, from memory or the kernel's caches), if it is.
    pub fn stale_since(&self, name: &SecretName) -> Option<SystemTime> {
        let state = self.inner.lock();
        let Entry::Found(f) = state.entries.lru.peek(&Key::Latest(name.key()))? else {
            return None;
        };
        let expired_for =
            Instant::now().checked_duration_since(f.validated + self.inner.config.ttl)?;
        SystemTime::now().checked_sub(expired_for)
    }

    /// Revalidates `in_use` (the newest version of each secret the filesystem still serves)
    /// with one listing, fetching only secrets whose `updated` time moved, and refreshes the
    /// listing cache. Costs ceil(secrets / 25) list pages + one GET per changed secret.
    /// On failure nothing is dropped: expired entries are then served stale up to `max_stale`.
    pub async fn refresh(&self, in_use: &[SecretProperties]) -> Result<Refreshed, StoreError> {
        let inner = &self.inner;
        let started = Instant::now();
        let listing = match inner.store.list().await {
            Ok(listing) => listing,
            Err(e) => {
                inner.failed(&e, started);
                return Err(e);
            }
        };
        let mut changes = Vec::new();
        let previous = {
            let mut state = inner.lock();
            state.recovered();
            state.listing.replace((listing.clone(), Instant::now()))
        };
        if let Some((previous, _)) = previous {
            let before: HashSet<String> = previous
                .iter()
                .filter(|p| p.enabled)
                .map(|p| p.name.key())
                .collect();
            let mut state = inner.lock();
            for p in listing.iter().filter(|p| p.enabled) {
                let key = p.name.key();
                if !before.contains(&key) {
                    state.entries.pop(&Key::Latest(key.clone()));
                    state.absent.pop(&Key::Latest(key));
                    changes.push(Change::Appeared(p.name.clone()));
                }
            }
        }
        // Decide from the listing alone; then fetch what moved, a few at a time.
        let mut to_fetch = Vec::new();
        for held in in_use {
            let name = &held.name;
            let key = Key::Latest(name.key());
            let cached = match inner.lock().entries.lru.peek(&key) {
                Some(Entry::Found(f)) => Some(f.clone()),
                _ => None,
            };
            // What kvfs serves: the cached copy, else the version the kernel holds.
            let known = cached.as_ref().map_or(held, |f| &f.secret.properties);
            // Key Vault's `updated` has whole seconds: two versions of one second look alike.
            // A copy fetched within that second is checked by version; so is a version a
            // predecessor kvfs handed over, once.
            let ambiguous = match &cached {
                Some(f) => f.secret.properties.updated.is_none_or(|u| {
                    f.fetched_wall.duration_since(u).unwrap_or_default() < SAME_SECOND_WINDOW
                }),
                None => inner.lock().unverified.remove(&name.key()),
            };
            match find(&listing, &name.key()) {
                Some(item) if item.enabled => {
                    if item.updated == known.updated && !ambiguous {
                        if let Some(f) = cached {
                            inner.store_found(key, f.secret, f.fetched_wall);
                        }
                    } else {
                        let known_version = known.version.clone();
                        to_fetch.push((name.clone(), known_version, cached));
                    }
                }
                Some(_) => {
                    inner.lock().revoke(&name.key());
                    let why = Revoked::Denied(Forbidden::SecretDisabled);
                    changes.push(Change::Gone(name.clone(), why));
                }
                None => {
                    inner.lock().revoke(&name.key());
                    changes.push(Change::Gone(name.clone(), Revoked::Deleted));
                }
            }
        }
        let mut fetched = futures::stream::iter(to_fetch)
            .map(|(name, known_version, cached)| async move {
                let result = inner.store.get(&name).await;
                (name, known_version, cached, result)
            })
            .buffer_unordered(REFRESH_CONCURRENCY);
        let mut failure = None;
        while let Some((name, known_version, cached, result)) = fetched.next().await {
            let key = Key::Latest(name.key());
            match result {
                Ok(secret) => {
                    let changed = secret.properties.version != known_version;
                    // Same version: keep the copy already served, so that inodes holding it
                    // (weakly) still find it in memory.
                    let keep = cached.filter(|_| !changed).map(|f| f.secret);
                    inner.store_found(key, keep.unwrap_or(secret), SystemTime::now());
                    if changed {
                        changes.push(Change::Updated(name));
                    }
                }
                Err(e) => match Revoked::from_error(&e) {
                    Some(why) => {
                        inner.lock().revoke(&name.key());
                        changes.push(Change::Gone(name, why));
                    }
                    None => failure = Some(e),
                },
            }
        }
        if let Some(e) = &failure {
            inner.failed(e, started);
        }
        Ok(Refreshed { changes, failure })
    }

    /// Checks older versions the filesystem still serves (open files, `.versions` entries)
    /// against a fresh version listing of their secret: one request per secret. Versions
    /// disabled or gone are dropped and reported. Secrets themselves gone are `refresh`'s.
    pub async fn revalidate_versions(&self, older: &[(SecretName, Vec<String>)]) -> Refreshed {
        let inner = &self.inner;
        let started = Instant::now();
        let mut listed = futures::stream::iter(older.to_vec())
            .map(|(name, versions)| {
                let store = inner.store.clone();
                async move {
                    let result = store.list_versions(&name).await;
                    (name, versions, result)
                }
            })
            .buffer_unordered(REFRESH_CONCURRENCY);
        let mut changes = Vec::new();
        let mut failure = None;
        while let Some((name, versions, result)) = listed.next().await {
            let listing = match result {
                Ok(listing) => listing,
                Err(e) => match Revoked::from_error(&e) {
                    Some(why) => {
                        inner.lock().revoke(&name.key());
                        changes.push(Change::Gone(name, why));
                        continue;
                    }
                    None => {
                        failure = Some(e);
                        continue;
                    }
                },
            };
            let mut state = inner.lock();
            state.recovered();
            for version in versions {
                let item = listing
                    .iter()
                    .find(|p| p.version.as_deref() == Some(version.as_str()));
                let why = match item {
                    Some(p) if p.enabled => continue,
                    Some(_) => Revoked::Denied(Forbidden::SecretDisabled),
                    None => Revoked::Deleted,
                };
                state
                    .entries
                    .pop(&Key::Version(name.key(), version.clone()));
                changes.push(Change::VersionGone(name.clone(), version.clone(), why));
            }
            state.versions.put(name.key(), (listing, Instant::now()));
        }
        if let Some(e) = &failure {
            inner.failed(e, started);
        }
        Refreshed { changes, failure }
    }

    /// After a failed refresh: secrets in use past `max_stale` are dropped and reported gone,
    /// so that the kernel asks again and the reader gets the error instead of an old value.
    /// Those past their TTL are logged as served stale (once per copy).
    /// Names whose held versions came from a predecessor kvfs: the next refresh checks each
    /// by version once.
    pub fn mark_unverified(&self, names: impl IntoIterator<Item = SecretName>) {
        self.inner
            .lock()
            .unverified
            .extend(names.into_iter().map(|n| n.key()));
    }

    pub fn outage(&self, in_use: &[SecretProperties]) -> Vec<Change> {
        let now = Instant::now();
        let config = self.inner.config;
        let mut gone = Vec::new();
        let mut newly_stale = Vec::new();
        {
            let mut state = self.inner.lock();
            for held in in_use {
                let name = &held.name;
                let key = Key::Latest(name.key());
                let Some(Entry::Found(f)) = state.entries.lru.peek_mut(&key) else {
                    continue;
                };
                let age = now.duration_since(f.validated);
                if age >= config.max_stale {
                    state.entries.pop(&key);
                    gone.push(Change::Expired(name.clone()));
                } else if age >= config.ttl && !f.stale_logged {
                    f.stale_logged = true;
                    newly_stale.push(name.clone());
                }
            }
        }
        log_stale(&newly_stale);
        gone
    }
}

fn log_stale(names: &[SecretName]) {
    for name in names {
        tracing::warn!(
            secret = %name,
            "Key Vault unavailable: serving the cached value stale (bounded by --max-stale)"
        );
    }
}

/// Frees a single-flight slot when its task ends, however it ends (a panic included), unless
/// a newer fetch took the slot meanwhile (`clear` checks the slot's id).
struct Slot<F: FnMut(&mut State)> {
    inner: Arc<Inner>,
    clear: F,
}

impl<F: FnMut(&mut State)> Drop for Slot<F> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        (self.clear)(&mut state);
    }
}

/// What `cached` found: an answer, or the need to ask.
enum Lookup {
    Answer(Result<Arc<Secret>, StoreError>),
    /// No answer in memory.
    Ask,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store_found(&self, key: Key, secret: Arc<Secret>, fetched_wall: SystemTime) {
        self.lock()
            .entries
            .put(key, Found::fresh(secret, fetched_wall));
    }

    /// Notes a transient failure of a request sent at `sent`. On evidence that the vault is
    /// failing (it said so: 429 or 5xx; or nothing was answered since `sent`), for a window
    /// (1 s, doubling per window that ends in another failure, up to 8 s) the read path asks
    /// Key Vault nothing more. Expired secrets are served stale and misses fail at once; the
    /// kernel retries a failed lookup by itself, one waiter after another, and each would
    /// otherwise start a new round of retries. One slow secret while others are answered is
    /// no such evidence.
    fn failed(&self, err: &StoreError, sent: Instant) {
        if err.is_definitive() {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let vault_says = matches!(
            err,
            StoreError::Throttled { .. } | StoreError::Service { .. }
        );
        let answered_since = state.last_answer.is_some_and(|at| at > sent);
        if !vault_says && answered_since {
            return;
        }
        if state.in_outage(now) {
            return;
        }
        let backoff = state.outage_backoff;
        state.outage_until = Some(now + backoff);
        state.outage_backoff = (backoff * 2).min(OUTAGE_BACKOFF_MAX);
        state.outage_error = Some(err.clone());
    }

    /// The answer for `key` without a request, if there is one: fresh, refused, absent, or
    /// stale and allowed. Sets `newly_stale` when a copy is served stale for the first time.
    fn cached(&self, state: &mut State, key: &Key, now: Instant, newly_stale: &mut bool) -> Lookup {
        let in_outage = state.in_outage(now);
        let config = self.config;
        // During an outage window a miss fails at once with the error that opened it.
        let fail_fast = match in_outage.then(|| state.outage_error.clone()).flatten() {
            Some(err) => Lookup::Answer(Err(err)),
            None => Lookup::Ask,
        };
        if let Some(at) = state.absent.get(key) {
            if now.duration_since(*at) < config.negative_ttl {
                return Lookup::Answer(Err(StoreError::NotFound));
            }
            state.absent.pop(key);
        }
        let Some(entry) = state.entries.lru.get_mut(key) else {
            return fail_fast;
        };
        match entry {
            Entry::Found(f) => {
                let age = now.duration_since(f.validated);
                let immutable = matches!(key, Key::Version(..));
                if immutable || age < config.ttl {
                    return Lookup::Answer(Ok(f.secret.clone()));
                }
                if in_outage && age < config.max_stale {
                    crate::metrics::stale_serve();
                    *newly_stale = !std::mem::replace(&mut f.stale_logged, true);
                    return Lookup::Answer(Ok(f.secret.clone()));
                }
                fail_fast
            }
            Entry::Denied { at, why } if now.duration_since(*at) < config.negative_ttl => {
                Lookup::Answer(Err(StoreError::Forbidden(*why)))
            }
            Entry::Denied { .. } => fail_fast,
        }
    }

    /// Records what a fetch of `key` found, and decides what the reader gets: on a transient
    /// failure, the previous copy if it is within `max_stale`.
    fn record(
        &self,
        key: Key,
        sent: Instant,
        result: Result<Arc<Secret>, StoreError>,
    ) -> Result<Arc<Secret>, StoreError> {
        if let Err(e) = &result {
            self.failed(e, sent);
        }
        let now = Instant::now();
        let mut newly_stale = None;
        let answer = {
            let mut state = self.lock();
            match result {
                Ok(secret) => {
                    state.recovered();
                    state
                        .entries
                        .put(key, Found::fresh(secret.clone(), SystemTime::now()));
                    Ok(secret)
                }
                Err(e) if e.is_definitive() => {
                    state.recovered();
                    // A latest copy refused or gone means every version of it goes.
                    if matches!(key, Key::Latest(_)) {
                        state.revoke(key.name_key());
                    } else {
                        state.entries.pop(&key);
                    }
                    match &e {
                        StoreError::Forbidden(why) => {
                            let why = *why;
                            state.entries.put(key, Entry::Denied { at: now, why });
                        }
                        _ => {
                            state.absent.put(key, now);
                        }
                    }
                    Err(e)
                }
                Err(e) => match state.entries.lru.get_mut(&key) {
                    Some(Entry::Found(f))
                        if now.duration_since(f.validated) < self.config.max_stale =>
                    {
                        crate::metrics::stale_serve();
                        if !std::mem::replace(&mut f.stale_logged, true) {
                            newly_stale = Some(f.secret.properties.name.clone());
                        }
                        Ok(f.secret.clone())
                    }
                    _ => Err(e),
                },
            }
        };
        log_stale(newly_stale.as_slice());
        answer
    }

    async fn fetch(
        self: &Arc<Self>,
        key: Key,
        name: &SecretName,
    ) -> Result<Arc<Secret>, StoreError> {
        let mut newly_stale = false;
        let now = Instant::now();
        crate::metrics::secret_read(name.as_str());
        let (lookup, expired_copy) = {
            let mut state = self.lock();
            match self.cached(&mut state, &key, now, &mut newly_stale) {
                Lookup::Answer(answer) => {
                    crate::metrics::cache_hit();
                    (Err(answer), None)
                }
                Lookup::Ask => {
                    crate::metrics::cache_miss();
                    // An expired copy still within `max_stale`: what the reader gets if the
                    // revalidation does not answer soon.
                    let expired_copy = match state.entries.lru.peek(&key) {
                        Some(Entry::Found(f))
                            if now.duration_since(f.validated) < self.config.max_stale =>
                        {
                            Some(f.secret.clone())
                        }
                        _ => None,
                    };
                    let fetch = match state.fetching.get(&key) {
                        Some((_, fetch)) => fetch.clone(),
                        None => self.start_fetch(&mut state, key.clone(), name),
                    };
                    (Ok(fetch), expired_copy)
                }
            }
        };
        if newly_stale {
            log_stale(std::slice::from_ref(name));
        }
        let fetch = match lookup {
            Ok(fetch) => fetch,
            Err(answer) => return answer,
        };
        let Some(copy) = expired_copy else {
            return fetch.await;
        };
        // A vault that hangs gives no answer to open an outage window with: rather than let the
        // reader's deadline pass, serve the copy stale after half of it. The revalidation goes
        // on and records what it finds.
        match tokio::time::timeout(self.config.request_timeout / 2, fetch).await {
            Ok(answer) => answer,
            Err(_) => {
                crate::metrics::stale_serve();
                let first = match self.lock().entries.lru.get_mut(&key) {
                    Some(Entry::Found(f)) => !std::mem::replace(&mut f.stale_logged, true),
                    _ => false,
                };
                if first {
                    log_stale(std::slice::from_ref(name));
                }
                Ok(copy)
            }
        }
    }

    /// Starts the one fetch of `key` that concurrent readers share.
    fn start_fetch(
        self: &Arc<Self>,
        state: &mut State,
        key: Key,
        name: &SecretName,
    ) -> Fetch<Arc<Secret>> {
        let id = state.new_slot_id();
        let slot_key = key.clone();
        let slot = Slot {
            inner: self.clone(),
            clear: move |state: &mut State| {
                if state.fetching.get(&slot_key).is_some_and(|(i, _)| *i == id) {
                    state.fetching.remove(&slot_key);
                }
            },
        };
        let name = name.clone();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let inner = &slot.inner;
            let sent = Instant::now();
            let limit = inner.config.request_timeout;
            let request = async {
                match &task_key {
                    Key::Latest(_) => inner.store.get(&name).await,
                    Key::Version(_, v) => inner.store.get_version(&name, v).await,
                }
            };
            // Bounded here, not only by the reader: a fetch that never ends (an identity
            // endpoint retrying for minutes) would never open the outage window.
            let result = tokio::time::timeout(limit, request)
                .await
                .unwrap_or(Err(StoreError::Timeout(limit)));
            // The slot is freed (on drop) after the answer is recorded: a reader arriving in
            // between finds either the fetch or its recorded answer.
            inner.record(task_key, sent, result)
        });
        let fetch = task.map(joined).boxed().shared();
        state.fetching.insert(key, (id, fetch.clone()));
        fetch
    }

    /// Whether `name` is absent by the listing. A listing younger than `negative_ttl` tells;
    /// a name an older listing holds is taken as present (asking for it costs one request); a
    /// name it does not hold makes the vault be listed again, once for all such callers, so a
    /// new secret is found within `negative_ttl`. `false` when no listing can tell (listing
    /// failed or is refused): the caller then asks for the name itself.
    async fn absent_by_listing(self: &Arc<Self>, name: &SecretName) -> bool {
        let key = name.key();
        let fresh_for = self.config.negative_ttl;
        {
            let state = self.lock();
            if let Some(listed) = state.listed(&key, fresh_for, Instant::now()) {
                return !listed;
            }
            if state
                .listing
                .as_ref()
                .is_some_and(|(listing, _)| find(listing, &key).is_some())
            {
                return false;
            }
        }
        if self.list(fresh_for).await.is_err() {
            return false;
        }
        self.lock().listed(&key, fresh_for, Instant::now()) == Some(false)
    }

    /// The vault's listing, no older than `max_age`; one fetch shared by concurrent callers.
    /// While Key Vault fails, the last listing is served whatever its age; a refusal (403: this
    /// identity may not list) is remembered for `negative_ttl`.
    async fn list(self: &Arc<Self>, max_age: Duration) -> Result<Listing, StoreError> {
        let fetch = {
            let mut state = self.lock();
            let now = Instant::now();
            let in_outage = state.in_outage(now);
            if let Some((listing, at)) = &state.listing
                && (now.duration_since(*at) < max_age || in_outage)
            {
                return Ok(listing.clone());
            }
            if let Some((err, at)) = &state.list_refused
                && now.duration_since(*at) < self.config.negative_ttl
            {
                return Err(err.clone());
            }
            if in_outage && let Some(err) = &state.outage_error {
                return Err(err.clone());
            }
            match &state.listing_fetch {
                Some((_, fetch)) => fetch.clone(),
                None => {
                    let id = state.new_slot_id();
                    let slot = Slot {
                        inner: self.clone(),
                        clear: move |state: &mut State| {
                            if state.listing_fetch.as_ref().is_some_and(|(i, _)| *i == id) {
                                state.listing_fetch = None;
                            }
                        },
                    };
                    let task = tokio::spawn(async move {
                        let inner = &slot.inner;
                        let sent = Instant::now();
                        let result = inner.store.list().await;
                        if let Err(e) = &result {
                            inner.failed(e, sent);
                        }
                        let mut state = inner.lock();
                        match &result {
                            Ok(listing) => {
                                state.recovered();
                                state.list_refused = None;
                                state.listing = Some((listing.clone(), Instant::now()));
                            }
                            Err(e) if e.is_definitive() => {
                                state.list_refused = Some((e.clone(), Instant::now()));
                            }
                            // While Key Vault fails, the last listing is better than none.
                            Err(_) => {
                                if let Some((listing, _)) = &state.listing {
                                    return Ok(listing.clone());
                                }
                            }
                        }
                        result
                    });
                    let fetch = task.map(joined).boxed().shared();
                    state.listing_fetch = Some((id, fetch.clone()));
                    fetch
                }
            }
        };
        fetch.await
    }

    /// `name`'s version listing: cached for `list_ttl`, one fetch shared by concurrent callers.
    async fn list_versions(self: &Arc<Self>, name: &SecretName) -> Result<Listing, StoreError> {
        let key = name.key();
        let fetch = {
            let mut state = self.lock();
            if let Some((listing, at)) = state.versions.get(&key)
                && at.elapsed() < self.config.list_ttl
            {
                return Ok(listing.clone());
            }
            match state.versions_fetching.get(&key) {
                Some((_, fetch)) => fetch.clone(),
                None => {
                    let id = state.new_slot_id();
                    let slot_key = key.clone();
                    let slot = Slot {
                        inner: self.clone(),
                        clear: move |state: &mut State| {
                            if state
                                .versions_fetching
                                .get(&slot_key)
                                .is_some_and(|(i, _)| *i == id)
                            {
                                state.versions_fetching.remove(&slot_key);
                            }
                        },
                    };
                    let name = name.clone();
                    let task_key = key.clone();
                    let task = tokio::spawn(async move {
                        let inner = &slot.inner;
                        let sent = Instant::now();
                        let result = inner.store.list_versions(&name).await;
                        if let Err(e) = &result {
                            inner.failed(e, sent);
                        }
                        if let Ok(listing) = &result {
                            let mut state = inner.lock();
                            state.recovered();
                            state
                                .versions
                                .put(task_key, (listing.clone(), Instant::now()));
                        }
                        result
                    });
                    let fetch = task.map(joined).boxed().shared();
                    state.versions_fetching.insert(key, (id, fetch.clone()));
                    fetch
                }
            }
        };
        fetch.await
    }
}

fn joined<T>(
    result: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, StoreError> {
    result.unwrap_or_else(|err| {
        let why = if err.is_panic() {
            "panicked"
        } else {
            "was cancelled"
        };
        Err(StoreError::Other(format!(
            "the Key Vault request task {why}"
        )))
    })
}

#[async_trait]
impl SecretStore for SecretCache {
    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list(self.inner.config.list_ttl).await
    }

    async fn get(&self, name: &SecretName) -> Result<Arc<Secret>, StoreError> {
        let key = Key::Latest(name.key());
        let known = {
            let state = self.inner.lock();
            state.entries.lru.contains(&key) || state.fetching.contains_key(&key)
        };
        if !known && self.inner.absent_by_listing(name).await {
            return Err(StoreError::NotFound);
        }
        self.inner.fetch(key, name).await
    }

    async fn list_versions(&self, name: &SecretName) -> Result<Listing, StoreError> {
        if self.inner.absent_by_listing(name).await {
            return Err(StoreError::NotFound);
        }
        self.inner.list_versions(name).await
    }

    async fn get_version(
        &self,
        name: &SecretName,
        version: &str,
    ) -> Result<Arc<Secret>, StoreError> {
        // The latest copy may be this very version: no request for it.
        if let Some(latest) = self.peek(name)
            && latest
                .properties
                .version
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case(version))
        {
            return Ok(latest);
        }
        let key = Key::Version(name.key(), version.to_ascii_lowercase());
        let known = self.inner.lock().entries.lru.contains(&key);
        if !known && self.inner.absent_by_listing(name).await {
            return Err(StoreError::NotFound);
        }
        self.inner.fetch(key, name).await
    }
}

#[cfg(test)]
mod tests;
