//! Log lines that a reader can cause, limited: the first line about a cause is written, the
//! repeats within the interval are only counted, and the next line written says how many were
//! left out. A reader looping on a failing name cannot grow the log without bound.
//!
//! Causes are keyed by a short string (operation and error, or operation and name); the map
//! is an LRU of bounded size, so distinct causes cannot grow memory either.

use std::num::NonZeroUsize;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

/// At most one line per cause per this long.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Causes remembered at once; a cause pushed out is logged again at its next occurrence.
const CAUSES: usize = 1024;

struct Seen {
    last: Instant,
    suppressed: u64,
}

pub struct LogLimit {
    interval: Duration,
    seen: Mutex<LruCache<String, Seen>>,
}

impl LogLimit {
    pub fn new(interval: Duration, causes: NonZeroUsize) -> Self {
        Self {
            interval,
            seen: Mutex::new(LruCache::new(causes)),
        }
    }

    /// Whether a line about `cause` may be written at `now`: `Some(n)` with the number of
    /// lines left out since the last one written, `None` to leave this one out.
    pub fn allow_at(&self, cause: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get_mut(cause) {
            Some(s) if now.duration_since(s.last) < self.interval => {
                s.suppressed += 1;
                None
            }
            Some(s) => {
                s.last = now;
                Some(std::mem::take(&mut s.suppressed))
            }
            None => {
                seen.put(
                    cause.to_owned(),
                    Seen {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// The process-wide limiter, for causes a reader can repeat.
pub fn allow(cause: &str) -> Option<u64> {
    static LIMIT: OnceLock<LogLimit> = OnceLock::new();
    LIMIT
        .get_or_init(|| {
            LogLimit::new(
                INTERVAL,
                NonZeroUsize::new(CAUSES).unwrap_or(NonZeroUsize::MIN),
            )
        })
        .allow_at(cause, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_passes_repeats_are_counted_then_reported() {
        let limit = LogLimit::new(Duration::from_secs(10), NonZeroUsize::new(2).unwrap());
        let t0 = Instant::now();
        assert_eq!(limit.allow_at("read: timeout", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(
                limit.allow_at("read: timeout", t0 + Duration::from_secs(i)),
                None
            );
        }
        assert_eq!(
            limit.allow_at("lookup: 503", t0),
            Some(0),
            "another cause passes"
        );
        assert_eq!(
            limit.allow_at("read: timeout", t0 + Duration::from_secs(10)),
            Some(5),
            "the next line says how many were left out"
        );
    }

    #[test]
    fn causes_are_bounded() {
        let limit = LogLimit::new(Duration::from_secs(10), NonZeroUsize::new(2).unwrap());
        let t0 = Instant::now();
        for i in 0..10_000 {
            limit.allow_at(&format!("cause {i}"), t0);
        }
        assert_eq!(limit.seen.lock().unwrap().len(), 2);
    }
}
