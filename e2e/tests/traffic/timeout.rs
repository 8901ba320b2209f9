//! Request, per-try, gRPC and idle timeouts.

use super::*;

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
