//! Instances coming and going: a new one serves within a second of
//! registering; a SIGKILLed one expires and is evicted; a SIGTERMed one
//! deregisters before its listener closes; app readiness moves an instance
//! out of rotation and back.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

#[test]
fn a_new_instance_serves_callers_within_a_second_of_registering() {
    let mut f = Fleet::start("registry-join");
    f.instance("a", 10, &[]);
    f.wait_passing(1);
    assert_eq!(f.call().as_deref(), Ok("a"));
    // Call continuously; note when "b" first answers.
    let first_b = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let outbound = f.client.outbound;
    let looper = {
        let (first_b, stop) = (first_b.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if who(outbound).as_deref() == Ok("b") {
                    first_b.store(unix_ms(), Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    f.instance("b", 11, &[]);
    wait_until("b serves a request", Duration::from_secs(20), || {
        first_b.load(Ordering::Relaxed) != 0
    });
    stop.store(true, Ordering::Relaxed);
    let _ = looper.join();
    let id = f.instance_id(1);
    let registered = f
        .registered()
        .into_iter()
        .find(|v| v["instanceId"] == id.as_str())
        .and_then(|v| v["registeredUnixMs"].as_i64())
        .expect("b is registered");
    let took = first_b.load(Ordering::Relaxed) - registered;
    eprintln!("registration → first request served by b: {took} ms");
    assert!(
        (0..1000).contains(&took),
        "b served its first request {took} ms after it registered"
    );
    let listed = f.mesh.weftctl(&["registry", "list", "-n", NS]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("server-10") && table.contains("server-11") && table.contains("passing"),
        "{table}"
    );
}

#[test]
fn a_killed_instance_goes_critical_after_its_ttl_then_is_evicted_and_callers_keep_succeeding() {
    let mut f = Fleet::start("registry-kill");
    f.instance("a", 10, &[]);
    f.instance("b", 11, &[]);
    f.wait_passing(2);
    // Retries configured: a try that cannot connect goes to another
    // instance, and the budget does not run out under this load.
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n  - destination: {{service: server, port: {PORT}}}\n    retries: {{attempts: 3, on: [connect-failure, refused-stream, reset], backoff: {{base: 1ms, max: 5ms}}}}\n---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  target: {{service: server}}\n  retryBudget: {{percent: 100, minRetriesPerSecond: 1000}}\n"
    );
    let rev = f.mesh.apply("retries.yaml", &yaml).expect("apply");
    f.mesh.wait_synced(rev, 3);
    let load = BackgroundLoad::http_get(f.client.outbound, "server");
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    f.sidecar(1).kill();
    wait_until("b critical", Duration::from_secs(5), || {
        f.health_of(1).as_deref() == Some("critical")
    });
    let critical_after = killed_at.elapsed();
    wait_until("b evicted", Duration::from_secs(5), || {
        f.health_of(1).is_none()
    });
    let evicted_after = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.finish();
    eprintln!(
        "critical after {critical_after:?}, evicted after {evicted_after:?}; {ok} ok, {failed} failed"
    );
    // 1 s lease: critical after about a second; 1 s grace on top.
    assert!(
        critical_after >= Duration::from_millis(600),
        "{critical_after:?}"
    );
    assert!(evicted_after >= critical_after + Duration::from_millis(900));
    // Sequential calls: at most the one in flight at the kill may fail;
    // the rest are retried onto "a" (connect failures retry by default).
    assert!(failed <= 1, "{failed} failed of {}", ok + failed);
    assert!(ok > 50, "{ok}");
    let (names, failures) = calls(&f, 10);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
}

#[test]
fn a_terminated_sidecar_deregisters_before_its_listener_closes_and_no_call_fails() {
    let mut f = Fleet::start("registry-term");
    f.instance("a", 10, &[]);
    f.instance("b", 11, &[]);
    f.wait_passing(2);
    // Both serve before the shutdown.
    let (names, failures) = calls(&f, 10);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
    );
    let load = BackgroundLoad::http_get(f.client.outbound, "server");
    std::thread::sleep(Duration::from_millis(300));
    f.sidecar(1).signal(15);
    let exit = f
        .sidecar(1)
        .wait_exit(Duration::from_secs(20))
        .expect("wait");
    assert!(exit.is_some(), "the sidecar did not exit after SIGTERM");
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.finish();
    eprintln!("across the shutdown: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "calls failed across the shutdown");
    assert!(ok > 50, "{ok}");
    assert!(f.health_of(1).is_none(), "b is still registered");
    let log = plain(&f.sidecar(1).log_tail(200));
    assert!(
        log.contains("registry: deregistered; draining") && log.contains("proxies_pending=0"),
        "{log}"
    );
}

#[test]
fn an_instance_whose_app_is_not_ready_gets_no_traffic_until_it_recovers() {
    let mut f = Fleet::start("registry-ready");
    let probe = [
        "--app-health-path",
        "/healthz",
        "--app-probe-interval",
        "200ms",
    ];
    f.instance("a", 10, &probe);
    f.instance("b", 11, &probe);
    f.wait_passing(2);
    let b_app = SocketAddr::from(([127, 0, 0, 1], f.instances[1].2));
    let set_health = |status: u16| {
        let (code, body) = http_request(
            b_app,
            "POST",
            &format!("/health?status={status}"),
            "b",
            &[],
            b"",
        )
        .expect("set b's health");
        assert!(code < 300, "{code} {body}");
    };
    set_health(503);
    wait_until("b critical", Duration::from_secs(5), || {
        f.health_of(1).as_deref() == Some("critical")
    });
    let reason = f
        .registered()
        .into_iter()
        .find(|v| v["instanceId"] == f.instance_id(1).as_str())
        .map(|v| v["reason"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    assert!(reason.contains("GET /healthz: status 503"), "{reason}");
    // The push reaches the client within the debounce; then only "a".
    std::thread::sleep(Duration::from_millis(300));
    let (names, failures) = calls(&f, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    set_health(200);
    wait_until("b passing", Duration::from_secs(5), || {
        f.health_of(1).as_deref() == Some("passing")
    });
    std::thread::sleep(Duration::from_millis(300));
    let (names, _) = calls(&f, 20);
    assert!(names.contains(&"b".to_string()), "{names:?}");
}
