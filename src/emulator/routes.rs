//! HTTP surface of the emulator: the routers, the gate every request passes, and the Key Vault
//! data-plane handlers.
//!
//! The gate (an axum middleware) does what is common to all routes, in Key Vault's order:
//! classify, count, log, inject faults, then on the data plane add service latency, challenge
//! requests without a valid bearer token, refuse by RBAC and require `api-version`. Handlers
//! behind it only produce content, so they read like the service's documentation.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::fault::{FaultAction, Plane, RequestKind, Route, Server, classify};
use super::server::DropConnection;
use super::vault::{
    Item, Lookup, MAX_VALUE_BYTES, RequestRecord, SecretOptions, Vault, Version,
    is_valid_secret_name,
};
use super::{admin, identity};

/// Tenant named in the challenge and accepted by the Entra endpoint.
pub const EMULATOR_TENANT_ID: &str = "00000000-0000-0000-0000-00000000e0e0";

/// Largest and default page size of Key Vault lists.
const MAX_RESULTS: usize = 25;

/// State shared by every handler of one listener.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub server: Server,
    /// `host:port` to use in absolute URLs when a request carries no Host header.
    pub default_host: Arc<str>,
}

/// The HTTPS listener's router: Key Vault, Entra and admin.
pub fn vault_router(app: AppState) -> Router {
    Router::new()
        .route("/secrets", get(list_secrets))
        .route("/secrets/", get(list_secrets))
        .route("/secrets/{name}", get(get_latest).put(set_secret))
        .route("/secrets/{name}/", get(get_latest))
        .route("/secrets/{name}/versions", get(list_versions))
        .route("/secrets/{name}/versions/", get(list_versions))
        .route("/secrets/{name}/{version}", get(get_version))
        .route("/secrets/{name}/{version}/", get(get_version))
        .merge(identity::entra_routes())
        .nest("/_admin", admin::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app)
}

/// The plain-HTTP IMDS listener's router.
pub fn imds_router(app: AppState) -> Router {
    Router::new()
        .merge(identity::imds_routes())
        .fallback(identity::imds_not_found)
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app)
}

/// Key Vault's error body: `{"error":{"code","message","innererror"?:{"code"}}}`.
pub fn kv_error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if let (Some(inner), Some(obj)) = (inner, error.as_object_mut()) {
        obj.insert("innererror".into(), json!({ "code": inner }));
    }
    (status, Json(json!({ "error": error }))).into_response()
}

/// The error a status fault answers with, in the style of the plane it hits.
fn fault_response(plane: Plane, status: u16, retry_after: Option<u32>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if plane == Plane::Data {
        let code = match status.as_u16() {
            400 => "BadParameter",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            429 => "Throttled",
            500 => "InternalServerError",
            503 => "ServiceUnavailable",
            _ => "Error",
        };
        let message = format!("Injected fault: {status}");
        kv_error(status, code, &message, None)
    } else {
        let code = match status.as_u16() {
            429 | 503 => "temporarily_unavailable",
            s if s >= 500 => "server_error",
            _ => "invalid_request",
        };
        let body =
            json!({ "error": code, "error_description": format!("Injected fault: {status}") });
        (status, Json(body)).into_response()
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Every request passes here first; see the module doc for the order of checks.
async fn gate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let route = classify(app.server, &method, &path);
    let vault = &app.vault;
    let record = |status: u16| {
        tracing::debug!(%method, %path, kind = ?route.kind, status, "emulator: request");
        vault.record(RequestRecord {
            kind: route.kind,
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            status,
        });
    };
    if route.plane == Plane::Admin {
        let response = next.run(request).await;
        record(response.status().as_u16());
        return response;
    }
    vault.count(|c| c.total += 1);
    match vault.take_fault(&route) {
        None => {}
        Some(FaultAction::Status {
            status,
            retry_after,
        }) => {
            let response = fault_response(route.plane, status, retry_after);
            record(response.status().as_u16());
            return response;
        }
        Some(FaultAction::Latency(delay)) => tokio::time::sleep(delay).await,
        Some(FaultAction::Drop) => {
            record(0);
            let mut response = Response::new(Body::empty());
            response.extensions_mut().insert(DropConnection);
            return response;
        }
        Some(FaultAction::Hang) => {
            record(0);
            return std::future::pending().await;
        }
    }
    let response = match route.plane {
        Plane::Data => data_plane(vault, &route, request, next).await,
        Plane::Identity | Plane::Admin => {
            match route.kind {
                RequestKind::ImdsToken => vault.count(|c| c.imds_tokens += 1),
                RequestKind::EntraToken => vault.count(|c| c.entra_tokens += 1),
                _ => {}
            }
            next.run(request).await
        }
    };
    record(response.status().as_u16());
    response
}

/// Latency, challenge, counting, RBAC and api-version for a data-plane request.
async fn data_plane(vault: &Vault, route: &Route, request: Request, next: Next) -> Response {
    let latency = vault.service_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Err(message) = authenticate(vault, request.headers()) {
        vault.count(|c| c.challenges += 1);
        return challenge(message);
    }
    vault.count(|c| match route.kind {
        RequestKind::GetSecret => {
            c.get_secret += 1;
            if let Some(name) = &route.name {
                *c.get_by_name.entry(name.to_ascii_lowercase()).or_default() += 1;
            }
        }
        RequestKind::ListSecrets => c.list_secrets += 1,
        RequestKind::ListVersions => c.list_versions += 1,
        _ => {}
    });
    if !vault.rbac_allowed() {
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Caller is not authorized to perform action on resource. (emulator: RBAC denied)",
            Some("ForbiddenByRbac"),
        );
    }
    if query_param(request.uri(), "api-version").is_none_or(|v| v.is_empty()) {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request is missing the api-version query parameter.",
            None,
        );
    }
    next.run(request).await
}

/// Checks `Authorization: Bearer <token>`; the error is the challenge's message.
fn authenticate(vault: &Vault, headers: &HeaderMap) -> Result<(), &'static str> {
    let missing = "AKV10000: Request is missing a Bearer or PoP token.";
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing);
    }
    vault
        .verify_token(token.trim())
        .map(|_| ())
        .map_err(|_| "AKV10032: Invalid or expired token.")
}

/// The 401 that tells a client where to get a token for Key Vault.
fn challenge(message: &str) -> Response {
    let mut response = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let value = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{EMULATOR_TENANT_ID}\", resource=\"https://vault.azure.net\""
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The decoded value of query parameter `key`.
pub fn query_param(uri: &Uri, key: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `https://host[:port]` as the client addressed us.
fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or(&app.default_host);
    format!("https://{host}")
}

fn attributes(v: &Version) -> Value {
    let mut attrs = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    if let Some(obj) = attrs.as_object_mut() {
        if let Some(nbf) = v.not_before {
            obj.insert("nbf".into(), nbf.into());
        }
        if let Some(exp) = v.expires {
            obj.insert("exp".into(), exp.into());
        }
    }
    attrs
}

/// `{id, attributes, contentType?, tags?}` plus `value` when given.
fn secret_json(id: String, v: &Version, value: Option<&str>) -> Value {
    let mut obj = Map::new();
    if let Some(value) = value {
        obj.insert("value".into(), value.into());
    }
    obj.insert("id".into(), id.into());
    obj.insert("attributes".into(), attributes(v));
    if let Some(ct) = &v.content_type {
        obj.insert("contentType".into(), ct.as_str().into());
    }
    if !v.tags.is_empty() {
        obj.insert("tags".into(), json!(v.tags));
    }
    Value::Object(obj)
}

fn secret_not_found(name: &str) -> Response {
    kv_error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!("A secret with (name/id) {name} was not found in this key vault."),
        None,
    )
}

fn bad_parameter(message: &str) -> Response {
    kv_error(StatusCode::BAD_REQUEST, "BadParameter", message, None)
}

async fn get_latest(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_secret(&app, &headers, &name, None)
}

async fn get_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_secret(&app, &headers, &name, Some(&version))
}

fn get_secret(app: &AppState, headers: &HeaderMap, name: &str, version: Option<&str>) -> Response {
    if !is_valid_secret_name(name) {
        return bad_parameter("Invalid secret name.");
    }
    match app.vault.lookup(name, version) {
        Lookup::NotFound => secret_not_found(name),
        Lookup::Found { version, .. } if !version.enabled => kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Operation get is not allowed on a disabled secret.",
            Some("SecretDisabled"),
        ),
        Lookup::Found { name, version } => secret_bundle(app, headers, &name, &version),
    }
}

/// The full secret bundle, value included.
fn secret_bundle(app: &AppState, headers: &HeaderMap, name: &str, version: &Version) -> Response {
    let id = format!("{}/secrets/{name}/{}", base_url(app, headers), version.id);
    Json(secret_json(id, version, Some(&version.value))).into_response()
}

/// `maxresults` (1..=25, default 25) and the decoded `$skiptoken`; the error is the message of
/// a 400 BadParameter.
fn page_params(uri: &Uri) -> Result<(usize, Option<String>), &'static str> {
    let max = match query_param(uri, "maxresults") {
        None => MAX_RESULTS,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_RESULTS).contains(&n) => n,
            _ => return Err("Invalid maxresults: the value must be between 1 and 25."),
        },
    };
    let token = match query_param(uri, "$skiptoken").filter(|t| !t.is_empty()) {
        None => None,
        Some(raw) => {
            let decoded = URL_SAFE_NO_PAD
                .decode(raw.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            Some(decoded.ok_or("Invalid $skiptoken.")?)
        }
    };
    Ok((max, token))
}

/// The list response: items plus a `nextLink` that repeats api-version and maxresults, with a
/// literal `$skiptoken` as the service writes it.
fn list_json(
    base: &str,
    path: &str,
    uri: &Uri,
    items: Vec<Value>,
    next: Option<String>,
    max: usize,
) -> Value {
    let next_link = next.map(|token| {
        let api = query_param(uri, "api-version").unwrap_or_default();
        let api: String = url::form_urlencoded::byte_serialize(api.as_bytes()).collect();
        let token = URL_SAFE_NO_PAD.encode(token);
        format!("{base}{path}?api-version={api}&$skiptoken={token}&maxresults={max}")
    });
    json!({ "value": items, "nextLink": next_link })
}

async fn list_secrets(State(app): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let (max, after) = match page_params(&uri) {
        Ok(params) => params,
        Err(message) => return bad_parameter(message),
    };
    let base = base_url(&app, &headers);
    let (page, next) = app.vault.list_page(after.as_deref(), max);
    let items = page
        .iter()
        .map(|Item { name, version }| secret_json(format!("{base}/secrets/{name}"), version, None))
        .collect();
    Json(list_json(&base, "/secrets", &uri, items, next, max)).into_response()
}

async fn list_versions(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if !is_valid_secret_name(&name) {
        return bad_parameter("Invalid secret name.");
    }
    let (max, start) = match page_params(&uri) {
        Ok(params) => params,
        Err(message) => return bad_parameter(message),
    };
    let start = match start.map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad_parameter("Invalid $skiptoken."),
    };
    let base = base_url(&app, &headers);
    let (page, next) = app.vault.versions_page(&name, start, max);
    let items = page
        .iter()
        .map(|Item { name, version }| {
            secret_json(
                format!("{base}/secrets/{name}/{}", version.id),
                version,
                None,
            )
        })
        .collect();
    let path = format!("/secrets/{name}/versions");
    let next = next.map(|n| n.to_string());
    Json(list_json(&base, &path, &uri, items, next, max)).into_response()
}

/// Body of Key Vault's `PUT /secrets/{name}` (Set Secret).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetSecretBody {
    value: String,
    content_type: Option<String>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    attributes: Option<SetAttributes>,
}

#[derive(Deserialize, Default)]
struct SetAttributes {
    enabled: Option<bool>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

async fn set_secret(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !is_valid_secret_name(&name) {
        return bad_parameter("Invalid secret name.");
    }
    let Ok(body) = serde_json::from_slice::<SetSecretBody>(&body) else {
        return bad_parameter("The request body is not a valid secret.");
    };
    if body.value.len() > MAX_VALUE_BYTES {
        return bad_parameter("The secret value exceeds 25 KB.");
    }
    let attrs = body.attributes.unwrap_or_default();
    let opts = SecretOptions {
        content_type: body.content_type,
        tags: body.tags,
        enabled: attrs.enabled.unwrap_or(true),
        expires: attrs.exp,
        not_before: attrs.nbf,
    };
    let id = app.vault.set_secret_with(&name, &body.value, opts);
    match app.vault.lookup(&name, Some(&id)) {
        Lookup::Found { name, version } => secret_bundle(&app, &headers, &name, &version),
        Lookup::NotFound => secret_not_found(&name),
    }
}

async fn not_found() -> Response {
    kv_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "The emulator does not implement this operation.",
        None,
    )
}
