//! HTTP surface of the emulator: the routers, the gate every request passes, and the Key Vault
//! data-plane handlers.
//!
//! The gate (an axum middleware) does what is common to all routes, in Key Vault's order:
//! classify, count, log, inject faults, then on the data plane add service latency, challenge
//! requests without a valid bearer token (or with one for another audience or tenant), require a
//! known `api-version` and refuse by RBAC. Handlers behind it only produce content, so they read
//! like the service's documentation. Whatever no handler serves answers in Key Vault's error
//! shape: 404 `NotFound` for an unknown path, 405 `MethodNotAllowed` for a known path.

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
    EMULATOR_TENANT_ID, Item, Lookup, MAX_VALUE_BYTES, RequestRecord, SecretOptions,
    VAULT_AUDIENCE, Vault, Version, is_valid_secret_name,
};
use super::{admin, identity};

/// The `api-version`s the data plane accepts: the Key Vault versions the official SDKs list
/// as supported. Each SDK sends its newest: Rust `azure_security_keyvault_secrets` 1.0.1
/// `2025-07-01`, Python `azure-keyvault-secrets` 4.12 `2026-04-01`, 4.9 `7.6`.
pub const API_VERSIONS: [&str; 10] = [
    "2016-10-01",
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "2025-07-01",
    "2026-04-01",
];

/// Key Vault's own application id, which Entra also accepts as its audience.
const VAULT_APP_ID: &str = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093";

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
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app)
}

/// The plain-HTTP IMDS listener's router.
pub fn imds_router(app: AppState) -> Router {
    Router::new()
        .merge(identity::imds_routes())
        .fallback(identity::imds_not_found)
        .method_not_allowed_fallback(identity::imds_method_not_allowed)
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

/// Latency, challenge, counting, api-version and RBAC for a data-plane request.
async fn data_plane(vault: &Vault, route: &Route, request: Request, next: Next) -> Response {
    let latency = vault.service_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Err(message) = authenticate(vault, request.headers()) {
        vault.count(|c| c.challenges += 1);
        return challenge(&message);
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
    match query_param(request.uri(), "api-version").filter(|v| !v.is_empty()) {
        None => {
            return bad_parameter("The request is missing the api-version query parameter.");
        }
        Some(v) if !API_VERSIONS.contains(&v.as_str()) => {
            return bad_parameter(&format!(
                "The specified version ({v}) is not recognized. Consider using the latest supported version ({}).",
                API_VERSIONS.last().unwrap_or(&"")
            ));
        }
        Some(_) => {}
    }
    if !vault.rbac_allowed() {
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Caller is not authorized to perform action on resource. (emulator: RBAC denied)",
            Some("ForbiddenByRbac"),
        );
    }
    next.run(request).await
}

/// Whether Key Vault accepts a token issued for `aud`.
fn is_vault_audience(aud: &str) -> bool {
    aud.strip_suffix('/').unwrap_or(aud) == VAULT_AUDIENCE || aud == VAULT_APP_ID
}

/// Checks `Authorization: Bearer <token>`: present, signed by this emulator, unexpired, for
/// Key Vault's audience and issued by the emulator's tenant. The error is the challenge's
/// message, worded as Key Vault words it.
fn authenticate(vault: &Vault, headers: &HeaderMap) -> Result<(), String> {
    let missing = || "AKV10000: Request is missing a Bearer or PoP token.".to_owned();
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    let claims = vault
        .verify_token(token.trim())
        .map_err(|_| "AKV10032: Invalid or expired token.".to_owned())?;
    if !is_vault_audience(&claims.aud) {
        return Err(format!(
            "AKV10022: Invalid audience. Expected {VAULT_AUDIENCE}, found: {}.",
            claims.aud
        ));
    }
    if claims.tid != EMULATOR_TENANT_ID {
        return Err(format!(
            "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{EMULATOR_TENANT_ID}/, found: {}.",
            claims.iss
        ));
    }
    Ok(())
}

/// The 401 that tells a client where to get a token for Key Vault.
fn challenge(message: &str) -> Response {
    let mut response = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let value = format!(
        "Bearer authorization=\"https://login.windows.net/{EMULATOR_TENANT_ID}\", resource=\"{VAULT_AUDIENCE}\""
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

/// `https://host:port` as the client addressed us, the port always written out (Azure writes
/// `:443` into ids and `nextLink`s).
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
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    if has_port {
        format!("https://{host}")
    } else {
        let port = app.default_host.rsplit_once(':').map_or("443", |(_, p)| p);
        format!("https://{host}:{port}")
    }
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

/// `{id, attributes, contentType?, tags?, managed?}` plus `value` when given. A managed
/// secret's bundle (with `value`) also names the certificate's key: `kid` is the id with
/// `/keys/` for `/secrets/`, as Key Vault gives it.
fn secret_json(id: String, v: &Version, value: Option<&str>) -> Value {
    let mut obj = Map::new();
    if let Some(value) = value {
        obj.insert("value".into(), value.into());
        if v.managed {
            obj.insert("kid".into(), id.replacen("/secrets/", "/keys/", 1).into());
        }
    }
    obj.insert("id".into(), id.into());
    obj.insert("attributes".into(), attributes(v));
    if let Some(ct) = &v.content_type {
        obj.insert("contentType".into(), ct.as_str().into());
    }
    if !v.tags.is_empty() {
        obj.insert("tags".into(), json!(v.tags));
    }
    if v.managed {
        obj.insert("managed".into(), true.into());
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

/// Where a list resumes, as its `$skiptoken` encodes it (opaque to clients, as in Key Vault).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    /// Empty pages already served at this cursor.
    empties: u32,
    cursor: Cursor,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    /// Before the first item.
    Start,
    /// Continue at this handler-defined key.
    At(String),
    /// Every item was served; only trailing empty pages remain.
    End,
}

impl Position {
    const START: Position = Position {
        empties: 0,
        cursor: Cursor::Start,
    };

    /// `{empties}|s`, `{empties}|a{key}` or `{empties}|e`, base64url.
    fn encode(&self) -> String {
        let cursor = match &self.cursor {
            Cursor::Start => "s".to_owned(),
            Cursor::At(key) => format!("a{key}"),
            Cursor::End => "e".to_owned(),
        };
        URL_SAFE_NO_PAD.encode(format!("{}|{cursor}", self.empties))
    }

    fn decode(raw: &str) -> Option<Position> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.as_bytes()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (empties, cursor) = text.split_once('|')?;
        let cursor = match cursor.split_at_checked(1)? {
            ("s", "") => Cursor::Start,
            ("e", "") => Cursor::End,
            ("a", key) => Cursor::At(key.to_owned()),
            _ => return None,
        };
        Some(Position {
            empties: empties.parse().ok()?,
            cursor,
        })
    }
}

/// What one list request answers: items, and where the next page starts (`None`: no
/// `nextLink`).
struct Page {
    items: Vec<Value>,
    next: Option<Position>,
}

/// The page at `at`, with `empty_pages` empty pages before each page of items and after the
/// last. `fetch(key, max)` reads items from a cursor key (`None`: the start) and returns the
/// key of the next page; its error is a 400's message.
fn page_at(
    at: Position,
    empty_pages: u32,
    max: usize,
    fetch: impl FnOnce(Option<&str>, usize) -> Result<(Vec<Value>, Option<String>), &'static str>,
) -> Result<Page, &'static str> {
    let empty = |next: Option<Position>| Page {
        items: Vec::new(),
        next,
    };
    let Position { empties, cursor } = at;
    if cursor == Cursor::End {
        let served = empties.saturating_add(1);
        return Ok(empty((served < empty_pages).then_some(Position {
            empties: served,
            cursor,
        })));
    }
    if empties < empty_pages {
        return Ok(empty(Some(Position {
            empties: empties.saturating_add(1),
            cursor,
        })));
    }
    let key = match &cursor {
        Cursor::At(key) => Some(key.as_str()),
        Cursor::Start | Cursor::End => None,
    };
    let (items, next) = fetch(key, max)?;
    let next = match next {
        Some(key) => Some(Position {
            empties: 0,
            cursor: Cursor::At(key),
        }),
        None if empty_pages > 0 => Some(Position {
            empties: 0,
            cursor: Cursor::End,
        }),
        None => None,
    };
    Ok(Page { items, next })
}

/// `maxresults` (1..=25, default 25) and the decoded `$skiptoken`; the error is the message of
/// a 400 BadParameter.
fn page_params(uri: &Uri) -> Result<(usize, Position), &'static str> {
    let max = match query_param(uri, "maxresults") {
        None => MAX_RESULTS,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_RESULTS).contains(&n) => n,
            _ => return Err("Invalid maxresults: the value must be between 1 and 25."),
        },
    };
    let at = match query_param(uri, "$skiptoken").filter(|t| !t.is_empty()) {
        None => Position::START,
        Some(raw) => Position::decode(&raw).ok_or("Invalid $skiptoken.")?,
    };
    Ok((max, at))
}

/// The list response: items plus a `nextLink` that repeats api-version and maxresults, with a
/// literal `$skiptoken` as the service writes it.
fn list_json(base: &str, path: &str, uri: &Uri, page: Page, max: usize) -> Value {
    let next_link = page.next.map(|at| {
        let api = query_param(uri, "api-version").unwrap_or_default();
        let api: String = url::form_urlencoded::byte_serialize(api.as_bytes()).collect();
        let token = at.encode();
        format!("{base}{path}?api-version={api}&$skiptoken={token}&maxresults={max}")
    });
    json!({ "value": page.items, "nextLink": next_link })
}

/// Serves one page of a list at `path` from `fetch` (see [`page_at`]).
fn list_response(
    app: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    path: &str,
    fetch: impl FnOnce(&str, Option<&str>, usize) -> Result<(Vec<Value>, Option<String>), &'static str>,
) -> Response {
    let base = base_url(app, headers);
    let page = page_params(uri).and_then(|(max, at)| {
        let page = page_at(at, app.vault.empty_pages(), max, |key, max| {
            fetch(&base, key, max)
        })?;
        Ok((max, page))
    });
    match page {
        Ok((max, page)) => Json(list_json(&base, path, uri, page, max)).into_response(),
        Err(message) => bad_parameter(message),
    }
}

async fn list_secrets(State(app): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    list_response(&app, &headers, &uri, "/secrets", |base, after, max| {
        let (page, next) = app.vault.list_page(after, max);
        let items = page
            .iter()
            .map(|Item { name, version }| {
                secret_json(format!("{base}/secrets/{name}"), version, None)
            })
            .collect();
        Ok((items, next))
    })
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
    let path = format!("/secrets/{name}/versions");
    list_response(&app, &headers, &uri, &path, |base, start, max| {
        let start = match start.map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return Err("Invalid $skiptoken."),
        };
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
        Ok((items, next.map(|n| n.to_string())))
    })
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
        managed: false,
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

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    kv_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!(
            "The requested resource does not support http method '{method}' (path {}).",
            uri.path()
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a list of `total` items by `max` with `empty` empty pages; returns the item count
    /// of every page and whether the walk ended.
    fn walk(total: usize, max: usize, empty: u32) -> Vec<usize> {
        let mut at = Position::START;
        let mut pages = Vec::new();
        for _ in 0..1000 {
            let fetch = |key: Option<&str>, max: usize| {
                let start: usize = key.map_or(Ok(0), str::parse).map_err(|_| "bad")?;
                let end = (start + max).min(total);
                let items = (start..end).map(Value::from).collect();
                Ok((items, (end < total).then(|| end.to_string())))
            };
            let page = page_at(at.clone(), empty, max, fetch).expect("page");
            pages.push(page.items.len());
            match page.next {
                Some(next) => {
                    let token = next.encode();
                    at = Position::decode(&token).expect("round trip");
                    assert_eq!(at, next);
                }
                None => return pages,
            }
        }
        panic!("paging never ended");
    }

    #[test]
    fn empty_pages_surround_every_page_of_items() {
        assert_eq!(walk(60, 25, 0), [25, 25, 10]);
        assert_eq!(walk(60, 25, 2), [0, 0, 25, 0, 0, 25, 0, 0, 10, 0, 0]);
        assert_eq!(walk(0, 25, 0), [0]);
        assert_eq!(walk(0, 25, 1), [0, 0, 0]);
        assert_eq!(walk(50, 25, 1), [0, 25, 0, 25, 0]);
    }

    #[test]
    fn skiptokens_are_checked() {
        for bad in ["", "!!", "MXx4", "eHxz"] {
            assert_eq!(Position::decode(bad), None, "{bad}");
        }
        let at = Position {
            empties: 3,
            cursor: Cursor::At("db-password".into()),
        };
        assert_eq!(Position::decode(&at.encode()), Some(at));
    }

    #[test]
    fn vault_audiences() {
        for good in [VAULT_AUDIENCE, "https://vault.azure.net/", VAULT_APP_ID] {
            assert!(is_vault_audience(good), "{good}");
        }
        for bad in [
            "https://management.azure.com",
            "https://vault.azure.net/.default",
            "https://storage.azure.com/",
            "",
        ] {
            assert!(!is_vault_audience(bad), "{bad}");
        }
    }

    #[test]
    fn a_managed_secret_names_its_key() {
        let vault = Vault::new();
        vault.set_certificate("web", "cGZ4", "application/x-pkcs12");
        vault.set_secret("plain", "v");
        let version = |name: &str| match vault.lookup(name, None) {
            Lookup::Found { version, .. } => version,
            Lookup::NotFound => panic!("{name} not found"),
        };
        let web = version("web");
        let id = format!("https://127.0.0.1:1/secrets/web/{}", web.id);
        let bundle = secret_json(id.clone(), &web, Some(&web.value));
        assert_eq!(bundle["contentType"], "application/x-pkcs12");
        assert_eq!(bundle["managed"], true);
        assert_eq!(
            bundle["kid"],
            format!("https://127.0.0.1:1/keys/web/{}", web.id)
        );
        let item = secret_json("https://127.0.0.1:1/secrets/web".into(), &web, None);
        assert_eq!(
            (item.get("kid"), &item["managed"]),
            (None, &Value::from(true))
        );
        let plain = version("plain");
        let bundle = secret_json(id, &plain, Some(&plain.value));
        assert_eq!((bundle.get("kid"), bundle.get("managed")), (None, None));
    }
}
