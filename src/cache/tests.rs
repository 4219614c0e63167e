//! Unit tests of `cache`: plain Results over an in-memory store, no mount.
use super::*;
use crate::store::MemoryStore;

fn config() -> CacheConfig {
    CacheConfig {
        capacity: NonZeroUsize::new(2).unwrap(),
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(30),
        list_ttl: Duration::from_secs(60),
        max_stale: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(10),
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
async fn absent_names_are_answered_by_the_listing() {
    let (store, cache) = setup();
    for i in 0..1000 {
        assert_eq!(
            cache.get(&name(&format!("absent-{i}"))).await.unwrap_err(),
            StoreError::NotFound
        );
    }
    assert_eq!((store.gets(), store.lists()), (0, 1), "one listing, no GET");
    // A new secret is found within the negative TTL: one re-list for all absent names.
    store.put("zz", "new");
    assert_eq!(
        cache.get(&name("zz")).await.unwrap_err(),
        StoreError::NotFound
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    for i in 0..100 {
        let _ = cache.get(&name(&format!("absent-{i}"))).await;
    }
    assert_eq!(store.lists(), 2);
    assert_eq!(
        cache.get(&name("zz")).await.unwrap().value.as_bytes(),
        b"new"
    );
    assert_eq!((store.gets(), store.lists()), (1, 2));
    // The same for versions, and a listed name costs no listing of its own.
    assert_eq!(
        cache.list_versions(&name("absent-1")).await.unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(store.lists(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_name_deleted_since_the_listing_is_remembered_absent() {
    let (store, cache) = setup();
    cache.list().await.unwrap();
    store.remove("a");
    for _ in 0..10 {
        assert_eq!(
            cache.get(&name("a")).await.unwrap_err(),
            StoreError::NotFound
        );
    }
    assert_eq!(store.gets(), 1, "one 404, then remembered for negative_ttl");
}

#[tokio::test(start_paused = true)]
async fn a_listing_refusal_falls_back_to_gets_and_is_not_retried_per_name() {
    let (store, cache) = setup();
    store.fail_times(StoreError::Forbidden(Forbidden::Rbac), 1);
    assert_eq!(
        cache.get(&name("a")).await.unwrap().value.as_bytes(),
        b"one"
    );
    assert!(cache.get(&name("b")).await.is_ok());
    assert_eq!((store.lists(), store.gets()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn transient_errors_without_a_copy_are_not_cached() {
    let (store, cache) = setup();
    cache.list().await.unwrap();
    store.fail_with(Some(StoreError::Service { status: 503 }));
    assert_eq!(
        cache.get(&name("a")).await.unwrap_err(),
        StoreError::Service { status: 503 }
    );
    store.fail_with(None);
    // Within the outage window the miss fails at once, without a request.
    assert_eq!(
        cache.get(&name("a")).await.unwrap_err(),
        StoreError::Service { status: 503 }
    );
    assert_eq!(store.gets(), 1);
    tokio::time::advance(OUTAGE_BACKOFF).await;
    assert!(cache.get(&name("a")).await.is_ok());
    assert_eq!(store.gets(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_slow_secret_opens_no_outage_window_while_others_are_answered() {
    let (store, cache) = setup();
    cache.list().await.unwrap();
    let started = Instant::now();
    // A timeout of a request sent before Key Vault answered another is no evidence.
    cache.inner.lock().last_answer = Some(started + Duration::from_millis(1));
    cache
        .inner
        .failed(&StoreError::Timeout(Duration::from_secs(10)), started);
    assert!(!cache.inner.lock().in_outage(Instant::now()));
    assert!(cache.get(&name("a")).await.is_ok());
    // Key Vault itself saying it fails is.
    cache
        .inner
        .failed(&StoreError::Service { status: 503 }, started);
    assert!(cache.inner.lock().in_outage(Instant::now()));
    assert_eq!(store.gets(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_fetch_costs_one_error_not_the_secret() {
    let (store, cache) = setup();
    store.panic_next();
    let err = cache.list().await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "a panicking listing too");
    assert_eq!(cache.list().await.unwrap().len(), 3);
    store.panic_next();
    let err = cache.get(&name("a")).await.unwrap_err();
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        cache.get(&name("a")).await.unwrap().value.as_bytes(),
        b"one",
        "the single-flight slot was freed"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_as_soon_as_the_ttl_passes_without_confirmation() {
    let (_store, cache) = setup();
    cache.get(&name("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(299)).await;
    assert!(cache.stale_since(&name("a")).is_none());
    tokio::time::advance(Duration::from_secs(2)).await;
    let since = cache.stale_since(&name("a")).expect("past its TTL");
    let ago = SystemTime::now().duration_since(since).unwrap();
    assert!(ago <= Duration::from_secs(2), "{ago:?}");
}

#[tokio::test(start_paused = true)]
async fn values_are_bounded_in_bytes() {
    let store = Arc::new(MemoryStore::new());
    let big = "x".repeat(20_000);
    for i in 0..20 {
        store.put(&format!("s{i}"), &big);
    }
    let cache = SecretCache::new(
        store.clone(),
        CacheConfig {
            capacity: NonZeroUsize::new(1000).unwrap(),
            max_bytes: 100_000,
            ..config()
        },
    );
    for i in 0..20 {
        cache.get(&name(&format!("s{i}"))).await.unwrap();
    }
    assert!(cache.bytes() <= 100_000, "{}", cache.bytes());
    assert_eq!(cache.len(), 4, "4 values of 20 KB fit in 100 KB");
}

#[tokio::test(start_paused = true)]
async fn revocation_drops_every_version_from_memory() {
    let (store, cache) = setup();
    let v1 = cache.get(&name("a")).await.unwrap();
    store.put("a", "uno");
    tokio::time::advance(Duration::from_secs(301)).await;
    cache.get(&name("a")).await.unwrap();
    let old = v1.properties.version.clone().unwrap();
    cache.get_version(&name("a"), &old).await.unwrap();
    drop(v1);
    store.remove("a");
    let changes = cache
        .refresh(&[cache.peek(&name("a")).unwrap().properties.clone()])
        .await;
    let changes = changes.unwrap().changes;
    assert_eq!(changes, [Change::Gone(name("a"), Revoked::Deleted)]);
    assert_eq!(cache.len(), 0, "no copy of any version left");
    let gets = store.gets();
    assert_eq!(
        cache.get_version(&name("a"), &old).await.unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(store.gets(), gets, "absent by the listing: no request");
}

#[tokio::test(start_paused = true)]
async fn a_disabled_older_version_is_reported() {
    let (store, cache) = setup();
    let v1 = cache.get(&name("a")).await.unwrap();
    let old = v1.properties.version.clone().unwrap();
    store.put("a", "uno");
    store.set_version_enabled("a", &old, false);
    let refreshed = cache
        .revalidate_versions(&[(name("a"), vec![old.clone()])])
        .await;
    assert!(refreshed.failure.is_none());
    assert_eq!(
        refreshed.changes,
        [Change::VersionGone(
            name("a"),
            old,
            Revoked::Denied(Forbidden::SecretDisabled)
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn stale_copy_served_through_an_outage_until_max_stale() {
    let (store, cache) = setup();
    cache.get(&name("a")).await.unwrap();
    store.fail_with(Some(StoreError::Service { status: 503 }));
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(
        cache.get(&name("a")).await.unwrap().value.as_bytes(),
        b"one"
    );
    assert!(cache.stale_since(&name("a")).is_some());
    let gets = store.gets();
    // Within the outage backoff, no new request.
    assert_eq!(
        cache.get(&name("a")).await.unwrap().value.as_bytes(),
        b"one"
    );
    assert_eq!(store.gets(), gets);
    tokio::time::advance(Duration::from_secs(3300)).await;
    assert!(cache.get(&name("a")).await.is_err(), "past max_stale");
    store.fail_with(None);
    tokio::time::advance(OUTAGE_BACKOFF_MAX).await;
    assert!(cache.get(&name("a")).await.is_ok());
    assert!(cache.stale_since(&name("a")).is_none());
}

#[tokio::test(start_paused = true)]
async fn definitive_answers_are_not_masked() {
    let (store, cache) = setup();
    cache.get(&name("a")).await.unwrap();
    store.set_enabled("a", false);
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(matches!(
        cache.get(&name("a")).await.unwrap_err(),
        StoreError::Forbidden(_)
    ));
    cache.get(&name("b")).await.unwrap();
    store.remove("b");
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(
        cache.get(&name("b")).await.unwrap_err(),
        StoreError::NotFound
    );
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

#[tokio::test(start_paused = true)]
async fn versions_are_cached_until_evicted() {
    let (store, cache) = setup();
    let v1 = cache
        .get(&name("a"))
        .await
        .unwrap()
        .properties
        .version
        .clone()
        .unwrap();
    store.put("a", "uno");
    let versions = cache.list_versions(&name("a")).await.unwrap();
    assert_eq!(versions.len(), 2);
    let v2 = versions
        .iter()
        .filter_map(|p| p.version.clone())
        .find(|v| *v != v1)
        .unwrap();
    let gets = store.gets();
    tokio::time::advance(Duration::from_secs(100_000)).await;
    let new = cache.get_version(&name("a"), &v2).await.unwrap();
    assert_eq!(new.value.as_bytes(), b"uno");
    cache.get_version(&name("a"), &v2).await.unwrap();
    assert_eq!(
        store.gets(),
        gets + 1,
        "fetched once, then kept however old"
    );
    // v1 is still the cached latest copy: served from it.
    assert_eq!(
        cache
            .get_version(&name("a"), &v1)
            .await
            .unwrap()
            .value
            .as_bytes(),
        b"one"
    );
    assert_eq!(store.gets(), gets + 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_gets_only_what_changed() {
    let (store, cache) = setup();
    let a = cache.get(&name("a")).await.unwrap().properties.clone();
    let b = cache.get(&name("b")).await.unwrap().properties.clone();
    // Fetched within a second of being written: a listing cannot tell a second change in
    // that second apart, so the first refresh confirms each with a GET; later ones do not.
    std::thread::sleep(SAME_SECOND_WINDOW + Duration::from_millis(100));
    let first = cache
        .refresh(&[a.clone(), b.clone()])
        .await
        .unwrap()
        .changes;
    assert!(first.is_empty(), "{first:?}");
    let (gets, lists) = (store.gets(), store.lists());
    let again = cache
        .refresh(&[a.clone(), b.clone()])
        .await
        .unwrap()
        .changes;
    assert!(again.is_empty());
    assert_eq!(
        (store.gets(), store.lists()),
        (gets, lists + 1),
        "one list, no GET"
    );
    store.put("a", "uno");
    let changed = cache.refresh(&[a, b]).await.unwrap().changes;
    assert_eq!(changed, vec![Change::Updated(name("a"))]);
    assert_eq!(store.gets(), gets + 1);
    assert_eq!(
        cache.get(&name("a")).await.unwrap().value.as_bytes(),
        b"uno"
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_reports_gone_and_appeared() {
    let (store, cache) = setup();
    let a = cache.get(&name("a")).await.unwrap().properties.clone();
    let c = cache.get(&name("c")).await.unwrap().properties.clone();
    cache.refresh(&[a.clone(), c.clone()]).await.unwrap();
    store.remove("a");
    store.set_enabled("c", false);
    store.put("e", "new");
    let changes = cache.refresh(&[a, c]).await.unwrap().changes;
    let deleted = Change::Gone(name("a"), Revoked::Deleted);
    let disabled = Change::Gone(name("c"), Revoked::Denied(Forbidden::SecretDisabled));
    assert!(changes.contains(&deleted), "{changes:?}");
    assert!(changes.contains(&disabled), "{changes:?}");
    assert!(
        changes.contains(&Change::Appeared(name("e"))),
        "{changes:?}"
    );
    assert_eq!(
        cache
            .list()
            .await
            .unwrap()
            .iter()
            .filter(|p| p.enabled)
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn outage_marks_stale_then_drops_past_max_stale() {
    let (_store, cache) = setup();
    let a = cache.get(&name("a")).await.unwrap().properties.clone();
    assert!(cache.outage(std::slice::from_ref(&a)).is_empty());
    assert!(cache.stale_since(&name("a")).is_none(), "still within ttl");
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(cache.outage(std::slice::from_ref(&a)).is_empty());
    assert!(cache.stale_since(&name("a")).is_some());
    tokio::time::advance(Duration::from_secs(3300)).await;
    assert_eq!(cache.outage(&[a]), vec![Change::Expired(name("a"))]);
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_serving_stale() {
    let (store, cache) = setup();
    let a = cache.get(&name("a")).await.unwrap().properties.clone();
    store.fail_with(Some(StoreError::Throttled { retry_after: None }));
    assert!(cache.refresh(&[a]).await.is_err());
    tokio::time::advance(Duration::from_secs(301)).await;
    let gets = store.gets();
    assert_eq!(
        cache.get(&name("a")).await.unwrap().value.as_bytes(),
        b"one"
    );
    assert!(store.gets() <= gets + 1);
}

#[tokio::test(start_paused = true)]
async fn the_latest_version_is_served_from_the_latest_entry() {
    let (store, cache) = setup();
    let a = cache.get(&name("a")).await.unwrap();
    let v = a.properties.version.clone().unwrap();
    let same = cache
        .get_version(&name("a"), &v.to_uppercase())
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&a, &same), "the very copy, no request");
    assert_eq!(store.gets(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_refresh_keeps_the_served_copy() {
    let (_store, cache) = setup();
    let a = cache.get(&name("a")).await.unwrap();
    // Within the same-second window: the refresh confirms with a GET of the same version.
    let changes = cache
        .refresh(std::slice::from_ref(&a.properties))
        .await
        .unwrap()
        .changes;
    assert!(changes.is_empty());
    assert!(
        Arc::ptr_eq(&a, &cache.peek(&name("a")).unwrap()),
        "weak holders stay valid"
    );
}

#[tokio::test(start_paused = true)]
async fn a_mass_rotation_is_fetched_concurrently_and_reported_whole() {
    let store = Arc::new(MemoryStore::new());
    let names: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
    for n in &names {
        store.put(n, "old");
    }
    let cache = SecretCache::new(
        store.clone(),
        CacheConfig {
            capacity: NonZeroUsize::new(100).unwrap(),
            ..config()
        },
    );
    let mut held = Vec::new();
    for n in &names {
        held.push(cache.get(&name(n)).await.unwrap().properties.clone());
    }
    for n in &names {
        store.put(n, "new");
    }
    // Each GET takes 1 s: 30 in series would take 30 s.
    store.set_delay(Duration::from_secs(1));
    let started = Instant::now();
    let refreshed = cache.refresh(&held).await.unwrap();
    assert!(refreshed.failure.is_none());
    assert_eq!(refreshed.changes.len(), 30);
    assert!(
        started.elapsed() <= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_revalidation_serves_the_expired_copy_after_half_the_timeout() {
    let (store, cache) = setup();
    cache.get(&name("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(301)).await;
    store.set_delay(Duration::from_secs(3600));
    let started = Instant::now();
    let copy = cache.get(&name("a")).await.unwrap();
    assert_eq!(copy.value.as_bytes(), b"one");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "half the request timeout"
    );
    assert!(cache.stale_since(&name("a")).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_never_ends_is_bounded_and_opens_the_window() {
    let (store, cache) = setup();
    cache.list().await.unwrap();
    store.set_delay(Duration::from_secs(3600));
    let started = Instant::now();
    let err = cache.get(&name("a")).await.unwrap_err();
    assert_eq!(err, StoreError::Timeout(Duration::from_secs(10)));
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    // Nothing answered since: the vault (or its identity endpoint) is failing.
    let again = Instant::now();
    assert!(cache.get(&name("b")).await.is_err());
    assert_eq!(
        again.elapsed(),
        Duration::ZERO,
        "fails fast in the outage window"
    );
    assert_eq!(store.gets(), 1);
}
