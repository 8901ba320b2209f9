//! Connecting to the control plane's Admin API as the admin identity: the
//! client certificate, key and CA bundle in one directory (what the control
//! plane writes to `<data-dir>/admin/`, or `weftctl certs admin-cert`).

use crate::channel::{ChannelError, ControlPlane};
use crate::tls::{CertSlot, TlsError, TrustBundle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::v1::admin_client::AdminClient;

/// How weftctl authenticates.
#[derive(Debug, Clone)]
pub enum AdminAuth {
    /// Directory holding cert.pem, key.pem and ca.pem.
    Certs(PathBuf),
    /// Plaintext to a control plane started with --insecure-dev.
    Insecure,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("no admin certificate: cannot read {} ({reason}) (run weft-control once to create {}/, or `weftctl certs admin-cert --data-dir <control-plane data dir> --out {}`; set --certs or WEFT_CERTS)", path.display(), dir.display(), dir.display())]
    Missing {
        path: PathBuf,
        dir: PathBuf,
        reason: std::io::Error,
    },
    #[error("admin certificate in {}: {source}", dir.display())]
    Certificate { dir: PathBuf, source: TlsError },
    #[error("{}/ca.pem: {source}", dir.display())]
    Bundle { dir: PathBuf, source: TlsError },
    #[error("{0} (is weft-control running? set --control-plane or WEFT_CONTROL_PLANE)")]
    Connect(ChannelError),
}

/// The channel settings `auth` calls for.
pub fn control_plane(auth: &AdminAuth) -> Result<ControlPlane, AdminClientError> {
    let dir = match auth {
        AdminAuth::Insecure => return Ok(ControlPlane::Insecure),
        AdminAuth::Certs(dir) => dir,
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|reason| AdminClientError::Missing {
            path,
            dir: dir.clone(),
            reason,
        })
    };
    let cert = Arc::new(CertSlot::new());
    cert.set_pem(&read("cert.pem")?, &read("key.pem")?)
        .map_err(|source| AdminClientError::Certificate {
            dir: dir.clone(),
            source,
        })?;
    let bundle = Arc::new(TrustBundle::new(&[read("ca.pem")?]).map_err(|source| {
        AdminClientError::Bundle {
            dir: dir.clone(),
            source,
        }
    })?);
    Ok(ControlPlane::mtls(cert, bundle))
}

/// A channel to the control plane at `url`, authenticated as `auth` says
/// (for the Admin API, the registry, ...).
pub async fn channel(
    url: &str,
    auth: &AdminAuth,
) -> Result<tonic::transport::Channel, AdminClientError> {
    control_plane(auth)?
        .connect(url, Duration::from_secs(3))
        .await
        .map_err(AdminClientError::Connect)
}

/// An Admin API client for the control plane at `url`.
pub async fn admin_client(
    url: &str,
    auth: &AdminAuth,
) -> Result<AdminClient<tonic::transport::Channel>, AdminClientError> {
    Ok(AdminClient::new(channel(url, auth).await?))
}

/// `<data-dir>/admin`: where the control plane writes weftctl's certificate.
pub fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}
