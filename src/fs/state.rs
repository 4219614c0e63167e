//! What a successor kvfs needs of this one's inode table to keep the kernel's view valid:
//! every node id the kernel holds, with its lookup count; the next node id (never reused: with
//! zero-message open the kernel keeps page caches by node); the `.versions` directories; and
//! the in-place handles with the versions they pinned. Values are not sent: the successor
//! fetches each again by its exact version when it is next read.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use crate::cache::Revoked;
use crate::secret::{SecretName, SecretProperties};

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
    /// The inode and handle table. Taken while the kernel is sent nothing (the relay is
    /// paused with nothing unanswered), so no lookup can change a count meanwhile.
    pub fn snapshot(&self) -> FsState {
        let inodes = self.inodes();
        let nodes = inodes
            .nodes
            .iter()
            .map(|(&ino, node)| match node {
                Node::File { held, lookups } => NodeState::File {
                    ino,
                    lookups: *lookups,
                    properties: held.properties.clone(),
                    size: held.size,
                    revoked: held.revoked,
                },
                Node::VersionsOf { name, lookups } => NodeState::VersionsOf {
                    ino,
                    lookups: *lookups,
                    name: name.clone(),
                },
            })
            .collect();
        let state = FsState {
            next_ino: inodes.next,
            next_handle: self.next_handle.load(Ordering::Relaxed),
            nodes,
            by_version: inodes
                .by_version
                .iter()
                .map(|((name, version), &ino)| (name.clone(), version.clone(), ino))
                .collect(),
            versions_of: inodes
                .versions_of
                .iter()
                .map(|(name, &ino)| (name.clone(), ino))
                .collect(),
            handles: Vec::new(),
        };
        drop(inodes);
        let handles = self
            .handles()
            .iter()
            .filter_map(|(&handle, pinned)| {
                let state = match pinned {
                    Pinned::Revoked(why) => HandleState::Revoked(*why),
                    other => HandleState::Version(other.properties()?.clone()),
                };
                Some((handle, state))
            })
            .collect();
        FsState { handles, ..state }
    }

    /// Takes over a predecessor's table. Values are fetched again, by exact version, at their
    /// next read.
    pub fn restore(&self, state: FsState) -> Result<(), StateError> {
        if !self.handles().is_empty() {
            return Err(StateError::NotEmpty);
        }
        let mut inodes = self.inodes();
        if !inodes.nodes.is_empty() {
            return Err(StateError::NotEmpty);
        }
        let in_range = |ino: u64| (FIRST_DYNAMIC..state.next_ino).contains(&ino);
        let mut restored = Inodes {
            next: state.next_ino.max(FIRST_DYNAMIC),
            ..Inodes::default()
        };
        let mut handed_over = Vec::new();
        for node in state.nodes {
            if let NodeState::File { properties, .. } = &node {
                handed_over.push(properties.name.clone());
            }
            let (ino, node) = match node {
                NodeState::File {
                    ino,
                    lookups,
                    properties,
                    size,
                    revoked,
                } => (
                    ino,
                    Node::File {
                        held: Held {
                            properties,
                            size,
                            value: Weak::new(),
                            revoked,
                        },
                        lookups,
                    },
                ),
                NodeState::VersionsOf { ino, lookups, name } => {
                    (ino, Node::VersionsOf { name, lookups })
                }
            };
            if !in_range(ino) {
                return Err(StateError::NodeOutOfRange(ino));
            }
            restored.nodes.insert(ino, node);
        }
        for (name, version, ino) in state.by_version {
            if !in_range(ino) {
                return Err(StateError::NodeOutOfRange(ino));
            }
            restored.by_version.insert((name, version), ino);
        }
        for (name, ino) in state.versions_of {
            if !in_range(ino) {
                return Err(StateError::NodeOutOfRange(ino));
            }
            restored.versions_of.insert(name, ino);
        }
        *inodes = restored;
        drop(inodes);
        self.cache.mark_unverified(handed_over);
        let mut handles = self.handles();
        for (handle, pinned) in state.handles {
            handles.insert(
                handle,
                match pinned {
                    HandleState::Version(properties) => Pinned::Unfetched(properties),
                    HandleState::Revoked(why) => Pinned::Revoked(why),
                },
            );
        }
        self.next_handle
            .fetch_max(state.next_handle, Ordering::Relaxed);
        Ok(())
    }
}
