//! Hostile input, property-tested: names and paths through a real mount, and Key Vault answers
//! (arbitrary statuses, malformed JSON, wrong types, truncated and huge bodies, values over
//! 25 KB) through the official SDK into `KeyVaultStore`.
//!
//! Invariants checked: kvfs never panics or dies, every failure is a clean errno or a
//! classified `StoreError` whose text never holds a value, names Key Vault cannot hold cost no
//! request, and no response body is buffered past the transport's 1 MiB cap.
//!
//! Case counts are small and every runner is seeded deterministically, so CI time is bounded
//! and a failure reproduces: `scripts/loopback-only cargo test --test hostile`.

mod common;

use std::cell::Cell;
use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::Bytes;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::headers::{AUTHORIZATION, HeaderName, Headers};
use azure_core::http::response::PinnedStream;
use azure_core::http::{AsyncRawResponse, HttpClient, Request, StatusCode, Transport};
use futures::StreamExt;
use kvfs::error::StoreError;
use kvfs::secret::SecretName;
use kvfs::store::SecretStore;
use kvfs::store::keyvault::{KeyVaultConfig, KeyVaultStore};
use kvfs::transport::limit::{BodyLimit, MAX_BODY_BYTES};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A runner with `cases` cases, a fixed seed and no failure files.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

// ---------------------------------------------------------------------------------------------
// Key Vault answers through the SDK
// ---------------------------------------------------------------------------------------------

const VAULT: &str = "https://fake.vault.test/";
/// Planted in every value and error message a fake response carries: no `StoreError` may show it.
const CANARY: &str = "CANARY-7f3a9c";

/// A token that never expires within a test.
#[derive(Debug)]
struct FakeCredential;

#[async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        _: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "fake-token",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// A response body: bytes, or `len` bytes streamed in 64 KB chunks and never held whole.
#[derive(Clone, Debug)]
enum Body {
    Bytes(Vec<u8>),
    Streamed { len: usize, declare_length: bool },
}

#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    retry_after: Option<String>,
    body: Body,
}

impl Canned {
    fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            retry_after: None,
            body: Body::Bytes(body.to_string().into_bytes()),
        }
    }
}

const STREAM_CHUNK: usize = 64 * 1024;
const BRAKE: usize = 1000;

/// A Key Vault that answers an unauthenticated request with the 401 challenge, then plays its
/// script (one canned answer per authenticated request; `fallback` once it runs out). After
/// `BRAKE` authenticated requests it answers 500, so that a client stuck in a loop fails the
/// test instead of hanging it.
#[derive(Debug)]
struct Fake {
    script: Mutex<VecDeque<Canned>>,
    fallback: Canned,
    /// Authenticated requests answered, and the URL of each.
    urls: Mutex<Vec<String>>,
    /// Body bytes handed to the SDK, over all responses.
    pulled: Arc<AtomicUsize>,
}

impl Fake {
    fn new(script: Vec<Canned>, fallback: Canned) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            fallback,
            urls: Mutex::new(Vec::new()),
            pulled: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn urls(&self) -> Vec<String> {
        self.urls.lock().unwrap().clone()
    }
}

#[async_trait]
impl HttpClient for Fake {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut headers = Headers::new();
        if request.headers().get_optional_str(&AUTHORIZATION).is_none() {
            headers.insert(
                HeaderName::from_static("www-authenticate"),
                "Bearer authorization=\"https://login.windows.net/t\", resource=\"https://vault.azure.net\"",
            );
            return Ok(AsyncRawResponse::from_bytes(
                StatusCode::Unauthorized,
                headers,
                Bytes::new(),
            ));
        }
        let answered = {
            let mut urls = self.urls.lock().unwrap();
            urls.push(request.url().to_string());
            urls.len()
        };
        let canned = if answered > BRAKE {
            None
        } else {
            self.script.lock().unwrap().pop_front()
        };
        let canned = canned.unwrap_or_else(|| {
            if answered > BRAKE {
                Canned::json(500, serde_json::json!({}))
            } else {
                self.fallback.clone()
            }
        });
        if let Some(v) = &canned.retry_after {
            headers.insert(HeaderName::from_static("retry-after"), v.clone());
        }
        let status = StatusCode::from(canned.status);
        let body: PinnedStream = match canned.body {
            Body::Bytes(bytes) => {
                self.pulled.fetch_add(bytes.len(), Ordering::SeqCst);
                headers.insert(
                    HeaderName::from_static("content-length"),
                    bytes.len().to_string(),
                );
                Box::pin(futures::stream::once(async move { Ok(Bytes::from(bytes)) }))
            }
            Body::Streamed {
                len,
                declare_length,
            } => {
                if declare_length {
                    headers.insert(HeaderName::from_static("content-length"), len.to_string());
                }
                let pulled = Arc::clone(&self.pulled);
                Box::pin(
                    futures::stream::iter(0..len.div_ceil(STREAM_CHUNK)).map(move |_| {
                        pulled.fetch_add(STREAM_CHUNK, Ordering::SeqCst);
                        Ok(Bytes::from(vec![b'a'; STREAM_CHUNK]))
                    }),
                )
            }
        };
        Ok(AsyncRawResponse::new(status, headers, body))
    }
}

/// A store over `client` (optionally behind the production body cap) with the fake credential.
fn fake_credential() -> Arc<kvfs::auth::RenewableCredential> {
    Arc::new(
        kvfs::auth::RenewableCredential::from_fn(|| Ok(Arc::new(FakeCredential)))
            .expect("a fake credential"),
    )
}

fn store_over(client: Arc<dyn HttpClient>, capped: bool) -> KeyVaultStore {
    let http: Arc<dyn HttpClient> = if capped {
        Arc::new(BodyLimit::new(client, MAX_BODY_BYTES))
    } else {
        client
    };
    let config = KeyVaultConfig {
        vault_url: VAULT.into(),
        verify_challenge_resource: false,
    };
    KeyVaultStore::new(&config, fake_credential(), &Transport::new(http)).unwrap()
}

fn secret_bundle(name: &str, value: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "value": value,
        "id": format!("{VAULT}secrets/{name}/0123456789abcdef0123456789abcdef"),
        "contentType": "text/plain",
        "attributes": {"enabled": true, "created": 1700000000, "updated": 1700000000,
                       "recoveryLevel": "Purgeable"},
        "tags": {"a": "b"}
    })
}

fn list_item(name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{VAULT}secrets/{name}"),
        "attributes": {"enabled": true, "created": 1700000000, "updated": 1700000000}
    })
}

/// What a canned body is, for the oracle.
#[derive(Clone, Debug)]
enum Shape {
    /// A well-formed secret bundle whose value is exactly this.
    Bundle(String),
    /// Anything else.
    Junk,
}

/// A value holding the canary: empty, small, at 25 KB, or over it (Key Vault refuses those on
/// write, but a response can still carry one), with characters JSON must escape.
fn value() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(0usize),
            1..64usize,
            Just(25 * 1024),
            25 * 1024..40 * 1024usize
        ],
        any::<bool>(),
    )
        .prop_map(|(len, escapes)| {
            let filler = if escapes { "\"\\\n\u{1}é" } else { "x" };
            let mut v = String::from(CANARY);
            while v.len() < len {
                v.push_str(filler);
            }
            v
        })
}

/// Bodies for a GET: a valid bundle, wrong JSON types, truncated JSON, non-JSON, deep nesting.
fn get_body() -> impl Strategy<Value = (Vec<u8>, Shape)> {
    let wrong_type = prop::sample::select(vec![
        serde_json::json!({"value": 12345, "id": CANARY}),
        serde_json::json!({"value": [CANARY], "attributes": "enabled"}),
        serde_json::json!({"value": {"v": CANARY}}),
        serde_json::json!({"value": CANARY, "attributes": {"created": "yesterday"}}),
        serde_json::json!({"value": CANARY, "attributes": {"enabled": "yes"}}),
        serde_json::json!({"value": CANARY, "tags": [1, 2, 3]}),
        serde_json::json!({"value": CANARY, "contentType": {"x": 1}}),
        serde_json::json!({"value": CANARY, "id": 7}),
        serde_json::json!([CANARY]),
        serde_json::json!(CANARY),
        serde_json::json!(null),
        serde_json::json!({"error": {"code": CANARY, "message": CANARY}}),
    ]);
    prop_oneof![
        3 => value().prop_map(|v| {
            let body = secret_bundle("s", &serde_json::Value::String(v.clone())).to_string();
            (body.into_bytes(), Shape::Bundle(v))
        }),
        // A bundle with an odd id (not a URL, another host, no version): the value still counts.
        1 => (value(), prop::sample::select(vec!["", "not a url", "https://other.test/secrets/s/v", "https://fake.vault.test/keys/k"]))
            .prop_map(|(v, id)| {
                let body = serde_json::json!({"value": v, "id": id}).to_string();
                (body.into_bytes(), Shape::Bundle(v))
            }),
        2 => wrong_type.prop_map(|j| (j.to_string().into_bytes(), Shape::Junk)),
        2 => (value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let full = secret_bundle("s", &serde_json::Value::String(v)).to_string().into_bytes();
            let at = cut.index(full.len());
            (full[..at].to_vec(), Shape::Junk)
        }),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(|mut b| {
            b.extend_from_slice(CANARY.as_bytes());
            (b, Shape::Junk)
        }),
        1 => (1usize..20_000).prop_map(|depth| {
            let mut b = "[".repeat(depth).into_bytes();
            b.extend_from_slice(CANARY.as_bytes());
            (b, Shape::Junk)
        }),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(200u16),
        4 => prop::sample::select(vec![201u16, 204, 301, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504]),
        1 => 100u16..1000,
    ]
}

fn retry_after() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(vec![
        "0".to_owned(),
        "3".to_owned(),
        "-1".to_owned(),
        "18446744073709551616".to_owned(),
        "99999999999".to_owned(),
        "Sun, 06 Nov 1994 08:49:37 GMT".to_owned(),
        "Fri, 31 Dec 9999 23:59:59 GMT".to_owned(),
        "soon".to_owned(),
        String::new(),
    ]))
}

/// The invariants for any error: classified, errno in range, no value text anywhere in it.
fn check_error(err: &StoreError) -> Result<(), TestCaseError> {
    let shown = format!("{err} {err:?}");
    prop_assert!(!shown.contains(CANARY), "error shows the body: {shown}");
    prop_assert!([libc::ENOENT, libc::EACCES, libc::EIO].contains(&err.errno()));
    Ok(())
}

/// What a status must classify as, whatever the body (`None`: the status allows more than one).
fn expected_for(status: u16) -> Option<fn(&StoreError) -> bool> {
    match status {
        404 => Some(|e| matches!(e, StoreError::NotFound)),
        403 => Some(|e| matches!(e, StoreError::Forbidden(_))),
        429 => Some(|e| matches!(e, StoreError::Throttled { .. })),
        408 | 500..=599 => Some(|e| matches!(e, StoreError::Service { .. })),
        _ => None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A bounded wait: any store call that does not return within this is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn get_survives_any_answer_and_never_shows_the_value() {
    let rt = runtime();
    let name = SecretName::parse("s").unwrap();
    let strategy = (status(), retry_after(), get_body(), any::<bool>());
    let counts = [Cell::new(0usize), Cell::new(0), Cell::new(0)]; // ok, classified, other
    runner(256)
        .run(
            &strategy,
            |(status, retry_after, (body, shape), versioned)| {
                let fake = Fake::new(
                    vec![Canned {
                        status,
                        retry_after,
                        body: Body::Bytes(body),
                    }],
                    Canned::json(500, serde_json::json!({})),
                );
                let store = store_over(fake.clone(), true);
                let result = rt.block_on(async {
                    let call = async {
                        if versioned {
                            store
                                .get_version(&name, "0123456789abcdef0123456789abcdef")
                                .await
                        } else {
                            store.get(&name).await
                        }
                    };
                    tokio::time::timeout(CALL_LIMIT, call).await
                });
                let result = result.map_err(|_| TestCaseError::fail("get did not return"))?;
                match (&result, &shape) {
                    (Ok(secret), Shape::Bundle(v)) if status == 200 => {
                        prop_assert_eq!(secret.value.as_bytes(), v.as_bytes());
                        let shown = format!("{secret:?}");
                        prop_assert!(!shown.contains(CANARY), "value in Debug");
                        counts[0].set(counts[0].get() + 1);
                    }
                    (Ok(secret), _) => {
                        let shown = format!("{secret:?}");
                        prop_assert!(!shown.contains(CANARY), "value in Debug");
                        counts[0].set(counts[0].get() + 1);
                    }
                    (Err(err), _) => {
                        check_error(err)?;
                        if let Some(want) = expected_for(status) {
                            prop_assert!(want(err), "HTTP {} gave {:?}", status, err);
                            counts[1].set(counts[1].get() + 1);
                        } else {
                            prop_assert!(
                                status != 200 || matches!(shape, Shape::Junk),
                                "a valid bundle with HTTP {} failed: {:?}",
                                status,
                                err
                            );
                            counts[2].set(counts[2].get() + 1);
                        }
                    }
                }
                // One challenge, then exactly one authenticated request: no retries, no loops;
                // a 401 (token rejected) renews the credential and is sent once more.
                let sent = if status == 401 { 2 } else { 1 };
                prop_assert_eq!(fake.urls().len(), sent);
                Ok(())
            },
        )
        .unwrap();
    let counts = counts.map(Cell::into_inner);
    eprintln!(
        "get: {} ok, {} classified by status, {} other errors",
        counts[0], counts[1], counts[2]
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "every branch ran: {counts:?}"
    );
}

/// A `nextLink` as a hostile or broken service might send it.
fn next_link() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        2 => (0u32..1000).prop_map(|n| Value::String(format!("{VAULT}secrets?api-version=2025-07-01&$skiptoken={n}"))),
        2 => Just(Value::Null),
        1 => prop::sample::select(vec![
            Value::String(String::new()),
            Value::String("::not a url::".into()),
            Value::String("/secrets?$skiptoken=rel".into()),
            Value::String("https://[::1".into()),
            Value::String("ftp://fake.vault.test/secrets".into()),
            Value::String(format!("{VAULT}secrets?$skiptoken={CANARY}")),
            serde_json::json!(5),
            serde_json::json!({"href": CANARY}),
            serde_json::json!([CANARY]),
        ]),
    ]
}

fn list_page() -> impl Strategy<Value = Canned> {
    let names = prop::collection::vec(
        prop::sample::select(vec!["a", "B-2", "c", "bad_name", "", "x.y", "%2e%2e", "é"]),
        0..26,
    );
    let page = (names, next_link()).prop_map(|(names, link)| {
        let items: Vec<_> = names.iter().map(|n| list_item(n)).collect();
        Canned::json(200, serde_json::json!({"value": items, "nextLink": link}))
    });
    let junk = (status(), get_body()).prop_map(|(status, (body, _))| Canned {
        status,
        retry_after: None,
        body: Body::Bytes(body),
    });
    prop_oneof![4 => page, 1 => junk]
}

#[test]
fn listing_survives_any_pages_and_bad_next_links_end_it() {
    let rt = runtime();
    let name = SecretName::parse("s").unwrap();
    let strategy = (prop::collection::vec(list_page(), 1..8), any::<bool>());
    let (ok, failed) = (Cell::new(0usize), Cell::new(0usize));
    runner(256)
        .run(&strategy, |(pages, versions)| {
            let scripted = pages.len();
            let end = Canned::json(200, serde_json::json!({"value": [], "nextLink": null}));
            let fake = Fake::new(pages, end);
            let store = store_over(fake.clone(), true);
            let result = rt.block_on(async {
                let call = async {
                    if versions {
                        store.list_versions(&name).await
                    } else {
                        store.list().await
                    }
                };
                tokio::time::timeout(CALL_LIMIT, call).await
            });
            let result = result.map_err(|_| TestCaseError::fail("listing did not return"))?;
            match &result {
                Ok(listing) => {
                    for p in listing.iter() {
                        prop_assert!(SecretName::parse(p.name.as_str()).is_some());
                    }
                    ok.set(ok.get() + 1);
                }
                Err(err) => {
                    check_error(err)?;
                    failed.set(failed.get() + 1);
                }
            }
            // Paging ends: at most the scripted pages plus the fallback's closing page.
            prop_assert!(fake.urls().len() <= scripted + 1);
            Ok(())
        })
        .unwrap();
    let (ok, failed) = (ok.get(), failed.get());
    eprintln!("listing: {ok} ok, {failed} failed cleanly");
    assert!(ok > 0 && failed > 0);
}

/// A service that answers every page with the same `nextLink` (itself): the listing must see
/// the loop and end, not page (and grow its listing) until the service gives up.
#[test]
fn a_next_link_loop_is_detected() {
    let rt = runtime();
    let looping = Canned::json(
        200,
        serde_json::json!({"value": [list_item("a")], "nextLink": format!("{VAULT}secrets?$skiptoken=same")}),
    );
    let fake = Fake::new(Vec::new(), looping);
    let store = store_over(fake.clone(), true);
    let result = rt.block_on(async { tokio::time::timeout(CALL_LIMIT, store.list()).await });
    let pages = fake.urls().len();
    eprintln!(
        "nextLink loop: {pages} pages requested, returned: {}",
        result.is_ok()
    );
    assert!(
        pages < BRAKE,
        "listing a vault whose nextLink points to itself followed it {pages} times"
    );
}

/// A `nextLink` naming another host: the bearer token must not be sent there.
#[test]
fn a_next_link_to_another_host_gets_no_token() {
    let rt = runtime();
    let page = Canned::json(
        200,
        serde_json::json!({"value": [list_item("a")], "nextLink": "https://attacker.test/secrets?$skiptoken=1"}),
    );
    let end = Canned::json(200, serde_json::json!({"value": [], "nextLink": null}));
    let fake = Fake::new(vec![page], end);
    let store = store_over(fake.clone(), true);
    let result = rt.block_on(async { tokio::time::timeout(CALL_LIMIT, store.list()).await });
    let urls = fake.urls();
    eprintln!(
        "cross-host nextLink: authenticated requests to {urls:?}, result ok: {:?}",
        result.as_ref().map(|r| r.is_ok())
    );
    assert!(
        urls.iter().all(|u| u.starts_with(VAULT)),
        "a bearer token was sent outside the vault: {urls:?}"
    );
}

/// Huge bodies (50 MB, with and without Content-Length, for a GET and a listing) fail cleanly
/// and are never pulled past the cap. The cap wraps the fake here exactly as it wraps reqwest
/// in `transport::build` (it sits above whatever client is inside), so the fake can count every
/// byte the SDK pulled; `huge_body_over_real_https_is_cut_at_the_cap` checks the real stack.
#[test]
fn huge_bodies_are_refused_at_the_cap() {
    let rt = runtime();
    let name = SecretName::parse("s").unwrap();
    for declare_length in [true, false] {
        for list in [false, true] {
            let huge = Canned {
                status: 200,
                retry_after: None,
                body: Body::Streamed {
                    len: 50 * 1024 * 1024,
                    declare_length,
                },
            };
            let fake = Fake::new(vec![huge], Canned::json(500, serde_json::json!({})));
            let store = store_over(fake.clone(), true);
            let err = rt
                .block_on(async {
                    if list {
                        store.list().await.map(|_| ())
                    } else {
                        store.get(&name).await.map(|_| ())
                    }
                })
                .expect_err("a 50 MB body is refused");
            let pulled = fake.pulled.load(Ordering::SeqCst);
            eprintln!(
                "50 MB body (content-length: {declare_length}, list: {list}): {err}; {pulled} bytes pulled"
            );
            assert!(matches!(err, StoreError::Other(_)), "{err:?}");
            assert!(err.to_string().contains("limit"), "{err}");
            assert_eq!(err.errno(), libc::EIO);
            let most = if declare_length {
                0
            } else {
                MAX_BODY_BYTES + STREAM_CHUNK
            };
            assert!(
                pulled <= most,
                "{pulled} bytes pulled, at most {most} expected"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cap over real HTTPS
// ---------------------------------------------------------------------------------------------

/// A one-route HTTPS server on 127.0.0.1 that answers every request with a `len`-byte body,
/// generated as it is sent (never held whole), counting the bytes the client accepted.
struct HugeServer {
    addr: std::net::SocketAddr,
    ca_path: PathBuf,
    sent: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn huge_server(len: usize, declare_length: bool) -> HugeServer {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hostile test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone(), ca_cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let counter = Arc::clone(&counter);
                    async move {
                        let chunks =
                            futures::stream::iter(0..len.div_ceil(STREAM_CHUNK)).map(move |_| {
                                counter.fetch_add(STREAM_CHUNK, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(Bytes::from(vec![
                                    b'a';
                                    STREAM_CHUNK
                                ]))
                            });
                        let mut response = hyper::Response::builder()
                            .status(200)
                            .header("content-type", "application/json");
                        if declare_length {
                            response = response.header("content-length", len.to_string());
                        }
                        Ok::<_, std::convert::Infallible>(
                            response
                                .body(axum::body::Body::from_stream(chunks))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    HugeServer {
        addr,
        ca_path,
        sent,
        _dir: dir,
    }
}

/// The production transport (`transport::build`: reqwest, rustls, the cap) against a real
/// HTTPS server sending 50 MB: the GET fails with the cap's error, and the server manages to
/// hand over no more than the cap plus what TCP and TLS buffers hold before kvfs hangs up.
#[test]
fn huge_body_over_real_https_is_cut_at_the_cap() {
    common::require_loopback_only();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = SecretName::parse("s").unwrap();
    for declare_length in [true, false] {
        let server = rt.block_on(huge_server(50 * 1024 * 1024, declare_length));
        let transport = kvfs::transport::build(&kvfs::transport::TransportConfig {
            ca_file: Some(server.ca_path.clone()),
            imds_endpoint: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            budget: None,
        })
        .unwrap();
        // The server answers the first (unauthenticated) request with the huge body instead
        // of a challenge; the SDK then collects that body, which is what the cap must cut.
        let config = KeyVaultConfig {
            vault_url: format!("https://{}/", server.addr),
            verify_challenge_resource: false,
        };
        let store = KeyVaultStore::new(&config, fake_credential(), &transport).unwrap();
        let started = std::time::Instant::now();
        let err = rt
            .block_on(async { tokio::time::timeout(CALL_LIMIT, store.get(&name)).await })
            .expect("the GET returns")
            .expect_err("a 50 MB body is refused");
        let sent = server.sent.load(Ordering::SeqCst);
        eprintln!(
            "real HTTPS, 50 MB body (content-length: {declare_length}): {err} after {:?}; server produced {sent} bytes",
            started.elapsed()
        );
        assert!(matches!(err, StoreError::Other(_)), "{err:?}");
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(
            sent < 16 * 1024 * 1024,
            "{sent} bytes produced: the client kept reading past the cap"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Names and paths through a real mount
// ---------------------------------------------------------------------------------------------

/// Where a path leads in the mounted tree, by the kernel's path walk over kvfs's layout.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Root,
    VersionsDir,
    VersionsOf(&'static str),
    /// A secret's latest value, or one version's value.
    File(&'static str),
    /// `..` above the mount root: outside kvfs, not checked.
    Outside,
}

/// The secrets of the mount test: (name as created, versions oldest first).
const SECRETS: [(&str, &[&str]); 3] = [
    ("alpha", &["alpha-v1"]),
    ("Beta-2", &["beta-v1"]),
    ("gamma-3", &["gamma-v1", "gamma-v2"]),
];

struct World {
    /// Bytes of the mountpoint path, before the first `/`.
    prefix_len: usize,
    /// (name, version id, value) for every version.
    versions: Vec<(&'static str, String, &'static str)>,
}

impl World {
    fn secret(&self, c: &[u8]) -> Option<&'static str> {
        SECRETS
            .iter()
            .map(|(n, _)| *n)
            .find(|n| n.as_bytes().eq_ignore_ascii_case(c))
    }

    fn latest(&self, name: &str) -> &'static str {
        self.versions
            .iter()
            .rev()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, v)| *v)
            .unwrap()
    }

    /// The node a path leads to, or the errno the kernel or kvfs must answer.
    fn resolve(&self, components: &[Vec<u8>]) -> Result<(Node, Option<&'static str>), i32> {
        let mut node = Node::Root;
        let mut value = None;
        for c in components {
            // The kernel does not stop a FUSE name at NAME_MAX (255): it forwards longer ones
            // (measured on Linux 6.18, up to PATH_MAX), and kvfs answers them ENOENT like any
            // name Key Vault cannot hold. Only a whole path of PATH_MAX or more is ENAMETOOLONG.
            if components.iter().map(|c| c.len() + 1).sum::<usize>() + self.prefix_len >= 4096 {
                return Err(libc::ENAMETOOLONG);
            }
            if matches!(node, Node::File(_)) {
                return Err(libc::ENOTDIR);
            }
            node = match (c.as_slice(), &node) {
                (b".", _) => node.clone(),
                (b"..", Node::Root) => return Ok((Node::Outside, None)),
                (b"..", Node::VersionsDir) => Node::Root,
                (b"..", Node::VersionsOf(_)) => Node::VersionsDir,
                (b".versions", Node::Root) => Node::VersionsDir,
                (_, Node::Root) => {
                    let name = self.secret(c).ok_or(libc::ENOENT)?;
                    value = Some(self.latest(name));
                    Node::File(name)
                }
                (_, Node::VersionsDir) => Node::VersionsOf(self.secret(c).ok_or(libc::ENOENT)?),
                (_, Node::VersionsOf(name)) => {
                    let found = self
                        .versions
                        .iter()
                        .find(|(n, id, _)| n == name && id.as_bytes() == c)
                        .ok_or(libc::ENOENT)?;
                    value = Some(found.2);
                    Node::File(found.0)
                }
                (_, Node::File(_) | Node::Outside) => unreachable!(),
            };
        }
        Ok((node, value))
    }
}

/// One path component, biased towards the edges of what kvfs and the kernel accept.
fn component(version_ids: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let names: Vec<&str> = SECRETS.iter().map(|(n, _)| *n).collect();
    let valid = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-".to_vec();
    let not_slash_or_nul = (1u8..=255).prop_filter("no slash", |b| *b != b'/');
    prop_oneof![
        // An existing secret, in any case.
        3 => (prop::sample::select(names), prop::collection::vec(any::<bool>(), 8))
            .prop_map(|(n, flips)| n.bytes().zip(flips.iter().cycle())
                .map(|(b, f)| if *f { b.to_ascii_uppercase() } else { b.to_ascii_lowercase() })
                .collect()),
        // A valid name that does not exist (costs a request, answers ENOENT).
        1 => prop::collection::vec(prop::sample::select(valid.clone()), 1..20)
            .prop_map(|mut v| { v.splice(0..0, *b"zz-"); v }),
        // Valid characters, too long for Key Vault but not for the kernel.
        1 => prop::collection::vec(prop::sample::select(valid.clone()), 128..=255),
        // Exactly 255 and 256 bytes.
        1 => prop::collection::vec(not_slash_or_nul.clone(), 255),
        1 => prop::collection::vec(prop::sample::select(valid.clone()), 256),
        1 => prop::collection::vec(prop::sample::select(valid), 4100),
        2 => prop::sample::select(vec![b".".to_vec(), b"..".to_vec(), b".versions".to_vec()]),
        // Not UTF-8, or with control characters and newlines.
        2 => prop::collection::vec(not_slash_or_nul, 1..40),
        1 => prop::sample::select(vec![b"alpha\n".to_vec(), b"\nalpha".to_vec(), b"al\npha".to_vec(),
                                       b"alpha ".to_vec(), b"\xffalpha".to_vec(), b"alpha\xc3".to_vec()]),
        // A version id: a real one, or 32 hex characters that name none.
        2 => prop::sample::select(version_ids).prop_map(String::into_bytes),
        1 => prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), 32),
    ]
}

/// The secret a data-plane request names (`/secrets/{name}/...`), if any.
fn requested_name(path: &str) -> Option<&str> {
    let mut parts = path.trim_start_matches('/').split('/');
    (parts.next() == Some("secrets"))
        .then(|| parts.next())
        .flatten()
        .filter(|n| !n.is_empty())
}

/// Generated names and paths (`.versions/` included) through the kernel: each answers what
/// the path walk over kvfs's layout says (bytes, or ENOENT, ENAMETOOLONG, ENOTDIR, EISDIR),
/// kvfs stays alive and mounted, and no request ever names what Key Vault cannot hold.
#[test]
fn hostile_names_and_paths_through_the_kernel() {
    use std::os::unix::fs::MetadataExt;

    let env = common::TestEnv::start();
    let mut versions = Vec::new();
    for (name, values) in SECRETS {
        for value in values {
            versions.push((name, env.vault().set_secret(name, value), *value));
        }
    }
    let mut mount = env.mount(&[]);
    let world = World {
        versions,
        prefix_len: mount.path.as_os_str().len(),
    };
    let parent_dev = std::fs::metadata(mount.path.parent().unwrap())
        .unwrap()
        .dev();
    let ids: Vec<String> = world.versions.iter().map(|(_, id, _)| id.clone()).collect();
    let path_strategy = (any::<bool>(), prop::collection::vec(component(ids), 1..5)).prop_map(
        |(versions, mut c)| {
            if versions {
                c.insert(0, b".versions".to_vec());
            }
            c
        },
    );
    let checked = Cell::new(0usize);
    let by_errno = RefCellMap::default();
    let seen_requests = Cell::new(env.vault().requests().len());
    let mount_path = mount.path.clone();
    let child = Mutex::new(mount.child.take());
    let result = runner(64).run(&path_strategy, |components| {
        let mut raw = mount_path.as_os_str().as_bytes().to_vec();
        for c in &components {
            raw.push(b'/');
            raw.extend_from_slice(c);
        }
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&raw));
        let expected = world.resolve(&components);
        let got = std::fs::metadata(path);
        match (&expected, &got) {
            (Ok((Node::Outside, _)), _) => {}
            (Ok((Node::File(_), Some(value))), Ok(meta)) => {
                prop_assert!(meta.is_file());
                prop_assert_eq!(meta.len(), value.len() as u64);
                let bytes = std::fs::read(path).ok();
                prop_assert_eq!(bytes.as_deref(), Some(value.as_bytes()));
                by_errno.add(0);
            }
            (Ok((_, _)), Ok(meta)) => {
                prop_assert!(meta.is_dir(), "{:?} is not a directory", components);
                let read = std::fs::read(path).map_err(|e| e.raw_os_error());
                prop_assert_eq!(read, Err(Some(libc::EISDIR)));
                by_errno.add(0);
            }
            (Err(want), Err(e)) => {
                prop_assert_eq!(e.raw_os_error(), Some(*want), "{:?}", components);
                by_errno.add(*want);
            }
            _ => prop_assert!(
                false,
                "{:?}: expected {:?}, got {:?}",
                components,
                expected,
                got
            ),
        }
        checked.set(checked.get() + 1);
        // kvfs is alive and the mount answers.
        let exited = child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        prop_assert!(exited.is_none(), "kvfs exited: {:?}", exited);
        prop_assert!(
            kvfs::testing::mount_is_up(&mount_path, parent_dev),
            "mount stopped answering"
        );
        // No request named a name Key Vault cannot hold.
        let requests = env.vault().requests();
        for r in requests.iter().skip(seen_requests.get()) {
            if let Some(name) = requested_name(&r.path) {
                prop_assert!(
                    kvfs::emulator::is_valid_secret_name(name),
                    "request for {:?} after {:?}",
                    r.path,
                    components
                );
            }
        }
        seen_requests.set(requests.len());
        Ok(())
    });
    mount.child = child.into_inner().unwrap();
    let counters = env.counters();
    eprintln!(
        "names: {} paths checked; answers by errno (0 = success): {:?}; emulator: {} GETs, {} version lists, {} total",
        checked.get(),
        by_errno.0.borrow(),
        counters.get_secret,
        counters.list_versions,
        counters.total
    );
    result.unwrap();
    assert!(
        counters
            .get_by_name
            .keys()
            .all(|n| kvfs::emulator::is_valid_secret_name(n)),
        "{:?}",
        counters.get_by_name
    );
    assert!(
        mount.terminate().success(),
        "kvfs exits cleanly after the run"
    );
}

/// errno -> count, shared with the property closure.
#[derive(Default)]
struct RefCellMap(std::cell::RefCell<std::collections::BTreeMap<i32, usize>>);

impl RefCellMap {
    fn add(&self, errno: i32) {
        *self.0.borrow_mut().entry(errno).or_default() += 1;
    }
}
