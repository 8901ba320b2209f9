//! A stand-in for a Kubernetes cluster's ServiceAccount token issuer: an
//! ES256 key, its JWKS (as the API server's /openid/v1/jwks serves it) and
//! projected tokens signed with it, for tests of pod identity.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::time::{SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Issuer {
    key: EcdsaKeyPair,
    kid: &'static str,
}

impl Issuer {
    pub fn new(kid: &'static str) -> Issuer {
        let rng = SystemRandom::new();
        let pk8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng)
            .expect("key");
        Issuer { key, kid }
    }

    pub fn jwks(&self) -> String {
        let p = self.key.public_key().as_ref();
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "kid": self.kid,
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])}]})
        .to_string()
    }

    /// A projected token for ns/sa; `edit` changes its claims.
    pub fn token(&self, ns: &str, sa: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": ISSUER, "aud": ["weft"], "iat": now, "nbf": now, "exp": now + 3600,
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": {"namespace": ns, "pod": {"name": format!("{sa}-0"), "uid": "1"},
                "serviceaccount": {"name": sa, "uid": "2"}}
        });
        edit(&mut claims);
        let h = B64.encode(serde_json::json!({"alg": "ES256", "kid": self.kid}).to_string());
        let msg = format!("{h}.{}", B64.encode(claims.to_string()));
        let sig = self
            .key
            .sign(&SystemRandom::new(), msg.as_bytes())
            .expect("sign");
        format!("{msg}.{}", B64.encode(sig.as_ref()))
    }
}
