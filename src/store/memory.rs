//! An in-memory `SecretStore` for unit tests: counts every operation and can be told to fail
//! or to stall, so tests assert "this cost exactly one GET".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{Listing, SecretStore};
use crate::error::StoreError;
use crate::secret::{Secret, SecretName, SecretProperties, SecretValue};

#[derive(Default)]
pub struct MemoryStore {
    /// Latest version per name key.
    secrets: Mutex<BTreeMap<String, Arc<Secret>>>,
    /// Every version ever put, by (name key, version).
    history: Mutex<BTreeMap<(String, String), Arc<Secret>>>,
    /// The error to fail with, and how many more times (`None`: until cleared).
    failure: Mutex<Option<(StoreError, Option<u32>)>>,
    delay: Mutex<Duration>,
    /// The next operation panics (a bug in a store, for single-flight tests).
    panic_next: std::sync::atomic::AtomicBool,
    gets: AtomicU64,
    lists: AtomicU64,
    versions: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `name` with a new version holding `value`.
    pub fn put(&self, name: &str, value: &str) {
        let name = SecretName::parse(name).expect("test secret names are valid");
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let version = format!("{version:032x}");
        let mut properties = SecretProperties::new(name.clone());
        properties.version = Some(version.clone());
        properties.updated = Some(std::time::SystemTime::now());
        let secret = Arc::new(Secret {
            properties,
            value: SecretValue::from_string(value.to_owned()),
        });
        lock(&self.history).insert((name.key(), version), secret.clone());
        lock(&self.secrets).insert(name.key(), secret);
    }

    /// Deletes `name` and every version of it, as Key Vault does.
    pub fn remove(&self, name: &str) {
        let key = name.to_ascii_lowercase();
        lock(&self.secrets).remove(&key);
        lock(&self.history).retain(|(k, _), _| *k != key);
    }

    /// Enables or disables the latest version of `name` (what "disable a secret" does).
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        let mut secrets = lock(&self.secrets);
        if let Some(secret) = secrets.get_mut(&name.to_ascii_lowercase()) {
            let mut changed = Secret::clone(secret);
            changed.properties.enabled = enabled;
            *secret = Arc::new(changed);
            if let Some(version) = secret.properties.version.clone() {
                drop(secrets);
                self.set_version_enabled(name, &version, enabled);
            }
        }
    }

    /// Enables or disables one version of `name`.
    pub fn set_version_enabled(&self, name: &str, version: &str, enabled: bool) {
        let mut history = lock(&self.history);
        if let Some(secret) = history.get_mut(&(name.to_ascii_lowercase(), version.to_owned())) {
            let mut changed = Secret::clone(secret);
            changed.properties.enabled = enabled;
            *secret = Arc::new(changed);
        }
    }

    /// The next operation panics.
    pub fn panic_next(&self) {
        self.panic_next.store(true, Ordering::Relaxed);
    }

    /// Every operation fails with `err` until cleared with `None`.
    pub fn fail_with(&self, err: Option<StoreError>) {
        *lock(&self.failure) = err.map(|e| (e, None));
    }

    /// The next `times` operations fail with `err`.
    pub fn fail_times(&self, err: StoreError, times: u32) {
        *lock(&self.failure) = Some((err, Some(times)));
    }

    /// Every operation waits this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }

    async fn answer(&self) -> Result<(), StoreError> {
        assert!(
            !self.panic_next.swap(false, Ordering::Relaxed),
            "MemoryStore told to panic"
        );
        let delay = *lock(&self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut failure = lock(&self.failure);
        let Some((err, times)) = failure.as_mut() else {
            return Ok(());
        };
        let err = err.clone();
        match times {
            Some(0) => {
                *failure = None;
                return Ok(());
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Err(err)
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.answer().await?;
        let secrets = lock(&self.secrets);
        Ok(Arc::new(
            secrets.values().map(|s| s.properties.clone()).collect(),
        ))
    }

    async fn get(&self, name: &SecretName) -> Result<Arc<Secret>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.answer().await?;
        let secret = lock(&self.secrets)
            .get(&name.key())
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if !secret.properties.enabled {
            return Err(StoreError::Forbidden(
                crate::error::Forbidden::SecretDisabled,
            ));
        }
        // A fresh copy per answer, as from Key Vault: nothing here keeps a caller's copy alive.
        Ok(Arc::new(Secret::clone(&secret)))
    }

    async fn list_versions(&self, name: &SecretName) -> Result<Listing, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.answer().await?;
        let key = name.key();
        let versions: Vec<_> = lock(&self.history)
            .iter()
            .filter(|((k, _), _)| *k == key)
            .map(|(_, s)| s.properties.clone())
            .collect();
        if versions.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(Arc::new(versions))
    }

    async fn get_version(
        &self,
        name: &SecretName,
        version: &str,
    ) -> Result<Arc<Secret>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.answer().await?;
        let secret = lock(&self.history)
            .get(&(name.key(), version.to_owned()))
            .map(|s| Arc::new(Secret::clone(s)))
            .ok_or(StoreError::NotFound)?;
        if !secret.properties.enabled {
            return Err(StoreError::Forbidden(
                crate::error::Forbidden::SecretDisabled,
            ));
        }
        Ok(secret)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
