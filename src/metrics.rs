//! Metrics and health: every metric kvfs exports is named and described in `Metrics::new`, and
//! recorded through the small functions below, from the layer that sees the event once (the
//! FUSE adapter's error mapping, the cache, the transport's budget wrapper, the refresher).
//!
//! Recording is always on and costs an atomic increment; the HTTP server that exposes it
//! (`serve`) runs only with `--metrics-addr`. It answers `/metrics` (Prometheus text format),
//! `/healthz` (the process runs and the mount answers a statfs) and `/readyz` (Key Vault
//! answered recently, see `Health::ready`).
//!
//! No metric ever carries a secret value. Secret names appear only as the `secret` label of
//! the two per-secret counters, and only with `--metrics-per-secret`: a vault's names can be
//! many (cardinality) and can themselves be sensitive.

mod server;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use server::{MetricsError, ServerConfig, serve};

type Static<const N: usize> = [(&'static str, &'static str); N];
type Owned<const N: usize> = [(&'static str, String); N];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric, registered once. prometheus-client appends `_total` to counter names and
/// the unit to the names registered with one.
struct Metrics {
    registry: Registry,
    /// Every family's name as exposed, without the `_total` of counters.
    names: Vec<String>,
    fuse_requests: Family<Static<1>, Counter>,
    fuse_errors: Family<Static<2>, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    cache_stale_serves: Counter,
    secret_reads: Family<Owned<1>, Counter>,
    vault_requests: Family<Owned<2>, Counter>,
    vault_duration: HistogramFamily<Static<1>>,
    secret_fetches: Family<Owned<1>, Counter>,
    identity_requests: Family<Owned<1>, Counter>,
    budget_waits: Family<Static<1>, Counter>,
    budget_wait_duration: Histogram,
    token_checks: Family<Static<1>, Counter>,
    token_rejections: Counter,
    refresh_runs: Family<Static<1>, Counter>,
    refresh_last_success: Gauge<f64, AtomicU64>,
    refresh_lag: Gauge<f64, AtomicU64>,
    vault_last_answer: Gauge<f64, AtomicU64>,
    mounted: Gauge,
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~20 s: a cached token's GET takes a few ms, a throttled or retried one seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let mut names = Vec::new();
        let m = Metrics {
            fuse_requests: Family::default(),
            fuse_errors: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            cache_stale_serves: Counter::default(),
            secret_reads: Family::default(),
            vault_requests: Family::default(),
            vault_duration: Family::new_with_constructor(latency_histogram),
            secret_fetches: Family::default(),
            identity_requests: Family::default(),
            budget_waits: Family::default(),
            budget_wait_duration: latency_histogram(),
            token_checks: Family::default(),
            token_rejections: Counter::default(),
            refresh_runs: Family::default(),
            refresh_last_success: Gauge::default(),
            refresh_lag: Gauge::default(),
            vault_last_answer: Gauge::default(),
            mounted: Gauge::default(),
            registry: Registry::default(),
            names: Vec::new(),
        };
        register(
            &mut r,
            &mut names,
            "kvfs_fuse_requests",
            "FUSE requests received from the kernel, by operation (op)",
            m.fuse_requests.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_fuse_errors",
            "FUSE requests answered with an error, by operation (op) and errno",
            m.fuse_errors.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_cache_hits",
            "Secret lookups answered from memory (fresh, stale within --max-stale, or a remembered absence or refusal)",
            m.cache_hits.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_cache_misses",
            "Secret lookups that had to ask Key Vault (concurrent misses of one secret share one fetch)",
            m.cache_misses.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_cache_evictions",
            "Secret values evicted to stay within --cache-capacity and --cache-max-bytes",
            m.cache_evictions.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_cache_stale_serves",
            "Reads answered with a cached value past its TTL because Key Vault failed or was slow",
            m.cache_stale_serves.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_secret_reads",
            "Lookups of one secret in the cache, by secret name (only with --metrics-per-secret)",
            m.secret_reads.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_keyvault_requests",
            "HTTP requests sent to Key Vault (each list page counts), by operation and status (HTTP code, or none when no answer came)",
            m.vault_requests.clone(),
        );
        register_with_unit(
            &mut r,
            &mut names,
            "kvfs_keyvault_request_duration",
            "Time from sending a Key Vault request to its answer (or failure), budget wait excluded, by operation",
            prometheus_client::registry::Unit::Seconds,
            m.vault_duration.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_secret_fetches",
            "GET requests sent to Key Vault for one secret, by secret name (only with --metrics-per-secret)",
            m.secret_fetches.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_identity_requests",
            "Token requests sent to the identity endpoint (IMDS or Entra ID), by status (HTTP code, or none)",
            m.identity_requests.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_budget_waits",
            "Key Vault requests that had to wait for the request budget (--max-request-rate), by result (admitted, exhausted)",
            m.budget_waits.clone(),
        );
        register_with_unit(
            &mut r,
            &mut names,
            "kvfs_budget_wait_duration",
            "Time Key Vault requests waited for the request budget, when they waited",
            prometheus_client::registry::Unit::Seconds,
            m.budget_wait_duration.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_token_checks",
            "Background token checks (once a minute; the token is renewed within 5 minutes of expiry), by result (ok, failed, timeout)",
            m.token_checks.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_token_rejections",
            "Tokens Key Vault rejected (401) after which the credential was renewed and the request sent again",
            m.token_rejections.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_refresh_runs",
            "Background refresh ticks that revalidated secrets in use, by result (ok, failed)",
            m.refresh_runs.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_refresh_last_success_timestamp_seconds",
            "Unix time of the last refresh tick that succeeded (or found nothing in use)",
            m.refresh_last_success.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_refresh_lag_seconds",
            "Seconds since the last refresh tick that succeeded (or found nothing in use)",
            m.refresh_lag.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_keyvault_last_answer_timestamp_seconds",
            "Unix time of Key Vault's last answer that was not a failure (not 429, not 5xx)",
            m.vault_last_answer.clone(),
        );
        register(
            &mut r,
            &mut names,
            "kvfs_mounted",
            "1 while the filesystem is mounted, 0 otherwise",
            m.mounted.clone(),
        );
        Metrics {
            registry: r,
            names,
            ..m
        }
    }
}

/// Registers `metric` as `name` and notes the name as exposed (counters get `_total`).
fn register(
    r: &mut Registry,
    names: &mut Vec<String>,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    names.push(name.to_owned());
    r.register(name, help, metric);
}

/// As `register`, with the unit appended to the name.
fn register_with_unit(
    r: &mut Registry,
    names: &mut Vec<String>,
    name: &str,
    help: &str,
    unit: prometheus_client::registry::Unit,
    metric: impl prometheus_client::registry::Metric,
) {
    names.push(format!("{name}_{}", unit.as_str()));
    r.register_with_unit(name, help, unit, metric);
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
static PER_SECRET: AtomicBool = AtomicBool::new(false);
static HEALTH: Health = Health {
    mounted: AtomicBool::new(false),
    last_ok: AtomicI64::new(NEVER),
    last_failure: AtomicI64::new(NEVER),
};
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

const NEVER: i64 = i64::MIN;

/// What `/readyz` and `/healthz` decide from, in milliseconds since the process started.
struct Health {
    mounted: AtomicBool,
    /// Key Vault's last answer that shows it serves (anything but 429 and 5xx).
    last_ok: AtomicI64,
    /// The last request that got no answer, 429 or 5xx.
    last_failure: AtomicI64,
}

impl Health {
    /// Ready unless Key Vault's last request failed and none succeeded within `window`. A
    /// mount nobody reads sends no requests: it stays ready, as nothing says the vault is gone.
    fn ready(&self, now_ms: i64, window: Duration) -> bool {
        let ok = self.last_ok.load(Ordering::Relaxed);
        let failure = self.last_failure.load(Ordering::Relaxed);
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        failure < ok || (ok != NEVER && now_ms.saturating_sub(ok) < window)
    }
}

fn now_ms() -> i64 {
    i64::try_from(START.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Starts the clocks health is measured by; called once at startup.
pub fn init(per_secret: bool) {
    PER_SECRET.store(per_secret, Ordering::Relaxed);
    LazyLock::force(&START);
    LazyLock::force(&METRICS);
    METRICS.refresh_last_success.set(unix_now());
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let m = &*METRICS;
    let last = m.refresh_last_success.get();
    m.refresh_lag.set((unix_now() - last).max(0.0));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

/// Every metric family's name as exposed (counters without their `_total`).
pub fn names() -> &'static [String] {
    &METRICS.names
}

/// A FUSE request of type `op` arrived.
pub fn fuse_request(op: &'static str) {
    METRICS.fuse_requests.get_or_create(&[("op", op)]).inc();
}

/// A FUSE request of type `op` is answered with `errno`.
pub fn fuse_error(op: &'static str, errno: i32) {
    METRICS
        .fuse_errors
        .get_or_create(&[("op", op), ("errno", errno_name(errno))])
        .inc();
}

pub fn cache_hit() {
    METRICS.cache_hits.inc();
}

pub fn cache_miss() {
    METRICS.cache_misses.inc();
}

pub fn cache_eviction() {
    METRICS.cache_evictions.inc();
}

pub fn stale_serve() {
    METRICS.cache_stale_serves.inc();
}

/// A lookup of secret `name` in the cache (counted per name only with --metrics-per-secret).
pub fn secret_read(name: &str) {
    if PER_SECRET.load(Ordering::Relaxed) {
        METRICS
            .secret_reads
            .get_or_create(&[("secret", name.to_ascii_lowercase())])
            .inc();
    }
}

/// What a Key Vault request asks for, from its path: the budget wrapper sees every HTTP
/// request (each page of a listing, each retry) but not which SDK call sent it.
pub fn operation(path: &str) -> (&'static str, Option<&str>) {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("secrets"), None | Some(""), None, None) => ("list", None),
        (Some("secrets"), Some(name), None | Some(""), None) if !name.is_empty() => {
            ("get", Some(name))
        }
        (Some("secrets"), Some(name), Some("versions"), None) if !name.is_empty() => {
            ("list_versions", None)
        }
        (Some("secrets"), Some(name), Some(_), None | Some("")) if !name.is_empty() => {
            ("get_version", Some(name))
        }
        _ => ("other", None),
    }
}

/// A request to Key Vault at `path` ended with `status` (`None`: no answer) after `elapsed`.
pub fn vault_request(path: &str, status: Option<u16>, elapsed: Duration) {
    let (op, name) = operation(path);
    let m = &*METRICS;
    m.vault_requests
        .get_or_create(&[
            ("operation", op.to_owned()),
            ("status", status_label(status)),
        ])
        .inc();
    m.vault_duration
        .get_or_create(&[("operation", op)])
        .observe(elapsed.as_secs_f64());
    if let Some(name) = name
        && PER_SECRET.load(Ordering::Relaxed)
    {
        m.secret_fetches
            .get_or_create(&[("secret", name.to_ascii_lowercase())])
            .inc();
    }
    let failed = match status {
        None => true,
        Some(code) => code == 429 || code >= 500,
    };
    let now = now_ms();
    if failed {
        HEALTH.last_failure.fetch_max(now, Ordering::Relaxed);
    } else {
        HEALTH.last_ok.fetch_max(now, Ordering::Relaxed);
        m.vault_last_answer.set(unix_now());
    }
}

/// A token request to the identity endpoint ended with `status` (`None`: no answer).
pub fn identity_request(status: Option<u16>) {
    METRICS
        .identity_requests
        .get_or_create(&[("status", status_label(status))])
        .inc();
}

/// A Key Vault request waited `waited` for the request budget, and was admitted or not.
pub fn budget_wait(waited: Duration, admitted: bool) {
    let result = if admitted { "admitted" } else { "exhausted" };
    METRICS
        .budget_waits
        .get_or_create(&[("result", result)])
        .inc();
    METRICS.budget_wait_duration.observe(waited.as_secs_f64());
}

/// A background token check ended: "ok", "failed" or "timeout".
pub fn token_check(result: &'static str) {
    METRICS
        .token_checks
        .get_or_create(&[("result", result)])
        .inc();
}

/// Key Vault rejected the token; the credential was renewed.
pub fn token_renewed_after_rejection() {
    METRICS.token_rejections.inc();
}

/// A refresh tick ended; a tick with nothing in use counts as a success.
pub fn refresh_run(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    METRICS
        .refresh_runs
        .get_or_create(&[("result", result)])
        .inc();
    if ok {
        METRICS.refresh_last_success.set(unix_now());
    }
}

pub fn set_mounted(mounted: bool) {
    HEALTH.mounted.store(mounted, Ordering::Relaxed);
    METRICS.mounted.set(i64::from(mounted));
}

fn is_mounted() -> bool {
    HEALTH.mounted.load(Ordering::Relaxed)
}

fn is_ready(window: Duration) -> bool {
    HEALTH.ready(now_ms(), window)
}

fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "none".to_owned(), |s| s.to_string())
}

/// The symbolic name of the errnos the filesystem answers; others by number.
fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EROFS => "EROFS",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EBADF => "EBADF",
        libc::EINVAL => "EINVAL",
        libc::EAGAIN => "EAGAIN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::ESTALE => "ESTALE",
        libc::ENOMEM => "ENOMEM",
        libc::ENOTCONN => "ENOTCONN",
        libc::EFBIG => "EFBIG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSUP => "ENOTSUP",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_path() {
        let cases = [
            ("/secrets", ("list", None)),
            ("/secrets/", ("list", None)),
            ("/secrets/db-password/", ("get", Some("db-password"))),
            ("/secrets/db-password", ("get", Some("db-password"))),
            ("/secrets/db/versions", ("list_versions", None)),
            (
                "/secrets/db/0123456789abcdef0123456789abcdef",
                ("get_version", Some("db")),
            ),
            ("/keys/k", ("other", None)),
            ("/", ("other", None)),
        ];
        for (path, want) in cases {
            assert_eq!(operation(path), want, "{path}");
        }
    }

    #[test]
    fn readiness_follows_the_last_answers() {
        let h = |ok, failure| Health {
            mounted: AtomicBool::new(true),
            last_ok: AtomicI64::new(ok),
            last_failure: AtomicI64::new(failure),
        };
        let w = Duration::from_secs(10);
        assert!(!h(NEVER, NEVER).ready(0, w), "never answered");
        assert!(h(1_000, NEVER).ready(1_000_000, w), "idle after an answer");
        assert!(
            h(1_000, 5_000).ready(10_999, w),
            "failing, within the window"
        );
        assert!(!h(1_000, 5_000).ready(11_000, w), "failing past the window");
        assert!(
            h(6_000, 5_000).ready(100_000, w),
            "answered after the failure"
        );
        assert!(!h(NEVER, 5_000).ready(6_000, w), "never answered, failing");
    }

    /// The dashboard and the alert rules name only metrics that exist.
    #[test]
    fn deploy_files_name_existing_metrics() {
        let names = names();
        for (file, content) in [
            (
                "grafana-dashboard.json",
                include_str!("../deploy/monitoring/grafana-dashboard.json"),
            ),
            (
                "alerts.yaml",
                include_str!("../deploy/monitoring/alerts.yaml"),
            ),
        ] {
            let mut named = 0;
            for token in content.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !token.starts_with("kvfs_") {
                    continue;
                }
                let base = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| token.strip_suffix(s))
                    .unwrap_or(token);
                assert!(
                    names.iter().any(|n| n == base),
                    "{file} names {token}, which kvfs does not export"
                );
                named += 1;
            }
            assert!(named >= 7, "{file} names only {named} metrics");
        }
    }

    #[test]
    fn every_family_renders_with_its_help() {
        init(false);
        fuse_request("read");
        fuse_error("lookup", libc::ENOENT);
        vault_request("/secrets/x/", Some(200), Duration::from_millis(3));
        let text = render();
        for needle in [
            "# HELP kvfs_fuse_requests",
            "kvfs_fuse_requests_total{op=\"read\"}",
            "kvfs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}",
            "kvfs_keyvault_requests_total{operation=\"get\",status=\"200\"}",
            "kvfs_keyvault_request_duration_seconds_bucket{le=\"0.005\",operation=\"get\"} ",
            "kvfs_refresh_lag_seconds",
            "kvfs_mounted",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(
            !text.contains("secret=\"x\""),
            "no per-secret label unless asked"
        );
    }
}
