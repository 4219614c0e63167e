//! The Key Vault emulator over real HTTPS: wire shapes checked with a plain reqwest client, then
//! the official Rust SDK (`SecretClient`) run against it end to end.
//!
//! Everything binds and connects to 127.0.0.1 only.

use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{AsyncRawResponse, ClientOptions, HttpClient, Request, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use futures::TryStreamExt;
use kvfs::emulator::{
    API_VERSIONS, EMULATOR_TENANT_ID, Emulator, EmulatorConfig, Fault, FaultAction, RequestKind,
    SecretOptions,
};
use serde_json::Value;

struct Harness {
    emu: Emulator,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn http_client(emu: &Emulator, timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let emu = Emulator::start(EmulatorConfig::new(dir.path()))
        .await
        .expect("emulator starts");
    assert!(emu.vault_url().starts_with("https://127.0.0.1:"));
    assert!(emu.vault_url().ends_with('/'));
    assert!(emu.imds_endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        std::fs::read_to_string(emu.ca_path()).expect("ca.pem"),
        emu.ca_pem()
    );
    let http = http_client(&emu, Duration::from_secs(10));
    Harness { emu, http, dir }
}

/// The body as JSON (`Null` when it is not JSON).
async fn json(rsp: reqwest::Response) -> Value {
    let bytes = rsp.bytes().await.expect("body");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

impl Harness {
    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.emu.vault_url())
    }

    async fn imds_token(&self, extra: &str) -> String {
        let url = format!(
            "{}/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https://vault.azure.net{extra}",
            self.emu.imds_endpoint()
        );
        let rsp = self
            .http
            .get(url)
            .header("Metadata", "true")
            .send()
            .await
            .expect("IMDS answers");
        assert_eq!(rsp.status(), 200);
        let body = json(rsp).await;
        assert!(body["expires_on"].is_string(), "{body}");
        assert!(body["expires_in"].is_string(), "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["resource"], "https://vault.azure.net");
        body["access_token"].as_str().expect("token").to_owned()
    }

    async fn get(
        &self,
        path_and_query: &str,
        token: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let rsp = self
            .http
            .get(self.url(path_and_query))
            .bearer_auth(token)
            .send()
            .await
            .expect("vault answers");
        let status = rsp.status().as_u16();
        let headers = rsp.headers().clone();
        let body = json(rsp).await;
        (status, headers, body)
    }
}

#[tokio::test]
async fn challenge_then_imds_token_then_get() {
    let h = start().await;
    let vault = h.emu.vault();
    let v1 = vault.set_secret("Db-Password", "old");
    let v2 = vault.set_secret("db-password", "hunter2");

    let rsp = h
        .http
        .get(h.url("secrets/db-password/?api-version=7.6"))
        .send()
        .await
        .expect("challenge");
    assert_eq!(rsp.status(), 401);
    let challenge = rsp.headers()["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.starts_with(&format!(
            "Bearer authorization=\"https://login.windows.net/{EMULATOR_TENANT_ID}\""
        )),
        "{challenge}"
    );
    assert!(
        challenge.ends_with("resource=\"https://vault.azure.net\""),
        "{challenge}"
    );
    let body = json(rsp).await;
    assert_eq!(body["error"]["code"], "Unauthorized");

    let token = h
        .imds_token("&client_id=11111111-2222-3333-4444-555555555555")
        .await;
    let (status, _, body) = h.get("secrets/db-password/?api-version=7.6", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "hunter2");
    let base = h.emu.vault_url();
    assert_eq!(body["id"], format!("{base}secrets/Db-Password/{v2}"));
    assert_eq!(body["attributes"]["enabled"], true);
    assert_eq!(body["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    assert!(body["attributes"]["created"].is_i64());

    let (status, _, body) = h.get("secrets/DB-PASSWORD?api-version=7.6", &token).await;
    assert_eq!((status, &body["value"]), (200, &Value::from("hunter2")));
    let (status, _, body) = h
        .get(&format!("secrets/db-password/{v1}?api-version=7.6"), &token)
        .await;
    assert_eq!((status, &body["value"]), (200, &Value::from("old")));

    let (status, _, body) = h
        .get("secrets/db-password/versions?api-version=7.6", &token)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["value"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        body["value"][0].get("value").is_none(),
        "lists carry no values"
    );

    let (status, _, body) = h.get("secrets/db-password", &token).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &Value::from("BadParameter"))
    );

    let c = vault.counters();
    assert_eq!(c.challenges, 1);
    assert_eq!(c.imds_tokens, 1);
    assert_eq!(c.get_secret, 4);
    assert_eq!(c.list_versions, 1);
    assert_eq!(c.get_by_name.get("db-password"), Some(&4));
    let requests = vault.requests();
    let imds = requests
        .iter()
        .find(|r| r.kind == RequestKind::ImdsToken)
        .expect("IMDS request logged");
    assert!(
        imds.query
            .contains("client_id=11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(imds.status, 200);
    h.emu.shutdown().await;
}

#[tokio::test]
async fn imds_refusals() {
    let h = start().await;
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https://vault.azure.net",
        h.emu.imds_endpoint()
    );
    let rsp = h.http.get(&url).send().await.expect("IMDS");
    assert_eq!(rsp.status(), 400, "Metadata header required");
    h.emu.vault().add_fault(Fault {
        kind: Some(RequestKind::ImdsToken),
        name: None,
        action: FaultAction::Status {
            status: 500,
            retry_after: None,
        },
        times: Some(1),
    });
    let rsp = h.http.get(&url).header("Metadata", "true");
    assert_eq!(rsp.send().await.expect("IMDS").status(), 500);
    h.emu.vault().set_identity_assigned(false);
    let rsp = h
        .http
        .get(&url)
        .header("Metadata", "true")
        .send()
        .await
        .expect("IMDS");
    assert_eq!(rsp.status(), 400);
    let body = json(rsp).await;
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["error_description"], "Identity not found");
}

#[tokio::test]
async fn paging_sixty_secrets() {
    let h = start().await;
    for i in 0..60 {
        h.emu.vault().set_secret(&format!("secret-{i:02}"), "v");
    }
    h.emu.vault().set_enabled("secret-07", false);
    let token = h.emu.vault().issue_token("tests");
    let mut url = h.url("secrets?api-version=7.6&maxresults=25");
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let rsp = h
            .http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("page");
        assert_eq!(rsp.status(), 200);
        let body = json(rsp).await;
        pages += 1;
        for item in body["value"].as_array().expect("array") {
            let id = item["id"].as_str().expect("id");
            names.push(id.rsplit('/').next().expect("name").to_owned());
            assert!(item.get("value").is_none());
            if id.ends_with("secret-07") {
                assert_eq!(item["attributes"]["enabled"], false);
            }
        }
        match body["nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&h.url("secrets?api-version=7.6&")),
                    "{next}"
                );
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..60).map(|i| format!("secret-{i:02}")).collect();
    assert_eq!(names, want);
    assert_eq!(h.emu.vault().counters().list_secrets, 3);

    for bad in ["maxresults=0", "maxresults=26", "maxresults=x"] {
        let (status, _, body) = h
            .get(&format!("secrets?api-version=7.6&{bad}"), &token)
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &Value::from("BadParameter"))
        );
    }
}

#[tokio::test]
async fn error_bodies() {
    let h = start().await;
    let vault = h.emu.vault();
    let token = vault.issue_token("tests");
    let opts = SecretOptions {
        enabled: false,
        ..SecretOptions::default()
    };
    vault.set_secret_with("off", "x", opts);
    let (status, _, body) = h.get("secrets/missing/?api-version=7.6", &token).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &Value::from("SecretNotFound"))
    );
    let (status, _, body) = h.get("secrets/off/?api-version=7.6", &token).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Forbidden");
    assert_eq!(body["error"]["innererror"]["code"], "SecretDisabled");
    vault.set_rbac_allowed(false);
    let (status, _, body) = h.get("secrets?api-version=7.6", &token).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["innererror"]["code"], "ForbiddenByRbac");
    let (status, _, _) = h.get("secrets?api-version=7.6", "kvemu.1.x.y").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn faults() {
    let h = start().await;
    let vault = h.emu.vault();
    vault.set_secret("a", "1");
    let token = vault.issue_token("tests");
    vault.add_fault(Fault {
        kind: Some(RequestKind::GetSecret),
        name: Some("A".into()),
        action: FaultAction::Status {
            status: 429,
            retry_after: Some(3),
        },
        times: Some(1),
    });
    let (status, headers, body) = h.get("secrets/a/?api-version=7.6", &token).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(body["error"]["code"], "Throttled");
    let (status, _, _) = h.get("secrets/a/?api-version=7.6", &token).await;
    assert_eq!(status, 200, "a fault with times=1 is spent");

    vault.add_fault(Fault {
        kind: None,
        name: None,
        action: FaultAction::Drop,
        times: None,
    });
    let err = h
        .http
        .get(h.url("secrets/a/?api-version=7.6"))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(err.is_err(), "a dropped connection is an error");
    vault.clear_faults();

    vault.add_fault(Fault {
        kind: Some(RequestKind::ListSecrets),
        name: None,
        action: FaultAction::Hang,
        times: Some(1),
    });
    let impatient = http_client(&h.emu, Duration::from_millis(300));
    let err = impatient
        .get(h.url("secrets?api-version=7.6"))
        .bearer_auth(&token)
        .send()
        .await
        .expect_err("a hung request times out");
    assert!(err.is_timeout(), "{err}");

    vault.add_fault(Fault {
        kind: None,
        name: None,
        action: FaultAction::Latency(Duration::from_millis(200)),
        times: Some(1),
    });
    let started = std::time::Instant::now();
    let (status, _, _) = h.get("secrets/a?api-version=7.6", &token).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let c = vault.counters();
    assert_eq!(c.faults_injected, 4);
    let statuses: Vec<u16> = vault.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200, 0, 0, 200]);
}

#[tokio::test]
async fn entra_token_and_admin_api() {
    let h = start().await;
    let form = [
        ("client_assertion", "federated-token\n"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_id", "app"),
        ("grant_type", "client_credentials"),
        ("scope", "https://vault.azure.net/.default"),
    ];
    let body = |pairs: &[(&str, &str)]| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        s.extend_pairs(pairs);
        s.finish()
    };
    let token_url = format!(
        "{}{EMULATOR_TENANT_ID}/oauth2/v2.0/token",
        h.emu.authority_host()
    );
    let rsp = h
        .http
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body(&form))
        .send()
        .await
        .expect("entra");
    assert_eq!(rsp.status(), 200);
    let token_body = json(rsp).await;
    assert_eq!(token_body["expires_in"], 86400);
    let token = token_body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let rsp = h
        .http
        .post(&token_url)
        .body(body(&form[1..]))
        .send()
        .await
        .expect("entra");
    assert_eq!(rsp.status(), 400);

    let admin = |p: &str| h.url(&format!("_admin/{p}"));
    let rsp = h
        .http
        .put(admin("secrets/from-admin"))
        .body(
            serde_json::json!({"value": "v", "contentType": "text/plain", "tags": {"a": "b"}})
                .to_string(),
        )
        .send()
        .await
        .expect("admin put");
    assert_eq!(rsp.status(), 200);
    let version = json(rsp).await;
    assert_eq!(version["version"].as_str().map(str::len), Some(32));
    let big = "x".repeat(25 * 1024 + 1);
    let rsp = h
        .http
        .put(admin("secrets/too-big"))
        .body(serde_json::json!({ "value": big }).to_string())
        .send()
        .await
        .expect("admin put");
    assert_eq!(rsp.status(), 400);
    let (status, _, body) = h.get("secrets/from-admin/?api-version=7.6", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["contentType"], "text/plain");
    assert_eq!(body["tags"]["a"], "b");

    let fault = serde_json::json!({"kind": "get_secret", "action": {"status": {"status": 503}}, "times": 1});
    let rsp = h
        .http
        .post(admin("faults"))
        .body(fault.to_string())
        .send()
        .await
        .expect("fault");
    assert_eq!(rsp.status(), 204);
    let (status, _, _) = h.get("secrets/from-admin/?api-version=7.6", &token).await;
    assert_eq!(status, 503);

    let counters = json(
        h.http
            .get(admin("counters"))
            .send()
            .await
            .expect("counters"),
    )
    .await;
    assert_eq!(counters["entra_tokens"], 2);
    assert_eq!(counters["get_secret"], 1);
    assert_eq!(counters["faults_injected"], 1);
    assert_eq!(counters["total"], 4, "admin requests are not counted");
    let rsp = h
        .http
        .post(admin("counters/reset"))
        .send()
        .await
        .expect("reset");
    assert_eq!(rsp.status(), 204);
    assert_eq!(h.emu.vault().counters().total, 0);
    let rsp = h
        .http
        .delete(admin("secrets/from-admin"))
        .send()
        .await
        .expect("delete");
    assert_eq!(rsp.status(), 204);
    let (status, _, _) = h.get("secrets/from-admin/?api-version=7.6", &token).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let h = start().await;
    let url = h.url("secrets?api-version=7.6");
    h.emu.shutdown().await;
    assert!(h.http.get(&url).send().await.is_err());
}

/// The SDK's transport for these tests: IMDS requests (169.254.169.254) go to the emulator's
/// IMDS listener, and anything that is not 127.0.0.1 after that is refused, never sent.
#[derive(Debug)]
struct LoopbackTransport {
    http: reqwest::Client,
    imds: url::Url,
}

#[async_trait::async_trait]
impl HttpClient for LoopbackTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut request = request.clone();
        if request.url().host_str() == Some("169.254.169.254") {
            let url = request.url_mut();
            let _ = url.set_host(self.imds.host_str());
            let _ = url.set_port(self.imds.port());
        }
        if request.url().host_str() != Some("127.0.0.1") {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Io,
                format!("test transport refuses {}", request.url()),
            ));
        }
        self.http.execute_request(&request).await
    }
}

fn client_options(h: &Harness) -> ClientOptions {
    let imds = url::Url::parse(&h.emu.imds_endpoint()).expect("IMDS URL");
    let transport = LoopbackTransport {
        http: h.http.clone(),
        imds,
    };
    ClientOptions {
        transport: Some(Transport::new(Arc::new(transport))),
        ..ClientOptions::default()
    }
}

fn secret_client(h: &Harness, credential: Arc<dyn TokenCredential>) -> SecretClient {
    let options = SecretClientOptions {
        client_options: client_options(h),
        verify_challenge_resource: Some(false),
        ..SecretClientOptions::default()
    };
    SecretClient::new(&h.emu.vault_url(), credential, Some(options)).expect("client")
}

#[tokio::test]
async fn official_sdk_with_managed_identity() {
    let h = start().await;
    let vault = h.emu.vault();
    for i in 0..30 {
        vault.set_secret(&format!("bulk-{i:02}"), "x");
    }
    let v1 = vault.set_secret("rotated", "first");
    vault.set_secret("rotated", "second");
    let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id: Some(UserAssignedId::ClientId("my-client-id".into())),
        client_options: client_options(&h),
    }))
    .expect("credential");
    let client = secret_client(&h, credential);

    let secret = client
        .get_secret("rotated", None)
        .await
        .expect("get_secret");
    let secret = secret.into_model().expect("model");
    assert_eq!(secret.value.as_deref(), Some("second"));
    assert_eq!(secret.resource_id().expect("id").name, "rotated");

    let mut names = Vec::new();
    let mut pager = client.list_secret_properties(None).expect("pager");
    while let Some(item) = pager.try_next().await.expect("page") {
        names.push(item.resource_id().expect("id").name);
    }
    assert_eq!(names.len(), 31);
    assert_eq!(
        vault.counters().list_secrets,
        2,
        "31 secrets are 2 pages of 25"
    );

    let mut versions = Vec::new();
    let mut pager = client
        .list_secret_properties_versions("rotated", None)
        .expect("pager");
    while let Some(item) = pager.try_next().await.expect("page") {
        versions.push(item.resource_id().expect("id").version);
    }
    assert_eq!(versions.len(), 2);
    assert!(versions.contains(&Some(v1.clone())));

    vault.add_fault(Fault {
        kind: Some(RequestKind::GetSecret),
        name: None,
        action: FaultAction::Status {
            status: 429,
            retry_after: Some(1),
        },
        times: Some(1),
    });
    let started = std::time::Instant::now();
    let options = SecretClientGetSecretOptions {
        secret_version: Some(v1),
        ..Default::default()
    };
    let old = client.get_secret("rotated", Some(options)).await;
    let old = old.expect("retried past 429").into_model().expect("model");
    assert_eq!(old.value.as_deref(), Some("first"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );

    let err = client.get_secret("missing", None).await.expect_err("404");
    assert_eq!(err.http_status().map(u16::from), Some(404));

    let c = vault.counters();
    assert_eq!(c.challenges, 1, "one challenge per client");
    assert_eq!(c.imds_tokens, 1, "the SDK caches the token");
    let imds = vault
        .requests()
        .into_iter()
        .find(|r| r.kind == RequestKind::ImdsToken);
    let query = imds.map(|r| r.query).unwrap_or_default();
    assert!(query.contains("client_id=my-client-id"), "{query}");
    h.emu.shutdown().await;
}

#[tokio::test]
async fn official_sdk_with_workload_identity() {
    let h = start().await;
    h.emu.vault().set_secret("db-password", "hunter2");
    let token_file = h.dir.path().join("federated-token");
    std::fs::write(&token_file, "eyJfederated.token.jwt\n").expect("token file");
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = h.emu.authority_host();
    let client_options = ClientOptions {
        cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
        ..client_options(&h)
    };
    let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions { client_options },
        client_id: Some("workload-app".into()),
        tenant_id: Some(EMULATOR_TENANT_ID.into()),
        token_file_path: Some(token_file),
    }))
    .expect("credential");
    let client = secret_client(&h, credential);
    let secret = client
        .get_secret("db-password", None)
        .await
        .expect("get_secret");
    let secret = secret.into_model().expect("model");
    assert_eq!(secret.value.as_deref(), Some("hunter2"));
    let c = h.emu.vault().counters();
    assert_eq!((c.entra_tokens, c.challenges, c.get_secret), (1, 1, 1));
}

/// An IMDS token for `resource`, straight from the emulator's IMDS (`path` is the token path).
async fn imds_token_at(h: &Harness, path: &str, resource: &str) -> String {
    let url = format!(
        "{}{path}?api-version=2018-02-01&resource={resource}",
        h.emu.imds_endpoint()
    );
    let rsp = h.http.get(url).header("Metadata", "true").send().await;
    let rsp = rsp.expect("IMDS answers");
    assert_eq!(rsp.status(), 200);
    let body = json(rsp).await;
    assert_eq!(body["resource"], resource);
    body["access_token"].as_str().expect("token").to_owned()
}

/// An Entra client-credentials token for `scope` from `tenant`.
async fn entra_token(h: &Harness, tenant: &str, scope: &str) -> String {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", "app"),
            ("client_secret", "s3cret"),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ])
        .finish();
    let url = format!("{}{tenant}/oauth2/v2.0/token", h.emu.authority_host());
    let rsp = h.http.post(url).body(form).send().await.expect("entra");
    assert_eq!(rsp.status(), 200);
    json(rsp).await["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// The JSON claims of a JWT.
fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Asserts a 401 with the challenge header and Key Vault's error body; returns the message.
fn assert_challenged(status: u16, headers: &reqwest::header::HeaderMap, body: &Value) -> String {
    assert_eq!(status, 401, "{body}");
    let challenge = headers["www-authenticate"].to_str().expect("ascii");
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"https://login.windows.net/{EMULATOR_TENANT_ID}\", resource=\"https://vault.azure.net\""
        )
    );
    assert_eq!(body["error"]["code"], "Unauthorized");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

#[tokio::test]
async fn tokens_for_another_audience_or_tenant_are_refused() {
    let h = start().await;
    h.emu.vault().set_secret("db", "v");
    let path = "secrets/db?api-version=7.6";

    let wrong = imds_token_at(
        &h,
        "/metadata/identity/oauth2/token",
        "https://management.azure.com",
    )
    .await;
    assert_eq!(claims(&wrong)["aud"], "https://management.azure.com");
    assert_eq!(claims(&wrong)["tid"], EMULATOR_TENANT_ID);
    let (status, headers, body) = h.get(path, &wrong).await;
    let message = assert_challenged(status, &headers, &body);
    assert!(
        message.starts_with("AKV10022: Invalid audience"),
        "{message}"
    );
    assert!(
        message.contains("https://management.azure.com"),
        "{message}"
    );

    let storage = entra_token(&h, EMULATOR_TENANT_ID, "https://storage.azure.com/.default").await;
    assert_eq!(claims(&storage)["aud"], "https://storage.azure.com");
    let (status, headers, body) = h.get(path, &storage).await;
    let message = assert_challenged(status, &headers, &body);
    assert!(
        message.starts_with("AKV10022: Invalid audience"),
        "{message}"
    );

    let foreign = entra_token(&h, "other-tenant", "https://vault.azure.net/.default").await;
    assert_eq!(
        (&claims(&foreign)["aud"], &claims(&foreign)["tid"]),
        (
            &Value::from("https://vault.azure.net"),
            &Value::from("other-tenant")
        )
    );
    let (status, headers, body) = h.get(path, &foreign).await;
    let message = assert_challenged(status, &headers, &body);
    assert!(message.starts_with("AKV10032: Invalid issuer"), "{message}");

    let direct =
        h.emu
            .vault()
            .issue_token_for("tests", "https://vault.azure.cn", EMULATOR_TENANT_ID);
    let (status, headers, body) = h.get(path, &direct).await;
    assert!(assert_challenged(status, &headers, &body).starts_with("AKV10022"));

    let (status, headers, body) = h.get(path, "not-a-token").await;
    assert!(assert_challenged(status, &headers, &body).starts_with("AKV10032"));

    let good = entra_token(&h, EMULATOR_TENANT_ID, "https://vault.azure.net/.default").await;
    let (status, _, body) = h.get(path, &good).await;
    assert_eq!((status, &body["value"]), (200, &Value::from("v")));
    let good = imds_token_at(
        &h,
        "/metadata/identity/oauth2/token",
        "https://vault.azure.net",
    )
    .await;
    assert_eq!(h.get(path, &good).await.0, 200);

    let c = h.emu.vault().counters();
    assert_eq!((c.challenges, c.get_secret), (5, 2));
    assert_eq!((c.imds_tokens, c.entra_tokens), (2, 3));
}

#[tokio::test]
async fn api_version_must_be_a_known_one() {
    let h = start().await;
    h.emu.vault().set_secret("db", "v");
    let token = h.emu.vault().issue_token("tests");
    for version in API_VERSIONS {
        let (status, _, body) = h
            .get(&format!("secrets/db?api-version={version}"), &token)
            .await;
        assert_eq!(status, 200, "{version}: {body}");
    }
    assert!(API_VERSIONS.contains(&"2025-07-01"), "the Rust SDK's");
    assert!(API_VERSIONS.contains(&"2026-04-01"), "the Python SDK's");
    for query in [
        "",
        "?api-version=",
        "?api-version=7.7",
        "?api-version=2099-01-01",
        "?api-version=7.6-bogus",
        "?maxresults=1",
    ] {
        for path in ["secrets/db", "secrets", "secrets/db/versions"] {
            let (status, _, body) = h.get(&format!("{path}{query}"), &token).await;
            assert_eq!(status, 400, "{path}{query}: {body}");
            assert_eq!(body["error"]["code"], "BadParameter", "{path}{query}");
            assert!(body["error"]["message"].is_string());
        }
    }
    let (status, _, body) = h.get("secrets?api-version=7.7", "").await;
    assert_eq!(status, 401, "the challenge comes first: {body}");
    let c = h.emu.vault().counters();
    assert_eq!(c.get_secret, API_VERSIONS.len() as u64 + 6);
}

#[tokio::test]
async fn imds_answers_the_path_with_a_trailing_slash() {
    let h = start().await;
    h.emu.vault().set_secret("db", "v");
    let token = imds_token_at(
        &h,
        "/metadata/identity/oauth2/token/",
        "https://vault.azure.net",
    )
    .await;
    let (status, _, body) = h.get("secrets/db?api-version=7.6", &token).await;
    assert_eq!((status, &body["value"]), (200, &Value::from("v")));
    let url = format!(
        "{}/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https://vault.azure.net",
        h.emu.imds_endpoint()
    );
    let rsp = h.http.get(&url).send().await.expect("IMDS");
    assert_eq!(rsp.status(), 400, "Metadata header required here too");
    let rsp = h.http.post(&url).header("Metadata", "true").send().await;
    let rsp = rsp.expect("IMDS");
    assert_eq!(rsp.status(), 405);
    assert_eq!(json(rsp).await["error"], "invalid_request");
    let rsp = h
        .http
        .get(format!("{}/metadata/instance", h.emu.imds_endpoint()))
        .header("Metadata", "true")
        .send()
        .await
        .expect("IMDS");
    assert_eq!(rsp.status(), 404);
    assert_eq!(json(rsp).await["error"], "not_found");
    let c = h.emu.vault().counters();
    assert_eq!(c.imds_tokens, 3, "both spellings count as token requests");
    let kinds: Vec<RequestKind> = h.emu.vault().requests().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::ImdsToken,
            RequestKind::GetSecret,
            RequestKind::ImdsToken,
            RequestKind::ImdsToken,
            RequestKind::Other
        ]
    );
}

#[tokio::test]
async fn unimplemented_operations_answer_key_vault_errors() {
    let h = start().await;
    let vault = h.emu.vault();
    let version = vault.set_secret("db", "v");
    let token = vault.issue_token("tests");
    let cases = [
        ("DELETE", "secrets/db".to_owned(), 405, "MethodNotAllowed"),
        (
            "PATCH",
            format!("secrets/db/{version}"),
            405,
            "MethodNotAllowed",
        ),
        ("POST", "secrets".to_owned(), 405, "MethodNotAllowed"),
        (
            "DELETE",
            "secrets/db/versions".to_owned(),
            405,
            "MethodNotAllowed",
        ),
        (
            "POST",
            "secrets/db/backup".to_owned(),
            405,
            "MethodNotAllowed",
        ),
        ("GET", "keys/k".to_owned(), 404, "NotFound"),
        ("GET", "deletedsecrets".to_owned(), 404, "NotFound"),
        ("GET", "secrets/db/a/b".to_owned(), 404, "NotFound"),
    ];
    for (method, path, want_status, want_code) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let rsp = h
            .http
            .request(method.clone(), h.url(&format!("{path}?api-version=7.6")))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("answer");
        assert_eq!(rsp.status().as_u16(), want_status, "{method} {path}");
        let content_type = rsp.headers()["content-type"].to_str().expect("ascii");
        assert_eq!(content_type, "application/json", "{method} {path}");
        let body = json(rsp).await;
        assert_eq!(body["error"]["code"], want_code, "{method} {path}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{method} {path}");
    }
    let rsp = h
        .http
        .delete(h.url("secrets/db?api-version=7.6"))
        .send()
        .await;
    let rsp = rsp.expect("answer");
    let (status, headers) = (rsp.status().as_u16(), rsp.headers().clone());
    let message = assert_challenged(status, &headers, &json(rsp).await);
    assert!(message.starts_with("AKV10000"), "{message}");
    let (status, _, body) = h.get("secrets/db?api-version=7.6", &token).await;
    assert_eq!(
        (status, &body["value"]),
        (200, &Value::from("v")),
        "still there"
    );
}

#[tokio::test]
async fn empty_pages_carry_next_links() {
    let h = start().await;
    let vault = h.emu.vault();
    for i in 0..3 {
        vault.set_secret(&format!("s-{i}"), "v");
    }
    let rsp = h
        .http
        .post(h.url("_admin/paging"))
        .body(r#"{"emptyPages": 2}"#)
        .send()
        .await
        .expect("admin");
    assert_eq!(rsp.status(), 204);
    let rsp = h
        .http
        .post(h.url("_admin/paging"))
        .body(r#"{"pages": 2}"#)
        .send()
        .await;
    assert_eq!(rsp.expect("admin").status(), 400);
    let token = vault.issue_token("tests");
    let mut url = h.url("secrets?api-version=7.6&maxresults=2");
    let mut sizes = Vec::new();
    loop {
        let rsp = h
            .http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("page");
        assert_eq!(rsp.status(), 200);
        let body = json(rsp).await;
        sizes.push(body["value"].as_array().expect("value array").len());
        match body["nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&h.url("secrets?api-version=7.6&$skiptoken=")),
                    "{next}"
                );
                assert!(next.ends_with("&maxresults=2"), "{next}");
                url = next.to_owned();
            }
            None => {
                assert!(body["nextLink"].is_null(), "{body}");
                break;
            }
        }
    }
    assert_eq!(sizes, [0, 0, 2, 0, 0, 1, 0, 0]);

    let port = url::Url::parse(&h.emu.vault_url())
        .expect("url")
        .port()
        .expect("port");
    let rsp = h
        .http
        .get(h.url("secrets?api-version=7.6"))
        .header("host", "localhost")
        .bearer_auth(&token)
        .send()
        .await
        .expect("page");
    let next = json(rsp).await["nextLink"]
        .as_str()
        .expect("next")
        .to_owned();
    assert!(
        next.starts_with(&format!("https://localhost:{port}/secrets?")),
        "the port is always spelled out, as Azure writes :443: {next}"
    );

    let (status, _, body) = h
        .get("secrets/unknown/versions?api-version=7.6", &token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"], serde_json::json!([]));
    assert!(body["nextLink"].is_string(), "empty pages here too: {body}");
}

#[tokio::test]
async fn official_sdk_pager_crosses_empty_pages() {
    let h = start().await;
    let vault = h.emu.vault();
    for i in 0..60 {
        vault.set_secret(&format!("secret-{i:02}"), "v");
    }
    let mut want_versions = Vec::new();
    for i in 0..27 {
        want_versions.push(vault.set_secret("rotated", &format!("v{i}")));
    }
    vault.set_empty_pages(3);
    let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id: None,
        client_options: client_options(&h),
    }))
    .expect("credential");
    let client = secret_client(&h, credential);

    let mut names = Vec::new();
    let mut pager = client.list_secret_properties(None).expect("pager");
    while let Some(item) = pager.try_next().await.expect("page") {
        names.push(item.resource_id().expect("id").name);
    }
    let mut want: Vec<String> = (0..60).map(|i| format!("secret-{i:02}")).collect();
    want.insert(60, "rotated".into());
    want.sort();
    assert_eq!(names, want);

    let mut versions = Vec::new();
    let mut pager = client
        .list_secret_properties_versions("rotated", None)
        .expect("pager");
    while let Some(item) = pager.try_next().await.expect("page") {
        versions.push(item.resource_id().expect("id").version.expect("version"));
    }
    assert_eq!(versions, want_versions);

    let c = vault.counters();
    // Pages of items, each after 3 empty pages, then 3 trailing empty pages.
    assert_eq!(c.list_secrets, 3 * 4 + 3, "61 secrets: {c:?}");
    assert_eq!(c.list_versions, 2 * 4 + 3, "27 versions: {c:?}");
    let data: Vec<_> = vault
        .requests()
        .into_iter()
        .filter(|r| matches!(r.kind, RequestKind::ListSecrets | RequestKind::ListVersions))
        .collect();
    assert!(
        data.iter()
            .all(|r| r.query.contains("api-version=2025-07-01")),
        "the Rust SDK sends 2025-07-01: {data:?}"
    );
    h.emu.shutdown().await;
}

/// A client that trusts `ca_pem` and keeps no idle connections (the server restarts under it).
fn fresh_client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

#[tokio::test]
async fn state_dir_keeps_ca_and_token_key_across_restarts() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let first = Emulator::start(EmulatorConfig::new(&state))
        .await
        .expect("first start");
    let port = |u: &str| url::Url::parse(u).expect("url").port().expect("port");
    let (vault_port, imds_port) = (port(&first.vault_url()), port(&first.imds_endpoint()));
    let old_ca = first.ca_pem().to_owned();
    let old_client = fresh_client(&old_ca);
    let token = first.vault().issue_token("before-restart");
    let list = format!("{}secrets?api-version=7.6", first.vault_url());
    let rsp = old_client.get(&list).bearer_auth(&token).send().await;
    assert_eq!(rsp.expect("first").status(), 200);
    for (file, mode) in [("ca.pem", 0o644), ("ca.key", 0o600), ("token.key", 0o600)] {
        let meta = std::fs::metadata(state.join(file)).expect(file);
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    first.shutdown().await;

    let config = EmulatorConfig {
        vault_port,
        imds_port,
        ..EmulatorConfig::new(&state)
    };
    let second = Emulator::start(config).await.expect("restart");
    assert_eq!(second.ca_pem(), old_ca);
    assert_eq!(
        std::fs::read_to_string(second.ca_path()).expect("ca"),
        old_ca
    );
    second.vault().set_secret("db", "after");
    let rsp = old_client
        .get(format!("{}secrets/db?api-version=7.6", second.vault_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the old CA still trusts the restarted emulator");
    assert_eq!(
        rsp.status(),
        200,
        "a token from before the restart verifies"
    );
    assert_eq!(json(rsp).await["value"], "after");
    second.shutdown().await;

    let config = EmulatorConfig {
        vault_port,
        imds_port,
        ..EmulatorConfig::new(dir.path().join("other"))
    };
    let third = Emulator::start(config).await.expect("fresh state");
    assert_ne!(third.ca_pem(), old_ca, "a fresh state dir gets a new CA");
    let err = old_client.get(&list).bearer_auth(&token).send().await;
    assert!(err.is_err(), "the old CA does not trust the new one");
    let new_client = fresh_client(third.ca_pem());
    let rsp = new_client.get(&list).bearer_auth(&token).send().await;
    let rsp = rsp.expect("new CA trusted");
    assert_eq!(rsp.status(), 401, "the old token key is gone");
    assert_eq!(third.vault().counters().challenges, 1);
    third.shutdown().await;
}
