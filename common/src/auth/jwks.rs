//! Verification keys from a JWKS file, chosen by the token's `kid`.

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthError;

/// Shortest time between two reads of the file caused by unknown `kid`s: a stream of forged
/// tokens cannot make every request read the disk.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

pub(crate) struct KeySet {
    path: String,
    algorithm: Algorithm,
    keys: RwLock<Vec<(Option<String>, DecodingKey)>>,
    reloaded: Mutex<Instant>,
    reload_every: Duration,
}

impl KeySet {
    /// Reads the file; refuses one without a key usable with `algorithm`.
    pub(crate) fn load(path: &str, algorithm: Algorithm) -> Result<Self, AuthError> {
        Self::load_with(path, algorithm, RELOAD_EVERY)
    }

    fn load_with(
        path: &str,
        algorithm: Algorithm,
        reload_every: Duration,
    ) -> Result<Self, AuthError> {
        let keys = read(path, algorithm)?;
        Ok(Self {
            path: path.to_string(),
            algorithm,
            keys: RwLock::new(keys),
            reloaded: Mutex::new(Instant::now()),
            reload_every,
        })
    }

    /// The key named by `kid`; without a `kid`, the only key of a one-key set.
    pub(crate) fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        if let Some(key) = self.find(kid) {
            return Some(key);
        }
        let kid = kid?;
        let due = self
            .reloaded
            .lock()
            .map(|mut at| {
                let due = at.elapsed() >= self.reload_every;
                if due {
                    *at = Instant::now();
                }
                due
            })
            .unwrap_or(false);
        if !due {
            return None;
        }
        match read(&self.path, self.algorithm) {
            Ok(keys) => {
                if let Ok(mut held) = self.keys.write() {
                    *held = keys;
                }
            }
            // Keep the keys we have: a half-written file must not lock everyone out.
            Err(e) => tracing::warn!(error = %e, path = %self.path, "re-reading the JWKS file"),
        }
        self.find(Some(kid))
    }

    fn find(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().ok()?;
        match kid {
            Some(kid) => keys
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid))
                .map(|(_, key)| key.clone()),
            None if keys.len() == 1 => keys.first().map(|(_, key)| key.clone()),
            None => None,
        }
    }
}

fn read(path: &str, algorithm: Algorithm) -> Result<Vec<(Option<String>, DecodingKey)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::Key(format!("{path}: {e}")))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| AuthError::Key(format!("{path}: {e}")))?;
    let keys: Vec<_> = set
        .keys
        .iter()
        // A key published for another algorithm is not one of ours.
        .filter(|jwk| {
            jwk.common
                .key_algorithm
                .is_none_or(|alg| alg.to_string() == format!("{algorithm:?}"))
        })
        .filter_map(|jwk| Some((jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk).ok()?)))
        .collect();
    if keys.is_empty() {
        return Err(AuthError::Key(format!(
            "{path}: no {algorithm:?} key in the JWKS file"
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};

    // Two Ed25519 key pairs made for these tests only (openssl genpkey -algorithm ed25519).
    const A_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEID6K+MvOZazX8rTeoUIzrT5YRo5iekCqutWxP1xzNxFC
-----END PRIVATE KEY-----
";
    const A_X: &str = "PqvCB9FDh9weZXga6DDUpZBKqSNBbnzGsjzPzKc4-R4";
    const B_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINsav4y8dKcxXKfynFzXBTPMRkxIixg9oVBid7UE1uxh
-----END PRIVATE KEY-----
";
    const B_X: &str = "7Tu2hWCfyioMl1VTZQBBVhBBooN_J8QB-DRYRaoZf2U";

    fn jwk(kid: &str, x: &str) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
    }

    fn write(path: &std::path::Path, keys: &[serde_json::Value]) {
        std::fs::write(path, serde_json::json!({"keys": keys}).to_string()).unwrap();
    }

    fn signed(private: &str, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(String::from);
        let exp = chrono::Utc::now().timestamp() + 300;
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// Whether `set` verifies `token` as `TokenKeys::verify` does (key by `kid`, then signature).
    fn verifies(set: &KeySet, token: &str) -> bool {
        let header = jsonwebtoken::decode_header(token).unwrap();
        let Some(key) = set.key_for(header.kid.as_deref()) else {
            return false;
        };
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &Validation::new(Algorithm::EdDSA))
            .is_ok()
    }

    #[test]
    fn keys_are_chosen_by_kid_and_a_rotated_key_is_read_again() {
        let path = std::env::temp_dir().join(format!("allo-jwks-{}.json", uuid::Uuid::new_v4()));
        write(&path, &[jwk("a", A_X)]);
        let set =
            KeySet::load_with(path.to_str().unwrap(), Algorithm::EdDSA, Duration::ZERO).unwrap();
        assert!(verifies(&set, &signed(A_PRIVATE, Some("a"))));
        // One key: a token without kid uses it; a kid naming no key is refused.
        assert!(verifies(&set, &signed(A_PRIVATE, None)));
        assert!(!verifies(&set, &signed(A_PRIVATE, Some("zz"))));
        // B signed under A's kid: the signature does not match A's key.
        assert!(!verifies(&set, &signed(B_PRIVATE, Some("a"))));

        // The provider rotates: both keys published, then only B.
        write(&path, &[jwk("a", A_X), jwk("b", B_X)]);
        assert!(verifies(&set, &signed(B_PRIVATE, Some("b"))));
        // Two keys: a token must say which.
        assert!(!verifies(&set, &signed(B_PRIVATE, None)));
        write(&path, &[jwk("b", B_X)]);
        assert!(verifies(&set, &signed(B_PRIVATE, Some("b"))));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn unknown_kids_do_not_read_the_file_more_than_once_per_interval() {
        let path = std::env::temp_dir().join(format!("allo-jwks-{}.json", uuid::Uuid::new_v4()));
        write(&path, &[jwk("a", A_X)]);
        let set = KeySet::load(path.to_str().unwrap(), Algorithm::EdDSA).unwrap();
        write(&path, &[jwk("a", A_X), jwk("b", B_X)]);
        // Just loaded: the new key waits for the interval.
        assert!(!verifies(&set, &signed(B_PRIVATE, Some("b"))));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_without_a_key_for_the_algorithm_is_refused() {
        let path = std::env::temp_dir().join(format!("allo-jwks-{}.json", uuid::Uuid::new_v4()));
        write(&path, &[jwk("a", A_X)]);
        assert!(KeySet::load(path.to_str().unwrap(), Algorithm::RS256).is_err());
        let _ = std::fs::remove_file(path);
    }
}
