//! Refresh ahead: secrets the kernel still holds are revalidated in the background before
//! they expire, so a cached secret's read never waits on Key Vault, and what changed is pushed
//! to the kernel as invalidations.
//!
//! One tick costs ceil(secrets / 25) list pages + one GET per changed secret, whatever the
//! number of readers. After a failed tick the next one comes sooner, backing off exponentially
//! (1, 2, 4 ... s up to the period) so that recovery is noticed without hammering Key Vault.

use std::sync::Arc;
use std::time::Duration;

use crate::fs::SecretFs;

/// The refresh period for a cache TTL: early enough that secrets in use never expire on the
/// read path, and a change is seen within one TTL.
pub fn period_for(ttl: Duration) -> Duration {
    ttl.mul_f64(0.8).max(Duration::from_millis(100))
}

pub async fn run(fs: Arc<SecretFs>, period: Duration) {
    let mut delay = period;
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::time::sleep(delay).await;
        let in_use = fs.in_use();
        if in_use.is_empty() {
            delay = period;
            continue;
        }
        match fs.cache().refresh(&in_use).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    tracing::info!(
                        changed = changes.len(),
                        in_use = in_use.len(),
                        "refresh found changes"
                    );
                }
                apply(&fs, changes).await;
                delay = period;
                backoff = Duration::from_secs(1);
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "refresh failed; cached values are served stale meanwhile");
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
