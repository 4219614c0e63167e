//! Identity selection and the startup check: which endpoint a token comes from, and what a
//! failing start says (cause and fix), within the request timeout.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestEnv};
use kvfs::emulator::{Fault, FaultAction, RequestKind};

/// Runs a mount that must fail its startup check; returns (stderr, elapsed).
fn failing_start(mut cmd: Command) -> (String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_with_deadline(&mut child, Duration::from_secs(20));
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "startup should fail; stderr: {stderr}");
    (stderr, elapsed)
}

#[test]
fn identity_not_assigned_names_cause_and_fix() {
    let env = TestEnv::start();
    env.vault().set_identity_assigned(false);
    let (stderr, elapsed) =
        failing_start(env.command(&env.mountpoint("m"), &["--request-timeout", "3s"]));
    assert!(
        stderr.contains("no managed identity is assigned"),
        "{stderr}"
    );
    assert!(stderr.contains("--client-id"), "{stderr}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
}

#[test]
fn missing_role_names_the_role() {
    let env = TestEnv::start();
    env.vault().set_rbac_allowed(false);
    let (stderr, _) = failing_start(env.command(&env.mountpoint("m"), &[]));
    assert!(stderr.contains("Key Vault Secrets User"), "{stderr}");
}

#[test]
fn unreachable_vault_names_the_url() {
    let env = TestEnv::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cmd = common::kvfs_command();
    cmd.arg("mount")
        .arg(env.mountpoint("m"))
        .args(["--vault-url", &format!("https://127.0.0.1:{port}/")])
        .args(["--imds-endpoint", &env.emulator().imds_endpoint()])
        .args([
            "--disable-challenge-resource-verification",
            "--request-timeout",
            "3s",
        ]);
    let (stderr, elapsed) = failing_start(cmd);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
}

#[test]
fn untrusted_certificate_names_ca_file() {
    let env = TestEnv::start();
    let mut cmd = common::kvfs_command();
    cmd.arg("mount")
        .arg(env.mountpoint("m"))
        .args(["--vault-url", &env.emulator().vault_url()])
        .args(["--imds-endpoint", &env.emulator().imds_endpoint()])
        .args(["--disable-challenge-resource-verification"]);
    let (stderr, _) = failing_start(cmd);
    assert!(
        stderr.contains("not trusted") && stderr.contains("--ca-file"),
        "{stderr}"
    );
}

#[test]
fn silent_identity_endpoint_is_bounded_by_request_timeout() {
    let env = TestEnv::start();
    env.vault().add_fault(Fault {
        kind: Some(RequestKind::ImdsToken),
        name: None,
        action: FaultAction::Hang,
        times: None,
    });
    let (stderr, elapsed) =
        failing_start(env.command(&env.mountpoint("m"), &["--request-timeout", "2s"]));
    assert!(
        stderr.contains("no token from the managed identity endpoint"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn a_slow_startup_check_says_what_it_waits_for() {
    let env = TestEnv::start();
    env.vault().add_fault(Fault {
        kind: Some(RequestKind::ImdsToken),
        name: None,
        action: FaultAction::Hang,
        times: None,
    });
    let (stderr, _) =
        failing_start(env.command(&env.mountpoint("m"), &["--request-timeout", "5s"]));
    assert!(
        stderr.contains("startup check: waiting for a token from the identity endpoint"),
        "a progress line while it waits: {stderr}"
    );
}

#[test]
fn an_emulator_without_the_challenge_flag_names_the_flag() {
    let env = TestEnv::start();
    let e = env.emulator();
    let mut cmd = common::kvfs_command();
    cmd.arg("mount")
        .arg(env.mountpoint("m"))
        .args(["--vault-url", &e.vault_url()])
        .args(["--ca-file", &e.ca_path().display().to_string()])
        .args(["--imds-endpoint", &e.imds_endpoint()]);
    let (stderr, _) = failing_start(cmd);
    assert!(
        stderr.contains("--disable-challenge-resource-verification"),
        "the fix in kvfs's terms: {stderr}"
    );
}

#[test]
fn azure_cli_missing_says_install_it() {
    let env = TestEnv::start();
    let empty = env.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = env.command(&env.mountpoint("m"), &["--auth", "azure-cli"]);
    cmd.env("PATH", &empty);
    let (stderr, _) = failing_start(cmd);
    assert!(stderr.contains("install the Azure CLI"), "{stderr}");
}

fn imds_queries(env: &TestEnv) -> Vec<String> {
    env.vault()
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::ImdsToken)
        .map(|r| r.query)
        .collect()
}

#[test]
fn user_assigned_ids_reach_imds() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "v");
    for (flag, param) in [
        ("--client-id", "client_id=id-by-flag"),
        ("--object-id", "object_id=id-by-flag"),
        ("--resource-id", "msi_res_id=id-by-flag"),
    ] {
        env.vault().reset_counters();
        let path = env.mountpoint(&flag[2..]);
        let m = Mount::start(env.command(&path, &[flag, "id-by-flag"]), path);
        assert_eq!(m.read("s").unwrap(), b"v");
        let queries = imds_queries(&env);
        assert!(
            !queries.is_empty() && queries.iter().all(|q| q.contains(param)),
            "{flag}: {queries:?}"
        );
    }
}

#[test]
fn azure_client_id_selects_a_user_assigned_identity() {
    let env = TestEnv::start();
    let path = env.mountpoint("m");
    let mut cmd = env.command(&path, &[]);
    cmd.env("AZURE_CLIENT_ID", "from-env");
    let _m = Mount::start(cmd, path);
    let queries = imds_queries(&env);
    assert!(
        !queries.is_empty() && queries.iter().all(|q| q.contains("client_id=from-env")),
        "{queries:?}"
    );
}

#[test]
fn conflicting_user_assigned_ids_are_rejected() {
    let env = TestEnv::start();
    let out = env
        .command(
            &env.mountpoint("m"),
            &["--client-id", "a", "--object-id", "b"],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--client-id") && stderr.contains("--object-id"),
        "{stderr}"
    );
}

#[test]
fn workload_identity_exchanges_the_federated_token() {
    let env = TestEnv::start();
    env.vault().set_secret("s", "from-workload-identity");
    let token = env.dir.path().join("token");
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.sig\n",
    )
    .unwrap();
    let path = env.mountpoint("m");
    let mut cmd = env.command(&path, &[]);
    cmd.env("AZURE_FEDERATED_TOKEN_FILE", &token)
        .env("AZURE_CLIENT_ID", "00000000-0000-0000-0000-0000000000aa")
        .env("AZURE_TENANT_ID", kvfs::emulator::EMULATOR_TENANT_ID)
        .env("AZURE_AUTHORITY_HOST", env.emulator().authority_host());
    let m = Mount::start(cmd, path);
    assert_eq!(m.read("s").unwrap(), b"from-workload-identity");
    let c = env.counters();
    assert!(c.entra_tokens >= 1, "{c:?}");
    assert_eq!(c.imds_tokens, 0, "auto picked workload identity: {c:?}");
}
