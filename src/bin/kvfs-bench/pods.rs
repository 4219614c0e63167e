//! N pods x K secrets, read over and over for an hour of compressed time: what kvfs costs Key
//! Vault in steady state, against a per-pod poller such as the Secrets Store CSI driver.
//!
//! Time is compressed by scaling kvfs's own TTLs (`--cache-ttl` 5 min, `--list-ttl` 60 s, both
//! kvfs's defaults, divided by the compression). A few secrets change during the hour; every
//! read must return a value the secret had (no torn or unknown bytes), and after the hour one
//! more change must become visible through kvfs within one TTL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use kvfs::emulator::RequestKind;

use crate::Ctx;
use crate::content::{self, READ_BUF};
use crate::harness::{self, Result};
use crate::report::{Report, Row};

/// The CSI driver's default rotation poll interval: each pod's driver GETs each secret this often.
const CSI_POLL: Duration = Duration::from_secs(120);
/// Each pod re-reads all its secrets this often (compressed time).
const POD_PASS: Duration = Duration::from_secs(10);
/// Key Vault's `updated` has 1-s resolution: a secret fetched within this window of a change
/// cannot be told current by a listing, and is fetched again. Real time: it does not compress.
const SAME_SECOND: Duration = Duration::from_secs(2);
const LIST_PAGE: usize = 25;

struct Shared {
    names: Vec<String>,
    /// Every value each secret has had: a read must return one of them.
    allowed: Vec<RwLock<Vec<Vec<u8>>>>,
    done: AtomicBool,
    reads: AtomicU64,
    bad_reads: AtomicU64,
    first_bad: Mutex<Option<String>>,
}

impl Shared {
    fn bad(&self, what: String) {
        self.bad_reads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_bad.lock() {
            first.get_or_insert(what);
        }
    }
}

fn reader(shared: &Shared, root: &std::path::Path, pass: Duration) {
    let mut buf = vec![0u8; READ_BUF];
    let mut next = Instant::now();
    while !shared.done.load(Ordering::Relaxed) && harness::check_stop().is_ok() {
        for (i, name) in shared.names.iter().enumerate() {
            let path = root.join(name);
            match content::read_all(&path, &mut buf) {
                Ok(len) => {
                    let read = buf.get(..len).unwrap_or_default();
                    let known = shared.allowed[i]
                        .read()
                        .is_ok_and(|values| values.iter().any(|v| v.as_slice() == read));
                    if !known {
                        shared.bad(format!("{name}: {len} bytes matching no value it had"));
                    }
                }
                Err(e) => shared.bad(e.0),
            }
            shared.reads.fetch_add(1, Ordering::Relaxed);
        }
        next += pass;
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
        } else {
            next = now;
        }
    }
}

/// What the timed hour found.
struct Hour {
    window: Duration,
    gets: u64,
    list_pages: u64,
    other_requests: u64,
    listings: u64,
    /// Secrets fetched in the hour, most fetched first: "name x count".
    fetched: Vec<String>,
    rotation_seen: Option<Duration>,
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let plan = &ctx.plan;
    let (pods, k, c) = (plan.pods, plan.pod_secrets, plan.compression);
    let hour = Duration::from_secs_f64(3600.0 / c);
    let ttl = Duration::from_secs_f64(300.0 / c);
    let list_ttl = Duration::from_secs_f64(60.0 / c);
    let pass = POD_PASS.div_f64(c);
    let names: Vec<String> = (0..k).map(|i| format!("p-{i:04}")).collect();
    let emu = ctx.emulator("pods")?;
    let mut allowed = Vec::with_capacity(k);
    for (i, name) in names.iter().enumerate() {
        let v = content::value(4_000_000 + i as u64, content::spread_size(i, k));
        emu.vault().set_secret(name, &v);
        allowed.push(RwLock::new(vec![v.into_bytes()]));
    }
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let mut mount = ctx.mount(
        &emu,
        "kvfs-pods",
        &["--cache-ttl", &ms(ttl), "--list-ttl", &ms(list_ttl)],
    )?;
    let shared = Shared {
        names,
        allowed,
        done: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        bad_reads: AtomicU64::new(0),
        first_bad: Mutex::new(None),
    };
    let root = mount.path.clone();
    let changes = plan.changes.min(k.saturating_sub(1));
    let outcome = std::thread::scope(|scope| {
        for _ in 0..pods {
            scope.spawn(|| reader(&shared, &root, pass));
        }
        let outcome = drive(&emu, &shared, &root, hour, ttl, changes);
        shared.done.store(true, Ordering::Relaxed);
        outcome
    })?;
    mount.check_running()?;
    ctx.stop(report, mount, "pods")?;
    ctx.shutdown(emu);

    let bad = shared.bad_reads.load(Ordering::Relaxed);
    let reads = shared.reads.load(Ordering::Relaxed);
    report.check(
        "pods only ever read a value the secret had",
        bad == 0,
        format!(
            "{reads} reads, {bad} bad{}",
            shared
                .first_bad
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        ),
    );

    let h = outcome;
    let changed: Vec<&str> = (0..changes)
        .map(|j| shared.names[j * k / changes].as_str())
        .collect();
    let requests = h.gets + h.list_pages + h.other_requests;
    let pages = k.div_ceil(LIST_PAGE) as u64;
    let window = h.window.as_secs_f64();
    let ticks_per_window = |d: Duration| -> u64 {
        if h.listings == 0 {
            0
        } else {
            (d.as_secs_f64() * h.listings as f64 / window).ceil() as u64
        }
    };
    let per_change = 1 + ticks_per_window(SAME_SECOND);
    let allowed = h.listings * pages + changes as u64 * per_change;
    let max_listings = (2.0 * window / ttl.as_secs_f64()).ceil() as u64 + 1;
    report.check(
        "steady-state Key Vault requests within bound",
        requests <= allowed && h.listings <= max_listings,
        format!(
            "{requests} requests ({} GETs, {} list pages, {} other) <= L x ceil(K/25) + changes x (1 + refreshes within {}s of a change) \
             = {} x {pages} + {changes} x {per_change} = {allowed}; refresh listings L = {} <= 2 per cache TTL = {max_listings}; \
             changed: {}; fetched: {}",
            h.gets,
            h.list_pages,
            h.other_requests,
            SAME_SECOND.as_secs(),
            h.listings,
            h.listings,
            changed.join(", "),
            h.fetched.join(", ")
        ),
    );
    let rotation_limit = ttl + SAME_SECOND;
    report.check(
        "a change is visible through kvfs within one cache TTL (+2 s)",
        h.rotation_seen.is_some_and(|d| d <= rotation_limit),
        match h.rotation_seen {
            Some(d) => format!(
                "seen after {:.2} s (limit {:.2} s)",
                d.as_secs_f64(),
                rotation_limit.as_secs_f64()
            ),
            None => format!(
                "not seen within {:.1} s",
                (2 * ttl + 3 * SAME_SECOND).as_secs_f64()
            ),
        },
    );

    let hours = window / hour.as_secs_f64();
    let per_secret_hour = requests as f64 / k as f64 / hours;
    let csi_per_secret_hour = pods as f64 * 3600.0 / CSI_POLL.as_secs_f64();
    let per_refresh = if h.listings > 0 {
        requests as f64 / h.listings as f64
    } else {
        requests as f64
    };
    let mut row = Row::new(
        "pods_hour",
        format!("{pods} pods x {k} secrets, 1 h compressed {c:.0}x"),
        Some("CSI poller (2 min)"),
    )
    .figure(
        "requests_per_secret_hour",
        "KV requests/secret/h",
        per_secret_hour,
        Some(csi_per_secret_hour),
    )
    .figure(
        "requests_per_hour",
        "KV requests/h",
        requests as f64 / hours,
        Some(csi_per_secret_hour * k as f64),
    )
    .figure("gets", "GETs in the hour", h.gets as f64, None)
    .figure(
        "list_pages",
        "list pages in the hour",
        h.list_pages as f64,
        None,
    )
    .figure("refreshes", "refresh listings", h.listings as f64, None)
    .figure(
        "requests_per_refresh",
        "requests per refresh",
        per_refresh,
        None,
    )
    .figure(
        "bound_per_refresh",
        "ceil(K/25) + changes",
        (pages + changes as u64) as f64,
        None,
    )
    .figure("pod_reads", "reads by pods", reads as f64, None);
    if let Some(seen) = h.rotation_seen {
        row = row.figure(
            "rotation_seen_s",
            "change seen after s*",
            seen.as_secs_f64() * c,
            Some(CSI_POLL.as_secs_f64()),
        );
    }
    report.rows.push(row.note(format!(
        "cache-ttl {} list-ttl {} (kvfs defaults 5m, 60s, / {c:.0}); hour = {:.1} s real; {changes} secrets changed; \
         every pod reads all {k} secrets every 10 s; CSI = each pod GETs each secret every 2 min; \
         * compressed seconds; the CSI figure is its worst case",
        ms(ttl),
        ms(list_ttl),
        window
    )));
    Ok(())
}

/// The main thread's part: warm up, count an hour with a few changes, then time one change.
fn drive(
    emu: &kvfs::emulator::Emulator,
    shared: &Shared,
    root: &std::path::Path,
    hour: Duration,
    ttl: Duration,
    changes: usize,
) -> Result<Hour> {
    let vault = emu.vault();
    let k = shared.names.len();
    // Every secret fetched once, and past the same-second window, before counting starts.
    harness::sleep((2 * ttl).max(SAME_SECOND + Duration::from_secs(1)))?;
    vault.reset_counters();
    let t0 = Instant::now();
    for j in 0..changes {
        let at = t0 + hour.mul_f64((j as f64 + 0.5) / changes as f64);
        harness::sleep(at.saturating_duration_since(Instant::now()))?;
        let i = j * k / changes;
        change(shared, vault, i, 5_000_000 + j as u64);
    }
    harness::sleep((t0 + hour).saturating_duration_since(Instant::now()))?;
    let window = t0.elapsed();
    let counters = vault.counters();
    let mut by_name: Vec<(&String, &u64)> = counters.get_by_name.iter().collect();
    by_name.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let fetched = by_name
        .iter()
        .map(|(name, n)| format!("{name} x{n}"))
        .collect();
    let listings = vault
        .requests()
        .iter()
        .filter(|r| {
            r.kind == RequestKind::ListSecrets && r.status == 200 && !r.query.contains("skiptoken")
        })
        .count() as u64;

    // One more change, timed until a read through kvfs returns it.
    let i = k - 1;
    let new = change(shared, vault, i, 6_000_000);
    let set_at = Instant::now();
    let limit = 2 * ttl + 3 * SAME_SECOND;
    let path = root.join(&shared.names[i]);
    let mut buf = vec![0u8; READ_BUF];
    let mut rotation_seen = None;
    while set_at.elapsed() < limit {
        harness::check_stop()?;
        if let Ok(len) = content::read_all(&path, &mut buf)
            && buf.get(..len) == Some(new.as_slice())
        {
            rotation_seen = Some(set_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Hour {
        window,
        gets: counters.get_secret,
        list_pages: counters.list_secrets,
        other_requests: counters.list_versions + counters.challenges,
        listings,
        fetched,
        rotation_seen,
    })
}

/// Gives secret `i` a new value (of a new length), allowed for readers before it exists.
fn change(shared: &Shared, vault: &kvfs::emulator::Vault, i: usize, seed: u64) -> Vec<u8> {
    let old_len = shared.allowed[i]
        .read()
        .ok()
        .and_then(|v| v.last().map(Vec::len))
        .unwrap_or(content::MIN_VALUE);
    let new = content::value(seed, (old_len + 7).min(content::MAX_VALUE));
    if let Ok(mut values) = shared.allowed[i].write() {
        values.push(new.clone().into_bytes());
    }
    vault.set_secret(&shared.names[i], &new);
    new.into_bytes()
}
