//! Directories: the root (one file per visible secret), `.versions` (one directory per
//! secret) and `.versions/<name>` (one file per version), listed from Key Vault's listings.
//! A listing is built into entries once and shared by the calls that page through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fuser::FileType;

use super::{ENV_FILE, FsError, FsResult, Node, ROOT, SecretFs, VERSIONS};
use crate::secret::SecretName;
use crate::store::{Listing, SecretStore};
use crate::views::cert;

/// Inode numbers handed out in directory listings for names not looked up yet. A listing never
/// fetches values, so it cannot know a secret's version; these never collide with real inodes.
const LISTING_INO_BIT: u64 = 1 << 63;

/// One directory entry of a listing, with the offset of the entry after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub next_offset: u64,
    pub kind: FileType,
    pub name: String,
}

/// A directory's entries, shared between the calls that page through them.
pub type Entries = Arc<Vec<DirEntry>>;

/// Entries built from listings, and what the kernel cached of the root.
#[derive(Default)]
pub(super) struct Listings {
    /// Directory entries built from a listing (root, `.versions`), reused while it is current.
    built: Mutex<HashMap<u64, (Listing, Entries)>>,
    /// The root entries the kernel cached at its last open of the root.
    kernel_root: Mutex<Option<Entries>>,
}

impl SecretFs {
    /// Opens a directory. Returns whether the kernel may keep the entries it cached at the
    /// last open (the root's listing is unchanged since); a directory is then listed without
    /// a single READDIR message.
    pub async fn opendir(&self, ino: u64) -> FsResult<bool> {
        if ino != ROOT {
            self.readdir_entries(ino).await?;
            return Ok(false);
        }
        let entries = self.readdir_entries(ROOT).await?;
        let mut cached = self
            .listings
            .kernel_root
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let keep = cached
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &entries) || **c == *entries);
        *cached = Some(entries);
        Ok(keep)
    }

    /// The entries of a directory from `offset` on: the whole listing (shared, built once per
    /// listing) and the index to start at. Offsets index the current (cached) listing, so a
    /// listing that changes between two calls may skip or repeat a name.
    pub async fn readdir(&self, ino: u64, offset: u64) -> FsResult<(Entries, usize)> {
        let entries = self.readdir_entries(ino).await?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(entries.len());
        Ok((entries, start))
    }

    async fn readdir_entries(&self, ino: u64) -> FsResult<Entries> {
        match ino {
            ROOT | VERSIONS => {
                let listing = self.wait(self.cache.list()).await?;
                let mut built = self
                    .listings
                    .built
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some((from, entries)) = built.get(&ino)
                    && Arc::ptr_eq(from, &listing)
                {
                    return Ok(entries.clone());
                }
                let kind = if ino == ROOT {
                    FileType::RegularFile
                } else {
                    FileType::Directory
                };
                let visible = listing
                    .iter()
                    .filter(|p| p.enabled && self.access.visible(p.name.as_str()));
                let mut names = Vec::new();
                for p in visible {
                    names.push((listing_ino(&p.name), kind, p.name.as_str().to_owned()));
                    if ino == ROOT {
                        // Views and other names, as the listing's metadata tells them.
                        let certificate = cert::is_certificate(p.content_type.as_deref());
                        for (other, is_dir) in self.views.names_of(&p.name, certificate) {
                            let kind = if is_dir {
                                FileType::Directory
                            } else {
                                FileType::RegularFile
                            };
                            names.push((listing_ino_str(&other), kind, other));
                        }
                    }
                }
                if ino == ROOT && self.views.env_file() {
                    names.push((
                        listing_ino_str(ENV_FILE),
                        FileType::RegularFile,
                        ENV_FILE.into(),
                    ));
                }
                let entries = Arc::new(dir_entries(ino, ROOT, names.into_iter()));
                built.insert(ino, (listing, entries.clone()));
                Ok(entries)
            }
            _ => {
                let name = match self.inodes().get(ino) {
                    Some(Node::VersionsOf(name)) => Ok(name.clone()),
                    Some(Node::JsonDir(_, path)) => Err(path.clone()),
                    Some(Node::File(_) | Node::EnvFile(..)) => return Err(FsError::NotDir),
                    None => return Err(FsError::NotFound),
                };
                let name = match name {
                    Ok(name) => name,
                    Err(path) => return self.json_entries(ino, &path).await,
                };
                let versions = self.wait(self.cache.list_versions(&name)).await?;
                let files = versions
                    .iter()
                    .filter_map(|p| p.version.clone())
                    .map(|v| (listing_ino_str(&v), FileType::RegularFile, v));
                Ok(Arc::new(dir_entries(ino, VERSIONS, files)))
            }
        }
    }
}

impl SecretFs {
    /// A JSON directory's keys, from its version's value.
    async fn json_entries(&self, ino: u64, path: &[String]) -> FsResult<Entries> {
        let secret = self.secret(ino).await?;
        let children = super::view::json_children(&secret, path)?;
        let files = children.into_iter().map(|(key, kind)| {
            let kind = match kind {
                super::view::JsonKind::Dir => FileType::Directory,
                super::view::JsonKind::Leaf => FileType::RegularFile,
            };
            (listing_ino_str(&key), kind, key)
        });
        // `..` of a JSON directory: the kernel keeps the real parent; the root is as good a
        // number as any for a listing.
        Ok(Arc::new(dir_entries(ino, ROOT, files)))
    }
}

/// `.`, `..` and `children`, each with the offset of the entry after it.
pub fn dir_entries(
    ino: u64,
    parent: u64,
    children: impl Iterator<Item = (u64, FileType, String)>,
) -> Vec<DirEntry> {
    [
        (ino, FileType::Directory, ".".to_owned()),
        (parent, FileType::Directory, "..".to_owned()),
    ]
    .into_iter()
    .chain(children)
    .enumerate()
    .map(|(i, (ino, kind, name))| DirEntry {
        ino,
        next_offset: i as u64 + 1,
        kind,
        name,
    })
    .collect()
}

fn listing_ino_str(s: &str) -> u64 {
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    });
    hash | LISTING_INO_BIT
}

/// A stable inode number for a listed name (FNV-1a of its key), with the listing bit set.
fn listing_ino(name: &SecretName) -> u64 {
    listing_ino_str(name.as_str())
}
