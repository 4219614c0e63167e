//! The benchmark's environment: the loopback-only guard, a stop flag for Ctrl-C, the machine
//! description, and guards for what it mounts (kvfs over an in-process emulator, and tmpfs).
//!
//! Every guard undoes itself on Drop, so an error or a panic in the middle of a row still stops
//! kvfs and unmounts everything before the temporary directory is removed.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvfs::emulator::Emulator;

/// The benchmark's error: a message naming what failed.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to an error.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C or SIGTERM ends the run at the next loop turn, with everything unmounted.
pub fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Fails once a stop was requested; loops call it every turn.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        return Err(Error("interrupted".into()));
    }
    Ok(())
}

/// Sleeps in short steps so that a stop request is seen.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Refuses to run unless this process sees only the loopback interface, as inside
/// `scripts/loopback-only`: then nothing it starts can reach 169.254.169.254 or any other host.
pub fn require_loopback_only() -> Result<()> {
    let others = kvfs::testing::non_loopback_interfaces();
    if !others.is_empty() {
        return Err(Error(format!(
            "refusing to run: this network namespace has interfaces other than loopback ({}). \
             Run the benchmark inside a loopback-only namespace: \
             scripts/loopback-only cargo run --release --bin kvfs-bench -- --out target/bench",
            others.join(", ")
        )));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error(
            "must run as root (it mounts tmpfs and FUSE): use scripts/loopback-only".into(),
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error("/dev/fuse is missing: FUSE cannot mount here".into()));
    }
    Ok(())
}

/// What the numbers were measured on.
#[derive(Debug)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub loadavg: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown", |(_, v)| v.trim())
            .to_owned();
        let kernel = Command::new("uname")
            .arg("-srm")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel,
            loadavg: loadavg(),
        }
    }
}

/// The first three fields of /proc/loadavg: other work on the machine skews every figure.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn is_mounted(path: &Path) -> bool {
    kvfs::testing::is_mounted(path)
}

/// A directory to mount on, created fresh.
pub fn mountpoint(path: PathBuf) -> Result<PathBuf> {
    std::fs::create_dir_all(&path).context(format!("creating {}", path.display()))?;
    Ok(path)
}

/// A tmpfs holding the same files as a vault; unmounted on Drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: PathBuf) -> Result<Tmpfs> {
        let path = mountpoint(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512m,mode=0755", "kvfs-bench"])
            .arg(&path)
            .status()
            .context("running mount -t tmpfs")?;
        if !status.success() {
            return Err(Error(format!(
                "mount -t tmpfs {} failed ({status})",
                path.display()
            )));
        }
        Ok(Tmpfs { path })
    }

    pub fn write(&self, name: &str, value: &[u8]) -> Result<()> {
        let path = self.path.join(name);
        std::fs::write(&path, value).context(format!("writing {}", path.display()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
    }
}

/// The `--rotation` every kvfs of this run is mounted with, set once from the command line.
static ROTATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_rotation(mode: &str) {
    let _ = ROTATION.set(mode.to_owned());
}

/// The arguments that point kvfs at `emu` (it never asks anything but the emulator), the
/// run's rotation mode, and `KVFS_BENCH_EXTRA_ARGS` (split on spaces, e.g.
/// `--audit-log /dev/null` to measure auditing). The request budget is opened wide: the benchmark measures kvfs's own
/// cost, and cold rows read more secrets than the default burst (tests/abuse.rs measures the
/// budget itself).
pub fn emulator_args(emu: &Emulator) -> Vec<String> {
    vec![
        "--max-request-rate".into(),
        "1000000".into(),
        "--max-request-burst".into(),
        "1000000".into(),
        "--vault-url".into(),
        emu.vault_url(),
        "--ca-file".into(),
        emu.ca_path().display().to_string(),
        "--imds-endpoint".into(),
        emu.imds_endpoint(),
        "--disable-challenge-resource-verification".into(),
        "--rotation".into(),
        ROTATION
            .get()
            .map_or("new-inode", String::as_str)
            .to_owned(),
    ]
    .into_iter()
    .chain(
        std::env::var("KVFS_BENCH_EXTRA_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned),
    )
    .collect()
}

/// A running `kvfs mount`. Drop sends SIGTERM, waits, kills if it must, and detaches a mount
/// left behind.
pub struct KvfsMount {
    pub path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    parent_dev: u64,
}

impl KvfsMount {
    /// Spawns `kvfs mount PATH ARGS..` with no Azure or kvfs variables inherited, stderr to a
    /// file (never an undrained pipe, which would block kvfs). Does not wait for the mount.
    pub fn spawn(kvfs: &Path, path: PathBuf, args: &[String]) -> Result<KvfsMount> {
        let path = mountpoint(path)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let parent_dev = std::fs::metadata(parent)
            .context(format!("stat {}", parent.display()))?
            .dev();
        let log_path = path.with_extension("log");
        let log =
            std::fs::File::create(&log_path).context(format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(kvfs);
        cmd.arg("mount").arg(&path).args(args);
        kvfs::testing::scrub_env(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. If the
        // benchmark dies, kvfs gets SIGTERM and unmounts.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context(format!("spawning {}", kvfs.display()))?;
        Ok(KvfsMount {
            path,
            log_path,
            child: Some(child),
            parent_dev,
        })
    }

    /// Spawns kvfs and waits until the mount answers.
    pub fn start(kvfs: &Path, path: PathBuf, args: &[String]) -> Result<KvfsMount> {
        let mut mount = Self::spawn(kvfs, path, args)?;
        mount.wait_mounted(Duration::from_secs(60))?;
        Ok(mount)
    }

    pub fn is_up(&self) -> bool {
        kvfs::testing::mount_is_up(&self.path, self.parent_dev)
    }

    pub fn wait_mounted(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            check_stop()?;
            self.check_running()?;
            if self.is_up() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error(format!(
                    "kvfs did not mount {} within {limit:?}; log: {}",
                    self.path.display(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Fails if kvfs has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait().context("waiting for kvfs")?,
            None => return Err(Error("kvfs was already stopped".into())),
        };
        match exited {
            Some(status) => Err(Error(format!(
                "kvfs exited ({status}); log: {}",
                self.log_tail()
            ))),
            None => Ok(()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kvfs's resident memory (VmRSS) and peak (VmHWM), in bytes.
    pub fn rss(&self) -> Result<(u64, u64)> {
        let pid = self
            .pid()
            .ok_or_else(|| Error("kvfs is not running".into()))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context(format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .ok_or_else(|| Error(format!("no {name} in /proc/{pid}/status")))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The last lines kvfs logged, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(15);
        lines[start..].join("\n")
    }

    /// SIGTERM and wait: kvfs unmounts and exits by itself. Returns its exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(Error("kvfs was already stopped".into()));
        };
        kvfs::testing::terminate(&mut child, Duration::from_secs(10)).ok_or_else(|| {
            Error(format!(
                "kvfs did not exit within 10 s of SIGTERM; log: {}",
                self.log_tail()
            ))
        })
    }
}

impl Drop for KvfsMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kvfs::testing::terminate(&mut child, Duration::from_secs(10));
        }
        kvfs::testing::unmount_leftover(&self.path);
    }
}
