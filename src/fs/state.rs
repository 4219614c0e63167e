//! What a successor kvfs needs of this one's inode table to keep the kernel's view valid:
//! every node id the kernel holds, with its lookup count; the next node id (never reused: with
//! zero-message open the kernel keeps page caches by node); the `.versions` directories; and
//! the in-place handles with the versions they pinned. Values are not sent: the successor
//! fetches each again by its exact version when it is next read.

use std::sync::Weak;

use crate::cache::Revoked;
use crate::secret::{SecretName, SecretProperties};

use super::inodes::{Key, Slot};
use super::{FIRST_DYNAMIC, Held, Inodes, Node, Pinned, SecretFs};

/// The inode and handle table, as sent to a successor.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FsState {
    pub next_ino: u64,
    pub next_handle: u64,
    pub nodes: Vec<NodeState>,
    /// (name key, version or "" for a name's in-place inode) -> inode.
    pub by_version: Vec<(String, String, u64)>,
    /// name key -> `.versions/<name>` inode.
    pub versions_of: Vec<(String, u64)>,
    pub handles: Vec<(u64, HandleState)>,
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeState {
    File {
        ino: u64,
        lookups: u64,
        properties: SecretProperties,
        size: u64,
        revoked: Option<Revoked>,
    },
    VersionsOf {
        ino: u64,
        lookups: u64,
        name: SecretName,
    },
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandleState {
    Version(SecretProperties),
    Revoked(Revoked),
}

/// Why a state cannot be taken over.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("node {0} is outside the node ids the state allocated")]
    NodeOutOfRange(u64),
    #[error("kvfs already serves nodes: a state is restored only into a new filesystem")]
    NotEmpty,
}

impl SecretFs {
    pub fn snapshot(&self) -> FsState {
        let inodes = self.inodes();
        let nodes = inodes
            .nodes()
            .map(|(ino, slot)| match &slot.node {
                Node::File(held) => NodeState::File {
                    ino,
                    lookups: slot.lookups,
                    properties: held.properties.clone(),
                    size: held.size,
                    revoked: held.revoked,
                },
                Node::VersionsOf(name) => NodeState::VersionsOf {
                    ino,
                    lookups: slot.lookups,
                    name: name.clone(),
                },
            })
            .collect();
        let mut by_version = Vec::new();
        let mut versions_of = Vec::new();
        for (key, ino) in inodes.keys() {
            match key {
                Key::Version(name, version) => {
                    by_version.push((name.clone(), version.clone(), ino))
                }
                Key::VersionsOf(name) => versions_of.push((name.clone(), ino)),
            }
        }
        let next_ino = inodes.next();
        drop(inodes);
        let handles = self
            .handles
            .lock()
            .iter()
            .filter_map(|(&handle, pinned)| {
                let state = match pinned {
                    Pinned::Revoked(why) => HandleState::Revoked(*why),
                    other => HandleState::Version(other.properties()?.clone()),
                };
                Some((handle, state))
            })
            .collect();
        FsState {
            next_ino,
            next_handle: self.handles.next(),
            nodes,
            by_version,
            versions_of,
            handles,
        }
    }

    pub fn restore(&self, state: FsState) -> Result<(), StateError> {
        if !self.handles.lock().is_empty() {
            return Err(StateError::NotEmpty);
        }
        let mut inodes = self.inodes();
        if !inodes.is_empty() {
            return Err(StateError::NotEmpty);
        }
        let in_range = |ino: u64| (FIRST_DYNAMIC..state.next_ino).contains(&ino);
        let mut keys = Vec::new();
        for (name, version, ino) in state.by_version {
            keys.push((Key::Version(name, version), ino));
        }
        for (name, ino) in state.versions_of {
            keys.push((Key::VersionsOf(name), ino));
        }
        if let Some((_, ino)) = keys.iter().find(|(_, ino)| !in_range(*ino)) {
            return Err(StateError::NodeOutOfRange(*ino));
        }
        let mut handed_over = Vec::new();
        let mut slots = Vec::new();
        for node in state.nodes {
            let (ino, lookups, node, own_key) = match node {
                NodeState::File {
                    ino,
                    lookups,
                    properties,
                    size,
                    revoked,
                } => {
                    handed_over.push(properties.name.clone());
                    let own_key = super::version_key(&properties);
                    let held = Held {
                        properties,
                        size,
                        value: Weak::new(),
                        revoked,
                    };
                    (ino, lookups, Node::File(held), own_key)
                }
                NodeState::VersionsOf { ino, lookups, name } => {
                    let own_key = Key::VersionsOf(name.key());
                    (ino, lookups, Node::VersionsOf(name), own_key)
                }
            };
            if !in_range(ino) {
                return Err(StateError::NodeOutOfRange(ino));
            }
            // The key that finds this node (an in-place name's "" version), else the key it
            // was made for: forgetting it must release only its own key.
            let key = keys
                .iter()
                .find(|(_, i)| *i == ino)
                .map_or(own_key, |(k, _)| k.clone());
            slots.push((ino, Slot { node, lookups, key }));
        }
        *inodes = Inodes::restored(state.next_ino.max(FIRST_DYNAMIC), slots, keys);
        drop(inodes);
        self.cache.mark_unverified(handed_over);
        let mut handles = self.handles.lock();
        for (handle, pinned) in state.handles {
            handles.insert(
                handle,
                match pinned {
                    HandleState::Version(properties) => Pinned::Unfetched(properties),
                    HandleState::Revoked(why) => Pinned::Revoked(why),
                },
            );
        }
        drop(handles);
        self.handles.skip_to(state.next_handle);
        Ok(())
    }
}
