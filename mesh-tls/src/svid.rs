//! X.509-SVIDs: PEM parsing and what a certificate says about its holder.

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::time::SystemTime;
use x509_parser::extensions::GeneralName;
use xds_proto::spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate has no SPIFFE ID (URI SAN)")]
    NoSpiffeId,
    #[error("certificate has {0} URI SANs; an SVID has exactly one")]
    ManyUris(usize),
    #[error(transparent)]
    Id(#[from] xds_proto::spiffe::SpiffeIdError),
}

/// A fresh P-256 key and a PEM certificate signing request naming `id` as
/// its only URI SAN (no subject): the request a workload sends to be issued
/// its SVID. Returns (CSR PEM, key).
pub fn csr_for(id: &SpiffeId) -> Result<(String, rcgen::KeyPair), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((csr, key))
}

/// The CERTIFICATE blocks of a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| SvidError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(SvidError::Pem("no CERTIFICATE blocks".into()));
    }
    Ok(certs)
}

/// The first private key of a PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, SvidError> {
    use rustls_pki_types::pem::{self, PemObject};
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => SvidError::Pem("no PRIVATE KEY block".into()),
        e => SvidError::Pem(e.to_string()),
    })
}

/// The SPIFFE ID of a certificate: its one URI SAN.
pub fn spiffe_id(cert: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, c) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| SvidError::Parse(e.to_string()))?;
    let uris: Vec<&str> = match c
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?
    {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        None => vec![],
    };
    match uris.as_slice() {
        [] => Err(SvidError::NoSpiffeId),
        [one] => Ok(one.parse()?),
        many => Err(SvidError::ManyUris(many.len())),
    }
}

/// What `/certs` and `weftctl certs inspect` show about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub spiffe_id: Option<String>,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// SHA-256 of the DER, hex.
    pub fingerprint_sha256: String,
}

pub fn inspect(cert: &[u8]) -> Result<CertInfo, SvidError> {
    let (_, c) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| SvidError::Parse(e.to_string()))?;
    let time = xds_proto::units::from_unix_secs;
    Ok(CertInfo {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        spiffe_id: spiffe_id(cert).ok().map(|id| id.to_string()),
        serial: c.raw_serial_as_string().replace(':', ""),
        not_before: time(c.validity().not_before.timestamp()),
        not_after: time(c.validity().not_after.timestamp()),
        is_ca: c.is_ca(),
        fingerprint_sha256: fingerprint(cert),
    })
}

pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
