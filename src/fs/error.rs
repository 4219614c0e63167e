//! What a filesystem call can answer besides success, and the errno each becomes.

use crate::error::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("no such file (not a name Key Vault can hold)")]
    InvalidName,
    #[error("no such file (hidden by --include/--exclude)")]
    Hidden,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttribute,
    /// The value does not fit a view (not base64, not JSON, not a certificate): EIO on the
    /// view, with a reason that never holds a byte of the value.
    #[error("view of {name}: {source}")]
    View {
        name: String,
        source: super::view::ViewError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// Exhaustive on purpose: a new variant must choose its errno.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound | Self::InvalidName | Self::Hidden => libc::ENOENT,
            Self::NotDir => libc::ENOTDIR,
            Self::IsDir => libc::EISDIR,
            Self::ReadOnly => libc::EROFS,
            Self::NoAttribute => libc::ENODATA,
            Self::View { .. } => libc::EIO,
            Self::Store(e) => e.errno(),
        }
    }

    /// Routine answers (an absent name, an absent attribute) are logged at debug only.
    pub fn is_routine(&self) -> bool {
        match self {
            Self::NotFound
            | Self::InvalidName
            | Self::Hidden
            | Self::NoAttribute
            | Self::ReadOnly => true,
            Self::NotDir | Self::IsDir | Self::View { .. } => false,
            Self::Store(e) => e.is_routine(),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
