//! The sidecar's workload identity: a key pair generated here (the private
//! key never leaves the process), a CSR for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, signed by
//! the control plane's Identity service. The first certificate is paid for
//! with the bootstrap join token over TLS verified against the bootstrap CA
//! bundle; renewals authenticate with the current certificate. Renewal runs
//! at a jittered point around half the lifetime (or at once when the control
//! plane pushes a rotation) and swaps key and chain atomically: new
//! connections use the new certificate, established ones are unaffected.

use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use weft_mesh_tls::channel::ControlPlane;
use weft_mesh_tls::tls::{CertSlot, TrustBundle};
use weft_mesh_tls::SpiffeId;
use xds_proto::v1::{identity_client::IdentityClient, CertifyRequest};

pub const RENEWALS: &str = "weft_certificate_renewals_total";
pub const EXPIRY: &str = "weft_certificate_expiry_timestamp_seconds";
pub const ROTATIONS: &str = "weft_certificate_rotation_requests_total";

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What `/certs` reports about the current certificate.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CertStatus {
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub renew_at_unix: i64,
    pub renewals: u64,
}

/// What the first certificate (or one after expiry) is paid for with.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A join token (`weftctl token create`).
    Token(String),
    /// A file holding the credential, read at each use: the pod's projected
    /// service-account token, which the kubelet rotates.
    File(std::path::PathBuf),
}

impl Credential {
    fn read(&self) -> Result<String, IdentityError> {
        match self {
            Credential::Token(t) => Ok(t.clone()),
            Credential::File(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .map_err(|e| IdentityError::Credential(format!("{}: {e}", p.display()))),
        }
    }
}

pub struct WorkloadIdentity {
    pub id: SpiffeId,
    /// The node name, sent with every CSR (CA rotation tracks who renewed).
    node: String,
    pub cert: Arc<CertSlot>,
    pub bundle: Arc<TrustBundle>,
    control_plane: String,
    credential: Credential,
    status: Mutex<CertStatus>,
    renew_now: Notify,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("id", &self.id.to_string())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Tls(#[from] weft_mesh_tls::tls::TlsError),
    #[error(transparent)]
    Channel(#[from] weft_mesh_tls::channel::ChannelError),
    #[error("cannot build a CSR: {0}")]
    Csr(String),
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
    #[error("cannot read the bootstrap credential {0}")]
    Credential(String),
}

/// A workload's own mTLS channel to the control plane, for programs that
/// call its APIs as that workload (queue producers and consumers, the demo,
/// tests): gets a certificate with `credential` (within `within`) and
/// connects with it. Keep the identity while the channel is in use.
pub async fn workload_channel(
    id: SpiffeId,
    node: String,
    control_plane: &str,
    credential: Credential,
    bundle_pem: &str,
    within: Duration,
) -> Result<(Arc<WorkloadIdentity>, tonic::transport::Channel), IdentityError> {
    let identity =
        WorkloadIdentity::new(id, node, control_plane.to_string(), credential, bundle_pem)?;
    tokio::time::timeout(within, identity.bootstrap())
        .await
        .map_err(|_| IdentityError::Refused(format!("no certificate within {within:?}")))?;
    let channel = identity
        .control_plane()
        .connect(control_plane, Duration::from_secs(5))
        .await?;
    Ok((identity, channel))
}

impl WorkloadIdentity {
    pub fn new(
        id: SpiffeId,
        node: String,
        control_plane: String,
        credential: Credential,
        bootstrap_bundle_pem: &str,
    ) -> Result<Arc<Self>, IdentityError> {
        let bundle = Arc::new(TrustBundle::new(&[bootstrap_bundle_pem.to_string()])?);
        Ok(Arc::new(WorkloadIdentity {
            id,
            node,
            cert: Arc::new(CertSlot::new()),
            bundle,
            control_plane,
            credential,
            status: Mutex::new(CertStatus::default()),
            renew_now: Notify::new(),
        }))
    }

    pub fn status(&self) -> CertStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn has_certificate(&self) -> bool {
        self.cert.get().is_some()
    }

    /// The mTLS connection to the control plane (current certificate).
    pub fn control_plane(&self) -> ControlPlane {
        ControlPlane::mtls(self.cert.clone(), self.bundle.clone())
    }

    /// Asks for a new certificate now (a pushed CertificateRotation).
    pub fn renew_soon(&self) {
        self.renew_now.notify_one();
    }

    /// Applies the pushed trust resources: the bundle (already validated by
    /// the caller) and a rotation request that covers the current
    /// certificate.
    pub fn apply_trust(&self, roots: Option<&[String]>, rotate_before_unix: i64) {
        if let Some(roots) = roots {
            match self.bundle.update(roots) {
                Ok(true) => tracing::info!(roots = roots.len(), "trust bundle updated"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "trust bundle refused"),
            }
        }
        if rotate_before_unix > 0 && self.status().not_before_unix < rotate_before_unix {
            metrics::counter!(ROTATIONS).increment(1);
            self.renew_soon();
        }
    }

    /// Gets the first certificate, retrying with backoff until it succeeds.
    pub async fn bootstrap(&self) {
        let mut delay = RETRY_MIN;
        loop {
            match self.certify().await {
                Ok(()) => return,
                Err(e) => {
                    metrics::counter!(RENEWALS, "result" => "error").increment(1);
                    tracing::error!(identity = %self.id, error = %e, "cannot get a workload certificate; retrying");
                }
            }
            tokio::time::sleep(jitter(delay)).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// Renews forever: at the scheduled point, or when asked.
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            let renew_at = self.status().renew_at_unix;
            let wait = Duration::from_secs_f64((renew_at as f64 - unix_now_f64()).max(0.0));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.renew_now.notified() => {
                    tracing::info!(identity = %self.id, "renewal requested by the control plane");
                }
            }
            let mut delay = RETRY_MIN;
            loop {
                match self.certify().await {
                    Ok(()) => break,
                    Err(e) => {
                        metrics::counter!(RENEWALS, "result" => "error").increment(1);
                        tracing::warn!(identity = %self.id, error = %e, "certificate renewal failed; retrying");
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    /// One CSR round trip: new key, CSR, sign, install.
    async fn certify(&self) -> Result<(), IdentityError> {
        let (csr, key) = weft_mesh_tls::svid::csr_for(&self.id)
            .map_err(|e| IdentityError::Csr(e.to_string()))?;
        // Renewal: prove the identity with the current certificate. First
        // certificate (or an expired one): the bootstrap token.
        let have_valid = self.status().not_after_unix > unix_now_f64() as i64 + 1;
        let (cp, token) = if have_valid && self.has_certificate() {
            (self.control_plane(), String::new())
        } else {
            (
                ControlPlane::tls_no_client_cert(self.bundle.clone()),
                self.credential.read()?,
            )
        };
        let channel = cp
            .connect(&self.control_plane, Duration::from_secs(5))
            .await?;
        let resp = IdentityClient::new(channel)
            .certify(CertifyRequest {
                csr_pem: csr,
                token,
                ttl_seconds: 0,
                node: self.node.clone(),
            })
            .await
            .map_err(|s| IdentityError::Refused(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        self.cert
            .set_pem(&resp.certificate_chain_pem, &key.serialize_pem())?;
        if !resp.trust_bundle_pem.is_empty() {
            self.bundle.update(&resp.trust_bundle_pem)?;
        }
        let now = unix_now_f64();
        let lifetime = (resp.not_after_unix as f64 - now).max(1.0);
        // Around half the lifetime, jittered so a fleet does not renew at once.
        let renew_at = now + lifetime * rand::rng().random_range(0.4..0.6);
        let mut st = self
            .status
            .lock()
            .map_err(|_| IdentityError::Csr("poisoned".into()))?;
        st.serial = resp.serial.clone();
        st.not_before_unix = now as i64;
        st.not_after_unix = resp.not_after_unix;
        st.renew_at_unix = renew_at as i64;
        st.renewals += 1;
        drop(st);
        metrics::counter!(RENEWALS, "result" => "ok").increment(1);
        metrics::gauge!(EXPIRY).set(resp.not_after_unix as f64);
        tracing::info!(identity = %self.id, serial = %resp.serial, not_after = resp.not_after_unix, "workload certificate installed");
        Ok(())
    }
}

/// Somewhere in [d/2, d]: a fleet retrying after an outage spreads out.
fn jitter(d: Duration) -> Duration {
    rand::rng().random_range(d / 2..=d)
}

fn unix_now_f64() -> f64 {
    xds_proto::units::unix_ms(SystemTime::now()) as f64 / 1000.0
}
