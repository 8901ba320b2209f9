//! Weighted splits, mirroring, and a live split change.

use super::*;

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
