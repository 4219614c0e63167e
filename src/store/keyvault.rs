//! `SecretStore` over Azure Key Vault through the official SDK.
//!
//! Errors are classified here, once, by HTTP status and Key Vault error code. Values arrive as
//! the SDK's `String`s and are moved into zeroizing buffers at once. Parse errors are reported
//! without their text: serde's messages can quote the body, and a body can hold a value.
//!
//! A 401 that reaches kvfs carried a token (the SDK answers the first challenge itself): the
//! vault rejected it. The credential is then renewed (see `auth::RenewableCredential`, at most
//! once per `TOKEN_RENEWAL`) and the request sent once more.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::headers::RETRY_AFTER;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::models::{SecretAttributes, SecretProperties as KvProperties};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use futures::TryStreamExt;

use super::{Listing, SecretStore};
use crate::auth::RenewableCredential;
use crate::error::{Forbidden, StoreError, chain};
use crate::secret::{Secret, SecretName, SecretProperties, SecretValue};
use crate::transport::causes;

#[derive(Clone, Debug)]
pub struct KeyVaultConfig {
    pub vault_url: String,
    /// Skip the check that a 401 challenge names the vault's own resource (emulators).
    pub verify_challenge_resource: bool,
}

pub struct KeyVaultStore {
    client: SecretClient,
    credential: Arc<RenewableCredential>,
    /// The vault's origin: a listing's `nextLink` is followed only there.
    origin: url::Origin,
}

/// Most pages one listing follows: 25,000 pages hold 625,000 secrets, far beyond any vault;
/// a service (or a proxy) that keeps answering with another `nextLink` is not followed forever.
const MAX_PAGES: usize = 25_000;

impl KeyVaultStore {
    pub fn new(
        config: &KeyVaultConfig,
        credential: Arc<RenewableCredential>,
        transport: &Transport,
    ) -> Result<Self, StoreError> {
        let options = SecretClientOptions {
            client_options: ClientOptions {
                transport: Some(transport.clone()),
                // Retries are `RetryStore`'s: the SDK's own would wait up to 80 s.
                retry: RetryOptions::none(),
                ..Default::default()
            },
            verify_challenge_resource: Some(config.verify_challenge_resource),
            ..Default::default()
        };
        let client = SecretClient::new(&config.vault_url, credential.clone(), Some(options))
            .map_err(|e| StoreError::Other(format!("invalid vault URL: {}", chain(&e))))?;
        let origin = url::Url::parse(&config.vault_url)
            .map_err(|e| StoreError::Other(format!("invalid vault URL: {e}")))?
            .origin();
        Ok(Self {
            client,
            credential,
            origin,
        })
    }

    /// Runs `op`; when Key Vault rejects its token, renews the credential and runs it once more.
    async fn renewing<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = azure_core::Result<T>> + Send,
    {
        let generation = self.credential.generation();
        match op().await {
            Err(e) if token_rejected(&e) && self.credential.token_rejected(generation) => {
                crate::metrics::token_renewed_after_rejection();
                op().await.map_err(classify)
            }
            other => other.map_err(classify),
        }
    }

    async fn list_pages(&self, name: Option<&SecretName>) -> azure_core::Result<Vec<KvProperties>> {
        let pager = match name {
            None => self.client.list_secret_properties(None)?,
            Some(name) => self
                .client
                .list_secret_properties_versions(name.as_str(), None)?,
        };
        // Page by page, so that each `nextLink` is checked before it is followed: it must stay
        // on the vault (the SDK would send the bearer token wherever it points), never repeat,
        // and the pages must end.
        let mut pages = pager.into_pages();
        let mut seen = std::collections::HashSet::new();
        let mut items = Vec::new();
        while let Some(page) = pages.try_next().await? {
            let page = page.into_model()?;
            items.extend(page.value);
            let Some(next) = page.next_link else { break };
            let refused = |why: &str| {
                azure_core::Error::with_message(
                    ErrorKind::DataConversion,
                    format!("listing not followed: {why}"),
                )
            };
            // Origins compare with the scheme's default port filled in: a real `nextLink`
            // carries `:443` where the vault URL has none.
            let on_vault = url::Url::parse(&next).is_ok_and(|u| u.origin() == self.origin);
            if !on_vault {
                return Err(refused("a nextLink points outside the vault"));
            }
            if !seen.insert(next) {
                return Err(refused("a nextLink repeats"));
            }
            if seen.len() >= MAX_PAGES {
                return Err(refused("too many pages"));
            }
        }
        Ok(items)
    }
}

/// Key Vault answered 401 to a request that carried a token.
fn token_rejected(err: &azure_core::Error) -> bool {
    matches!(err.kind(), ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 401)
}

#[async_trait]
impl SecretStore for KeyVaultStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        let items = self.renewing(|| self.list_pages(None)).await?;
        let mut listing: Vec<_> = items.iter().filter_map(from_list_item).collect();
        listing.sort_by_key(|p| p.name.key());
        Ok(Arc::new(listing))
    }

    async fn get(&self, name: &SecretName) -> Result<Arc<Secret>, StoreError> {
        self.fetch(name, None).await
    }

    async fn list_versions(&self, name: &SecretName) -> Result<Listing, StoreError> {
        let items = self.renewing(|| self.list_pages(Some(name))).await?;
        let mut listing: Vec<_> = items.iter().filter_map(from_list_item).collect();
        listing.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(Arc::new(listing))
    }

    async fn get_version(
        &self,
        name: &SecretName,
        version: &str,
    ) -> Result<Arc<Secret>, StoreError> {
        self.fetch(name, Some(version)).await
    }
}

impl KeyVaultStore {
    async fn fetch(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<Arc<Secret>, StoreError> {
        let options = || {
            version.map(|v| SecretClientGetSecretOptions {
                secret_version: Some(v.to_owned()),
                ..Default::default()
            })
        };
        let response = self
            .renewing(|| self.client.get_secret(name.as_str(), options()))
            .await?;
        let secret = response
            .into_model()
            .map_err(|_| StoreError::Other("cannot parse Key Vault's secret response".into()))?;
        let id = secret.resource_id().ok();
        // The name as the vault spells it (names are case-insensitive): the spelling kvfs
        // lists, remembers and invalidates, whatever spelling was asked for.
        let listed = id
            .as_ref()
            .and_then(|id| SecretName::parse(&id.name))
            .filter(|listed| listed.key() == name.key())
            .unwrap_or_else(|| name.clone());
        let version = id.and_then(|id| id.version);
        let mut properties = properties(listed, secret.attributes.as_ref());
        properties.version = version;
        properties.content_type = secret.content_type;
        properties.tags = secret.tags.unwrap_or_default().into_iter().collect();
        let value = SecretValue::from_string(secret.value.unwrap_or_default());
        Ok(Arc::new(Secret { properties, value }))
    }
}

fn from_list_item(item: &KvProperties) -> Option<SecretProperties> {
    let id = item.resource_id().ok()?;
    let name = SecretName::parse(&id.name)?;
    let mut p = properties(name, item.attributes.as_ref());
    p.version = id.version;
    p.content_type = item.content_type.clone();
    p.tags = item
        .tags
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    Some(p)
}

fn properties(name: SecretName, attributes: Option<&SecretAttributes>) -> SecretProperties {
    let mut p = SecretProperties::new(name);
    if let Some(a) = attributes {
        p.enabled = a.enabled.unwrap_or(true);
        p.created = a.created.map(SystemTime::from);
        p.updated = a.updated.map(SystemTime::from);
        p.expires = a.expires.map(SystemTime::from);
        p.not_before = a.not_before.map(SystemTime::from);
    }
    p
}

/// Classifies an SDK error once: by status and error code for service answers, by the kind of
/// the innermost cause for everything else.
pub fn classify(err: azure_core::Error) -> StoreError {
    if let Some(tls) = tls_failure(&err) {
        return StoreError::Tls(tls);
    }
    if let Some(held) = causes(&err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<crate::transport::budget::BudgetExhausted>())
    {
        return StoreError::Budget(held.0);
    }
    match err.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            match status {
                404 => StoreError::NotFound,
                403 => {
                    let inner = raw_response
                        .as_deref()
                        .and_then(|r| inner_code(r.body().as_ref()));
                    StoreError::Forbidden(Forbidden::from_code(
                        inner.as_deref().or(error_code.as_deref()),
                    ))
                }
                429 => StoreError::Throttled {
                    retry_after: raw_response
                        .as_deref()
                        .and_then(|r| r.headers().get_optional_str(&RETRY_AFTER))
                        .and_then(|v| retry_after(v, SystemTime::now())),
                },
                401 => StoreError::Credential {
                    status: Some(401),
                    detail: "Key Vault refused the token (401)".into(),
                },
                // Server trouble and request timeouts pass; other statuses would repeat.
                408 | 500..=599 => StoreError::Service { status },
                _ => StoreError::Other(format!("Key Vault answered HTTP {status}")),
            }
        }
        ErrorKind::Credential => StoreError::Credential {
            status: nested_status(&err),
            detail: chain(&err),
        },
        ErrorKind::Connection | ErrorKind::Io => {
            if is_timeout(&err) {
                StoreError::Timeout(Duration::ZERO)
            } else {
                StoreError::Connection(chain(&err))
            }
        }
        ErrorKind::DataConversion => StoreError::Other("cannot parse Key Vault's response".into()),
        ErrorKind::Other => StoreError::Other(chain(&err)),
    }
}

/// A Retry-After header: delay-seconds, or an HTTP date (RFC 9110), as a wait from `now`.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Key Vault's inner error code (`ForbiddenByRbac`, `SecretDisabled`, ...) from an error body.
fn inner_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error")?;
    let code = error
        .get("innererror")
        .and_then(|i| i.get("code"))
        .or_else(|| error.get("code"))?;
    code.as_str().map(str::to_owned)
}

/// The HTTP status of a credential failure, which the SDK keeps a few causes down.
fn nested_status(err: &azure_core::Error) -> Option<u16> {
    causes(err).into_iter().find_map(|e| {
        e.downcast_ref::<azure_core::Error>()
            .and_then(|e| e.http_status())
            .map(u16::from)
    })
}

fn tls_failure(err: &azure_core::Error) -> Option<String> {
    causes(err)
        .into_iter()
        .find_map(|e| match e.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(reason)) => {
                Some(format!("server certificate rejected: {reason:?}"))
            }
            Some(other) => Some(other.to_string()),
            None => None,
        })
}

fn is_timeout(err: &azure_core::Error) -> bool {
    causes(err).into_iter().any(|e| {
        e.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:30 GMT").unwrap();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn inner_code_prefers_innererror() {
        let body = br#"{"error":{"code":"Forbidden","message":"m","innererror":{"code":"ForbiddenByRbac"}}}"#;
        assert_eq!(inner_code(body).as_deref(), Some("ForbiddenByRbac"));
        let outer = br#"{"error":{"code":"Forbidden","message":"m"}}"#;
        assert_eq!(inner_code(outer).as_deref(), Some("Forbidden"));
        assert_eq!(inner_code(b"not json"), None);
    }
}
