//! The request budget: a vault-wide token bucket in front of every Key Vault request kvfs
//! sends, whoever causes it (a reader's miss, a listing page, a refresh, a retry).
//!
//! Key Vault allows 4,000 requests per 10 s per vault, shared by every node that reads it; a
//! node must stay within its share whatever its readers do. Requests held back wait in arrival
//! order (a fair queue), each at most `max_wait` (the request timeout): past that it fails
//! with `BudgetExhausted` rather than being sent after its reader gave up. Identity endpoints
//! (IMDS, Entra ID) have their own limits and are not counted.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A request waited longer than the request timeout for its turn in the budget.
#[derive(Debug, thiserror::Error)]
#[error("kvfs's request budget (--max-request-rate) held this request back for more than {0:?}")]
pub struct BudgetExhausted(pub Duration);

pub struct RequestBudget {
    limiter: DefaultDirectRateLimiter,
    /// Held while waiting for a token: tokio's mutex queues waiters in arrival order.
    queue: tokio::sync::Mutex<()>,
    /// Only requests to this origin (the vault's scheme, host and port) are counted: an
    /// identity endpoint on the same host (an emulator) is not the vault.
    vault: url::Origin,
    max_wait: Duration,
    rate: NonZeroU32,
    burst: NonZeroU32,
}

impl RequestBudget {
    pub fn new(vault: &url::Url, rate: NonZeroU32, burst: NonZeroU32, max_wait: Duration) -> Self {
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            queue: tokio::sync::Mutex::new(()),
            vault: vault.origin(),
            max_wait,
            rate,
            burst,
        }
    }

    /// Waits for a token, in arrival order, at most `max_wait`.
    pub async fn admit(&self) -> Result<(), BudgetExhausted> {
        if self.limiter.check().is_ok() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let waited = tokio::time::timeout(self.max_wait, async {
            let _turn = self.queue.lock().await;
            self.limiter.until_ready().await;
        })
        .await;
        crate::metrics::budget_wait(started.elapsed(), waited.is_ok());
        if let Some(suppressed) = crate::log_limit::allow("request budget") {
            tracing::warn!(
                rate = self.rate.get(),
                burst = self.burst.get(),
                waited = ?started.elapsed(),
                suppressed,
                "the request budget (--max-request-rate, --max-request-burst) is what slows readers now"
            );
        }
        waited.map_err(|_| BudgetExhausted(self.max_wait))
    }

    fn counts(&self, request: &Request) -> bool {
        request.url().origin() == self.vault
    }
}

/// An `HttpClient` that takes a token from the budget before each vault request.
#[derive(Debug)]
pub struct Budgeted {
    pub inner: Arc<dyn HttpClient>,
    pub budget: Arc<RequestBudget>,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("vault", &self.vault.ascii_serialization())
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpClient for Budgeted {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let vault = self.budget.counts(request);
        if vault {
            self.budget
                .admit()
                .await
                .map_err(|e| azure_core::Error::new(ErrorKind::Other, e))?;
        }
        // Every HTTP request passes here once (each list page, each retry, each challenge):
        // the one place that sees them all with their status.
        let sent = std::time::Instant::now();
        let result = self.inner.execute_request(request).await;
        let status = result.as_ref().ok().map(|r| u16::from(r.status()));
        if vault {
            crate::metrics::vault_request(request.url().path(), status, sent.elapsed());
        } else {
            crate::metrics::identity_request(status);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(rate: u32, burst: u32, max_wait: Duration) -> RequestBudget {
        RequestBudget::new(
            &url::Url::parse("https://v.vault.azure.net").unwrap(),
            NonZeroU32::new(rate).unwrap(),
            NonZeroU32::new(burst).unwrap(),
            max_wait,
        )
    }

    #[tokio::test]
    async fn a_burst_passes_then_the_rate_holds() {
        let b = budget(20, 5, Duration::from_secs(5));
        let started = std::time::Instant::now();
        for _ in 0..5 {
            b.admit().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "the burst is free"
        );
        for _ in 0..4 {
            b.admit().await.unwrap();
        }
        // 4 more at 20/s take about 200 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
    }

    #[tokio::test]
    async fn a_request_waits_at_most_max_wait() {
        let b = budget(1, 1, Duration::from_millis(100));
        b.admit().await.unwrap();
        let err = b.admit().await.unwrap_err();
        assert_eq!(err.0, Duration::from_millis(100));
    }

    #[test]
    fn only_the_vault_origin_counts() {
        let b = budget(1, 1, Duration::from_secs(1));
        let vault = Request::new(
            azure_core::http::Url::parse("https://V.vault.azure.net/secrets/x").unwrap(),
            azure_core::http::Method::Get,
        );
        let imds = Request::new(
            azure_core::http::Url::parse("http://169.254.169.254/metadata/identity/oauth2/token")
                .unwrap(),
            azure_core::http::Method::Get,
        );
        let other_port = Request::new(
            azure_core::http::Url::parse("https://v.vault.azure.net:8443/token").unwrap(),
            azure_core::http::Method::Post,
        );
        assert!(b.counts(&vault));
        assert!(!b.counts(&imds));
        assert!(!b.counts(&other_port));
    }
}
