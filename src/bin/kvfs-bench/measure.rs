//! Timing loops and latency distributions.
//!
//! Every loop is bounded twice, by a count and by a time, and sees the stop flag each turn.
//! Each thread warms up untimed, then all start together; a row's throughput is all threads'
//! operations over the longest thread's wall time.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::harness::{Error, Result, check_stop};

/// How long and how often a row runs its operation.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Timed operations stop after this long...
    pub time: Duration,
    /// ...or after this many, all threads together, whichever comes first.
    pub max_ops: u64,
    /// Untimed operations per thread before the clock starts.
    pub warmup_ops: u64,
}

/// Latencies of one row on one filesystem, sorted, with the wall time they took.
#[derive(Clone, Debug)]
pub struct Dist {
    ns: Vec<u64>,
    wall: Duration,
}

impl Dist {
    /// From single measurements taken one after another (wall = their sum).
    pub fn from_samples(samples: Vec<Duration>) -> Dist {
        let wall = samples.iter().sum();
        let ns = samples.iter().map(|d| duration_ns(*d)).collect();
        Dist::new(ns, wall)
    }

    fn new(mut ns: Vec<u64>, wall: Duration) -> Dist {
        ns.sort_unstable();
        Dist { ns, wall }
    }

    /// Both runs as one: all latencies, and the sum of their wall times.
    pub fn merge(self, other: Dist) -> Dist {
        let mut ns = self.ns;
        ns.extend(other.ns);
        Dist::new(ns, self.wall + other.wall)
    }

    pub fn count(&self) -> usize {
        self.ns.len()
    }

    pub fn ops_per_s(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.ns.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) in microseconds, nearest rank.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        let last = self.ns.len() - 1;
        let rank = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
        self.ns.get(rank.min(last)).copied().unwrap_or_default() as f64 / 1000.0
    }

    pub fn p50_us(&self) -> f64 {
        self.quantile_us(0.5)
    }

    pub fn p99_us(&self) -> f64 {
        self.quantile_us(0.99)
    }

    /// (quantile, microseconds) pairs dense enough to draw a CDF, tails included.
    pub fn cdf_points(&self) -> Vec<(f64, f64)> {
        let mut qs: Vec<f64> = (0..=100).map(|i| f64::from(i) / 100.0).collect();
        qs.extend([0.995, 0.999, 0.9999]);
        qs.sort_by(f64::total_cmp);
        qs.dedup();
        qs.into_iter().map(|q| (q, self.quantile_us(q))).collect()
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `make_op(thread)` on `threads` threads: each thread's op is called with a counter,
/// first `warmup_ops` times untimed, then timed until the budget is spent.
pub fn run<M, F>(threads: usize, budget: Budget, make_op: M) -> Result<Dist>
where
    M: Fn(usize) -> F + Sync,
    F: FnMut(u64) -> Result<()>,
{
    let threads = threads.max(1);
    let per_thread = (budget.max_ops / threads as u64).max(1);
    let barrier = Barrier::new(threads);
    let results: Vec<Result<(Vec<u64>, Duration)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make_op = &make_op;
                let barrier = &barrier;
                scope.spawn(move || -> Result<(Vec<u64>, Duration)> {
                    let mut op = make_op(t);
                    let mut warm = Ok(());
                    for i in 0..budget.warmup_ops {
                        warm = op(i);
                        if warm.is_err() {
                            break;
                        }
                    }
                    // Every thread reaches the barrier, failed or not, or the others would hang.
                    barrier.wait();
                    warm?;
                    let mut ns = Vec::with_capacity(per_thread.min(1 << 22) as usize);
                    let start = Instant::now();
                    let deadline = start + budget.time;
                    let mut i = budget.warmup_ops;
                    while (ns.len() as u64) < per_thread {
                        check_stop()?;
                        let t0 = Instant::now();
                        op(i)?;
                        let t1 = Instant::now();
                        ns.push(duration_ns(t1 - t0));
                        i += 1;
                        if t1 >= deadline {
                            break;
                        }
                    }
                    Ok((ns, start.elapsed()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error("a timing thread panicked".into())))
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut wall = Duration::ZERO;
    for result in results {
        let (ns, elapsed) = result?;
        all.extend(ns);
        wall = wall.max(elapsed);
    }
    Ok(Dist::new(all, wall))
}

/// Nearest-rank quantile of signed values (overheads can be negative), in microseconds.
pub fn signed_quantile_us(sorted_ns: &[i64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let last = sorted_ns.len() - 1;
    let rank = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
    sorted_ns.get(rank.min(last)).copied().unwrap_or_default() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let d = Dist::from_samples((1..=100).map(Duration::from_micros).collect());
        assert_eq!(d.count(), 100);
        assert_eq!(d.quantile_us(0.0), 1.0);
        assert_eq!(d.p50_us(), 51.0);
        assert_eq!(d.p99_us(), 99.0);
        assert_eq!(d.quantile_us(1.0), 100.0);
        assert!((d.ops_per_s() - 100.0 / 0.00505).abs() < 1.0);
        assert_eq!(signed_quantile_us(&[-2000, 0, 3000], 0.5), 0.0);
    }

    #[test]
    fn run_stops_at_the_count() {
        let budget = Budget {
            time: Duration::from_secs(10),
            max_ops: 10,
            warmup_ops: 3,
        };
        let d = run(2, budget, |_| |_| Ok(())).unwrap();
        assert_eq!(d.count(), 10);
    }
}
