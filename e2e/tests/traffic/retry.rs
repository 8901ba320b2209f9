//! Retries: conditions, budget, methods, Retry-After (and header edits).

use super::*;

#[test]
fn retries_turn_a_30_percent_failure_on_one_of_three_instances_into_no_client_errors() {
    let f = fleet("retry30", 3, "http", &[]);
    // A budget that cannot run out: with the default (20 % of requests, 10
    // per second) a chance cluster of failures among the first requests
    // can exhaust it, which is the budget test's subject, not this one's.
    f.apply(
        &[],
        &format!(
            "{}---\n{}",
            route(&format!(
                "  - {DEST}\n    retries: {{attempts: 3, on: [5xx], backoff: {{base: 1ms, max: 5ms}}}}\n"
            )),
            policy("  retryBudget: {percent: 100, minRetriesPerSecond: 1000}\n")
        ),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_on_another_instance() {
    use xds_proto::sample::v1::EchoRequest;
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
    let mut echo = echo_client(f.client.outbound, "server").await;
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
