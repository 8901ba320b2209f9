//! Kubernetes ServiceAccount tokens as a bootstrap credential: a sidecar
//! presents its pod's projected token (audience `weft`), and the control
//! plane verifies it as a JWT against the cluster's service-account
//! issuer keys (`--k8s-jwks`, a file or the API server's JWKS URL):
//! signature (RS256/384/512, ES256/384), issuer, audience, expiry and
//! not-before, and that the subject agrees with the `kubernetes.io`
//! namespace and service-account claims. The grant is that namespace and
//! service account: `spiffe://<td>/ns/<ns>/sa/<sa>`; a CSR for any other
//! identity is refused by the signer (identity mismatch).

pub mod fetch;
pub mod jwks;

use crate::join_token::{BootstrapVerifier, Grant, TokenError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jwks::KeySet;
use serde::Deserialize;
use std::sync::Arc;
use std::time::SystemTime;

/// Clock skew allowed on `nbf` and `iat` (not on `exp`).
const SKEW_SECS: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaTokenError {
    #[error("not a JWT: {0}")]
    Malformed(&'static str),
    #[error("signature algorithm \"{0}\" is not accepted (RS256, RS384, RS512, ES256, ES384)")]
    Algorithm(String),
    #[error(
        "signed by an unknown key (kid \"{0}\"): not one of the cluster's service-account keys"
    )]
    UnknownKey(String),
    #[error("the signature does not verify with the cluster's service-account keys")]
    BadSignature,
    #[error("issuer \"{got}\" is not the cluster's (\"{want}\")")]
    Issuer { got: String, want: String },
    #[error(
        "audience {got:?} does not include \"{want}\" (project the token with audience {want})"
    )]
    Audience { got: Vec<String>, want: String },
    #[error("the token expired {0}s ago")]
    Expired(u64),
    #[error("the token has no expiry (a legacy secret-based token?): use a projected token")]
    NoExpiry,
    #[error("the token is not valid for another {0}s")]
    NotYetValid(u64),
    #[error("the token has no {0} claim")]
    Missing(&'static str),
    #[error("subject \"{sub}\" does not match namespace \"{namespace}\" and service account \"{service_account}\"")]
    Subject {
        sub: String,
        namespace: String,
        service_account: String,
    },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    nbf: Option<u64>,
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaims>,
}

#[derive(Deserialize)]
struct KubeClaims {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// The verifier: the issuer and audience to require, the keys.
pub struct ServiceAccountTokens {
    pub issuer: String,
    pub audience: String,
    pub keys: Arc<KeySet>,
}

impl ServiceAccountTokens {
    /// Whether `credential` looks like a JWT (three base64url parts, a
    /// JSON header), not a Weft join token.
    pub fn is_jwt(credential: &str) -> bool {
        credential.trim().starts_with("eyJ") && credential.split('.').count() == 3
    }

    pub fn check(&self, token: &str, now: SystemTime) -> Result<Grant, SaTokenError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaTokenError::Malformed("expected header.payload.signature"));
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(SaTokenError::Malformed("the header is not base64url JSON"))?;
        if !matches!(
            header.alg.as_str(),
            "RS256" | "RS384" | "RS512" | "ES256" | "ES384"
        ) {
            return Err(SaTokenError::Algorithm(header.alg));
        }
        let sig = B64
            .decode(s)
            .map_err(|_| SaTokenError::Malformed("the signature is not base64url"))?;
        let signed = &token.trim()[..h.len() + 1 + p.len()];
        let keys = self.keys.keys.load();
        let candidates: Vec<_> = keys
            .iter()
            .filter(|k| header.kid.is_empty() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            // Perhaps rotated in since the last load.
            self.keys.reload.notify_one();
            return Err(SaTokenError::UnknownKey(header.kid));
        }
        if !candidates
            .iter()
            .any(|k| k.key.verify(&header.alg, signed.as_bytes(), &sig))
        {
            return Err(SaTokenError::BadSignature);
        }
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(SaTokenError::Malformed(
                "the payload is not base64url JSON claims",
            ))?;
        let iss = claims.iss.unwrap_or_default();
        if iss != self.issuer {
            return Err(SaTokenError::Issuer {
                got: iss,
                want: self.issuer.clone(),
            });
        }
        let aud = match claims.aud {
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(a)) => a,
            None => vec![],
        };
        if !aud.contains(&self.audience) {
            return Err(SaTokenError::Audience {
                got: aud,
                want: self.audience.clone(),
            });
        }
        let now = u64::try_from(xds_proto::units::unix_secs(now)).unwrap_or(0);
        let exp = claims.exp.ok_or(SaTokenError::NoExpiry)?;
        if exp <= now {
            return Err(SaTokenError::Expired(now - exp));
        }
        if let Some(nbf) = claims.nbf {
            if nbf > now + SKEW_SECS {
                return Err(SaTokenError::NotYetValid(nbf - now));
            }
        }
        let kube = claims
            .kubernetes
            .ok_or(SaTokenError::Missing("\"kubernetes.io\""))?;
        let namespace = kube
            .namespace
            .ok_or(SaTokenError::Missing("\"kubernetes.io\".namespace"))?;
        let service_account = kube
            .serviceaccount
            .ok_or(SaTokenError::Missing("\"kubernetes.io\".serviceaccount"))?
            .name;
        let sub = claims.sub.unwrap_or_default();
        if sub != format!("system:serviceaccount:{namespace}:{service_account}") {
            return Err(SaTokenError::Subject {
                sub,
                namespace,
                service_account,
            });
        }
        Ok(Grant {
            namespace,
            service_account,
            exp,
        })
    }
}

impl BootstrapVerifier for ServiceAccountTokens {
    fn verify(&self, credential: &str, now: SystemTime) -> Result<Grant, TokenError> {
        let grant = self
            .check(credential, now)
            .map_err(|e| TokenError::ServiceAccount(e.to_string()))?;
        xds_proto::spiffe::check_name("namespace", &grant.namespace)?;
        xds_proto::spiffe::check_name("service account", &grant.service_account)?;
        Ok(grant)
    }
}

/// Join tokens always; service-account tokens when configured. Each
/// credential goes to the verifier its shape names.
pub struct Bootstrap {
    pub join: Arc<dyn BootstrapVerifier>,
    pub k8s: Option<ServiceAccountTokens>,
}

impl BootstrapVerifier for Bootstrap {
    fn verify(&self, credential: &str, now: SystemTime) -> Result<Grant, TokenError> {
        if ServiceAccountTokens::is_jwt(credential) {
            return match &self.k8s {
                Some(k) => k.verify(credential, now),
                None => Err(TokenError::Malformed(
                    "a Kubernetes service-account token, but this control plane was started without --k8s-jwks",
                )),
            };
        }
        self.join.verify(credential, now)
    }
}

#[cfg(test)]
mod tests;
