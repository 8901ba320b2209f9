//! End-to-end: real weft-control, weft-proxy and sample workloads as
//! processes, real sockets, traffic client → outbound sidecar → inbound
//! sidecar → app.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_testbed::*;

#[test]
fn http1_flows_outbound_to_inbound_to_app_with_curl_including_large_and_chunked_bodies() {
    let mut mesh = Mesh::start("http1");
    let (client, server) = http_pair(&mut mesh, "http");
    let url = |p: &str| format!("http://{}{p}", client.outbound);

    let (code, body) = curl(&["-H", "Host: server"], &url("/hello"));
    assert_eq!(code, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("hello from server path=/hello version=HTTP/1.1")
    );

    // 10 MiB upload echoed back byte for byte.
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let file = mesh.dir.join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let (code, body) = curl(
        &[
            "-H",
            "Host: server",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
        &url("/echo"),
    );
    assert_eq!(code, 200);
    assert_eq!(body.len(), big.len());
    assert!(body == big, "10 MiB body corrupted in transit");

    // Chunked upload (no content-length) and chunked 10 MiB download.
    let (code, body) = curl(
        &[
            "-H",
            "Host: server",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
        &url("/echo"),
    );
    assert_eq!(code, 200);
    assert!(body == big, "chunked upload corrupted");
    let (code, body) = curl(&["-H", "Host: server"], &url("/bytes?n=10485760&chunked=1"));
    assert_eq!(code, 200);
    assert_eq!(body.len(), 10 * 1024 * 1024);
    assert!(body.iter().all(|b| *b == b'w'));

    // Unknown host: a clear 404 from the sidecar, not a hang or a reset.
    let (code, body) = curl(&["-H", "Host: nowhere"], &url("/"));
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("no route for host \"nowhere\""));

    // The requests are counted per route and status class on both sidecars,
    // and the control plane measured its pushes.
    let (_, metrics) =
        http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    let ok_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("weft_requests_total{")
                && l.contains("route=\"e2e/server\"")
                && l.contains("status_class=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("no 2xx counter for the route in:\n{metrics}"));
    let count: f64 = ok_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 4.0, "{ok_line}");
    assert!(metrics.contains("weft_config_version 1"), "{metrics}");
    let (_, server_metrics) =
        http_request(server.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        server_metrics.lines().any(
            |l| l.starts_with("weft_requests_total{direction=\"inbound\"")
                && l.contains("2xx")
                && !l.ends_with(" 0")
        ),
        "{server_metrics}"
    );
    let (_, cp_metrics) =
        http_request(mesh.control_admin, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        cp_metrics.contains("weft_control_push_duration_seconds_count"),
        "{cp_metrics}"
    );
    assert!(
        cp_metrics.contains("weft_control_connected_proxies 2"),
        "{cp_metrics}"
    );
}

#[test]
fn http2_prior_knowledge_flows_end_to_end_with_curl() {
    let mut mesh = Mesh::start("h2c");
    let (client, _server) = http_pair(&mut mesh, "http2");
    let (code, body) = curl(
        &["--http2-prior-knowledge", "-H", "Host: server"],
        &format!("http://{}/h2", client.outbound),
    );
    assert_eq!(code, 200);
    // The app saw HTTP/2: the sidecars spoke h2c on both hops.
    assert!(
        String::from_utf8_lossy(&body).contains("version=HTTP/2.0"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (code, body) = curl(
        &["--http2-prior-knowledge", "-H", "Host: server"],
        &format!("http://{}/bytes?n=3000000", client.outbound),
    );
    assert_eq!(code, 200);
    assert_eq!(body.len(), 3_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_flow_through_sidecars() {
    use xds_proto::sample::v1::EchoRequest;
    let (mesh, client_addrs) = tokio::task::block_in_place(|| {
        let mut mesh = Mesh::start("grpc");
        let app = mesh.grpc_app("greeter");
        let client = mesh.proxy("client", "e2e", 1, 2, &[]);
        let server = mesh.proxy("greeter", "e2e", app, 3, &[]);
        let yaml = format!(
            "{}---\n{}---\n{}",
            service_yaml("client", "e2e", 1, "http", client.inbound),
            service_yaml("greeter", "e2e", app, "grpc", server.inbound),
            http_route_yaml("greeter", "e2e", &["client"], &["greeter"], "greeter", app)
        );
        let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
        mesh.wait_synced(rev, 2);
        (mesh, client)
    });
    let mut echo = echo_client(client_addrs.outbound, "greeter").await;
    let reply = echo
        .unary(EchoRequest {
            message: "ping".into(),
            count: 1,
        })
        .await
        .expect("unary")
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.served_by.as_str()),
        ("ping", "greeter")
    );

    let mut stream = echo
        .server_stream(EchoRequest {
            message: "tick".into(),
            count: 50,
        })
        .await
        .expect("stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.expect("stream message") {
        got.push(m.index);
    }
    assert_eq!(
        got,
        (0..50).collect::<Vec<_>>(),
        "every streamed message in order, then trailers"
    );

    // A gRPC error status crosses both sidecars intact (trailers preserved).
    let status = echo
        .server_stream(EchoRequest {
            message: "x".into(),
            count: 20_000,
        })
        .await
        .expect_err("count above the limit is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Stopping processes blocks: keep it off the async workers.
    tokio::task::block_in_place(move || drop(mesh));
}

#[test]
fn opaque_tcp_echo_and_server_first_protocol_do_not_wait_for_detection() {
    let mut mesh = Mesh::start("tcp");
    let echo = mesh.tcp_echo_app("echo");
    let banner_app = mesh.server_first_app("mysqlish", "220 hello\r\n");
    // Detection would wait 5 s; a server-first protocol must not.
    let client = mesh.proxy("client", "e2e", 1, 2, &["--detect-timeout-ms", "5000"]);
    let echo_sc = mesh.proxy("echo", "e2e", echo, 3, &["--detect-timeout-ms", "5000"]);
    let db_sc = mesh.proxy("db", "e2e", banner_app, 4, &["--detect-timeout-ms", "5000"]);
    let echo_bind = localmesh::free_port(client.ip).unwrap();
    let db_bind = localmesh::free_port(client.ip).unwrap();
    let yaml = format!(
        "{}---\n{}---\n{}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: echo, namespace: e2e}}\nspec: {{sources: [client], tcp: {{bindPort: {echo_bind}, destination: {{service: echo, port: {echo}}}}}}}\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: db, namespace: e2e}}\nspec: {{sources: [client], tcp: {{bindPort: {db_bind}, destination: {{service: db, port: {banner_app}}}}}}}\n",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        service_yaml("echo", "e2e", echo, "tcp", echo_sc.inbound),
        service_yaml("db", "e2e", banner_app, "opaque", db_sc.inbound),
    );
    let rev = mesh.apply("tcp.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 3);

    let mut s = TcpStream::connect(SocketAddr::new(client.ip, echo_bind)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || w.write_all(&p2).unwrap());
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == payload, "binary payload echoed intact");

    let started = Instant::now();
    let mut s = TcpStream::connect(SocketAddr::new(client.ip, db_bind)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut banner = [0u8; 11];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 hello\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "server-first banner took {:?}: stalled on detection",
        started.elapsed()
    );
    s.write_all(b"QUIT\r\n").unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"QUIT\r\n");
}

#[test]
fn route_change_under_traffic_takes_effect_within_a_second_without_failed_requests() {
    let mut mesh = Mesh::start("reroute");
    let v1 = mesh.http_app("v1");
    let v2 = mesh.http_app("v2");
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let s1 = mesh.proxy("v1", "e2e", v1, 3, &[]);
    let s2 = mesh.proxy("v2", "e2e", v2, 4, &[]);
    let services = format!(
        "{}---\n{}---\n{}",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        service_yaml("v1", "e2e", v1, "http", s1.inbound),
        service_yaml("v2", "e2e", v2, "http", s2.inbound)
    );
    let rev = mesh.apply("services.yaml", &services).unwrap();
    let rev2 = mesh
        .apply(
            "route.yaml",
            &http_route_yaml("app", "e2e", &["client"], &["app"], "v1", v1),
        )
        .unwrap();
    assert!(rev2 > rev);
    mesh.wait_synced(rev2, 3);
    let pid_before = mesh.proc_mut("proxy-client-2").pid();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served_v2_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served_v2_at) = (stop.clone(), failures.clone(), served_v2_at.clone());
        let addr = client.outbound;
        workers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match http_request(addr, "GET", "/", "app", &[], b"") {
                    Ok((200, body)) => {
                        if body.contains("hello from v2") {
                            served_v2_at
                                .lock()
                                .unwrap()
                                .get_or_insert_with(Instant::now);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            n
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let changed_at = Instant::now();
    mesh.apply(
        "route.yaml",
        &http_route_yaml("app", "e2e", &["client"], &["app"], "v2", v2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let first_v2 = served_v2_at
        .lock()
        .unwrap()
        .expect("traffic never reached v2");
    assert!(
        first_v2.duration_since(changed_at) < Duration::from_secs(1),
        "route change took {:?}",
        first_v2.duration_since(changed_at)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the change (of {total})"
    );
    // After the switch, everything goes to v2.
    let (code, body) = http_request(client.outbound, "GET", "/", "app", &[], b"").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("hello from v2"));
    assert_eq!(
        mesh.proc_mut("proxy-client-2").pid(),
        pid_before,
        "proxy restarted"
    );
    assert!(mesh.proc_mut("proxy-client-2").is_running());
}

#[test]
fn invalid_apply_names_file_and_field_and_changes_nothing() {
    let mut mesh = Mesh::start("badapply");
    let (client, _server) = http_pair(&mut mesh, "http");
    let before = mesh.weftctl(&["-o", "json", "get", "services"]).stdout;
    let dump_before = mesh.admin_get(client.admin, "/config_dump").1;

    // The first document is fine, the second has a bad port: nothing may land.
    let bad = format!(
        "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: broken, namespace: e2e}}\nspec:\n  ports: [{{port: 99999, protocol: http}}]\n",
        service_yaml("extra", "e2e", 8080, "http", "127.0.0.9:80".parse().unwrap())
    );
    let path = mesh.dir.join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let out = mesh.weftctl(&["apply", "-f", &path.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml")
            && err.contains("document 2")
            && err.contains("spec.ports[0].port")
            && err.contains("65535"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");

    std::fs::write(&path, "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: x, namespace: e2e}\nspec:\n  ports: [{port: 80, protocol: http}]\n  weight: 3\n").unwrap();
    let out = mesh.weftctl(&["apply", "-f", &path.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `weight`"));

    assert_eq!(
        mesh.weftctl(&["-o", "json", "get", "services"]).stdout,
        before,
        "stored config changed"
    );
    assert_eq!(
        mesh.admin_get(client.admin, "/config_dump").1,
        dump_before,
        "proxy config changed"
    );
    let (code, _) = curl(
        &["-H", "Host: server"],
        &format!("http://{}/", client.outbound),
    );
    assert_eq!(code, 200);
}

#[test]
fn nacked_push_is_visible_in_proxy_status_and_previous_config_keeps_serving() {
    let mut mesh = Mesh::start("nack");
    let (client, _server) = http_pair(&mut mesh, "http");
    // Something else on the client's host already holds the port the new
    // route wants: the proxy cannot bind it and must NACK.
    let squatter = TcpListener::bind(SocketAddr::new(client.ip, 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();
    let server_port = mesh.weftctl(&["-o", "json", "get", "services"]);
    let services: serde_json::Value = serde_json::from_slice(&server_port.stdout).unwrap();
    let app_port = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "server")
        .unwrap()["spec"]["ports"][0]["port"]
        .as_u64()
        .unwrap();
    let yaml = format!("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: raw, namespace: e2e}}\nspec: {{sources: [client], tcp: {{bindPort: {port}, destination: {{service: server, port: {app_port}}}}}}}\n");
    mesh.apply("raw.yaml", &yaml)
        .expect("control plane accepts it; only the proxy can't use it");

    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let status = mesh.proxy_status();
        let row = status["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["service"] == "client")
            .cloned()
            .unwrap();
        if row["state"] == "NACKED" {
            break row;
        }
        assert!(Instant::now() < deadline, "never NACKED: {status:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        row["nackReason"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot bind {}:{port}", client.ip)),
        "{row}"
    );
    let table = String::from_utf8_lossy(&mesh.weftctl(&["proxy-status"]).stdout).to_string();
    assert!(
        table.contains("NACKED") && table.contains("cannot bind"),
        "{table}"
    );

    // The previous config still serves.
    let (code, body) = curl(
        &["-H", "Host: server"],
        &format!("http://{}/still", client.outbound),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let dump: serde_json::Value =
        serde_json::from_str(&mesh.admin_get(client.admin, "/config_dump").1).unwrap();
    assert!(dump["control_plane"]["last_nack"]
        .as_str()
        .unwrap()
        .contains("cannot bind"));
    assert!(dump["snapshot"]["tcp_listeners"]
        .as_array()
        .unwrap()
        .is_empty());

    // Freeing the port and re-applying anything lets the proxy converge.
    drop(squatter);
    let rev = mesh
        .apply(
            "client-label.yaml",
            &service_yaml("client", "e2e", 2, "http", client.inbound),
        )
        .unwrap();
    mesh.wait_synced(rev, 2);
}

#[test]
fn control_plane_crash_keeps_traffic_flowing_and_restart_restores_config_and_sync() {
    let mut mesh = Mesh::start("cprestart");
    let (client, _server) = http_pair(&mut mesh, "http");
    mesh.kill_control();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let (code, _) = http_request(client.outbound, "GET", "/", "server", &[], b"").unwrap();
        assert_eq!(code, 200, "proxy must keep serving on its last good config");
    }
    let (code, _) = mesh.admin_get(client.admin, "/ready");
    assert_eq!(code, 200, "still ready without the control plane");

    mesh.start_control();
    let routes = mesh.weftctl(&["-o", "json", "get", "routes"]);
    let routes: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert_eq!(
        routes.as_array().unwrap().len(),
        1,
        "route survived the restart"
    );
    let status = mesh.proxy_status();
    let rev: u64 = status["revision"]
        .as_str()
        .unwrap()
        .trim_start_matches('r')
        .parse()
        .unwrap();
    assert!(rev >= 1);
    mesh.wait_synced(rev, 2);
    let (code, _) = http_request(client.outbound, "GET", "/", "server", &[], b"").unwrap();
    assert_eq!(code, 200);
}

fn drain_test(name: &str, trigger: impl FnOnce(&mut Mesh, ProxyAddrs)) {
    let mut mesh = Mesh::start(name);
    let (client, _server) = http_pair(&mut mesh, "http");
    let addr = client.outbound;
    let inflight =
        std::thread::spawn(move || http_request(addr, "GET", "/slow?ms=1500", "server", &[], b""));
    std::thread::sleep(Duration::from_millis(400));
    trigger(&mut mesh, client);
    // New connections are refused once draining...
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "still accepting while draining"
    );
    // ...but the in-flight request completes.
    let (code, body) = inflight
        .join()
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("slow reply"));
    let exit = mesh
        .proc_mut("proxy-client-2")
        .wait_exit(Duration::from_secs(10))
        .expect("proxy exits after drain");
    assert_eq!(exit, Some(0));
}

#[test]
fn drain_endpoint_finishes_in_flight_requests_and_exits_zero() {
    drain_test("drain", |mesh, client| {
        let (code, _) =
            http_request(client.admin, "POST", "/drain", "localhost", &[], b"").unwrap();
        assert_eq!(code, 202);
        let (code, _) = mesh.admin_get(client.admin, "/ready");
        assert_eq!(code, 503, "not ready while draining");
    });
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    drain_test("sigterm", |mesh, _client| {
        mesh.proc_mut("proxy-client-2").signal(15);
    });
}

#[test]
fn config_dump_holds_only_the_services_a_proxy_can_reach() {
    let mut mesh = Mesh::start("scoping");
    let a = mesh.http_app("a");
    let b = mesh.http_app("b");
    let c = mesh.http_app("c");
    let pa = mesh.proxy("a", "e2e", a, 2, &[]);
    let pb = mesh.proxy("b", "e2e", b, 3, &[]);
    let pc = mesh.proxy("c", "e2e", c, 4, &[]);
    let yaml = [
        service_yaml("a", "e2e", a, "http", pa.inbound),
        service_yaml("b", "e2e", b, "http", pb.inbound),
        service_yaml("c", "e2e", c, "http", pc.inbound),
        http_route_yaml("to-b", "e2e", &["a"], &["b"], "b", b),
        http_route_yaml("to-c", "e2e", &["b"], &["c"], "c", c),
    ]
    .join("---\n");
    let rev = mesh.apply("mesh.yaml", &yaml).unwrap();
    mesh.wait_synced(rev, 3);
    let clusters = |admin| {
        let dump: serde_json::Value =
            serde_json::from_str(&mesh.admin_get(admin, "/config_dump").1).unwrap();
        let mut names: Vec<String> = dump["snapshot"]["clusters"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    };
    assert_eq!(clusters(pa.admin), vec![format!("b.e2e:{b}")]);
    assert_eq!(clusters(pb.admin), vec![format!("c.e2e:{c}")]);
    assert!(clusters(pc.admin).is_empty());
    // And the scoping is real: a cannot reach c.
    let (code, _) = http_request(pa.outbound, "GET", "/", "c", &[], b"").unwrap();
    assert_eq!(code, 404);
    let (code, body) = http_request(pa.outbound, "GET", "/", "b", &[], b"").unwrap();
    assert_eq!((code, body.contains("hello from b")), (200, true));
}

#[test]
fn weftctl_reports_unreachable_control_plane_in_one_line() {
    // Valid admin credentials, nothing listening.
    let mesh = Mesh::start("unreachable");
    let out = std::process::Command::new(binaries().path(localmesh::WEFTCTL))
        .args(["--control-plane", "https://127.0.0.1:1", "--certs"])
        .arg(mesh.pki().admin_certs)
        .args(["get", "services"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot reach the control plane at https://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1);
}
