//! Which identity kvfs signs in with, and the credential for it.
//!
//! `auto` picks workload identity when the pod carries a federated token file, else the
//! managed identity of the VM or node. Every credential gets the shared transport, so the
//! IMDS redirect, extra roots and timeouts apply to token requests too.
//!
//! The SDK's credentials cache their token with no way to drop it, so a token the vault
//! rejects (a restarted or re-keyed issuer, a revoked token) would be sent until it expires.
//! [`RenewableCredential`] is the credential everything holds: it delegates to a current SDK
//! credential and replaces it with a fresh one (an empty cache) when Key Vault rejects a token,
//! at most once per [`TOKEN_RENEWAL`].

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

/// The scope every Key Vault token is requested for.
pub const KEY_VAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// How often at most a rejected token makes kvfs drop it and get a new one. A vault that keeps
/// rejecting fresh tokens (a tenant or audience mismatch) would otherwise cost a token request
/// per read, and IMDS allows 20 requests per second for the whole VM, shared with every process
/// on it; one new token per 30 s bounds that to 2 per minute while reads still recover within
/// 30 s of an issuer change.
pub const TOKEN_RENEWAL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Workload identity when AZURE_FEDERATED_TOKEN_FILE is set, else managed identity.
    Auto,
    /// The VM's or node's managed identity through IMDS.
    ManagedIdentity,
    /// AKS workload identity (federated token file exchanged with Entra ID).
    WorkloadIdentity,
    /// The signed-in Azure CLI (`az login`), for a developer's machine.
    AzureCli,
}

/// A user-assigned managed identity, by one of the three ids Azure accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAssigned {
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// `None`: the system-assigned identity (managed identity), or AZURE_CLIENT_ID (workload).
    pub user_assigned: Option<UserAssigned>,
    /// Whether AZURE_FEDERATED_TOKEN_FILE is set, read once by the caller (no env reads here).
    pub federated_token_file_set: bool,
}

impl AuthConfig {
    /// The mode `auto` resolves to.
    pub fn resolved_mode(&self) -> AuthMode {
        match self.mode {
            AuthMode::Auto if self.federated_token_file_set => AuthMode::WorkloadIdentity,
            AuthMode::Auto => AuthMode::ManagedIdentity,
            other => other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up {mode:?} credentials: {reason}")]
pub struct AuthError {
    mode: AuthMode,
    reason: String,
}

/// Builds the credential. Token requests are not retried by the credential itself: the caller
/// bounds every wait and retries on its own schedule.
pub fn credential(
    config: &AuthConfig,
    transport: &Transport,
) -> Result<Arc<dyn TokenCredential>, AuthError> {
    let client_options = ClientOptions {
        transport: Some(transport.clone()),
        retry: RetryOptions::none(),
        ..Default::default()
    };
    let mode = config.resolved_mode();
    let fail = |e: azure_core::Error| AuthError {
        mode,
        reason: crate::error::chain(&e),
    };
    let credential: Arc<dyn TokenCredential> = match mode {
        AuthMode::ManagedIdentity | AuthMode::Auto => {
            let user_assigned_id = config.user_assigned.clone().map(|id| match id {
                UserAssigned::ClientId(id) => UserAssignedId::ClientId(id),
                UserAssigned::ObjectId(id) => UserAssignedId::ObjectId(id),
                UserAssigned::ResourceId(id) => UserAssignedId::ResourceId(id),
            });
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options,
            }))
            .map_err(fail)?
        }
        AuthMode::WorkloadIdentity => {
            let client_id = match &config.user_assigned {
                Some(UserAssigned::ClientId(id)) => Some(id.clone()),
                Some(UserAssigned::ObjectId(_) | UserAssigned::ResourceId(_)) => {
                    return Err(AuthError {
                        mode,
                        reason: "workload identity takes a client id (--client-id or \
                                 AZURE_CLIENT_ID), not --object-id or --resource-id"
                            .into(),
                    });
                }
                None => None,
            };
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id,
                ..Default::default()
            }))
            .map_err(fail)?
        }
        AuthMode::AzureCli => AzureCliCredential::new(None).map_err(fail)?,
    };
    Ok(credential)
}

/// The credential kvfs hands out: the current SDK credential, replaced by a fresh one when Key
/// Vault rejects its token. Background renewal and the `SecretClient` both hold this, so both
/// always use the current one.
/// Builds a fresh SDK credential (with an empty token cache).
type MakeCredential = Box<dyn Fn() -> Result<Arc<dyn TokenCredential>, AuthError> + Send + Sync>;

pub struct RenewableCredential {
    make: MakeCredential,
    current: RwLock<Current>,
    gate: crate::transport::OncePer,
}

struct Current {
    credential: Arc<dyn TokenCredential>,
    /// Counts replacements; a request notes it before it is sent.
    generation: u64,
}

impl std::fmt::Debug for RenewableCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewableCredential")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl RenewableCredential {
    pub fn new(config: &AuthConfig, transport: &Transport) -> Result<Self, AuthError> {
        let (config, transport) = (config.clone(), transport.clone());
        Self::from_fn(move || credential(&config, &transport))
    }

    /// Renews by calling `make` (tests give a credential of their own).
    pub fn from_fn(
        make: impl Fn() -> Result<Arc<dyn TokenCredential>, AuthError> + Send + Sync + 'static,
    ) -> Result<Self, AuthError> {
        Ok(Self {
            current: RwLock::new(Current {
                credential: make()?,
                generation: 0,
            }),
            make: Box::new(make),
            gate: crate::transport::OncePer::new(TOKEN_RENEWAL),
        })
    }

    /// Which credential is current; note it before a request to pass it to
    /// [`RenewableCredential::token_rejected`].
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Key Vault rejected a token from credential `generation`. Replaces that credential with a
    /// fresh one unless one was made less than [`TOKEN_RENEWAL`] ago. True when the request
    /// should be sent once more: a newer credential than the rejected one is now current.
    pub fn token_rejected(&self, generation: u64) -> bool {
        // Decided under the write lock, so that of concurrent rejections one renews and the
        // others see the new generation; logged after it is released.
        let outcome = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            if current.generation != generation {
                return true;
            }
            if !self.gate.try_pass(Instant::now()) {
                None
            } else {
                Some((self.make)().map(|fresh| {
                    current.credential = fresh;
                    current.generation += 1;
                }))
            }
        };
        match outcome {
            None => {
                tracing::debug!(next_within = ?TOKEN_RENEWAL, "Key Vault rejected the token; a new one was fetched recently");
                false
            }
            Some(Ok(())) => {
                tracing::warn!(
                    "Key Vault rejected the token (401): dropped it; the next request gets a new one"
                );
                true
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Key Vault rejected the token and a new credential cannot be built");
                false
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl TokenCredential for RenewableCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let credential = self.read().credential.clone();
        credential.get_token(scopes, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_workload_identity_when_a_token_file_is_set() {
        let mut c = AuthConfig {
            mode: AuthMode::Auto,
            user_assigned: None,
            federated_token_file_set: true,
        };
        assert_eq!(c.resolved_mode(), AuthMode::WorkloadIdentity);
        c.federated_token_file_set = false;
        assert_eq!(c.resolved_mode(), AuthMode::ManagedIdentity);
        c.mode = AuthMode::AzureCli;
        assert_eq!(c.resolved_mode(), AuthMode::AzureCli);
    }

    #[test]
    fn a_rejected_token_renews_the_credential_once_per_interval() {
        let transport = crate::transport::build(&crate::transport::TransportConfig {
            ca_file: None,
            imds_endpoint: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            budget: None,
        })
        .unwrap();
        let config = AuthConfig {
            mode: AuthMode::ManagedIdentity,
            user_assigned: None,
            federated_token_file_set: false,
        };
        let c = RenewableCredential::new(&config, &transport).unwrap();
        assert_eq!(c.generation(), 0);
        assert!(c.token_rejected(0), "the first rejection renews");
        assert_eq!(c.generation(), 1);
        assert!(
            c.token_rejected(0),
            "a request that carried the old token is retried on the new one"
        );
        assert_eq!(c.generation(), 1, "without another renewal");
        assert!(!c.token_rejected(1), "the new token is rejected too: wait");
        assert_eq!(c.generation(), 1);
    }
}
