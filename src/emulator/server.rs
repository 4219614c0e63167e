//! The accept loop: TCP (optionally TLS) connections served by hyper over an axum `Router`.
//!
//! A hand-written loop rather than `axum::serve` because faults need connection-level control:
//! a response carrying the [`DropConnection`] extension makes the hyper service fail, and hyper
//! then closes the connection without writing anything, which is what a client sees when a
//! load balancer resets a connection. Every task watches one shutdown channel; when the
//! [`Emulator`](super::Emulator) is dropped or shut down, its sender goes away and the accept
//! loops and all open connections (hung ones included) end.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Response extension: close the connection instead of sending this response.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

/// The error that makes hyper close a connection.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct Dropped;

/// Serves `listener` until the shutdown sender is dropped or sends.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    mut shutdown: watch::Receiver<()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "emulator: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let acceptor = acceptor.clone();
                let mut shutdown = shutdown.clone();
                connections.spawn(async move {
                    let conn = async move {
                        match acceptor {
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(tls) => serve_connection(TokioIo::new(tls), router).await,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "emulator: TLS handshake failed");
                                }
                            },
                            None => serve_connection(TokioIo::new(stream), router).await,
                        }
                    };
                    tokio::select! {
                        () = conn => {}
                        _ = shutdown.changed() => {}
                    }
                });
            }
        }
    }
    connections.shutdown().await;
}

async fn serve_connection<I>(io: TokioIo<I>, router: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        async move {
            let response: Response<Body> = match router.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.extensions().get::<DropConnection>().is_some() {
                return Err(Dropped);
            }
            Ok::<_, Dropped>(response)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %e, "emulator: connection ended");
    }
}
