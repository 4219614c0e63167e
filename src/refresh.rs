//! Refresh ahead: secrets the kernel still holds are revalidated in the background before
//! they expire, so a cached secret's read never waits on Key Vault, and what changed is pushed
//! to the kernel as invalidations.
//!
//! One tick costs ceil(secrets / 25) list pages + one GET per changed secret, whatever the
//! number of readers. After a failed tick the next one comes sooner, backing off exponentially
//! (1, 2, 4 ... s up to the period) so that recovery is noticed without hammering Key Vault.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;

use crate::auth::{KEY_VAULT_SCOPE, RenewableCredential};
use crate::fs::SecretFs;

/// How often the token is asked for in the background. The credential answers from its cache
/// and renews the token only within 5 minutes of its expiry, so this costs a token request
/// about once per token lifetime, made here rather than by a reader.
const TOKEN_CHECK: Duration = Duration::from_secs(60);

/// The refresh period for a cache TTL: early enough that secrets in use never expire on the
/// read path, and a change is seen within one TTL.
pub fn period_for(ttl: Duration) -> Duration {
    ttl.mul_f64(0.8).max(Duration::from_millis(100))
}

/// Keeps the credential's token fresh, so that no read ever waits on the identity endpoint
/// (IMDS can take 100 s to fail) and an identity outage near expiry shows in the log first.
/// Each check asks the credential that is current then: after a rejected token replaced it,
/// the new one is kept warm.
pub async fn keep_token_warm(credential: Arc<RenewableCredential>, limit: Duration) {
    loop {
        tokio::time::sleep(TOKEN_CHECK).await;
        match tokio::time::timeout(limit, credential.get_token(&[KEY_VAULT_SCOPE], None)).await {
            Ok(Ok(_)) => crate::metrics::token_check("ok"),
            Ok(Err(e)) => {
                crate::metrics::token_check("failed");
                let err = crate::store::keyvault::classify(e);
                tracing::warn!(error = %err, "background token renewal failed; the current token is used while valid");
            }
            Err(_) => {
                crate::metrics::token_check("timeout");
                tracing::warn!(?limit, "background token renewal got no answer");
            }
        }
    }
}

/// Runs a background task for the mount's life (the refresher). A panic in it (a bug) is
/// logged and the task started again a second later, so that rotation and revocation never
/// stop silently. Returns when the task returns or is cancelled.
pub async fn supervise<F, Fut>(what: &'static str, start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()).await {
            Err(e) if e.is_panic() => {
                tracing::error!(task = what, "background task panicked; restarting it");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(()) | Err(_) => return,
        }
    }
}

pub async fn run(fs: Arc<SecretFs>, period: Duration) {
    let mut delay = period;
    let mut backoff = Duration::from_secs(1);
    loop {
        // A revocation a reader learned reaches the kernel now, not at the next tick.
        let woken = tokio::select! {
            () = tokio::time::sleep(delay) => false,
            () = fs.learned_something() => true,
        };
        apply(&fs, fs.take_learned()).await;
        if woken {
            continue;
        }
        let in_use = fs.in_use();
        if in_use.is_empty() {
            crate::metrics::refresh_run(true);
            delay = period;
            continue;
        }
        let failure = match fs.cache().refresh(&in_use).await {
            Ok(refreshed) => {
                let older = fs.older_in_use();
                let versions = fs.cache().revalidate_versions(&older).await;
                let mut changes = refreshed.changes;
                changes.extend(versions.changes);
                if !changes.is_empty() {
                    tracing::info!(
                        changed = changes.len(),
                        in_use = in_use.len(),
                        "refresh found changes"
                    );
                }
                apply(&fs, changes).await;
                refreshed.failure.or(versions.failure)
            }
            Err(err) => Some(err),
        };
        crate::metrics::refresh_run(failure.is_none());
        match failure {
            None => {
                delay = period;
                backoff = Duration::from_secs(1);
            }
            Some(err) => {
                if let Some(suppressed) = crate::log_limit::allow("refresh failed") {
                    tracing::warn!(error = %err, retry_in = ?backoff, suppressed, "refresh failed; cached values are served stale meanwhile");
                }
                apply(&fs, fs.cache().outage(&in_use)).await;
                delay = backoff.min(period);
                backoff = (backoff * 2).min(period);
            }
        }
    }
}

/// Invalidations write to the FUSE device and may wait on the kernel's directory lock, which a
/// lookup in progress holds: they run on the blocking pool, never on an async worker.
async fn apply(fs: &Arc<SecretFs>, changes: Vec<crate::cache::Change>) {
    if changes.is_empty() {
        return;
    }
    let fs = fs.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || fs.apply(&changes)).await {
        tracing::warn!(error = %e, "kernel invalidation task failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervise("test", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("a bug");
                }
            }
        })
        .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a clean end"
        );
    }
}
