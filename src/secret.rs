//! The values kvfs moves around: validated secret names, redacted secret values, and the
//! properties Key Vault returns beside them.
//!
//! A `SecretValue` can only be read as bytes; its `Debug` prints a marker and its memory is
//! zeroed on drop, so a value cannot reach a log line or a panic message by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// A name Key Vault can hold: `^[0-9A-Za-z-]{1,127}$`. Anything else cannot exist in a vault,
/// so it is answered without a request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretName(String);

impl SecretName {
    pub const MAX_LEN: usize = 127;

    /// Returns `None` for any name Key Vault could not hold (empty, too long, other characters).
    pub fn parse(name: &str) -> Option<Self> {
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        valid.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Key Vault compares names case-insensitively: this is the key every map uses.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl TryFrom<String> for SecretName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Self::parse(&name).ok_or_else(|| format!("{name:?} is not a Key Vault secret name"))
    }
}

impl From<SecretName> for String {
    fn from(name: SecretName) -> String {
        name.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A secret's bytes. Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes the SDK's `String` by value so that its buffer is zeroed here, not left behind.
    pub fn from_string(value: String) -> Self {
        Self(Zeroizing::new(value.into_bytes()))
    }

    pub fn from_bytes(value: Vec<u8>) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted {} bytes>)", self.0.len())
    }
}

/// What Key Vault says about a secret version without its value (a list item or a GET's
/// metadata). Times are `None` when the service did not send them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretProperties {
    pub name: SecretName,
    /// 32 lowercase hex characters; `None` in list items, which name no version.
    pub version: Option<String>,
    pub enabled: bool,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub created: Option<SystemTime>,
    pub updated: Option<SystemTime>,
    pub expires: Option<SystemTime>,
    pub not_before: Option<SystemTime>,
}

impl SecretProperties {
    /// Properties with nothing but a name, enabled: a starting point for stores and tests.
    pub fn new(name: SecretName) -> Self {
        Self {
            name,
            version: None,
            enabled: true,
            content_type: None,
            tags: BTreeMap::new(),
            created: None,
            updated: None,
            expires: None,
            not_before: None,
        }
    }
}

/// One version of a secret: its properties and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub properties: SecretProperties,
    pub value: SecretValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_key_vault_can_hold() {
        let long = "a".repeat(127);
        for ok in ["a", "db-password", "A-1", "-", long.as_str()] {
            assert!(SecretName::parse(ok).is_some(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn names_key_vault_cannot_hold() {
        let too_long = "a".repeat(128);
        for bad in [
            "", ".", "..", ".git", "a_b", "foo.swp", "a b", "a/b", "é", "a\0b", &too_long,
        ] {
            assert!(
                SecretName::parse(bad).is_none(),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn key_is_case_insensitive() {
        let a = SecretName::parse("Db-Password").unwrap();
        let b = SecretName::parse("db-password").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.as_str(), "Db-Password");
    }

    /// Strings biased towards the edges: the valid alphabet, characters next to it in ASCII,
    /// NUL, `/`, `.`, multi-byte characters, lengths 0..300 (past both 127 and 255 bytes).
    fn hostile_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ch = prop_oneof![
            4 => prop::sample::select(
                b"abcxyzABCXYZ0189-".iter().map(|&b| char::from(b)).collect::<Vec<_>>()
            ),
            1 => prop::sample::select(vec!['\0', '/', '.', '_', ' ', '\n', '@', '[', '`', '{', ':', '\u{7f}']),
            1 => prop::sample::select(vec!['\u{e9}', '\u{130}', '\u{212a}', '\u{17f}', '\u{ff21}', '\u{1f600}']),
            1 => any::<char>(),
        ];
        prop::collection::vec(ch, 0..300).prop_map(|c| c.into_iter().collect())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 2048,
            failure_persistence: None,
            ..Default::default()
        })]

        /// `parse` never panics and accepts exactly `^[0-9A-Za-z-]{1,127}$`; `key()` is the
        /// lowercase spelling, equal for every case variant.
        #[test]
        fn parse_accepts_exactly_key_vault_names(name in hostile_name()) {
            let expected = (1..=127).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let parsed = SecretName::parse(&name);
            proptest::prop_assert_eq!(parsed.is_some(), expected, "{:?}", name);
            if let Some(parsed) = parsed {
                proptest::prop_assert_eq!(parsed.as_str(), name.as_str());
                let key = parsed.key();
                proptest::prop_assert!(!key.bytes().any(|b| b.is_ascii_uppercase()));
                proptest::prop_assert!(key.eq_ignore_ascii_case(&name));
                let upper = SecretName::parse(&name.to_ascii_uppercase());
                let lower = SecretName::parse(&name.to_ascii_lowercase());
                proptest::prop_assert_eq!(upper.map(|n| n.key()), Some(key.clone()));
                proptest::prop_assert_eq!(lower.map(|n| n.key()), Some(key));
            }
        }
    }

    #[test]
    fn value_debug_is_redacted() {
        let v = SecretValue::from_string("hunter2".to_owned());
        let printed = format!("{v:?}");
        assert!(!printed.contains("hunter2"));
        assert!(printed.contains("redacted 7 bytes"));
        let s = Secret {
            properties: SecretProperties::new(SecretName::parse("x").unwrap()),
            value: v,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
