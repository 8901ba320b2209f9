//! End-to-end: the control plane's CA, join tokens, workload certificates and
//! the mTLS control channel, on real processes.

use serde_json::Value;
use std::time::{Duration, Instant};
use weft_testbed::*;

fn certs(mesh: &Mesh, admin: std::net::SocketAddr) -> Value {
    let (code, body) = mesh.admin_get(admin, "/certs");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/certs JSON")
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sidecar_gets_a_spiffe_certificate_from_its_token_and_renews_it_before_expiry_under_traffic() {
    // 3 s certificates: renewal every ~1.5 s, ten renewals under traffic.
    let mut mesh = Mesh::start_with("renewal", &["--cert-ttl", "3s"]);
    let (client, _server) = http_pair(&mut mesh, "http");

    let first = certs(&mesh, client.admin);
    assert_eq!(first["identity"], "spiffe://cluster.local/ns/e2e/sa/client");
    assert_eq!(
        first["chain"][0]["spiffe_id"],
        "spiffe://cluster.local/ns/e2e/sa/client"
    );
    let lifetime = first["chain"][0]["not_after_unix"].as_i64().unwrap()
        - first["chain"][0]["not_before_unix"].as_i64().unwrap();
    assert!(
        lifetime <= 4 + 60 + 1,
        "backdated 60 s, 4 s TTL: {lifetime}"
    );
    assert_eq!(first["trust_bundle_sha256"].as_array().unwrap().len(), 1);

    // Continuous traffic while certificates rotate.
    let load = BackgroundLoad::http_get(client.outbound, "server");
    let start_renewals = first["renewals"].as_u64().unwrap();
    wait_until("ten renewals", Duration::from_secs(40), || {
        certs(&mesh, client.admin)["renewals"].as_u64().unwrap() >= start_renewals + 10
    });
    let (ok, failed) = load.finish();
    let now = certs(&mesh, client.admin);
    assert_ne!(
        now["serial"], first["serial"],
        "a renewal installs a new serial"
    );
    assert!(now["expires_in_seconds"].as_i64().unwrap() > 0);
    assert_eq!(failed, 0, "requests failed during renewals");
    assert!(ok > 100);

    // Visible in metrics on both sides.
    let (_, pm) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(&pm, "weft_certificate_renewals_total", "result=\"ok\"").unwrap_or(0.0) >= 11.0,
        "{pm}"
    );
    let cm = mesh.control_metrics();
    assert!(
        // The client's first certificate and its 10+ renewals, the server's first.
        metric(&cm, "weft_control_csr_total", "result=\"issued\"").unwrap_or(0.0) >= 12.0,
        "{cm}"
    );
    // Both proxies stayed subscribed over mTLS the whole time.
    let status = mesh.proxy_status();
    let synced = status["proxies"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["state"] == "SYNCED").count());
    assert_eq!(synced, Some(2), "{status}");
}

#[test]
fn a_token_for_another_identity_gets_no_certificate_and_the_refusal_is_counted() {
    let mut mesh = Mesh::start("wrong-token");
    let app = mesh.http_app("server");
    // The token grants sa "other"; the sidecar asks for sa "server".
    let token = mesh.token("e2e", "other");
    let p = mesh.proxy_with_token("server", "e2e", app, 2, &[], token);
    wait_until(
        "the refusal in the control plane metrics",
        Duration::from_secs(10),
        || {
            metric(
                &mesh.control_metrics(),
                "weft_control_csr_total",
                "result=\"identity_mismatch\"",
            )
            .unwrap_or(0.0)
                >= 1.0
        },
    );
    let (code, body) = mesh.admin_get(p.admin, "/ready");
    assert_eq!(code, 503);
    assert!(body.contains("certificate"), "{body}");
    // The proxy says why, naming both identities.
    let log = std::fs::read_to_string(mesh.logs().join("proxy-server-2.log")).unwrap();
    assert!(
        log.contains("sa/server") && log.contains("sa/other"),
        "proxy log lacks the reason:\n{log}"
    );
    // It never got as far as discovery.
    let status = mesh.proxy_status();
    assert!(
        status["proxies"].as_array().is_none_or(|a| a.is_empty()),
        "{status}"
    );
}

#[test]
fn the_admin_api_refuses_clients_without_the_admin_certificate() {
    let mesh = Mesh::start("admin-auth");
    let other = Mesh::start("admin-auth-other");
    let run = |args: &[&str]| {
        std::process::Command::new(binaries().path(localmesh::WEFTCTL))
            .arg("--control-plane")
            .arg(mesh.cp_url())
            .args(args)
            .args(["get", "services"])
            .output()
            .unwrap()
    };
    let refused = || {
        metric(
            &mesh.control_metrics(),
            "weft_control_tls_handshake_failures_total",
            "reason=\"refused\"",
        )
        .unwrap_or(0.0)
    };
    let before = refused();
    // The right certificate works.
    let ok = mesh.weftctl(&["get", "services"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Plaintext to the TLS port.
    let plain = run(&["--insecure-dev"]);
    assert!(!plain.status.success());
    // An admin certificate from another mesh's CA: the handshake fails.
    let foreign = other.pki().admin_certs.display().to_string();
    let out = run(&["--certs", &foreign]);
    assert!(!out.status.success());
    // No certificate files at all: a clear local error.
    let none = run(&["--certs", "/nonexistent"]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("no admin certificate"), "{err}");
    // Plaintext and the foreign certificate were both refused in the handshake.
    assert!(refused() >= before + 2.0, "{}", mesh.control_metrics());
}

#[test]
fn certs_inspect_shows_the_admin_chain_and_a_sidecars_certificate() {
    let mut mesh = Mesh::start("inspect");
    let cert = mesh.pki().admin_certs.join("cert.pem");
    let out = mesh.weftctl(&[
        "-o",
        "json",
        "certs",
        "inspect",
        &cert.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["chain"][0]["spiffe_id"],
        "spiffe://cluster.local/ns/weft-system/sa/admin"
    );
    assert_eq!(
        v["chain"][1]["is_ca"], true,
        "the issuing CA follows the leaf"
    );

    let p = mesh.proxy("web", "shop", 1, 2, &[]);
    wait_until("a certificate", Duration::from_secs(10), || {
        mesh.admin_get(p.admin, "/certs").1.contains("spiffe://")
    });
    let out = mesh.weftctl(&[
        "-o",
        "json",
        "certs",
        "inspect",
        "--proxy",
        &p.admin.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identity"], "spiffe://cluster.local/ns/shop/sa/web");
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl s_client` to `addr` with ALPN h2, presenting cert.pem/key.pem
/// from `certs` (a directory as weftctl's admin certificate is written).
fn s_client(addr: std::net::SocketAddr, certs: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let connect = addr.to_string();
    let cert = certs.join("cert.pem").display().to_string();
    let key = certs.join("key.pem").display().to_string();
    let mut args = vec![
        "s_client", "-connect", &connect, "-cert", &cert, "-key", &key, "-alpn", "h2",
    ];
    args.extend_from_slice(extra);
    openssl(&args)
}

#[test]
fn sidecars_talk_tls13_mtls_with_spiffe_ids_and_the_app_sees_the_verified_caller() {
    let mut mesh = Mesh::start("mtls");
    let (client, server) = http_pair(&mut mesh, "http");

    // A forged identity header from the client app is replaced by the
    // verified one.
    let (code, body) = http_request(
        client.outbound,
        "GET",
        "/headers",
        "server",
        &[(
            "x-weft-peer-identity",
            "spiffe://cluster.local/ns/e2e/sa/admin",
        )],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let ids: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("x-weft-peer-identity:"))
        .collect();
    assert_eq!(
        ids,
        vec!["x-weft-peer-identity: spiffe://cluster.local/ns/e2e/sa/client"],
        "{body}"
    );

    // openssl s_client against the server sidecar's inbound, presenting a
    // certificate of the same CA: TLS 1.3, and the sidecar's SPIFFE ID.
    let admin = mesh.pki().admin_certs;
    let ca = admin.join("ca.pem").display().to_string();
    let (_, text) = s_client(
        server.inbound,
        &admin,
        &["-CAfile", &ca, "-showcerts", "-brief"],
    );
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
    let (_, full) = s_client(server.inbound, &admin, &["-CAfile", &ca]);
    let leaf_pem: String = {
        let start = full
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate");
        let end = full.find("-----END CERTIFICATE-----").expect("its end") + 25;
        full[start..end].to_string()
    };
    let leaf = mesh.dir.join("server-leaf.pem");
    std::fs::write(&leaf, leaf_pem).unwrap();
    let (_, san) = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &leaf.display().to_string(),
    ]);
    assert!(
        san.contains("URI:spiffe://cluster.local/ns/e2e/sa/server"),
        "{san}"
    );

    let (_, sm) = http_request(server.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &sm,
            "weft_inbound_peer_total",
            "peer=\"spiffe://cluster.local/ns/e2e/sa/client\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{sm}"
    );
    let (_, m) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &m,
            "weft_mtls_handshakes_total",
            "direction=\"outbound\",result=\"ok\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[test]
fn inbound_refuses_plaintext_foreign_and_expired_certificates_and_counts_them() {
    let mut mesh = Mesh::start("mtls-refuse");
    let other = Mesh::start("mtls-refuse-other");
    let (_client, server) = http_pair(&mut mesh, "http");
    // A plaintext client never starts a handshake: strict mode refuses it
    // at the first byte and counts it as a refused plaintext connection;
    // the two bad certificates are refused mTLS handshakes.
    let refused = || {
        let (_, m) =
            http_request(server.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
        let handshakes = metric(
            &m,
            "weft_mtls_handshakes_total",
            "direction=\"inbound\",result=\"refused\"",
        )
        .unwrap_or(0.0);
        let plaintext = metric(
            &m,
            "weft_inbound_plaintext_connections_total",
            "result=\"refused\"",
        )
        .unwrap_or(0.0);
        (handshakes, plaintext)
    };
    let before = refused();
    // Plaintext HTTP straight at the inbound listener.
    let plain = http_request(server.inbound, "GET", "/", "server", &[], b"");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plaintext got through: {plain:?}"
    );
    // A client certificate from another mesh's CA.
    s_client(server.inbound, &other.pki().admin_certs, &["-brief"]);
    // A certificate of the right CA that has expired: issue a one-second
    // admin certificate from the mesh's CA files and wait it out.
    let expired = mesh.dir.join("expired");
    let out = mesh.weftctl(&[
        "certs",
        "admin-cert",
        "--data-dir",
        &mesh.dir.join("data").display().to_string(),
        "--out",
        &expired.display().to_string(),
        "--ttl",
        "1s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (_, text) = s_client(server.inbound, &expired, &["-brief"]);
    wait_until("all three refusals counted", Duration::from_secs(5), || {
        let (handshakes, plaintext) = refused();
        handshakes >= before.0 + 2.0 && plaintext >= before.1 + 1.0
    });
    let log = std::fs::read_to_string(mesh.logs().join("proxy-server-3.log")).unwrap();
    assert!(
        log.contains("inbound mTLS handshake refused") && log.to_lowercase().contains("expired"),
        "the proxy log names the reason:\n{log}\n{text}"
    );
}

#[test]
fn a_peer_whose_identity_may_not_serve_the_destination_is_refused() {
    let mut mesh = Mesh::start("mtls-mismatch");
    let app = mesh.http_app("server");
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let server = mesh.proxy("server", "e2e", app, 3, &[]);
    // The config says "server" runs as service account "payments"; the
    // sidecar there holds sa/server, so the client must refuse it.
    let yaml = format!(
        "{}---\n{}  serviceAccount: payments\n---\n{}",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        service_yaml("server", "e2e", app, "http", server.inbound),
        http_route_yaml("server", "e2e", &["client"], &["server"], "server", app)
    );
    let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 2);
    let (code, body) = http_request(client.outbound, "GET", "/", "server", &[], b"").unwrap();
    assert_eq!(code, 502, "{body}");
    // Nothing reached the server: the client refused it before sending.
    let (_, sm) = http_request(server.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert_eq!(
        metric(&sm, "weft_inbound_peer_total", "").unwrap_or(0.0),
        0.0,
        "{sm}"
    );
    let (_, m) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &m,
            "weft_mtls_handshakes_total",
            "result=\"identity_mismatch\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    let log = std::fs::read_to_string(mesh.logs().join("proxy-client-2.log")).unwrap();
    assert!(
        log.contains("sa/payments") && log.contains("sa/server"),
        "{log}"
    );
}

#[test]
fn an_endpoint_without_a_sidecar_is_reached_in_plaintext() {
    let mut mesh = Mesh::start("unmeshed");
    let app = mesh.http_app("legacy");
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: legacy, namespace: e2e}}\nspec:\n  ports: [{{port: {app}, protocol: http}}]\n  endpoints: [{{address: 127.0.0.1, sidecar: false}}]\n---\n{}",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        http_route_yaml("legacy", "e2e", &["client"], &["legacy"], "legacy", app)
    );
    let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 1);
    let (code, body) =
        http_request(client.outbound, "GET", "/headers", "legacy", &[], b"").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("x-weft-peer-identity"), "{body}");
    // Marked as plaintext in metrics, and nothing went out as mTLS.
    let (_, m) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    let sec = |s: &str| {
        metric(
            &m,
            "weft_outbound_security_total",
            &format!("protocol=\"http\",security=\"{s}\""),
        )
        .unwrap_or(0.0)
    };
    assert!(sec("plaintext") >= 1.0, "{m}");
    assert_eq!(sec("mtls"), 0.0, "{m}");
}

#[test]
fn ca_rotation_under_load_fails_no_request_and_removes_the_old_root_everywhere() {
    let mut mesh = Mesh::start("rotate-ca");
    let (client, server) = http_pair(&mut mesh, "http");
    let old_roots = certs(&mesh, client.admin)["trust_bundle_sha256"].clone();
    assert_eq!(old_roots.as_array().unwrap().len(), 1);
    let old_issuer = certs(&mesh, client.admin)["chain"][1]["sha256"].clone();

    let load = BackgroundLoad::http_get(client.outbound, "server");
    std::thread::sleep(Duration::from_millis(300));
    let out = mesh.weftctl(&["-o", "json", "certs", "rotate-ca", "--wait"]);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.finish();
    assert!(
        out.status.success(),
        "rotate-ca: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["phase"], "done", "{status}");
    assert_eq!(failed, 0, "requests failed during the CA rotation");
    assert!(ok > 50);

    // Every proxy trusts only the new root and holds a certificate from the new CA.
    let new_root = status["roots_sha256"].clone();
    assert_eq!(new_root.as_array().unwrap().len(), 1);
    assert_ne!(new_root, old_roots);
    for p in [client, server] {
        let c = certs(&mesh, p.admin);
        assert_eq!(c["trust_bundle_sha256"], new_root, "{c:#}");
        assert_ne!(
            c["chain"][1]["sha256"], old_issuer,
            "still on the old issuing CA: {c:#}"
        );
    }
    // weftctl's admin certificate followed (it was re-issued by the new CA).
    let again = mesh.weftctl(&["get", "services"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let (_, m) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(&m, "weft_certificate_rotation_requests_total", "").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
}

#[test]
fn weftctl_check_passes_on_a_healthy_mesh_and_names_a_proxy_that_is_not_synced() {
    let mut mesh = Mesh::start("check");
    let (client, _server) = http_pair(&mut mesh, "http");
    let out = mesh.weftctl(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok    issuing CA valid for"), "{text}");
    assert!(
        text.contains("ok    2 connected proxies SYNCED with a valid certificate"),
        "{text}"
    );

    // A port squatter makes the client's sidecar NACK the next push.
    let squatter = std::net::TcpListener::bind(std::net::SocketAddr::new(client.ip, 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();
    let yaml = format!("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: raw, namespace: e2e}}\nspec: {{sources: [client], tcp: {{bindPort: {port}, destination: {{service: client, port: 1}}}}}}\n");
    mesh.apply("raw.yaml", &yaml).expect("apply");
    wait_until("check to fail", Duration::from_secs(10), || {
        !mesh.weftctl(&["check"]).status.success()
    });
    let out = mesh.weftctl(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("ERROR proxy e2e/client-2: state NACKED"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 problem(s) found"));
}

/// The admin certificate opens the control plane's Admin API and nothing
/// else: a sidecar's inbound listener refuses it as a caller (counted), and
/// no join token is minted for the mesh's reserved identities.
#[test]
fn the_admin_certificate_is_refused_as_a_data_plane_caller_and_reserved_identities_get_no_token() {
    let mut mesh = Mesh::start("reserved-ids");
    let (_client, server) = http_pair(&mut mesh, "http");
    let admin = mesh.pki().admin_certs;
    let (cert, key) = (admin.join("cert.pem"), admin.join("key.pem"));
    // An HTTP/2 request over mTLS with the admin certificate (-k: the
    // sidecar's certificate names a SPIFFE ID, not a host).
    let (status, _) = curl(
        &[
            "-k",
            "--http2",
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "-H",
            "Host: server",
        ],
        &format!("https://{}/", server.inbound),
    );
    assert_eq!(status, 0, "no HTTP answer to the admin identity");
    let (_, m) = http_request(server.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &m,
            "weft_mtls_handshakes_total",
            "direction=\"inbound\",result=\"reserved_identity\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    for account in ["admin", "weft-control"] {
        let out = mesh.weftctl(&[
            "token",
            "create",
            "--namespace",
            "weft-system",
            "--service-account",
            account,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "token for {account}: {err}");
        assert!(err.contains("reserved"), "{err}");
    }
}
