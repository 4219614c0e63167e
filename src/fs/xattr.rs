//! Extended attributes: a version's metadata under `user.kvfs.` (version, content type,
//! times, enabled, tags, and `stale` while kvfs serves a value it could not revalidate).
//! Never the value.

use std::ffi::OsStr;
use std::time::SystemTime;

use super::{FsError, FsResult, SecretFs};
use crate::secret::SecretProperties;

const XATTR_PREFIX: &str = "user.kvfs.";

impl SecretFs {
    /// Names of the metadata attributes of `ino`, NUL-terminated, as `listxattr` returns them.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let properties = match self.properties(ino) {
            Ok(p) => p,
            Err(FsError::IsDir) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (name, _) in self.xattrs(&properties) {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let properties = match self.properties(ino) {
            Ok(p) => p,
            Err(FsError::IsDir) => return Err(FsError::NoAttribute),
            Err(e) => return Err(e),
        };
        let wanted = name.to_str().ok_or(FsError::NoAttribute)?;
        self.xattrs(&properties)
            .into_iter()
            .find(|(n, _)| n == wanted)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }

    /// The metadata attributes of one version, in a fixed order. Never the value.
    pub(super) fn xattrs(&self, p: &SecretProperties) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add =
            |name: &str, value: String| out.push((format!("{XATTR_PREFIX}{name}"), value));
        if let Some(v) = &p.version {
            add("version", v.clone());
        }
        if let Some(ct) = &p.content_type {
            add("content_type", ct.clone());
        }
        for (name, time) in [
            ("created", p.created),
            ("updated", p.updated),
            ("expires", p.expires),
            ("not_before", p.not_before),
        ] {
            if let Some(t) = time.and_then(rfc3339) {
                add(name, t);
            }
        }
        add("enabled", p.enabled.to_string());
        for (tag, value) in &p.tags {
            add(&format!("tags.{tag}"), value.clone());
        }
        if let Some(since) = self.cache.stale_since(&p.name).and_then(rfc3339) {
            add("stale", since);
        }
        out
    }
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}
