//! Local and global rate limits.

use super::*;

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
    let replies = flood(f.client.outbound, "server", 3, 2.5, "/rate", &[]);
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
    // The client sends 3:1:1 across the instances; the limit is 100/s for
    // the service as a whole.
    f.apply(
        &["weight: 3", "weight: 1", "weight: 1"],
        &format!(
            "{}---\n{}",
            route(&format!("  - {DEST}\n")),
            policy("  loadBalancer: {algorithm: weighted-round-robin}\n  rateLimits:\n  - {name: global, rate: 100, burst: 10, global: true}\n")
        ),
    );
    let replies = flood(f.client.outbound, "server", 6, 5.0, "/", &[]);
    // Leases settle within the first second; measure the next four.
    let admitted = replies
        .iter()
        .filter(|r| r.0 >= 1.0 && r.0 < 5.0 && r.1 == 200)
        .count() as f64
        / 4.0;
    let offered = replies.iter().filter(|r| r.0 >= 1.0 && r.0 < 5.0).count() as f64 / 4.0;
    eprintln!("global limit 100/s: admitted {admitted:.1}/s of {offered:.0}/s offered");
    assert!(
        offered > 200.0,
        "the test must offer well over the limit: {offered}/s"
    );
    assert!(
        (90.0..=110.0).contains(&admitted),
        "admitted {admitted:.0}/s of {offered:.0}/s offered; the limit is 100/s"
    );
}
