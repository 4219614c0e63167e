//! The admin API under `/_admin/`: control the emulator from another process (the benchmark,
//! `kvfs demo`, a shell with curl). No authentication, never counted, never faulted.
//!
//! Each route is a thin JSON wrapper over one [`Vault`](super::Vault) method.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::fault::Fault;
use super::routes::AppState;
use super::vault::{MAX_VALUE_BYTES, SecretOptions, is_valid_secret_name};

/// Routes, to be nested under `/_admin`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/counters", get(counters))
        .route("/counters/reset", post(reset_counters))
        .route("/requests", get(requests))
        .route("/secrets/{name}", put(put_secret).delete(delete_secret))
        .route("/secrets/{name}/enabled", post(set_enabled))
        .route("/faults", post(add_fault).delete(clear_faults))
        .route("/identity", post(set_identity))
        .route("/rbac", post(set_rbac))
        .route("/latency", post(set_latency))
        .route("/paging", post(set_paging))
}

fn admin_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn bad_request(message: &str) -> Response {
    admin_error(StatusCode::BAD_REQUEST, message)
}

/// Parses a JSON body; the error is serde's message, for a 400.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

async fn counters(State(app): State<AppState>) -> Response {
    Json(app.vault.counters()).into_response()
}

async fn reset_counters(State(app): State<AppState>) -> StatusCode {
    app.vault.reset_counters();
    StatusCode::NO_CONTENT
}

async fn requests(State(app): State<AppState>) -> Response {
    Json(app.vault.requests()).into_response()
}

/// `PUT /_admin/secrets/{name}`: `{"value", "contentType"?, "tags"?, "enabled"?, "expires"?,
/// "notBefore"?}`.
#[derive(Deserialize)]
struct PutSecret {
    value: String,
    #[serde(flatten)]
    options: SecretOptions,
}

async fn put_secret(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if !is_valid_secret_name(&name) {
        return bad_request("secret names match ^[0-9a-zA-Z-]{1,127}$");
    }
    let body: PutSecret = match parse(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    if body.value.len() > MAX_VALUE_BYTES {
        return bad_request("value exceeds 25 KB");
    }
    let version = app.vault.set_secret_with(&name, &body.value, body.options);
    Json(json!({ "version": version })).into_response()
}

async fn delete_secret(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    if app.vault.delete_secret(&name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        admin_error(StatusCode::NOT_FOUND, "no such secret")
    }
}

#[derive(Deserialize)]
struct Enabled {
    enabled: bool,
}

async fn set_enabled(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let body: Enabled = match parse(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    if app.vault.latest_version(&name).is_none() {
        return admin_error(StatusCode::NOT_FOUND, "no such secret");
    }
    app.vault.set_enabled(&name, body.enabled);
    StatusCode::NO_CONTENT.into_response()
}

async fn add_fault(State(app): State<AppState>, body: Bytes) -> Response {
    match parse::<Fault>(&body) {
        Ok(fault) => {
            app.vault.add_fault(fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(&message),
    }
}

async fn clear_faults(State(app): State<AppState>) -> StatusCode {
    app.vault.clear_faults();
    StatusCode::NO_CONTENT
}

/// Parses `{"<key>": bool}`.
fn flag(body: &Bytes, key: &str) -> Result<bool, String> {
    let map: BTreeMap<String, bool> = parse(body)?;
    map.get(key)
        .copied()
        .ok_or_else(|| format!("body must be {{\"{key}\": true|false}}"))
}

async fn set_identity(State(app): State<AppState>, body: Bytes) -> Response {
    match flag(&body, "assigned") {
        Ok(assigned) => {
            app.vault.set_identity_assigned(assigned);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(&message),
    }
}

async fn set_rbac(State(app): State<AppState>, body: Bytes) -> Response {
    match flag(&body, "allowed") {
        Ok(allowed) => {
            app.vault.set_rbac_allowed(allowed);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(&message),
    }
}

#[derive(Deserialize)]
struct Latency {
    ms: u64,
}

async fn set_latency(State(app): State<AppState>, body: Bytes) -> Response {
    match parse::<Latency>(&body) {
        Ok(Latency { ms }) => {
            app.vault
                .set_service_latency(std::time::Duration::from_millis(ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(&message),
    }
}

/// `POST /_admin/paging`: `{"emptyPages": n}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Paging {
    empty_pages: u32,
}

async fn set_paging(State(app): State<AppState>, body: Bytes) -> Response {
    match parse::<Paging>(&body) {
        Ok(Paging { empty_pages }) => {
            app.vault.set_empty_pages(empty_pages);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(&message),
    }
}
