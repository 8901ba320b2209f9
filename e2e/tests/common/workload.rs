//! A gRPC channel to the control plane with a real workload certificate
//! for `ns`/`sa`: a join token, a CSR and Identity.Certify, as a sidecar
//! bootstraps (weft_proxy::identity::workload_channel). Shared by the test
//! binaries that call the control plane as a workload (`#[path]`-included).

use std::time::Duration;
use weft_testbed::Mesh;

pub async fn workload_channel(mesh: &Mesh, ns: &str, sa: &str) -> tonic::transport::Channel {
    let token = mesh.token(ns, sa);
    let id = xds_proto::spiffe::SpiffeId::new("cluster.local", ns, sa).expect("id");
    let bundle = std::fs::read_to_string(mesh.pki().ca_bundle).expect("bundle");
    weft_proxy::identity::workload_channel(
        id,
        format!("{sa}-test"),
        &mesh.cp_url(),
        weft_proxy::identity::Credential::Token(token),
        &bundle,
        Duration::from_secs(20),
    )
    .await
    .expect("workload channel")
    .1
}
