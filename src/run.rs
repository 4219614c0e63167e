//! From parsed flags to a served mount: build the transport, credential, store and cache;
//! check that a token can be had and the vault listed; clean a stale mountpoint; mount; wait
//! for SIGTERM/SIGINT (or an external unmount); unmount.
//!
//! Shutdown never fails on files held open: the mount is detached lazily (MNT_DETACH, by the
//! unmount guard forked before the mount: kvfs itself, under Landlock, may not), so the
//! mountpoint is free at once and nothing stale is left, while holders of open files or of a
//! cwd inside keep being answered for `--shutdown-grace`. The session ends when the last holder
//! lets go, when the grace ends, or at a second signal; the process then exits, and closing
//! /dev/fuse ends the kernel's connection (holders get ENOTCONN).

use std::io;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use fuser::{Config as FuseConfig, MountOption, SessionACL};
use tokio::signal::unix::{Signal, SignalKind, signal};
use url::Url;

use crate::access::AccessRules;
use crate::audit::AuditLog;
use crate::auth::{self, AuthConfig, AuthMode, RenewableCredential, UserAssigned};
use crate::cache::{CacheConfig, SecretCache};
use crate::cli::{IdentityArgs, MountArgs, MountOptions, NetworkArgs};
use crate::error::{Forbidden, StoreError};
use crate::forest::{Forest, Tree};
use crate::fs::{FsConfig, SecretFs, ViewRules};
use crate::fuse::{FuseAdapter, KernelInvalidator};
use crate::handoff::{self, relay::Relay};
use crate::metrics;
use crate::notify;
use crate::refresh;
use crate::store::keyvault::{KeyVaultConfig, KeyVaultStore, classify};
use crate::store::{RetryPolicy, RetryStore, SecretStore};
use crate::transport::budget::RequestBudget;
use crate::transport::{self, TransportConfig};
use crate::unmount_guard::UnmountGuard;

#[cfg(feature = "emulator")]
mod demo;
#[cfg(feature = "emulator")]
pub use demo::{demo, emulator};

/// Kernel TTL for names and attributes: long, because changes reach the kernel as explicit
/// invalidations (refresh) and an inode is one version whose attributes never change.
const KERNEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why kvfs stopped. The message names the cause and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error("startup check failed: {0}")]
    Startup(String),
    #[error("cannot mount {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    #[error("emulator: {0}")]
    Emulator(String),
    #[error("cannot take the mount over: {0}")]
    Takeover(String),
}

/// Everything a mount needs, whichever command built it.
struct Plan {
    /// Detaches the mount at shutdown, or when kvfs dies (see `unmount_guard`).
    guard: UnmountGuard,
    mountpoint: PathBuf,
    /// The first vault (messages name it); `vaults` holds every one, this one first.
    vault_url: Url,
    vaults: Vec<Url>,
    auth: AuthConfig,
    network: NetworkArgs,
    options: MountOptions,
}

pub fn mount(args: MountArgs) -> Result<(), RunError> {
    if !args.options.no_sandbox {
        // Before any thread exists, so that every thread inherits the smaller sets.
        if let Err(e) = crate::sandbox::drop_capabilities() {
            tracing::warn!(error = %e, "kvfs keeps its capabilities");
        }
    }
    // Still one thread, and nothing fetched yet: the guard's copy of memory holds no secret.
    let guard = spawn_guard(&args.mountpoint, !args.options.no_sandbox)?;
    let runtime = runtime()?;
    let auth = auth_config(&args.identity);
    let plan = Plan {
        guard,
        mountpoint: args.mountpoint,
        vault_url: args.vault_url[0].clone(),
        vaults: args.vault_url,
        auth,
        network: args.network,
        options: args.options,
    };
    if let Some(endpoint) = &plan.network.imds_endpoint {
        tracing::warn!(%endpoint, "managed identity token requests are redirected (AZURE_POD_IDENTITY_AUTHORITY_HOST / --imds-endpoint)");
    }
    let result = serve(&runtime, plan);
    stop(runtime);
    result
}

/// Forks the unmount guard: kvfs, confined by Landlock once mounted, cannot unmount itself.
fn spawn_guard(mountpoint: &Path, sandbox: bool) -> Result<UnmountGuard, RunError> {
    UnmountGuard::spawn(mountpoint, sandbox)
        .map_err(|e| RunError::Setup(format!("cannot start the unmount guard: {e}")))
}

/// Stops the runtime without waiting on a blocking task stuck in the kernel (an invalidation
/// of a mount whose connection is ending).
fn stop(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_timeout(Duration::from_secs(1));
}

fn runtime() -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kvfs-io")
        .enable_all()
        .build()
        .map_err(|e| RunError::Setup(format!("cannot start the async runtime: {e}")))
}

fn auth_config(args: &IdentityArgs) -> AuthConfig {
    let user_assigned = match (&args.client_id, &args.object_id, &args.resource_id) {
        (Some(id), _, _) => Some(UserAssigned::ClientId(id.clone())),
        (_, Some(id), _) => Some(UserAssigned::ObjectId(id.clone())),
        (_, _, Some(id)) => Some(UserAssigned::ResourceId(id.clone())),
        // As the Azure SDKs do, AZURE_CLIENT_ID names a user-assigned managed identity.
        (None, None, None) if args.auth != AuthMode::WorkloadIdentity => {
            std::env::var("AZURE_CLIENT_ID")
                .ok()
                .filter(|id| !id.is_empty())
                .map(UserAssigned::ClientId)
        }
        (None, None, None) => None,
    };
    AuthConfig {
        mode: args.auth,
        user_assigned,
        federated_token_file_set: std::env::var_os("AZURE_FEDERATED_TOKEN_FILE")
            .is_some_and(|v| !v.is_empty()),
    }
}

fn serve(runtime: &tokio::runtime::Runtime, plan: Plan) -> Result<(), RunError> {
    let o = &plan.options;
    metrics::init(o.metrics_per_secret);
    // One transport per vault: each has its own request budget.
    let transport_for = |vault: &Url| {
        transport::build(&TransportConfig {
            ca_file: plan.network.ca_file.clone(),
            imds_endpoint: plan.network.imds_endpoint.clone(),
            connect_timeout: o.request_timeout.min(Duration::from_secs(5)),
            request_timeout: o.request_timeout,
            budget: Some(Arc::new(RequestBudget::new(
                vault,
                o.max_request_rate,
                o.max_request_burst,
                o.request_timeout,
            ))),
        })
        .map_err(|e| RunError::Setup(e.to_string()))
    };
    let transport = transport_for(&plan.vault_url)?;
    let credential = Arc::new(
        RenewableCredential::new(&plan.auth, &transport)
            .map_err(|e| RunError::Setup(e.to_string()))?,
    );
    let mut caches = Vec::new();
    for (i, vault) in plan.vaults.iter().enumerate() {
        let transport = if i == 0 {
            transport.clone()
        } else {
            transport_for(vault)?
        };
        caches.push(vault_cache(&plan, vault, credential.clone(), &transport)?);
    }
    // A live kvfs on this mountpoint is taken over, not refused: its socket is asked once
    // this kvfs is ready to serve, so that its readers wait as briefly as possible.
    let control = control_socket(&plan);
    // Under systemd, `systemctl restart` leaves the connection in the service's fd store.
    let stored = (!o.no_handoff)
        .then(handoff::from_store)
        .transpose()
        .map(Option::flatten)
        .map_err(|e| RunError::Takeover(format!("the state in systemd's fd store: {e}")))?;
    let may_take_over = stored.is_some() || control.as_deref().is_some_and(Path::exists);
    if !may_take_over {
        // The mountpoint first: it is checked locally, the startup check costs requests.
        prepare_mountpoint(&plan)?;
        start_metrics(runtime, &plan)?;
    }
    let access = AccessRules::new(&o.owner, &o.include, &o.exclude).map_err(RunError::Setup)?;
    let views = ViewRules::new(&o.decode, &o.json_keys, &o.alias, o.name_map, &o.env_file)
        .map_err(RunError::Setup)?;
    let audit = o
        .audit_log
        .as_ref()
        .map(AuditLog::start)
        .transpose()
        .map_err(|e| RunError::Setup(format!("cannot open the audit log: {e}")))?;
    if !o.no_startup_check {
        for (vault, cache) in plan.vaults.iter().zip(&caches) {
            runtime
                .block_on(startup_check(&plan, vault, credential.as_ref(), cache))
                .map_err(RunError::Startup)?;
        }
    }
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let uid = o.uid.unwrap_or_else(|| unsafe { libc::geteuid() });
    // SAFETY: as above.
    let gid = o.gid.unwrap_or_else(|| unsafe { libc::getegid() });
    let settings = settings(&plan, uid, gid, audit.is_some() || o.allow_root);
    let config = FsConfig {
        uid,
        gid,
        file_mode: o.file_mode,
        dir_mode: o.dir_mode,
        rotation: o.rotation,
        entry_ttl: KERNEL_TTL,
        // In place, an inode's size changes with the version: the refresh invalidates the
        // attributes when it swaps the version in.
        attr_ttl: KERNEL_TTL,
        negative_ttl: o.negative_ttl,
        request_timeout: o.request_timeout,
    };
    let cores: Vec<Arc<SecretFs>> = caches
        .into_iter()
        .map(|cache| {
            Arc::new(
                SecretFs::new(cache, runtime.handle().clone(), config.clone())
                    .with_access(access.clone())
                    .with_views(views.clone()),
            )
        })
        .collect();
    let fs = Arc::new(if cores.len() == 1 {
        Tree::Vault(cores[0].clone())
    } else {
        let names = vault_dir_names(&plan.vaults).map_err(RunError::Setup)?;
        Tree::Vaults(Forest::new(
            names.into_iter().zip(cores.iter().cloned()).collect(),
        ))
    });
    let fsname = format!("kvfs:{}", plan.vault_url.host_str().unwrap_or("vault"));
    let mut config = FuseConfig::default();
    config.mount_options = vec![
        MountOption::FSName(fsname.clone()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.acl = match (o.allow_other, o.allow_root) {
        (true, _) => SessionACL::All,
        (false, true) => SessionACL::RootAndOwner,
        (false, false) => SessionACL::Owner,
    };
    config.n_threads = Some(usize::from(o.threads));
    let mount_error = |e: io::Error| RunError::Mount {
        path: plan.mountpoint.clone(),
        reason: e.to_string(),
    };
    let adapter = FuseAdapter::new(fs.clone())
        .with_audit(audit)
        .with_every_open(o.allow_root);
    // Before the mount or the takeover: from then on a SIGTERM must unmount or hand back,
    // never kill kvfs with the connection in its hands.
    let mut signals = {
        let _runtime = runtime.enter();
        runtime.spawn(crate::logs::follow_signals());
        Signals::new()
    };
    let takeover = match (&control, may_take_over) {
        _ if stored.is_some() => stored,
        (Some(path), true) => {
            // The serving kvfs drains for up to its request timeout before it answers.
            let wait = 2 * o.request_timeout + Duration::from_secs(10);
            let mounted = crate::mountpoint::kvfs_mounted_at(&plan.mountpoint);
            let takeover = handoff::take_over(path, mounted, settings.clone(), wait)
                .map_err(|e| RunError::Takeover(e.to_string()))?;
            if takeover.is_none() {
                // A socket left by a kvfs that is gone: mount as usual.
                prepare_mountpoint(&plan)?;
                start_metrics(runtime, &plan)?;
            }
            takeover
        }
        _ => None,
    };
    let threads = usize::from(o.threads);
    let (session, relay, predecessor) = match takeover {
        Some(takeover) => {
            let handoff::Takeover { offer, device, .. } = &takeover;
            tracing::info!(
                predecessor = offer.pid,
                nodes = offer.fs.nodes.len(),
                handles = offer.fs.handles.len(),
                drain_us = offer.drain_micros,
                "taking the mount over"
            );
            let device = device.try_clone().map_err(mount_error)?;
            let init = offer.init.clone();
            let predecessor = offer.pid;
            let mut takeover = takeover;
            fs.restore(std::mem::take(&mut takeover.offer.fs))
                .map_err(RunError::Takeover)?;
            // Paused: this kvfs reads the device only once the predecessor has stopped.
            let (relay, theirs) = Relay::start(device, Some(init), threads, true)
                .map_err(|e| RunError::Takeover(e.to_string()))?;
            let session = fuser::Session::from_fd(adapter, theirs, config.acl, config.clone())
                .map_err(|e| RunError::Takeover(e.to_string()))?;
            (session, Some(relay), Some((takeover, predecessor)))
        }
        None => {
            let device = if o.no_handoff {
                None
            } else {
                handoff::mount_device(&plan.mountpoint, &fsname, config.acl != SessionACL::Owner)
                    .map_err(mount_error)?
            };
            match device {
                Some(device) => {
                    let (relay, theirs) =
                        Relay::start(device, None, threads, false).map_err(mount_error)?;
                    let session =
                        fuser::Session::from_fd(adapter, theirs, config.acl, config.clone())
                            .inspect_err(|_| {
                                let _ = plan.guard.detach();
                            })
                            .map_err(mount_error)?;
                    (session, Some(relay), None)
                }
                // Not root: fusermount3 mounts, and fuser reads the device it returns. Such a
                // mount cannot be handed over.
                None => (
                    fuser::Session::new(adapter, &plan.mountpoint, &config).map_err(mount_error)?,
                    None,
                    None,
                ),
            }
        }
    };
    let relay = relay.map(Arc::new);
    fs.set_invalidator(Arc::new(KernelInvalidator(session.notifier())));
    // fuser's `Mount`, when dropped, unmounts the mountpoint by path while its connection is
    // alive. After the lazy detach below, that path may already hold a new kvfs's mount, so
    // the session is never dropped: the process exits instead, which closes /dev/fuse.
    let session = ManuallyDrop::new(session.spawn().map_err(mount_error)?);
    let predecessor = if let Some((takeover, predecessor)) = predecessor {
        takeover
            .confirm()
            .map_err(|e| RunError::Takeover(format!("the serving kvfs did not let go: {e}")))?;
        if let Some(relay) = &relay {
            relay.resume();
        }
        tracing::info!(predecessor, "took the mount over; serving");
        Some(predecessor)
    } else {
        None
    };
    // At once: the next kvfs started on this mountpoint must find this one's socket.
    let handed_over = match (&relay, &control) {
        (Some(relay), Some(path)) => handoff::offer_on(
            path,
            settings,
            fs.clone(),
            relay.clone(),
            o.request_timeout + Duration::from_secs(2),
        )
        .inspect(|_| {
            // Removed at shutdown, under the sandbox.
            if let Some(dir) = path.parent() {
                crate::sandbox::removable_in(dir);
            }
        })
        .inspect_err(|e| {
            tracing::warn!(socket = %path.display(), error = %e, "no control socket: upgrades will restart the mount");
        })
        .ok(),
        _ => None,
    };
    if let Some(predecessor) = predecessor {
        wait_for_exit(predecessor, Duration::from_secs(5));
        start_metrics(runtime, &plan)?;
    }
    let fd_store = handoff::fd_store_enabled(o.systemd_fd_store) && relay.is_some();
    if let Some(relay) = relay.as_deref().filter(|_| fd_store) {
        match handoff::store_device(relay) {
            Ok(()) => tracing::info!("FUSE connection in systemd's fd store: a restart keeps it"),
            Err(e) => tracing::warn!(error = %e, "cannot store the FUSE connection with systemd"),
        }
    }
    if let Err(e) = plan.guard.arm() {
        tracing::warn!(error = %e, "the unmount guard is gone: a killed kvfs would leave its mount stale");
    }
    let _pid_file = crate::mountpoint::PidFile::write(&plan.mountpoint);
    metrics::set_mounted(true);
    let period = refresh::period_for(o.cache_ttl);
    // One refresher per vault: a vault's outage holds up no other's refresh.
    let refreshers: Vec<_> = cores
        .iter()
        .map(|core| {
            let refreshed = core.clone();
            runtime.spawn(refresh::supervise("refresh", move || {
                refresh::run(refreshed.clone(), period)
            }))
        })
        .collect();
    let token_keeper = runtime.spawn(refresh::keep_token_warm(credential, o.request_timeout));
    let status = format!(
        "serving {} on {}",
        plan.vault_url,
        plan.mountpoint.display()
    );
    let readiness = notify::announce_ready(runtime, &plan.mountpoint, &status, o.request_timeout)
        .map_err(|e| {
        let _ = plan.guard.detach();
        mount_error(e)
    })?;
    let handed_over_offered = handed_over.is_some();
    let handed_over = async {
        match handed_over {
            Some(rx) => rx.await.ok(),
            None => std::future::pending().await,
        }
    };
    crate::sandbox::after_mount(
        o.no_sandbox,
        plan.auth.resolved_mode() == AuthMode::AzureCli,
    );
    tracing::info!(mountpoint = %plan.mountpoint.display(), vault = %plan.vault_url, "mounted");
    let session_ended = || async {
        while !session.guard.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    enum Stop {
        Signal,
        UnmountedOutside,
        HandedOver,
    }
    let stop = runtime.block_on(async {
        tokio::select! {
            () = signals.recv() => Stop::Signal,
            () = session_ended() => Stop::UnmountedOutside,
            Some(done) = handed_over => {
                tracing::info!(successor = done.successor, drain = ?done.drain, "the new kvfs serves the mount");
                Stop::HandedOver
            }
        }
    });
    if let (Stop::HandedOver, Some(relay)) = (&stop, &relay) {
        // The successor serves the mount: the guard must not unmount it when this kvfs exits.
        plan.guard.release();
        refreshers.iter().for_each(|r| r.abort());
        token_keeper.abort();
        if let Err(e) = relay.abandon() {
            tracing::warn!(error = %e, "cannot let go of the FUSE device");
        }
        if o.linger_after_handoff {
            tracing::info!("--linger-after-handoff: serving nothing until SIGTERM");
            runtime.block_on(signals.recv());
        }
        // No unmount, no destructor: the successor holds the connection.
        tracing::info!("exiting without unmounting");
        std::process::exit(0);
    }
    let unmounted_outside = matches!(stop, Stop::UnmountedOutside);
    if let Some(path) = control.as_deref().filter(|_| handed_over_offered) {
        handoff::withdraw(path);
    }
    if !unmounted_outside
        && fd_store
        && let Some(relay) = &relay
    {
        // Under systemd with a fd store a SIGTERM may be a restart: leave the connection
        // and the state with systemd. A plain stop unmounts in the unit's ExecStopPost.
        match handoff::store_state(&fs, relay, o.request_timeout + Duration::from_secs(2)) {
            Ok(drain) => {
                plan.guard.release();
                tracing::info!(
                    ?drain,
                    "state in systemd's fd store; exiting without unmounting"
                );
                std::process::exit(0);
            }
            Err(e) => tracing::warn!(error = %e, "cannot leave the state with systemd; unmounting"),
        }
    }
    readiness.stopping();
    refreshers.iter().for_each(|r| r.abort());
    metrics::set_mounted(false);
    if unmounted_outside {
        token_keeper.abort();
        tracing::info!("unmounted from outside; exiting");
        // Nothing left to detach, and the path may soon hold another mount.
        plan.guard.release();
        return ManuallyDrop::into_inner(session)
            .join()
            .map_err(mount_error);
    }
    tracing::info!("signal received; detaching the mount");
    plan.guard.detach().map_err(|e| RunError::Mount {
        path: plan.mountpoint.clone(),
        reason: format!("cannot detach it: {e}"),
    })?;
    let grace = o.shutdown_grace;
    let outcome = runtime.block_on(async {
        tokio::select! {
            () = session_ended() => "no file is held open any more",
            () = tokio::time::sleep(grace) => "the shutdown grace ended",
            () = signals.recv() => "a second signal",
        }
    });
    token_keeper.abort();
    tracing::info!(?grace, "mount detached; exiting: {outcome}");
    Ok(())
}

fn prepare_mountpoint(plan: &Plan) -> Result<(), RunError> {
    crate::mountpoint::prepare(&plan.mountpoint).map_err(|e| RunError::Mount {
        path: plan.mountpoint.clone(),
        reason: e.to_string(),
    })
}

fn start_metrics(runtime: &tokio::runtime::Runtime, plan: &Plan) -> Result<(), RunError> {
    let o = &plan.options;
    let Some(addr) = o.metrics_addr else {
        return Ok(());
    };
    runtime
        .block_on(metrics::serve(metrics::ServerConfig {
            addr,
            mountpoint: plan.mountpoint.clone(),
            // Refresh asks Key Vault at least once per period while secrets are in use, and
            // a failing request reports within the request timeout.
            ready_window: 2 * refresh::period_for(o.cache_ttl).max(o.request_timeout),
        }))
        .map(drop)
        .map_err(|e| RunError::Setup(e.to_string()))
}

/// The control socket of this mount: `--control-socket`, else one per mountpoint under
/// /run/kvfs. Only root mounts can be handed over (the mount is made with the device kvfs
/// holds).
fn control_socket(plan: &Plan) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() || plan.options.no_handoff {
        return None;
    }
    plan.options
        .control_socket
        .clone()
        .or_else(|| handoff::default_socket(&plan.mountpoint))
}

/// What a successor must share with this kvfs to take its connection over.
fn settings(plan: &Plan, uid: u32, gid: u32, every_open: bool) -> handoff::control::Settings {
    let o = &plan.options;
    let access = match (o.allow_other, o.allow_root) {
        (true, _) => "all",
        (false, true) => "root-and-owner",
        (false, false) => "owner",
    };
    handoff::control::Settings {
        vault: plan
            .vaults
            .iter()
            .map(Url::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        rotation: clap::ValueEnum::to_possible_value(&o.rotation)
            .map_or_else(|| format!("{:?}", o.rotation), |v| v.get_name().to_owned()),
        access: access.to_owned(),
        every_open,
        uid,
        gid,
        file_mode: o.file_mode,
        dir_mode: o.dir_mode,
        owner_rules: o.owner.iter().map(|r| format!("{r:?}")).collect(),
        include: o.include.clone(),
        exclude: o.exclude.clone(),
        views: view_flags(o),
    }
}

/// One vault's store, behind retries and the cache.
fn vault_cache(
    plan: &Plan,
    vault: &Url,
    credential: Arc<RenewableCredential>,
    transport: &azure_core::http::Transport,
) -> Result<SecretCache, RunError> {
    let o = &plan.options;
    let store = KeyVaultStore::new(
        &KeyVaultConfig {
            vault_url: vault.to_string(),
            verify_challenge_resource: !plan.network.disable_challenge_resource_verification,
        },
        credential,
        transport,
    )
    .map_err(|e| RunError::Setup(e.to_string()))?;
    // Retries end before the request timeout, so a failure reports its cause, not a timeout.
    let store = RetryStore::new(
        Arc::new(store),
        RetryPolicy {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            budget: o.request_timeout.mul_f64(0.7),
        },
    );
    Ok(SecretCache::new(
        Arc::new(store),
        CacheConfig {
            capacity: o.cache_capacity,
            max_bytes: o.cache_max_bytes,
            ttl: o.cache_ttl,
            negative_ttl: o.negative_ttl,
            list_ttl: o.list_ttl,
            max_stale: o.max_stale,
            request_timeout: o.request_timeout,
        },
    ))
}

/// Directory names of several vaults: a Key Vault host's vault name (`myvault` of
/// myvault.vault.azure.net), else the host, with `-PORT` when the URL names a port.
fn vault_dir_names(vaults: &[Url]) -> Result<Vec<String>, String> {
    let names: Vec<String> = vaults
        .iter()
        .map(|url| {
            let host = url.host_str().unwrap_or("vault");
            let name = match host.split_once('.') {
                Some((label, _)) if is_key_vault_host(host) => label.to_owned(),
                _ => host.to_owned(),
            };
            match url.port() {
                Some(port) => format!("{name}-{port}"),
                None => name,
            }
        })
        .collect();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(format!(
                "--vault-url: two vaults would share the directory {name:?}"
            ));
        }
    }
    Ok(names)
}

/// The view flags, as a successor must repeat them: they decide what existing inodes show.
fn view_flags(o: &crate::cli::MountOptions) -> Vec<String> {
    let mut flags = Vec::new();
    for r in &o.decode {
        flags.push(format!("--decode {}={:?}", r.glob, r.decoding));
    }
    for g in &o.json_keys {
        flags.push(format!("--json-keys {g}"));
    }
    for a in &o.alias {
        flags.push(format!("--alias {}={}", a.file_name, a.secret.as_str()));
    }
    if let Some(map) = o.name_map {
        flags.push(format!("--name-map {map:?}"));
    }
    for g in &o.env_file {
        flags.push(format!("--env-file {g}"));
    }
    flags
}

/// Waits (bounded) until the process `pid` is gone, so that what it held (the metrics port,
/// the control socket's path) is free.
fn wait_for_exit(pid: u32, limit: Duration) {
    let started = std::time::Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM and SIGINT, registered once so that a second signal is not lost.
struct Signals(Option<(Signal, Signal)>);

impl Signals {
    fn new() -> Self {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM/SIGINT; kvfs stops only when unmounted");
                Self(None)
            }
        }
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers the process cannot shut down cleanly: wait forever rather
            // than unmount at once.
            None => std::future::pending::<()>().await,
        }
    }
}

/// Gets a token and lists the vault once, within the request timeout, so that a missing
/// identity, role or route fails now with its fix, not later as EIO in an application.
async fn startup_check(
    plan: &Plan,
    vault: &Url,
    credential: &dyn TokenCredential,
    cache: &SecretCache,
) -> Result<(), String> {
    let limit = plan.options.request_timeout;
    let mode = plan.auth.resolved_mode();
    let token = tokio::time::timeout(
        limit,
        with_progress(
            credential.get_token(&[auth::KEY_VAULT_SCOPE], None),
            "waiting for a token from the identity endpoint",
            limit,
        ),
    )
    .await;
    match token {
        Err(_) => return Err(token_timeout(mode, limit)),
        Ok(Err(e)) => return Err(explain_token(mode, &classify(e))),
        Ok(Ok(_)) => {}
    }
    let listing = with_progress(
        cache.list(),
        "waiting for the vault to answer a listing",
        limit,
    );
    match tokio::time::timeout(limit, listing).await {
        Err(_) => Err(explain_vault(plan, vault, &StoreError::Timeout(limit))),
        Ok(Err(e)) => Err(explain_vault(plan, vault, &e)),
        Ok(Ok(listing)) => {
            tracing::info!(secrets = listing.len(), %vault, "startup check passed");
            Ok(())
        }
    }
}

fn token_timeout(mode: AuthMode, limit: Duration) -> String {
    match mode {
        AuthMode::ManagedIdentity | AuthMode::Auto => format!(
            "no token from the managed identity endpoint (IMDS, 169.254.169.254) within {limit:?} (--request-timeout). \
             Fix: run on an Azure VM or AKS node with a managed identity, or use --auth workload-identity / azure-cli"
        ),
        AuthMode::WorkloadIdentity => format!(
            "no token from Entra ID within {limit:?} (--request-timeout). Fix: check egress to AZURE_AUTHORITY_HOST (login.microsoftonline.com)"
        ),
        AuthMode::AzureCli if !az_installed() => INSTALL_AZ.to_owned(),
        AuthMode::AzureCli => {
            format!("the Azure CLI gave no token within {limit:?}. Fix: run `az login`")
        }
    }
}

/// Runs `fut`, saying every few seconds what the startup check is waiting for, so that a
/// silent endpoint does not look like a hung kvfs.
async fn with_progress<T>(
    fut: impl std::future::Future<Output = T>,
    what: &str,
    limit: Duration,
) -> T {
    const EVERY: Duration = Duration::from_secs(2);
    tokio::pin!(fut);
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            out = &mut fut => return out,
            () = tokio::time::sleep(EVERY) => {
                tracing::info!(
                    waited = ?started.elapsed(),
                    gives_up_after = ?limit,
                    "startup check: {what} (--request-timeout)"
                );
            }
        }
    }
}

/// Whether the Azure CLI is on the PATH.
fn az_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("az").is_file()))
}

const INSTALL_AZ: &str = "the Azure CLI (`az`) is not installed or not on the PATH. Fix: install the Azure CLI, run `az login`, then start kvfs again";

fn explain_token(mode: AuthMode, err: &StoreError) -> String {
    if mode == AuthMode::AzureCli && !az_installed() {
        return INSTALL_AZ.to_owned();
    }
    let detail = err.to_string();
    match (mode, err) {
        (
            AuthMode::ManagedIdentity | AuthMode::Auto,
            StoreError::Credential {
                status: Some(400), ..
            },
        ) => format!(
            "no managed identity is assigned (IMDS answered 400: {detail}). Fix: enable the system-assigned identity \
             of this VM/scale set, or attach a user-assigned identity and pass --client-id, --object-id or --resource-id"
        ),
        (
            AuthMode::ManagedIdentity | AuthMode::Auto,
            StoreError::Credential { status: None, .. } | StoreError::Connection(_),
        ) => format!(
            "cannot reach the managed identity endpoint (IMDS): {detail}. Fix: run on an Azure VM or AKS node, \
             or use --auth workload-identity / azure-cli"
        ),
        (AuthMode::WorkloadIdentity, _) => format!(
            "workload identity sign-in failed: {detail}. Fix: check that the pod's service account is federated with the \
             identity (issuer and subject), and that AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE are set"
        ),
        (AuthMode::AzureCli, _) => {
            format!("the Azure CLI gave no token: {detail}. Fix: run `az login`")
        }
        (_, StoreError::Tls(_)) => format!(
            "the identity endpoint's TLS certificate is not trusted ({detail}). Fix: pass --ca-file with the CA that signed it"
        ),
        _ => format!("cannot get a token: {detail}"),
    }
}

/// Key Vault's DNS suffixes (public, China, US Government clouds).
fn is_key_vault_host(host: &str) -> bool {
    [
        ".vault.azure.net",
        ".vault.azure.cn",
        ".vault.usgovcloudapi.net",
    ]
    .iter()
    .any(|suffix| host.to_ascii_lowercase().ends_with(suffix))
}

fn explain_vault(plan: &Plan, url: &Url, err: &StoreError) -> String {
    let vault = url.as_str();
    match err {
        StoreError::Forbidden(Forbidden::Firewall) => format!(
            "{vault} refused this address (ForbiddenByFirewall). Fix: allow this network in the vault's firewall or use a private endpoint"
        ),
        StoreError::Forbidden(_) => format!(
            "the identity may not list secrets in {vault} ({err}). Fix: grant it the \"Key Vault Secrets User\" role on the vault: \
             az role assignment create --role \"Key Vault Secrets User\" --assignee <principal-id> --scope <vault-resource-id>"
        ),
        StoreError::Credential {
            status: Some(401), ..
        } => format!(
            "{vault} refused the identity's token (401: issued for another tenant or audience, or revoked). \
             Fix: use an identity of the vault's tenant; check that the vault is in the tenant the identity signs in to"
        ),
        StoreError::NotFound => format!("{vault} answered 404: is --vault-url a Key Vault?"),
        StoreError::Tls(_) => format!(
            "the vault's TLS certificate is not trusted ({err}). Fix: pass --ca-file with the CA that signed it (TLS-inspecting proxy, emulator)"
        ),
        StoreError::Connection(_) => format!(
            "cannot reach {vault} ({err}). Fix: check --vault-url, DNS and egress to the vault (firewall, proxy, private endpoint)"
        ),
        StoreError::Timeout(limit) => format!(
            "no answer from {vault} within {limit:?} (--request-timeout). Fix: check network egress to the vault"
        ),
        StoreError::Throttled { .. } | StoreError::Service { .. } => format!(
            "{vault} is unavailable ({err}). Retry later, or pass --no-startup-check to mount anyway"
        ),
        StoreError::Budget(_) => format!(
            "kvfs's request budget held the listing of {vault} back ({err}). Fix: raise --max-request-rate or --request-timeout"
        ),
        // The SDK's check that a 401 challenge names a Key Vault domain fails for any other
        // host (an emulator); its message names the SDK's option, not kvfs's flag.
        StoreError::Other(_)
            if !plan.network.disable_challenge_resource_verification
                && !is_key_vault_host(url.host_str().unwrap_or_default()) =>
        {
            format!(
                "cannot list {vault}: {err}. Fix: {vault} is not under a Key Vault domain (vault.azure.net, vault.azure.cn, \
                 vault.usgovcloudapi.net); for an emulator, pass --disable-challenge-resource-verification"
            )
        }
        StoreError::Credential { .. } | StoreError::Other(_) => {
            format!("cannot list {vault}: {err}")
        }
    }
}
