//! An Azure Key Vault emulator, in process: the data plane for secrets, the IMDS and Entra
//! token endpoints, and an admin API to seed content and inject faults.
//!
//! Integration tests, the benchmark and `kvfs demo` run it instead of a real vault. It speaks the
//! real wire protocol (HTTPS with a generated CA, the 401 challenge, bearer tokens, paging via
//! `nextLink`, Key Vault's error bodies), so any official Azure SDK works against it (the Rust
//! and Python ones are tested), given the CA (`ca.pem` in the state directory) and the SDK's
//! switch that accepts a challenge from a host other than `*.vault.azure.net`
//! (`verify_challenge_resource`).
//!
//! It is as strict as Key Vault wherever a client could be wrong:
//! - Tokens are HS256 JWTs with `aud` and `tid`. The token endpoints issue them for whatever
//!   resource or scope was asked, and by the tenant asked (Entra) or the emulator's
//!   ([`EMULATOR_TENANT_ID`], IMDS); the data plane answers 401 with the challenge to a token
//!   for another audience (`AKV10022: Invalid audience`) or tenant (`AKV10032: Invalid issuer`).
//! - `api-version` must be one of [`API_VERSIONS`]; otherwise 400 `BadParameter`.
//! - Paths it does not serve answer Key Vault's error body: 404 `NotFound` for an unknown
//!   path, 405 `MethodNotAllowed` for a method a path does not support (only GET and Set
//!   Secret's PUT are implemented).
//! - [`Vault::set_empty_pages`] (admin: `POST /_admin/paging {"emptyPages": n}`) makes lists
//!   answer `n` pages of `"value": []` with a `nextLink` before every page of items and after
//!   the last, as the real service sometimes does. Ids and `nextLink`s always spell the port
//!   (Azure writes `:443`).
//! - IMDS answers `/metadata/identity/oauth2/token` with and without a trailing slash
//!   (msal-node asks for the latter).
//!
//! The state directory keeps `ca.pem`, `ca.key` and `token.key` (private files 0600): an
//! emulator restarted on the same directory and ports is trusted by clients holding the old
//! `ca.pem` and accepts tokens issued before the restart. A fresh directory gives a new CA and
//! signing key.
//!
//! Two listeners: [`Emulator::vault_url`] (HTTPS: Key Vault, Entra at the same address, admin
//! under `/_admin/`) and [`Emulator::imds_endpoint`] (plain HTTP, IMDS). Tests drive the state
//! directly through [`Emulator::vault`]; other processes use the admin API.
//!
//! To start with sample content (as `kvfs demo` does), call `emulator.vault().load_samples()`
//! after [`Emulator::start`]; see [`sample_seed`]. Certificate-backed secrets (content type
//! `application/x-pkcs12` or `application/x-pem-file`, `managed: true`, a `kid`) come from
//! [`Vault::set_certificate`] with values a [`SampleChain`] makes.

mod admin;
mod certs;
mod fault;
mod identity;
mod routes;
mod seed;
mod server;
mod state;
mod tls;
mod token;
mod vault;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use certs::{LeafKey, SampleChain};
pub use fault::{Fault, FaultAction, RequestKind};
pub use routes::API_VERSIONS;
pub use seed::{Seed, SeedSecret, sample_seed};
pub use state::{CA_CERT_FILE, CA_KEY_FILE, TOKEN_KEY_FILE};
pub use vault::{
    Counters, EMULATOR_TENANT_ID, MAX_VALUE_BYTES, RequestRecord, SecretOptions, VAULT_AUDIENCE,
    Vault, is_valid_secret_name,
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
    /// A key file in the state directory is malformed.
    #[error("{}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
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
    /// Directory for `ca.pem`, `ca.key` and `token.key`; created if missing, reused if present.
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
    /// Loads (or creates) the CA and token key in the state directory, signs a server
    /// certificate, loads the seed and starts both listeners.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let seed = config.seed.as_deref().map(Seed::load).transpose()?;
        let extra_ip = Some(config.bind).filter(|ip| !ip.is_unspecified());
        let material = state::load_or_create(&config.state_dir)?;
        let server_config =
            tls::server_config(&material.ca, extra_ip).map_err(EmulatorError::Tls)?;
        let ca_path = config.state_dir.join(CA_CERT_FILE);

        let vault = Arc::new(Vault::with_token_key(&material.token_key));
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
                Some(server_config),
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
            ca_pem: material.ca.cert_pem,
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
