//! Bootstrap credentials: what a proxy presents with its first CSR, before it
//! has a certificate. For now a join token bound to a namespace and service
//! account, minted by `weftctl token create` and signed (HMAC-SHA256) with a
//! key kept in the data dir. Kubernetes ServiceAccount tokens are another
//! `BootstrapVerifier` (`k8s_token`).
//!
//! Format: `weft1.<base64url(JSON claims)>.<base64url(HMAC of the claims)>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};
use xds_proto::spiffe::{check_name, SpiffeIdError};

const PREFIX: &str = "weft1";
const KEY_FILE: &str = "token-key";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a valid credential grants: one workload identity (before the trust
/// domain is added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "ns")]
    pub namespace: String,
    #[serde(rename = "sa")]
    pub service_account: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature does not verify (minted by another control plane, or altered)")]
    BadSignature,
    #[error("the token expired {0}s ago")]
    Expired(u64),
    #[error(transparent)]
    Name(#[from] SpiffeIdError),
    #[error("cannot use the token key: {0}")]
    Key(String),
    #[error("service-account token refused: {0}")]
    ServiceAccount(String),
}

/// Verifies a bootstrap credential and says which identity it grants.
pub trait BootstrapVerifier: Send + Sync {
    fn verify(&self, credential: &str, now: SystemTime) -> Result<Grant, TokenError>;
}

pub struct JoinTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens")
    }
}

impl JoinTokens {
    /// Loads `<dir>/token-key`, creating it (0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join(KEY_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) => B64
                .decode(s.trim())
                .map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| TokenError::Key(format!("{}: {e}", dir.display())))?;
                let secret: [u8; 32] = rand::random();
                weft_certs::ca::write_private(&path, &B64.encode(secret))
                    .map_err(|e| TokenError::Key(e.to_string()))?;
                secret.to_vec()
            }
            Err(e) => return Err(TokenError::Key(format!("{}: {e}", path.display()))),
        };
        if secret.len() < 32 {
            return Err(TokenError::Key(format!(
                "{}: key shorter than 32 bytes",
                path.display()
            )));
        }
        Ok(Self::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        JoinTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        let grant = Grant {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            exp: unix(now) + ttl.as_secs().max(1),
        };
        let claims =
            B64.encode(serde_json::to_vec(&grant).map_err(|e| TokenError::Key(e.to_string()))?);
        let signed = format!("{PREFIX}.{claims}");
        let tag = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", B64.encode(tag.as_ref())))
    }
}

impl BootstrapVerifier for JoinTokens {
    fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
        let (signed, tag) = token
            .trim()
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("expected weft1.<claims>.<signature>"))?;
        let claims = signed
            .strip_prefix(PREFIX)
            .and_then(|c| c.strip_prefix('.'))
            .ok_or(TokenError::Malformed("expected weft1.<claims>.<signature>"))?;
        let tag = B64
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let claims = B64
            .decode(claims)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let grant: Grant = serde_json::from_slice(&claims)
            .map_err(|_| TokenError::Malformed("claims are not the expected JSON"))?;
        let now = unix(now);
        if grant.exp <= now {
            return Err(TokenError::Expired(now - grant.exp));
        }
        check_name("namespace", &grant.namespace)?;
        check_name("service account", &grant.service_account)?;
        Ok(grant)
    }
}

fn unix(t: SystemTime) -> u64 {
    u64::try_from(xds_proto::units::unix_secs(t)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_grants_its_namespace_and_service_account() {
        let t = JoinTokens::from_secret(&[7; 32]);
        let now = SystemTime::now();
        let tok = t
            .mint("shop", "cart", Duration::from_secs(60), now)
            .unwrap();
        let g = t.verify(&tok, now).unwrap();
        assert_eq!(
            (g.namespace.as_str(), g.service_account.as_str()),
            ("shop", "cart")
        );
    }

    #[test]
    fn expired_altered_and_foreign_tokens_are_refused() {
        let t = JoinTokens::from_secret(&[7; 32]);
        let now = SystemTime::now();
        let tok = t
            .mint("shop", "cart", Duration::from_secs(60), now)
            .unwrap();
        assert!(matches!(
            t.verify(&tok, now + Duration::from_secs(61)),
            Err(TokenError::Expired(_))
        ));
        let other = JoinTokens::from_secret(&[8; 32]);
        assert_eq!(other.verify(&tok, now), Err(TokenError::BadSignature));
        // Swap in claims for another service account, keep the signature.
        let forged_claims = B64.encode(br#"{"ns":"shop","sa":"admin","exp":99999999999}"#);
        let sig = tok.rsplit_once('.').unwrap().1;
        let forged = format!("weft1.{forged_claims}.{sig}");
        assert_eq!(t.verify(&forged, now), Err(TokenError::BadSignature));
        assert!(matches!(
            t.verify("nonsense", now),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn the_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = JoinTokens::load_or_create(dir.path()).unwrap();
        let now = SystemTime::now();
        let tok = a.mint("a", "b", Duration::from_secs(60), now).unwrap();
        let b = JoinTokens::load_or_create(dir.path()).unwrap();
        assert!(b.verify(&tok, now).is_ok());
    }

    #[test]
    fn names_outside_the_identity_alphabet_cannot_be_minted() {
        let t = JoinTokens::from_secret(&[7; 32]);
        assert!(t
            .mint("Shop", "cart", Duration::from_secs(60), SystemTime::now())
            .is_err());
    }
}
