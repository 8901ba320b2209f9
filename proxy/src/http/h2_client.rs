//! HTTP/2 to upstreams (h2c to plaintext endpoints, h2 over mTLS to
//! sidecars), driven with the `h2` crate from the request's own task: one
//! connection per endpoint and worker, shared by every request to it, no
//! pool checkout, dispatch channel or per-request task between the request
//! and its stream (hyper's client spent ~12 % of an h2c proxy's CPU there;
//! see benches/RESULTS.md). A request body that is not already in memory
//! is piped from its own task, as hyper does, so the response can arrive
//! while it streams.
//!
//! A connection is opened by the first request that needs it (the ones
//! arriving meanwhile wait for it), lives until the peer closes it, it
//! fails, or it has carried nothing for 30–60 s ([`IDLE_TIMEOUT`]), and
//! holds its cluster's connection slot until then.

use crate::http::body::RequestBody;
use crate::http::h2_stream::{send_body, H2Body};
use crate::http::limits::MAX_HEADER_LIST_BYTES;
use crate::http::upstream::{connect, over_limit, BoxedIo, ConnectTarget, OverLimit, IDLE_TIMEOUT};
use crate::mtls::{Alpn, MeshTls};
use crate::policy::circuit_breaker::{ConnectionSlot, Limit};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::SendStream;
use http::header::{HeaderValue, CONTENT_LENGTH, TE};
use http::{Method, Request, Response};
use hyper::body::Body;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::OnceCell;

/// hyper's client defaults, kept: a 2 MiB stream window, 5 MiB for the
/// connection, up to 1 MiB buffered per stream before backpressure.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// HTTP/2 upstream connections by what happened to them: `opened`,
/// `connect_failed`, `closed_idle`, `closed` (by the peer or an error).
pub const CONNECTIONS: &str = "weft_http_h2_upstream_connections_total";

fn count(result: &'static str) {
    metrics::counter!(CONNECTIONS, "result" => result).increment(1);
}

/// Why a request sent over HTTP/2 got no response.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    /// No connection: nothing was sent (the io error may carry
    /// `upstream::OverLimit`).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP/2 handshake failed: nothing was sent.
    #[error("http/2 handshake: {0}")]
    Handshake(#[source] h2::Error),
    /// The request or its stream failed (REFUSED_STREAM among them).
    #[error("http/2: {0}")]
    Stream(#[source] h2::Error),
}

impl H2Error {
    /// Whether no connection could be had (the request was not sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, H2Error::Connect(_) | H2Error::Handshake(_))
    }
}

/// Requests a connection has carried; with the count of bodies holding it,
/// how the idle sweep knows it has been unused.
#[derive(Default)]
struct Usage {
    sends: AtomicU64,
}

#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    usage: Arc<Usage>,
}

type Key = (SocketAddr, bool);
/// A connection, or the attempt to open it that the requests to its
/// endpoint wait for.
type Entry = Arc<Endpoint>;

#[derive(Default)]
struct Endpoint {
    conn: OnceCell<Conn>,
    failed: Mutex<Option<Failed>>,
}

/// The last failed attempt to connect.
struct Failed {
    at: Instant,
    kind: io::ErrorKind,
    message: String,
    over_limit: Option<Limit>,
}

impl Endpoint {
    fn record_failure(&self, e: &H2Error) {
        let (kind, message) = match e {
            H2Error::Connect(io) => (io.kind(), io.to_string()),
            other => (io::ErrorKind::Other, other.to_string()),
        };
        let failed = Failed {
            at: Instant::now(),
            kind,
            message,
            over_limit: over_limit(e),
        };
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(failed);
    }

    /// The failure of an attempt that ended after `since`, as this
    /// request's error.
    fn failed_since(&self, since: Instant) -> Option<H2Error> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let f = failed.as_ref().filter(|f| f.at >= since)?;
        Some(H2Error::Connect(match f.over_limit {
            Some(limit) => io::Error::other(OverLimit(limit)),
            None => io::Error::new(f.kind, f.message.clone()),
        }))
    }
}

/// One worker's HTTP/2 connections, by endpoint and whether it is reached
/// over mTLS.
#[derive(Clone)]
pub struct H2Client {
    conns: Arc<Mutex<HashMap<Key, Entry>>>,
    tls: Option<Arc<MeshTls>>,
}

impl H2Client {
    pub fn new(tls: Option<Arc<MeshTls>>) -> Self {
        H2Client {
            conns: Arc::default(),
            tls,
        }
    }

    /// Sends `req` to `target` (over mTLS when `meshed`). A connection that
    /// turns out closed before the request went out is replaced once.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        target: &ConnectTarget,
        meshed: bool,
    ) -> Result<Response<H2Body>, H2Error> {
        let key = (target.addr, meshed);
        let (mut parts, body) = req.into_parts();
        prepare_headers(&mut parts, &body);
        let head = Request::from_parts(parts, ());
        let mut replaced = false;
        loop {
            let entry = self.entry(key);
            let conn = match entry.conn.get() {
                Some(conn) => conn.clone(),
                // Boxed: opening is kilobytes of state (a TLS connect) that
                // every request's future would otherwise carry inline.
                None => Box::pin(self.open(key, target, &entry)).await?,
            };
            let mut ready = match conn.send.ready().await {
                Ok(ready) => ready,
                // The connection closed (GOAWAY, EOF, error) before taking
                // the stream: nothing was sent.
                Err(e) if !replaced => {
                    tracing::debug!(addr = %key.0, error = %e, "h2 connection gone, reconnecting");
                    self.forget(key, &entry);
                    replaced = true;
                    continue;
                }
                Err(e) => return Err(H2Error::Stream(e)),
            };
            let (response, stream) = ready
                .send_request(head, body.is_end_stream())
                .map_err(H2Error::Stream)?;
            conn.usage.sends.fetch_add(1, Ordering::Relaxed);
            return exchange(response, stream, body, conn.usage).await;
        }
    }

    /// The connection `entry` holds, opened by this request or by the one
    /// it waited for.
    async fn open(&self, key: Key, target: &ConnectTarget, entry: &Entry) -> Result<Conn, H2Error> {
        let waiting_since = Instant::now();
        let conn = entry
            .conn
            .get_or_try_init(|| async {
                // An attempt that failed while this request waited for it
                // answers this request too (requests to a dead endpoint
                // must not each wait out a connect timeout in turn).
                if let Some(e) = entry.failed_since(waiting_since) {
                    return Err(e);
                }
                let opened = self.connect(key, target, entry.clone()).await;
                match &opened {
                    Ok(_) => count("opened"),
                    Err(e) => {
                        count("connect_failed");
                        entry.record_failure(e);
                    }
                }
                opened
            })
            .await?;
        Ok(conn.clone())
    }

    fn entry(&self, key: Key) -> Entry {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(key).or_default().clone()
    }

    /// Drops `entry` for `key` if it is still the one there.
    fn forget(&self, key: Key, entry: &Entry) {
        forget(&self.conns, key, entry);
    }

    async fn connect(
        &self,
        key: Key,
        target: &ConnectTarget,
        entry: Entry,
    ) -> Result<Conn, H2Error> {
        let tls = match (&self.tls, key.1) {
            (Some(tls), true) => Some((&**tls, Alpn::H2)),
            _ => None,
        };
        let (io, slot) = connect(target, tls).await.map_err(H2Error::Connect)?;
        self.handshake(key, io, slot, entry).await
    }

    async fn handshake(
        &self,
        key: Key,
        io: BoxedIo,
        slot: Option<ConnectionSlot>,
        entry: Entry,
    ) -> Result<Conn, H2Error> {
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(H2Error::Handshake)?;
        let usage = Arc::new(Usage::default());
        let conns = self.conns.clone();
        let watched = usage.clone();
        tokio::spawn(async move {
            // The cluster's connection slot, held while the connection is.
            let _slot = slot;
            tokio::select! {
                r = connection => {
                    count("closed");
                    if let Err(e) = r {
                        tracing::debug!(addr = %key.0, error = %e, "h2 upstream connection ended");
                    }
                }
                () = idle(&watched) => {
                    count("closed_idle");
                    tracing::debug!(addr = %key.0, "h2 upstream connection idle, closing");
                }
            }
            forget(&conns, key, &entry);
        });
        Ok(Conn { send, usage })
    }
}

fn forget(conns: &Mutex<HashMap<Key, Entry>>, key: Key, entry: &Entry) {
    let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
    if conns.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        conns.remove(&key);
    }
}

/// Resolves once the connection carried no request and held no response
/// body for a whole check interval (half of `IDLE_TIMEOUT`: closed after
/// 30–60 s unused, before a sidecar's inbound side would close it at 120 s).
async fn idle(usage: &Arc<Usage>) {
    let mut last = usage.sends.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let now = usage.sends.load(Ordering::Relaxed);
        // Each response body holds a clone while it is read.
        if now == last && Arc::strong_count(usage) <= 2 {
            return;
        }
        last = now;
    }
}

/// What hyper's client does to a request's headers for HTTP/2: no
/// connection-specific fields (h2 refuses them), `te` only as `trailers`,
/// and a content-length when the body's size is known.
fn prepare_headers(parts: &mut http::request::Parts, body: &RequestBody) {
    crate::http::headers::strip_hop_by_hop(&mut parts.headers, false);
    if let Some(te) = parts.headers.get(TE) {
        if te.as_bytes() != b"trailers" {
            let trailers = crate::http::headers::has_token(te, "trailers");
            parts.headers.remove(TE);
            if trailers {
                parts
                    .headers
                    .insert(TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    if let Some(len) = body.size_hint().exact() {
        let payload_method = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || payload_method) && !parts.headers.contains_key(CONTENT_LENGTH) {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
}

/// Sends the body (in memory: at once; streaming: from its own task) and
/// waits for the response head.
async fn exchange(
    response: h2::client::ResponseFuture,
    mut stream: SendStream<Bytes>,
    body: RequestBody,
    usage: Arc<Usage>,
) -> Result<Response<H2Body>, H2Error> {
    let _pipe = match body {
        _ if body.is_end_stream() => None,
        RequestBody::Full(Some(bytes)) => {
            // h2 queues what the window does not take yet.
            stream.send_data(bytes, true).map_err(H2Error::Stream)?;
            None
        }
        streaming => Some(PipeGuard(Some(tokio::spawn(send_body(streaming, stream))))),
    };
    let resp = response.await.map_err(H2Error::Stream)?;
    if let Some(mut p) = _pipe {
        // The response is here: the body keeps streaming on its own.
        p.0.take();
    }
    let (parts, recv) = resp.into_parts();
    let body = H2Body::response(recv, &parts.headers, usage);
    Ok(Response::from_parts(parts, body))
}

/// Stops a request body's pipe when the request is dropped before its
/// response came (the stream is then reset).
struct PipeGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for PipeGuard {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::{ClientBody, RecvBody};
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// An h2c server answering every request with its body, its trailers
    /// (as `x-trailer-*` headers on the response's trailers) and the
    /// request headers it saw as `seen-*` response headers; `connections`
    /// counts what it accepted. With `one_request`, each connection is
    /// closed gracefully after its first request.
    async fn echo_server(one_request: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (served, mut done) = tokio::sync::mpsc::channel::<()>(1);
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let served = served.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let collected = body.collect().await.unwrap();
                            let mut trailers = HeaderMap::new();
                            if let Some(t) = collected.trailers() {
                                for (k, v) in t {
                                    let name = format!("x-trailer-{k}");
                                    trailers.insert(
                                        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                                        v.clone(),
                                    );
                                }
                            }
                            trailers.insert("x-done", HeaderValue::from_static("yes"));
                            let mut resp = Response::builder();
                            for (k, v) in &parts.headers {
                                resp = resp.header(format!("seen-{k}"), v);
                            }
                            let data = collected.to_bytes();
                            let frames = vec![
                                Ok::<_, Infallible>(Frame::data(data)),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let _ = served.try_send(());
                            Ok::<_, Infallible>(
                                resp.body(StreamBody::new(futures::stream::iter(frames)))
                                    .unwrap(),
                            )
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::pin!(conn);
                    if one_request {
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            _ = done.recv() => {}
                        }
                        conn.as_mut().graceful_shutdown();
                    }
                    let _ = conn.await;
                });
            }
        });
        (addr, connections)
    }

    fn get(addr: SocketAddr) -> Request<RequestBody> {
        Request::builder()
            .uri(format!("http://{addr}/echo"))
            .version(http::Version::HTTP_2)
            .body(RequestBody::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn concurrent_requests_to_one_endpoint_share_one_connection() {
        let (addr, connections) = echo_server(false).await;
        let client = H2Client::new(None);
        let target = ConnectTarget::local(addr);
        let sends = (0..20).map(|_| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let resp = client.send(get(addr), &target, false).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            }
        });
        futures::future::join_all(sends).await;
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_for_the_next_request() {
        let (addr, connections) = echo_server(true).await;
        let client = H2Client::new(None);
        let target = ConnectTarget::local(addr);
        for round in 1..=3 {
            let resp = client.send(get(addr), &target, false).await.unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            resp.into_body().collect().await.unwrap();
            // Let the GOAWAY and the close arrive.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = H2Client::new(None)
            .send(get(addr), &ConnectTarget::local(addr), false)
            .await
            .err()
            .expect("nothing listens");
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn connection_headers_are_dropped_and_te_narrowed_to_trailers() {
        let (addr, _) = echo_server(false).await;
        let mut req = get(addr);
        let h = req.headers_mut();
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("2"));
        let resp = H2Client::new(None)
            .send(req, &ConnectTarget::local(addr), false)
            .await
            .unwrap();
        let seen = resp.headers();
        assert_eq!(seen["seen-te"], "trailers");
        assert_eq!(seen["seen-x-kept"], "2");
        assert!(!seen.contains_key("seen-x-hop"));
        assert!(!seen.contains_key("seen-keep-alive"));
        assert!(!seen.contains_key("seen-connection"));
    }

    /// A client's streamed body with trailers, relayed as a sidecar does it
    /// (the body read from hyper's server and piped into the upstream
    /// stream), arrives whole with its trailers, and the upstream's response
    /// trailers come back.
    #[tokio::test]
    async fn a_streamed_body_and_trailers_go_through_and_response_trailers_come_back() {
        let (upstream, _) = echo_server(false).await;
        let client = H2Client::new(None);
        // The front: an h2c server relaying each request to the upstream.
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = front.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    parts.uri = format!("http://{upstream}/echo").parse().unwrap();
                    let (body, _watch) =
                        ClientBody::new(RecvBody::H1(body), Duration::from_secs(5));
                    let req = Request::from_parts(parts, RequestBody::Stream(body));
                    let resp = client
                        .send(req, &ConnectTarget::local(upstream), false)
                        .await
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        let tcp = tokio::net::TcpStream::connect(front_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{front_addr}/echo"))
            .body(body)
            .unwrap();
        let sending = tokio::spawn(async move {
            for part in ["first ", "second ", "third"] {
                tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            tx.send(Ok(Frame::trailers(t))).await.unwrap();
        });
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(collected.to_bytes(), "first second third");
        assert_eq!(trailers["x-trailer-grpc-status"], "0");
        assert_eq!(trailers["x-done"], "yes");
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_in_memory_goes_out_with_its_length() {
        let (addr, _) = echo_server(false).await;
        let mut req = get(addr);
        *req.method_mut() = Method::POST;
        *req.body_mut() = RequestBody::Full(Some(Bytes::from_static(b"hello")));
        let resp = H2Client::new(None)
            .send(req, &ConnectTarget::local(addr), false)
            .await
            .unwrap();
        assert_eq!(resp.headers()["seen-content-length"], "5");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
    }
}
