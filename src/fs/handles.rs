//! Open file handles of in-place rotation: each pins the version it opened, so a file never
//! changes under its reader while the name's one inode moves on. New-inode rotation needs no
//! handle (an inode is one version).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::cache::Revoked;
use crate::secret::{Secret, SecretProperties};

/// What an in-place open handle reads.
pub(super) enum Pinned {
    Value(Arc<Secret>),
    /// Handed over by the previous kvfs without its value: fetched by exact version at the
    /// first read.
    Unfetched(SecretProperties),
    Revoked(Revoked),
    /// Nothing to pin: the inode's content never changes (the env file).
    Inode,
}

impl Pinned {
    pub fn properties(&self) -> Option<&SecretProperties> {
        match self {
            Self::Value(secret) => Some(&secret.properties),
            Self::Unfetched(properties) => Some(properties),
            Self::Revoked(_) | Self::Inode => None,
        }
    }
}

pub(super) struct Handles {
    pinned: Mutex<HashMap<u64, Pinned>>,
    next: AtomicU64,
}

impl Handles {
    pub fn new() -> Self {
        Self {
            pinned: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, Pinned>> {
        self.pinned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new handle pinning `pinned`.
    pub fn open(&self, pinned: Pinned) -> u64 {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(handle, pinned);
        handle
    }

    pub fn release(&self, handle: u64) {
        self.lock().remove(&handle);
    }

    /// The next handle number (handed over, so that a successor never reuses one).
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Handles are numbered from at least `next` on.
    pub fn skip_to(&self, next: u64) {
        self.next.fetch_max(next, Ordering::Relaxed);
    }
}
