//! What a mount serves: one vault (its tree at the mountpoint), or several, each a directory
//! named after its vault with a tree of its own (`--vault-url` repeated).
//!
//! Each vault keeps its own filesystem core: its own cache (and cache budget), request budget,
//! refresher and errors, so one vault's outage touches no other vault's files. The inode
//! numbers of vault `i` carry `i + 1` in bits 48 to 62 (the root is 1, as FUSE wants), and so
//! do its in-place handles; a core never hands out 2^48 numbers.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};
use tokio::runtime::Handle;

use crate::fs::{
    DirEntry, Entries, Entry, FsError, FsResult, FsState, Invalidate, Opened, ROOT, ReadData,
    SecretFs, dir_entries,
};

const SHIFT: u32 = 48;
const LOCAL: u64 = (1 << SHIFT) - 1;
/// Listing inode numbers have this bit set (see fs/dir.rs); kept as it is.
const LISTING_BIT: u64 = 1 << 63;
/// How long the kernel may keep the vault directories (they never change).
const VAULT_DIR_TTL: Duration = Duration::from_secs(24 * 3600);

/// The tree a mount serves.
pub enum Tree {
    Vault(Arc<SecretFs>),
    Vaults(Forest),
}

/// Several vaults, each a directory of the mount's root.
pub struct Forest {
    vaults: Vec<(String, Arc<SecretFs>)>,
    /// Entries of a vault's directory listing with global numbers, per (vault, local
    /// directory), rebuilt when the vault's listing changes.
    listings: Mutex<HashMap<(usize, u64), (Entries, Entries)>>,
    root: Entries,
}

fn global(vault: usize, local: u64) -> u64 {
    debug_assert!(
        local & LISTING_BIT != 0 || local <= LOCAL,
        "a core handed out 2^48 numbers: {local:#x}"
    );
    ((vault as u64 + 1) << SHIFT) | (local & LOCAL) | (local & LISTING_BIT)
}

impl Forest {
    /// The vaults, by directory name. Names must differ (checked by the caller).
    pub fn new(vaults: Vec<(String, Arc<SecretFs>)>) -> Self {
        let children = vaults
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (global(i, ROOT), FileType::Directory, name.clone()));
        let root = Arc::new(dir_entries(ROOT, ROOT, children));
        Self {
            vaults,
            listings: Mutex::new(HashMap::new()),
            root,
        }
    }

    pub fn vaults(&self) -> &[(String, Arc<SecretFs>)] {
        &self.vaults
    }

    /// The vault and its local number for a global one; None for the root.
    fn split(&self, ino: u64) -> FsResult<Option<(&Arc<SecretFs>, usize, u64)>> {
        if ino == ROOT {
            return Ok(None);
        }
        let index = usize::try_from(((ino & !LISTING_BIT) >> SHIFT).wrapping_sub(1))
            .map_err(|_| FsError::NotFound)?;
        let (_, fs) = self.vaults.get(index).ok_or(FsError::NotFound)?;
        Ok(Some((fs, index, ino & LOCAL)))
    }

    fn first(&self) -> &Arc<SecretFs> {
        &self.vaults[0].1
    }

    fn root_attr(&self) -> FsResult<FileAttr> {
        let (mut attr, _) = self.first().getattr(ROOT)?;
        attr.ino = INodeNo(ROOT);
        Ok(attr)
    }

    async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let Some((fs, index, local)) = self.split(parent)? else {
            let index = self
                .vaults
                .iter()
                .position(|(n, _)| OsStr::new(n) == name)
                .ok_or(FsError::NotFound)?;
            let (mut attr, _) = self.vaults[index].1.getattr(ROOT)?;
            attr.ino = INodeNo(global(index, ROOT));
            return Ok(Entry {
                attr,
                entry_ttl: VAULT_DIR_TTL,
                attr_ttl: VAULT_DIR_TTL,
            });
        };
        let mut entry = fs.lookup(local, name).await?;
        entry.attr.ino = INodeNo(global(index, entry.attr.ino.0));
        Ok(entry)
    }

    fn getattr(&self, ino: u64) -> FsResult<(FileAttr, Duration)> {
        match self.split(ino)? {
            None => Ok((self.root_attr()?, VAULT_DIR_TTL)),
            Some((fs, index, local)) => {
                let (mut attr, ttl) = fs.getattr(local)?;
                attr.ino = INodeNo(global(index, attr.ino.0));
                Ok((attr, ttl))
            }
        }
    }

    fn forget(&self, ino: u64, n: u64) {
        if let Ok(Some((fs, _, local))) = self.split(ino) {
            fs.forget(local, n);
        }
    }

    async fn open(&self, ino: u64) -> FsResult<Opened> {
        let (fs, index, local) = self.split(ino)?.ok_or(FsError::IsDir)?;
        let mut opened = fs.open(local).await?;
        opened.handle = opened.handle.map(|h| global(index, h));
        Ok(opened)
    }

    fn release(&self, handle: u64) {
        if let Ok(Some((fs, _, local))) = self.split(handle) {
            fs.release(local);
        }
    }

    async fn read(&self, ino: u64, handle: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let (fs, _, local) = self.split(ino)?.ok_or(FsError::IsDir)?;
        fs.read(local, handle & LOCAL, offset, size).await
    }

    async fn opendir(&self, ino: u64) -> FsResult<bool> {
        match self.split(ino)? {
            // The vault directories never change: the kernel may keep them.
            None => Ok(true),
            Some((fs, _, local)) => fs.opendir(local).await,
        }
    }

    async fn readdir(&self, ino: u64, offset: u64) -> FsResult<(Entries, usize)> {
        let Some((fs, index, local)) = self.split(ino)? else {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(self.root.len());
            return Ok((self.root.clone(), start));
        };
        let (entries, start) = fs.readdir(local, offset).await?;
        let mut listings = self.listings.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((from, mapped)) = listings.get(&(index, local))
            && Arc::ptr_eq(from, &entries)
        {
            return Ok((mapped.clone(), start));
        }
        let mapped: Entries = Arc::new(
            entries
                .iter()
                .map(|e| DirEntry {
                    // `..` of a vault's root is the mount's root.
                    ino: if local == ROOT && e.name == ".." {
                        ROOT
                    } else {
                        global(index, e.ino)
                    },
                    ..e.clone()
                })
                .collect(),
        );
        listings.insert((index, local), (entries, mapped.clone()));
        Ok((mapped, start))
    }

    fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        match self.split(ino)? {
            None => Err(FsError::NoAttribute),
            Some((fs, _, local)) => fs.getxattr(local, name),
        }
    }

    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.split(ino)? {
            None => Ok(Vec::new()),
            Some((fs, _, local)) => fs.listxattr(local),
        }
    }

    /// Each vault's state, in order (a successor has the same vaults: the settings say so).
    pub fn snapshot(&self) -> FsState {
        FsState {
            vaults: self.vaults.iter().map(|(_, fs)| fs.snapshot()).collect(),
            ..FsState::default()
        }
    }

    pub fn restore(&self, state: FsState) -> Result<(), String> {
        if state.vaults.len() != self.vaults.len() {
            return Err(format!(
                "the serving kvfs handed over {} vaults, this one serves {}",
                state.vaults.len().max(1),
                self.vaults.len()
            ));
        }
        for ((_, fs), state) in self.vaults.iter().zip(state.vaults) {
            fs.restore(state).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A vault's invalidations, with its local numbers made global.
pub struct VaultInvalidator {
    pub vault: usize,
    pub inner: Arc<dyn Invalidate>,
}

impl Invalidate for VaultInvalidator {
    fn entry(&self, parent: u64, name: &str) {
        self.inner.entry(global(self.vault, parent), name);
    }

    fn attributes(&self, ino: u64) {
        self.inner.attributes(global(self.vault, ino));
    }

    fn data(&self, ino: u64) {
        self.inner.data(global(self.vault, ino));
    }
}

impl Tree {
    pub fn runtime(&self) -> &Handle {
        match self {
            Self::Vault(fs) => fs.runtime(),
            Self::Vaults(f) => f.first().runtime(),
        }
    }

    /// Every vault's core.
    pub fn cores(&self) -> Vec<Arc<SecretFs>> {
        match self {
            Self::Vault(fs) => vec![fs.clone()],
            Self::Vaults(f) => f.vaults.iter().map(|(_, fs)| fs.clone()).collect(),
        }
    }

    /// Sets each core's invalidator over the kernel's.
    pub fn set_invalidator(&self, kernel: Arc<dyn Invalidate>) {
        match self {
            Self::Vault(fs) => fs.set_invalidator(kernel),
            Self::Vaults(f) => {
                for (vault, (_, fs)) in f.vaults.iter().enumerate() {
                    fs.set_invalidator(Arc::new(VaultInvalidator {
                        vault,
                        inner: kernel.clone(),
                    }));
                }
            }
        }
    }

    /// How long the kernel may cache "no such name" for a failed lookup in `parent`: only in
    /// a vault's own root, where kvfs knows every name.
    pub fn negative_ttl(&self, parent: u64, err: &FsError) -> Option<Duration> {
        match self {
            Self::Vault(fs) if parent == ROOT => fs.negative_ttl(err),
            Self::Vaults(f) => match f.split(parent) {
                Ok(Some((fs, _, ROOT))) => fs.negative_ttl(err),
                _ => None,
            },
            Self::Vault(_) => None,
        }
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        match self {
            Self::Vault(fs) => fs.lookup(parent, name).await,
            Self::Vaults(f) => f.lookup(parent, name).await,
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<(FileAttr, Duration)> {
        match self {
            Self::Vault(fs) => fs.getattr(ino),
            Self::Vaults(f) => f.getattr(ino),
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        match self {
            Self::Vault(fs) => fs.forget(ino, n),
            Self::Vaults(f) => f.forget(ino, n),
        }
    }

    pub async fn open(&self, ino: u64) -> FsResult<Opened> {
        match self {
            Self::Vault(fs) => fs.open(ino).await,
            Self::Vaults(f) => f.open(ino).await,
        }
    }

    pub fn release(&self, handle: u64) {
        match self {
            Self::Vault(fs) => fs.release(handle),
            Self::Vaults(f) => f.release(handle),
        }
    }

    pub async fn read(&self, ino: u64, handle: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        match self {
            Self::Vault(fs) => fs.read(ino, handle, offset, size).await,
            Self::Vaults(f) => f.read(ino, handle, offset, size).await,
        }
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<bool> {
        match self {
            Self::Vault(fs) => fs.opendir(ino).await,
            Self::Vaults(f) => f.opendir(ino).await,
        }
    }

    pub async fn readdir(&self, ino: u64, offset: u64) -> FsResult<(Entries, usize)> {
        match self {
            Self::Vault(fs) => fs.readdir(ino, offset).await,
            Self::Vaults(f) => f.readdir(ino, offset).await,
        }
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        match self {
            Self::Vault(fs) => fs.getxattr(ino, name),
            Self::Vaults(f) => f.getxattr(ino, name),
        }
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self {
            Self::Vault(fs) => fs.listxattr(ino),
            Self::Vaults(f) => f.listxattr(ino),
        }
    }

    pub fn snapshot(&self) -> FsState {
        match self {
            Self::Vault(fs) => fs.snapshot(),
            Self::Vaults(f) => f.snapshot(),
        }
    }

    pub fn restore(&self, state: FsState) -> Result<(), String> {
        match self {
            Self::Vault(fs) => fs.restore(state).map_err(|e| e.to_string()),
            Self::Vaults(f) => f.restore(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_vaults_never_meet() {
        for local in [ROOT, 2, 3, LOCAL, LISTING_BIT | 12345] {
            let a = global(0, local);
            let b = global(1, local);
            assert_ne!(a, b);
            assert_ne!(a, ROOT);
            assert_eq!(a & LOCAL, local & LOCAL);
            assert_eq!(a & LISTING_BIT, local & LISTING_BIT);
        }
        assert_eq!(global(0, ROOT), (1 << SHIFT) | 1);
    }
}
