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
use kvfs::emulator::{Emulator, EmulatorConfig, Fault, FaultAction, RequestKind, SecretOptions};
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
        challenge.starts_with("Bearer authorization=\"https://login.microsoftonline.com/"),
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
    let token_url = format!("{}tenant-1/oauth2/v2.0/token", h.emu.authority_host());
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
        tenant_id: Some(kvfs::emulator::EMULATOR_TENANT_ID.into()),
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
