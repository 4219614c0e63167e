//! The container image (deploy/Dockerfile), built and run for real with podman: its `prebuilt`
//! target on the local Debian base (scripts/setup makes it with mmdebstrap; no registry is
//! reachable here) around the host's production binary (`--no-default-features`: no emulator,
//! no demo). The container mounts the bundled emulator's sample vault, served from this
//! process, with only CAP_SYS_ADMIN and /dev/fuse; `podman exec` reads a secret through the
//! mount; the image's health check passes on the mount and fails off it; `podman stop` ends it
//! with exit code 0 and no mount left.
//!
//! Every podman call here either has no network or shares this namespace's: podman's default
//! bridge would add an interface to the namespace, breaking the suite's loopback-only rule.
//!
//! Safety: the emulator binds 127.0.0.1 and kvfs's IMDS requests go to it; the container shares
//! this process's network namespace (`--network host`), which scripts/loopback-only makes
//! loopback-only, so nothing in it can reach 169.254.169.254 or any other host.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TestEnv;

/// The base scripts/setup imports (KVFS_BASE_IMAGE overrides, there and here).
const DEFAULT_BASE: &str = "localhost/kvfs-base:bookworm";
/// FUSE's statfs magic: what the image's health check expects on the mountpoint.
const FUSE_MAGIC: &str = "65735546";
/// CAP_SYS_ADMIN alone (bit 21), as /proc/PID/status prints CapEff.
const SYS_ADMIN_ONLY: &str = "0000000000200000";

/// What cargo sets for a test process and not for `cargo build` run from a shell.
const TEST_ONLY_CARGO_VARS: [&str; 6] = [
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_BIN_",
    "CARGO_TARGET_TMPDIR",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// podman with the settings these machines need (runc, ulimits): deploy/containers.conf.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", repo().join("deploy/containers.conf"));
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_owned()
}

/// The container and its image; removed on drop, with the container's log shown on a failure.
struct Container {
    name: String,
    image: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let show = std::thread::panicking() || std::env::var_os("KVFS_TEST_SHOW_LOGS").is_some();
        if show && let Ok(out) = podman().args(["logs", &self.name]).output() {
            eprintln!(
                "--- container log ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
        let _ = podman().args(["rmi", "--force", &self.image]).output();
    }
}

/// Whether podman and the base image are here; under CI=true their absence fails the test.
fn podman_ready(base: &str) -> bool {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = match podman().args(["image", "exists", base]).status() {
        Ok(s) if s.success() => return true,
        Ok(_) => format!("the base image {base} is missing"),
        Err(e) => format!("podman cannot run: {e}"),
    };
    assert!(!in_ci, "{missing}: run scripts/setup");
    eprintln!("skipping the image test: {missing} (scripts/setup installs both)");
    false
}

/// Builds the production binary (a no-op when it is up to date) beside this test's target dir.
fn production_binary() -> PathBuf {
    // CARGO_BIN_EXE_kvfs is <target>/debug/kvfs; the release build goes to <target>/release.
    let target = Path::new(env!("CARGO_BIN_EXE_kvfs"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo describes the package to this test in CARGO_* variables; build scripts (ring's)
    // track some of them, so the release build would otherwise be redone from scratch.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if TEST_ONLY_CARGO_VARS.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key.as_ref());
        }
    }
    run(cmd
        .current_dir(repo())
        .args(["build", "--release", "--locked", "--no-default-features"])
        .args(["--bin", "kvfs", "--target-dir"])
        .arg(target));
    target.join("release/kvfs")
}

/// Mount points in this (the host's) mount namespace below `dir` (the container's root).
fn host_mounts_under(dir: &str) -> Vec<String> {
    let below = format!("{dir}/");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&below)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn image_mounts_the_vault_with_sys_admin_only_and_stops_cleanly() {
    let started = Instant::now();
    let env = TestEnv::start();
    let interfaces = kvfs::testing::non_loopback_interfaces();
    let base = std::env::var("KVFS_BASE_IMAGE").unwrap_or_else(|_| DEFAULT_BASE.to_owned());
    if !podman_ready(&base) {
        return;
    }
    let tag = std::process::id();
    let guard = Container {
        name: format!("kvfs-image-test-{tag}"),
        image: format!("localhost/kvfs-image-test:{tag}"),
    };

    // The build context holds the binary alone: the `prebuilt` target copies it, nothing else.
    let binary = production_binary();
    let context = env.dir.path().join("context");
    std::fs::create_dir(&context).expect("context dir");
    std::fs::copy(&binary, context.join("kvfs")).expect("copy the binary");
    let build_started = Instant::now();
    run(podman()
        // The docker format: OCI image configs have no HEALTHCHECK, so podman's default drops it.
        // No network for RUN steps: podman's default bridge would add an interface to this
        // loopback-only namespace (and the tests after this one refuse to run beside it).
        .args(["build", "--quiet", "--format", "docker"])
        .args(["--network", "none", "--target", "prebuilt"])
        .arg("--file")
        .arg(repo().join("deploy/Dockerfile"))
        .args(["--build-arg", &format!("RUNTIME_BASE={base}")])
        .args(["--build-arg", "REVISION=image-test"])
        .args(["--tag", &guard.image])
        .arg(&context));
    let build_time = build_started.elapsed();
    let size: u64 =
        stdout(podman().args(["image", "inspect", "--format", "{{.Size}}", &guard.image]))
            .parse()
            .expect("image size");
    eprintln!(
        "image {}: {:.1} MB ({:.1} MB of it the binary), built in {:.1} s",
        guard.image,
        size as f64 / 1e6,
        std::fs::metadata(&binary).expect("binary").len() as f64 / 1e6,
        build_time.as_secs_f64()
    );
    let labels = stdout(podman().args([
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"org.opencontainers.image.title\"}} {{index .Labels \"org.opencontainers.image.revision\"}}",
        &guard.image,
    ]));
    assert_eq!(labels, "kvfs image-test", "OCI labels");

    // The production binary: `mount` only, no emulator, no demo.
    let help = stdout(podman().args(["run", "--rm", "--network", "none", &guard.image, "--help"]));
    assert!(help.contains("mount"), "kvfs --help in the image: {help}");
    assert!(
        !help.contains("demo") && !help.contains("emulator"),
        "the image ships the production build: {help}"
    );

    // The "demo vault": the emulator's samples, served from this process on 127.0.0.1.
    env.vault().load_samples();
    let e = env.emulator();
    let ca = format!("{}:/etc/kvfs/ca.pem:ro", e.ca_path().display());
    run(podman()
        .args([
            "run",
            "--detach",
            "--name",
            &guard.name,
            "--network",
            "host",
        ])
        .args([
            "--device",
            "/dev/fuse",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "SYS_ADMIN",
        ])
        .args(["--security-opt", "no-new-privileges", "--read-only"])
        .args(["--volume", &ca, "--env", "KVFS_LOG=info"])
        .arg(&guard.image)
        .args(["mount", "/mnt/kv", "--vault-url", &e.vault_url()])
        .args([
            "--ca-file",
            "/etc/kvfs/ca.pem",
            "--imds-endpoint",
            &e.imds_endpoint(),
        ])
        .arg("--disable-challenge-resource-verification"));
    let merged = stdout(podman().args([
        "inspect",
        "--format",
        "{{.GraphDriver.Data.MergedDir}}",
        &guard.name,
    ]));

    // The image's own health check turns healthy once kvfs answers on the mountpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = podman()
            .args(["healthcheck", "run", &guard.name])
            .output()
            .expect("podman healthcheck run");
        if health.status.success() {
            break;
        }
        let running =
            stdout(podman().args(["inspect", "--format", "{{.State.Running}}", &guard.name]));
        assert_eq!(
            running, "true",
            "the container exited before it was healthy"
        );
        assert!(
            Instant::now() < deadline,
            "not healthy within 30 s: {}{}",
            String::from_utf8_lossy(&health.stdout),
            String::from_utf8_lossy(&health.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and is a real check: the same command fails on a directory that is not the mount.
    let check = stdout(podman().args([
        "inspect",
        "--format",
        "{{json .Config.Healthcheck.Test}}",
        &guard.name,
    ]));
    let check: Vec<String> = serde_json::from_str(&check).expect("health check command");
    assert_eq!(check.first().map(String::as_str), Some("CMD"), "{check:?}");
    let off_mount = podman()
        .args(["exec", "--env", "KVFS_MOUNTPOINT=/etc", &guard.name])
        .args(&check[1..])
        .status()
        .expect("health check off the mount");
    assert!(
        !off_mount.success(),
        "the health check passes off the mount"
    );

    // A secret, read through the mount inside the container: bytes, and one GET at the vault.
    let value = run(podman().args(["exec", &guard.name, "cat", "/mnt/kv/db-password"])).stdout;
    assert_eq!(value, b"correct-horse-battery-staple");
    let counters = env.counters();
    assert_eq!(
        counters.get_by_name.get("db-password"),
        Some(&1),
        "{counters:?}"
    );

    // Least privilege: kvfs holds CAP_SYS_ADMIN and nothing else.
    let status = stdout(podman().args(["exec", &guard.name, "cat", "/proc/1/status"]));
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim);
    assert_eq!(cap_eff, Some(SYS_ADMIN_ONLY), "{status}");

    // The mount lives in the container's mount namespace only.
    let inside = stdout(podman().args(["exec", &guard.name, "cat", "/proc/self/mountinfo"]));
    let kvfs_line = inside
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/mnt/kv"))
        .unwrap_or_else(|| panic!("no mount on /mnt/kv inside: {inside}"));
    assert!(
        kvfs_line.contains(" - fuse kvfs:127.0.0.1 "),
        "/mnt/kv is kvfs's FUSE mount: {kvfs_line}"
    );
    let magic = stdout(podman().args(["exec", &guard.name, "stat", "-f", "-c", "%t", "/mnt/kv"]));
    assert_eq!(magic, FUSE_MAGIC);
    assert_eq!(
        host_mounts_under(&merged),
        Vec::<String>::new(),
        "nothing on the host"
    );

    // podman stop sends SIGTERM: kvfs detaches the mount and exits 0 well within the timeout.
    let stop_started = Instant::now();
    run(podman().args(["stop", "--time", "10", &guard.name]));
    let stop_time = stop_started.elapsed();
    let exit = stdout(podman().args(["inspect", "--format", "{{.State.ExitCode}}", &guard.name]));
    assert_eq!(exit, "0", "exit code after podman stop");
    assert!(
        stop_time < Duration::from_secs(8),
        "stop took {stop_time:?}"
    );
    let log = run(podman().args(["logs", &guard.name]));
    let log =
        String::from_utf8_lossy(&log.stderr).into_owned() + &String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("mount detached; exiting"), "{log}");
    assert!(
        !log.contains("correct-horse-battery-staple"),
        "a secret value reached the log"
    );
    assert_eq!(
        host_mounts_under(&merged),
        Vec::<String>::new(),
        "nothing left on the host"
    );
    assert_eq!(
        kvfs::testing::non_loopback_interfaces(),
        interfaces,
        "podman added a network interface to this namespace"
    );
    eprintln!(
        "stop {:.1} s; test {:.1} s",
        stop_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
