//! Circuit breaking: max pending, requests and connections fail fast.

use super::*;

/// `n` concurrent GETs of `path`, each on its own connection: (status,
/// x-weft-overloaded, time taken) per request.
fn burst(addr: SocketAddr, n: usize, path: &'static str) -> Vec<(u16, Option<String>, Duration)> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = KeepAlive::new(addr)
                    .get(path, "server", &[])
                    .expect("request");
                (
                    r.status,
                    r.header("x-weft-overloaded").map(String::from),
                    t.elapsed(),
                )
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

#[test]
fn max_pending_and_max_requests_fail_fast_with_the_limit_named() {
    let f = fleet("limits", 1, "http", &[]);
    let burst = |n: usize| burst(f.client.outbound, n, "/slow?ms=600");
    f.apply(
        &[],
        &format!(
            "{}---\n{}",
            route(&format!("  - {DEST}\n")),
            policy("  circuitBreaker: {maxRequests: 2, maxPendingRequests: 2}\n")
        ),
    );
    let results = burst(10);
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok, 4, "2 in flight + 2 queued: {results:?}");
    assert_eq!(shed.len(), 6, "{results:?}");
    for r in &shed {
        assert_eq!(r.1.as_deref(), Some("max_pending"));
        assert!(r.2 < Duration::from_millis(300), "failed fast: {:?}", r.2);
    }

    f.apply(
        &[],
        &format!(
            "{}---\n{}",
            route(&format!("  - {DEST}\n")),
            policy("  circuitBreaker: {maxRequests: 2}\n")
        ),
    );
    let results = burst(6);
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        2,
        "{results:?}"
    );
    assert!(results
        .iter()
        .filter(|r| r.0 == 503)
        .all(|r| r.1.as_deref() == Some("max_requests") && r.2 < Duration::from_millis(300)));
    let m = f.client_metrics();
    assert!(metric(&m, "weft_overloaded_total", "limit=\"max_pending\"").unwrap_or(0.0) >= 6.0);
    assert!(metric(&m, "weft_overloaded_total", "limit=\"max_requests\"").unwrap_or(0.0) >= 4.0);
}

#[test]
fn max_connections_fails_fast_when_a_plaintext_upstream_needs_another_connection() {
    // An endpoint without a sidecar is reached over HTTP/1.1: each request
    // in flight needs its own connection, so max_connections bites.
    let f = fleet("maxconn", 1, "http", &[]);
    let app = f.apps[0];
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  ports: [{{port: {app}, protocol: http}}]\n  endpoints: [{{address: 127.0.0.1, sidecar: false}}]\n---\n{}---\n{}",
        service_yaml("client", "e2e", 1, "http", f.client.inbound),
        route(&format!("  - destination: {{service: server, port: {app}}}\n")),
        policy("  circuitBreaker: {maxConnections: 1}\n")
    );
    let rev = f.mesh.apply("mesh.yaml", &yaml).expect("apply");
    f.mesh.wait_synced(rev, 1);
    let results = burst(f.client.outbound, 4, "/slow?ms=400");
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter(|r| r.0 != 200) {
        assert_eq!(
            (r.0, r.1.as_deref()),
            (503, Some("max_connections")),
            "{results:?}"
        );
        assert!(r.2 < Duration::from_millis(300), "failed fast: {results:?}");
    }
    let m = f.client_metrics();
    assert!(metric(&m, "weft_overloaded_total", "limit=\"max_connections\"").unwrap_or(0.0) >= 3.0);
}
