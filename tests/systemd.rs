//! kvfs under systemd: deploy/systemd/kvfs.service passes `systemd-analyze verify`, keeps the
//! mount in the host's mount namespace, and kvfs speaks the notify protocol the unit relies on
//! (`Type=notify`): READY=1 only once the mount answers, WATCHDOG=1 while it does, STOPPING=1
//! on SIGTERM. The notify socket is played by the test: a Unix datagram socket in a temp dir.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestEnv};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/kvfs.service");

/// `systemd-analyze`, or None where it is missing (a failure under CI=true: scripts/setup
/// installs it).
fn systemd_analyze() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing: run scripts/setup (Debian package `systemd`)"
        );
        eprintln!("skipped: systemd-analyze is missing (scripts/setup installs it)");
    }
    found
}

/// The unit with ExecStart pointing at the kvfs just built (verify wants an executable there),
/// written as kvfs.service into `dir`, with `extra` lines appended to [Service].
fn unit_copy(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/kvfs mount /mnt/kv\n"));
    let text = text
        .replace(
            "ExecStart=/usr/local/bin/kvfs",
            &format!("ExecStart={}", env!("CARGO_BIN_EXE_kvfs")),
        )
        .replace("[Install]", &format!("{extra}\n[Install]"));
    let path = dir.join("kvfs.service");
    std::fs::write(&path, text).unwrap();
    path
}

/// systemd-analyze's diagnostics about `unit` (verify exits 0 on unknown keys and bad values,
/// but names the file).
fn verify(analyze: &Path, unit: &Path) -> (bool, Vec<String>) {
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit = stderr
        .lines()
        .filter(|l| l.contains("kvfs.service") || l.contains(&*unit.to_string_lossy()))
        .map(str::to_owned)
        .collect();
    (out.status.success(), about_unit)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ok, diagnostics) = verify(&analyze, &unit_copy(dir.path(), ""));
    assert!(ok && diagnostics.is_empty(), "{diagnostics:#?}");

    // The check can fail: a misspelt directive and a bad value are reported.
    let bad = tempfile::tempdir().unwrap();
    let (_, diagnostics) = verify(
        &analyze,
        &unit_copy(bad.path(), "ProtectSytem=strict\nKillMode=mixd"),
    );
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");

    // The exposure score systemd computes from the hardening directives (4.1 when written).
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_copy(dir.path(), ""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for kvfs.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {stdout}"));
    assert!(
        score <= 4.5,
        "exposure {score}: hardening was lost\n{stdout}"
    );
}

/// Directives of the unit's [Service] section, as (key, value).
fn service_directives() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let mut in_service = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

#[test]
fn unit_keeps_the_mount_in_the_host_namespace() {
    let directives = service_directives();
    let get = |key: &str| {
        directives
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    // Each of these gives the service a mount namespace of its own, whose mounts do not
    // propagate to the host (systemd.exec(5)): /mnt/kv would be invisible outside kvfs.
    for key in [
        "PrivateMounts",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "RootDirectory",
        "MountFlags",
        "DynamicUser",
        "PrivateUsers",
    ] {
        assert_eq!(get(key), None, "{key}= would hide the mount from the host");
    }
    assert_eq!(get("Type"), Some("notify"));
    assert_eq!(get("Restart"), Some("on-failure"));
    assert_eq!(get("KillMode"), Some("mixed"));
    assert_eq!(get("CapabilityBoundingSet"), Some("CAP_SYS_ADMIN"));
    assert_eq!(get("DeviceAllow"), Some("/dev/fuse rw"));
    assert_eq!(get("EnvironmentFile"), Some("/etc/kvfs/kvfs.env"));
    // The stop timeout outlasts kvfs's default --shutdown-grace (5s).
    let stop: u64 = get("TimeoutStopSec").unwrap().parse().unwrap();
    assert!(stop > 5, "TimeoutStopSec={stop}");
    let watchdog: u64 = get("WatchdogSec").unwrap().parse().unwrap();
    assert!(watchdog >= 10, "WatchdogSec={watchdog}");
}

/// The notify socket a service manager would hold, and what arrives on it.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self { path, socket }
    }

    /// The next message, or None after `limit`.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

/// Starts kvfs without waiting for the mount; the `Mount` guard stops it and unmounts.
fn spawn(mut cmd: Command, path: PathBuf) -> Mount {
    let log_path = path.with_extension("log");
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    Mount {
        path,
        log_path,
        child: Some(child),
    }
}

#[test]
fn notify_ready_once_the_mount_answers_then_watchdog_then_stopping() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "hunter2");
    let notify = NotifySocket::bind(env.dir.path());
    let path = env.mountpoint("mnt");
    let mut cmd = env.command(&path, &[]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000");
    let started = Instant::now();
    let mut mount = spawn(cmd, path);

    let first = notify
        .recv(Duration::from_secs(30))
        .expect("READY within 30 s");
    let ready_after = started.elapsed();
    // The moment READY arrives, the mount serves secrets.
    assert_eq!(mount.read("db-password").unwrap(), b"hunter2");
    let lines: Vec<_> = first.lines().collect();
    assert_eq!(lines[0], "READY=1", "{first:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=serving https://127.0.0.1")
                && l.ends_with(&format!("on {}", mount.path.display()))),
        "{first:?}"
    );

    // WATCHDOG_USEC=0.4s: a ping every 0.2s, each after the mount answered a statfs.
    let watch_start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg = notify
            .recv(Duration::from_secs(2))
            .expect("a watchdog ping within 2 s");
        assert_eq!(msg, "WATCHDOG=1\n");
        pings += 1;
    }
    let three_pings = watch_start.elapsed();
    assert!(three_pings < Duration::from_secs(2), "{three_pings:?}");

    let status = mount.terminate();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(msg) = notify.recv(Duration::from_millis(200)) {
        rest.push(msg);
    }
    let stopping = rest
        .iter()
        .position(|m| m.starts_with("STOPPING=1\n"))
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM: {rest:?}"));
    assert!(
        rest[stopping].contains("STATUS=stopping"),
        "{:?}",
        rest[stopping]
    );
    assert!(!common::is_mounted(&mount.path));
    eprintln!(
        "READY after {ready_after:?}; 3 watchdog pings in {three_pings:?}; after SIGTERM: {rest:?}"
    );
}

#[test]
fn notify_no_ready_when_the_start_fails() {
    let env = TestEnv::start();
    env.vault().set_rbac_allowed(false);
    let notify = NotifySocket::bind(env.dir.path());
    let path = env.mountpoint("mnt");
    let mut cmd = env.command(&path, &[]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut mount = spawn(cmd, path);
    let status = common::wait_with_deadline(mount.child.as_mut().unwrap(), Duration::from_secs(20));
    assert!(!status.success());
    assert_eq!(notify.recv(Duration::from_millis(100)), None);
    let log = std::fs::read_to_string(&mount.log_path).unwrap();
    assert!(log.contains("Key Vault Secrets User"), "{log}");
}
