//! The cluster's service-account signing keys (a JWKS, RFC 7517): parsed
//! into ring verification keys, loaded from a file or an http(s) URL (the
//! API server's `/openid/v1/jwks`), and reloaded in the background so key
//! rotation on the cluster needs no restart.

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One verification key.
#[derive(Debug, Clone)]
pub enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// P-256 or P-384, as the uncompressed point (0x04 || x || y).
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

/// A key with its id (`kid`, may be empty).
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: String,
    pub key: Key,
}

impl Key {
    /// Whether `sig` over `msg` verifies with this key under JWS `alg`.
    /// An algorithm that does not fit the key's type never verifies.
    pub fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Key::Rsa { n, e } => {
                let params = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Key::Ec { curve, point } => {
                let params = match (alg, curve) {
                    ("ES256", Curve::P256) => &signature::ECDSA_P256_SHA256_FIXED,
                    ("ES384", Curve::P384) => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => return false,
                };
                UnparsedPublicKey::new(params, point)
                    .verify(msg, sig)
                    .is_ok()
            }
        }
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: String,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document. Keys not for signatures (`use: enc`) and of
/// other types are skipped; a malformed signing key is an error naming it.
pub fn parse(json: &[u8]) -> Result<Vec<Jwk>, String> {
    let set: RawSet =
        serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for (i, k) in set.keys.into_iter().enumerate() {
        if k.usage.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let field = |name: &str, v: &Option<String>| -> Result<Vec<u8>, String> {
            let v = v
                .as_deref()
                .ok_or_else(|| format!("keys[{i}] ({}): no \"{name}\"", k.kid))?;
            B64.decode(v.trim_end_matches('='))
                .map_err(|_| format!("keys[{i}] ({}): \"{name}\" is not base64url", k.kid))
        };
        let key = match k.kty.as_str() {
            "RSA" => Key::Rsa {
                n: field("n", &k.n)?,
                e: field("e", &k.e)?,
            },
            "EC" => {
                let (curve, len) = match k.crv.as_deref() {
                    Some("P-256") => (Curve::P256, 32),
                    Some("P-384") => (Curve::P384, 48),
                    other => {
                        return Err(format!(
                            "keys[{i}] ({}): curve {other:?} is not supported (P-256, P-384)",
                            k.kid
                        ))
                    }
                };
                let (x, y) = (field("x", &k.x)?, field("y", &k.y)?);
                if x.len() != len || y.len() != len {
                    return Err(format!("keys[{i}] ({}): bad coordinate length", k.kid));
                }
                let mut point = vec![0x04];
                point.extend(x);
                point.extend(y);
                Key::Ec { curve, point }
            }
            _ => continue,
        };
        keys.push(Jwk { kid: k.kid, key });
    }
    if keys.is_empty() {
        return Err("the JWKS has no signing keys".into());
    }
    Ok(keys)
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// An http(s) URL; https is verified against `ca` (a PEM file; the
    /// API server's CA in a pod) and carries `token_file` as a bearer
    /// token when given.
    Url {
        url: String,
        ca: Option<PathBuf>,
        token_file: Option<PathBuf>,
    },
}

impl Source {
    pub fn from_flag(v: &str, ca: Option<PathBuf>, token_file: Option<PathBuf>) -> Source {
        if v.starts_with("http://") || v.starts_with("https://") {
            Source::Url {
                url: v.to_string(),
                ca,
                token_file,
            }
        } else {
            Source::File(PathBuf::from(v))
        }
    }

    pub async fn load(&self) -> Result<Vec<Jwk>, String> {
        let bytes = match self {
            Source::File(p) => tokio::fs::read(p)
                .await
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
            Source::Url {
                url,
                ca,
                token_file,
            } => crate::k8s_token::fetch::get(url, ca.as_deref(), token_file.as_deref())
                .await
                .map_err(|e| format!("cannot fetch {url}: {e}"))?,
        };
        parse(&bytes)
    }
}

/// The current keys, replaced whole by each successful reload.
pub struct KeySet {
    pub keys: ArcSwap<Vec<Jwk>>,
    /// Asks the reloader for an early reload (an unknown key id arrived).
    pub reload: tokio::sync::Notify,
}

impl KeySet {
    pub fn new(keys: Vec<Jwk>) -> Arc<KeySet> {
        Arc::new(KeySet {
            keys: ArcSwap::from_pointee(keys),
            reload: tokio::sync::Notify::new(),
        })
    }

    /// Reloads every `every`, or sooner when asked (at most once per 5 s);
    /// a failed reload keeps the keys there are, logged and counted.
    pub async fn refresh(self: Arc<Self>, source: Source, every: Duration) {
        loop {
            let _ = tokio::time::timeout(every, self.reload.notified()).await;
            match source.load().await {
                Ok(keys) => {
                    let before = self.keys.load().len();
                    self.keys.store(Arc::new(keys));
                    tracing::debug!(
                        before,
                        after = self.keys.load().len(),
                        "service-account keys reloaded"
                    );
                }
                Err(e) => {
                    metrics::counter!("weft_control_k8s_jwks_reload_failures_total").increment(1);
                    tracing::warn!(error = %e, "cannot reload the service-account keys; keeping the last ones");
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}
