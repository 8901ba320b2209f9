//! The control plane's own certificates, issued by its CA:
//! - its gRPC serving certificate (`spiffe://<td>/ns/weft-system/sa/weft-control`),
//!   renewed at half its lifetime and swapped without a restart;
//! - weftctl's admin client certificate in `<data-dir>/admin/` (cert.pem,
//!   key.pem, ca.pem; 0600), rewritten when less than half its life is left;
//! - `<data-dir>/ca-bundle.pem`: the roots a proxy needs to trust the control
//!   plane on its first connection.

use crate::ca::{write_private, CaError, CertificateAuthority};
use crate::caller::{admin_identity, ADMIN_NAMESPACE, CONTROL_ACCOUNT};
use crate::trust::Trust;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weft_identity::tls::{CertSlot, TrustBundle};
use xds_proto::spiffe::SpiffeId;

const SERVING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const ADMIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub const ADMIN_DIR: &str = "admin";
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum LocalCertError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Tls(#[from] weft_identity::tls::TlsError),
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
        let control_id = SpiffeId {
            trust_domain: td.clone(),
            namespace: ADMIN_NAMESPACE.into(),
            service_account: CONTROL_ACCOUNT.into(),
        };
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
                    r = trust_rx.changed() => r.is_ok(),
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

/// Paths of an admin certificate directory.
pub struct AdminFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl AdminFiles {
    pub fn in_dir(dir: &Path) -> AdminFiles {
        AdminFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        }
    }
}

/// Writes a fresh admin certificate into `dir`.
pub fn write_admin_cert(
    dir: &Path,
    ca: &CertificateAuthority,
    roots: &[String],
    ttl: Duration,
) -> Result<SystemTime, CaError> {
    std::fs::create_dir_all(dir).map_err(|e| CaError::File {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let files = AdminFiles::in_dir(dir);
    let (issued, key) = ca.issue_local(&admin_identity(ca.trust_domain()), ttl)?;
    write_private(&files.key, &key)?;
    write_private(&files.cert, &issued.chain_pem)?;
    write_private(&files.ca, &roots.concat())?;
    Ok(issued.not_after)
}

fn write_admin_cert_if_needed(
    dir: &Path,
    ca: &CertificateAuthority,
    roots: &[String],
) -> Result<(), CaError> {
    let files = AdminFiles::in_dir(dir);
    let fresh = std::fs::read_to_string(&files.cert)
        .ok()
        .and_then(|pem| weft_identity::svid::certs_from_pem(&pem).ok())
        .and_then(|certs| weft_identity::svid::inspect(&certs[0]).ok())
        .map(|info| {
            let left = info
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            left > ADMIN_TTL / 2
        })
        .unwrap_or(false);
    let same_roots = std::fs::read_to_string(&files.ca).ok() == Some(roots.concat());
    // Issued by the current issuing CA (after a rotation it must be re-issued).
    let same_issuer = std::fs::read_to_string(&files.cert)
        .map(|pem| pem.contains(ca.issuer_chain_pem().trim()))
        .unwrap_or(false);
    if fresh && same_roots && same_issuer {
        return Ok(());
    }
    write_admin_cert(dir, ca, roots, ADMIN_TTL)?;
    tracing::info!(dir = %dir.display(), "wrote the admin client certificate for weftctl");
    Ok(())
}
