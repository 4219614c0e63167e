//! The official Python Key Vault SDK (azure-keyvault-secrets with azure-identity's managed and
//! workload identity credentials) against the emulator, over real HTTPS on 127.0.0.1.
//!
//! The venv comes from scripts/setup (/var/cache/kvfs/pyenv, or $KVFS_PYENV); without it the
//! test fails, never skips. The script (tests/python/kv_sdk.py) lists, gets by name and by
//! version, and prints what it saw; this side checks that and the emulator's counters.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvfs::emulator::{EMULATOR_TENANT_ID, Emulator, EmulatorConfig, RequestKind};
use serde_json::Value;

const EMPTY_PAGES: u32 = 2;
const BULK: usize = 30;

fn python() -> PathBuf {
    let venv = std::env::var_os("KVFS_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kvfs/pyenv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup (it installs the Python SDK venv)",
        python.display()
    );
    python
}

fn require_loopback_only() {
    let others = kvfs::testing::non_loopback_interfaces();
    assert!(
        others.is_empty() || std::env::var_os("KVFS_TEST_ALLOW_NETWORK").is_some(),
        "run inside scripts/loopback-only (other interfaces here: {others:?})"
    );
}

/// Runs kv_sdk.py in `mode` with only the given environment; its stdout as JSON.
fn run_script(dir: &std::path::Path, mode: &str, args: &[&str], env: &[(&str, String)]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/kv_sdk.py");
    let stdout_path = dir.join(format!("{mode}.out"));
    let stderr_path = dir.join(format!("{mode}.err"));
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .arg(mode)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("python starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kv_sdk.py {mode} did not finish in 120 s: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "kv_sdk.py {mode}: {status}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_with_managed_and_workload_identity() {
    require_loopback_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let emu = Emulator::start(EmulatorConfig::new(dir.path().join("state")))
        .await
        .expect("emulator starts");
    let vault = emu.vault();
    for i in 0..BULK {
        vault.set_secret(&format!("bulk-{i:02}"), &format!("value-{i:02}"));
    }
    let v1 = vault.set_secret("Rotated", "first");
    let v2 = vault.set_secret("rotated", "second");
    vault.set_empty_pages(EMPTY_PAGES);
    let token_file = dir.path().join("federated-token");
    std::fs::write(&token_file, "eyJfederated.token.jwt\n").expect("token file");

    let common = [
        ("KVFS_VAULT_URL", emu.vault_url()),
        ("REQUESTS_CA_BUNDLE", emu.ca_path().display().to_string()),
    ];
    let managed_env = [
        ("KVFS_CLIENT_ID", "python-mi".to_owned()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_endpoint()),
    ];
    let workload_env = [
        ("KVFS_CLIENT_ID", "python-workload".to_owned()),
        ("AZURE_AUTHORITY_HOST", emu.authority_host()),
        ("AZURE_TENANT_ID", EMULATOR_TENANT_ID.to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
    ];
    let secrets = BULK + 1;
    let modes: [(&str, &[(&str, String)]); 2] =
        [("managed", &managed_env), ("workload", &workload_env)];
    for (mode, env) in modes {
        vault.reset_counters();
        let env: Vec<(&str, String)> = common.iter().chain(env.iter()).cloned().collect();
        let dir = dir.path().to_owned();
        let args = ["rotated".to_owned(), v1.clone()];
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_script(&dir, mode, &args, &env)
        })
        .await
        .expect("script task");

        let mut want: Vec<String> = (0..BULK).map(|i| format!("bulk-{i:02}")).collect();
        want.push("Rotated".into());
        assert_eq!(out["names"], serde_json::json!(want), "{mode}");
        let mut versions = vec![v1.clone(), v2.clone()];
        versions.sort();
        assert_eq!(out["versions"], serde_json::json!(versions), "{mode}");
        for i in 0..BULK {
            let name = format!("bulk-{i:02}");
            assert_eq!(out["values"][&name], format!("value-{i:02}"), "{mode}");
        }
        assert_eq!(out["values"]["Rotated"], "second", "{mode}");
        assert_eq!(out["pinned"]["name"], "Rotated", "{mode}");
        assert_eq!(out["pinned"]["version"], v1.as_str(), "{mode}");
        assert_eq!(out["pinned"]["value"], "first", "{mode}");
        let api_version = out["api_version"].as_str().unwrap_or_default();
        assert!(
            kvfs::emulator::API_VERSIONS.contains(&api_version),
            "{mode}: {api_version}"
        );

        let c = vault.counters();
        let pages = |items: u64| {
            let real = items.div_ceil(25).max(1);
            real * (u64::from(EMPTY_PAGES) + 1) + u64::from(EMPTY_PAGES)
        };
        // 31 secrets: 2 pages of items, each after 2 empty pages, then 2 trailing empty ones.
        assert_eq!(c.list_secrets, pages(secrets as u64), "{mode}: {c:?}");
        assert_eq!(c.list_versions, pages(2), "{mode}: {c:?}");
        assert_eq!(c.get_secret, secrets as u64 + 1, "{mode}: {c:?}");
        assert_eq!(c.challenges, 1, "{mode}: one challenge per client: {c:?}");
        let (imds, entra) = if mode == "managed" { (1, 0) } else { (0, 1) };
        assert_eq!(
            (c.imds_tokens, c.entra_tokens),
            (imds, entra),
            "{mode}: {c:?}"
        );
        let requests = vault.requests();
        let token_request = requests
            .iter()
            .find(|r| matches!(r.kind, RequestKind::ImdsToken | RequestKind::EntraToken))
            .expect("a token request");
        assert_eq!(token_request.status, 200, "{mode}");
        if mode == "managed" {
            assert!(
                token_request.query.contains("client_id=python-mi"),
                "{}",
                token_request.query
            );
        }
        let statuses: Vec<u16> = requests
            .iter()
            .filter(|r| r.status != 200)
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, [401], "{mode}: only the challenge fails");
    }
    emu.shutdown().await;
}
