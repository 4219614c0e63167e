//! Retries of transient Key Vault failures, on kvfs's own schedule rather than the SDK's
//! (whose default waits up to 80 s and honours any Retry-After).
//!
//! Only transient errors are retried (429, 5xx, connection, timeout); an answer about the
//! secret (404, 403) or a TLS or credential failure returns at once. Delays grow exponentially
//! from `initial_delay` with jitter, a Retry-After is honoured up to `max_delay`, and nothing is
//! retried past `budget`: the last error is returned instead, so the caller can say what failed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Listing, SecretStore};
use crate::error::StoreError;
use crate::secret::{Secret, SecretName};

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt.
    pub budget: Duration,
}

impl RetryPolicy {
    /// The delay before retry `attempt` (0-based) after `err`: Retry-After when the service sent
    /// one, else exponential; capped at `max_delay`, with up to 25% jitter taken off.
    fn delay(&self, attempt: u32, err: &StoreError) -> Duration {
        let base = match err {
            StoreError::Throttled {
                retry_after: Some(after),
            } => *after,
            _ => self.initial_delay.saturating_mul(1 << attempt.min(16)),
        };
        let capped = base.min(self.max_delay);
        let jitter = capped.mul_f64(rand::random::<f64>() * 0.25);
        capped - jitter
    }
}

fn is_transient(err: &StoreError) -> bool {
    match err {
        StoreError::Throttled { .. }
        | StoreError::Service { .. }
        | StoreError::Connection(_)
        | StoreError::Timeout(_) => true,
        StoreError::NotFound
        | StoreError::Forbidden(_)
        | StoreError::Tls(_)
        | StoreError::Credential { .. }
        | StoreError::Other(_)
        // kvfs's own budget: retrying would only queue again.
        | StoreError::Budget(_) => false,
    }
}

pub struct RetryStore {
    inner: Arc<dyn SecretStore>,
    policy: RetryPolicy,
}

impl RetryStore {
    pub fn new(inner: Arc<dyn SecretStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send,
    {
        let deadline = Instant::now() + self.policy.budget;
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(err) if is_transient(&err) => {
                    let delay = self.policy.delay(attempt, &err);
                    if Instant::now() + delay > deadline {
                        return Err(err);
                    }
                    tracing::debug!(error = %err, ?delay, attempt, "transient Key Vault failure; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[async_trait]
impl SecretStore for RetryStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        self.retry(|| self.inner.list()).await
    }

    async fn get(&self, name: &SecretName) -> Result<Arc<Secret>, StoreError> {
        self.retry(|| self.inner.get(name)).await
    }

    async fn list_versions(&self, name: &SecretName) -> Result<Listing, StoreError> {
        self.retry(|| self.inner.list_versions(name)).await
    }

    async fn get_version(
        &self,
        name: &SecretName,
        version: &str,
    ) -> Result<Arc<Secret>, StoreError> {
        self.retry(|| self.inner.get_version(name, version)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            budget: Duration::from_secs(8),
        }
    }

    fn setup() -> (Arc<MemoryStore>, RetryStore) {
        let store = Arc::new(MemoryStore::new());
        store.put("a", "v");
        (store.clone(), RetryStore::new(store, policy()))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let (store, retry) = setup();
        store.fail_times(StoreError::Service { status: 503 }, 2);
        let name = SecretName::parse("a").unwrap();
        assert!(retry.get(&name).await.is_ok());
        assert_eq!(store.gets(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn definitive_answers_are_not_retried() {
        let (store, retry) = setup();
        let name = SecretName::parse("absent").unwrap();
        assert_eq!(retry.get(&name).await.unwrap_err(), StoreError::NotFound);
        store.fail_times(StoreError::Tls("bad cert".into()), 5);
        assert!(matches!(
            retry.get(&name).await.unwrap_err(),
            StoreError::Tls(_)
        ));
        assert_eq!(store.gets(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_retries_and_the_last_error_is_kept() {
        let (store, retry) = setup();
        store.fail_with(Some(StoreError::Connection("refused".into())));
        let started = Instant::now();
        let err = retry
            .get(&SecretName::parse("a").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::Connection("refused".into()));
        assert!(started.elapsed() <= Duration::from_secs(8));
        // 250 ms doubling (less jitter) fits 4 to 6 attempts in 8 s.
        assert!((4..=7).contains(&store.gets()), "{}", store.gets());
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = policy();
        let after = |s| StoreError::Throttled {
            retry_after: Some(Duration::from_secs(s)),
        };
        let d = p.delay(0, &after(2));
        assert!(
            d <= Duration::from_secs(2) && d >= Duration::from_millis(1500),
            "{d:?}"
        );
        assert!(p.delay(0, &after(3600)) <= Duration::from_secs(4));
        let grown = p.delay(3, &StoreError::Service { status: 500 });
        assert!(
            grown <= Duration::from_secs(2) && grown >= Duration::from_millis(1500),
            "{grown:?}"
        );
    }
}
