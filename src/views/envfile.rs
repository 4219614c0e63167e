//! An env file: one `NAME=value` line per secret, for `set -a; source FILE` in bash and for the
//! dotenv parsers (python-dotenv, the npm package `dotenv`).
//!
//! NAME is the secret's environment-style name (`db-password` -> `DB_PASSWORD`, see `names`).
//! Lines are sorted by NAME, so the same secrets always render the same bytes.
//!
//! Skipped, and returned in `EnvFile::skipped` (names only): a NAME that is no variable name
//! (starts with a digit), one of bash's read-only variables (`UID`, `EUID`, `PPID`, `BASHOPTS`,
//! `SHELLOPTS`, `BASH_VERSINFO`: assigning one ends a non-interactive bash, so the whole file
//! would fail), a second secret with the same NAME (names that differ only in case), a value
//! holding a NUL byte (no environment variable can), a value that is not UTF-8 (python-dotenv
//! would refuse the whole file, node would replace the bytes).
//!
//! # Quoting
//!
//! Bash reads every value back exactly. Of the three readers, only bash has a quoting for
//! every value, so the quoting is chosen per value, for bash first, then for as many dotenv
//! readers as possible:
//!
//! 1. No `'` in the value, and it does not end in `\`: `'value'`. Bash, node and python read
//!    single quotes literally, across lines, with `"`, `` ` ``, `$`, `#` and `\` inside.
//! 2. A `'`, and no `\` at the end: `"value"` with `\`, `$`, `"` and `` ` `` escaped by `\`.
//!    Bash and python-dotenv undo these escapes; node undoes none.
//! 3. Ending in `\`: bash's `$'value'`, all on one line (`\\`, `\'`, and `\xHH` for every byte
//!    outside printable ASCII). In `'…\'` or `"…\\"`, node and python would take the closing
//!    quote for an escaped one and read on into the next lines, so the value is written where
//!    no reader can run past its line; dotenv parsers read it as the unquoted text `$'…'`.
//!
//! Every line is read as one binding by all three readers: no value can end its line early or
//! run into the next one (checked against the real parsers by this module's tests).
//!
//! # What dotenv parsers read differently
//!
//! Checked against python-dotenv 1.2.4 and dotenv 18.0.10 (its default and `fast` parsers);
//! `tests.rs` holds this table as code and checks it value by value against both. The first
//! row that applies decides; a value read differently still ends on its own line.
//!
//! | the value                              | python-dotenv                      | node dotenv |
//! |----------------------------------------|------------------------------------|-------------|
//! | ends in `\`                            | differs                            | differs     |
//! | holds a CR                             | differs (reads LF)                 | differs (reads LF) |
//! | no `'`, holds `\\`                      | differs (reads `\`)                | exact       |
//! | holds `'`, and `$` or `` ` ``              | differs (keeps the `\`)            | differs     |
//! | holds `'`, and `\` or `"`              | exact                              | differs (keeps the `\`) |
//! | holds `${NAME}` or `${NAME:-default}`  | differs unless `interpolate=False` | exact       |
//!
//! Every other value reads back exactly in all three. Bash-specific: `$'…'` is not POSIX sh, so
//! a file with a value ending in `\` needs bash (or zsh, ksh) to `source` it.
//!
//! Whoever may write a secret sets a variable of that name in whatever sources the file:
//! `PATH`, `LD_PRELOAD`, `BASH_ENV`, `NODE_OPTIONS` included. `--include` and `--exclude`
//! decide which secrets a mount shows, and so which the file holds.

use std::fmt::{self, Write};

use zeroize::Zeroizing;

use super::names::{env_name, is_env_var_name};
use crate::secret::SecretName;

/// Variables bash makes read-only at startup: an assignment to one ends a non-interactive bash.
const BASH_READONLY: [&str; 6] = [
    "BASHOPTS",
    "BASH_VERSINFO",
    "EUID",
    "PPID",
    "SHELLOPTS",
    "UID",
];

/// A rendered env file and the secrets left out of it.
pub struct EnvFile {
    pub text: Zeroizing<String>,
    pub skipped: Vec<Skipped>,
}

impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvFile")
            .field(
                "text",
                &format_args!("<redacted {} bytes>", self.text.len()),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// A secret left out of an env file, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub name: SecretName,
    pub reason: SkipReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("its environment-style name is no variable name (it starts with a digit)")]
    NotAVariableName,
    #[error("its environment-style name is read-only in bash")]
    BashReadOnly,
    #[error("another secret has the same environment-style name")]
    SameName,
    #[error("its value holds a NUL byte, which no environment variable can")]
    Nul,
    #[error("its value is not UTF-8 text")]
    NotUtf8,
}

/// Renders `NAME=value` lines for `secrets` (see the module doc). Of several secrets with one
/// NAME, the first given is kept.
pub fn render<'a>(secrets: impl IntoIterator<Item = (&'a SecretName, &'a [u8])>) -> EnvFile {
    let mut skipped = Vec::new();
    let mut lines: Vec<(String, &SecretName, &str)> = Vec::new();
    for (name, value) in secrets {
        let var = env_name(name);
        let reason = if !is_env_var_name(&var) {
            Some(SkipReason::NotAVariableName)
        } else if BASH_READONLY.contains(&var.as_str()) {
            Some(SkipReason::BashReadOnly)
        } else if value.contains(&0) {
            Some(SkipReason::Nul)
        } else {
            None
        };
        match (reason, std::str::from_utf8(value)) {
            (Some(reason), _) => skipped.push(Skipped {
                name: name.clone(),
                reason,
            }),
            (None, Err(_)) => skipped.push(Skipped {
                name: name.clone(),
                reason: SkipReason::NotUtf8,
            }),
            (None, Ok(value)) => lines.push((var, name, value)),
        }
    }
    // Stable: of equal names, the first given comes first and stays.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    lines.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            skipped.push(Skipped {
                name: later.1.clone(),
                reason: SkipReason::SameName,
            });
        }
        same
    });
    // Room for the longest quoting of every value up front: the text never reallocates, so no
    // copy of a value is left in a freed buffer.
    let capacity = lines
        .iter()
        .map(|(var, _, value)| var.len() + 2 + max_quoted_len(value))
        .sum();
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    for (var, _, value) in &lines {
        text.push_str(var);
        text.push('=');
        push_quoted(&mut text, value);
        text.push('\n');
    }
    debug_assert!(text.len() <= capacity);
    EnvFile { text, skipped }
}

/// The quoting a value gets (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quoting {
    Single,
    Double,
    AnsiC,
}

fn quoting(value: &str) -> Quoting {
    if value.ends_with('\\') {
        Quoting::AnsiC
    } else if value.contains('\'') {
        Quoting::Double
    } else {
        Quoting::Single
    }
}

/// An upper bound of what `push_quoted` appends: `$'` `'` and four bytes (`\xHH`) per byte.
fn max_quoted_len(value: &str) -> usize {
    3 + 4 * value.len()
}

fn push_quoted(out: &mut String, value: &str) {
    match quoting(value) {
        Quoting::Single => {
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        }
        Quoting::Double => {
            out.push('"');
            for c in value.chars() {
                if matches!(c, '\\' | '$' | '"' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Quoting::AnsiC => {
            out.push_str("$'");
            for &b in value.as_bytes() {
                match b {
                    b'\\' | b'\'' => {
                        out.push('\\');
                        out.push(char::from(b));
                    }
                    0x20..=0x7e => out.push(char::from(b)),
                    // Writing to a String cannot fail.
                    _ => _ = write!(out, "\\x{b:02x}"),
                }
            }
            out.push('\'');
        }
    }
}

#[cfg(test)]
mod tests;
