//! Bearer tokens: JWTs whose `sub` is the user id and whose `exp` is required. HS256 with a
//! shared secret (dev, or small deployments), or RS256/EdDSA with a verification-only public
//! key, so that a service holding it cannot mint tokens. `iss`/`aud` are checked when
//! configured, and a token good for longer than `auth.max_lifetime_secs` is refused.

use chrono::{Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{JwtAlgorithm, Settings};
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
    /// The token's `exp` (Unix seconds): a socket is disconnected then unless it refreshed.
    pub expires_at: i64,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the token this caller showed has run out.
    pub fn expired(&self) -> bool {
        self.expires_at <= Utc::now().timestamp()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token lifetime exceeds the maximum")]
    TooLong,
    #[error("invalid token")]
    Invalid,
    #[error("this service holds a verification-only key and cannot mint tokens")]
    CannotMint,
    #[error("token key: {0}")]
    Key(String),
}

mod jwks;

/// Where the key that checks a signature comes from.
#[derive(Clone)]
enum Verifier {
    Key(DecodingKey),
    /// A JWKS file's keys, by the token's `kid`.
    Set(std::sync::Arc<jwks::KeySet>),
}

/// Verifies (and, with a shared secret, mints) tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenKeys {
    verifier: Verifier,
    /// Only with a shared secret: a public key cannot sign.
    encoding: Option<EncodingKey>,
    validation: Validation,
    max_lifetime_secs: i64,
}

impl TokenKeys {
    /// HS256 with `secret`, default checks (tests and dev tools).
    pub fn from_secret(secret: &str) -> Self {
        Self {
            verifier: Verifier::Key(DecodingKey::from_secret(secret.as_bytes())),
            encoding: Some(EncodingKey::from_secret(secret.as_bytes())),
            validation: validation(Algorithm::HS256, 5),
            max_lifetime_secs: 24 * 3600,
        }
    }

    /// What the settings configure: the algorithm and key, `iss`, `aud`, leeway, lifetime.
    /// Refuses settings that would accept forged tokens (`Settings::validate_auth`).
    pub fn from_settings(settings: &Settings) -> Result<Self, AuthError> {
        settings
            .validate_auth()
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let auth = &settings.auth;
        let bad_key = |e: jsonwebtoken::errors::Error| AuthError::Key(e.to_string());
        // rs256 / eddsa: a PEM public key, or a JWKS file (validate_auth wants exactly one).
        let public = |algorithm: Algorithm,
                      from_pem: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>|
         -> Result<Verifier, AuthError> {
            if let Some(path) = auth.jwks_file.as_deref() {
                return Ok(Verifier::Set(std::sync::Arc::new(jwks::KeySet::load(
                    path, algorithm,
                )?)));
            }
            let path = auth.public_key_file.as_deref().unwrap_or_default();
            let pem = std::fs::read(path).map_err(|e| AuthError::Key(format!("{path}: {e}")))?;
            Ok(Verifier::Key(from_pem(&pem).map_err(bad_key)?))
        };
        let (algorithm, verifier, encoding) = match auth.algorithm {
            JwtAlgorithm::Hs256 => (
                Algorithm::HS256,
                Verifier::Key(DecodingKey::from_secret(settings.jwt_secret.as_bytes())),
                Some(EncodingKey::from_secret(settings.jwt_secret.as_bytes())),
            ),
            JwtAlgorithm::Rs256 => (
                Algorithm::RS256,
                public(Algorithm::RS256, DecodingKey::from_rsa_pem)?,
                None,
            ),
            JwtAlgorithm::Eddsa => (
                Algorithm::EdDSA,
                public(Algorithm::EdDSA, DecodingKey::from_ed_pem)?,
                None,
            ),
        };
        let mut validation = validation(algorithm, auth.leeway_secs);
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &auth.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &auth.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            verifier,
            encoding,
            validation,
            max_lifetime_secs: i64::try_from(auth.max_lifetime_secs).unwrap_or(i64::MAX),
        })
    }

    /// Checks signature, algorithm, `exp`, `sub`, and `iss`/`aud`/lifetime where configured.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let set_key;
        let decoding = match &self.verifier {
            Verifier::Key(key) => key,
            Verifier::Set(set) => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
                set_key = set
                    .key_for(header.kid.as_deref())
                    .ok_or(AuthError::Invalid)?;
                &set_key
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, decoding, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(0);
        if data.claims.exp - Utc::now().timestamp() > self.max_lifetime_secs + leeway {
            return Err(AuthError::TooLong);
        }
        let user = UserId::parse(&data.claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(Caller {
            user,
            roles: data.claims.roles,
            expires_at: data.claims.exp,
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
    pub fn mint(
        &self,
        user: &UserId,
        roles: &[String],
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let encoding = self.encoding.as_ref().ok_or(AuthError::CannotMint)?;
        let claims = Claims {
            sub: user.as_str().to_string(),
            exp: (Utc::now() + ttl).timestamp(),
            roles: roles.to_vec(),
        };
        jsonwebtoken::encode(
            &Header::new(self.validation.algorithms[0]),
            &claims,
            encoding,
        )
        .map_err(|e| AuthError::Key(e.to_string()))
    }
}

fn validation(algorithm: Algorithm, leeway_secs: u64) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = leeway_secs;
    validation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::from_secret("unit-test-secret-0123456789")
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn minted_tokens_verify() {
        let token = keys()
            .mint(&alice(), &["moderator".into()], Duration::minutes(5))
            .unwrap();
        let caller = keys().verify(&token).unwrap();
        assert_eq!(caller.user, alice());
        assert!(caller.has_role("moderator"));
        assert!(!caller.expired());
    }

    #[test]
    fn expired_forged_and_missing_tokens_are_refused() {
        let expired = keys().mint(&alice(), &[], Duration::minutes(-5)).unwrap();
        assert_eq!(keys().verify(&expired), Err(AuthError::Expired));
        let forged = TokenKeys::from_secret("another-secret-0123456789")
            .mint(&alice(), &[], Duration::minutes(5))
            .unwrap();
        assert_eq!(keys().verify(&forged), Err(AuthError::Invalid));
        assert_eq!(keys().verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            keys().verify_header(Some("Basic abc")),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn a_token_good_for_too_long_is_refused() {
        let long = keys().mint(&alice(), &[], Duration::days(30)).unwrap();
        assert_eq!(keys().verify(&long), Err(AuthError::TooLong));
    }

    fn settings_with(f: impl FnOnce(&mut Settings)) -> Settings {
        let mut settings = Settings {
            jwt_secret: "unit-test-secret-0123456789-0123456789".into(),
            ..Settings::default()
        };
        f(&mut settings);
        settings
    }

    fn token_with(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let settings = settings_with(|s| {
            s.auth.issuer = Some("https://id.example".into());
            s.auth.audience = Some("allo".into());
        });
        let keys = TokenKeys::from_settings(&settings).unwrap();
        let exp = (Utc::now() + Duration::minutes(5)).timestamp();
        let good = serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://id.example", "aud": "allo"});
        assert!(keys.verify(&token_with(&settings.jwt_secret, good)).is_ok());
        for bad in [
            serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://evil.example", "aud": "allo"}),
            serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://id.example", "aud": "other"}),
            serde_json::json!({"sub": "alice", "exp": exp, "aud": "allo"}),
            serde_json::json!({"sub": "alice", "exp": exp, "iss": "https://id.example"}),
        ] {
            let token = token_with(&settings.jwt_secret, bad.clone());
            assert_eq!(keys.verify(&token), Err(AuthError::Invalid), "{bad}");
        }
    }

    #[test]
    fn a_public_key_verifies_but_cannot_mint() {
        let dir = std::env::temp_dir().join(format!("allo-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let public = dir.join("ed25519.pub.pem");
        std::fs::write(&public, ED25519_PUBLIC).unwrap();
        let settings = settings_with(|s| {
            s.auth.algorithm = JwtAlgorithm::Eddsa;
            s.auth.public_key_file = Some(public.display().to_string());
        });
        let keys = TokenKeys::from_settings(&settings).unwrap();
        assert_eq!(
            keys.mint(&alice(), &[], Duration::minutes(5)),
            Err(AuthError::CannotMint)
        );
        let exp = (Utc::now() + Duration::minutes(5)).timestamp();
        let signed = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(keys.verify(&signed).unwrap().user, alice());
        // An HS256 token signed with the shared secret is not accepted by an EdDSA service.
        let hs = token_with(
            &settings.jwt_secret,
            serde_json::json!({"sub": "alice", "exp": exp}),
        );
        assert_eq!(keys.verify(&hs), Err(AuthError::Invalid));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_jwks_file_verifies_by_kid_and_cannot_mint() {
        use base64::Engine;
        let path = std::env::temp_dir().join(format!("allo-jwks-{}.json", uuid::Uuid::new_v4()));
        // The JWK of ED25519_PUBLIC: its last 32 DER bytes, base64url.
        let der = base64::engine::general_purpose::STANDARD
            .decode("MCowBQYDK2VwAyEA8ADIkSvziVmKx/6drrKjuw1TQfaroW2y+z/N+nARax4=")
            .unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        let jwks =
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]});
        std::fs::write(&path, jwks.to_string()).unwrap();
        let settings = settings_with(|s| {
            s.auth.algorithm = JwtAlgorithm::Eddsa;
            s.auth.jwks_file = Some(path.display().to_string());
        });
        let keys = TokenKeys::from_settings(&settings).unwrap();
        assert_eq!(
            keys.mint(&alice(), &[], Duration::minutes(5)),
            Err(AuthError::CannotMint)
        );
        let exp = (Utc::now() + Duration::minutes(5)).timestamp();
        let sign = |kid: &str| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(kid.into());
            jsonwebtoken::encode(
                &header,
                &serde_json::json!({"sub": "alice", "exp": exp}),
                &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(keys.verify(&sign("k1")).unwrap().user, alice());
        assert_eq!(keys.verify(&sign("other")), Err(AuthError::Invalid));
        let _ = std::fs::remove_file(path);
    }

    // An Ed25519 key pair generated for this test only (openssl genpkey -algorithm ed25519).
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHDVy5aMIMRupXAlO7aQPFUjIib6jNZEpIIE/zelWLso
-----END PRIVATE KEY-----
";
    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA8ADIkSvziVmKx/6drrKjuw1TQfaroW2y+z/N+nARax4=
-----END PUBLIC KEY-----
";
}
