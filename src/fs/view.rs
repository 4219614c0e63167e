//! Views: files and directories computed from one cached secret, for apps that cannot take Key
//! Vault's shapes. Configured once per mount, never per secret; computed when read, from the
//! value kvfs already holds: no view costs a Key Vault request of its own.
//!
//! - `<name>.pem`, `.crt`, `.key`, `.pfx` for certificate-backed secrets (always on);
//! - `--decode GLOB=base64|hex`: the secret's own file serves the decoded bytes;
//! - `--json-keys GLOB`: `<name>.d/<key>`, nested objects as directories;
//! - `--alias FILE=SECRET` and `--name-map env`: other names for a secret's file;
//! - `--env-file GLOB`: `.env`, `NAME=value` lines of the matching secrets.
//!
//! A view file is a node of its own, per version like every file (`Render` says how its bytes
//! come from the value), so it rotates with its source, never torn, and follows revocation and
//! the access rules of its secret.

use std::sync::Arc;

use globset::{GlobMatcher, GlobSet};
use zeroize::Zeroizing;

use super::{FsError, FsResult};
use crate::secret::{Secret, SecretName};
use crate::views::cert::{self, CertView};
use crate::views::decode::{self, DecodeRule, Decoding};
use crate::views::json::{self, JsonNode};
use crate::views::names::{Alias, NameMap};

/// The name of the env-file view in the root.
pub const ENV_FILE: &str = ".env";
/// `--env-file tag:KEY[=VALUE]` selects by tag rather than by name.
pub const ENV_TAG_PREFIX: &str = "tag:";
/// The suffix of a JSON secret's directory of keys.
pub const JSON_DIR_SUFFIX: &str = ".d";

/// Why a value does not fit a view: the view's own error, kept as the source. None holds a
/// byte of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Cert(#[from] cert::CertError),
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error(transparent)]
    Json(#[from] json::JsonError),
}

/// How a file's bytes come from its secret's value.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Render {
    /// The value as Key Vault holds it (served without a copy).
    #[default]
    Value,
    /// `--decode`.
    Decoded(Decoding),
    /// A certificate view.
    Cert(CertView),
    /// One key of a JSON object, by its path of keys.
    JsonKey(Vec<String>),
}

impl Render {
    /// The view's bytes. A value that does not fit the view is EIO, with the reason logged
    /// (never a byte of the value).
    pub fn apply(&self, secret: &Secret) -> FsResult<Zeroizing<Vec<u8>>> {
        let value = secret.value.as_bytes();
        let failed = |source: ViewError| FsError::View {
            name: secret.properties.name.as_str().to_owned(),
            source,
        };
        match self {
            Self::Value => Ok(Zeroizing::new(value.to_vec())),
            Self::Decoded(d) => decode::decode(*d, value).map_err(|e| failed(e.into())),
            Self::Cert(view) => {
                let content_type = secret
                    .properties
                    .content_type
                    .as_deref()
                    .unwrap_or_default();
                cert::render(*view, content_type, value).map_err(|e| failed(e.into()))
            }
            Self::JsonKey(path) => match json_tree(secret)?.get(path.iter().map(String::as_str)) {
                Some(JsonNode::Dir(_)) => Err(FsError::IsDir),
                Some(node) => Ok(Zeroizing::new(node.as_leaf().unwrap_or_default().to_vec())),
                None => Err(FsError::NotFound),
            },
        }
    }

    /// Whether two renderings may differ (a PKCS#12 file built anew gets fresh salts): such a
    /// view is rendered once per inode.
    pub fn varies(&self) -> bool {
        matches!(self, Self::Cert(CertView::Pfx))
    }

    /// The size of the view of `secret`.
    pub fn size(&self, secret: &Secret) -> FsResult<u64> {
        match self {
            Self::Value => Ok(secret.value.len() as u64),
            other => other.apply(secret).map(|b| b.len() as u64),
        }
    }
}

/// What a path of keys is in a JSON secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonKind {
    Dir,
    Leaf,
}

fn json_tree(secret: &Secret) -> FsResult<json::JsonTree> {
    json::parse(secret.value.as_bytes()).map_err(|e| FsError::View {
        name: secret.properties.name.as_str().to_owned(),
        source: e.into(),
    })
}

/// What `path` is in `secret`'s JSON object; NotFound when it holds no such key.
pub fn json_entry(secret: &Secret, path: &[String]) -> FsResult<JsonKind> {
    let tree = json_tree(secret)?;
    if path.is_empty() {
        return Ok(JsonKind::Dir);
    }
    match tree.get(path.iter().map(String::as_str)) {
        Some(JsonNode::Dir(_)) => Ok(JsonKind::Dir),
        Some(_) => Ok(JsonKind::Leaf),
        None => Err(FsError::NotFound),
    }
}

/// The keys of the object at `path`, with what each is.
pub fn json_children(secret: &Secret, path: &[String]) -> FsResult<Vec<(String, JsonKind)>> {
    let tree = json_tree(secret)?;
    let Some(dir) = tree.dir(path.iter().map(String::as_str)) else {
        return Err(FsError::NotDir);
    };
    Ok(dir
        .iter()
        .map(|(key, node)| {
            let kind = match node {
                JsonNode::Dir(_) => JsonKind::Dir,
                _ => JsonKind::Leaf,
            };
            (key.to_owned(), kind)
        })
        .collect())
}

/// What a root name that is not a secret's own name stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Derived {
    /// Another name of the secret's own file (`--alias`, `--name-map`).
    Alias(SecretName),
    /// A certificate view of the secret.
    Cert(SecretName, CertView),
    /// `<name>.d`.
    JsonDir(SecretName),
    /// `.env`.
    EnvFile,
}

/// The views of one mount.
#[derive(Clone, Debug, Default)]
pub struct ViewRules {
    decode: Vec<(GlobMatcher, Decoding)>,
    json_keys: Option<GlobSet>,
    aliases: Vec<Alias>,
    name_map: Option<NameMap>,
    env_file: Option<GlobSet>,
    /// `--env-file tag:KEY[=VALUE]`: secrets with this tag (and value) are in `.env` too.
    env_tags: Vec<(String, Option<String>)>,
}

impl ViewRules {
    pub fn new(
        decode: &[DecodeRule],
        json_keys: &[String],
        aliases: &[Alias],
        name_map: Option<NameMap>,
        env_file: &[String],
    ) -> Result<Self, String> {
        let (tags, env_globs): (Vec<&String>, Vec<&String>) =
            env_file.iter().partition(|r| r.starts_with(ENV_TAG_PREFIX));
        let env_globs: Vec<String> = env_globs.into_iter().cloned().collect();
        let env_tags = tags
            .into_iter()
            .map(|r| {
                let tag = &r[ENV_TAG_PREFIX.len()..];
                match tag.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (tag.to_owned(), None),
                }
            })
            .collect();
        let set = |globs: &[String]| -> Result<Option<GlobSet>, String> {
            if globs.is_empty() {
                return Ok(None);
            }
            crate::access::glob_set(globs.iter().map(String::as_str)).map(Some)
        };
        Ok(Self {
            decode: decode
                .iter()
                .map(|r| Ok((crate::access::glob(&r.glob)?.compile_matcher(), r.decoding)))
                .collect::<Result<_, String>>()?,
            json_keys: set(json_keys)?,
            aliases: aliases.to_vec(),
            name_map,
            env_file: set(&env_globs)?,
            env_tags,
        })
    }

    /// How the secret's own file shows its value.
    pub fn own_render(&self, name: &SecretName) -> Render {
        self.decode
            .iter()
            .find(|(g, _)| g.is_match(name.as_str()))
            .map_or(Render::Value, |(_, d)| Render::Decoded(*d))
    }

    pub fn json_keys(&self, name: &SecretName) -> bool {
        self.json_keys
            .as_ref()
            .is_some_and(|s| s.is_match(name.as_str()))
    }

    pub fn env_file(&self) -> bool {
        self.env_file.is_some() || !self.env_tags.is_empty()
    }

    /// Whether `.env` holds the secret `p` describes, by name or tag (the access rules are
    /// checked by the caller).
    pub fn in_env_file(&self, p: &crate::secret::SecretProperties) -> bool {
        self.env_file
            .as_ref()
            .is_some_and(|s| s.is_match(p.name.as_str()))
            || self.env_tags.iter().any(|(key, value)| {
                p.tags
                    .get(key)
                    .is_some_and(|v| value.as_ref().is_none_or(|want| want == v))
            })
    }

    /// Whether a change of `name` may change `.env`: by name, or any change when tags decide.
    pub fn may_change_env_file(&self, name: &SecretName) -> bool {
        !self.env_tags.is_empty()
            || self
                .env_file
                .as_ref()
                .is_some_and(|s| s.is_match(name.as_str()))
    }

    /// What a root name that is not a valid secret name stands for, if anything.
    pub fn resolve(&self, file: &str) -> Option<Derived> {
        if self.env_file() && file == ENV_FILE {
            return Some(Derived::EnvFile);
        }
        if let Some(alias) = self.aliases.iter().find(|a| a.file_name == file) {
            return Some(Derived::Alias(alias.secret.clone()));
        }
        if let Some((base, view)) = CertView::split(file)
            && let Some(name) = SecretName::parse(base)
        {
            return Some(Derived::Cert(name, view));
        }
        if let Some(base) = file.strip_suffix(JSON_DIR_SUFFIX)
            && let Some(name) = SecretName::parse(base)
            && self.json_keys(&name)
        {
            return Some(Derived::JsonDir(name));
        }
        self.name_map
            .and_then(|map| map.to_secret(file))
            .map(Derived::Alias)
    }

    /// Every other root name of `name` besides its own, with whether it is a directory: what
    /// a listing shows (certificate views only for `certificate`) and what a change to the
    /// secret invalidates (all of them).
    pub fn names_of(&self, name: &SecretName, certificate: bool) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        if certificate {
            for view in CertView::ALL {
                out.push((format!("{}{}", name.as_str(), view.suffix()), false));
            }
        }
        if self.json_keys(name) {
            out.push((format!("{}{JSON_DIR_SUFFIX}", name.as_str()), true));
        }
        for alias in &self.aliases {
            if alias.secret.key() == name.key() {
                out.push((alias.file_name.clone(), false));
            }
        }
        if let Some(map) = self.name_map {
            out.extend(map.to_file_names(name).into_iter().map(|n| (n, false)));
        }
        out
    }
}

/// Whether a secret's content type makes it certificate-backed.
pub fn is_certificate(secret: &Arc<Secret>) -> bool {
    cert::is_certificate(secret.properties.content_type.as_deref())
}
