//! The one HTTP client kvfs uses, given to the credential and to the `SecretClient` alike.
//!
//! The Azure SDK has no global default transport, so whatever is not set here (extra CA roots,
//! timeouts, the IMDS redirect) silently does not apply to one of the two. TLS is rustls on the
//! `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::{AsyncRawResponse, HttpClient, Request, Transport, Url};

pub mod limit;

/// Where the Azure SDK sends IMDS requests; the Rust SDK hard-codes it.
const IMDS_HOST: &str = "169.254.169.254";

#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// PEM file of extra trusted roots (a corporate proxy, an emulator's CA).
    pub ca_file: Option<PathBuf>,
    /// Base URL (`http://host:port`) that IMDS requests are sent to instead of 169.254.169.254.
    pub imds_endpoint: Option<Url>,
    pub connect_timeout: Duration,
    /// Upper bound for one HTTP exchange.
    pub request_timeout: Duration,
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
    // Ours is the only provider compiled in; if a provider is already installed, keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(path) = &config.ca_file {
        builder = builder.tls_certs_merge(read_roots(path)?);
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
    let http = Arc::new(limit::BodyLimit::new(http, limit::MAX_BODY_BYTES));
    Ok(Transport::new(http))
}

fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, TransportError> {
    let pem = std::fs::read(path).map_err(|source| TransportError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TransportError::BadCa {
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
