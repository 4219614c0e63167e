//! Stateless bearer tokens for the emulator: `kvemu.<expiry>.<identity>.<signature>`.
//!
//! The IMDS and Entra endpoints mint tokens and the Key Vault endpoint checks them, all through
//! one HMAC-SHA256 key drawn at random per emulator. Nothing is stored per token: a token is valid
//! while its signature matches and its expiry (unix seconds) is in the future, so tokens from
//! another emulator instance (or a tampered one) are refused like an expired Entra token would be.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// Prefix that marks an emulator token.
const PREFIX: &str = "kvemu";

/// Lifetime of every token minted: well past the SDK's 5-minute refresh margin.
pub const TOKEN_LIFETIME_SECS: i64 = 24 * 60 * 60;

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the form `kvemu.<expiry>.<identity>.<signature>`.
    Malformed,
    /// The signature does not match this emulator's key.
    BadSignature,
    /// The expiry has passed.
    Expired,
}

/// Mints and verifies tokens with one random HMAC key.
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: <redacted> }")
    }
}

impl TokenSigner {
    /// A signer with a fresh random key.
    pub fn random() -> Self {
        Self::with_key(&rand::random::<[u8; 32]>())
    }

    /// A signer with a given key (tests).
    pub fn with_key(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// A token for `identity` that expires at `expires_on` (unix seconds).
    pub fn mint(&self, identity: &str, expires_on: i64) -> String {
        let unsigned = format!(
            "{PREFIX}.{expires_on}.{}",
            URL_SAFE_NO_PAD.encode(identity.as_bytes())
        );
        let tag = hmac::sign(&self.key, unsigned.as_bytes());
        format!("{unsigned}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The identity inside `token` if it is well-formed, signed by this key and not expired at
    /// `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<String, TokenError> {
        let (unsigned, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = unsigned.split('.');
        let (Some(PREFIX), Some(expiry), Some(identity), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, unsigned.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let expiry: i64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if expiry <= now {
            return Err(TokenError::Expired);
        }
        let identity = URL_SAFE_NO_PAD
            .decode(identity)
            .map_err(|_| TokenError::Malformed)?;
        String::from_utf8(identity).map_err(|_| TokenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn round_trip_returns_identity() {
        let signer = TokenSigner::with_key(b"k");
        let token = signer.mint("imds:client_id=abc", NOW + 60);
        assert!(token.starts_with("kvemu."));
        assert_eq!(
            signer.verify(&token, NOW),
            Ok("imds:client_id=abc".to_owned())
        );
    }

    #[test]
    fn expired_token_is_refused() {
        let signer = TokenSigner::with_key(b"k");
        let token = signer.mint("x", NOW);
        assert_eq!(signer.verify(&token, NOW), Err(TokenError::Expired));
        assert_eq!(signer.verify(&token, NOW + 1), Err(TokenError::Expired));
        assert!(signer.verify(&token, NOW - 1).is_ok());
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let signer = TokenSigner::with_key(b"k");
        let token = signer.mint("alice", NOW + 60);
        let later = token.replacen(&(NOW + 60).to_string(), &(NOW + 6000).to_string(), 1);
        assert_eq!(signer.verify(&later, NOW), Err(TokenError::BadSignature));
        let other = signer.mint("mallory", NOW + 60);
        let (head, _) = token.rsplit_once('.').unwrap_or_default();
        let (_, other_sig) = other.rsplit_once('.').unwrap_or_default();
        assert_eq!(
            signer.verify(&format!("{head}.{other_sig}"), NOW),
            Err(TokenError::BadSignature)
        );
        let foreign = TokenSigner::with_key(b"other").mint("alice", NOW + 60);
        assert_eq!(signer.verify(&foreign, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let signer = TokenSigner::with_key(b"k");
        for bad in [
            "",
            "kvemu",
            "kvemu.1.2",
            "eyJhbGciOi.eyJhdWQiOi.sig",
            "kvemu.x.y.z.w",
            "kvemu.1.a.!!!",
        ] {
            assert_eq!(signer.verify(bad, NOW), Err(TokenError::Malformed), "{bad}");
        }
    }
}
