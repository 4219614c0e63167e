//! The emulator's persistent key material in `--state-dir`: the CA (`ca.pem`, `ca.key`) and the
//! token signing key (`token.key`).
//!
//! An emulator restarted on the same directory keeps its identity: clients holding the old
//! `ca.pem` still trust it and tokens issued before the restart still verify. A directory
//! without them (or with only part of the CA) gets fresh material. Private files are written
//! 0600, through a temporary file renamed into place, so a crash never leaves half a key; a
//! present but unreadable or malformed file is an error rather than silently replaced.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::EmulatorError;
use super::tls::{self, CaMaterial};
use super::token::KEY_LEN;

/// Public CA certificate, for clients.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The HMAC key tokens are signed with (0600).
pub const TOKEN_KEY_FILE: &str = "token.key";

/// Key material loaded from, or newly written to, a state directory.
pub struct StateMaterial {
    pub ca: CaMaterial,
    pub token_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for StateMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMaterial { <redacted> }")
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EmulatorError + use<> {
    let path = path.to_owned();
    move |source| EmulatorError::Io { path, source }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> EmulatorError {
    EmulatorError::State {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The file's bytes, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, EmulatorError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Writes `bytes` to `dir/name` with `mode` through a temporary file renamed into place.
fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), EmulatorError> {
    let path = dir.join(name);
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io_error(dir))?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_error(file.path()))?;
    file.write_all(bytes).map_err(io_error(file.path()))?;
    file.as_file().sync_all().map_err(io_error(file.path()))?;
    file.persist(&path).map_err(|e| io_error(&path)(e.error))?;
    Ok(())
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, EmulatorError> {
    String::from_utf8(bytes).map_err(|_| corrupt(path, "not UTF-8 PEM"))
}

/// Loads the CA and token key from `dir` (created if missing), creating what is absent.
pub fn load_or_create(dir: &Path) -> Result<StateMaterial, EmulatorError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let cert_path: PathBuf = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let ca = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert), Some(key)) => CaMaterial {
            cert_pem: utf8(&cert_path, cert)?,
            key_pem: utf8(&key_path, key)?,
        },
        _ => {
            let ca = tls::generate_ca().map_err(EmulatorError::Tls)?;
            write_file(dir, CA_KEY_FILE, ca.key_pem.as_bytes(), 0o600)?;
            write_file(dir, CA_CERT_FILE, ca.cert_pem.as_bytes(), 0o644)?;
            tracing::debug!(dir = %dir.display(), "emulator: new CA");
            ca
        }
    };
    let token_path = dir.join(TOKEN_KEY_FILE);
    let token_key = match read_optional(&token_path)? {
        Some(bytes) => <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map_err(|_| corrupt(&token_path, format!("expected {KEY_LEN} bytes")))?,
        None => {
            let key = rand::random::<[u8; KEY_LEN]>();
            write_file(dir, TOKEN_KEY_FILE, &key, 0o600)?;
            key
        }
    };
    Ok(StateMaterial { ca, token_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn creates_then_reloads_the_same_material() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("nested");
        let first = load_or_create(&state).expect("create");
        assert_eq!(mode(&state.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&state.join(TOKEN_KEY_FILE)), 0o600);
        assert_eq!(mode(&state.join(CA_CERT_FILE)), 0o644);
        let again = load_or_create(&state).expect("reload");
        assert_eq!(again.ca.cert_pem, first.ca.cert_pem);
        assert_eq!(again.ca.key_pem, first.ca.key_pem);
        assert_eq!(again.token_key, first.token_key);
        let other = load_or_create(&dir.path().join("other")).expect("other");
        assert_ne!(other.ca.cert_pem, first.ca.cert_pem);
        assert_ne!(other.token_key, first.token_key);
    }

    #[test]
    fn half_a_ca_is_replaced_and_a_bad_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("create");
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).expect("rm");
        let second = load_or_create(dir.path()).expect("recreate");
        assert_ne!(second.ca.cert_pem, first.ca.cert_pem);
        assert_eq!(second.token_key, first.token_key);
        std::fs::write(dir.path().join(TOKEN_KEY_FILE), b"short").expect("write");
        assert!(matches!(
            load_or_create(dir.path()),
            Err(EmulatorError::State { .. })
        ));
    }
}
