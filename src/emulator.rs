//! An Azure Key Vault emulator, in process: the data plane for secrets, the IMDS and Entra
//! token endpoints, and an admin API to seed content and inject faults.
//!
//! Integration tests, the benchmark and `kvfs demo` run it instead of a real vault. It speaks the
//! real wire protocol (HTTPS with a generated CA, the 401 challenge, bearer tokens, paging via
//! `nextLink`, Key Vault's error bodies), so any official Azure SDK works against it, given the
//! CA (`ca.pem` in the state directory) and, for the Rust SDK,
//! `verify_challenge_resource: Some(false)`.
//!
//! Two listeners: [`Emulator::vault_url`] (HTTPS: Key Vault, Entra at the same address, admin
//! under `/_admin/`) and [`Emulator::imds_endpoint`] (plain HTTP, IMDS). Tests drive the state
//! directly through [`Emulator::vault`]; other processes use the admin API.
//!
//! To start with sample content (as `kvfs demo` does), call `emulator.vault().load_samples()`
//! after [`Emulator::start`]; see [`sample_seed`].

mod admin;
mod fault;
mod identity;
mod routes;
mod seed;
mod server;
mod tls;
mod token;
mod vault;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use fault::{Fault, FaultAction, RequestKind};
pub use routes::EMULATOR_TENANT_ID;
pub use seed::{Seed, SeedSecret, sample_seed};
pub use vault::{
    Counters, MAX_VALUE_BYTES, RequestRecord, SecretOptions, Vault, is_valid_secret_name,
};

use routes::AppState;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Certificate generation or the TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A seed entry is invalid (`entry` is the secret name or file).
    #[error("invalid seed entry {entry}: {reason}")]
    Seed { entry: String, reason: String },
}

/// Where and how to run the emulator.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Address both listeners bind; 127.0.0.1 by default.
    pub bind: IpAddr,
    /// HTTPS port (Key Vault, Entra, admin); 0 picks a free one.
    pub vault_port: u16,
    /// Plain-HTTP IMDS port; 0 picks a free one.
    pub imds_port: u16,
    /// Directory for `ca.pem`; created if missing.
    pub state_dir: PathBuf,
    /// A JSON seed file or a directory of files (see [`Seed::load`]).
    pub seed: Option<PathBuf>,
}

impl EmulatorConfig {
    /// 127.0.0.1, free ports, no seed.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            vault_port: 0,
            imds_port: 0,
            state_dir: state_dir.into(),
            seed: None,
        }
    }
}

/// A running emulator. Dropping it (or [`Emulator::shutdown`]) stops both listeners and
/// closes every open connection.
#[derive(Debug)]
pub struct Emulator {
    vault: Arc<Vault>,
    vault_addr: SocketAddr,
    imds_addr: SocketAddr,
    ca_path: PathBuf,
    ca_pem: String,
    shutdown: watch::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// The address clients should use: the bind address, or loopback when bound to all interfaces.
fn public_addr(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
    } else {
        bound
    }
}

async fn bind(ip: IpAddr, port: u16) -> Result<(TcpListener, SocketAddr), EmulatorError> {
    let addr = SocketAddr::new(ip, port);
    let bind_error = |source| EmulatorError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, public_addr(local)))
}

impl Emulator {
    /// Generates TLS material, writes `ca.pem`, loads the seed and starts both listeners.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let seed = config.seed.as_deref().map(Seed::load).transpose()?;
        let extra_ip = Some(config.bind).filter(|ip| !ip.is_unspecified());
        let tls = tls::generate(extra_ip).map_err(EmulatorError::Tls)?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EmulatorError::Io { path, source }
        };
        std::fs::create_dir_all(&config.state_dir).map_err(io(&config.state_dir))?;
        let ca_path = config.state_dir.join("ca.pem");
        std::fs::write(&ca_path, &tls.ca_pem).map_err(io(&ca_path))?;

        let vault = Arc::new(Vault::new());
        if let Some(seed) = &seed {
            vault.load_seed(seed);
        }
        let (vault_listener, vault_addr) = bind(config.bind, config.vault_port).await?;
        let (imds_listener, imds_addr) = bind(config.bind, config.imds_port).await?;
        let (shutdown, shutdown_rx) = watch::channel(());
        let state = |server| AppState {
            vault: Arc::clone(&vault),
            server,
            default_host: Arc::from(vault_addr.to_string()),
        };
        let vault_router = routes::vault_router(state(fault::Server::Vault));
        let imds_router = routes::imds_router(state(fault::Server::Imds));
        let tasks = vec![
            tokio::spawn(server::serve(
                vault_listener,
                Some(tls.server_config),
                vault_router,
                shutdown_rx.clone(),
            )),
            tokio::spawn(server::serve(imds_listener, None, imds_router, shutdown_rx)),
        ];
        tracing::debug!(%vault_addr, %imds_addr, "emulator: started");
        Ok(Emulator {
            vault,
            vault_addr,
            imds_addr,
            ca_path,
            ca_pem: tls.ca_pem,
            shutdown,
            tasks,
        })
    }

    /// `https://127.0.0.1:PORT/` (trailing slash included).
    pub fn vault_url(&self) -> String {
        format!("https://{}/", self.vault_addr)
    }

    /// The same HTTPS server, for `AZURE_AUTHORITY_HOST`: `https://127.0.0.1:PORT/`.
    pub fn authority_host(&self) -> String {
        self.vault_url()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash), for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn imds_endpoint(&self) -> String {
        format!("http://{}", self.imds_addr)
    }

    /// `state_dir/ca.pem`: the CA that signed the server certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA certificate, PEM (the content of [`Emulator::ca_path`]).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The shared state, for direct control from tests.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Stops both listeners, closes open connections and waits until they are gone.
    pub async fn shutdown(self) {
        let Emulator {
            shutdown, tasks, ..
        } = self;
        drop(shutdown);
        for task in tasks {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "emulator: listener task failed");
            }
        }
    }
}
