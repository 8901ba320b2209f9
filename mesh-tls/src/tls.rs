//! rustls configuration for every mTLS endpoint in the mesh (TLS 1.3 only,
//! ring as the one crypto provider).
//!
//! - [`CertSlot`]: the current certificate and key. Renewal swaps it
//!   atomically; new handshakes use the new one, established connections are
//!   untouched.
//! - [`TrustBundle`]: the roots currently trusted. It changes during a CA
//!   rotation; verifiers read it per handshake.
//! - [`MeshServerVerifier`] (used by clients): the server's chain must lead to
//!   a trusted root and its leaf must carry a SPIFFE ID. Peers have no DNS
//!   names, so no name is checked here: the caller compares the peer's SPIFFE
//!   ID with the identities allowed for the destination (see
//!   [`peer_identity`]) before sending a byte.
//! - [`MeshClientVerifier`] (used by servers): client chains must lead to a
//!   trusted root; mandatory on the data plane, optional on the control plane
//!   (a proxy's first call carries a join token instead).

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, OnceLock};
use xds_proto::spiffe::SpiffeId;

use crate::svid;

/// The name clients put in the handshake. Mesh peers are identified by
/// SPIFFE ID, not DNS, so this is only a placeholder rustls requires (SNI is
/// switched off).
pub const MESH_SERVER_NAME: &str = "weft.mesh";

/// ALPN between sidecars: HTTP rides h2 (multiplexed), opaque TCP rides a
/// passthrough protocol, so the inbound side never has to sniff. An HTTP/1.1
/// upgrade (WebSocket) gets a connection of its own speaking HTTP/1.1, which
/// the callee's sidecar hands to the app as the same upgrade.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_TCP: &[u8] = b"weft-tcp";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Svid(#[from] svid::SvidError),
    #[error("the private key cannot be used: {0}")]
    Key(String),
    #[error("trust bundle: {0}")]
    Bundle(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The current certificate chain and key, swapped atomically.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertSlot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a new chain (leaf first) and its key (PEM).
    pub fn set_pem(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let chain = svid::certs_from_pem(chain_pem)?;
        let key = svid::key_from_pem(key_pem)?;
        let key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let ck = CertifiedKey::new(chain, key);
        ck.keys_match().map_err(|e| TlsError::Key(e.to_string()))?;
        self.current.store(Some(Arc::new(ck)));
        Ok(())
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// The leaf certificate in use, DER.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current
            .load()
            .as_ref()
            .and_then(|c| c.cert.first().cloned())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

struct BundleState {
    pems: Vec<String>,
    fingerprints: Vec<String>,
    roots: Arc<RootCertStore>,
    required: Arc<dyn ClientCertVerifier>,
    optional: Arc<dyn ClientCertVerifier>,
}

/// The roots trusted right now.
pub struct TrustBundle {
    state: ArcSwap<BundleState>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("fingerprints", &self.state.load().fingerprints)
            .finish()
    }
}

impl TrustBundle {
    pub fn new(pems: &[String]) -> Result<Self, TlsError> {
        Ok(TrustBundle {
            state: ArcSwap::from_pointee(Self::build(pems)?),
        })
    }

    fn build(pems: &[String]) -> Result<BundleState, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut fingerprints = Vec::new();
        for pem in pems {
            for cert in svid::certs_from_pem(pem)? {
                fingerprints.push(svid::fingerprint(&cert));
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Bundle(format!("root rejected: {e}")))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::Bundle("no roots".into()));
        }
        let roots = Arc::new(roots);
        let verifier = |optional: bool| {
            let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let b = if optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| TlsError::Bundle(e.to_string()))
        };
        Ok(BundleState {
            pems: pems.to_vec(),
            fingerprints,
            required: verifier(false)?,
            optional: verifier(true)?,
            roots,
        })
    }

    /// Replaces the roots; returns whether anything changed. A bad bundle is
    /// refused and the current one stays.
    pub fn update(&self, pems: &[String]) -> Result<bool, TlsError> {
        if self.state.load().pems == pems {
            return Ok(false);
        }
        self.state.store(Arc::new(Self::build(pems)?));
        Ok(true)
    }

    pub fn pems(&self) -> Vec<String> {
        self.state.load().pems.clone()
    }

    /// SHA-256 fingerprints of the roots, hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.state.load().fingerprints.clone()
    }
}

/// Client side: verifies a server's chain against the trust bundle and that
/// its leaf carries a SPIFFE ID.
#[derive(Debug)]
pub struct MeshServerVerifier {
    bundle: Arc<TrustBundle>,
}

impl MeshServerVerifier {
    pub fn new(bundle: Arc<TrustBundle>) -> Self {
        MeshServerVerifier { bundle }
    }
}

fn no_spiffe_id(e: svid::SvidError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let state = self.bundle.state.load();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &state.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        svid::spiffe_id(end_entity).map_err(no_spiffe_id)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: verifies client chains against the trust bundle current at
/// handshake time.
#[derive(Debug)]
pub struct MeshClientVerifier {
    bundle: Arc<TrustBundle>,
    mandatory: bool,
}

impl MeshClientVerifier {
    /// `mandatory`: refuse clients without a certificate (data plane); when
    /// false (control plane) they are let through unauthenticated and each
    /// RPC decides.
    pub fn new(bundle: Arc<TrustBundle>, mandatory: bool) -> Self {
        MeshClientVerifier { bundle, mandatory }
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        let s = self.bundle.state.load();
        if self.mandatory {
            s.required.clone()
        } else {
            s.optional.clone()
        }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a workload has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner()
            .verify_client_cert(end_entity, intermediates, now)?;
        svid::spiffe_id(end_entity).map_err(no_spiffe_id)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

/// A TLS 1.3 server presenting `cert`, verifying clients against `bundle`.
pub fn server_config(
    cert: Arc<CertSlot>,
    bundle: Arc<TrustBundle>,
    client_cert_mandatory: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Bundle(e.to_string()))?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(
            bundle,
            client_cert_mandatory,
        )))
        .with_cert_resolver(cert);
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    no_resumption_server(&mut c);
    Ok(Arc::new(c))
}

/// A TLS 1.3 client verifying servers against `bundle` and presenting `cert`
/// when it has one.
pub fn client_config(
    cert: Option<Arc<CertSlot>>,
    bundle: Arc<TrustBundle>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Bundle(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(bundle)));
    let mut c = match cert {
        Some(slot) => b.with_client_cert_resolver(slot),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c.enable_sni = false;
    // See `no_resumption_server`.
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// Session resumption is off on both sides: a resumed TLS 1.3 session skips
/// certificate verification, so after a CA rotation removed a root (or a
/// certificate expired) a resumed session would still be accepted. Mesh
/// connections are long-lived and pooled, so full handshakes cost little.
fn no_resumption_server(c: &mut ServerConfig) {
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
}

/// The placeholder server name for [`client_config`] connections.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::try_from(MESH_SERVER_NAME).expect("a valid DNS name")
}

/// The verified SPIFFE ID of the peer of a finished handshake.
pub fn peer_identity(peer_certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    peer_certs
        .and_then(|c| c.first())
        .and_then(|leaf| svid::spiffe_id(leaf).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct TestCa {
        root_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            root_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// (chain PEM, key PEM) for `uri`, valid from `from` to `to` (offsets from now).
    fn leaf(ca: &TestCa, uri: &str, from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(from);
        p.not_after = now + time::Duration::seconds(to);
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn slot(chain_key: &(String, String)) -> Arc<CertSlot> {
        let s = Arc::new(CertSlot::new());
        s.set_pem(&chain_key.0, &chain_key.1).unwrap();
        s
    }

    /// Runs one handshake + echo; returns what each side saw of the other.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<(Option<SpiffeId>, Option<SpiffeId>), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            assert_eq!(
                conn.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            let peer = peer_identity(conn.peer_certificates());
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            tls.write_all(&b).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(peer)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client_side = async {
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(mesh_server_name(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let peer = peer_identity(tls.get_ref().1.peer_certificates());
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(peer)
        };
        let client_result = tokio::time::timeout(Duration::from_secs(5), client_side)
            .await
            .map_err(|_| "timeout")?;
        let server_result = srv.await.unwrap();
        match (client_result, server_result) {
            (Ok(c), Ok(s)) => Ok((c, s)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    const A: &str = "spiffe://cluster.local/ns/shop/sa/cart";
    const B: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

    #[tokio::test]
    async fn mutual_tls_13_shows_each_side_the_others_spiffe_id() {
        let ca = ca();
        let bundle = Arc::new(TrustBundle::new(std::slice::from_ref(&ca.root_pem)).unwrap());
        let server = server_config(
            slot(&leaf(&ca, A, -60, 3600)),
            bundle.clone(),
            true,
            &[ALPN_H2],
        )
        .unwrap();
        let client =
            client_config(Some(slot(&leaf(&ca, B, -60, 3600))), bundle, &[ALPN_H2]).unwrap();
        let (server_id, client_id) = handshake(server, client).await.unwrap();
        assert_eq!(server_id.unwrap().to_string(), A);
        assert_eq!(client_id.unwrap().to_string(), B);
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused() {
        let ca1 = ca();
        let ca2 = ca();
        let bundle1 = Arc::new(TrustBundle::new(std::slice::from_ref(&ca1.root_pem)).unwrap());
        let server =
            server_config(slot(&leaf(&ca1, A, -60, 3600)), bundle1.clone(), true, &[]).unwrap();
        // The client trusts the server but presents a certificate of CA 2.
        let both =
            Arc::new(TrustBundle::new(&[ca1.root_pem.clone(), ca2.root_pem.clone()]).unwrap());
        let client = client_config(Some(slot(&leaf(&ca2, B, -60, 3600))), both, &[]).unwrap();
        assert!(handshake(server, client).await.is_err());
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused() {
        let ca = ca();
        let bundle = Arc::new(TrustBundle::new(std::slice::from_ref(&ca.root_pem)).unwrap());
        let server =
            server_config(slot(&leaf(&ca, A, -60, 3600)), bundle.clone(), true, &[]).unwrap();
        let client = client_config(Some(slot(&leaf(&ca, B, -7200, -3600))), bundle, &[]).unwrap();
        let err = handshake(server, client).await.unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused_when_mandatory_and_let_through_when_optional(
    ) {
        let ca = ca();
        let bundle = Arc::new(TrustBundle::new(std::slice::from_ref(&ca.root_pem)).unwrap());
        let cert = slot(&leaf(&ca, A, -60, 3600));
        let strict = server_config(cert.clone(), bundle.clone(), true, &[]).unwrap();
        let lenient = server_config(cert, bundle.clone(), false, &[]).unwrap();
        let anonymous = client_config(None, bundle, &[]).unwrap();
        assert!(handshake(strict, anonymous.clone()).await.is_err());
        let (server_id, client_id) = handshake(lenient, anonymous).await.unwrap();
        assert_eq!(server_id.unwrap().to_string(), A);
        assert!(client_id.is_none());
    }

    #[tokio::test]
    async fn a_swapped_certificate_serves_new_handshakes() {
        let ca = ca();
        let bundle = Arc::new(TrustBundle::new(std::slice::from_ref(&ca.root_pem)).unwrap());
        let cert = slot(&leaf(&ca, A, -60, 3600));
        let server = server_config(cert.clone(), bundle.clone(), false, &[]).unwrap();
        let client = client_config(None, bundle, &[]).unwrap();
        let first = handshake(server.clone(), client.clone())
            .await
            .unwrap()
            .0
            .unwrap();
        let (chain, key) = leaf(&ca, B, -60, 3600);
        cert.set_pem(&chain, &key).unwrap();
        let second = handshake(server, client).await.unwrap().0.unwrap();
        assert_eq!(
            (first.to_string().as_str(), second.to_string().as_str()),
            (A, B)
        );
    }

    #[tokio::test]
    async fn bundle_updates_apply_to_new_handshakes_and_a_bad_bundle_is_refused() {
        let old = ca();
        let new = ca();
        let bundle = Arc::new(TrustBundle::new(std::slice::from_ref(&old.root_pem)).unwrap());
        let server =
            server_config(slot(&leaf(&old, A, -60, 3600)), bundle.clone(), true, &[]).unwrap();
        let client_new =
            client_config(Some(slot(&leaf(&new, B, -60, 3600))), bundle.clone(), &[]).unwrap();
        let client_old =
            client_config(Some(slot(&leaf(&old, B, -60, 3600))), bundle.clone(), &[]).unwrap();
        assert!(handshake(server.clone(), client_new.clone()).await.is_err());
        // During a rotation both roots are trusted.
        assert!(bundle
            .update(&[old.root_pem.clone(), new.root_pem.clone()])
            .unwrap());
        handshake(server.clone(), client_new.clone()).await.unwrap();
        handshake(server.clone(), client_old.clone()).await.unwrap();
        // A bad bundle is refused and the current one stays.
        assert!(bundle.update(&["garbage".to_string()]).is_err());
        handshake(server.clone(), client_old.clone()).await.unwrap();
        assert_eq!(bundle.fingerprints().len(), 2);
        // The old root removed: certificates it issued are refused.
        assert!(bundle.update(std::slice::from_ref(&new.root_pem)).unwrap());
        assert!(handshake(server, client_old).await.is_err());
    }
}
