//! The identities the control plane and weftctl hold, and weftctl's admin
//! certificate directory (`cert.pem`, `key.pem`, `ca.pem`; 0600): written
//! by the control plane into `<data-dir>/admin/` and renewed at half life,
//! or by `weftctl certs admin-cert`.

use crate::ca::{write_private, CaError, CertificateAuthority};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use weft_mesh_tls::identities::{
    admin_identity, ADMIN_ACCOUNT, ADMIN_NAMESPACE, CONTROL_ACCOUNT,
};

/// Lifetime of the admin certificate the control plane writes.
pub const ADMIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

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

/// Rewrites the admin certificate in `dir` unless it has more than half of
/// its life left and matches the current issuer and roots.
pub fn write_admin_cert_if_needed(
    dir: &Path,
    ca: &CertificateAuthority,
    roots: &[String],
) -> Result<(), CaError> {
    let files = AdminFiles::in_dir(dir);
    let fresh = std::fs::read_to_string(&files.cert)
        .ok()
        .and_then(|pem| weft_mesh_tls::svid::certs_from_pem(&pem).ok())
        .and_then(|certs| weft_mesh_tls::svid::inspect(&certs[0]).ok())
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
