//! Names a secret appears under besides its own: `--alias FILE=SECRET` rules, and the
//! `--name-map env` mapping between Key Vault names and the names applications use.
//!
//! Key Vault names are `[0-9A-Za-z-]{1,127}`, compared ignoring case. The `env` map gives a
//! secret `n` up to two more file names:
//!
//! - **Environment style**: `n` in upper case with every `-` made `_` (`db-password` ->
//!   `DB_PASSWORD`). ASP.NET reads `__` in an environment variable as its `:` key separator, so
//!   `ConnectionStrings--Main` -> `CONNECTIONSTRINGS__MAIN` is the name ASP.NET expects (its
//!   configuration keys ignore case), and the same name works in key-per-file configuration.
//!   Back: a name made only of `0-9`, `A-Z` and `_`, with `_` made `-` and letters made lower
//!   case. Produced only when it differs from `n` (`PASSWORD` has none).
//! - **Configuration-key style**, only for names holding `--`: each `--`, left to right, made
//!   `:` (`ConnectionStrings--Main` -> `ConnectionStrings:Main`), as ASP.NET's Key Vault
//!   configuration provider reads them; case is kept. Back: each `:` made `--`, accepted only
//!   when mapping the result forward gives the same name again (`a---b` -> `a:-b`; `a-:b` is
//!   not a name the map produces, so it maps to nothing).
//!
//! Both directions are a bijection between Key Vault names (up to case) and the names the map
//! produces: `to_secret` answers `Some` exactly for those names, and never for two names of
//! different secrets. An environment-style name with no `_` is also a Key Vault name; it maps
//! to that same secret (up to case), so a direct lookup and the map cannot disagree. A name with
//! `_` or `:` is never a Key Vault name.

use crate::secret::SecretName;

/// The longest file name Linux allows (`NAME_MAX`), in bytes.
pub const MAX_FILE_NAME: usize = 255;

/// Whether `name` can be one entry of a directory: not empty, not `.` or `..`, no `/` or NUL,
/// at most 255 bytes.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_FILE_NAME
        && !name.bytes().any(|b| b == b'/' || b == 0)
}

/// Whether `name` can be an environment variable that a shell sets with `NAME=value`:
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One `--alias FILE=SECRET` rule: the secret also appears as `file_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    pub file_name: String,
    pub secret: SecretName,
}

const ALIAS_FORM: &str = "expected FILE=SECRET, e.g. 'DB_PASSWORD=db-password'";

/// Parses `FILE=SECRET`. FILE is any file name (it may hold `=`: the last `=` splits), SECRET a
/// Key Vault name. Errors name the flag and the part at fault.
pub fn parse_alias(s: &str) -> Result<Alias, String> {
    let (file_name, secret) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("--alias {s:?}: {ALIAS_FORM}"))?;
    if !is_file_name(file_name) {
        return Err(format!(
            "--alias {s:?}: {file_name:?} is not a file name (1 to {MAX_FILE_NAME} bytes, no '/' \
             or NUL, not '.' or '..'); {ALIAS_FORM}"
        ));
    }
    let secret = SecretName::parse(secret).ok_or_else(|| {
        format!(
            "--alias {s:?}: {secret:?} is not a Key Vault secret name (1 to {} characters, only \
             0-9, a-z, A-Z and '-'); {ALIAS_FORM}",
            SecretName::MAX_LEN
        )
    })?;
    Ok(Alias {
        file_name: file_name.to_owned(),
        secret,
    })
}

/// A mapping between Key Vault names and the names applications use (`--name-map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameMap {
    /// Environment style and configuration-key style names (see the module doc).
    Env,
}

impl NameMap {
    /// The names, other than its own, under which `secret` appears: none when every mapped name
    /// equals the secret's own. Environment style first, then configuration-key style.
    pub fn to_file_names(self, secret: &SecretName) -> Vec<String> {
        match self {
            NameMap::Env => {
                let mut names = Vec::new();
                let env = env_name(secret);
                if env != secret.as_str() {
                    names.push(env);
                }
                if let Some(key) = config_key_name(secret.as_str()) {
                    names.push(key);
                }
                names
            }
        }
    }

    /// The secret a mapped name stands for, or `None` when `file_name` is not a name this map
    /// produces. The answer equals the secret's name up to case (Key Vault ignores case).
    pub fn to_secret(self, file_name: &str) -> Option<SecretName> {
        match self {
            NameMap::Env => {
                if file_name.contains(':') {
                    let secret = SecretName::parse(&file_name.replace(':', "--"))?;
                    (config_key_name(secret.as_str()).as_deref() == Some(file_name))
                        .then_some(secret)
                } else if file_name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    SecretName::parse(&file_name.to_ascii_lowercase().replace('_', "-"))
                } else {
                    None
                }
            }
        }
    }
}

/// The environment-style name of a secret: upper case, `-` made `_` (`db-password` ->
/// `DB_PASSWORD`). A valid file name; a valid environment variable name unless it starts with a
/// digit (see `is_env_var_name`).
pub fn env_name(secret: &SecretName) -> String {
    secret
        .as_str()
        .bytes()
        .map(|b| match b {
            b'-' => '_',
            b => char::from(b.to_ascii_uppercase()),
        })
        .collect()
}

/// `name` with each `--` made `:`, left to right; `None` when it holds no `--`.
fn config_key_name(name: &str) -> Option<String> {
    name.contains("--").then(|| name.replace("--", ":"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> SecretName {
        SecretName::parse(s).unwrap()
    }

    #[test]
    fn file_names() {
        let long = "x".repeat(255);
        for ok in [
            "a",
            "DB_PASSWORD",
            "a:b",
            "...",
            ".a",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(is_file_name(ok), "{ok:?}");
        }
        let too_long = "x".repeat(256);
        for bad in ["", ".", "..", "a/b", "/", "a\0b", too_long.as_str()] {
            assert!(!is_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "_", "DB_PASSWORD", "a1", "__X__"] {
            assert!(is_env_var_name(ok), "{ok:?}");
        }
        for bad in ["", "1A", "A-B", "A:B", "A B", "É"] {
            assert!(!is_env_var_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn alias_rules() {
        assert_eq!(
            parse_alias("DB_PASSWORD=db-password").unwrap(),
            Alias {
                file_name: "DB_PASSWORD".into(),
                secret: name("db-password")
            }
        );
        // The last '=' splits: a file name may hold one, a secret name never does.
        assert_eq!(parse_alias("a=b=c").unwrap().file_name, "a=b");
        assert_eq!(parse_alias("app.conf=c").unwrap().file_name, "app.conf");
    }

    #[test]
    fn alias_rejections_name_the_flag_and_the_part() {
        let cases = [
            ("db-password", "expected FILE=SECRET"),
            ("=db-password", "\"\" is not a file name"),
            ("..=db-password", "\"..\" is not a file name"),
            ("a/b=db-password", "\"a/b\" is not a file name"),
            (
                "DB=db_password",
                "\"db_password\" is not a Key Vault secret name",
            ),
            ("DB=", "\"\" is not a Key Vault secret name"),
        ];
        for (arg, want) in cases {
            let err = parse_alias(arg).unwrap_err();
            assert!(err.starts_with("--alias "), "{arg:?}: {err}");
            assert!(err.contains(want), "{arg:?}: {err}");
        }
        let long = format!("{}=db", "f".repeat(256));
        assert!(
            parse_alias(&long)
                .unwrap_err()
                .contains("is not a file name")
        );
        let long = format!("F={}", "s".repeat(128));
        assert!(
            parse_alias(&long)
                .unwrap_err()
                .contains("is not a Key Vault secret name")
        );
    }

    #[test]
    fn env_map_table() {
        let cases: &[(&str, &[&str])] = &[
            ("db-password", &["DB_PASSWORD"]),
            ("DB-PASSWORD", &["DB_PASSWORD"]),
            ("password", &["PASSWORD"]),
            ("PASSWORD", &[]),
            ("API2", &[]),
            (
                "ConnectionStrings--Main",
                &["CONNECTIONSTRINGS__MAIN", "ConnectionStrings:Main"],
            ),
            ("a---b", &["A___B", "a:-b"]),
            ("a----b", &["A____B", "a::b"]),
            ("--", &["__", ":"]),
            ("-", &["_"]),
            ("1password", &["1PASSWORD"]),
        ];
        for (secret, want) in cases {
            assert_eq!(NameMap::Env.to_file_names(&name(secret)), *want, "{secret}");
        }
    }

    #[test]
    fn env_map_back() {
        let cases = [
            ("DB_PASSWORD", Some("db-password")),
            ("PASSWORD", Some("password")),
            ("CONNECTIONSTRINGS__MAIN", Some("connectionstrings--main")),
            ("ConnectionStrings:Main", Some("ConnectionStrings--Main")),
            ("a:-b", Some("a---b")),
            ("__", Some("--")),
            (":", Some("--")),
            // Not produced by the map: another spelling of a produced name, or not a name at all.
            ("a-:b", None),
            ("db_password", None),
            ("Db_Password", None),
            ("DB-PASSWORD", None),
            ("a:_b", None),
            ("a.b", None),
            ("", None),
        ];
        for (file, want) in cases {
            assert_eq!(
                NameMap::Env
                    .to_secret(file)
                    .as_ref()
                    .map(SecretName::as_str),
                want,
                "{file:?}"
            );
        }
        // 127 characters of Key Vault name at most: 64 ':' would stand for 128.
        assert_eq!(NameMap::Env.to_secret(&":".repeat(64)), None);
        assert!(NameMap::Env.to_secret(&"A".repeat(128)).is_none());
    }

    fn secret_name() -> impl Strategy<Value = SecretName> {
        "[0-9a-zA-Z-]{1,127}".prop_map(|s| SecretName::parse(&s).unwrap())
    }

    proptest! {
        /// Every mapped name leads back to its secret, and is a file name.
        #[test]
        fn mapped_names_lead_back(secret in secret_name()) {
            for file in NameMap::Env.to_file_names(&secret) {
                prop_assert!(is_file_name(&file));
                prop_assert_ne!(&file, secret.as_str());
                let back = NameMap::Env.to_secret(&file);
                prop_assert_eq!(back.map(|s| s.key()), Some(secret.key()), "{}", file);
            }
        }

        /// Two secrets (different up to case) never share a name.
        #[test]
        fn mapped_names_are_distinct(a in secret_name(), b in secret_name()) {
            prop_assume!(a.key() != b.key());
            let of_b = NameMap::Env.to_file_names(&b);
            for file in NameMap::Env.to_file_names(&a) {
                prop_assert!(!of_b.contains(&file), "{} from {} and {}", file, a, b);
                // Nor does a mapped name stand for another secret's own name.
                prop_assert!(!file.eq_ignore_ascii_case(b.as_str()));
            }
        }

        /// `to_secret` accepts only names the map produces (or the secret's own name).
        #[test]
        fn only_produced_names_map_back(file in "[0-9a-zA-Z_:-]{1,130}") {
            if let Some(secret) = NameMap::Env.to_secret(&file) {
                prop_assert!(
                    file == secret.as_str() || NameMap::Env.to_file_names(&secret).contains(&file),
                    "{} -> {}", file, secret
                );
            }
        }
    }
}
