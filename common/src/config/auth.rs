//! Token verification settings (see `crate::auth`).

use serde::{Deserialize, Serialize};

/// How bearer tokens are verified beyond their signature. See README "Security".
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `hs256` (shared `jwt_secret`), or `rs256` / `eddsa` with `public_key_file`: services
    /// then hold a verification-only key and cannot mint tokens.
    pub algorithm: JwtAlgorithm,
    /// PEM file of the identity provider's public key (RSA or Ed25519).
    pub public_key_file: Option<String>,
    /// Or a JWKS file (`{"keys": [...]}`) of the provider's public keys, picked by the token's
    /// `kid`; a `kid` it does not know re-reads the file (at most every 30 s), so a rotated key
    /// is taken without a restart.
    pub jwks_file: Option<String>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`.
    pub leeway_secs: u64,
    /// Tokens whose `exp` lies further ahead than this are refused: a leaked token cannot be
    /// good for a year.
    pub max_lifetime_secs: u64,
    /// A socket is sent `tokenExpiring` this long before its token's `exp`, so the client can
    /// send `refreshToken`; at `exp` it is disconnected.
    pub refresh_notice_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 5,
            max_lifetime_secs: 24 * 3600,
            refresh_notice_secs: 60,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Eddsa,
}
