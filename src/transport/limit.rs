//! A cap on the size of every HTTP response body, so that no server (a broken proxy, a hostile
//! endpoint behind a redirected IMDS, a bug) can make kvfs buffer an unbounded body.
//!
//! The Azure SDK collects each body into one growing buffer before parsing it. This wrapper sits
//! between the SDK and the real client and hands the SDK a body stream that fails as soon as
//! more than the limit has arrived, so the SDK holds at most the limit plus one chunk, and the
//! connection is dropped with the rest unread. A `Content-Length` above the limit is refused
//! before a single body byte is read.
//!
//! The limit, [`MAX_BODY_BYTES`] = 1 MiB: the largest legitimate answer is a GET of a 25 KB
//! value (JSON-escaped, at most 6 bytes per byte for `\u00XX` escapes: about 150 KB) plus
//! metadata, or a list page of at most 25 items without values (each a few hundred bytes, at
//! most 15 tags of 256+512 characters: about 300 KB). Token responses are a few KB. 1 MiB leaves
//! room above every one of them and still bounds memory per request to a small constant.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use azure_core::Bytes;
use azure_core::error::ErrorKind;
use azure_core::http::headers::CONTENT_LENGTH;
use azure_core::http::response::PinnedStream;
use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use futures::Stream;

/// Largest response body kvfs accepts (see the module doc for why 1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a response was refused. Carries sizes only, never body text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("response body exceeds the {limit}-byte limit")]
pub struct BodyTooLarge {
    pub limit: usize,
}

/// An [`HttpClient`] that refuses response bodies larger than `limit` bytes.
#[derive(Debug)]
pub struct BodyLimit {
    inner: Arc<dyn HttpClient>,
    limit: usize,
}

impl BodyLimit {
    pub fn new(inner: Arc<dyn HttpClient>, limit: usize) -> Self {
        Self { inner, limit }
    }
}

/// The error the SDK sees: `Other` (not retried, not a connection problem), with the cause.
fn too_large(limit: usize) -> azure_core::Error {
    azure_core::Error::new(ErrorKind::Other, BodyTooLarge { limit })
}

#[async_trait]
impl HttpClient for BodyLimit {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let response = self.inner.execute_request(request).await?;
        let declared = response
            .headers()
            .get_optional_str(&CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit as u64) {
            // Dropping the response closes the connection with the body unread.
            return Err(too_large(self.limit));
        }
        let (status, headers, body) = response.deconstruct();
        let capped: PinnedStream = Box::pin(Capped {
            inner: Box::pin(body),
            seen: 0,
            limit: self.limit,
            done: false,
        });
        Ok(AsyncRawResponse::new(status, headers, capped))
    }
}

/// A body stream that ends with [`BodyTooLarge`] once more than `limit` bytes came through,
/// and never polls its source again after that.
struct Capped {
    inner: PinnedStream,
    seen: usize,
    limit: usize,
    done: bool,
}

impl Stream for Capped {
    type Item = azure_core::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen = self.seen.saturating_add(chunk.len());
                if self.seen > self.limit {
                    self.done = true;
                    Poll::Ready(Some(Err(too_large(self.limit))))
                } else {
                    Poll::Ready(Some(Ok(chunk)))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use azure_core::http::headers::Headers;
    use azure_core::http::{Method, StatusCode, Url};
    use futures::StreamExt;

    use super::*;

    const CHUNK: usize = 16 * 1024;

    /// Answers 200 with an endless body of `CHUNK`-byte chunks, counting the bytes pulled, and
    /// optionally a `Content-Length` header.
    #[derive(Debug, Default)]
    struct Endless {
        pulled: Arc<AtomicUsize>,
        content_length: Option<u64>,
        finite: Option<usize>,
    }

    #[async_trait]
    impl HttpClient for Endless {
        async fn execute_request(&self, _: &Request) -> azure_core::Result<AsyncRawResponse> {
            let pulled = Arc::clone(&self.pulled);
            let mut headers = Headers::new();
            if let Some(n) = self.content_length {
                headers.insert(CONTENT_LENGTH, n.to_string());
            }
            let chunks = self.finite.map_or(usize::MAX, |n| n.div_ceil(CHUNK));
            let body = futures::stream::iter(0..chunks).map(move |_| {
                pulled.fetch_add(CHUNK, Ordering::SeqCst);
                Ok(Bytes::from(vec![b'x'; CHUNK]))
            });
            Ok(AsyncRawResponse::new(
                StatusCode::Ok,
                headers,
                Box::pin(body),
            ))
        }
    }

    fn request() -> Request {
        Request::new(
            Url::parse("https://vault.example/secrets/x/").unwrap(),
            Method::Get,
        )
    }

    fn root_cause(err: &azure_core::Error) -> Option<&BodyTooLarge> {
        std::error::Error::source(err).and_then(|e| e.downcast_ref::<BodyTooLarge>())
    }

    #[tokio::test]
    async fn an_endless_body_stops_one_chunk_past_the_limit() {
        let inner = Arc::new(Endless::default());
        let pulled = Arc::clone(&inner.pulled);
        let client = BodyLimit::new(inner, 64 * 1024);
        let response = client.execute_request(&request()).await.unwrap();
        let err = response.into_body().collect().await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Other);
        assert_eq!(root_cause(&err), Some(&BodyTooLarge { limit: 64 * 1024 }));
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            64 * 1024 + CHUNK,
            "read no further than the first chunk past the limit"
        );
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let inner = Arc::new(Endless {
            content_length: Some(50 * 1024 * 1024),
            ..Default::default()
        });
        let pulled = Arc::clone(&inner.pulled);
        let client = BodyLimit::new(inner, MAX_BODY_BYTES);
        let err = client.execute_request(&request()).await.unwrap_err();
        assert_eq!(
            root_cause(&err),
            Some(&BodyTooLarge {
                limit: MAX_BODY_BYTES
            })
        );
        assert_eq!(pulled.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bodies_up_to_the_limit_pass_whole() {
        for size in [0, CHUNK, 4 * CHUNK] {
            let inner = Arc::new(Endless {
                content_length: Some(size as u64),
                finite: Some(size),
                ..Default::default()
            });
            let client = BodyLimit::new(inner, 4 * CHUNK);
            let body = client
                .execute_request(&request())
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap();
            assert_eq!(body.len(), size);
        }
    }

    #[test]
    fn the_message_names_the_limit_only() {
        assert_eq!(
            too_large(1024).to_string(),
            "response body exceeds the 1024-byte limit"
        );
    }
}
