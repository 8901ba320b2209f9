//! Connecting to the control plane's Admin API as the admin identity: the
//! client certificate, key and CA bundle in one directory (what the control
//! plane writes to `<data-dir>/admin/`, or `weftctl certs admin-cert`).

use anyhow::{anyhow, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft_identity::channel::ControlPlane;
use weft_identity::tls::{CertSlot, TrustBundle};
use xds_proto::v1::admin_client::AdminClient;

/// How weftctl authenticates.
#[derive(Debug, Clone)]
pub enum AdminAuth {
    /// Directory holding cert.pem, key.pem and ca.pem.
    Certs(PathBuf),
    /// Plaintext to a control plane started with --insecure-dev.
    Insecure,
}

pub fn control_plane(auth: &AdminAuth) -> anyhow::Result<ControlPlane> {
    match auth {
        AdminAuth::Insecure => Ok(ControlPlane::Insecure),
        AdminAuth::Certs(dir) => {
            let read = |name: &str| -> anyhow::Result<String> {
                let p = dir.join(name);
                std::fs::read_to_string(&p).with_context(|| {
                    format!(
                        "no admin certificate: cannot read {} (run weft-control once to create {}/, or `weftctl certs admin-cert --data-dir <control-plane data dir> --out {}`; set --certs or WEFT_CERTS)",
                        p.display(),
                        dir.display(),
                        dir.display()
                    )
                })
            };
            let cert = Arc::new(CertSlot::new());
            cert.set_pem(&read("cert.pem")?, &read("key.pem")?)
                .with_context(|| format!("admin certificate in {}", dir.display()))?;
            let bundle = Arc::new(
                TrustBundle::new(&[read("ca.pem")?])
                    .with_context(|| format!("{}/ca.pem", dir.display()))?,
            );
            Ok(ControlPlane::mtls(cert, bundle))
        }
    }
}

pub async fn admin_client(
    url: &str,
    auth: &AdminAuth,
) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let channel = control_plane(auth)?
        .connect(url, Duration::from_secs(3))
        .await
        .map_err(|e| {
            anyhow!("{e} (is weft-control running? set --control-plane or WEFT_CONTROL_PLANE)")
        })?;
    Ok(AdminClient::new(channel))
}

/// `<data-dir>/admin`: where the control plane writes weftctl's certificate.
pub fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}
