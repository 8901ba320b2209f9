//! Active health checks (HTTP and gRPC) and panic mode.

use super::*;

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
    use xds_proto::sample::v1::EchoRequest;
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
    let mut echo = echo_client(f.client.outbound, "server").await;
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
