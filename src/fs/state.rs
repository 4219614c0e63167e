//! What a successor kvfs needs of this one's inode table to keep the kernel's view valid:
//! every node id the kernel holds, with its lookup count; the next node id (never reused: with
//! zero-message open the kernel keeps page caches by node); the `.versions` directories; and
//! the in-place handles with the versions they pinned. Values are not sent: the successor
//! fetches each again by its exact version when it is next read.

use std::sync::Weak;

use crate::cache::Revoked;
use crate::secret::{SecretName, SecretProperties};

use super::inodes::{Key, Slot};
use super::{FIRST_DYNAMIC, Held, Inodes, Node, Pinned, Render, SecretFs};

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
    /// Keys of views and JSON directories (format 2).
    #[serde(default)]
    pub view_keys: Vec<(Key, u64)>,
    /// With several vaults, each vault's state, in `--vault-url` order (format 2).
    #[serde(default)]
    pub vaults: Vec<FsState>,
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
        /// How the file shows the value (format 2; a format-1 file shows the value).
        #[serde(default)]
        render: Render,
    },
    JsonDir {
        ino: u64,
        lookups: u64,
        properties: SecretProperties,
        path: Vec<String>,
        revoked: Option<Revoked>,
    },
    EnvFile {
        ino: u64,
        lookups: u64,
        sources: Vec<SecretProperties>,
        size: u64,
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
                    render: held.render.clone(),
                },
                Node::JsonDir(held, path) => NodeState::JsonDir {
                    ino,
                    lookups: slot.lookups,
                    properties: held.properties.clone(),
                    path: path.clone(),
                    revoked: held.revoked,
                },
                Node::EnvFile(sources, size) => NodeState::EnvFile {
                    ino,
                    lookups: slot.lookups,
                    sources: sources.clone(),
                    size: *size,
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
        let mut view_keys = Vec::new();
        for (key, ino) in inodes.keys() {
            match key {
                Key::Version(name, version, Render::Value) => {
                    by_version.push((name.clone(), version.clone(), ino));
                }
                Key::VersionsOf(name) => versions_of.push((name.clone(), ino)),
                other => view_keys.push((other.clone(), ino)),
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
            view_keys,
            vaults: Vec::new(),
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
            keys.push((Key::Version(name, version, Render::Value), ino));
        }
        for (name, ino) in state.versions_of {
            keys.push((Key::VersionsOf(name), ino));
        }
        keys.extend(state.view_keys);
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
                    render,
                } => {
                    handed_over.push(properties.name.clone());
                    let own_key = Key::Version(
                        properties.name.key(),
                        properties.version.clone().unwrap_or_default(),
                        render.clone(),
                    );
                    let held = Held {
                        properties,
                        render,
                        fixed: None,
                        size,
                        value: Weak::new(),
                        revoked,
                    };
                    (ino, lookups, Node::File(held), own_key)
                }
                NodeState::JsonDir {
                    ino,
                    lookups,
                    properties,
                    path,
                    revoked,
                } => {
                    handed_over.push(properties.name.clone());
                    let own_key = Key::JsonDir(
                        properties.name.key(),
                        properties.version.clone().unwrap_or_default(),
                        path.clone(),
                    );
                    let held = Held {
                        size: 0,
                        render: Render::Value,
                        fixed: None,
                        properties,
                        value: Weak::new(),
                        revoked,
                    };
                    (ino, lookups, Node::JsonDir(held, path), own_key)
                }
                NodeState::EnvFile {
                    ino,
                    lookups,
                    sources,
                    size,
                } => {
                    handed_over.extend(sources.iter().map(|p| p.name.clone()));
                    // Not found by its key after a handover: the next lookup makes a new one.
                    let own_key = Key::Env(format!("handed over {ino}"));
                    (ino, lookups, Node::EnvFile(sources, size), own_key)
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
