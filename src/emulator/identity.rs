//! The token endpoints: IMDS (managed identity, plain HTTP) and Entra ID (workload identity,
//! client credentials, on the HTTPS listener).
//!
//! Both answer in the exact shapes the SDKs parse: IMDS gives every field as a string
//! (`expires_on` included: a number fails to parse), Entra gives `expires_in` as a number.
//! Tokens are the emulator's own signed tokens, issued for whatever resource (IMDS `resource`)
//! or scope (Entra `scope`, `/.default` stripped) was asked, by the emulator's tenant (IMDS) or
//! the tenant in the path (Entra); Key Vault accepts only its own audience and the emulator's
//! tenant, so a client asking for the wrong scope or tenant is refused there, as in Azure.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::routes::{AppState, query_param};
use super::token::TOKEN_LIFETIME_SECS;
use super::vault::{EMULATOR_TENANT_ID, now_unix};

/// Client id IMDS reports for the system-assigned identity.
const SYSTEM_CLIENT_ID: &str = "00000000-0000-0000-0000-0000000051a1";

/// IMDS token path; msal-node asks for it with a trailing slash, which IMDS also answers.
pub const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

/// Routes of the IMDS listener.
pub fn imds_routes() -> Router<AppState> {
    Router::new()
        .route(IMDS_TOKEN_PATH, get(imds_token))
        .route("/metadata/identity/oauth2/token/", get(imds_token))
}

/// Entra routes on the HTTPS listener: token exchange and the metadata MSAL-based SDKs read.
pub fn entra_routes() -> Router<AppState> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

/// An OAuth-style error: `{"error","error_description"}`.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

pub async fn imds_not_found() -> Response {
    oauth_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The emulator's IMDS serves only /metadata/identity/oauth2/token.",
    )
}

pub async fn imds_method_not_allowed() -> Response {
    oauth_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "The emulator's IMDS token endpoint answers GET only.",
    )
}

/// The audience a token for `scope` carries: the resource, without `/.default`.
fn audience_of_scope(scope: &str) -> &str {
    let first = scope.split_whitespace().next().unwrap_or_default();
    first.strip_suffix("/.default").unwrap_or(first)
}

async fn imds_token(State(app): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let bad =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description);
    let metadata = headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !metadata {
        return bad("Required metadata header not specified");
    }
    if query_param(&uri, "api-version").is_none_or(|v| v.is_empty()) {
        return bad("Required query variable 'api-version' is missing");
    }
    let Some(resource) = query_param(&uri, "resource").filter(|r| !r.is_empty()) else {
        return bad("Required audience parameter not specified");
    };
    if !app.vault.identity_assigned() {
        return bad("Identity not found");
    }
    let selector = ["client_id", "object_id", "msi_res_id"]
        .into_iter()
        .find_map(|key| query_param(&uri, key).map(|v| (key, v)));
    let (identity, client_id) = match &selector {
        Some(("client_id", id)) => (format!("imds:client_id={id}"), id.clone()),
        Some((key, id)) => (format!("imds:{key}={id}"), SYSTEM_CLIENT_ID.to_owned()),
        None => ("imds:system".to_owned(), SYSTEM_CLIENT_ID.to_owned()),
    };
    let now = now_unix();
    let expires_on = now.saturating_add(TOKEN_LIFETIME_SECS);
    Json(json!({
        "access_token": app.vault.issue_token_for(&identity, &resource, EMULATOR_TENANT_ID),
        "client_id": client_id,
        "expires_in": TOKEN_LIFETIME_SECS.to_string(),
        "expires_on": expires_on.to_string(),
        "ext_expires_in": TOKEN_LIFETIME_SECS.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn entra_token(State(app): State<AppState>, uri: Uri, body: Bytes) -> Response {
    let tenant = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |key: &str| {
        form.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    };
    let missing = |key: &str| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "AADSTS900144: The request body must contain the following parameter: '{key}'."
            ),
        )
    };
    for key in ["client_id", "grant_type", "scope"] {
        if field(key).is_none() {
            return missing(key);
        }
    }
    if field("grant_type") != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if field("client_secret").is_none() {
        for key in ["client_assertion", "client_assertion_type"] {
            if field(key).is_none() {
                return missing(key);
            }
        }
    }
    let client_id = field("client_id").unwrap_or_default();
    let identity = format!("entra:{tenant}:{client_id}");
    let audience = audience_of_scope(field("scope").unwrap_or_default());
    Json(json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
        "ext_expires_in": TOKEN_LIFETIME_SECS,
        "access_token": app.vault.issue_token_for(&identity, audience, &tenant),
    }))
    .into_response()
}

/// Enough OpenID metadata for MSAL-based SDKs to find the token endpoint.
async fn openid_configuration(headers: HeaderMap, uri: Uri) -> Response {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let tenant = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or(EMULATOR_TENANT_ID);
    let base = format!("https://{host}/{tenant}");
    Json(json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "issuer": format!("{base}/v2.0"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "token"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        "tenant_region_scope": "NA",
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_map_to_audiences() {
        let table = [
            (
                "https://vault.azure.net/.default",
                "https://vault.azure.net",
            ),
            (
                "https://vault.azure.net//.default",
                "https://vault.azure.net/",
            ),
            (
                "https://management.azure.com/.default openid",
                "https://management.azure.com",
            ),
            ("api://app", "api://app"),
            ("", ""),
        ];
        for (scope, audience) in table {
            assert_eq!(audience_of_scope(scope), audience, "{scope}");
        }
    }
}
