//! An LRU cache in front of any `SecretStore`, itself a `SecretStore`.
//!
//! Found secrets live for `ttl`, absent names for `negative_ttl`, the listing for `list_ttl`.
//! Concurrent misses of one name share a single fetch (single flight): the fetch runs as its own
//! task, so a reader that gives up (request timeout) does not cancel it for the others, and its
//! result still lands in the cache. Time is tokio's clock, so tests pause and advance it.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::secret::{Secret, SecretName};
use crate::store::{Listing, SecretStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most secrets (found or absent) held at once.
    pub capacity: NonZeroUsize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub list_ttl: Duration,
}

type Fetch<T> = Shared<BoxFuture<'static, Result<T, StoreError>>>;

enum Entry {
    Found { secret: Arc<Secret>, at: Instant },
    Missing { at: Instant },
}

struct State {
    entries: LruCache<String, Entry>,
    fetching: HashMap<String, Fetch<Arc<Secret>>>,
    listing: Option<(Listing, Instant)>,
    listing_fetch: Option<Fetch<Listing>>,
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
        };
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// Number of names (found or absent) held now.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fresh cached answer for `key`, if any.
    fn cached(
        &self,
        state: &mut State,
        key: &str,
        now: Instant,
    ) -> Option<Result<Arc<Secret>, StoreError>> {
        match state.entries.get(key)? {
            Entry::Found { secret, at } if now.duration_since(*at) < self.config.ttl => {
                Some(Ok(secret.clone()))
            }
            Entry::Missing { at } if now.duration_since(*at) < self.config.negative_ttl => {
                Some(Err(StoreError::NotFound))
            }
            Entry::Found { .. } | Entry::Missing { .. } => None,
        }
    }

    /// Records what a fetch found. Only a 404 is cached as absent: any other error says
    /// nothing lasting about the name.
    fn record(&self, key: String, result: &Result<Arc<Secret>, StoreError>) {
        let mut state = self.lock();
        state.fetching.remove(&key);
        let at = Instant::now();
        match result {
            Ok(secret) => {
                state.entries.put(
                    key,
                    Entry::Found {
                        secret: secret.clone(),
                        at,
                    },
                );
            }
            Err(StoreError::NotFound) => {
                state.entries.put(key, Entry::Missing { at });
            }
            Err(_) => {
                state.entries.pop(&key);
            }
        }
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
                        if let Ok(listing) = &result {
                            state.listing = Some((listing.clone(), Instant::now()));
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
        let key = name.key();
        let fetch = {
            let mut state = self.inner.lock();
            if let Some(answer) = self.inner.cached(&mut state, &key, Instant::now()) {
                return answer;
            }
            match state.fetching.get(&key) {
                Some(fetch) => fetch.clone(),
                None => {
                    let inner = self.inner.clone();
                    let name = name.clone();
                    let task_key = key.clone();
                    let task = tokio::spawn(async move {
                        let result = inner.store.get(&name).await;
                        inner.record(task_key, &result);
                        result
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn config() -> CacheConfig {
        CacheConfig {
            capacity: NonZeroUsize::new(2).unwrap(),
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            list_ttl: Duration::from_secs(60),
        }
    }

    fn name(s: &str) -> SecretName {
        SecretName::parse(s).unwrap()
    }

    fn setup() -> (Arc<MemoryStore>, SecretCache) {
        let store = Arc::new(MemoryStore::new());
        store.put("a", "one");
        store.put("b", "two");
        store.put("c", "three");
        let cache = SecretCache::new(store.clone(), config());
        (store, cache)
    }

    #[tokio::test(start_paused = true)]
    async fn hit_within_ttl_refetch_after() {
        let (store, cache) = setup();
        assert_eq!(
            cache.get(&name("a")).await.unwrap().value.as_bytes(),
            b"one"
        );
        assert_eq!(
            cache.get(&name("A")).await.unwrap().value.as_bytes(),
            b"one"
        );
        assert_eq!(store.gets(), 1);
        store.put("a", "uno");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(
            cache.get(&name("a")).await.unwrap().value.as_bytes(),
            b"one"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            cache.get(&name("a")).await.unwrap().value.as_bytes(),
            b"uno"
        );
        assert_eq!(store.gets(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn negative_entries_expire() {
        let (store, cache) = setup();
        assert_eq!(
            cache.get(&name("zz")).await.unwrap_err(),
            StoreError::NotFound
        );
        assert_eq!(
            cache.get(&name("zz")).await.unwrap_err(),
            StoreError::NotFound
        );
        assert_eq!(store.gets(), 1);
        store.put("zz", "new");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            cache.get(&name("zz")).await.unwrap().value.as_bytes(),
            b"new"
        );
        assert_eq!(store.gets(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_not_cached() {
        let (store, cache) = setup();
        store.fail_with(Some(StoreError::Service { status: 503 }));
        assert_eq!(
            cache.get(&name("a")).await.unwrap_err(),
            StoreError::Service { status: 503 }
        );
        store.fail_with(None);
        assert!(cache.get(&name("a")).await.is_ok());
        assert_eq!(store.gets(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_least_recently_used() {
        let (store, cache) = setup();
        cache.get(&name("a")).await.unwrap();
        cache.get(&name("b")).await.unwrap();
        cache.get(&name("a")).await.unwrap();
        cache.get(&name("c")).await.unwrap(); // evicts b
        assert_eq!(cache.len(), 2);
        cache.get(&name("a")).await.unwrap();
        assert_eq!(store.gets(), 3);
        cache.get(&name("b")).await.unwrap();
        assert_eq!(store.gets(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let (store, cache) = setup();
        store.set_delay(Duration::from_millis(100));
        let readers: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&name("a")).await })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.unwrap().unwrap().value.as_bytes(), b"one");
        }
        assert_eq!(store.gets(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_fetch_still_fills_the_cache() {
        let (store, cache) = setup();
        store.set_delay(Duration::from_secs(5));
        let gave_up = tokio::time::timeout(Duration::from_secs(1), cache.get(&name("a"))).await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_secs(5)).await;
        store.set_delay(Duration::ZERO);
        assert!(cache.get(&name("a")).await.is_ok());
        assert_eq!(store.gets(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn listing_is_cached_for_list_ttl() {
        let (store, cache) = setup();
        assert_eq!(cache.list().await.unwrap().len(), 3);
        store.put("d", "four");
        assert_eq!(cache.list().await.unwrap().len(), 3);
        assert_eq!(store.lists(), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.list().await.unwrap().len(), 4);
        assert_eq!(store.lists(), 2);
    }
}
