//! An LRU cache in front of any `SecretStore`, itself a `SecretStore`, plus the refresh that
//! keeps secrets in use fresh without touching the read path.
//!
//! - Found secrets are served for `ttl` after they were last validated, absent names for
//!   `negative_ttl`, listings for `list_ttl`. Versions never change and stay until evicted.
//! - Concurrent misses of one key share a single fetch (single flight). The fetch runs as its
//!   own task, so a reader that gives up (request timeout) does not cancel it for the others.
//! - When Key Vault fails transiently (429, 5xx, timeout, connection), an expired secret keeps
//!   being served, marked stale, for up to `max_stale` after it was last validated; the read
//!   path then does not retry for a while (`outage backoff`), so an outage is not hammered.
//!   Definitive answers (404, 403) are never masked.
//! - `refresh` revalidates secrets in use with one listing (a page covers 25 secrets) and GETs
//!   only those whose `updated` time moved.
//!
//! Time is tokio's clock, so tests pause and advance it.

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
    /// Most entries (secrets, versions, absent names) held at once.
    pub capacity: NonZeroUsize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub list_ttl: Duration,
    /// How long after its last validation a secret may still be served while Key Vault fails.
    pub max_stale: Duration,
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

type Fetch<T> = Shared<BoxFuture<'static, Result<T, StoreError>>>;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Latest(String),
    Version(String, String),
}

#[derive(Clone)]
enum Entry {
    Found(Found),
    /// 404, remembered for `negative_ttl`.
    Missing {
        at: Instant,
    },
    /// 403 (disabled, no access), remembered for `negative_ttl` too: a definitive answer.
    Denied {
        at: Instant,
        why: Forbidden,
    },
}

#[derive(Clone)]
struct Found {
    secret: Arc<Secret>,
    validated: Instant,
    fetched_wall: SystemTime,
    /// Set while Key Vault fails and this copy is served past its TTL.
    stale_since: Option<SystemTime>,
}

impl Found {
    /// A copy just validated; `fetched_wall` is when it was fetched from Key Vault.
    fn fresh(secret: Arc<Secret>, fetched_wall: SystemTime) -> Entry {
        Entry::Found(Found {
            secret,
            validated: Instant::now(),
            fetched_wall,
            stale_since: None,
        })
    }
}

/// What a refresh did: the changes it found (to push to the kernel even when part of it
/// failed, since the cache already holds them) and the transient failure that cut it short.
#[derive(Debug)]
pub struct Refreshed {
    pub changes: Vec<Change>,
    pub failure: Option<StoreError>,
}

/// What a refresh found changed, for the filesystem to invalidate in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new latest version.
    Updated(SecretName),
    /// Deleted or disabled.
    Gone(SecretName),
    /// Newly listed.
    Appeared(SecretName),
}

struct State {
    entries: LruCache<Key, Entry>,
    fetching: HashMap<Key, Fetch<Arc<Secret>>>,
    listing: Option<(Listing, Instant)>,
    listing_fetch: Option<Fetch<Listing>>,
    versions: LruCache<String, (Listing, Instant)>,
    outage_until: Option<Instant>,
    outage_backoff: Duration,
    /// The failure that opened the current outage window: misses fail fast with it meanwhile.
    outage_error: Option<StoreError>,
}

impl State {
    /// Key Vault answered: the outage window, if any, is over.
    fn recovered(&mut self) {
        self.outage_until = None;
        self.outage_backoff = OUTAGE_BACKOFF;
        self.outage_error = None;
    }
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
            entries: LruCache::new(config.capacity),
            fetching: HashMap::new(),
            listing: None,
            listing_fetch: None,
            versions: LruCache::new(config.capacity),
            outage_until: None,
            outage_backoff: OUTAGE_BACKOFF,
            outage_error: None,
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

    /// Number of entries (secrets, versions, absent names) held now.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached latest version of `name`, without a request and whatever its age.
    pub fn peek(&self, name: &SecretName) -> Option<Arc<Secret>> {
        match self.inner.lock().entries.peek(&Key::Latest(name.key()))? {
            Entry::Found(f) => Some(f.secret.clone()),
            Entry::Missing { .. } | Entry::Denied { .. } => None,
        }
    }

    /// When the copy of `name` being served went stale, if it is stale.
    pub fn stale_since(&self, name: &SecretName) -> Option<SystemTime> {
        match self.inner.lock().entries.peek(&Key::Latest(name.key()))? {
            Entry::Found(f) => f.stale_since,
            Entry::Missing { .. } | Entry::Denied { .. } => None,
        }
    }

    /// Revalidates `in_use` (the newest version of each secret the filesystem still serves)
    /// with one listing, fetching only secrets whose `updated` time moved, and refreshes the
    /// listing cache. Costs ceil(secrets / 25) list pages + one GET per changed secret.
    /// On failure nothing is dropped: expired entries are then served stale up to `max_stale`.
    pub async fn refresh(&self, in_use: &[SecretProperties]) -> Result<Refreshed, StoreError> {
        let inner = &self.inner;
        let listing = inner.store.list().await.inspect_err(|e| inner.failed(e))?;
        let mut changes = Vec::new();
        let previous = {
            let mut state = inner.lock();
            state.recovered();
            state.listing.replace((listing.clone(), Instant::now()))
        };
        let listed: HashMap<String, &SecretProperties> =
            listing.iter().map(|p| (p.name.key(), p)).collect();
        if let Some((previous, _)) = previous {
            let before: HashSet<String> = previous
                .iter()
                .filter(|p| p.enabled)
                .map(|p| p.name.key())
                .collect();
            for p in listing.iter().filter(|p| p.enabled) {
                if !before.contains(&p.name.key()) {
                    inner.lock().entries.pop(&Key::Latest(p.name.key()));
                    changes.push(Change::Appeared(p.name.clone()));
                }
            }
        }
        // Decide from the listing alone; then fetch what moved, a few at a time.
        let mut to_fetch = Vec::new();
        for held in in_use {
            let name = &held.name;
            let key = Key::Latest(name.key());
            let cached = match inner.lock().entries.peek(&key) {
                Some(Entry::Found(f)) => Some(f.clone()),
                _ => None,
            };
            // What kvfs serves: the cached copy, else the version the kernel holds.
            let known = cached.as_ref().map_or(held, |f| &f.secret.properties);
            let ambiguous = cached.as_ref().is_some_and(|f| {
                f.secret.properties.updated.is_none_or(|u| {
                    f.fetched_wall.duration_since(u).unwrap_or_default() < SAME_SECOND_WINDOW
                })
            });
            match listed.get(&name.key()) {
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
                // Deleted or disabled: the next lookup asks Key Vault and gets 404 or 403.
                _ => {
                    inner.lock().entries.pop(&key);
                    changes.push(Change::Gone(name.clone()));
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
                Err(e) if e.is_definitive() => {
                    inner.lock().entries.pop(&key);
                    changes.push(Change::Gone(name));
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = &failure {
            inner.failed(e);
        }
        Ok(Refreshed { changes, failure })
    }

    /// After a failed refresh: secrets in use past their TTL are marked stale (the kernel still
    /// serves them from its caches), and those past `max_stale` are dropped and reported gone,
    /// so that the kernel asks again and the reader gets the error instead of an old value.
    pub fn outage(&self, in_use: &[SecretProperties]) -> Vec<Change> {
        let now = Instant::now();
        let config = self.inner.config;
        let mut state = self.inner.lock();
        let mut gone = Vec::new();
        for held in in_use {
            let name = &held.name;
            let key = Key::Latest(name.key());
            let Some(Entry::Found(f)) = state.entries.peek_mut(&key) else {
                continue;
            };
            let age = now.duration_since(f.validated);
            if age >= config.max_stale {
                state.entries.pop(&key);
                gone.push(Change::Gone(name.clone()));
            } else if age >= config.ttl {
                mark_stale(f);
            }
        }
        gone
    }
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

    /// Notes a transient failure: for a window (1 s, doubling per window that ends in another
    /// failure, up to 8 s) the read path asks Key Vault nothing more. Expired secrets are served
    /// stale and misses fail at once; the kernel retries a failed lookup by itself, one waiter
    /// after another, and each would otherwise start a new round of retries.
    fn failed(&self, err: &StoreError) {
        if err.is_definitive() {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        if state.outage_until.is_some_and(|until| now < until) {
            return;
        }
        let backoff = state.outage_backoff;
        state.outage_until = Some(now + backoff);
        state.outage_backoff = (backoff * 2).min(OUTAGE_BACKOFF_MAX);
        state.outage_error = Some(err.clone());
    }

    /// The answer for `key` without a request, if there is one: fresh, or stale and allowed.
    fn cached(
        &self,
        state: &mut State,
        key: &Key,
        now: Instant,
    ) -> Option<Result<Arc<Secret>, StoreError>> {
        let in_outage = state.outage_until.is_some_and(|until| now < until);
        let config = self.config;
        // During an outage window a miss fails at once with the error that opened it.
        let fail_fast = in_outage
            .then(|| state.outage_error.clone())
            .flatten()
            .map(Err);
        let Some(entry) = state.entries.get_mut(key) else {
            return fail_fast;
        };
        match entry {
            Entry::Found(f) => {
                let age = now.duration_since(f.validated);
                let immutable = matches!(key, Key::Version(..));
                if immutable || age < config.ttl {
                    return Some(Ok(f.secret.clone()));
                }
                if in_outage && age < config.max_stale {
                    mark_stale(f);
                    return Some(Ok(f.secret.clone()));
                }
                fail_fast
            }
            Entry::Missing { at } if now.duration_since(*at) < config.negative_ttl => {
                Some(Err(StoreError::NotFound))
            }
            Entry::Denied { at, why } if now.duration_since(*at) < config.negative_ttl => {
                Some(Err(StoreError::Forbidden(*why)))
            }
            Entry::Missing { .. } | Entry::Denied { .. } => fail_fast,
        }
    }

    /// Records what a fetch of `key` found, and decides what the reader gets: on a transient
    /// failure, the previous copy if it is within `max_stale`.
    fn record(
        &self,
        key: Key,
        result: Result<Arc<Secret>, StoreError>,
    ) -> Result<Arc<Secret>, StoreError> {
        if let Err(e) = &result {
            self.failed(e);
        }
        let now = Instant::now();
        let mut state = self.lock();
        state.fetching.remove(&key);
        match result {
            Ok(secret) => {
                state.recovered();
                state
                    .entries
                    .put(key, Found::fresh(secret.clone(), SystemTime::now()));
                Ok(secret)
            }
            Err(StoreError::NotFound) => {
                state.entries.put(key, Entry::Missing { at: now });
                Err(StoreError::NotFound)
            }
            Err(StoreError::Forbidden(why)) => {
                state.entries.put(key, Entry::Denied { at: now, why });
                Err(StoreError::Forbidden(why))
            }
            // Only transient failures are left (404 and 403 are all the definitive answers).
            Err(e) => match state.entries.get_mut(&key) {
                Some(Entry::Found(f))
                    if now.duration_since(f.validated) < self.config.max_stale =>
                {
                    mark_stale(f);
                    Ok(f.secret.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(
        self: &Arc<Self>,
        key: Key,
        name: &SecretName,
    ) -> Result<Arc<Secret>, StoreError> {
        let fetch = {
            let mut state = self.lock();
            if let Some(answer) = self.cached(&mut state, &key, Instant::now()) {
                return answer;
            }
            match state.fetching.get(&key) {
                Some(fetch) => fetch.clone(),
                None => {
                    let inner = self.clone();
                    let name = name.clone();
                    let task_key = key.clone();
                    let task = tokio::spawn(async move {
                        let result = match &task_key {
                            Key::Latest(_) => inner.store.get(&name).await,
                            Key::Version(_, v) => inner.store.get_version(&name, v).await,
                        };
                        inner.record(task_key, result)
                    });
                    let fetch = task.map(joined).boxed().shared();
                    state.fetching.insert(key, fetch.clone());
                    fetch
                }
            }
        };
        fetch.await
    }
}

fn mark_stale(found: &mut Found) {
    if found.stale_since.is_none() {
        found.stale_since = Some(SystemTime::now());
        tracing::warn!(
            secret = %found.secret.properties.name,
            "Key Vault unavailable: serving the cached value stale (bounded by --max-stale)"
        );
    }
}

fn joined<T>(
    result: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, StoreError> {
    result.unwrap_or_else(|err| Err(StoreError::Other(format!("fetch task failed: {err}"))))
}

#[async_trait]
impl SecretStore for SecretCache {
    async fn list(&self) -> Result<Listing, StoreError> {
        let fetch = {
            let mut state = self.inner.lock();
            if let Some((listing, at)) = &state.listing
                && at.elapsed() < self.inner.config.list_ttl
            {
                return Ok(listing.clone());
            }
            match &state.listing_fetch {
                Some(fetch) => fetch.clone(),
                None => {
                    let inner = self.inner.clone();
                    let task = tokio::spawn(async move {
                        let result = inner.store.list().await;
                        let mut state = inner.lock();
                        state.listing_fetch = None;
                        match &result {
                            Ok(listing) => state.listing = Some((listing.clone(), Instant::now())),
                            // While Key Vault fails, the last listing is better than none.
                            Err(e) if !e.is_definitive() => {
                                if let Some((listing, _)) = &state.listing {
                                    return Ok(listing.clone());
                                }
                            }
                            Err(_) => {}
                        }
                        result
                    });
                    let fetch = task.map(joined).boxed().shared();
                    state.listing_fetch = Some(fetch.clone());
                    fetch
                }
            }
        };
        fetch.await
    }

    async fn get(&self, name: &SecretName) -> Result<Arc<Secret>, StoreError> {
        self.inner.fetch(Key::Latest(name.key()), name).await
    }

    async fn list_versions(&self, name: &SecretName) -> Result<Listing, StoreError> {
        let key = name.key();
        if let Some((listing, at)) = self.inner.lock().versions.get(&key)
            && at.elapsed() < self.inner.config.list_ttl
        {
            return Ok(listing.clone());
        }
        let listing = self.inner.store.list_versions(name).await?;
        self.inner
            .lock()
            .versions
            .put(key, (listing.clone(), Instant::now()));
        Ok(listing)
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
        self.inner
            .fetch(Key::Version(name.key(), version.to_ascii_lowercase()), name)
            .await
    }
}

#[cfg(test)]
mod tests;
