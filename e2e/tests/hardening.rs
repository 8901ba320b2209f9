//! Hardening: one bad client must not hurt another, and malformed or
//! oversized requests are refused at the edge of the sidecar with the right
//! status (issue 12). Real processes, raw sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use weft_testbed::*;

/// Sends `raw` as is and returns the response's status and body.
fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A request whose headers the callee's sidecar would refuse must get 431 at
/// the caller's outbound listener and never reach the shared, multiplexed
/// HTTP/2 connection between the sidecars, where it would reset every
/// unrelated request in flight to the same destination; one within the
/// limit crosses both sidecars.
#[test]
fn an_oversized_header_gets_431_and_requests_in_flight_to_the_same_callee_succeed() {
    let mut mesh = Mesh::start("big-header");
    let (client, _server) = http_pair(&mut mesh, "http");
    // Warm the sidecar-to-sidecar connection.
    assert_eq!(
        http_request(client.outbound, "GET", "/", "server", &[], b"")
            .unwrap()
            .0,
        200
    );
    // Within the mesh's 64 KiB head limit: forwarded to the app. Beyond it:
    // 431 from the caller's own sidecar.
    for (size, want) in [(40 * 1024, 200), (70 * 1024, 431), (200 * 1024, 431)] {
        let normal: Vec<_> = (0..5)
            .map(|_| {
                let outbound = client.outbound;
                std::thread::spawn(move || {
                    http_request(
                        outbound,
                        "GET",
                        "/",
                        "server",
                        &[("x-fault-delay-ms", "400")],
                        b"",
                    )
                    .map(|(status, _)| status)
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let big = "a".repeat(size);
        let (status, body) = http_request(
            client.outbound,
            "GET",
            "/",
            "server",
            &[("x-big", &big)],
            b"",
        )
        .unwrap_or_else(|e| panic!("{size} B header: no answer: {e}"));
        assert_eq!(status, want, "{size} B header: {body}");
        for n in normal {
            assert_eq!(
                n.join().unwrap(),
                Ok(200),
                "a normal request in flight next to a {size} B header"
            );
        }
    }
}

/// RFC 9112 §3.2: two Host headers are a 400 at the sidecar, never forwarded;
/// in absolute form the URI names the target, so the app sees the URI's
/// authority as Host, not the one the client wrote.
#[test]
fn two_host_headers_get_400_and_absolute_form_replaces_host_with_the_uri_authority() {
    let mut mesh = Mesh::start("hosts");
    let (client, _server) = http_pair(&mut mesh, "http");
    let (status, body) = raw_exchange(
        client.outbound,
        b"GET /headers HTTP/1.1\r\nHost: server\r\nHost: evil\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Host"), "the reason names Host: {body}");
    let (status, body) = raw_exchange(
        client.outbound,
        b"GET http://server/headers HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("host: server\n"), "the app saw: {body}");
    assert!(!body.contains("evil"), "the app saw: {body}");
}

/// A request body that is not valid chunked encoding is the client's
/// error: 400 from its sidecar, not a 502 blaming the upstream.
#[test]
fn a_malformed_chunked_request_body_gets_400() {
    let mut mesh = Mesh::start("bad-chunks");
    let (client, _server) = http_pair(&mut mesh, "http");
    let (status, body) = raw_exchange(
        client.outbound,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nZZ-not-hex\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    // The sidecar pair still serves well-formed requests.
    assert_eq!(
        http_request(client.outbound, "POST", "/echo", "server", &[], b"fine").unwrap(),
        (200, "fine".to_string())
    );
}

/// A client that starts a request head and stalls (slowloris) is answered
/// 408 and cut off at `--header-read-timeout-ms` instead of holding its
/// connection for a minute; a kept-alive connection that is merely idle is
/// closed without a stray 408; complete requests are unaffected.
#[test]
fn a_stalled_request_head_gets_408_at_the_header_read_timeout() {
    let mut mesh = Mesh::start("slow-head");
    let (client, _server) = http_pair_with(&mut mesh, "http", &["--header-read-timeout-ms", "500"]);

    let mut slow = TcpStream::connect(client.outbound).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: server\r\nX-Slow: ")
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = slow.read_to_end(&mut answer);
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("request_header_timeout"), "{answer}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}, want about 500 ms"
    );

    // Idle after a complete exchange: closed, nothing more is written.
    let mut idle = TcpStream::connect(client.outbound).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 4096];
    let n = idle.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("408"), "an idle connection got {rest:?}");

    assert_eq!(
        http_request(client.outbound, "GET", "/", "server", &[], b"")
            .unwrap()
            .0,
        200
    );
}

/// The metrics port is bounded like every admin port: a large body gets 413
/// without being buffered, silent connections are closed after the header
/// timeout, and past the connection cap new connections are closed at once
/// while the data plane keeps serving.
#[test]
fn the_metrics_port_refuses_big_bodies_and_caps_connections_without_hurting_traffic() {
    let mut mesh = Mesh::start("admin-bounds");
    let (client, _server) = http_pair(&mut mesh, "http");

    let mut big = TcpStream::connect(client.metrics).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    big.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 419430400\r\n\r\n",
    )
    .unwrap();
    // Only the first 256 KiB of the promised 400 MiB.
    let _ = big.write_all(&vec![b'x'; 256 * 1024]);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");

    // Silent connections: the cap (64) is reached, later ones are closed at
    // once, the data plane does not notice.
    let silent: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(client.metrics).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut last = silent.last().unwrap().try_clone().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(last.read(&mut buf), Ok(0)),
        "a connection past the cap is closed at once"
    );
    assert_eq!(
        http_request(client.outbound, "GET", "/", "server", &[], b"")
            .unwrap()
            .0,
        200,
        "the data plane serves while the metrics port is full"
    );
    // The header timeout (5 s) frees the slots; scrapes work again.
    std::thread::sleep(Duration::from_secs(6));
    let (status, metrics) =
        http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert_eq!(status, 200);
    assert!(
        metric(
            &metrics,
            "weft_admin_connections_refused_total",
            &format!("port=\"{}\"", client.metrics.port())
        )
        .unwrap_or(0.0)
            >= 16.0,
        "refusals are counted: {metrics}"
    );
    drop(silent);
}

/// A listener holds at most `--max-connections-outbound` connections: more
/// are closed at once (and counted) instead of exhausting descriptors, and
/// traffic flows again as soon as slots free up.
#[test]
fn the_outbound_listener_caps_its_connections_and_recovers_when_they_close() {
    let mut mesh = Mesh::start("conn-cap");
    let (client, _server) = http_pair_with(
        &mut mesh,
        "http",
        &[
            "--max-connections-outbound",
            "8",
            "--header-read-timeout-ms",
            "2000",
        ],
    );

    // Eight stalled request heads fill the cap.
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(client.outbound).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(client.outbound).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(over.read(&mut buf), Ok(0) | Err(_)),
        "the ninth connection is closed at once"
    );
    let (_, m) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &m,
            "weft_listener_connections_refused_total",
            "listener=\"outbound\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    // The held heads time out (2 s); the listener serves again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        http_request(client.outbound, "GET", "/", "server", &[], b"")
            .unwrap()
            .0,
        200
    );
    drop(held);
}

/// A small config file nested 100,000 levels deep is refused at once with
/// the reason (it used to hold the control plane for ~40 s), and the
/// control plane keeps answering.
#[test]
fn a_deeply_nested_config_is_refused_at_once_with_the_reason() {
    let mesh = Mesh::start("deep-yaml");
    let path = mesh.dir.join("deep.yaml");
    std::fs::write(&path, "[".repeat(100_000)).unwrap();
    let out = mesh.weftctl(&["apply", "-f", &path.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nesting deeper than 64"), "{err}");
    assert_eq!(mesh.admin_get(mesh.control_admin, "/ready").0, 200);
}

/// An HTTP request with a method outside the common set (WebDAV's
/// PROPFIND) is sniffed as HTTP and forwarded, not reset as opaque TCP.
#[test]
fn an_extension_method_is_forwarded_as_http() {
    let mut mesh = Mesh::start("ext-method");
    let (client, _server) = http_pair(&mut mesh, "http");
    let (status, body) = raw_exchange(
        client.outbound,
        b"PROPFIND /headers HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("host: server"), "{body}");
}

/// Reads until the peer closes; how long that took (None: still open after
/// `within`).
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// A request whose Content-Length promises more body than the client sends
/// ends with 408 once the body has stalled for `--body-read-timeout-ms`,
/// whichever sidecar's limit is reached first, instead of holding the
/// connection open; the sidecars keep serving.
#[test]
fn a_stalled_request_body_gets_408_at_the_body_read_timeout() {
    let mut mesh = Mesh::start("slow-body");
    let (client, _server) = http_pair_with(&mut mesh, "http", &["--body-read-timeout-ms", "1000"]);
    let mut s = TcpStream::connect(client.outbound).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let mut out = vec![0u8; 4096];
    let n = s.read(&mut out).expect("an answer before 10 s");
    let took = started.elapsed();
    let head = String::from_utf8_lossy(&out[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_body_timeout"), "{head}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}, want about 1 s"
    );
    assert_eq!(
        http_request(client.outbound, "POST", "/echo", "server", &[], b"fine").unwrap(),
        (200, "fine".to_string())
    );
}

/// A connection that sends the HTTP/2 preface and then nothing is closed at
/// the first-request deadline (`--header-read-timeout-ms`), and a kept-alive
/// connection with no request in flight at `--idle-timeout-ms`.
#[test]
fn silent_http2_and_idle_keep_alive_connections_are_closed() {
    let mut mesh = Mesh::start("idle-conns");
    let (client, _server) = http_pair_with(
        &mut mesh,
        "http",
        &[
            "--header-read-timeout-ms",
            "2000",
            "--idle-timeout-ms",
            "1000",
        ],
    );
    // The preface and an empty SETTINGS frame, then silence.
    let mut h2 = TcpStream::connect(client.outbound).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let took = closed_within(&mut h2, Duration::from_secs(10)).expect("closed");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(8),
        "silent HTTP/2 connection closed after {took:?}, want about 2 s"
    );

    // HTTP/1.1 keep-alive: one request, then nothing. The idle limit (1 s)
    // applies after the request (the header-read limit would too, later).
    let mut kept = TcpStream::connect(client.outbound).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n")
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let took = closed_within(&mut kept, Duration::from_secs(10)).expect("closed");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "idle keep-alive connection closed after {took:?}, want about 1 s"
    );
    let (_, m) = http_request(client.metrics, "GET", "/metrics", "localhost", &[], b"").unwrap();
    assert!(
        metric(
            &m,
            "weft_http_idle_connections_closed_total",
            "direction=\"outbound\""
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
}

/// Anything that can be applied can be read back: 20,000 Services in one
/// 3.5 MB file are accepted, and `weftctl get services` pages through them
/// (one response used to pass gRPC's 4 MiB limit and fail with "decoded
/// message length too large").
#[test]
fn a_config_near_the_message_limit_can_be_listed_back() {
    let mesh = Mesh::start("big-get");
    let mut yaml = String::new();
    for i in 0..20_000 {
        yaml.push_str(&format!(
            "---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: service-number-{i:05}, namespace: many}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  endpoints: [{{address: 127.0.0.1, sidecar: false}}]\n"
        ));
    }
    assert!(yaml.len() > 3_000_000, "{} bytes", yaml.len());
    mesh.apply("many.yaml", &yaml)
        .expect("apply 20,000 services");
    let out = mesh.weftctl(&["-o", "json", "get", "services", "-n", "many"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 20_000);
    assert_eq!(names[0], "service-number-00000");
    assert_eq!(names[19_999], "service-number-19999");
}
