//! The control plane's own certificates, issued by its CA:
//! - its gRPC serving certificate (`spiffe://<td>/ns/weft-system/sa/weft-control`),
//!   renewed at half its lifetime and swapped without a restart;
//! - weftctl's admin client certificate in `<data-dir>/admin/` (cert.pem,
//!   key.pem, ca.pem; 0600), rewritten when less than half its life is left;
//! - `<data-dir>/ca-bundle.pem`: the roots a proxy needs to trust the control
//!   plane on its first connection.

use crate::trust::Trust;
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weft_certs::admin_cert::write_admin_cert_if_needed;
use weft_certs::ca::{write_private, CaError, CertificateAuthority};
use weft_mesh_tls::tls::{CertSlot, TrustBundle};
use xds_proto::spiffe::SpiffeId;

const SERVING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub const ADMIN_DIR: &str = "admin";
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum LocalCertError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Tls(#[from] weft_mesh_tls::tls::TlsError),
}

pub struct LocalCerts {
    server: Arc<CertSlot>,
    bundle: Arc<TrustBundle>,
}

impl LocalCerts {
    /// Issues what is missing and starts the renewal task.
    pub fn start(
        data_dir: &Path,
        ca: Arc<ArcSwap<CertificateAuthority>>,
        trust: Arc<Trust>,
    ) -> Result<LocalCerts, LocalCertError> {
        let authority = ca.load_full();
        let td = authority.trust_domain().to_string();
        let roots = trust.current().roots_pem.clone();
        let bundle = Arc::new(TrustBundle::new(&roots)?);
        write_private(&data_dir.join(BUNDLE_FILE), &roots.concat())?;
        let server = Arc::new(CertSlot::new());
        let control_id = weft_mesh_tls::identities::control_identity(&td);
        let not_after = issue_into(&authority, &control_id, &server)?;
        write_admin_cert_if_needed(&data_dir.join(ADMIN_DIR), &authority, &roots)?;

        let slot = server.clone();
        let admin_dir = data_dir.join(ADMIN_DIR);
        let bundle_file = data_dir.join(BUNDLE_FILE);
        let live_bundle = bundle.clone();
        let mut trust_rx = trust.subscribe();
        tokio::spawn(async move {
            let mut not_after = not_after;
            loop {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                // Renew at half life, or at once when the trust changes (a
                // CA rotation switches the issuer).
                let trust_changed = tokio::select! {
                    _ = tokio::time::sleep((left / 2).max(Duration::from_secs(1))) => false,
                    r = trust_rx.changed() => match r {
                        Ok(()) => true,
                        // The trust source is gone: the control plane is
                        // shutting down (renewing now would spin).
                        Err(_) => return,
                    },
                };
                let roots = trust_rx.borrow_and_update().roots_pem.clone();
                if trust_changed {
                    if let Err(e) = live_bundle.update(&roots) {
                        tracing::error!(error = %e, "cannot install the new trust bundle");
                    }
                    if let Err(e) = write_private(&bundle_file, &roots.concat()) {
                        tracing::error!(error = %e, "cannot write the CA bundle file");
                    }
                }
                let authority = ca.load_full();
                match issue_into(&authority, &control_id, &slot) {
                    Ok(t) => {
                        not_after = t;
                        tracing::info!("control-plane serving certificate renewed");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the control-plane certificate; retrying in 10s");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
                if let Err(e) = write_admin_cert_if_needed(&admin_dir, &authority, &roots) {
                    tracing::error!(error = %e, "cannot renew the admin certificate");
                }
            }
        });
        Ok(LocalCerts { server, bundle })
    }

    pub fn server_cert(&self) -> Arc<CertSlot> {
        self.server.clone()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.clone()
    }
}

fn issue_into(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    slot: &CertSlot,
) -> Result<SystemTime, LocalCertError> {
    let (issued, key) = ca.issue_local(id, SERVING_TTL)?;
    slot.set_pem(&issued.chain_pem, &key)?;
    Ok(issued.not_after)
}
