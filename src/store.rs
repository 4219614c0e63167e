//! The one seam between the filesystem and where secrets come from.
//!
//! `SecretStore` has only what the filesystem needs. `KeyVaultStore` talks to Key Vault,
//! `MemoryStore` serves tests with request counters and a failure hook, and the cache wraps
//! any store behind this same trait, so no store knows whether it is cached.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::secret::{Secret, SecretName, SecretProperties};

pub mod keyvault;
pub mod memory;
pub mod retry;

pub use keyvault::KeyVaultStore;
pub use memory::MemoryStore;
pub use retry::{RetryPolicy, RetryStore};

/// A vault's listing: every secret's properties, enabled or not, sorted by name key.
pub type Listing = Arc<Vec<SecretProperties>>;

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Every secret in the vault (all pages), without values. Disabled secrets are included
    /// with `enabled: false`; the caller decides what to show.
    async fn list(&self) -> Result<Listing, StoreError>;

    /// The latest version of `name`, value included.
    /// `NotFound` when no such secret exists; `Forbidden(SecretDisabled)` when it is disabled;
    /// `Forbidden(..)` when this identity may not read it.
    async fn get(&self, name: &SecretName) -> Result<Arc<Secret>, StoreError>;

    /// Every version of `name` (all pages), without values, sorted by version id.
    /// `NotFound` when no such secret exists.
    async fn list_versions(&self, name: &SecretName) -> Result<Listing, StoreError>;

    /// One exact version of `name`, value included. Versions never change.
    /// `NotFound` when the secret or the version does not exist; `Forbidden(SecretDisabled)`
    /// when that version is disabled.
    async fn get_version(
        &self,
        name: &SecretName,
        version: &str,
    ) -> Result<Arc<Secret>, StoreError>;
}
