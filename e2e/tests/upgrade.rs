//! HTTP/1.1 upgrades across the mesh (issue 12): a WebSocket crosses two
//! sidecars (HTTP/1.1 over an mTLS connection of its own between them) with
//! a real client and server, both directions, and its close handshake; an
//! `Upgrade: h2c` request is answered over HTTP/1.1 and never passed on.
//! Real processes; the WebSocket ends are tokio-tungstenite.

use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use weft_testbed::*;

const MESSAGES: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(60);

/// What the WebSocket server saw of one connection.
#[derive(Default, Debug)]
struct Seen {
    /// The verified caller the callee's sidecar named.
    peer_identity: Option<String>,
    received: usize,
    close: Option<(u16, String)>,
}

/// A WebSocket server: echoes every message; on the text `push N` sends N
/// messages of its own; records the upgrade request and the close frame.
async fn websocket_server(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let record = seen.clone();
            // The Result type is the one tungstenite's handshake callback takes.
            #[allow(clippy::result_large_err)]
            let callback = move |req: &Request, resp: Response| {
                record.lock().unwrap().peer_identity = req
                    .headers()
                    .get("x-weft-peer-identity")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(t) if t.starts_with("push ") => {
                        let n: usize = t[5..].parse().unwrap_or(0);
                        for i in 0..n {
                            if ws.send(Message::text(format!("server {i}"))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Message::Text(_) | Message::Binary(_) => {
                        seen.lock().unwrap().received += 1;
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(frame) => {
                        seen.lock().unwrap().close =
                            frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                        // tungstenite answers the close itself; drain to the end.
                    }
                    _ => {}
                }
            }
        });
    }
}

/// A WebSocket between two meshed workloads carries 1,000 messages each
/// way in order (text and binary, one larger than a TLS record), and the
/// close handshake reaches the server and comes back to the client.
#[test]
fn a_websocket_crosses_two_sidecars_both_ways_with_its_close_handshake() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind the WebSocket server");
    let app = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    rt.spawn(websocket_server(listener, seen.clone()));

    let mut mesh = Mesh::start("websocket");
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let server = mesh.proxy("chat", "e2e", app, 3, &[]);
    let yaml = format!(
        "{}---\n{}---\n{}",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        service_yaml("chat", "e2e", app, "http", server.inbound),
        http_route_yaml("chat", "e2e", &["client"], &["chat"], "chat", app)
    );
    let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 2);

    rt.block_on(async {
        tokio::time::timeout(DEADLINE, talk(client.outbound))
            .await
            .expect("the WebSocket exchange finished in time")
    });

    // Both sidecars spliced the upgrade and saw it close cleanly.
    for (side, addrs, direction) in [
        ("caller", client, "outbound"),
        ("callee", server, "inbound"),
    ] {
        let labels = format!("direction=\"{direction}\",result=\"closed\"");
        let closed = (0..50).find_map(|_| {
            let (_, text) = mesh.admin_get(addrs.metrics, "/metrics");
            let n = metric(&text, "weft_http_upgrades_total", &labels);
            if n.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        });
        assert_eq!(closed, Some(1.0), "{side}'s sidecar: upgrades closed");
    }

    let seen = seen.lock().unwrap();
    assert_eq!(seen.received, MESSAGES, "messages the server received");
    assert_eq!(
        seen.close,
        Some((1000, "bye".to_string())),
        "the client's close frame reached the server"
    );
    assert_eq!(
        seen.peer_identity.as_deref(),
        Some("spiffe://cluster.local/ns/e2e/sa/client"),
        "the upgrade came through the callee's sidecar over mTLS"
    );
}

async fn talk(outbound: SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat/socket", tcp)
        .await
        .expect("WebSocket handshake through the sidecars");
    assert_eq!(resp.status(), 101);

    // Client to server (and the echoes back): interleaved, in order.
    let big = vec![7u8; 100 * 1024];
    for i in 0..MESSAGES {
        let msg = match i % 3 {
            0 => Message::text(format!("client {i}")),
            1 => Message::binary(vec![(i % 251) as u8; i % 700]),
            _ if i == 500 => Message::binary(big.clone()),
            _ => Message::text("x".repeat(i)),
        };
        ws.send(msg.clone()).await.expect("send");
        let echo = ws.next().await.expect("echo").expect("echo frame");
        assert_eq!(echo, msg, "echo of message {i}");
    }
    // Server to client: a burst the server sends on its own.
    ws.send(Message::text(format!("push {MESSAGES}")))
        .await
        .unwrap();
    for i in 0..MESSAGES {
        let got = ws.next().await.expect("pushed").expect("pushed frame");
        assert_eq!(got, Message::text(format!("server {i}")));
    }
    // The close handshake: ours goes out, the server's answer comes back,
    // then the stream ends.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send close");
    let mut answered = None;
    while let Some(frame) = ws.next().await {
        if let Ok(Message::Close(f)) = frame {
            answered = f.map(|f| u16::from(f.code));
        }
    }
    assert_eq!(answered, Some(1000), "the server's close answer");
}

/// `Upgrade: h2c` is not carried through: curl's `--http2` on a cleartext
/// URL gets an HTTP/1.1 answer through both sidecars, and an app reached
/// without a sidecar (plain HTTP/1.1) never sees the `Upgrade` or
/// `HTTP2-Settings` headers, so a client cannot open a raw HTTP/2
/// connection to it past the routing (h2c smuggling).
#[test]
fn an_h2c_upgrade_is_answered_over_http1_and_not_passed_on() {
    let mut mesh = Mesh::start("h2c-upgrade");
    let (client, _server) = http_pair(&mut mesh, "http");
    let plain_app = mesh.http_app("plain");
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: plain, namespace: e2e}}\nspec:\n  ports: [{{port: {plain_app}, protocol: http}}]\n  endpoints: [{{address: 127.0.0.1, sidecar: false}}]\n---\n{}",
        http_route_yaml("plain", "e2e", &["client"], &["plain"], "plain", plain_app)
    );
    let rev = mesh.apply("plain.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 2);

    let url = format!("http://{}/headers", client.outbound);
    for host in ["server", "plain"] {
        let (status, body) = curl(&["--http2", "-H", &format!("Host: {host}")], &url);
        let body = String::from_utf8_lossy(&body).to_lowercase();
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains(&format!("host: {host}")), "{host}: {body}");
        assert!(!body.contains("upgrade"), "{host}: the app saw: {body}");
        assert!(
            !body.contains("http2-settings"),
            "{host}: the app saw: {body}"
        );
    }
}
