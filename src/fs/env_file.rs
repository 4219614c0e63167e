//! `.env` (`--env-file GLOB`): one `NAME=value` line per matching secret, quoted for
//! `set -a; source` and dotenv parsers. One inode per set of versions, so a rotation of any
//! of its secrets makes a new file (never torn) and held descriptors keep theirs.
//!
//! It holds only secrets with the mount's own owner (no `--owner` rule of their own): a file
//! readable by one owner must not carry secrets given to another.

use fuser::{FileAttr, FileType, INodeNo};
use zeroize::Zeroizing;

use super::inodes::Key;
use super::{FsError, FsResult, Node, SecretFs};
use crate::error::StoreError;
use crate::secret::SecretProperties;
use crate::store::SecretStore;

impl SecretFs {
    /// The env file of the current versions, with one more kernel reference.
    pub(super) async fn lookup_env_file(&self) -> FsResult<FileAttr> {
        let listing = self.wait(self.cache.list()).await?;
        let names: Vec<_> = listing
            .iter()
            .filter(|p| {
                p.enabled
                    && self.access.visible(p.name.as_str())
                    && self.access.owner_of(p.name.as_str()).is_none()
                    && self.views.in_env_file(p)
            })
            .map(|p| p.name.clone())
            .collect();
        let fetched = futures::future::join_all(names.iter().map(|name| self.current(name))).await;
        let mut sources = Vec::new();
        for result in fetched {
            match result {
                Ok(secret) => sources.push(secret.properties.clone()),
                // Gone or disabled since the listing: not in the file.
                Err(FsError::Store(StoreError::NotFound | StoreError::Forbidden(_))) => {}
                Err(e) => return Err(e),
            }
        }
        sources.sort_by_key(|p| p.name.key());
        let size = self.render_env_file(&sources).await?.len() as u64;
        let fingerprint = sources
            .iter()
            .map(|p| {
                format!(
                    "{}@{}",
                    p.name.key(),
                    p.version.as_deref().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut inodes = self.inodes();
        let mut fresh = Some(sources);
        let (ino, _) = inodes.look_up(Key::Env(fingerprint), || {
            Node::EnvFile(fresh.take().expect("made once"), size)
        });
        Ok(self.env_attr(ino, size))
    }

    /// The file's bytes: each version fetched by its exact id (from memory while the cache
    /// holds it).
    pub(super) async fn render_env_file(
        &self,
        sources: &[SecretProperties],
    ) -> FsResult<Zeroizing<Vec<u8>>> {
        let secrets = futures::future::join_all(sources.iter().map(|p| self.fetch_exact(p))).await;
        let secrets = secrets.into_iter().collect::<FsResult<Vec<_>>>()?;
        let rendered = crate::views::envfile::render(
            secrets
                .iter()
                .map(|s| (&s.properties.name, s.value.as_bytes())),
        );
        for skipped in &rendered.skipped {
            tracing::debug!(secret = %skipped.name.as_str(), reason = %skipped.reason, "left out of .env");
        }
        let text: &str = &rendered.text;
        Ok(Zeroizing::new(text.as_bytes().to_vec()))
    }

    /// The env file has the mount's own owner and file mode.
    pub(super) fn env_attr(&self, ino: u64, size: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::RegularFile,
            perm: self.config.file_mode,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}
