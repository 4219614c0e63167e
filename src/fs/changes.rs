//! What a refresh or a read learned, pushed to the inodes, the handles and the kernel: new
//! versions (the kernel forgets the name, its next lookup finds the new inode), revocations
//! (every inode and handle of the version stops serving, held files included), and which
//! versions are still in use (what the refresher revalidates).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, Weak};

use super::inodes::{Inodes, Key};
use super::{FsError, Held, Node, Pinned, ROOT, Rotation, SecretFs, VERSIONS};
use crate::cache::{Change, Revoked};
use crate::secret::{Secret, SecretName, SecretProperties};

impl SecretFs {
    /// The newest version of every secret the kernel still holds: what a refresh revalidates.
    /// Newest by `updated`, not by inode number: an old version opened later through
    /// `.versions/` has a higher inode number.
    pub fn in_use(&self) -> Vec<SecretProperties> {
        let inodes = self.inodes();
        let mut newest: HashMap<String, &SecretProperties> = HashMap::new();
        for p in live_sources(&inodes) {
            let slot = newest.entry(p.name.key()).or_insert(p);
            if p.updated > slot.updated {
                *slot = p;
            }
        }
        newest.into_values().cloned().collect()
    }

    /// Versions served besides the newest of their secret (files open across a rotation,
    /// `.versions` entries, in-place handles), by secret: what `revalidate_versions` checks.
    pub fn older_in_use(&self) -> Vec<(SecretName, Vec<String>)> {
        let newest: HashMap<String, Option<String>> = self
            .in_use()
            .into_iter()
            .map(|p| (p.name.key(), p.version))
            .collect();
        let mut older: BTreeMap<String, (SecretName, Vec<String>)> = BTreeMap::new();
        let mut add = |p: &SecretProperties| {
            let Some(version) = &p.version else { return };
            if newest.get(&p.name.key()) == Some(&Some(version.clone())) {
                return;
            }
            let (_, versions) = older
                .entry(p.name.key())
                .or_insert_with(|| (p.name.clone(), Vec::new()));
            if !versions.contains(version) {
                versions.push(version.clone());
            }
        };
        for p in live_sources(&self.inodes()) {
            add(p);
        }
        for pinned in self.handles.lock().values() {
            if let Some(properties) = pinned.properties() {
                add(properties);
            }
        }
        older.into_values().collect()
    }

    /// Revocations learned on the read path since the last call, to push to the kernel.
    pub fn take_learned(&self) -> Vec<Change> {
        std::mem::take(&mut *self.learned.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves when the read path learned a revocation.
    pub async fn learned_something(&self) {
        self.learned_signal.notified().await;
    }

    /// A read learned from Key Vault that `name` (or one `version` of it) is disabled or gone:
    /// if kvfs serves it, every inode and handle of it stops now, and the kernel is told soon.
    pub(super) fn learn_gone(&self, name: &SecretName, version: Option<&str>, err: &FsError) {
        let FsError::Store(err) = err else {
            return;
        };
        let Some(why) = Revoked::from_error(err) else {
            return;
        };
        let change = match version {
            None => Change::Gone(name.clone(), why),
            Some(v) => Change::VersionGone(name.clone(), v.to_ascii_lowercase(), why),
        };
        if self.revoke(&change).is_empty() {
            return;
        }
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
        self.learned_signal.notify_one();
    }

    /// Marks every inode and handle serving what `change` revokes, dropping their values.
    /// Returns the revoked inodes. Their keys are released, so that a later lookup (the
    /// secret re-enabled) gets a new inode rather than a revoked one.
    pub(super) fn revoke(&self, change: &Change) -> Vec<u64> {
        let (name, version, why) = match change {
            Change::Gone(name, why) => (name, None, *why),
            Change::VersionGone(name, version, why) => (name, Some(version.as_str()), *why),
            Change::Updated(_) | Change::Appeared(_) | Change::Expired(_) => return Vec::new(),
        };
        let name_key = name.key();
        let mut guard = self.inodes();
        let inodes = &mut *guard;
        // Every node serving the version: its file, its views, its JSON directories.
        let mut revoked = Vec::new();
        let mut keys = Vec::new();
        for (ino, slot) in inodes.nodes() {
            let (Node::File(held) | Node::JsonDir(held, _)) = &slot.node else {
                continue;
            };
            if held.properties.name.key() == name_key
                && version.is_none_or(|v| held.version() == v)
                && held.revoked.is_none()
            {
                revoked.push(ino);
                keys.push(slot.key.clone());
            }
        }
        for key in keys {
            inodes.release(&key);
        }
        for ino in &revoked {
            if let Some(Node::File(held) | Node::JsonDir(held, _)) = inodes.get_mut(*ino) {
                held.revoked = Some(why);
                held.value = Weak::new();
            }
        }
        drop(guard);
        for pinned in self.handles.lock().values_mut() {
            if let Some(p) = pinned.properties()
                && p.name.key() == name_key
                && version.is_none_or(|v| p.version.as_deref() == Some(v))
            {
                *pinned = Pinned::Revoked(why);
            }
        }
        revoked
    }

    /// Pushes what a refresh (or a read) found to the kernel: each changed name is forgotten,
    /// so its next use looks it up again and gets the new version's inode; open files keep
    /// their inode. Revoked versions stop being served on every path, open files included.
    pub fn apply(&self, changes: &[Change]) {
        let Some(invalidator) = self.invalidator.get() else {
            return;
        };
        for change in changes {
            let name = change.name();
            match change {
                Change::Updated(_) if self.config.rotation == Rotation::InPlace => {
                    if let Some(current) = self.cache.peek(name)
                        && let Some(ino) = self.swap_in_place(current)
                    {
                        invalidator.attributes(ino);
                    }
                }
                Change::Gone(..) | Change::VersionGone(..) => {
                    self.revoke(change);
                    // Every revoked inode of the name, those a read revoked earlier included:
                    // its pages go (held descriptors then read through kvfs, which refuses),
                    // and so does its `.versions/<name>/<version>` dentry, so that a version
                    // still enabled is looked up anew.
                    let (revoked, versions_dir) = {
                        let inodes = self.inodes();
                        let dir = inodes.find(&Key::VersionsOf(name.key()));
                        (revoked_of(&inodes, &name.key()), dir)
                    };
                    for (ino, version) in revoked {
                        invalidator.data(ino);
                        if let Some(dir) = versions_dir
                            && let Some(version) = version
                        {
                            invalidator.entry(dir, &version);
                        }
                    }
                    if let Change::Gone(..) = change {
                        invalidator.entry(VERSIONS, name.as_str());
                    }
                }
                Change::Updated(_) | Change::Appeared(_) | Change::Expired(_) => {}
            }
            if !matches!(change, Change::VersionGone(..)) {
                invalidator.entry(ROOT, name.as_str());
                // Its views and other names are looked up anew too (certificate views while
                // the secret is, or a held file shows it as, a certificate).
                let certificate = self
                    .cache
                    .peek(name)
                    .is_some_and(|s| super::view::is_certificate(&s))
                    || {
                        let inodes = self.inodes();
                        let name_key = name.key();
                        inodes.files_of(&name_key).any(|(_, ino)| {
                            matches!(inodes.get(ino), Some(Node::File(held))
                                if matches!(held.render, super::Render::Cert(_)))
                        })
                    };
                for (other, _) in self.views.names_of(name, certificate) {
                    invalidator.entry(ROOT, &other);
                }
                if self.views.may_change_env_file(name) {
                    invalidator.entry(ROOT, super::ENV_FILE);
                }
            }
            tracing::debug!(?change, "kernel entry invalidated");
        }
    }

    /// In-place rotation: the name's inode (returned) now holds `current`; files opened
    /// before keep reading their handle's version.
    fn swap_in_place(&self, current: Arc<Secret>) -> Option<u64> {
        let mut inodes = self.inodes();
        let name_key = current.properties.name.key();
        let ino = inodes
            .files_of(&name_key)
            .find(|(version, _)| version.is_empty())
            .map(|(_, ino)| ino)?;
        if let Some(Node::File(held)) = inodes.get_mut(ino) {
            // A value that no longer fits the view keeps the old one until the next lookup,
            // which answers EIO.
            if let Ok(swapped) = Held::rendered(&current, held.render.clone()) {
                *held = swapped;
            }
        }
        Some(ino)
    }
}

/// The versions the nodes the kernel holds still serve.
fn live_sources(inodes: &Inodes) -> impl Iterator<Item = &SecretProperties> {
    inodes
        .nodes()
        .filter(|(_, slot)| slot.lookups > 0)
        .flat_map(|(_, slot)| slot.node.sources())
}

/// Revoked file inodes of `name_key` the kernel still holds, with their versions.
fn revoked_of(inodes: &Inodes, name_key: &str) -> Vec<(u64, Option<String>)> {
    inodes
        .nodes()
        .filter_map(|(ino, slot)| match &slot.node {
            Node::File(held)
                if held.revoked.is_some() && held.properties.name.key() == name_key =>
            {
                Some((ino, held.properties.version.clone()))
            }
            _ => None,
        })
        .collect()
}
