//! `weft.v1.Identity`: signs workload CSRs. The first certificate is paid for
//! with a bootstrap credential (join token); renewals are authenticated by the
//! caller's current certificate on the mTLS connection. Every refusal is
//! logged with its reason and counted.

use crate::join_token::BootstrapVerifier;
use crate::proxy_status::ProxyRegistry;
use crate::trust::Trust;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tonic::{Request, Response, Status};
use weft_certs::ca::{CaError, CertificateAuthority};
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1::identity_server::Identity;
use xds_proto::v1::{CertifyRequest, CertifyResponse};

pub const CSR_TOTAL: &str = "weft_control_csr_total";
pub const CSR_DURATION: &str = "weft_control_csr_sign_duration_seconds";

pub struct IdentityService {
    ca: Arc<arc_swap::ArcSwap<CertificateAuthority>>,
    verifier: Arc<dyn BootstrapVerifier>,
    default_ttl: Duration,
    trust: Arc<Trust>,
    registry: Arc<ProxyRegistry>,
}

impl IdentityService {
    pub fn new(
        ca: Arc<arc_swap::ArcSwap<CertificateAuthority>>,
        verifier: Arc<dyn BootstrapVerifier>,
        default_ttl: Duration,
        trust: Arc<Trust>,
        registry: Arc<ProxyRegistry>,
    ) -> Self {
        IdentityService {
            ca,
            verifier,
            default_ttl,
            trust,
            registry,
        }
    }

    /// The identity this request may be certified as.
    fn granted(&self, peer: Option<&SpiffeId>, token: &str) -> Result<SpiffeId, Status> {
        if let Some(id) = peer {
            // Renewal: the caller keeps the identity it already proves.
            return Ok(id.clone());
        }
        if token.is_empty() {
            return Err(Status::unauthenticated(
                "no credential: send a join token (weftctl token create) or connect with a workload certificate",
            ));
        }
        let grant = self
            .verifier
            .verify(token, SystemTime::now())
            .map_err(|e| Status::unauthenticated(format!("join token refused: {e}")))?;
        SpiffeId::new(
            self.ca.load().trust_domain(),
            &grant.namespace,
            &grant.service_account,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

fn refused(reason: &'static str, status: Status) -> Status {
    metrics::counter!(CSR_TOTAL, "result" => reason).increment(1);
    tracing::warn!(reason, error = %status.message(), "certificate request refused");
    status
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let start = Instant::now();
        let peer = crate::caller::peer_of(&request);
        let req = request.into_inner();
        let granted = self
            .granted(peer.as_ref(), &req.token)
            .map_err(|s| refused("unauthenticated", s))?;
        if weft_mesh_tls::identities::is_reserved(&granted) {
            return Err(refused(
                "reserved_identity",
                Status::permission_denied(format!(
                    "{granted} is reserved for the mesh itself and is never issued to a workload"
                )),
            ));
        }
        let ttl = match req.ttl_seconds {
            0 => self.default_ttl,
            s => Duration::from_secs(s).min(self.default_ttl),
        };
        let ca = self.ca.load_full();
        // Signing is CPU work (an ECDSA signature); keep it off the reactor.
        let csr = req.csr_pem;
        let id = granted.clone();
        let issued = tokio::task::spawn_blocking(move || ca.sign(&csr, &id, ttl))
            .await
            .map_err(|e| Status::internal(format!("signer failed: {e}")))?;
        let issued = match issued {
            Ok(i) => i,
            Err(e @ CaError::IdentityMismatch { .. }) => {
                return Err(refused(
                    "identity_mismatch",
                    Status::permission_denied(e.to_string()),
                ))
            }
            Err(e @ CaError::BadCsr(_)) => {
                return Err(refused("bad_csr", Status::invalid_argument(e.to_string())))
            }
            Err(e) => return Err(refused("error", Status::internal(e.to_string()))),
        };
        metrics::counter!(CSR_TOTAL, "result" => "issued").increment(1);
        metrics::histogram!(CSR_DURATION).record(start.elapsed().as_secs_f64());
        tracing::info!(identity = %granted, serial = %issued.serial_hex, renewal = peer.is_some(), "certificate issued");
        let not_after = xds_proto::units::unix_secs(issued.not_after);
        if !req.node.is_empty() {
            let now = xds_proto::units::unix_now();
            self.registry
                .certificate_issued(&granted.namespace, &req.node, now, not_after);
        }
        Ok(Response::new(CertifyResponse {
            certificate_chain_pem: issued.chain_pem,
            trust_bundle_pem: self.trust.current().roots_pem.clone(),
            not_after_unix: not_after,
            serial: issued.serial_hex,
            spiffe_id: granted.to_string(),
        }))
    }
}
