//! End-to-end: Authorization policies evaluated by the callee's sidecar on
//! the caller's verified identity, for HTTP and opaque TCP, changed live.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use weft_testbed::*;

fn authz(name: &str, body: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: {name}, namespace: e2e}}\nspec:\n{body}")
}

/// Callers a (e2e/sa/a) and b (other/sa/b) → server (e2e) with an http app.
struct Http {
    mesh: Mesh,
    a: ProxyAddrs,
    b: ProxyAddrs,
    server: ProxyAddrs,
    base: String,
}

fn http_mesh(name: &str) -> Http {
    let mut mesh = Mesh::start(name);
    let app = mesh.http_app("server");
    let a = mesh.proxy("a", "e2e", 1, 2, &[]);
    let b = mesh.proxy("b", "other", 1, 3, &[]);
    let server = mesh.proxy("server", "e2e", app, 4, &[]);
    let base = format!(
        "{}---\n{}---\n{}---\n{}",
        service_yaml("a", "e2e", 1, "http", a.inbound),
        service_yaml("b", "other", 1, "http", b.inbound),
        service_yaml("server", "e2e", app, "http", server.inbound),
        http_route_yaml(
            "server",
            "e2e",
            &["a", "b.other"],
            &["server"],
            "server",
            app
        )
    );
    Http {
        mesh,
        a,
        b,
        server,
        base,
    }
}

impl Http {
    /// Applies the base config plus `policy`; returns the revision.
    fn apply(&self, policy: &str) -> u64 {
        self.mesh
            .apply("mesh.yaml", &format!("{}---\n{policy}", self.base))
            .expect("apply")
    }

    /// `apply`, then waits until all three proxies have it.
    fn apply_synced(&self, policy: &str) {
        let rev = self.apply(policy);
        self.mesh.wait_synced(rev, 3);
    }
}

fn call(from: ProxyAddrs, method: &str, path: &str) -> (u16, String) {
    http_request(from.outbound, method, path, "server", &[], b"").unwrap_or((0, String::new()))
}

#[test]
fn http_calls_are_allowed_and_denied_by_identity_namespace_path_and_method() {
    let h = http_mesh("authz-http");
    let policy = authz(
        "server-policy",
        "  target: {service: server}\n  rules:\n  - action: allow\n    from: {identities: [\"spiffe://cluster.local/ns/e2e/sa/a\"]}\n",
    );
    h.apply_synced(&policy);
    assert_eq!(call(h.a, "GET", "/").0, 200);
    let (code, body) = call(h.b, "GET", "/");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("denied by authorization e2e/server-policy"),
        "{body}"
    );

    // By namespace, with a DENY on a path and an ALLOW limited to GET.
    let policy = authz(
        "server-policy",
        "  target: {service: server}\n  rules:\n  - action: deny\n    to: {paths: [{prefix: /admin}]}\n  - action: allow\n    from: {namespaces: [e2e, other]}\n    to: {methods: [GET]}\n",
    );
    h.apply_synced(&policy);
    for caller in [h.a, h.b] {
        assert_eq!(call(caller, "GET", "/hello").0, 200);
        assert_eq!(call(caller, "GET", "/admin/users").0, 403);
        assert_eq!(call(caller, "POST", "/echo").0, 403);
    }

    // Without the service's policy, a namespace default of deny closes the
    // server to everyone.
    let deny_all = authz("default", "  default: deny\n");
    let rev = h.mesh.apply("default.yaml", &deny_all).expect("apply");
    let policy_file = h.mesh.dir.join("server-policy.yaml");
    std::fs::write(&policy_file, &policy).unwrap();
    let out = h.mesh.weftctl(&[
        "-o",
        "json",
        "delete",
        "-f",
        &policy_file.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.mesh.wait_synced(rev + 1, 3);
    let (code, body) = call(h.a, "GET", "/");
    assert_eq!((code, body.contains("e2e/default")), (403, true), "{body}");

    let (_, m) = http_request(h.server.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    for (decision, policy) in [
        ("allow", "e2e/server-policy"),
        ("deny", "e2e/server-policy"),
        ("deny", "e2e/default"),
    ] {
        let labels = format!("decision=\"{decision}\",policy=\"{policy}\"");
        assert!(
            metric(&m, "weft_authz_decisions_total", &labels).unwrap_or(0.0) >= 1.0,
            "{labels}\n{m}"
        );
    }
}

#[test]
fn a_policy_change_takes_effect_within_a_second_without_dropping_allowed_traffic() {
    let h = http_mesh("authz-live");
    let only_a = authz(
        "server-policy",
        "  target: {service: server}\n  rules:\n  - action: allow\n    from: {namespaces: [e2e]}\n",
    );
    h.apply_synced(&only_a);
    assert_eq!(call(h.b, "GET", "/").0, 403);

    let a = h.a;
    let load = BackgroundLoad::start(move || match call(a, "GET", "/") {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    std::thread::sleep(Duration::from_millis(200));
    let both = authz(
        "server-policy",
        "  target: {service: server}\n  rules:\n  - action: allow\n    from: {namespaces: [e2e, other]}\n",
    );
    h.apply(&both);
    let applied = Instant::now();
    while call(h.b, "GET", "/").0 != 200 {
        assert!(
            applied.elapsed() < Duration::from_secs(1),
            "b still denied 1 s after the apply"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "allowed traffic failed during the change");
    assert!(ok > 20);
}

#[test]
fn tcp_connections_from_a_denied_caller_are_closed_and_allowed_ones_flow() {
    let mut mesh = Mesh::start("authz-tcp");
    let echo = mesh.tcp_echo_app("echo");
    let a = mesh.proxy("a", "e2e", 1, 2, &[]);
    let b = mesh.proxy("b", "other", 1, 3, &[]);
    let echo_sc = mesh.proxy("echo", "e2e", echo, 4, &[]);
    let a_bind = localmesh::free_port(a.ip).unwrap();
    let b_bind = localmesh::free_port(b.ip).unwrap();
    let yaml = format!(
        "{}---\n{}---\n{}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: echo-a, namespace: e2e}}\nspec: {{sources: [a], tcp: {{bindPort: {a_bind}, destination: {{service: echo, port: {echo}}}}}}}\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: echo-b, namespace: e2e}}\nspec: {{sources: [b.other], tcp: {{bindPort: {b_bind}, destination: {{service: echo, port: {echo}}}}}}}\n---\n{}",
        service_yaml("a", "e2e", 1, "http", a.inbound),
        service_yaml("b", "other", 1, "http", b.inbound),
        service_yaml("echo", "e2e", echo, "tcp", echo_sc.inbound),
        authz(
            "echo-policy",
            "  target: {service: echo}\n  rules:\n  - action: deny\n    from: {namespaces: [other]}\n",
        )
    );
    let rev = mesh.apply("tcp.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 3);

    let echo_once = |addr: SocketAddr| -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(b"ping");
        let mut got = Vec::new();
        let mut buf = [0u8; 4];
        if let Ok(n) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    assert_eq!(echo_once(SocketAddr::new(a.ip, a_bind)), b"ping");
    assert!(
        echo_once(SocketAddr::new(b.ip, b_bind)).is_empty(),
        "denied caller got data"
    );
    let (_, m) = http_request(echo_sc.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &m,
            "weft_authz_decisions_total",
            "decision=\"deny\",policy=\"e2e/echo-policy\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}
