//! `kvfs demo` and `kvfs emulator`: the bundled emulator on its own, or mounted with sample
//! secrets. Only with the `emulator` feature, so production builds carry none of it.

use url::Url;

use super::{Plan, RunError, Signals, runtime, serve, spawn_guard, stop};
use crate::auth::{AuthConfig, AuthMode};
use crate::cli::{DemoArgs, EmulatorArgs, NetworkArgs};
use crate::emulator::{Emulator, EmulatorConfig};

/// Starts the bundled emulator with sample secrets and mounts it: no Azure account needed.
pub fn demo(args: DemoArgs) -> Result<(), RunError> {
    // With these set, the Azure SDK sends managed-identity requests to App Service or Cloud
    // Shell endpoints, which the IMDS redirect does not cover: the demo would leave loopback.
    if let Some(var) = ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"]
        .into_iter()
        .find(|v| std::env::var_os(v).is_some())
    {
        return Err(RunError::Setup(format!(
            "the demo talks only to its bundled emulator, but {var} is set and would send token requests elsewhere; unset it"
        )));
    }
    // An existing path is left to the mountpoint check, which also clears a mount left stale
    // by a killed demo (whose stat fails, so "create if missing" would fail on it).
    if let Err(e) = std::fs::create_dir_all(&args.mountpoint)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(RunError::Mount {
            path: args.mountpoint.clone(),
            reason: format!("cannot create it: {e}"),
        });
    }
    let guard = spawn_guard(&args.mountpoint, !args.options.no_sandbox)?;
    let runtime = runtime()?;
    let state = tempfile::Builder::new()
        .prefix("kvfs-demo-")
        .tempdir()
        .map_err(|e| RunError::Emulator(format!("cannot create a state directory: {e}")))?;
    // Removed at exit, under the sandbox: its files, not the (empty) directory itself, whose
    // removal would need a right over all of the temporary directory.
    crate::sandbox::writable_beneath(state.path());
    let emulator = runtime
        .block_on(Emulator::start(EmulatorConfig::new(state.path())))
        .map_err(|e| RunError::Emulator(e.to_string()))?;
    emulator.vault().load_samples();
    let vault_url =
        Url::parse(&emulator.vault_url()).map_err(|e| RunError::Emulator(e.to_string()))?;
    let plan = Plan {
        guard,
        mountpoint: args.mountpoint,
        vaults: vec![vault_url.clone()],
        vault_url,
        auth: AuthConfig {
            mode: AuthMode::ManagedIdentity,
            user_assigned: None,
            federated_token_file_set: false,
        },
        network: NetworkArgs {
            ca_file: Some(emulator.ca_path().to_owned()),
            imds_endpoint: Some(
                Url::parse(&emulator.imds_endpoint())
                    .map_err(|e| RunError::Emulator(e.to_string()))?,
            ),
            disable_challenge_resource_verification: true,
        },
        options: args.options,
    };
    eprintln!(
        "kvfs demo: sample vault at {} (emulator), mounting on {}\n  try: ls {m} && cat {m}/db-password\n  Ctrl-C unmounts",
        emulator.vault_url(),
        plan.mountpoint.display(),
        m = plan.mountpoint.display()
    );
    let result = serve(&runtime, plan);
    runtime.block_on(emulator.shutdown());
    stop(runtime);
    result
}

/// Runs the emulator alone until SIGTERM/SIGINT.
pub fn emulator(args: EmulatorArgs) -> Result<(), RunError> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut config = EmulatorConfig::new(&args.state_dir);
        config.vault_port = args.port;
        config.imds_port = args.imds_port;
        config.seed = args.seed.clone();
        let emulator = Emulator::start(config)
            .await
            .map_err(|e| RunError::Emulator(e.to_string()))?;
        if args.seed.is_none() {
            emulator.vault().load_samples();
        }
        println!("vault:     {}", emulator.vault_url());
        println!("imds:      {}", emulator.imds_endpoint());
        println!("authority: {}", emulator.authority_host());
        println!("ca:        {}", emulator.ca_path().display());
        shutdown_signal().await;
        emulator.shutdown().await;
        Ok(())
    })
}

/// Resolves at the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    Signals::new().recv().await;
}
