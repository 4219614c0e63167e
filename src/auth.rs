//! Which identity kvfs signs in with, and the credential for it.
//!
//! `auto` picks workload identity when the pod carries a federated token file, else the
//! managed identity of the VM or node. Every credential gets the shared transport, so the
//! IMDS redirect, extra roots and timeouts apply to token requests too.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

/// The scope every Key Vault token is requested for.
pub const KEY_VAULT_SCOPE: &str = "https://vault.azure.net/.default";

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
}
