//! Attributes: a file's size, times, owner and mode from its version's metadata and the
//! access rules; a directory's from the mount.

use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};

use super::{FsError, FsResult, Held, Node, ROOT, SecretFs, VERSIONS};
use crate::secret::SecretName;

const BLOCK_SIZE: u32 = 4096;

impl SecretFs {
    pub fn getattr(&self, ino: u64) -> FsResult<(FileAttr, Duration)> {
        let attr = match ino {
            ROOT | VERSIONS => self.dir_attr(ino, None),
            _ => match self.inodes().get(ino) {
                Some(node) => self.node_attr(ino, node),
                None => return Err(FsError::NotFound),
            },
        };
        Ok((attr, self.config.attr_ttl))
    }

    /// The attributes of `ino`, which is `node`.
    pub(super) fn node_attr(&self, ino: u64, node: &Node) -> FileAttr {
        match node {
            Node::File(held) => self.file_attr(ino, held),
            Node::VersionsOf(name) => self.dir_attr(ino, Some(name)),
            Node::JsonDir(held, _) => self.dir_attr(ino, Some(&held.properties.name)),
            Node::EnvFile(_, size) => self.env_attr(ino, *size),
        }
    }

    pub(super) fn file_attr(&self, ino: u64, held: &Held) -> FileAttr {
        let p = &held.properties;
        let updated = p.updated.unwrap_or(self.mounted_at);
        let size = held.size;
        let owner = self.owner_of(&p.name);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: updated,
            mtime: updated,
            ctime: updated,
            crtime: p.created.unwrap_or(updated),
            kind: FileType::RegularFile,
            perm: owner.mode,
            nlink: 1,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The root and `.versions` (`of` None) have the global owner and `--dir-mode`;
    /// `.versions/<name>` has its secret's owner, and its mode with search where read is set.
    pub(super) fn dir_attr(&self, ino: u64, of: Option<&SecretName>) -> FileAttr {
        let (uid, gid, perm) = match of {
            Some(name) => {
                let owner = self.owner_of(name);
                (owner.uid, owner.gid, owner.dir_mode())
            }
            None => (self.config.uid, self.config.gid, self.config.dir_mode),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm,
            nlink: 2,
            uid,
            gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }
}
