use super::jwks::{parse, Jwk, Key, KeySet};
use super::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::time::Duration;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const RSA_DER: &[u8] = include_bytes!("../../../testbed/testdata/sa-signer-rsa2048.der");

enum Signer {
    Es(EcdsaKeyPair),
    Rs(RsaKeyPair),
}

fn es256() -> Signer {
    let rng = SystemRandom::new();
    let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    Signer::Es(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng).unwrap(),
    )
}

fn rs256() -> Signer {
    Signer::Rs(RsaKeyPair::from_der(RSA_DER).unwrap())
}

impl Signer {
    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Signer::Es(k) => {
                let p = k.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                    "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
            Signer::Rs(k) => {
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
        }
    }

    fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let alg = match self {
            Signer::Es(_) => "ES256",
            Signer::Rs(_) => "RS256",
        };
        let h = B64.encode(serde_json::json!({"alg": alg, "kid": kid}).to_string());
        let p = B64.encode(claims.to_string());
        let msg = format!("{h}.{p}");
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Es(k) => k.sign(&rng, msg.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rs(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    msg.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
        };
        format!("{msg}.{}", B64.encode(sig))
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn claims(ns: &str, sa: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": ["weft"], "exp": 1_800_003_600u64, "iat": 1_800_000_000u64,
        "nbf": 1_800_000_000u64, "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {"namespace": ns, "pod": {"name": "web-0", "uid": "u1"},
            "serviceaccount": {"name": sa, "uid": "u2"}}
    })
}

fn verifier(signers: &[(&Signer, &str)]) -> ServiceAccountTokens {
    let set =
        serde_json::json!({"keys": signers.iter().map(|(s, kid)| s.jwk(kid)).collect::<Vec<_>>()});
    ServiceAccountTokens {
        issuer: ISSUER.into(),
        audience: "weft".into(),
        keys: KeySet::new(parse(set.to_string().as_bytes()).unwrap()),
    }
}

#[test]
fn a_valid_projected_token_grants_its_namespace_and_service_account_with_rs256_and_es256() {
    let (rs, es) = (rs256(), es256());
    let v = verifier(&[(&rs, "rsa-1"), (&es, "ec-1")]);
    for (signer, kid) in [(&rs, "rsa-1"), (&es, "ec-1")] {
        let g = v
            .check(&signer.sign(kid, &claims("shop", "web")), now())
            .unwrap();
        assert_eq!(
            (g.namespace.as_str(), g.service_account.as_str()),
            ("shop", "web")
        );
    }
    // Through the bootstrap dispatcher too; a join token still goes to
    // the join verifier.
    assert!(ServiceAccountTokens::is_jwt(
        &es.sign("ec-1", &claims("a", "b"))
    ));
    assert!(!ServiceAccountTokens::is_jwt("weft1.eyJucyI6ImEifQ.c2ln"));
}

#[test]
fn wrong_audience_issuer_expiry_key_subject_and_signature_are_refused_with_the_reason() {
    let (es, other) = (es256(), es256());
    let v = verifier(&[(&es, "ec-1")]);
    let refused = |c: serde_json::Value| v.check(&es.sign("ec-1", &c), now()).unwrap_err();
    let mut c = claims("shop", "web");
    c["aud"] = serde_json::json!("https://kubernetes.default.svc");
    assert!(matches!(refused(c), SaTokenError::Audience { .. }));
    let mut c = claims("shop", "web");
    c["iss"] = serde_json::json!("https://evil.example");
    assert_eq!(
        refused(c).to_string(),
        format!("issuer \"https://evil.example\" is not the cluster's (\"{ISSUER}\")")
    );
    let mut c = claims("shop", "web");
    c["exp"] = serde_json::json!(1_799_999_990u64);
    assert_eq!(refused(c), SaTokenError::Expired(10));
    let mut c = claims("shop", "web");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(refused(c), SaTokenError::NoExpiry);
    let mut c = claims("shop", "web");
    c["nbf"] = serde_json::json!(1_800_000_600u64);
    assert_eq!(refused(c), SaTokenError::NotYetValid(600));
    // A namespace claim that disagrees with the subject.
    let mut c = claims("shop", "web");
    c["kubernetes.io"]["namespace"] = serde_json::json!("kube-system");
    assert!(matches!(refused(c), SaTokenError::Subject { .. }));
    // Signed by a key the cluster does not have, under a known or an
    // unknown key id.
    assert_eq!(
        v.check(&other.sign("ec-1", &claims("shop", "web")), now())
            .unwrap_err(),
        SaTokenError::BadSignature
    );
    assert_eq!(
        v.check(&other.sign("ec-9", &claims("shop", "web")), now())
            .unwrap_err(),
        SaTokenError::UnknownKey("ec-9".into())
    );
    // Tampered payload: the signature no longer verifies.
    let t = es.sign("ec-1", &claims("shop", "web"));
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = B64.encode(claims("shop", "admin").to_string());
    parts[1] = &forged;
    assert_eq!(
        v.check(&parts.join("."), now()).unwrap_err(),
        SaTokenError::BadSignature
    );
    // alg none, and garbage.
    let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode("{}"));
    assert_eq!(
        v.check(&none, now()).unwrap_err(),
        SaTokenError::Algorithm("none".into())
    );
    assert!(matches!(
        v.check("a.b", now()).unwrap_err(),
        SaTokenError::Malformed(_)
    ));
}

#[test]
fn jwks_parsing_skips_encryption_keys_and_names_a_broken_key() {
    let es = es256();
    let mut enc = es.jwk("enc-1");
    enc["use"] = serde_json::json!("enc");
    let set = serde_json::json!({"keys": [enc, es.jwk("ec-1")]});
    let keys: Vec<Jwk> = parse(set.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(matches!(keys[0].key, Key::Ec { .. }));
    let mut bad = es.jwk("ec-2");
    bad["x"] = serde_json::json!("AAAA");
    let err = parse(serde_json::json!({"keys": [bad]}).to_string().as_bytes()).unwrap_err();
    assert!(err.contains("ec-2") && err.contains("coordinate"), "{err}");
    assert!(parse(b"{\"keys\": []}")
        .unwrap_err()
        .contains("no signing keys"));
}
