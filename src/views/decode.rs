//! Values stored as text that stand for bytes: `--decode 'GLOB=base64|hex'` shows the matching
//! secrets decoded (a TLS key or a keytab kept in Key Vault as base64).
//!
//! Decoding is lenient about layout, strict about content. ASCII whitespace anywhere is ignored,
//! so a value pasted with a trailing newline, or wrapped at 64 or 76 columns as `base64` and
//! `openssl base64` print it (or `xxd -p` for hex), decodes. Base64 takes the standard
//! alphabet (`+/`) or the URL-safe one (`-_`), not both in one value, with or without `=`
//! padding; the last symbol must not carry stray bits (a sign of a truncated value). Hex takes
//! either case.
//!
//! Errors tell why and where (a byte offset into the stored value, whitespace included), never
//! which byte: a `DecodeError` carries no part of the value.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use zeroize::Zeroizing;

use crate::access::parse_glob;

/// How a value is encoded.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// RFC 4648 base64, standard or URL-safe alphabet, padding optional.
    Base64,
    /// Two hex digits per byte, either case.
    Hex,
}

/// Why a value does not decode. Offsets count bytes of the stored value, whitespace included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not base64: invalid byte at offset {offset}")]
    Base64Byte { offset: usize },
    #[error("not base64: the last symbol, at offset {offset}, has stray bits (truncated?)")]
    Base64LastSymbol { offset: usize },
    #[error("not base64: the length is not that of a base64 text (truncated?)")]
    Base64Length,
    #[error("not base64: misplaced '=' padding")]
    Base64Padding,
    #[error("not hex: invalid character at offset {offset}")]
    HexCharacter { offset: usize },
    #[error("not hex: an odd number of digits")]
    HexOddLength,
}

/// Decodes `value` (see the module doc for what is accepted).
pub fn decode(decoding: Decoding, value: &[u8]) -> Result<Zeroizing<Vec<u8>>, DecodeError> {
    let text = without_whitespace(value);
    let at = |offset| original_offset(value, offset);
    match decoding {
        Decoding::Base64 => {
            // One alphabet per value: the URL-safe one as soon as a '-' or '_' appears, so a
            // value mixing both fails at its first '+' or '/'.
            let url_safe = text.iter().any(|&b| b == b'-' || b == b'_');
            let engine = GeneralPurpose::new(
                if url_safe {
                    &alphabet::URL_SAFE
                } else {
                    &alphabet::STANDARD
                },
                GeneralPurposeConfig::new()
                    .with_decode_padding_mode(DecodePaddingMode::Indifferent),
            );
            let mut out = Zeroizing::new(vec![0; base64::decoded_len_estimate(text.len())]);
            let len = engine
                .decode_slice(&text[..], &mut out[..])
                .map_err(|e| match e {
                    base64::DecodeSliceError::DecodeError(e) => match e {
                        base64::DecodeError::InvalidByte(offset, _) => {
                            DecodeError::Base64Byte { offset: at(offset) }
                        }
                        base64::DecodeError::InvalidLength(_) => DecodeError::Base64Length,
                        base64::DecodeError::InvalidLastSymbol(offset, _) => {
                            DecodeError::Base64LastSymbol { offset: at(offset) }
                        }
                        base64::DecodeError::InvalidPadding => DecodeError::Base64Padding,
                    },
                    // decoded_len_estimate is documented never to fall short: unreachable, and no
                    // other answer would be truer.
                    base64::DecodeSliceError::OutputSliceTooSmall => DecodeError::Base64Length,
                })?;
            out.truncate(len);
            Ok(out)
        }
        Decoding::Hex => {
            if !text.len().is_multiple_of(2) {
                return Err(DecodeError::HexOddLength);
            }
            let mut out = Zeroizing::new(vec![0; text.len() / 2]);
            hex::decode_to_slice(&text[..], &mut out[..]).map_err(|e| match e {
                hex::FromHexError::InvalidHexCharacter { index, .. } => {
                    DecodeError::HexCharacter { offset: at(index) }
                }
                // The output is sized from the input: only an odd length can mismatch.
                hex::FromHexError::OddLength | hex::FromHexError::InvalidStringLength => {
                    DecodeError::HexOddLength
                }
            })?;
            Ok(out)
        }
    }
}

/// `value` without its ASCII whitespace, in a buffer zeroed on drop.
fn without_whitespace(value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut text = Zeroizing::new(Vec::with_capacity(value.len()));
    text.extend(value.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    text
}

/// The offset in `value` of the byte at `offset` in `without_whitespace(value)`.
fn original_offset(value: &[u8], offset: usize) -> usize {
    value
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.is_ascii_whitespace())
        .nth(offset)
        .map_or(value.len(), |(i, _)| i)
}

/// One `--decode GLOB=base64|hex` rule: secrets whose names match GLOB are shown decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeRule {
    pub glob: String,
    pub decoding: Decoding,
}

const DECODE_FORM: &str = "expected GLOB=base64|hex, e.g. 'tls-*=base64'";

/// Parses `GLOB=base64|hex` (the glob as `--include` takes it). Errors name the flag and the
/// part at fault.
pub fn parse_decode_rule(s: &str) -> Result<DecodeRule, String> {
    let (glob, decoding) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("--decode {s:?}: {DECODE_FORM}"))?;
    let glob = parse_glob(glob).map_err(|e| format!("--decode {s:?}: {e}; {DECODE_FORM}"))?;
    let decoding = <Decoding as clap::ValueEnum>::from_str(decoding, false)
        .map_err(|_| format!("--decode {s:?}: unknown decoding {decoding:?}; {DECODE_FORM}"))?;
    Ok(DecodeRule { glob, decoding })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(d: Decoding, value: &str) -> Vec<u8> {
        decode(d, value.as_bytes()).unwrap().to_vec()
    }

    fn err(d: Decoding, value: &str) -> DecodeError {
        decode(d, value.as_bytes()).unwrap_err()
    }

    #[test]
    fn base64_forms() {
        let bytes = b"\xfb\xff\xfe hi".to_vec();
        for value in [
            "+//+IGhp",
            "-__-IGhp",
            "+//+IGhp\n",
            "  +//+IGhp \r\n",
            "+//+\nIGhp\n",
        ] {
            assert_eq!(ok(Decoding::Base64, value), bytes, "{value:?}");
        }
        assert_eq!(ok(Decoding::Base64, "aGk="), b"hi");
        assert_eq!(ok(Decoding::Base64, "aGk"), b"hi");
        assert_eq!(ok(Decoding::Base64, ""), b"");
        assert_eq!(ok(Decoding::Base64, " \n"), b"");
    }

    #[test]
    fn base64_errors_say_where_not_what() {
        assert_eq!(
            err(Decoding::Base64, "aGVsbG8*"),
            DecodeError::Base64Byte { offset: 7 }
        );
        // Offsets count the whitespace of the stored value.
        assert_eq!(
            err(Decoding::Base64, "\n aGVs\nbG8*"),
            DecodeError::Base64Byte { offset: 10 }
        );
        // Both alphabets in one value: the first symbol of the other alphabet is at fault.
        assert_eq!(
            err(Decoding::Base64, "ab+_"),
            DecodeError::Base64Byte { offset: 2 }
        );
        assert_eq!(err(Decoding::Base64, "aGVsb"), DecodeError::Base64Length);
        assert_eq!(
            err(Decoding::Base64, "aGF="),
            DecodeError::Base64LastSymbol { offset: 2 }
        );
        assert_eq!(
            err(Decoding::Base64, "aG=k"),
            DecodeError::Base64Byte { offset: 2 }
        );
        assert_eq!(
            err(Decoding::Base64, "aGk=="),
            DecodeError::Base64Byte { offset: 3 }
        );
        let shown = err(Decoding::Base64, "secret*").to_string();
        assert_eq!(shown, "not base64: invalid byte at offset 6");
    }

    #[test]
    fn hex_forms() {
        for value in ["deadBEEF", "DEADBEEF\n", " de ad\nbe ef "] {
            assert_eq!(ok(Decoding::Hex, value), b"\xde\xad\xbe\xef", "{value:?}");
        }
        assert_eq!(ok(Decoding::Hex, ""), b"");
        assert_eq!(err(Decoding::Hex, "abc"), DecodeError::HexOddLength);
        assert_eq!(
            err(Decoding::Hex, " 0g"),
            DecodeError::HexCharacter { offset: 2 }
        );
        assert_eq!(
            err(Decoding::Hex, "zz").to_string(),
            "not hex: invalid character at offset 0"
        );
    }

    #[test]
    fn decode_rules() {
        assert_eq!(
            parse_decode_rule("tls-*=base64").unwrap(),
            DecodeRule {
                glob: "tls-*".into(),
                decoding: Decoding::Base64
            }
        );
        assert_eq!(
            parse_decode_rule("keytab=hex").unwrap().decoding,
            Decoding::Hex
        );
    }

    #[test]
    fn decode_rule_rejections_name_the_flag_and_the_part() {
        let cases = [
            ("tls-*", "expected GLOB=base64|hex"),
            ("tls-*=b64", "unknown decoding \"b64\""),
            ("tls-*=BASE64", "unknown decoding \"BASE64\""),
            ("tls-*=", "unknown decoding \"\""),
            ("=base64", "empty glob"),
            ("a[=hex", "not a glob"),
        ];
        for (arg, want) in cases {
            let e = parse_decode_rule(arg).unwrap_err();
            assert!(
                e.starts_with(&format!("--decode {arg:?}: ")),
                "{arg:?}: {e}"
            );
            assert!(e.contains(want), "{arg:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300), wrap in 1usize..80) {
            use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
            let wrapped = |s: String| -> String {
                s.as_bytes().chunks(wrap).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n") + "\n"
            };
            for text in [STANDARD.encode(&bytes), URL_SAFE_NO_PAD.encode(&bytes)] {
                prop_assert_eq!(&decode(Decoding::Base64, wrapped(text).as_bytes()).unwrap()[..], &bytes[..]);
            }
            let text = hex::encode_upper(&bytes);
            prop_assert_eq!(&decode(Decoding::Hex, wrapped(text).as_bytes()).unwrap()[..], &bytes[..]);
        }

        /// Whatever the input, an error is one of the fixed messages plus at most an offset.
        #[test]
        fn errors_hold_no_input(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            for d in [Decoding::Base64, Decoding::Hex] {
                if let Err(e) = decode(d, &value) {
                    let shown = e.to_string();
                    // Numbers made '#'.
                    let mut kept = String::new();
                    for c in shown.chars() {
                        if !c.is_ascii_digit() {
                            kept.push(c);
                        } else if !kept.ends_with('#') {
                            kept.push('#');
                        }
                    }
                    prop_assert!(
                        [
                            "not base#: invalid byte at offset #",
                            "not base#: the last symbol, at offset #, has stray bits (truncated?)",
                            "not base#: the length is not that of a base# text (truncated?)",
                            "not base#: misplaced '=' padding",
                            "not hex: invalid character at offset #",
                            "not hex: an odd number of digits",
                        ].contains(&kept.as_str()),
                        "{}", shown
                    );
                }
            }
        }
    }
}
