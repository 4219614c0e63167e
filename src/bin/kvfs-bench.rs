//! `kvfs-bench`: kvfs against tmpfs on the same machine, in one run.
//!
//! It starts the bundled Key Vault emulator in process, mounts kvfs over it (the real binary,
//! spawned as users run it) and a tmpfs holding byte-identical files, then measures reads,
//! stats, listings, `cat`, cold reads, a thundering herd, an hour of pods in compressed time,
//! memory and startup. It prints a table (kvfs, baseline, ratio), writes `results.json` and
//! `latency.svg` to `--out`, and exits non-zero when a correctness check fails. `--quick` runs
//! every row with small counts, for CI.
//!
//! Run it inside a loopback-only network namespace, as root:
//! `scripts/loopback-only cargo run --release --bin kvfs-bench -- --out target/bench`

// A binary's root looks for modules beside itself: these live in kvfs-bench/.
#[path = "kvfs-bench/chart.rs"]
mod chart;
#[path = "kvfs-bench/cold.rs"]
mod cold;
#[path = "kvfs-bench/content.rs"]
mod content;
#[path = "kvfs-bench/files.rs"]
mod files;
#[path = "kvfs-bench/harness.rs"]
mod harness;
#[path = "kvfs-bench/measure.rs"]
mod measure;
#[path = "kvfs-bench/memory.rs"]
mod memory;
#[path = "kvfs-bench/pods.rs"]
mod pods;
#[path = "kvfs-bench/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use kvfs::emulator::{Emulator, EmulatorConfig};

use harness::{Context, Error, KvfsMount, Machine, Result};
use measure::Budget;
use report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "kvfs-bench",
    about = "Benchmark kvfs over the bundled emulator against tmpfs (run inside scripts/loopback-only)"
)]
struct Cli {
    /// Directory for results.json, latency.svg and kvfs logs.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,

    /// Every row with small counts (well under a minute); checks counts, not speed.
    #[arg(long)]
    quick: bool,

    /// The kvfs binary to benchmark [default: `kvfs` next to this binary, rebuilt first when
    /// run through `cargo run`].
    #[arg(long, value_name = "PATH")]
    kvfs: Option<PathBuf>,

    /// Run only these scenarios (the JSON then lacks the others' rows).
    #[arg(long, value_name = "SCENARIO", value_delimiter = ',', value_parser = SCENARIOS.map(|(name, _)| name))]
    only: Vec<String>,

    /// Rotation mode of every kvfs mounted (`kvfs mount --rotation`), to compare the modes.
    #[arg(long, value_name = "MODE", default_value = "new-inode", value_parser = ["new-inode", "in-place"])]
    rotation: String,
}

/// One part of the run; it adds rows and checks to the report.
type Scenario = fn(&Ctx, &mut Report) -> Result<()>;

/// Every scenario, in the order they run.
const SCENARIOS: [(&str, Scenario); 6] = [
    ("files", files::main_vault),
    ("relay", files::relay),
    ("listing", files::large_listing),
    ("cold", cold::run),
    ("pods", pods::run),
    ("memory", memory::run),
];

/// Counts and durations of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Each side of a kvfs/tmpfs row runs in this many alternating slices of its budget.
    pub rounds: u32,
    /// open+read+close and stat rows.
    pub row: Budget,
    pub readdir_small: Budget,
    pub readdir_large: Budget,
    pub cat: Budget,
    /// Files in the main vault (round-robin reads, stat, the small listing).
    pub files: usize,
    /// Entries of the large listing.
    pub large_dir: usize,
    pub cold_samples: usize,
    pub herd_readers: usize,
    pub pods: usize,
    pub pod_secrets: usize,
    /// One hour of pods runs in 3600 s / compression.
    pub compression: f64,
    /// Secrets changed during the compressed hour.
    pub changes: usize,
    pub rss_secrets: usize,
    pub startup_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let budget = |secs: f64, max_ops: u64, warmup_ops: u64| Budget {
            time: Duration::from_secs_f64(secs),
            max_ops,
            warmup_ops,
        };
        if quick {
            Plan {
                quick,
                rounds: 1,
                row: budget(0.2, 20_000, 100),
                readdir_small: budget(0.2, 50, 2),
                readdir_large: budget(0.3, 5, 1),
                cat: budget(0.5, 20, 2),
                files: 1000,
                large_dir: 10_000,
                cold_samples: 20,
                herd_readers: 1000,
                pods: 4,
                pod_secrets: 50,
                compression: 600.0,
                changes: 3,
                rss_secrets: 1000,
                startup_runs: 2,
            }
        } else {
            Plan {
                quick,
                rounds: 3,
                row: budget(3.0, 5_000_000, 2000),
                readdir_small: budget(3.0, 20_000, 20),
                readdir_large: budget(3.0, 2_000, 3),
                cat: budget(3.0, 1_000, 20),
                files: 1000,
                large_dir: 10_000,
                cold_samples: 200,
                herd_readers: 1000,
                pods: 10,
                pod_secrets: 200,
                compression: 60.0,
                changes: 6,
                rss_secrets: 10_000,
                startup_runs: 10,
            }
        }
    }
}

/// What every scenario needs: the kvfs binary, the runtime the emulators run on, a scratch
/// directory for mountpoints, logs and emulator state, and the plan.
pub struct Ctx {
    pub kvfs: PathBuf,
    pub runtime: tokio::runtime::Runtime,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub plan: Plan,
}

impl Ctx {
    /// A fresh emulator (own state, own counters) on 127.0.0.1.
    pub fn emulator(&self, name: &str) -> Result<Emulator> {
        let emu = self
            .runtime
            .block_on(Emulator::start(EmulatorConfig::new(
                self.work.join(format!("{name}-emulator")),
            )))
            .context("starting the emulator")?;
        if !emu.vault_url().starts_with("https://127.0.0.1:") {
            return Err(Error(format!(
                "the emulator is not on loopback: {}",
                emu.vault_url()
            )));
        }
        Ok(emu)
    }

    pub fn shutdown(&self, emu: Emulator) {
        self.runtime.block_on(emu.shutdown());
    }

    /// kvfs's arguments for `emu` plus `extra`.
    pub fn kvfs_args(&self, emu: &Emulator, extra: &[&str]) -> Vec<String> {
        let mut args = harness::emulator_args(emu);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Mounts kvfs over `emu` on `work/NAME` (log in `--out`) and waits until it answers.
    pub fn mount(&self, emu: &Emulator, name: &str, extra: &[&str]) -> Result<KvfsMount> {
        let mount = KvfsMount::start(
            &self.kvfs,
            self.work.join(name),
            &self.kvfs_args(emu, extra),
        )?;
        Ok(mount)
    }

    /// Stops kvfs with SIGTERM and checks that it unmounted and exited 0.
    pub fn stop(&self, report: &mut Report, mount: KvfsMount, what: &str) -> Result<()> {
        let path = mount.path.clone();
        let log = mount.log_path.clone();
        let status = mount.stop()?;
        let _ = std::fs::copy(&log, self.logs.join(format!("{what}.log")));
        if !status.success() || harness::is_mounted(&path) {
            report.check(
                format!("kvfs exits 0 and unmounts on SIGTERM ({what})"),
                false,
                format!("{status}; still mounted: {}", harness::is_mounted(&path)),
            );
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    harness::set_rotation(&cli.rotation);
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("kvfs-bench: correctness checks failed (see FAIL above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("kvfs-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs every scenario; Ok(false) when a check failed.
fn run(cli: &Cli) -> Result<bool> {
    harness::require_loopback_only()?;
    harness::install_stop_handler();
    let kvfs = locate_kvfs(cli)?;
    std::fs::create_dir_all(&cli.out).context(format!("creating {}", cli.out.display()))?;
    let out = std::fs::canonicalize(&cli.out).context("resolving --out")?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).context("creating the log directory")?;
    let started = Instant::now();
    let mode = if cli.quick { "quick" } else { "full" };
    let mut report = Report {
        mode,
        machine: Machine::probe(),
        kvfs_binary: kvfs.display().to_string(),
        rows: Vec::new(),
        checks: Vec::new(),
        duration: Duration::ZERO,
    };
    println!("kvfs-bench ({mode}), kvfs: {}", kvfs.display());
    println!("{}", report.machine_text());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("emulator")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let work = tempfile::Builder::new()
        .prefix("kvfs-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let ctx = Ctx {
        kvfs,
        runtime,
        work: work.path().to_owned(),
        logs,
        plan: Plan::new(cli.quick),
    };
    for (name, scenario) in SCENARIOS {
        if !cli.only.is_empty() && !cli.only.iter().any(|o| o == name) {
            continue;
        }
        let t = Instant::now();
        eprintln!("== {name}");
        scenario(&ctx, &mut report)?;
        eprintln!("   {:.1} s", t.elapsed().as_secs_f64());
    }
    report.duration = started.elapsed();

    let json_path = out.join("results.json");
    let text = serde_json::to_string_pretty(&report.json()).context("encoding the results")?;
    std::fs::write(&json_path, text).context(format!("writing {}", json_path.display()))?;
    let svg_path = out.join("latency.svg");
    let title = format!("kvfs vs baseline: latency by percentile ({mode} run)");
    std::fs::write(
        &svg_path,
        chart::svg(&report.rows, &title, &report.machine_text()),
    )
    .context(format!("writing {}", svg_path.display()))?;

    println!();
    print!("{}", report.table());
    println!();
    println!("{}", report.machine_text());
    println!("load average at end: {}", harness::loadavg());
    for c in report.checks.iter().filter(|c| !c.ok) {
        println!("FAILED CHECK {}: {}", c.name, c.detail);
    }
    println!(
        "correctness checks: {} ok, {} FAILED",
        report.checks.iter().filter(|c| c.ok).count(),
        report.checks.iter().filter(|c| !c.ok).count()
    );
    println!("results: {}", json_path.display());
    println!("chart:   {}", svg_path.display());
    println!("time:    {:.1} s", report.duration.as_secs_f64());
    Ok(report.ok())
}

/// `--kvfs`, or `kvfs` next to this executable. Under `cargo run` (CARGO is set) it is rebuilt
/// first with this binary's profile, so the numbers never come from a stale kvfs.
fn locate_kvfs(cli: &Cli) -> Result<PathBuf> {
    if let Some(path) = &cli.kvfs {
        return std::fs::canonicalize(path).context(format!("--kvfs {}", path.display()));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let kvfs = exe.with_file_name("kvfs");
    if let Some(cargo) = std::env::var_os("CARGO") {
        build_kvfs(Path::new(&cargo), &exe)?;
    }
    if !kvfs.exists() {
        return Err(Error(format!(
            "{} is missing: build it (cargo build --release --bins) or pass --kvfs",
            kvfs.display()
        )));
    }
    Ok(kvfs)
}

fn build_kvfs(cargo: &Path, exe: &Path) -> Result<()> {
    let profile = exe
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    // Not the variables `cargo run` set for this binary: build scripts track some of them
    // (ring: CARGO_MANIFEST_DIR), and a change would rebuild the SDK stack, twice.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        let set_by_cargo_run = key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&key.as_str());
        if set_by_cargo_run {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--bin", "kvfs"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    eprintln!("building kvfs ({profile}) first");
    let status = cmd.status().context("running cargo build --bin kvfs")?;
    if !status.success() {
        return Err(Error(format!("cargo build --bin kvfs failed ({status})")));
    }
    Ok(())
}
