//! Cold reads: the first read of a secret kvfs has never fetched, beside the emulator's own
//! service time (a direct HTTPS GET on a warm connection, timed just before each kvfs read), and
//! a thundering herd: 1,000 threads reading one cold secret at once must cause one GET.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use kvfs::emulator::Emulator;

use crate::Ctx;
use crate::content::{self, READ_BUF};
use crate::harness::{self, Context, Error, Result};
use crate::measure::{Dist, signed_quantile_us};
use crate::report::{Report, Row};

const COLD_SIZE: usize = 1024;
const HERD_SIZE: usize = 4096;
const HERD: &str = "herd";

/// A client that GETs secrets from the emulator as kvfs does: HTTPS, bearer token, kept-alive
/// connection.
struct DirectClient {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl DirectClient {
    fn new(emu: &Emulator) -> Result<DirectClient> {
        // The only crypto provider compiled in; a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(emu.ca_pem().as_bytes())
            .context("reading the emulator's CA")?;
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(DirectClient {
            client,
            base: emu.vault_url(),
            token: emu.vault().issue_token("kvfs-bench"),
        })
    }

    /// GET the latest version of `name`; returns its value.
    async fn get(&self, name: &str) -> Result<String> {
        let url = format!("{}secrets/{name}/?api-version=7.5", self.base);
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .context(format!("GET {url}"))?;
        let status = response.status();
        let body = response.bytes().await.context(format!("GET {url}"))?;
        if !status.is_success() {
            return Err(Error(format!("GET {url}: {status}")));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).context(format!("GET {url}: body"))?;
        json.get("value")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error(format!("GET {url}: no value in the answer")))
    }
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let m = ctx.plan.cold_samples;
    let names: Vec<String> = (0..m).map(|i| format!("c-{i:04}")).collect();
    let values: Vec<String> = (0..m)
        .map(|i| content::value(2_000_000 + i as u64, COLD_SIZE))
        .collect();
    let herd_value = content::value(3_000_000, HERD_SIZE);
    let emu = ctx.emulator("cold")?;
    emu.vault().set_service_latency(Duration::ZERO);
    for (name, v) in names.iter().zip(&values) {
        emu.vault().set_secret(name, v);
    }
    emu.vault().set_secret(HERD, &herd_value);
    emu.vault().set_secret("warm", "warm");
    let mut mount = ctx.mount(&emu, "kvfs-cold", &[])?;
    let direct = DirectClient::new(&emu)?;
    for _ in 0..5 {
        ctx.runtime.block_on(direct.get("warm"))?;
    }

    let mut kvfs_t = Vec::with_capacity(m);
    let mut direct_t = Vec::with_capacity(m);
    let mut wrong = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    for (name, value) in names.iter().zip(&values) {
        harness::check_stop()?;
        let t0 = Instant::now();
        let got = ctx.runtime.block_on(direct.get(name))?;
        direct_t.push(t0.elapsed());
        if got != *value {
            wrong.push(format!("{name} (direct)"));
        }
        let path = mount.path.join(name);
        let t0 = Instant::now();
        let len = content::read_all(&path, &mut buf)?;
        kvfs_t.push(t0.elapsed());
        if buf.get(..len) != Some(value.as_bytes()) {
            wrong.push(name.clone());
        }
    }
    let counters = emu.vault().counters();
    let extra: Vec<String> = names
        .iter()
        .filter(|n| counters.get_by_name.get(n.as_str()).copied().unwrap_or(0) != 2)
        .cloned()
        .collect();
    report.check(
        format!("each cold read returns the secret ({m} reads)"),
        wrong.is_empty(),
        if wrong.is_empty() {
            "all values right".to_owned()
        } else {
            format!("wrong: {}", wrong.join(", "))
        },
    );
    report.check(
        "each cold read costs kvfs exactly one GET",
        extra.is_empty(),
        if extra.is_empty() {
            format!("{m} reads, {m} GETs (plus {m} direct)")
        } else {
            format!(
                "{} names with another count than 1 kvfs + 1 direct GET, e.g. {}",
                extra.len(),
                extra.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )
        },
    );
    let mut overhead: Vec<i64> = kvfs_t
        .iter()
        .zip(&direct_t)
        .map(|(k, d)| {
            i64::try_from(k.as_nanos()).unwrap_or(i64::MAX)
                - i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
        })
        .collect();
    overhead.sort_unstable();
    report.rows.push(
        Row::new(
            "cold_read",
            format!("cold first read ({} B), {m} secrets", COLD_SIZE),
            Some("emulator GET"),
        )
        .dists(
            Dist::from_samples(kvfs_t),
            Some(Dist::from_samples(direct_t)),
        )
        .no_throughput()
        .figure(
            "overhead_p50",
            "overhead p50 us",
            signed_quantile_us(&overhead, 0.5),
            None,
        )
        .figure(
            "overhead_p99",
            "overhead p99 us",
            signed_quantile_us(&overhead, 0.99),
            None,
        )
        .note(
            "kvfs = open+read+close of a never-read secret; baseline = the same GET sent straight to the emulator \
             (HTTPS, warm connection, service latency 0); overhead = kvfs - direct, paired per secret",
        ),
    );

    herd(ctx, report, &emu, &mount.path.join(HERD), &herd_value)?;
    mount.check_running()?;
    ctx.stop(report, mount, "cold")?;
    ctx.shutdown(emu);
    Ok(())
}

/// `readers` threads, all released at once, each open+read+close of one cold secret.
fn herd(
    ctx: &Ctx,
    report: &mut Report,
    emu: &Emulator,
    path: &std::path::Path,
    value: &str,
) -> Result<()> {
    let readers = ctx.plan.herd_readers;
    let before = emu.vault().counters();
    let gate = RwLock::new(());
    let ready = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<Duration>>> = Mutex::new(Vec::with_capacity(readers));
    let released = std::thread::scope(|scope| -> Result<Instant> {
        // Readers wait on the gate's read side; the write guard held here is the gate.
        let closed = gate.write().map_err(|_| Error("gate poisoned".into()))?;
        let mut spawned = 0;
        for _ in 0..readers {
            let spawn = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, || {
                    ready.fetch_add(1, Ordering::SeqCst);
                    let _open = gate.read();
                    let t0 = Instant::now();
                    let result = match std::fs::read(path) {
                        Ok(bytes) if bytes == value.as_bytes() => Ok(t0.elapsed()),
                        Ok(bytes) => Err(Error(format!("read {} wrong bytes", bytes.len()))),
                        Err(e) => Err(Error(format!("read {}: {e}", path.display()))),
                    };
                    if let Ok(mut r) = results.lock() {
                        r.push(result);
                    }
                });
            match spawn {
                Ok(_) => spawned += 1,
                Err(e) => {
                    drop(closed);
                    return Err(Error(format!("spawning reader {spawned}: {e}")));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready.load(Ordering::SeqCst) < spawned && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the last ones reach the gate itself, not just the counter before it.
        std::thread::sleep(Duration::from_millis(20));
        let released = Instant::now();
        drop(closed);
        Ok(released)
    })?;
    let wall = released.elapsed();
    let results = results.into_inner().unwrap_or_default();
    let mut samples = Vec::with_capacity(readers);
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(d) => samples.push(d),
            Err(e) => failures.push(e.0),
        }
    }
    let after = emu.vault().counters();
    let gets = after.get_by_name.get(HERD).copied().unwrap_or(0)
        - before.get_by_name.get(HERD).copied().unwrap_or(0);
    report.check(
        format!("{readers} concurrent cold readers all read the secret"),
        failures.is_empty() && samples.len() == readers,
        format!(
            "{} ok, {} failed{}",
            samples.len(),
            failures.len(),
            failures
                .first()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        ),
    );
    report.check(
        format!("{readers} concurrent cold readers cause exactly 1 GET"),
        gets == 1,
        format!("{gets} GETs of {HERD}"),
    );
    report.rows.push(
        Row::new(
            "cold_herd",
            format!("{readers} concurrent cold readers, one secret"),
            None,
        )
        .dists(Dist::from_samples(samples), None)
        .no_throughput()
        .figure("readers", "readers", readers as f64, None)
        .figure("kv_gets", "Key Vault GETs", gets as f64, None)
        .figure(
            "wall_ms",
            "all done after ms",
            wall.as_secs_f64() * 1000.0,
            None,
        ),
    );
    Ok(())
}
