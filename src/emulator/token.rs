//! Stateless bearer tokens for the emulator: HS256 JWTs carrying audience, tenant and expiry.
//!
//! The IMDS and Entra endpoints mint tokens and the Key Vault endpoint checks them, all through
//! one HMAC-SHA256 key (random per state directory, kept in it across restarts). Nothing is
//! stored per token: a token is valid while its signature matches and its expiry (unix seconds)
//! is in the future, so tokens signed with another key (or tampered ones) are refused like an
//! expired Entra token would be. Whether the audience and tenant suit Key Vault is the caller's
//! check ([`Claims`] carries both), so a token for another resource verifies but is refused
//! with Key Vault's own error.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Lifetime of every token minted: well past the SDK's 5-minute refresh margin.
pub const TOKEN_LIFETIME_SECS: i64 = 24 * 60 * 60;

/// Length of the signing key in bytes.
pub const KEY_LEN: usize = 32;

/// `{"alg":"HS256","typ":"JWT"}`, the only header minted and accepted.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT of this emulator's shape.
    Malformed,
    /// The signature does not match this emulator's key.
    BadSignature,
    /// The expiry has passed.
    Expired,
}

/// What a token says: the claims Key Vault looks at, as Entra names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The resource the token was issued for, e.g. `https://vault.azure.net`.
    pub aud: String,
    /// The tenant that issued it.
    pub tid: String,
    /// `https://sts.windows.net/{tid}/`.
    pub iss: String,
    /// Who it was issued to (`imds:...`, `entra:...`, or a test's name).
    pub sub: String,
    pub iat: i64,
    pub nbf: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
}

impl Claims {
    /// Claims for `sub`, audience `aud`, tenant `tid`, valid from `now` for the token lifetime.
    pub fn new(sub: &str, aud: &str, tid: &str, now: i64) -> Self {
        Self {
            aud: aud.to_owned(),
            tid: tid.to_owned(),
            iss: format!("https://sts.windows.net/{tid}/"),
            sub: sub.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(TOKEN_LIFETIME_SECS),
        }
    }
}

/// Mints and verifies tokens with one HMAC key.
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: <redacted> }")
    }
}

impl TokenSigner {
    /// A signer with a given key.
    pub fn with_key(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// A compact JWS (`header.claims.signature`) over `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let unsigned = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let tag = hmac::sign(&self.key, unsigned.as_bytes());
        format!("{unsigned}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of `token` if it is well-formed, signed by this key and not expired at `now`
    /// (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let (unsigned, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = unsigned.split_once('.').ok_or(TokenError::Malformed)?;
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        if decode(header)? != HEADER.as_bytes() {
            return Err(TokenError::Malformed);
        }
        hmac::verify(&self.key, unsigned.as_bytes(), &decode(signature)?)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn claims(sub: &str, exp: i64) -> Claims {
        Claims {
            exp,
            ..Claims::new(sub, "https://vault.azure.net", "t", NOW)
        }
    }

    #[test]
    fn round_trip_returns_claims() {
        let signer = TokenSigner::with_key(b"k");
        let want = claims("imds:client_id=abc", NOW + 60);
        let token = signer.mint(&want);
        assert!(token.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
        assert_eq!(signer.verify(&token, NOW), Ok(want));
    }

    #[test]
    fn expired_token_is_refused() {
        let signer = TokenSigner::with_key(b"k");
        let token = signer.mint(&claims("x", NOW));
        assert_eq!(signer.verify(&token, NOW), Err(TokenError::Expired));
        assert_eq!(signer.verify(&token, NOW + 1), Err(TokenError::Expired));
        assert!(signer.verify(&token, NOW - 1).is_ok());
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let signer = TokenSigner::with_key(b"k");
        let token = signer.mint(&claims("alice", NOW + 60));
        let other = signer.mint(&claims("mallory", NOW + 6000));
        let (head, _) = token.rsplit_once('.').unwrap_or_default();
        let (other_head, other_sig) = other.rsplit_once('.').unwrap_or_default();
        assert_eq!(
            signer.verify(&format!("{head}.{other_sig}"), NOW),
            Err(TokenError::BadSignature)
        );
        let (_, sig) = token.rsplit_once('.').unwrap_or_default();
        assert_eq!(
            signer.verify(&format!("{other_head}.{sig}"), NOW),
            Err(TokenError::BadSignature)
        );
        let foreign = TokenSigner::with_key(b"other").mint(&claims("alice", NOW + 60));
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
            "a.b.!!!",
        ] {
            assert_eq!(signer.verify(bad, NOW), Err(TokenError::Malformed), "{bad}");
        }
    }
}
