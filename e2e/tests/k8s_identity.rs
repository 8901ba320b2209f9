//! Pod identity from Kubernetes ServiceAccount tokens (issue 15): the
//! control plane verifies a projected token (signed here with a test key,
//! ES256) against a JWKS the test serves over HTTP, as the API server's
//! `/openid/v1/jwks` would be. A sidecar started with `--token-file` gets
//! `spiffe://cluster.local/ns/<ns>/sa/<sa>`; a wrong audience, an expired
//! token, a wrong issuer, an unknown key and a namespace mismatch are each
//! refused with the reason.

use std::io::{Read, Write};
use std::time::Duration;
use weft_testbed::k8s_issuer::{Issuer, ISSUER};
use weft_testbed::*;
use xds_proto::v1::identity_client::IdentityClient;
use xds_proto::v1::CertifyRequest;

/// Serves `body` as the JWKS on `addr` until the test process ends.
fn serve_jwks(listener: std::net::TcpListener, body: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// Identity.Certify with `token` for ns/sa, as a sidecar's first CSR.
fn certify(mesh: &Mesh, ns: &str, sa: &str, token: &str) -> Result<String, String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let id = xds_proto::spiffe::SpiffeId::new("cluster.local", ns, sa).expect("id");
        let (csr, _key) = weft_mesh_tls::svid::csr_for(&id).expect("csr");
        let bundle = std::fs::read_to_string(mesh.pki().ca_bundle).expect("bundle");
        let bundle =
            std::sync::Arc::new(weft_mesh_tls::tls::TrustBundle::new(&[bundle]).expect("bundle"));
        let channel = weft_mesh_tls::channel::ControlPlane::tls_no_client_cert(bundle)
            .connect(&mesh.cp_url(), Duration::from_secs(5))
            .await
            .expect("channel");
        IdentityClient::new(channel)
            .certify(CertifyRequest {
                csr_pem: csr,
                token: token.to_string(),
                ttl_seconds: 0,
                node: format!("{sa}-0"),
            })
            .await
            .map(|r| r.into_inner().spiffe_id)
            .map_err(|s| s.message().to_string())
    })
}

#[test]
fn a_projected_service_account_token_gets_its_pods_identity_and_bad_ones_are_refused_with_the_reason(
) {
    let issuer = Issuer::new("cluster-key-1");
    let mut mesh = Mesh::prepare("k8s-identity", &[]);
    let jwks = std::net::TcpListener::bind((mesh.ip(9), 0)).expect("jwks listener");
    let url = format!("http://{}/openid/v1/jwks", jwks.local_addr().expect("addr"));
    serve_jwks(jwks, issuer.jwks());
    mesh.control_extra = ["--k8s-jwks", &url, "--k8s-issuer", ISSUER]
        .map(String::from)
        .to_vec();
    mesh.start_control();

    // A real sidecar reading its token from a file, as a pod's
    // projected volume gives it.
    let token_file = mesh.dir.join("token");
    std::fs::write(&token_file, issuer.token("shop", "web", |_| {})).expect("token file");
    let auth = ProxyAuth::TokenFile {
        path: token_file,
        ca_bundle: mesh.pki().ca_bundle,
    };
    let addrs = mesh.proxy_with_auth("web", "shop", 1, 2, &[], auth);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = mesh.admin_get(addrs.admin, "/certs");
        let certs: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code == 200
            && certs["identity"] == "spiffe://cluster.local/ns/shop/sa/web"
            && certs["chain"][0]["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/web"
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let ok = certify(&mesh, "shop", "api", &issuer.token("shop", "api", |_| {}));
    assert_eq!(ok.as_deref(), Ok("spiffe://cluster.local/ns/shop/sa/api"));
    let refused = |token: String, ns: &str| certify(&mesh, ns, "api", &token).unwrap_err();
    let why = refused(
        issuer.token("shop", "api", |c| {
            c["aud"] = "https://kubernetes.default.svc".into()
        }),
        "shop",
    );
    assert!(why.contains("audience"), "{why}");
    let why = refused(
        issuer.token("shop", "api", |c| {
            c["exp"] = (c["iat"].as_u64().unwrap() - 10).into();
        }),
        "shop",
    );
    assert!(why.contains("expired"), "{why}");
    let why = refused(
        issuer.token("shop", "api", |c| c["iss"] = "https://evil.example".into()),
        "shop",
    );
    assert!(why.contains("issuer \"https://evil.example\""), "{why}");
    let stranger = Issuer::new("not-the-clusters");
    let why = refused(stranger.token("shop", "api", |_| {}), "shop");
    assert!(why.contains("unknown key"), "{why}");
    // A token for shop/api used to ask for another namespace's identity.
    let why = refused(issuer.token("shop", "api", |_| {}), "payments");
    assert!(
        why.contains("asks for spiffe://cluster.local/ns/payments/sa/api, but the credential grants spiffe://cluster.local/ns/shop/sa/api"),
        "{why}"
    );
    // The claims disagreeing with the subject.
    let why = refused(
        issuer.token("shop", "api", |c| {
            c["kubernetes.io"]["namespace"] = "kube-system".into()
        }),
        "shop",
    );
    assert!(why.contains("subject"), "{why}");
}
