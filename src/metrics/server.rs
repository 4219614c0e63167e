//! The HTTP endpoint on `--metrics-addr`: `/metrics`, `/healthz` and `/readyz`, HTTP/1.1 on
//! hyper (already in the build for the HTTP client), GET only, plain text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A statfs the mount does not answer within this is taken as a hung mount.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
static PROBING: AtomicBool = AtomicBool::new(false);
/// A scraper that holds a connection longer than this is cut off.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--metrics-addr): {source}")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// `/healthz` checks that this answers a statfs as a FUSE filesystem.
    pub mountpoint: PathBuf,
    /// `/readyz` fails once Key Vault's last request failed and none succeeded this long.
    pub ready_window: Duration,
}

/// Binds `config.addr` and serves on the current runtime; returns the bound address (port 0
/// picks a free one, logged as "metrics listening").
pub async fn serve(config: ServerConfig) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| MetricsError {
            addr: config.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| MetricsError {
        addr: config.addr,
        source,
    })?;
    tracing::info!(addr = %bound, "metrics listening on {bound}");
    let config = Arc::new(config);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if let Some(suppressed) = crate::log_limit::allow("metrics accept") {
                        tracing::warn!(error = %e, suppressed, "metrics endpoint cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let config = config.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(config.clone(), req));
                let connection =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                // A failed or slow scrape concerns the scraper only.
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
    });
    Ok(bound)
}

async fn answer(
    config: Arc<ServerConfig>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    let response = match req.uri().path() {
        "/metrics" => {
            let mut response = reply(StatusCode::OK, super::render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => match mount_answers(&config.mountpoint).await {
            Ok(()) => reply(StatusCode::OK, "ok\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" if super::is_ready(config.ready_window) => reply(StatusCode::OK, "ok\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Key Vault has not answered within {:?}\n",
                config.ready_window
            ),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    };
    Ok(response)
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Whether the mount is up and answers: the mounted flag, then a statfs of the mountpoint
/// (which reaches kvfs's FUSE threads) within `PROBE_TIMEOUT`.
async fn mount_answers(mountpoint: &std::path::Path) -> Result<(), String> {
    if !super::is_mounted() {
        return Err("not mounted".into());
    }
    // One statfs at a time: on a hung mount each would hold a blocking thread until the
    // mount answers, and probes come every few seconds.
    if PROBING.swap(true, Ordering::AcqRel) {
        return Err("the previous statfs of the mountpoint has not returned".into());
    }
    let path = mountpoint.to_owned();
    let probe = tokio::task::spawn_blocking(move || {
        let answered = crate::mountpoint::fuse_statfs(&path);
        PROBING.store(false, Ordering::Release);
        answered
    });
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Err(_) => Err(format!(
            "the mount did not answer a statfs within {PROBE_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("statfs probe failed: {e}")),
        Ok(Ok(Err(e))) => Err(format!("statfs of the mountpoint failed: {e}")),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}
