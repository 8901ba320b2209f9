//! The mesh's certificate authority: a root and an issuing (intermediate) CA,
//! generated on first start into `<data-dir>/ca/` (keys 0600, never logged or
//! served) or loaded from operator files (`--ca-cert`, `--ca-key`: the usual
//! production setup with an offline root). It signs workload CSRs into
//! X.509-SVIDs whose only SAN is the SPIFFE ID the caller was granted.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use xds_proto::spiffe::SpiffeId;

/// Shortest and default workload certificate lifetimes.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Certificates start this far in the past, so a peer whose clock is a
/// little behind does not reject a fresh one.
pub const BACKDATE: Duration = Duration::from_secs(60);
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the CSR cannot be used: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {requested}, but the credential grants {granted}")]
    IdentityMismatch { requested: String, granted: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

fn file_err(path: &Path, reason: impl ToString) -> CaError {
    CaError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf followed by the issuing CA chain (roots excluded).
    pub chain_pem: String,
    pub serial_hex: String,
    pub not_after: SystemTime,
}

pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The issuing CA and any intermediates above it, PEM, leaf-most first.
    chain_pem: String,
    issuer_not_after: SystemTime,
    /// Roots workloads trust (PEM). More than one during a CA rotation.
    roots_pem: Vec<String>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots_pem.len())
            .finish_non_exhaustive()
    }
}

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const ISSUER_CERT: &str = "issuer-cert.pem";
const ISSUER_KEY: &str = "issuer-key.pem";

impl CertificateAuthority {
    /// The built-in CA: loads `<dir>/issuer-*.pem` and `<dir>/root-cert.pem`,
    /// generating a new root and issuing CA on first start.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        if !dir.join(ISSUER_KEY).exists() {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
            let generated = generate(trust_domain)?;
            write_private(&dir.join(ROOT_KEY), &generated.root_key)?;
            write_private(&dir.join(ROOT_CERT), &generated.root_cert)?;
            write_private(&dir.join(ISSUER_KEY), &generated.issuer_key)?;
            write_private(&dir.join(ISSUER_CERT), &generated.issuer_cert)?;
            tracing::info!(dir = %dir.display(), %trust_domain, "generated a new root and issuing CA");
        }
        let mut chain = read(&dir.join(ISSUER_CERT))?;
        chain.push_str(&read(&dir.join(ROOT_CERT))?);
        Self::from_pem(
            &chain,
            &read(&dir.join(ISSUER_KEY))?,
            trust_domain,
            &dir.join(ISSUER_CERT),
        )
    }

    /// The CA a control plane already generated in `dir` (for tools such as
    /// `weftctl certs admin-cert`); never creates one.
    pub fn load_existing(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        if !dir.join(ISSUER_KEY).exists() {
            return Err(file_err(
                dir,
                "no CA here: start weft-control with this --data-dir first (or pass the operator CA files)",
            ));
        }
        Self::load_or_create(dir, trust_domain)
    }

    /// An operator-supplied issuing CA: `cert` holds the issuing certificate
    /// followed by its chain up to and including the self-signed root.
    pub fn from_files(cert: &Path, key: &Path, trust_domain: &str) -> Result<Self, CaError> {
        Self::from_pem(&read(cert)?, &read(key)?, trust_domain, cert)
    }

    fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        trust_domain: &str,
        origin: &Path,
    ) -> Result<Self, CaError> {
        let certs = split_pem(chain_pem).map_err(|e| file_err(origin, e))?;
        if certs.len() < 2 {
            return Err(file_err(
                origin,
                "expected the issuing CA certificate followed by its chain up to the self-signed root",
            ));
        }
        let mut parsed = Vec::new();
        for (i, der) in certs.iter().enumerate() {
            let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| {
                file_err(origin, format!("certificate {} does not parse: {e}", i + 1))
            })?;
            parsed.push(c);
        }
        let root = parsed.last().expect("checked above: two or more");
        if root.subject() != root.issuer() {
            return Err(file_err(
                origin,
                "the last certificate is not self-signed: the chain must end with the root",
            ));
        }
        for (i, c) in parsed.iter().enumerate() {
            if !c.is_ca() {
                return Err(file_err(
                    origin,
                    format!(
                        "certificate {} is not a CA (basicConstraints cA is false)",
                        i + 1
                    ),
                ));
            }
        }
        let issuer_not_after = to_system_time(parsed[0].validity().not_after.timestamp());
        let key = KeyPair::from_pem(key_pem).map_err(|e| file_err(origin, format!("key: {e}")))?;
        if key.public_key_raw() != parsed[0].public_key().subject_public_key.data.as_ref() {
            return Err(file_err(
                origin,
                "the key does not belong to the first (issuing) certificate",
            ));
        }
        let issuer_der = rustls_pki_der(&certs[0]);
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key)
            .map_err(|e| file_err(origin, format!("issuing certificate: {e}")))?;
        let pems: Vec<String> = certs.iter().map(|d| to_pem("CERTIFICATE", d)).collect();
        let roots_pem = vec![pems.last().cloned().unwrap_or_default()];
        let chain_pem = pems[..pems.len() - 1].concat();
        xds_proto::spiffe::check_name("trust domain", trust_domain)
            .map_err(|e| file_err(origin, e))?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            issuer,
            chain_pem,
            issuer_not_after,
            roots_pem,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots_pem(&self) -> &[String] {
        &self.roots_pem
    }

    /// The issuing CA chain sent after every leaf (PEM).
    pub fn issuer_chain_pem(&self) -> &str {
        &self.chain_pem
    }

    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// Signs `csr_pem` for `granted` (the identity the caller's credential
    /// proves). The CSR must ask for exactly that SPIFFE ID and nothing else.
    pub fn sign(
        &self,
        csr_pem: &str,
        granted: &SpiffeId,
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if !ACCEPTED_KEYS.contains(&alg) {
            return Err(CaError::BadCsr(
                "unsupported key type: use ECDSA P-256/P-384 or Ed25519".into(),
            ));
        }
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        let granted_s = granted.to_string();
        if requested.len() != 1 || requested[0] != granted_s {
            return Err(CaError::IdentityMismatch {
                requested: if requested.is_empty() {
                    "no identity".into()
                } else {
                    requested.join(", ")
                },
                granted: granted_s,
            });
        }
        if granted.trust_domain != self.trust_domain {
            return Err(CaError::IdentityMismatch {
                requested: granted_s,
                granted: format!("identities in trust domain {}", self.trust_domain),
            });
        }
        let ttl = ttl.max(MIN_CERT_TTL);
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.issuer_not_after);
        let serial: [u8; 16] = {
            let mut s: [u8; 16] = rand::random();
            s[0] &= 0x7f; // positive
            s[0] |= 0x01; // and 16 bytes long
            s
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            granted_s
                .clone()
                .try_into()
                .map_err(|e| CaError::Sign(format!("{e}")))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| CaError::Sign(e.to_string()))?;
        metrics::counter!("weft_control_certificates_issued_total").increment(1);
        Ok(Issued {
            chain_pem: format!("{}{}", leaf.pem(), self.chain_pem),
            serial_hex: hex(&serial),
            not_after,
        })
    }
}

impl CertificateAuthority {
    /// Issues a certificate for one of the control plane's own identities
    /// (its serving certificate, the admin client certificate), with a key
    /// generated here. Returns (chain PEM, key PEM).
    pub fn issue_local(&self, id: &SpiffeId, ttl: Duration) -> Result<(Issued, String), CaError> {
        let (csr_pem, key) =
            weft_mesh_tls::svid::csr_for(id).map_err(|e| CaError::Sign(e.to_string()))?;
        let issued = self.sign(&csr_pem, id, ttl)?;
        Ok((issued, key.serialize_pem()))
    }
}

static ACCEPTED_KEYS: [&SignatureAlgorithm; 3] = [
    &rcgen::PKCS_ECDSA_P256_SHA256,
    &rcgen::PKCS_ECDSA_P384_SHA384,
    &rcgen::PKCS_ED25519,
];

struct Generated {
    root_cert: String,
    root_key: String,
    issuer_cert: String,
    issuer_key: String,
}

fn ca_params(common_name: &str, path_len: u8, validity: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = to_offset(now - BACKDATE);
    p.not_after = to_offset(now + validity);
    let serial: [u8; 16] = rand::random();
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p
}

/// A new root (ECDSA P-256) and an issuing CA signed by it.
fn generate(trust_domain: &str) -> Result<Generated, CaError> {
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
    let root_params = ca_params(&format!("Weft root CA {trust_domain}"), 1, ROOT_VALIDITY);
    let root_cert = root_params.self_signed(&root_key).map_err(sign)?;
    let root_key_pem = root_key.serialize_pem();
    let root = Issuer::new(root_params, root_key);
    let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
    let issuer_params = ca_params(
        &format!("Weft issuing CA {trust_domain}"),
        0,
        ISSUER_VALIDITY,
    );
    let issuer_cert = issuer_params.signed_by(&issuer_key, &root).map_err(sign)?;
    Ok(Generated {
        root_cert: root_cert.pem(),
        root_key: root_key_pem,
        issuer_cert: issuer_cert.pem(),
        issuer_key: issuer_key.serialize_pem(),
    })
}

/// An offline root for operators (`weftctl certs create-root`): writes
/// root-cert.pem and root-key.pem (0600) into `dir`.
pub fn create_root(dir: &Path, common_name: &str, validity: Duration) -> Result<(), CaError> {
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
    let cert = ca_params(common_name, 1, validity)
        .self_signed(&key)
        .map_err(sign)?;
    write_private(&dir.join(ROOT_KEY), &key.serialize_pem())?;
    write_private(&dir.join(ROOT_CERT), &cert.pem())
}

/// An issuing CA signed by an operator's root (`weftctl certs
/// create-issuer`): writes issuer-key.pem and chain.pem (issuer, then root),
/// the files `weft-control --ca-cert/--ca-key` take.
pub fn create_issuer(
    root_cert: &Path,
    root_key: &Path,
    out: &Path,
    common_name: &str,
    validity: Duration,
) -> Result<(), CaError> {
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    let root_pem = read(root_cert)?;
    let root_key =
        KeyPair::from_pem(&read(root_key)?).map_err(|e| file_err(root_key, format!("key: {e}")))?;
    let root = Issuer::from_ca_cert_pem(&root_pem, root_key)
        .map_err(|e| file_err(root_cert, format!("root certificate: {e}")))?;
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
    let cert = ca_params(common_name, 0, validity)
        .signed_by(&key, &root)
        .map_err(sign)?;
    write_private(&out.join(ISSUER_KEY), &key.serialize_pem())?;
    write_private(&out.join("chain.pem"), &format!("{}{root_pem}", cert.pem()))
}

/// Writes `contents` readable by the owner only (0600), replacing atomically.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| file_err(path, e))
}

/// The DER bodies of the CERTIFICATE blocks in `pem`, in order.
pub fn split_pem(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    use rustls_pki_types::pem::PemObject;
    for item in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        out.push(item.map_err(|e| format!("bad PEM: {e}"))?.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err("no CERTIFICATE blocks found".into());
    }
    Ok(out)
}

fn rustls_pki_der(der: &[u8]) -> rustls_pki_types::CertificateDer<'static> {
    rustls_pki_types::CertificateDer::from(der.to_vec())
}

pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn to_system_time(unix: i64) -> SystemTime {
    xds_proto::units::from_unix_secs(unix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn csr_for(uri: &str) -> (String, KeyPair) {
        weft_mesh_tls::svid::csr_for(&id(uri)).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn first_start_generates_a_ca_with_private_keys_and_reloads_the_same_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
        for f in [ROOT_KEY, ISSUER_KEY, ROOT_CERT, ISSUER_CERT] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let again = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
        assert_eq!(ca.roots_pem(), again.roots_pem());
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_signed_svid_has_only_the_spiffe_uri_and_chains_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
        let want = id("spiffe://cluster.local/ns/shop/sa/cart");
        let (csr, _key) = csr_for(&want.to_string());
        let issued = ca.sign(&csr, &want, Duration::from_secs(60)).unwrap();
        let chain = split_pem(&issued.chain_pem).unwrap();
        assert_eq!(chain.len(), 2, "leaf + issuing CA");
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(names, vec![format!("URI({want})")]);
        assert!(!leaf.is_ca());
        let lifetime =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert!((115..=125).contains(&lifetime), "lifetime {lifetime}s");
        // The leaf verifies against the issuing CA, which verifies against the root.
        let (_, issuer) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let root = split_pem(&ca.roots_pem()[0]).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&root[0]).unwrap();
        issuer.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn a_csr_for_an_identity_the_credential_does_not_grant_is_refused_with_both_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
        let (csr, _) = csr_for("spiffe://cluster.local/ns/shop/sa/admin");
        let err = ca
            .sign(
                &csr,
                &id("spiffe://cluster.local/ns/shop/sa/cart"),
                DEFAULT_CERT_TTL,
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sa/admin") && msg.contains("sa/cart"), "{msg}");
    }

    #[test]
    fn garbage_instead_of_a_csr_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
        let err = ca
            .sign(
                "not a csr",
                &id("spiffe://cluster.local/ns/a/sa/b"),
                DEFAULT_CERT_TTL,
            )
            .unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    }

    #[test]
    fn an_offline_root_and_issuer_made_by_the_cli_helpers_load_as_the_operator_ca() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        create_root(&root, "Offline root", ROOT_VALIDITY).unwrap();
        let issuer = dir.path().join("issuer");
        create_issuer(
            &root.join(ROOT_CERT),
            &root.join(ROOT_KEY),
            &issuer,
            "Issuing CA",
            ISSUER_VALIDITY,
        )
        .unwrap();
        let ca = CertificateAuthority::from_files(
            &issuer.join("chain.pem"),
            &issuer.join(ISSUER_KEY),
            "cluster.local",
        )
        .unwrap();
        let want = id("spiffe://cluster.local/ns/a/sa/b");
        let (csr, _) = csr_for(&want.to_string());
        ca.sign(&csr, &want, Duration::from_secs(60)).unwrap();
        assert_eq!(
            ca.roots_pem()[0],
            std::fs::read_to_string(root.join(ROOT_CERT)).unwrap()
        );
    }

    #[test]
    fn operator_files_must_hold_a_chain_ending_in_a_root_and_the_matching_key() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
        let issuer = std::fs::read_to_string(dir.path().join(ISSUER_CERT)).unwrap();
        let root = std::fs::read_to_string(dir.path().join(ROOT_CERT)).unwrap();
        let chain = dir.path().join("chain.pem");
        std::fs::write(&chain, format!("{issuer}{root}")).unwrap();
        let ok =
            CertificateAuthority::from_files(&chain, &dir.path().join(ISSUER_KEY), "cluster.local");
        assert!(ok.is_ok(), "{ok:?}");

        let only_issuer = dir.path().join("issuer-only.pem");
        std::fs::write(&only_issuer, &issuer).unwrap();
        let err = CertificateAuthority::from_files(
            &only_issuer,
            &dir.path().join(ISSUER_KEY),
            "cluster.local",
        )
        .unwrap_err();
        assert!(err.to_string().contains("issuer-only.pem"), "{err}");

        let wrong_key =
            CertificateAuthority::from_files(&chain, &dir.path().join(ROOT_KEY), "cluster.local")
                .unwrap_err();
        assert!(
            wrong_key.to_string().contains("does not belong"),
            "{wrong_key}"
        );
    }
}
