//! Initial content for the emulator: a JSON seed file, a directory of files, or the built-in
//! sample secrets that `kvfs demo` shows.
//!
//! A seed is validated whole before anything is stored, so a bad entry leaves the vault as it
//! was and the error names the entry.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EmulatorError;
use super::vault::{MAX_VALUE_BYTES, SecretOptions, Vault, is_valid_secret_name};

/// A seed file: `{"secrets": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub secrets: Vec<SeedSecret>,
}

/// One secret of a seed. `versions` are older values, oldest first, created before `value`;
/// `contentType`, `tags` and `enabled` apply to the latest version only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedSecret {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub versions: Vec<String>,
}

impl Seed {
    /// Reads a seed from a JSON file or a directory (each regular file whose name is a valid
    /// secret name becomes a secret whose value is the file's content; other entries are
    /// skipped, so `..data` links and dotfiles of a Kubernetes secret mount do no harm).
    pub fn load(path: &Path) -> Result<Seed, EmulatorError> {
        let io = |source| EmulatorError::Io {
            path: path.to_owned(),
            source,
        };
        let seed = if std::fs::metadata(path).map_err(io)?.is_dir() {
            Self::from_dir(path)?
        } else {
            let text = std::fs::read_to_string(path).map_err(io)?;
            serde_json::from_str(&text).map_err(|e| EmulatorError::Seed {
                entry: path.display().to_string(),
                reason: e.to_string(),
            })?
        };
        seed.validate()?;
        Ok(seed)
    }

    fn from_dir(dir: &Path) -> Result<Seed, EmulatorError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EmulatorError::Io { path, source }
        };
        let mut secrets = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_valid_secret_name(&name)
                || !std::fs::metadata(&path).map_err(io(&path))?.is_file()
            {
                tracing::debug!(entry = %path.display(), "emulator: seed entry skipped");
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let value = String::from_utf8(bytes).map_err(|_| EmulatorError::Seed {
                entry: path.display().to_string(),
                reason: "not UTF-8 text (Key Vault values are strings)".into(),
            })?;
            secrets.push(SeedSecret {
                name,
                value,
                ..SeedSecret::default()
            });
        }
        secrets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Seed { secrets })
    }

    /// Checks every name and value size.
    pub fn validate(&self) -> Result<(), EmulatorError> {
        for secret in &self.secrets {
            let error = |reason: &str| EmulatorError::Seed {
                entry: secret.name.clone(),
                reason: reason.to_owned(),
            };
            if !is_valid_secret_name(&secret.name) {
                return Err(error(
                    "invalid name: secret names match ^[0-9a-zA-Z-]{1,127}$",
                ));
            }
            let too_big = std::iter::once(&secret.value)
                .chain(&secret.versions)
                .any(|v| v.len() > MAX_VALUE_BYTES);
            if too_big {
                return Err(error("a value exceeds 25 KB"));
            }
        }
        Ok(())
    }
}

impl Vault {
    /// Stores every secret of `seed` (older versions first).
    pub fn load_seed(&self, seed: &Seed) {
        for secret in &seed.secrets {
            for older in &secret.versions {
                self.set_secret(&secret.name, older);
            }
            let opts = SecretOptions {
                content_type: secret.content_type.clone(),
                tags: secret.tags.clone(),
                enabled: secret.enabled.unwrap_or(true),
                ..SecretOptions::default()
            };
            self.set_secret_with(&secret.name, &secret.value, opts);
        }
    }

    /// Stores the built-in sample secrets ([`sample_seed`]).
    pub fn load_samples(&self) {
        self.load_seed(&sample_seed());
    }
}

/// Eight friendly secrets for `kvfs demo`: plain values, a JSON blob, a PEM certificate and key, a disabled
/// secret, one with three versions, tags on some.
pub fn sample_seed() -> Seed {
    let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let plain = |name: &str, value: &str| SeedSecret {
        name: name.into(),
        value: value.into(),
        ..SeedSecret::default()
    };
    Seed {
        secrets: vec![
            SeedSecret {
                tags: tags(&[("env", "demo"), ("owner", "platform")]),
                ..plain("db-password", "correct-horse-battery-staple")
            },
            SeedSecret {
                tags: tags(&[("env", "demo")]),
                ..plain("api-key", "sk_demo_4f9a2c7e1b8d4a06")
            },
            SeedSecret {
                content_type: Some("application/json".into()),
                ..plain(
                    "app-config",
                    "{\n  \"featureFlags\": {\"newUi\": true, \"betaSearch\": false},\n  \"maxConnections\": 32,\n  \"region\": \"westeurope\"\n}\n",
                )
            },
            SeedSecret {
                content_type: Some("application/x-pem-file".into()),
                tags: tags(&[("kind", "certificate")]),
                // A real chain and key, made for each emulator: the certificate views
                // (tls-cert.crt, .key, .pem, .pfx) then show something nginx would take.
                ..plain(
                    "tls-cert",
                    &super::SampleChain::generate("demo.kvfs.example")
                        .map(|c| c.pem())
                        .unwrap_or_default(),
                )
            },
            SeedSecret {
                enabled: Some(false),
                ..plain("legacy-token", "retired-0000")
            },
            SeedSecret {
                versions: vec!["rotation-1-a1b2".into(), "rotation-2-c3d4".into()],
                tags: tags(&[("rotation", "monthly")]),
                ..plain("rotating-key", "rotation-3-e5f6")
            },
            SeedSecret {
                content_type: Some("text/plain".into()),
                ..plain("smtp-password", "mail-relay-pa55")
            },
            plain(
                "storage-connection-string",
                "DefaultEndpointsProtocol=https;AccountName=kvfsdemo;AccountKey=ZGVtby1vbmx5;EndpointSuffix=core.windows.net",
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid() {
        let seed = sample_seed();
        assert!(seed.validate().is_ok());
        assert_eq!(seed.secrets.len(), 8);
        let vault = Vault::new();
        vault.load_samples();
        let (versions, _) = vault.versions_page("rotating-key", 0, 25);
        assert_eq!(versions.len(), 3);
    }

    #[test]
    fn invalid_name_is_named_in_error() {
        let json = r#"{"secrets":[{"name":"ok","value":"1"},{"name":"bad_name","value":"2"}]}"#;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.json");
        std::fs::write(&path, json).expect("write seed");
        let err = Seed::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("bad_name"), "{err}");
    }

    #[test]
    fn json_seed_with_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.json");
        let json = r#"{"secrets":[{"name":"k","value":"new","versions":["old1","old2"],"contentType":"text/plain","tags":{"a":"b"},"enabled":false}]}"#;
        std::fs::write(&path, json).expect("write seed");
        let seed = Seed::load(&path);
        assert!(seed.is_ok(), "{:?}", seed.err());
        let vault = Vault::new();
        if let Ok(seed) = seed {
            vault.load_seed(&seed);
        }
        let (versions, _) = vault.versions_page("k", 0, 25);
        let values: Vec<_> = versions.iter().map(|i| i.version.value.as_str()).collect();
        assert_eq!(values, ["old1", "old2", "new"]);
        let latest = versions.last().map(|i| i.version.clone());
        assert_eq!(latest.as_ref().map(|v| v.enabled), Some(false));
        assert_eq!(
            latest.and_then(|v| v.content_type),
            Some("text/plain".into())
        );
    }

    #[test]
    fn directory_seed_skips_invalid_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, value) in [("db-password", "p\n"), (".hidden", "x"), ("a_b", "y")] {
            assert!(std::fs::write(dir.path().join(name), value).is_ok());
        }
        assert!(std::fs::create_dir(dir.path().join("subdir")).is_ok());
        let seed = Seed::load(dir.path());
        assert!(seed.is_ok(), "{:?}", seed.err());
        let names: Vec<_> = seed
            .iter()
            .flat_map(|s| s.secrets.iter().map(|x| (x.name.clone(), x.value.clone())))
            .collect();
        assert_eq!(names, [("db-password".to_owned(), "p\n".to_owned())]);
    }
}
