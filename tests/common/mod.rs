//! Test harness: a Key Vault emulator in this process, and the real `kvfs` binary mounting it
//! on a temporary directory. Dropping a `Mount` stops kvfs (SIGTERM) and makes sure nothing
//! stays mounted.
//!
//! Safety: everything binds 127.0.0.1 and kvfs is always given `--imds-endpoint`, so no
//! request can reach 169.254.169.254. The suite is meant to run inside a loopback-only network
//! namespace (scripts/loopback-only); `require_loopback_only` refuses to run outside one in CI.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvfs::emulator::{Counters, Emulator, EmulatorConfig, Vault};

pub struct TestEnv {
    pub runtime: tokio::runtime::Runtime,
    pub emulator: Option<Emulator>,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn start() -> Self {
        require_loopback_only();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let emulator = runtime
            .block_on(Emulator::start(EmulatorConfig::new(
                dir.path().join("emulator"),
            )))
            .expect("emulator starts");
        Self {
            runtime,
            emulator: Some(emulator),
            dir,
        }
    }

    pub fn emulator(&self) -> &Emulator {
        self.emulator.as_ref().expect("emulator running")
    }

    pub fn vault(&self) -> &Arc<Vault> {
        self.emulator().vault()
    }

    pub fn counters(&self) -> Counters {
        self.vault().counters()
    }

    /// The arguments that point kvfs at the emulator, without the mountpoint.
    pub fn kvfs_args(&self) -> Vec<String> {
        let e = self.emulator();
        vec![
            "--vault-url".into(),
            e.vault_url(),
            "--ca-file".into(),
            e.ca_path().display().to_string(),
            "--imds-endpoint".into(),
            e.imds_endpoint(),
            "--disable-challenge-resource-verification".into(),
        ]
    }

    /// A `kvfs mount` command for a fresh mountpoint, environment cleared of Azure variables.
    pub fn command(&self, mountpoint: &Path, extra: &[&str]) -> Command {
        let mut cmd = kvfs_command();
        cmd.arg("mount")
            .arg(mountpoint)
            .args(self.kvfs_args())
            .args(extra);
        cmd
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mountpoint");
        path
    }

    /// Mounts with `extra` flags and waits until the mount answers.
    pub fn mount(&self, extra: &[&str]) -> Mount {
        let path = self.mountpoint("mnt");
        Mount::start(self.command(&path, extra), path)
    }
}

/// `kvfs` with no Azure variables inherited and debug logs for the FUSE boundary.
pub fn kvfs_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvfs"));
    kvfs::testing::scrub_env(&mut cmd);
    cmd.env(
        "KVFS_LOG",
        "debug,azure_core=info,typespec_client_core=info,hyper=info,rustls=info,reqwest=info",
    );
    cmd
}

pub struct Mount {
    pub path: PathBuf,
    /// kvfs's stderr; shown when a test fails (or always with KVFS_TEST_SHOW_LOGS set).
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

impl Mount {
    pub fn start(mut cmd: Command, path: PathBuf) -> Mount {
        let parent_dev = std::fs::metadata(path.parent().expect("parent"))
            .expect("parent stat")
            .dev();
        // Logs go to a file, never a pipe: a pipe nobody drains would block kvfs mid-request.
        let log_path = path.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kvfs");
        // The guard exists before any wait, so a failed start still stops kvfs and unmounts.
        let mut mount = Mount {
            path,
            log_path,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = mount.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(&mount.log_path).unwrap_or_default();
                panic!("kvfs exited before mounting ({status}): {stderr}");
            }
            if kvfs::testing::mount_is_up(&mount.path, parent_dev) {
                return mount;
            }
            assert!(
                Instant::now() < deadline,
                "kvfs did not mount {} within 30 s",
                mount.path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.file(name))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// SIGTERM, then the exit status (kvfs must exit by itself within 10 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        kvfs::testing::terminate(&mut child, Duration::from_secs(10))
            .expect("kvfs exits within 10 s of SIGTERM")
    }
}

pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs kvfs's unmount guard, then kvfs, as `kill -9` of the whole process group or an
/// OOM kill of both could: only then is the mount left stale (a killed kvfs alone is
/// unmounted by its guard). Reaps kvfs.
pub fn kill_with_guard(child: &mut Child) {
    let kvfs = child.id().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let is_guard = status.lines().any(|l| l == "Name:\tkvfs-unmount")
            && status
                .lines()
                .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(kvfs.as_str()));
        if is_guard {
            // SAFETY: kill(2) of the guard of the kvfs this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            assert!(
                eventually(Duration::from_secs(5), || {
                    std::fs::read_to_string(entry.path().join("status"))
                        .map_or(true, |s| s.contains("State:\tZ"))
                }),
                "the guard {pid} did not die"
            );
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

pub fn is_mounted(path: &Path) -> bool {
    kvfs::testing::is_mounted(path)
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KVFS_TEST_SHOW_LOGS").is_some() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!("--- kvfs log ({}) ---\n{log}", self.path.display());
        }
        if let Some(mut child) = self.child.take() {
            kvfs::testing::terminate(&mut child, Duration::from_secs(10));
        }
        kvfs::testing::unmount_leftover(&self.path);
    }
}

/// Tests must not be able to reach anything but loopback. In CI (CI=true) they refuse to run
/// outside a loopback-only network namespace; and a FUSE test there fails, never skips.
pub fn require_loopback_only() {
    let others = kvfs::testing::non_loopback_interfaces();
    let only_loopback = others.is_empty();
    assert!(
        only_loopback || std::env::var_os("KVFS_TEST_ALLOW_NETWORK").is_some(),
        "the suite must run in a loopback-only network namespace: use `scripts/loopback-only cargo test` \
         (other interfaces here: {others:?})"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests cannot mount here"
    );
}

pub fn errno_of<T>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(_) => panic!("expected an error, got success"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
