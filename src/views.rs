//! Views: other shapes of a secret than its raw value, as pure functions from names and values
//! to names and bytes. `fs` decides where a view appears; nothing here touches the store, the
//! kernel or a log.
//!
//! `cert` gives a certificate-backed secret its PEM, certificate, key and PFX files; `decode`
//! reads a value stored as base64 or hex (`--decode`); `json` reads a JSON object key by key;
//! `names` gives a secret the names applications expect (`--alias`, `--name-map env`);
//! `envfile` renders `NAME=value` lines that bash and dotenv parsers read back.
//!
//! Values are secrets here too: every output holding value bytes is `Zeroizing`, and no error
//! carries a value or a part of one (offsets and line numbers at most).

pub mod cert;
pub mod decode;
pub mod envfile;
pub mod json;
pub mod names;
