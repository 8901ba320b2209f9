//! TLS to etcd members for the etcd store: rustls with the ring provider
//! (the project's only one), the members verified against `--etcd-ca` by
//! DNS name or IP, an optional client certificate.

use std::sync::Arc;

/// rustls (ring) verifying the members against `ca_pem` by DNS name or IP,
/// presenting `client` (cert, key PEM) when given.
pub(super) fn tls_config(
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("--etcd-ca: {e}"))?;
        roots.add(c).map_err(|e| format!("--etcd-ca: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain: Result<Vec<_>, _> =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect();
            let chain = chain.map_err(|e| format!("--etcd-cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("--etcd-key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--etcd-cert/--etcd-key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
