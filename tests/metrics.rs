//! `--metrics-addr`: a live mount is scraped before and after reads, and the counters must
//! move by exactly what the reads cost (FUSE requests, cache misses, Key Vault GETs as the
//! emulator counted them); `/healthz` and `/readyz` answer; `/readyz` turns 503 once Key Vault
//! fails for longer than its window, and 200 again when it recovers; no secret value ever
//! appears in `/metrics`, with `--metrics-per-secret` too.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use common::{Mount, TestEnv, eventually};
use kvfs::emulator::{Fault, FaultAction};

const CANARY: &str = "canary-value-7f3a9c-never-in-metrics";

/// The metrics address kvfs logged ("metrics listening on ADDR"): it was given port 0.
fn metrics_addr(m: &Mount) -> SocketAddr {
    let mut found = None;
    let logged = eventually(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&m.log_path).unwrap_or_default();
        found = log.split("metrics listening on ").nth(1).and_then(|rest| {
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            addr.parse().ok()
        });
        found.is_some()
    });
    assert!(logged, "kvfs did not log its metrics address");
    found.expect("address")
}

/// A plain HTTP/1.1 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one series (name and labels exactly as exposed); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

struct Scrape(String);

impl Scrape {
    fn take(addr: SocketAddr) -> Self {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains(CANARY),
            "a secret value appeared in /metrics"
        );
        Scrape(body)
    }

    fn delta(&self, earlier: &Scrape, series: &str) -> f64 {
        value(&self.0, series) - value(&earlier.0, series)
    }
}

#[test]
fn counters_move_by_what_reads_cost() {
    let env = TestEnv::start();
    env.vault().set_secret("alpha", CANARY);
    env.vault().set_secret("beta", "second value");
    let m = env.mount(&["--metrics-addr", "127.0.0.1:0", "--list-ttl", "1h"]);
    let addr = metrics_addr(&m);
    // kvfs says it is mounted just after the mount answers (the test's signal that it is up).
    let healthy = eventually(Duration::from_secs(3), || get(addr, "/healthz").0 == 200);
    assert!(healthy, "/healthz: {}", get(addr, "/healthz").1);
    // The startup check's listing made kvfs ready; the scrape says why if it is not.
    let ready = eventually(Duration::from_secs(3), || get(addr, "/readyz").0 == 200);
    assert!(
        ready,
        "not ready after mounting: {}",
        get(addr, "/metrics").1
    );
    assert_eq!(get(addr, "/nothing").0, 404);

    let before = Scrape::take(addr);
    assert_eq!(value(&before.0, "kvfs_mounted"), 1.0);
    let counted = env.counters();
    assert_eq!(m.read("alpha").unwrap(), CANARY.as_bytes());
    assert_eq!(m.read("beta").unwrap(), b"second value");
    let after = Scrape::take(addr);
    let gets = env.counters().get_secret - counted.get_secret;
    assert_eq!(gets, 2, "one GET per secret read");
    // Each new name costs the kernel one lookup and kvfs one cache miss and one GET.
    assert_eq!(
        after.delta(&before, "kvfs_fuse_requests_total{op=\"lookup\"}"),
        2.0
    );
    assert_eq!(after.delta(&before, "kvfs_cache_misses_total"), 2.0);
    assert_eq!(
        after.delta(
            &before,
            "kvfs_keyvault_requests_total{operation=\"get\",status=\"200\"}"
        ),
        gets as f64,
        "kvfs counts the GETs the emulator answered"
    );
    assert_eq!(
        after.delta(
            &before,
            "kvfs_keyvault_request_duration_seconds_count{operation=\"get\"}"
        ),
        gets as f64
    );
    let reads = after.delta(&before, "kvfs_fuse_requests_total{op=\"read\"}");
    // One READ per small file (a page holds it), and one OPEN for the mount's life: the first
    // is answered ENOSYS (zero-message open) and the kernel sends no more.
    assert_eq!(reads, 2.0, "one FUSE read per file");
    assert_eq!(
        after.delta(&before, "kvfs_fuse_requests_total{op=\"open\"}"),
        1.0
    );
    assert_eq!(
        after.delta(
            &before,
            "kvfs_fuse_errors_total{op=\"open\",errno=\"ENOSYS\"}"
        ),
        0.0,
        "zero-message open is not an error"
    );

    // Read again: the kernel answers from its caches; nothing moves but nothing is asked.
    assert_eq!(m.read("alpha").unwrap(), CANARY.as_bytes());
    let again = Scrape::take(addr);
    for series in [
        "kvfs_fuse_requests_total{op=\"lookup\"}",
        "kvfs_fuse_requests_total{op=\"read\"}",
        "kvfs_cache_misses_total",
        "kvfs_keyvault_requests_total{operation=\"get\",status=\"200\"}",
    ] {
        assert_eq!(again.delta(&after, series), 0.0, "{series}");
    }
    assert_eq!(env.counters().get_secret - counted.get_secret, gets);

    // An absent name: one lookup answered ENOENT from the listing, no request.
    let err = std::fs::read(m.file("missing")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let absent = Scrape::take(addr);
    assert_eq!(
        absent.delta(
            &again,
            "kvfs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}"
        ),
        1.0
    );
    assert_eq!(absent.delta(&again, "kvfs_cache_misses_total"), 0.0);
    assert_eq!(
        env.counters().get_secret - counted.get_secret,
        gets,
        "no GET for a name the listing lacks"
    );
    // No per-secret series unless asked.
    assert!(!absent.0.contains("secret=\""), "{}", absent.0);
}

#[test]
fn readyz_follows_the_vault_and_per_secret_labels_carry_names_only() {
    let env = TestEnv::start();
    env.vault().set_secret("alpha", CANARY);
    // Refresh every 1.6 s, so the readiness window is 2 x 1.6 s.
    let m = env.mount(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--metrics-per-secret",
        "--cache-ttl",
        "2s",
        "--request-timeout",
        "1s",
    ]);
    let addr = metrics_addr(&m);
    assert_eq!(m.read("alpha").unwrap(), CANARY.as_bytes());
    let scrape = Scrape::take(addr);
    assert_eq!(
        value(&scrape.0, "kvfs_secret_reads_total{secret=\"alpha\"}"),
        1.0,
        "{}",
        scrape.0
    );
    assert_eq!(
        value(&scrape.0, "kvfs_secret_fetches_total{secret=\"alpha\"}"),
        1.0
    );
    assert_eq!(get(addr, "/readyz").0, 200);

    env.vault().add_fault(Fault {
        kind: None,
        name: None,
        action: FaultAction::Status {
            status: 503,
            retry_after: None,
        },
        times: None,
    });
    assert!(
        eventually(Duration::from_secs(20), || get(addr, "/readyz").0 == 503),
        "/readyz stayed 200 while Key Vault answered 503"
    );
    let failing = Scrape::take(addr);
    // Not before the window (2 x 1.6 s) since Key Vault's last good answer.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let since_answer = now - value(&failing.0, "kvfs_keyvault_last_answer_timestamp_seconds");
    assert!(
        since_answer >= 3.1,
        "unready {since_answer:.2} s after the last answer"
    );
    assert!(
        failing
            .0
            .lines()
            .any(|l| l.starts_with("kvfs_keyvault_requests_total") && l.contains("status=\"503\"")),
        "{}",
        failing.0
    );
    assert!(value(&failing.0, "kvfs_refresh_runs_total{result=\"failed\"}") >= 1.0);
    assert_eq!(get(addr, "/healthz").0, 200, "the mount itself is fine");
    // Cached values keep being served, stale.
    assert_eq!(m.read("alpha").unwrap(), CANARY.as_bytes());

    env.vault().clear_faults();
    assert!(
        eventually(Duration::from_secs(20), || get(addr, "/readyz").0 == 200),
        "/readyz did not recover with the vault"
    );
    let recovered = Scrape::take(addr);
    assert!(value(&recovered.0, "kvfs_refresh_lag_seconds") < 5.0);
}

#[test]
fn healthz_fails_once_the_mount_is_gone() {
    let env = TestEnv::start();
    let mut m = env.mount(&["--metrics-addr", "127.0.0.1:0", "--shutdown-grace", "3s"]);
    let addr = metrics_addr(&m);
    assert_eq!(get(addr, "/healthz").0, 200);
    // Hold the mount's root open so that kvfs lingers (the grace) after detaching.
    let holder = std::fs::File::open(&m.path).expect("open the mount root");
    // SAFETY: a plain signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(m.pid(), libc::SIGTERM) }, 0);
    assert!(
        eventually(Duration::from_secs(5), || get(addr, "/healthz").0 == 503),
        "/healthz still 200 after the mount was detached"
    );
    assert_eq!(value(&Scrape::take(addr).0, "kvfs_mounted"), 0.0);
    drop(holder);
    m.terminate();
}

#[test]
fn an_address_in_use_names_the_flag() {
    let env = TestEnv::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mountpoint = env.mountpoint("mnt");
    let output = env
        .command(&mountpoint, &["--metrics-addr", &addr])
        .output()
        .expect("run kvfs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (--metrics-addr)")),
        "{stderr}"
    );
    assert!(!common::is_mounted(&mountpoint));
}

#[test]
fn a_malformed_address_is_rejected() {
    let out = common::kvfs_command()
        .args([
            "mount",
            "/tmp/x",
            "--vault-url",
            "https://v.vault.azure.net",
            "--metrics-addr",
            "localhost",
        ])
        .output()
        .expect("run kvfs");
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-addr <ADDR>") && stderr.contains("socket address"),
        "{stderr}"
    );
}
