//! The one HTTP client kvfs uses, given to the credential and to the `SecretClient` alike.
//!
//! The Azure SDK has no global default transport, so whatever is not set here (extra CA roots,
//! timeouts, the IMDS redirect) silently does not apply to one of the two. TLS is rustls on the
//! `ring` provider.
//!
//! With `--ca-file`, the client is reloadable: when a server certificate is rejected and the
//! file's content changed (checked at most once per [`CA_RECHECK`]), the client is rebuilt from
//! the new file in place. The credential and the `SecretClient` hold the same `Transport`, so
//! both use the new roots from the next request on, and the credential keeps its token.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::http::{AsyncRawResponse, HttpClient, Request, Transport, Url};

pub mod budget;
pub mod limit;

use budget::{Budgeted, RequestBudget};

/// Where the Azure SDK sends IMDS requests; the Rust SDK hard-codes it.
const IMDS_HOST: &str = "169.254.169.254";

/// How often at most a rejected certificate makes kvfs read `--ca-file` again. During a TLS
/// failure every request fails the same way; reading and parsing the file on each would cost a
/// file read per request, and a rotated CA (a mounted Kubernetes secret or config map is updated
/// within about a minute) is then picked up within this much of its change.
pub const CA_RECHECK: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// PEM file of extra trusted roots (a corporate proxy, an emulator's CA).
    pub ca_file: Option<PathBuf>,
    /// Base URL (`http://host:port`) that IMDS requests are sent to instead of 169.254.169.254.
    pub imds_endpoint: Option<Url>,
    pub connect_timeout: Duration,
    /// Upper bound for one HTTP exchange.
    pub request_timeout: Duration,
    /// The vault-wide request budget every vault request takes a token from.
    pub budget: Option<Arc<RequestBudget>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read --ca-file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ca-file {path} holds no PEM certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Builds the shared transport. Call once; clone the result into every client.
pub fn build(config: &TransportConfig) -> Result<Transport, TransportError> {
    let Built { http, ca } = client(config)?;
    let http: Arc<dyn HttpClient> = match (ca, &config.ca_file) {
        (Some(pem), Some(path)) => Arc::new(CaReloading {
            config: config.clone(),
            path: path.clone(),
            current: RwLock::new(Loaded { http, pem }),
            gate: OncePer::new(CA_RECHECK),
            reloading: Mutex::new(()),
        }),
        _ => http,
    };
    Ok(Transport::new(http))
}

/// A client and the `--ca-file` content it trusts.
struct Built {
    http: Arc<dyn HttpClient>,
    ca: Option<Vec<u8>>,
}

/// The one place an HTTP client is built from a `TransportConfig`, at startup and at every
/// reload; also returns the `--ca-file` content it trusts.
fn client(config: &TransportConfig) -> Result<Built, TransportError> {
    // Ours is the only provider compiled in; if a provider is already installed, keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        // An idle connection keeps the last response's plaintext (a value, a token) in its TLS
        // receive buffer; closing it frees that buffer, which the allocator then zeroes.
        .pool_idle_timeout(Duration::from_secs(1));
    let mut ca = None;
    if let Some(path) = &config.ca_file {
        let pem = read_ca(path)?;
        builder = builder.tls_certs_merge(parse_roots(path, &pem)?);
        ca = Some(pem);
    }
    let client = builder
        .build()
        .map_err(|e| TransportError::Build(crate::error::chain(&e)))?;
    let http: Arc<dyn HttpClient> = match &config.imds_endpoint {
        Some(endpoint) => Arc::new(ImdsRedirect {
            inner: client,
            endpoint: endpoint.clone(),
        }),
        None => Arc::new(client),
    };
    let http: Arc<dyn HttpClient> = Arc::new(limit::BodyLimit::new(http, limit::MAX_BODY_BYTES));
    // Inside every client built, so that a reload keeps the one shared budget and every
    // request, a retry after a reload included, takes a token.
    let http: Arc<dyn HttpClient> = match &config.budget {
        Some(budget) => Arc::new(Budgeted {
            inner: http,
            budget: budget.clone(),
        }),
        None => http,
    };
    Ok(Built { http, ca })
}

fn read_ca(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::ReadCa {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, TransportError> {
    parse_roots(path, &read_ca(path)?)
}

fn parse_roots(path: &Path, pem: &[u8]) -> Result<Vec<reqwest::Certificate>, TransportError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| TransportError::BadCa {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TransportError::BadCa {
            path: path.to_owned(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Lets an action through at most once per `interval`; the first call passes.
#[derive(Debug)]
pub struct OncePer {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl OncePer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Whether the action may run at `now`; when it may, the interval starts again from `now`.
    pub fn try_pass(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

/// Whether `--ca-file` should be loaded again: its content differs from the loaded one. A
/// touched file with the same content is not a change; a file that cannot be read is not one
/// either (the current roots stay).
fn ca_changed(loaded: &[u8], current: Option<&[u8]>) -> bool {
    current.is_some_and(|now| now != loaded)
}

/// The client in use and the `--ca-file` content it trusts.
struct Loaded {
    http: Arc<dyn HttpClient>,
    pem: Vec<u8>,
}

/// The HTTP client with `--ca-file` roots, rebuilt when a certificate is rejected and the file
/// changed. A request that failed on the old roots is sent once more on the new ones.
struct CaReloading {
    config: TransportConfig,
    path: PathBuf,
    current: RwLock<Loaded>,
    gate: OncePer,
    /// Held while deciding on and doing a reload: of concurrent failures, one reloads and the
    /// others then find the new client.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for CaReloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaReloading")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CaReloading {
    fn http(&self) -> Arc<dyn HttpClient> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .http
            .clone()
    }

    /// After `failed` rejected a certificate: the client to try once more, if there is a newer
    /// one (another request reloaded meanwhile, or the file changed and was loaded now).
    fn reload(&self, failed: &Arc<dyn HttpClient>) -> Option<Arc<dyn HttpClient>> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.http();
        if !Arc::ptr_eq(&current, failed) {
            return Some(current);
        }
        if !self.gate.try_pass(Instant::now()) {
            return None;
        }
        let on_disk = std::fs::read(&self.path).ok();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| humantime::format_rfc3339_seconds(t).to_string());
        let changed = {
            let loaded = self.current.read().unwrap_or_else(PoisonError::into_inner);
            ca_changed(&loaded.pem, on_disk.as_deref())
        };
        if !changed {
            tracing::warn!(path = %self.path.display(), ?modified, recheck_in = ?CA_RECHECK,
                "server certificate rejected and --ca-file is unchanged");
            return None;
        }
        match client(&self.config) {
            Ok(Built {
                http,
                ca: Some(pem),
            }) => {
                tracing::info!(path = %self.path.display(), ?modified,
                    "server certificate rejected and --ca-file changed: HTTP client rebuilt with its roots");
                let mut loaded = self.current.write().unwrap_or_else(PoisonError::into_inner);
                *loaded = Loaded {
                    http: http.clone(),
                    pem,
                };
                Some(http)
            }
            Ok(Built { ca: None, .. }) => None,
            Err(e) => {
                tracing::warn!(error = %e, recheck_in = ?CA_RECHECK,
                    "--ca-file changed but cannot be used; keeping the current roots");
                None
            }
        }
    }
}

#[async_trait]
impl HttpClient for CaReloading {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let http = self.http();
        match http.execute_request(request).await {
            Err(e) if certificate_rejected(&e) => match self.reload(&http) {
                Some(newer) => newer.execute_request(request).await,
                None => Err(e),
            },
            other => other,
        }
    }
}

/// Every cause of `err`, looking inside `io::Error`s, whose `source()` skips the wrapped error.
pub(crate) fn causes<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

/// Whether the server's certificate was refused (untrusted issuer, expired, wrong name ...).
fn certificate_rejected(err: &azure_core::Error) -> bool {
    causes(err).into_iter().any(|e| {
        matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        )
    })
}

/// Sends requests for 169.254.169.254 to another endpoint, path and query unchanged, as other
/// Azure SDKs do with `AZURE_POD_IDENTITY_AUTHORITY_HOST`. Everything else passes through.
#[derive(Debug)]
struct ImdsRedirect {
    inner: reqwest::Client,
    endpoint: Url,
}

impl ImdsRedirect {
    fn redirect(&self, url: &Url) -> Option<Url> {
        if url.host_str() != Some(IMDS_HOST) {
            return None;
        }
        let mut target = self.endpoint.clone();
        target.set_path(url.path());
        target.set_query(url.query());
        Some(target)
    }
}

#[async_trait]
impl HttpClient for ImdsRedirect {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        match self.redirect(request.url()) {
            Some(target) => {
                let mut redirected = request.clone();
                *redirected.url_mut() = target;
                self.inner.execute_request(&redirected).await
            }
            None => self.inner.execute_request(request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect_to(endpoint: &str) -> ImdsRedirect {
        let _ = rustls::crypto::ring::default_provider().install_default();
        ImdsRedirect {
            inner: reqwest::Client::new(),
            endpoint: Url::parse(endpoint).unwrap(),
        }
    }

    #[test]
    fn imds_requests_are_redirected_with_path_and_query() {
        let r = redirect_to("http://127.0.0.1:4000");
        let url = Url::parse(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01&client_id=abc",
        )
        .unwrap();
        assert_eq!(
            r.redirect(&url).unwrap().as_str(),
            "http://127.0.0.1:4000/metadata/identity/oauth2/token?api-version=2019-08-01&client_id=abc"
        );
    }

    #[test]
    fn other_hosts_pass_through() {
        let r = redirect_to("http://127.0.0.1:4000");
        let url = Url::parse("https://myvault.vault.azure.net/secrets/x/").unwrap();
        assert!(r.redirect(&url).is_none());
    }

    #[test]
    fn once_per_interval() {
        let gate = OncePer::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(gate.try_pass(t0), "the first call passes");
        assert!(!gate.try_pass(t0));
        assert!(!gate.try_pass(t0 + Duration::from_secs(29)));
        assert!(gate.try_pass(t0 + Duration::from_secs(30)));
        assert!(
            !gate.try_pass(t0 + Duration::from_secs(31)),
            "the interval restarts"
        );
        assert!(gate.try_pass(t0 + Duration::from_secs(60)));
        // A clock read earlier than the last pass (another thread) does not pass.
        assert!(!gate.try_pass(t0));
    }

    #[test]
    fn ca_change_is_a_change_of_content() {
        assert!(!ca_changed(b"A", Some(b"A")), "touched, same content");
        assert!(ca_changed(b"A", Some(b"B")));
        assert!(
            ca_changed(b"A", Some(b"A\nB")),
            "a CA appended to the bundle"
        );
        assert!(
            !ca_changed(b"A", None),
            "unreadable: keep the current roots"
        );
    }

    #[test]
    fn bad_ca_file_names_the_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = read_roots(&path).unwrap_err().to_string();
        assert!(err.contains("--ca-file") && err.contains("ca.pem"), "{err}");
        let missing = read_roots(&dir.path().join("absent.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read --ca-file"), "{missing}");
    }
}
