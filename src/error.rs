//! Errors of the store layer, classified once (by HTTP status and Key Vault error code, never by
//! message text) and mapped to the errno a reader sees.
//!
//! Every message here is built from codes and statuses only: no variant can carry a secret value.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::time::Duration;

/// Why Key Vault refused (403). All of these are definitive answers, not outages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Forbidden {
    /// The identity has no role or access policy granting secrets/get or secrets/list.
    Rbac,
    /// The vault's firewall does not admit this client's address.
    Firewall,
    /// The secret exists but is disabled.
    SecretDisabled,
    /// Any other 403 (`AccessDenied`, unknown inner codes).
    AccessDenied,
}

impl Forbidden {
    /// Classifies a 403 by Key Vault's inner (or outer) error code.
    pub fn from_code(code: Option<&str>) -> Self {
        match code {
            Some("ForbiddenByRbac") => Self::Rbac,
            Some("ForbiddenByFirewall") => Self::Firewall,
            Some("SecretDisabled") => Self::SecretDisabled,
            _ => Self::AccessDenied,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("secret not found")]
    NotFound,
    #[error("forbidden ({0:?})")]
    Forbidden(Forbidden),
    #[error("throttled by Key Vault (429)")]
    Throttled { retry_after: Option<Duration> },
    #[error("Key Vault answered HTTP {status}")]
    Service { status: u16 },
    /// No answer in time; the duration is the limit, zero when an HTTP exchange hit its own.
    #[error("{}", timeout_text(*.0))]
    Timeout(Duration),
    #[error("TLS failure: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connection(String),
    #[error("cannot get a token: {detail}")]
    Credential { status: Option<u16>, detail: String },
    #[error("unexpected response: {0}")]
    Other(String),
    /// Held back by kvfs's own request budget for longer than the request timeout.
    #[error("held back by the request budget (--max-request-rate) for more than {0:?}")]
    Budget(Duration),
}

impl StoreError {
    /// The errno a reader gets. Exhaustive on purpose: a new variant must choose.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound => libc::ENOENT,
            Self::Forbidden(_) => libc::EACCES,
            Self::Throttled { .. }
            | Self::Service { .. }
            | Self::Timeout(_)
            | Self::Tls(_)
            | Self::Connection(_)
            | Self::Credential { .. }
            | Self::Other(_)
            | Self::Budget(_) => libc::EIO,
        }
    }

    /// True for answers that say something about the secret itself (it is absent, or this
    /// identity may not read it), as opposed to the path to it failing.
    pub fn is_definitive(&self) -> bool {
        match self {
            Self::NotFound | Self::Forbidden(_) => true,
            Self::Throttled { .. }
            | Self::Service { .. }
            | Self::Timeout(_)
            | Self::Tls(_)
            | Self::Connection(_)
            | Self::Credential { .. }
            | Self::Other(_)
            | Self::Budget(_) => false,
        }
    }

    /// The level this error deserves in a log line: an absent name is routine.
    pub fn is_routine(&self) -> bool {
        matches!(self, Self::NotFound)
    }
}

fn timeout_text(limit: Duration) -> String {
    if limit.is_zero() {
        "no answer within the request timeout".to_owned()
    } else {
        format!("no answer within {limit:?}")
    }
}

/// An error and all its causes on one line, `outer: cause: root`. The Azure SDK's outer message
/// for a credential failure says nothing; the status sits further down the chain.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        let rows = [
            (StoreError::NotFound, libc::ENOENT),
            (StoreError::Forbidden(Forbidden::Rbac), libc::EACCES),
            (StoreError::Forbidden(Forbidden::Firewall), libc::EACCES),
            (
                StoreError::Forbidden(Forbidden::SecretDisabled),
                libc::EACCES,
            ),
            (StoreError::Forbidden(Forbidden::AccessDenied), libc::EACCES),
            (StoreError::Throttled { retry_after: None }, libc::EIO),
            (StoreError::Service { status: 503 }, libc::EIO),
            (StoreError::Timeout(Duration::from_secs(1)), libc::EIO),
            (StoreError::Tls("x".into()), libc::EIO),
            (StoreError::Connection("x".into()), libc::EIO),
            (
                StoreError::Credential {
                    status: None,
                    detail: "x".into(),
                },
                libc::EIO,
            ),
            (StoreError::Other("x".into()), libc::EIO),
            (StoreError::Budget(Duration::from_secs(1)), libc::EIO),
        ];
        for (err, errno) in rows {
            assert_eq!(err.errno(), errno, "{err:?}");
        }
    }

    #[test]
    fn forbidden_codes() {
        assert_eq!(
            Forbidden::from_code(Some("ForbiddenByRbac")),
            Forbidden::Rbac
        );
        assert_eq!(
            Forbidden::from_code(Some("ForbiddenByFirewall")),
            Forbidden::Firewall
        );
        assert_eq!(
            Forbidden::from_code(Some("SecretDisabled")),
            Forbidden::SecretDisabled
        );
        assert_eq!(
            Forbidden::from_code(Some("AccessDenied")),
            Forbidden::AccessDenied
        );
        assert_eq!(Forbidden::from_code(None), Forbidden::AccessDenied);
    }

    #[test]
    fn chain_walks_sources_without_repeating() {
        let inner = std::io::Error::other("root cause");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(chain(&Outer(inner)), "outer: root cause");
    }
}
