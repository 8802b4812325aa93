//! Bearer tokens: HS256 JWTs whose `sub` is the user id and whose `exp` is required.

use chrono::{Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// The claims Allo reads. `roles` is optional (`moderator` opens the moderation queue).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Verifies and mints tokens with one secret. Cheap to clone.
#[derive(Clone)]
pub struct TokenKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn from_secret(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Small leeway for clock skew between the issuer and us; an expired token is refused.
        validation.leeway = 5;
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks signature, algorithm, `exp` and `sub`.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let user = UserId::parse(&data.claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(Caller {
            user,
            roles: data.claims.roles,
        })
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim())
    }

    /// Mints a token (dev stacks and tests; production tokens come from the identity provider).
    pub fn mint(&self, user: &UserId, roles: &[String], ttl: Duration) -> String {
        let claims = Claims {
            sub: user.as_str().to_string(),
            exp: (Utc::now() + ttl).timestamp(),
            roles: roles.to_vec(),
        };
        // HS256 with an in-memory key cannot fail to sign.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::from_secret("unit-test-secret-0123456789")
    }

    #[test]
    fn minted_tokens_verify() {
        let alice = UserId::parse("alice").unwrap();
        let token = keys().mint(&alice, &["moderator".into()], Duration::minutes(5));
        let caller = keys().verify(&token).unwrap();
        assert_eq!(caller.user, alice);
        assert!(caller.has_role("moderator"));
    }

    #[test]
    fn expired_forged_and_missing_tokens_are_refused() {
        let alice = UserId::parse("alice").unwrap();
        let expired = keys().mint(&alice, &[], Duration::minutes(-5));
        assert_eq!(keys().verify(&expired), Err(AuthError::Expired));
        let forged = TokenKeys::from_secret("another-secret-0123456789").mint(
            &alice,
            &[],
            Duration::minutes(5),
        );
        assert_eq!(keys().verify(&forged), Err(AuthError::Invalid));
        assert_eq!(keys().verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            keys().verify_header(Some("Basic abc")),
            Err(AuthError::Missing)
        );
    }
}
