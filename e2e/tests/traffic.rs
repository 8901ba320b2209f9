//! End-to-end traffic policies with real processes: a client sidecar calls a
//! service of several instances (each a sample app behind its own sidecar);
//! the fault-injecting sample app misbehaves on request; tests count
//! requests on both sides (client replies, the apps' own counters, the
//! proxies' metrics).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_testbed::*;

/// A client sidecar and `n` instances of service "server" (app s<i> behind
/// sidecar 127.A.B.(10+i)).
struct Fleet {
    mesh: Mesh,
    client: ProxyAddrs,
    apps: Vec<u16>,
    sidecars: Vec<ProxyAddrs>,
    protocol: &'static str,
}

fn fleet(name: &str, n: usize, protocol: &'static str, app_flags: &[&[&str]]) -> Fleet {
    let mut mesh = Mesh::start(name);
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for i in 0..n {
        let flags: Vec<&str> = app_flags.get(i).copied().unwrap_or(&[]).to_vec();
        let app_name = format!("s{i}");
        let mut args = vec!["--name", app_name.as_str()];
        args.extend(flags);
        let kind = if protocol == "grpc" { "grpc" } else { "http" };
        let port = mesh.app(kind, &app_name, &args);
        apps.push(port);
        sidecars.push(mesh.proxy("server", "e2e", port, 10 + i as u8, &[]));
    }
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    Fleet {
        mesh,
        client,
        apps,
        sidecars,
        protocol,
    }
}

impl Fleet {
    /// The Service with every instance (`fields[i]` added to instance i's
    /// endpoint, e.g. "labels: {version: v1}" or "weight: 3") plus
    /// `extra` documents (routes, policies); waits until every proxy has it.
    fn apply(&self, fields: &[&str], extra: &str) -> u64 {
        self.apply_endpoints(&(0..self.apps.len()).collect::<Vec<_>>(), fields, extra)
    }

    fn apply_endpoints(&self, instances: &[usize], labels: &[&str], extra: &str) -> u64 {
        let port = 8080;
        let endpoints: Vec<String> = instances
            .iter()
            .map(|i| {
                let a = self.sidecars[*i].inbound;
                let extra = labels.get(*i).map(|l| format!(", {l}")).unwrap_or_default();
                format!("{{address: \"{}\", port: {}{extra}}}", a.ip(), a.port())
            })
            .collect();
        let yaml = format!(
            "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  ports: [{{port: {port}, protocol: {}}}]\n  endpoints: [{}]\n---\n{extra}",
            service_yaml("client", "e2e", 1, "http", self.client.inbound),
            self.protocol,
            endpoints.join(", ")
        );
        let rev = self.mesh.apply("mesh.yaml", &yaml).expect("apply");
        self.mesh.wait_synced(rev, 1 + self.apps.len());
        rev
    }

    fn app_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.apps[i]))
    }

    /// An admin call straight to instance i's app (fault, stats).
    fn app_call(&self, i: usize, method: &str, path: &str) -> String {
        let (status, body) =
            http_request(self.app_addr(i), method, path, "app", &[], b"").expect("app admin call");
        assert_eq!(status, 200, "{method} {path}: {body}");
        body
    }

    fn served(&self, i: usize) -> u64 {
        self.app_call(i, "GET", "/stats")
            .trim()
            .strip_prefix("requests ")
            .and_then(|n| n.parse().ok())
            .expect("requests count")
    }

    fn client_metrics(&self) -> String {
        self.mesh.admin_get(self.client.metrics, "/metrics").1
    }
}

/// `rule` as a Route for host "server" from the client.
fn route(rule: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n{rule}")
}

fn policy(body: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  target: {{service: server}}\n{body}")
}

const DEST: &str = "destination: {service: server, port: 8080}";

/// Sends `n` GETs through the client sidecar on one kept-alive connection;
/// counts replies by (status, x-served-by).
fn send(
    f: &Fleet,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> HashMap<(u16, String), usize> {
    let mut c = KeepAlive::new(f.client.outbound);
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = c
            .get(path, "server", headers)
            .expect("request through the sidecar");
        let by = r.header("x-served-by").unwrap_or("-").to_string();
        *out.entry((r.status, by)).or_default() += 1;
    }
    out
}

fn count(replies: &HashMap<(u16, String), usize>, status: u16, by: &str) -> usize {
    replies.get(&(status, by.to_string())).copied().unwrap_or(0)
}

fn ok_total(replies: &HashMap<(u16, String), usize>) -> usize {
    replies
        .iter()
        .filter(|((s, _), _)| *s == 200)
        .map(|(_, n)| *n)
        .sum()
}

#[test]
fn a_90_10_split_lands_within_3_percent_and_flagged_requests_reach_only_the_canary() {
    let f = fleet("split", 2, "http", &[]);
    f.apply(
        &["labels: {version: v1}", "labels: {version: v2}"],
        &route(
            "  - match: {headers: {x-canary: {present: true}}}\n    destination: {service: server, port: 8080, subset: {version: v2}}\n  - backends:\n    - {service: server, port: 8080, subset: {version: v1}, weight: 90}\n    - {service: server, port: 8080, subset: {version: v2}, weight: 10}\n"
        ),
    );
    let replies = send(&f, 2000, "/", &[]);
    let (v1, v2) = (count(&replies, 200, "s0"), count(&replies, 200, "s1"));
    assert_eq!(v1 + v2, 2000, "every request answered: {replies:?}");
    let share = v2 as f64 / 2000.0;
    eprintln!(
        "90/10 split: canary got {v2} of 2000 ({:.1} %)",
        share * 100.0
    );
    assert!(
        (0.07..=0.13).contains(&share),
        "canary share {share} ({v2}/2000)"
    );
    // The split is visible per backend in the client's metrics.
    let m = f.client_metrics();
    let b2 = metric(
        &m,
        "weft_backend_requests_total",
        "backend=\"server.e2e:8080/version=v2\"",
    );
    assert!(
        b2.is_some_and(|n| n >= v2 as f64),
        "per-backend counter: {b2:?}"
    );

    let flagged = send(&f, 200, "/", &[("x-canary", "on")]);
    assert_eq!(count(&flagged, 200, "s1"), 200, "{flagged:?}");
}

#[test]
fn mirrored_traffic_reaches_the_shadow_without_slowing_the_primary() {
    let f = fleet("mirror", 2, "http", &[]);
    // s1 is the shadow; it answers slowly.
    f.apply(
        &["labels: {role: primary}", "labels: {role: shadow}"],
        &route(
            "  - destination: {service: server, port: 8080, subset: {role: primary}}\n    mirror: {service: server, port: 8080, subset: {role: shadow}, percent: 100}\n",
        ),
    );
    f.app_call(1, "POST", "/fault?delay_ms=300");
    let mut c = KeepAlive::new(f.client.outbound);
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        let r = c.get("/", "server", &[]).expect("request");
        slowest = slowest.max(t.elapsed());
        assert_eq!((r.status, r.header("x-served-by")), (200, Some("s0")));
    }
    assert!(
        slowest < Duration::from_millis(150),
        "the primary must not wait for the 300 ms shadow: slowest {slowest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.served(1) < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(f.served(1), 50, "every request copied to the shadow");
    assert_eq!(f.served(0), 50);
}

#[test]
fn retries_turn_a_30_percent_failure_on_one_of_three_instances_into_no_client_errors() {
    let f = fleet("retry30", 3, "http", &[]);
    f.apply(
        &[],
        &route(&format!(
            "  - {DEST}\n    retries: {{attempts: 3, on: [5xx], backoff: {{base: 1ms, max: 5ms}}}}\n"
        )),
    );
    f.app_call(1, "POST", "/fault?status=503&percent=30");
    let replies = send(&f, 600, "/", &[]);
    assert_eq!(ok_total(&replies), 600, "no client errors: {replies:?}");
    let upstream: u64 = (0..3).map(|i| f.served(i)).sum();
    assert!(
        upstream > 600,
        "the failures were retried: upstream saw {upstream}"
    );
    let m = f.client_metrics();
    let retries = metric(&m, "weft_retries_total", "reason=\"5xx\"").unwrap_or(0.0);
    assert_eq!(
        retries as u64,
        upstream - 600,
        "every extra upstream request is a counted retry"
    );
}

#[test]
fn under_a_total_outage_the_retry_budget_caps_upstream_load_at_1_2x() {
    let f = fleet("outage", 2, "http", &[]);
    f.apply(
        &[],
        &route(&format!(
            "  - {DEST}\n    retries: {{attempts: 5, on: [5xx], backoff: {{base: 1ms, max: 2ms}}}}\n"
        )),
    );
    for i in 0..2 {
        f.app_call(i, "POST", "/fault?status=503");
    }
    // ~100 requests/s for 3 s.
    let mut c = KeepAlive::new(f.client.outbound);
    let start = Instant::now();
    let mut offered = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        let r = c.get("/", "server", &[]).expect("request");
        assert_eq!(r.status, 503);
        offered += 1;
        let next = start + Duration::from_millis(10 * offered);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let upstream: u64 = (0..2).map(|i| f.served(i)).sum();
    let ratio = upstream as f64 / offered as f64;
    eprintln!("total outage: {offered} offered, upstream saw {upstream} ({ratio:.3}x)");
    assert!(
        ratio <= 1.25,
        "upstream saw {upstream} for {offered} offered ({ratio:.2}x); 5 attempts each would be 5x"
    );
    assert!(
        ratio > 1.05,
        "retries still happened within the budget ({ratio:.2}x)"
    );
    let m = f.client_metrics();
    assert!(metric(&m, "weft_retry_budget_exhausted_total", "").unwrap_or(0.0) > 0.0);
}

#[test]
fn posts_are_not_retried_unless_the_route_allows_non_idempotent_retries() {
    let f = fleet("post", 1, "http", &[]);
    let rule = |extra: &str| {
        route(&format!(
            "  - {DEST}\n    retries: {{attempts: 3, on: [5xx], backoff: {{base: 1ms, max: 2ms}}{extra}}}\n"
        ))
    };
    f.apply(&[], &rule(""));
    f.app_call(0, "POST", "/fault?status=503");
    let mut c = KeepAlive::new(f.client.outbound);
    for _ in 0..5 {
        let r = c
            .send("POST", "/echo", "server", &[], b"order=1")
            .expect("post");
        assert_eq!(r.status, 503);
    }
    assert_eq!(f.served(0), 5, "each POST reached the app exactly once");
    f.app_call(0, "POST", "/stats/reset");
    let r = c.get("/", "server", &[]).expect("get");
    assert_eq!(r.status, 503);
    assert_eq!(f.served(0), 3, "a GET is tried three times");

    f.apply(&[], &rule(", retryNonIdempotent: true"));
    f.app_call(0, "POST", "/stats/reset");
    let r = c
        .send("POST", "/echo", "server", &[], b"order=2")
        .expect("post");
    assert_eq!(r.status, 503);
    assert_eq!(f.served(0), 3, "the route allows POST retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_on_another_instance() {
    use xds_proto::sample::v1::{echo_client::EchoClient, EchoRequest};
    let f = tokio::task::block_in_place(|| {
        let f = fleet("grpcretry", 2, "grpc", &[&["--fail-status", "14"], &[]]);
        // Half of all calls fail once: a budget of 100 % lets each retry.
        f.apply(
            &[],
            &format!(
                "{}---\n{}",
                route(&format!(
                    "  - {DEST}\n    retries: {{attempts: 2, grpcCodes: [unavailable], backoff: {{base: 1ms, max: 2ms}}}}\n"
                )),
                policy("  retryBudget: {percent: 100}\n")
            ),
        );
        f
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", f.client.outbound))
        .unwrap()
        .origin("http://server".parse().unwrap())
        .connect()
        .await
        .expect("connect to outbound");
    let mut echo = EchoClient::new(channel);
    for i in 0..40 {
        let reply = echo
            .unary(EchoRequest {
                message: format!("m{i}"),
                count: 1,
            })
            .await
            .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"))
            .into_inner();
        assert_eq!(reply.served_by, "s1");
    }
    let m = tokio::task::block_in_place(|| f.client_metrics());
    let retried = metric(&m, "weft_retries_total", "reason=\"grpc_status\"").unwrap_or(0.0);
    assert!(
        retried >= 10.0,
        "UNAVAILABLE answers were retried: {retried}"
    );
    tokio::task::block_in_place(move || drop(f));
}

#[test]
fn request_and_per_try_timeouts_fire_on_time_and_grpc_timeout_shrinks_per_hop() {
    let f = fleet("timeouts", 1, "http", &[]);
    f.apply(
        &[],
        &route(&format!(
            "  - match: {{path: {{prefix: /slow}}}}\n    {DEST}\n    timeout: 400ms\n  - match: {{path: {{prefix: /try}}}}\n    {DEST}\n    retries: {{attempts: 1, perTryTimeout: 250ms}}\n  - {DEST}\n    timeout: 5s\n"
        )),
    );
    let mut c = KeepAlive::new(f.client.outbound);
    // Sends one request; asserts it ended in `want_ms` ± 50 ms.
    let mut timed = |path: &str, headers: &[(&str, &str)], want_ms: i64, what: &str| {
        let t = Instant::now();
        let r = c.get(path, "server", headers).expect("request");
        let took = t.elapsed().as_millis() as i64;
        assert!(
            (took - want_ms).abs() <= 50,
            "{what} after {took} ms, want {want_ms}"
        );
        r
    };
    let r = timed("/slow?ms=2000", &[], 400, "request timeout");
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, Some("request_timeout"))
    );
    let r = timed(
        "/try",
        &[("x-fault-delay-ms", "2000")],
        250,
        "per-try timeout",
    );
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, Some("upstream_timeout"))
    );
    // grpc-timeout: the caller's deadline is enforced and sent on, shrunk.
    let grpc_200ms = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "200m"),
    ];
    let r = timed("/slow?ms=2000", &grpc_200ms, 200, "grpc-timeout");
    assert_eq!(
        r.header("grpc-status"),
        Some("4"),
        "DEADLINE_EXCEEDED: {r:?}"
    );
    let r = c
        .get(
            "/headers",
            "server",
            &[("content-type", "application/grpc"), ("grpc-timeout", "3S")],
        )
        .expect("request");
    let sent = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("grpc-timeout: "))
        .expect("grpc-timeout reached the app");
    let unit = &sent[sent.len() - 1..];
    let n: u64 = sent[..sent.len() - 1].parse().expect("number");
    let micros = match unit {
        "n" => n / 1000,
        "u" => n,
        "m" => n * 1000,
        "S" => n * 1_000_000,
        _ => panic!("unit {unit}"),
    };
    assert!(
        micros < 3_000_000 && micros > 2_500_000,
        "the app sees the remaining time, below the caller's 3 s: {sent}"
    );
}

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
fn a_failing_instance_is_ejected_within_a_second_probed_and_readmitted() {
    let f = fleet("outlier", 3, "http", &[]);
    f.apply(
        &[],
        &format!(
            "{}---\n{}",
            route(&format!("  - {DEST}\n")),
            policy("  outlierDetection: {consecutive5xx: 3, baseEjectionTime: 3s, maxEjectionPercent: 34}\n")
        ),
    );
    f.app_call(0, "POST", "/fault?status=500");
    f.app_call(1, "POST", "/fault?status=500");
    let mut c = KeepAlive::new(f.client.outbound);
    let start = Instant::now();
    // Ejected within 1 s; only one of the two failing hosts (max 34 % of
    // 3) is out, the other keeps failing.
    while start.elapsed() < Duration::from_secs(1) {
        c.get("/", "server", &[]).expect("request");
    }
    let m = f.client_metrics();
    let ejected: Vec<usize> = (0..2)
        .filter(|i| {
            let host = f.sidecars[*i].inbound.to_string();
            metric(
                &m,
                "weft_circuit_breaker_state",
                &format!("host=\"{host}\""),
            ) == Some(1.0)
        })
        .collect();
    assert_eq!(
        ejected.len(),
        1,
        "exactly one failing host ejected (max 34 %): {m}"
    );
    let out = ejected[0];
    let before = f.served(out);
    let replies = send(&f, 200, "/", &[]);
    assert_eq!(
        f.served(out),
        before,
        "no traffic to the ejected host while ejected"
    );
    assert_eq!(count(&replies, 500, &format!("s{out}")), 0, "{replies:?}");

    // Recovered: after the ejection time one probe goes through, succeeds,
    // and the host takes traffic again.
    f.app_call(out, "DELETE", "/fault");
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(start.elapsed()) + Duration::from_millis(300),
    );
    let replies = send(&f, 60, "/", &[]);
    assert!(
        count(&replies, 200, &format!("s{out}")) > 0,
        "readmitted: {replies:?}"
    );
    let m = f.client_metrics();
    let host = f.sidecars[out].inbound.to_string();
    assert_eq!(
        metric(
            &m,
            "weft_circuit_breaker_state",
            &format!("host=\"{host}\"")
        ),
        Some(0.0)
    );
    assert!(metric(&m, "weft_outlier_ejections_total", "").unwrap_or(0.0) >= 1.0);
}

#[test]
fn round_robin_is_even_and_least_request_and_peak_ewma_avoid_a_slow_instance() {
    let f = fleet("lb", 3, "http", &[]);
    f.apply(&[], &route(&format!("  - {DEST}\n")));
    let replies = send(&f, 300, "/", &[]);
    for i in 0..3 {
        assert_eq!(count(&replies, 200, &format!("s{i}")), 100, "{replies:?}");
    }

    f.app_call(2, "POST", "/fault?delay_ms=80");
    for algorithm in ["least-request", "peak-ewma"] {
        f.apply(
            &[],
            &format!(
                "{}---\n{}",
                route(&format!("  - {DEST}\n")),
                policy(&format!("  loadBalancer: {{algorithm: {algorithm}}}\n"))
            ),
        );
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let addr = f.client.outbound;
                std::thread::spawn(move || {
                    let mut c = KeepAlive::new(addr);
                    let mut slow = 0;
                    for _ in 0..50 {
                        let r = c.get("/", "server", &[]).expect("request");
                        if r.header("x-served-by") == Some("s2") {
                            slow += 1;
                        }
                    }
                    slow
                })
            })
            .collect();
        let slow: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        eprintln!("{algorithm}: {slow} of 400 requests to the slow instance");
        // Round robin would send a third (133) there.
        assert!(
            slow < 50,
            "{algorithm} sent {slow} of 400 requests to the slow instance"
        );
    }
}

#[test]
fn header_edits_apply_both_ways_and_retry_after_is_respected() {
    let f = fleet("headers", 1, "http", &[]);
    f.apply(
        &[],
        &route(&format!(
            "  - match: {{path: {{prefix: /headers}}}}\n    {DEST}\n    requestHeaders: {{add: {{x-added: a}}, set: {{x-env: prod}}, remove: [x-debug]}}\n    responseHeaders: {{set: {{cache-control: no-store}}, remove: [x-served-by]}}\n  - {DEST}\n    retries: {{attempts: 2, on: [5xx], backoff: {{base: 1ms, max: 2ms}}}}\n"
        )),
    );
    let mut c = KeepAlive::new(f.client.outbound);
    let r = c
        .get("/headers", "server", &[("x-env", "dev"), ("x-debug", "1")])
        .expect("request");
    assert_eq!(r.status, 200);
    let lines: Vec<&str> = r.body.lines().collect();
    assert!(lines.contains(&"x-added: a"), "{lines:?}");
    assert!(lines.contains(&"x-env: prod"), "set replaces: {lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("x-debug")), "{lines:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-served-by"), None);

    // 503 with Retry-After: 1: the retry waits a second, not the 2 ms backoff.
    f.app_call(0, "POST", "/fault?status=503&retry_after=1");
    let t = Instant::now();
    let r = c.get("/", "server", &[]).expect("request");
    assert_eq!(r.status, 503);
    assert!(
        t.elapsed() >= Duration::from_secs(1) && t.elapsed() < Duration::from_secs(2),
        "retried after Retry-After: {:?}",
        t.elapsed()
    );
    assert_eq!(f.served(0), 3, "/headers, then the request and its retry");
}

#[test]
fn an_idle_response_body_is_cut_at_the_idle_timeout() {
    let f = fleet("idle", 1, "http", &[]);
    f.apply(
        &[],
        &route(&format!("  - {DEST}\n    idleTimeout: 300ms\n")),
    );
    // Chunks 100 ms apart pass; 600 ms apart the body is cut.
    let (code, body) = curl(
        &["-H", "Host: server", "-H", "x-fault-slow-body-ms: 100"],
        &format!("http://{}/", f.client.outbound),
    );
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8_lossy(&body).lines().count(), 4);
    let t = Instant::now();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Host: server",
            "-H",
            "x-fault-slow-body-ms: 600",
        ])
        .arg(format!("http://{}/", f.client.outbound))
        .output()
        .expect("curl");
    let took = t.elapsed();
    assert!(!out.status.success(), "the body must be cut short");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(600),
        "cut after the 300 ms idle timeout: {took:?}"
    );
}

#[test]
fn ring_hash_and_maglev_keep_a_key_on_one_host_and_move_few_keys_when_a_host_leaves() {
    let f = fleet("hash", 4, "http", &[]);
    for algorithm in ["ring-hash", "maglev"] {
        let pol = policy(&format!(
            "  loadBalancer: {{algorithm: {algorithm}, hash: {{header: x-user}}}}\n"
        ));
        let extra = format!("{}---\n{pol}", route(&format!("  - {DEST}\n")));
        f.apply(&[], &extra);
        let mut c = KeepAlive::new(f.client.outbound);
        let owner = |c: &mut KeepAlive, k: usize| {
            let key = format!("user-{k}");
            let r = c.get("/", "server", &[("x-user", &key)]).expect("request");
            r.header("x-served-by").unwrap_or("-").to_string()
        };
        let before: Vec<String> = (0..200).map(|k| owner(&mut c, k)).collect();
        let again: Vec<String> = (0..200).map(|k| owner(&mut c, k)).collect();
        assert_eq!(before, again, "{algorithm}: same key, same host");
        let hosts: std::collections::HashSet<&String> = before.iter().collect();
        assert_eq!(hosts.len(), 4, "{algorithm}: keys spread over every host");

        // Instance 3 leaves the service.
        f.apply_endpoints(&[0, 1, 2], &[], &extra);
        let after: Vec<String> = (0..200).map(|k| owner(&mut c, k)).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_removed = before.iter().filter(|h| *h == "s3").count();
        assert!(
            moved <= on_removed + 10,
            "{algorithm}: {moved} keys moved, {on_removed} were on the removed host"
        );
        assert!(after.iter().all(|h| h != "s3"));
    }
}

/// Waits until `check` holds, polling; false on timeout.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn active_http_health_checks_remove_and_restore_endpoints_and_panic_mode_spreads_over_all() {
    let f = fleet("health", 3, "http", &[]);
    f.apply(
        &[],
        &format!(
            "{}---\n{}",
            route(&format!("  - {DEST}\n")),
            policy("  healthCheck: {interval: 100ms, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2, http: {path: /healthz}}\n")
        ),
    );
    f.app_call(1, "POST", "/health?status=503");
    let gone = eventually(Duration::from_secs(3), || {
        count(&send(&f, 30, "/", &[]), 200, "s1") == 0
    });
    assert!(gone, "s1 failing its health check leaves the rotation");
    let m = f.client_metrics();
    assert!(metric(&m, "weft_health_check_failures_total", "").unwrap_or(0.0) >= 2.0);
    let host = f.sidecars[1].inbound.to_string();
    assert_eq!(
        metric(&m, "weft_endpoint_healthy", &format!("host=\"{host}\"")),
        Some(0.0)
    );

    f.app_call(1, "POST", "/health?status=200");
    let back = eventually(Duration::from_secs(3), || {
        count(&send(&f, 30, "/", &[]), 200, "s1") > 0
    });
    assert!(back, "s1 passing again returns to the rotation");

    // Every endpoint unhealthy: below the panic threshold traffic goes to
    // all of them rather than nowhere.
    for i in 0..3 {
        f.app_call(i, "POST", "/health?status=500");
    }
    std::thread::sleep(Duration::from_millis(600));
    let replies = send(&f, 60, "/", &[]);
    assert_eq!(ok_total(&replies), 60, "panic mode serves: {replies:?}");
    for i in 0..3 {
        assert!(count(&replies, 200, &format!("s{i}")) > 0, "{replies:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_keep_calls_off_a_not_serving_instance() {
    use xds_proto::sample::v1::{echo_client::EchoClient, EchoRequest};
    let f = tokio::task::block_in_place(|| {
        let f = fleet("grpchealth", 2, "grpc", &[&["--not-serving"], &[]]);
        f.apply(
            &[],
            &format!(
                "{}---\n{}",
                route(&format!("  - {DEST}\n")),
                policy("  healthCheck: {interval: 100ms, timeout: 500ms, unhealthyThreshold: 1, grpc: {}}\n")
            ),
        );
        std::thread::sleep(Duration::from_millis(500));
        f
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", f.client.outbound))
        .unwrap()
        .origin("http://server".parse().unwrap())
        .connect()
        .await
        .expect("connect to outbound");
    let mut echo = EchoClient::new(channel);
    for _ in 0..20 {
        let reply = echo
            .unary(EchoRequest {
                message: "hi".into(),
                count: 1,
            })
            .await
            .expect("call")
            .into_inner();
        assert_eq!(
            reply.served_by, "s1",
            "the NOT_SERVING instance gets no calls"
        );
    }
    tokio::task::block_in_place(move || drop(f));
}

/// Runs `threads` clients as fast as they go for `secs`; every reply as
/// (seconds since start, status, Retry-After).
fn flood(
    addr: SocketAddr,
    threads: usize,
    secs: f64,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<(f64, u16, Option<String>)> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                let mut out = Vec::new();
                while start.elapsed().as_secs_f64() < secs {
                    let r = c.get(path, "server", headers).expect("request");
                    out.push((
                        start.elapsed().as_secs_f64(),
                        r.status,
                        r.header("retry-after").map(String::from),
                    ));
                }
                out
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect()
}

#[test]
fn local_rate_limits_admit_their_rate_and_keyed_buckets_are_independent() {
    let mut f = fleet("ratelimit", 1, "http", &[]);
    // A second caller with another identity.
    let other = f.mesh.proxy("other", "e2e", 1, 3, &[]);
    let route2 = format!(
        "apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  sources: [client, other]\n  hosts: [server]\n  http:\n  - {DEST}\n"
    );
    let rev = f.apply(
        &[],
        &format!(
            "{}---\n{route2}---\n{}",
            service_yaml("other", "e2e", 1, "http", other.inbound),
            policy("  rateLimits:\n  - {name: rate, match: {path: {prefix: /rate}}, rate: 50, burst: 5}\n  - {name: per-key, match: {path: {prefix: /key}}, rate: 1, burst: 5, key: {header: x-api-key}}\n  - {name: per-caller, match: {path: {prefix: /caller}}, rate: 1, burst: 5, key: {identity: true}}\n")
        ),
    );
    f.mesh.wait_synced(rev, 3);

    // 50/s from 3 clients pushing as fast as they can; after the first
    // burst, 2 s admit 100 ± 5 %.
    let replies = flood(f.client.outbound, 3, 2.5, "/rate", &[]);
    let admitted = replies
        .iter()
        .filter(|r| r.0 >= 0.5 && r.0 < 2.5 && r.1 == 200)
        .count();
    eprintln!(
        "local limit 50/s over 2 s: admitted {admitted} of {}",
        replies.len()
    );
    assert!(
        (95..=105).contains(&admitted),
        "50 req/s for 2 s admits 100 ± 5 %: {admitted} of {}",
        replies.len()
    );
    let limited: Vec<_> = replies.iter().filter(|r| r.1 == 429).collect();
    assert!(!limited.is_empty());
    assert!(
        limited.iter().all(|r| r.2.as_deref() == Some("1")),
        "Retry-After on every 429"
    );

    // Per API key: each key its own burst of 5.
    let mut c = KeepAlive::new(f.client.outbound);
    let mut ok_for = |key: &str| {
        (0..10)
            .filter(|_| {
                c.get("/key", "server", &[("x-api-key", key)])
                    .expect("request")
                    .status
                    == 200
            })
            .count()
    };
    assert_eq!(ok_for("key-a"), 5);
    assert_eq!(ok_for("key-b"), 5, "key b is not limited by key a's use");

    // Per caller identity: client and other each get a burst of 5.
    let ok_from = |addr: SocketAddr| {
        let mut c = KeepAlive::new(addr);
        (0..10)
            .filter(|_| c.get("/caller", "server", &[]).expect("request").status == 200)
            .count()
    };
    assert_eq!(ok_from(f.client.outbound), 5);
    assert_eq!(
        ok_from(other.outbound),
        5,
        "another identity has its own bucket"
    );

    let m = f.mesh.admin_get(f.sidecars[0].metrics, "/metrics").1;
    assert!(
        metric(&m, "weft_rate_limited_total", "policy=\"e2e/server/rate\"").unwrap_or(0.0) > 0.0
    );
    assert!(
        metric(
            &m,
            "weft_rate_limited_total",
            "policy=\"e2e/server/per-key\""
        )
        .unwrap_or(0.0)
            >= 10.0
    );
}

#[test]
fn a_global_limit_holds_within_10_percent_across_three_proxies_with_uneven_demand() {
    let f = fleet("globallimit", 3, "http", &[]);
    // The client sends 3:1:1 across the instances; the limit is 300/s for
    // the service as a whole.
    f.apply(
        &["weight: 3", "weight: 1", "weight: 1"],
        &format!(
            "{}---\n{}",
            route(&format!("  - {DEST}\n")),
            policy("  loadBalancer: {algorithm: weighted-round-robin}\n  rateLimits:\n  - {name: global, rate: 300, burst: 30, global: true}\n")
        ),
    );
    let replies = flood(f.client.outbound, 6, 5.0, "/", &[]);
    // Leases settle within the first second; measure the next four.
    let admitted = replies
        .iter()
        .filter(|r| r.0 >= 1.0 && r.0 < 5.0 && r.1 == 200)
        .count() as f64
        / 4.0;
    let offered = replies.iter().filter(|r| r.0 >= 1.0 && r.0 < 5.0).count() as f64 / 4.0;
    eprintln!("global limit 300/s: admitted {admitted:.1}/s of {offered:.0}/s offered");
    assert!(
        offered > 600.0,
        "the test must offer well over the limit: {offered}/s"
    );
    assert!(
        (270.0..=330.0).contains(&admitted),
        "admitted {admitted:.0}/s of {offered:.0}/s offered; the limit is 300/s"
    );
}

#[test]
fn a_policy_and_split_change_applies_within_a_second_without_failing_requests() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let f = fleet("live", 2, "http", &[]);
    let split = |v1: u32, v2: u32| {
        route(&format!(
            "  - backends:\n    - {{service: server, port: 8080, subset: {{version: v1}}, weight: {v1}}}\n    - {{service: server, port: 8080, subset: {{version: v2}}, weight: {v2}}}\n"
        ))
    };
    let labels = ["labels: {version: v1}", "labels: {version: v2}"];
    f.apply(&labels, &split(100, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let traffic = {
        let (addr, stop) = (f.client.outbound, stop.clone());
        std::thread::spawn(move || {
            let mut c = KeepAlive::new(addr);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = c.get("/", "server", &[]).expect("request");
                seen.push((
                    start.elapsed(),
                    r.status,
                    r.header("x-served-by").map(String::from),
                ));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Move all traffic to v2 and switch the balancer, breaker and outlier
    // settings at once.
    let changed_at = start.elapsed();
    f.apply(
        &labels,
        &format!(
            "{}---\n{}",
            split(0, 100),
            policy("  loadBalancer: {algorithm: least-request}\n  circuitBreaker: {maxRequests: 1000}\n  outlierDetection: {consecutive5xx: 5}\n")
        ),
    );
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().expect("traffic thread");
    let failed: Vec<_> = seen.iter().filter(|r| r.1 != 200).collect();
    assert!(
        failed.is_empty(),
        "no request fails across the change: {failed:?}"
    );
    let last_v1 = seen
        .iter()
        .filter(|r| r.2.as_deref() == Some("s0"))
        .map(|r| r.0)
        .max()
        .expect("v1 served before the change");
    eprintln!(
        "split change: last v1 reply {:?} after the apply started",
        last_v1.saturating_sub(changed_at)
    );
    assert!(
        last_v1 < changed_at + Duration::from_secs(1),
        "all traffic on v2 within 1 s of the apply: last v1 reply {:?} after it",
        last_v1 - changed_at
    );
    assert!(
        seen.iter()
            .filter(|r| r.0 > changed_at + Duration::from_secs(1))
            .count()
            > 10
    );
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
