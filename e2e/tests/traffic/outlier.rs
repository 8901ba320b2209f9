//! Outlier detection: ejection, probe, readmission.

use super::*;

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
