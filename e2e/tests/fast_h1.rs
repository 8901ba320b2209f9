//! The fast HTTP/1.1 path (issue 17): outbound requests to an endpoint
//! without a sidecar are forwarded by the sidecar's own HTTP/1.1 loop, not
//! hyper. Real processes (a sidecar, the sample app, raw TCP upstreams in
//! the test); the requests are written byte for byte so that framing,
//! pipelining and hostile heads are exactly what the test says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use weft_testbed::*;

/// A sidecar in `mesh` whose route `server` goes to `upstream` (no sidecar
/// there) by `rules` (DEST stands for the destination; empty: one plain
/// rule).
fn setup(mesh: &mut Mesh, upstream: SocketAddr, rules: &str) -> ProxyAddrs {
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let port = upstream.port();
    let rules = if rules.is_empty() {
        format!("  - destination: {{service: server, port: {port}}}\n")
    } else {
        rules.replace(
            "DEST",
            &format!("destination: {{service: server, port: {port}}}"),
        )
    };
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  ports: [{{port: {port}, protocol: http}}]\n  endpoints: [{{address: \"{}\", sidecar: false}}]\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n{rules}",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        upstream.ip(),
    );
    let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 1);
    client
}

fn app_addr(mesh: &mut Mesh) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], mesh.http_app("server")))
}

fn metrics(p: &ProxyAddrs) -> String {
    http_request(p.metrics, "GET", "/metrics", "localhost", &[], b"")
        .expect("metrics")
        .1
}

fn handoffs(p: &ProxyAddrs, reason: &str) -> f64 {
    let labels = format!("reason=\"{reason}\"");
    metric(&metrics(p), "weft_http_fast_h1_handoffs_total", &labels).unwrap_or(0.0)
}

/// One response as read off a connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

fn send(c: &mut BufReader<TcpStream>, raw: &[u8]) {
    c.get_mut().write_all(raw).expect("write");
}

/// Reads one response (Content-Length, chunked or until close); None if
/// the connection closed first.
fn read_resp(c: &mut BufReader<TcpStream>, head_request: bool) -> Option<Resp> {
    let mut line = String::new();
    if c.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        c.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 {
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            c.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                let mut end = String::new();
                c.read_line(&mut end).ok()?;
                break;
            }
            let mut chunk = vec![0; n + 2];
            c.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length") {
        body = vec![0; n.parse().ok()?];
        c.read_exact(&mut body).ok()?;
    } else {
        c.read_to_end(&mut body).ok()?;
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: server\r\n\r\n")
}

#[test]
fn plain_requests_are_forwarded_on_one_kept_connection_with_every_framing() {
    let mut mesh = Mesh::start("fast-h1-plain");
    let app = app_addr(&mut mesh);
    let client = setup(&mut mesh, app, "");
    let mut c = connect(client.outbound);
    // Many requests on one connection.
    for i in 0..200 {
        send(&mut c, get(&format!("/n{i}")).as_bytes());
        let r = read_resp(&mut c, false).expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            format!("hello from server path=/n{i} version=HTTP/1.1\n")
        );
        assert!(r.header("connection").is_none(), "{r:?}");
    }
    // A body by length, then a chunked one (with an extension and a
    // trailer), both echoed whole.
    send(
        &mut c,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(read_resp(&mut c, false).unwrap().text(), "hello world");
    send(
        &mut c,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 2\r\n\r\n",
    );
    assert_eq!(read_resp(&mut c, false).unwrap().text(), "hello world");
    // A large body each way.
    let big = vec![b'z'; 3 << 20];
    let mut req = format!(
        "PUT /echo HTTP/1.1\r\nHost: server\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    send(&mut c, &req);
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    assert!(r.body == big);
    send(&mut c, get("/bytes?n=1000000&chunked=1").as_bytes());
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 1_000_000);
    // HEAD: the length is announced, no body follows.
    send(
        &mut c,
        b"HEAD /bytes?n=500 HTTP/1.1\r\nHost: server\r\n\r\n",
    );
    let r = read_resp(&mut c, true).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("500")));
    // Three pipelined requests in one write, answered in order.
    send(
        &mut c,
        format!("{}{}{}", get("/p1"), get("/p2"), get("/p3")).as_bytes(),
    );
    for p in ["/p1", "/p2", "/p3"] {
        let r = read_resp(&mut c, false).unwrap();
        assert!(r.text().contains(&format!("path={p} ")), "{r:?}");
    }
    // The client asks to close: answered, then closed.
    send(
        &mut c,
        b"GET /last HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
    );
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(read_resp(&mut c, false).is_none(), "closed after it");
    // None of it went to hyper, and every request was counted.
    let m = metrics(&client);
    assert!(!m.contains("weft_http_fast_h1_handoffs_total"), "{m}");
    let counted: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("weft_requests_total{direction=\"outbound\"") && l.contains("2xx")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 209.0, "requests counted");
}

#[test]
fn retries_timeouts_and_header_edits_apply_on_the_fast_path() {
    let mut mesh = Mesh::start("fast-h1-policy");
    let app = app_addr(&mut mesh);
    let client = setup(
        &mut mesh,
        app,
        "  - match: {path: {prefix: /headers}}\n    DEST\n    requestHeaders: {add: {x-added: a}, set: {x-env: prod}, remove: [x-debug]}\n    responseHeaders: {set: {cache-control: no-store}, remove: [x-served-by]}\n  - match: {path: {prefix: /slow}}\n    DEST\n    timeout: 300ms\n  - DEST\n    retries: {attempts: 3, on: [5xx], backoff: {base: 1ms, max: 2ms}}\n",
    );
    let mut c = connect(client.outbound);
    send(
        &mut c,
        b"GET /headers HTTP/1.1\r\nHost: server\r\nX-Debug: 1\r\nX-Env: dev\r\n\r\n",
    );
    let r = read_resp(&mut c, false).unwrap();
    let seen = r.text();
    assert!(
        seen.contains("x-added: a\n") && seen.contains("x-env: prod\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("x-debug") && !seen.contains("x-env: dev"),
        "{seen}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-served-by"), None);
    // Two retries of a 503, then the 503 itself.
    let before = http_request(app, "GET", "/stats", "x", &[], b"").unwrap().1;
    send(&mut c, get("/status?code=503").as_bytes());
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(r.status, 503);
    let after = http_request(app, "GET", "/stats", "x", &[], b"").unwrap().1;
    let n = |s: &str| s.trim().rsplit(' ').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(n(&after) - n(&before), 3, "three tries");
    let m = metrics(&client);
    assert_eq!(
        metric(&m, "weft_retries_total", "reason=\"5xx\""),
        Some(2.0),
        "{m}"
    );
    // The route timeout answers 504 and closes nothing else.
    let t = Instant::now();
    send(&mut c, get("/slow?ms=3000").as_bytes());
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, Some("request_timeout"))
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    send(&mut c, get("/after").as_bytes());
    assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
    assert_eq!(handoffs(&client, "retry_with_body"), 0.0);
    // A body with retries on is hyper's (it keeps bodies for replay).
    send(
        &mut c,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(read_resp(&mut c, false).unwrap().text(), "ok");
    assert_eq!(handoffs(&client, "retry_with_body"), 1.0);
}

#[test]
fn hostile_or_unusual_heads_are_answered_by_hyper_and_bad_bodies_refused() {
    let mut mesh = Mesh::start("fast-h1-hostile");
    let app = app_addr(&mut mesh);
    let client = setup(&mut mesh, app, "");
    let one = |raw: &[u8]| {
        let mut c = connect(client.outbound);
        send(&mut c, raw);
        read_resp(&mut c, false)
    };
    // Two Host headers: 400 (hyper's path, as ever).
    let r = one(b"GET / HTTP/1.1\r\nHost: server\r\nHost: other\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(handoffs(&client, "bad_host"), 1.0);
    // A head over 64 KiB: 431.
    let mut huge = b"GET / HTTP/1.1\r\nHost: server\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let r = one(&huge).unwrap();
    assert_eq!(r.status, 431);
    // Content-Length beside Transfer-Encoding: never forwarded with both
    // (hyper takes it); whatever the answer, the app never sees a second
    // request hidden in the body.
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: server\r\n\r\n";
    let mut c = connect(client.outbound);
    send(&mut c, smuggle);
    let mut seen = Vec::new();
    while let Some(r) = read_resp(&mut c, false) {
        seen.push(r.text());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        handoffs(&client, "content_length_with_transfer_encoding"),
        1.0
    );
    // A malformed chunked body on the fast path: 400, connection closed.
    let mut c = connect(client.outbound);
    send(&mut c, b"POST /echo HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (400, Some("bad_request_body"))
    );
    assert!(read_resp(&mut c, false).is_none());
    // An h2c upgrade is answered over HTTP/1.1 by hyper, and the same
    // connection carries on.
    let mut c = connect(client.outbound);
    send(&mut c, b"GET /up HTTP/1.1\r\nHost: server\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n");
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("version=HTTP/1.1"), "{r:?}");
    send(&mut c, get("/next").as_bytes());
    assert!(read_resp(&mut c, false)
        .unwrap()
        .text()
        .contains("path=/next "));
    // No route: hyper's 404.
    let r = one(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n").unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (404, Some("no_route"))
    );
    // The app got nothing it should not have.
    for text in &seen {
        assert!(!text.contains("/smuggled"), "{seen:?}");
    }
}

/// An upstream that answers each request with `reply` and then closes the
/// connection without saying so (as a server whose keep-alive timer fires
/// right after a response does). Counts connections.
fn closing_upstream(
    reply: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let _ = r.get_mut().write_all(reply);
            });
        }
    });
    (addr, conns)
}

#[test]
fn an_upstream_closing_kept_alive_connections_under_it_fails_no_request() {
    let (up, conns) = closing_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let mut mesh = Mesh::start("fast-h1-closing");
    let client = setup(&mut mesh, up, "");
    let mut c = connect(client.outbound);
    for i in 0..40 {
        send(&mut c, get("/").as_bytes());
        let r = read_resp(&mut c, false).expect("response");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    assert!(conns.load(std::sync::atomic::Ordering::Relaxed) >= 40);

    // A response ended by the close (no length): forwarded whole, and the
    // client's connection closes after it.
    let (up, _) =
        closing_upstream(b"HTTP/1.1 200\r\nX-Kind: until-close\r\n\r\nevery byte until the end");
    let mut mesh = Mesh::start("fast-h1-close-delimited");
    let client = setup(&mut mesh, up, "");
    let mut c = connect(client.outbound);
    send(&mut c, get("/").as_bytes());
    let r = read_resp(&mut c, false).unwrap();
    assert_eq!(r.text(), "every byte until the end");
    assert_eq!(r.header("connection"), Some("close"));
}
