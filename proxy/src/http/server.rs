//! Serves one client connection, HTTP/2 (h2c or h2 over TLS, told by its
//! preface) with `h2_server`, HTTP/1.1 with hyper (upgrades allowed), and
//! hands each request, with the snapshot read once for it, to its
//! direction's handler.

use crate::http::body::RecvBody;
use crate::http::body::ResponseBody;
use crate::http::fast_h1::{Ended, FastH1};
use crate::http::h2_server::{self, Stop, PREFACE};
use crate::http::head_timeout::{is_header_timeout, ClientIo, Watched, HEADER_TIMEOUTS};
use crate::http::headers::{is_grpc, normalize_host};
use crate::http::idle::{Activity, Counted};
use crate::http::inbound::{Caller, Inbound};
use crate::http::limits::{ClientTimeouts, MAX_HEAD_BYTES};
use crate::http::local_response::local_response;
use crate::http::outbound::Outbound;
use crate::http::prefixed::Prefixed;
use crate::metrics::RequestMetrics;
use crate::mtls::MeshTls;
use crate::policy::authz::Peer;
use crate::snapshot::SnapshotHolder;
use bytes::BytesMut;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// How long an idle connection that was asked to close (GOAWAY) may take
/// to do so before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

enum Handler {
    Inbound(Inbound),
    Outbound(Outbound),
}

/// Client connections closed for having no request in flight for too long.
pub const IDLE_CLOSED: &str = "weft_http_idle_connections_closed_total";

/// Who a client connection is and where it was headed.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The caller proven by its certificate (inbound mTLS).
    pub identity: Option<Arc<Peer>>,
    /// The address the client dialled, for an intercepted connection
    /// (SO_ORIGINAL_DST): outbound, where an unrouted request passes
    /// through to (or the mesh service whose VIP it is); inbound, the app
    /// port.
    pub original_dst: Option<SocketAddr>,
}

impl Conn {
    /// The peer, the caller its certificate proves (with the header value
    /// that names it), and the original destination.
    fn parts(self) -> (SocketAddr, Option<Caller>, Option<SocketAddr>) {
        let caller = self.identity.map(|p| Caller {
            header: HeaderValue::from_str(&p.uri).ok(),
            peer: p,
        });
        (self.peer, caller, self.original_dst)
    }
}

/// The HTTP server of one listener direction.
pub struct HttpServer {
    snapshot: SnapshotHolder,
    handler: Handler,
    /// The HTTP/1.1 fast path (outbound only).
    fast_h1: Option<FastH1>,
    timeouts: ClientTimeouts,
    /// Requests refused at the edge, before any route or app port.
    refused: RequestMetrics,
}

impl HttpServer {
    /// Outbound (app egress). `mtls`: None with --insecure-dev (every hop
    /// plaintext).
    pub fn outbound(snapshot: SnapshotHolder, mtls: Option<Arc<MeshTls>>) -> Self {
        HttpServer {
            snapshot,
            timeouts: ClientTimeouts::default(),
            fast_h1: None,
            handler: Handler::Outbound(Outbound::new(mtls)),
            refused: RequestMetrics::new("outbound", "none", "none"),
        }
    }

    /// Inbound (to the local app on `app_port`).
    pub fn inbound(snapshot: SnapshotHolder, service: &str, app_port: u16) -> Self {
        HttpServer {
            snapshot,
            timeouts: ClientTimeouts::default(),
            fast_h1: None,
            handler: Handler::Inbound(Inbound::new(service, app_port)),
            refused: RequestMetrics::new("inbound", "inbound", service),
        }
    }

    /// The deadlines client connections live under.
    pub fn with_timeouts(mut self, timeouts: ClientTimeouts) -> Self {
        self.timeouts = timeouts;
        match &mut self.handler {
            Handler::Inbound(h) => h.body_read = timeouts.body_read,
            Handler::Outbound(h) => h.body_read = timeouts.body_read,
        }
        self
    }

    /// Plain HTTP/1.1 requests of an outbound server go through the fast
    /// path (`fast_h1`) when `on`.
    pub fn with_fast_h1(mut self, on: bool) -> Self {
        if let (true, Handler::Outbound(out)) = (on, &self.handler) {
            self.fast_h1 = Some(FastH1::new(out.has_mesh_tls()));
        }
        self
    }

    /// Serves a plaintext client connection: one that starts with an
    /// HTTP/1.1 request (`h1`) on the fast path while its requests are the
    /// fast path's, the rest (and h2c) with hyper.
    pub async fn serve_tcp(
        self: Arc<Self>,
        stream: TcpStream,
        conn: Conn,
        mut draining: watch::Receiver<bool>,
        h1: bool,
    ) {
        let Some(fast) = self.fast_h1.as_ref().filter(|_| h1) else {
            return self.serve(stream, conn, draining).await;
        };
        let span = tracing::debug_span!("http_connection", direction = "outbound", fast = true, peer = %conn.peer);
        let ended = fast
            .serve(&self.snapshot, self.timeouts, stream, &conn, &mut draining)
            .instrument(span)
            .await;
        if let Ended::Handoff(read, stream) = ended {
            self.serve(Prefixed::new(read, stream), conn, draining)
                .await
        }
    }

    fn direction(&self) -> Direction {
        match self.handler {
            Handler::Inbound(_) => Direction::Inbound,
            Handler::Outbound(_) => Direction::Outbound,
        }
    }

    /// Serves one client connection until it closes or the drain asks it to
    /// finish its in-flight requests and close.
    pub async fn serve<I: ClientIo + 'static>(
        self: Arc<Self>,
        stream: I,
        conn: Conn,
        draining: watch::Receiver<bool>,
    ) {
        self.serve_boxed(Box::new(stream), conn, draining).await
    }

    async fn serve_boxed(
        self: Arc<Self>,
        mut stream: Box<dyn ClientIo>,
        conn: Conn,
        mut draining: watch::Receiver<bool>,
    ) {
        let direction = self.direction().as_str();
        let span = tracing::debug_span!("http_connection", direction, peer = %conn.peer);
        let t = self.timeouts;
        let activity = Activity::new();
        // HTTP/2 by its preface, else HTTP/1.1; a client that sends neither
        // in time, or arrives while draining, is dropped.
        let sniffed = tokio::select! {
            s = sniff_h2(&mut stream) => s,
            _ = activity.idle_for(t.header_read, t.idle) => {
                metrics::counter!(IDLE_CLOSED, "direction" => direction).increment(1);
                return;
            }
            _ = draining.wait_for(|d| *d) => return,
        };
        let (h2, read) = match sniffed {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(direction, error = %e, "client connection ended before a request");
                return;
            }
        };
        let stream = Prefixed::new(read, stream);
        if h2 {
            self.serve_h2(stream, conn, draining, activity)
                .instrument(span)
                .await
        } else {
            self.serve_h1(stream, conn, draining, activity)
                .instrument(span)
                .await
        }
    }

    /// HTTP/2: every stream served on this connection's task (`h2_server`).
    async fn serve_h2(
        self: Arc<Self>,
        stream: Prefixed<Box<dyn ClientIo>>,
        conn: Conn,
        mut draining: watch::Receiver<bool>,
        activity: Arc<Activity>,
    ) {
        let direction = self.direction().as_str();
        let t = self.timeouts;
        let (peer, caller, original_dst) = conn.parts();
        let handle = |req| {
            // Boxed: the request's future is kilobytes, and the connection's
            // task holds one per stream in flight.
            Box::pin(self.handle(req, peer, caller.clone(), original_dst))
        };
        let watching = activity.clone();
        let stop = async move {
            tokio::select! {
                _ = draining.wait_for(|d| *d) => Stop::Drain,
                served = watching.idle_for(t.header_read, t.idle) => {
                    // Nothing in flight. A client that never sent a request
                    // is dropped; one that did is asked to go (GOAWAY) and
                    // dropped if it does not.
                    metrics::counter!(IDLE_CLOSED, "direction" => direction).increment(1);
                    Stop::Idle(if served { IDLE_CLOSE_GRACE } else { Duration::ZERO })
                }
            }
        };
        if let Err(e) = h2_server::serve(stream, t.keepalive, activity, handle, stop).await {
            tracing::debug!(direction, error = %e, "http/2 connection ended with error");
        }
    }

    /// HTTP/1.1 (with upgrades) on hyper.
    async fn serve_h1(
        self: Arc<Self>,
        stream: Prefixed<Box<dyn ClientIo>>,
        conn: Conn,
        mut draining: watch::Receiver<bool>,
        activity: Arc<Activity>,
    ) {
        let direction = self.direction().as_str();
        let t = self.timeouts;
        let (peer, caller, original_dst) = conn.parts();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(t.header_read)
            .max_buf_size(MAX_HEAD_BYTES);
        let this = self.clone();
        let counting = activity.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let caller = caller.clone();
            let in_flight = counting.start();
            async move {
                // Boxed: this future is kilobytes.
                let req = req.map(RecvBody::H1);
                let resp = Box::pin(this.handle(req, peer, caller, original_dst)).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Counted::new(b, in_flight)))
            }
        });
        let (stream, timed_out) = Watched::new(stream);
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let drain_started = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = drain_started => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            served = activity.idle_for(t.header_read, t.idle) => {
                // Nothing in flight. A client that never sent a request is
                // dropped; one that did is closed after its last response.
                metrics::counter!(IDLE_CLOSED, "direction" => direction).increment(1);
                if served {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(IDLE_CLOSE_GRACE, conn)
                        .await
                        .unwrap_or(Ok(()))
                } else {
                    // The first-request deadline: a partial head gets 408.
                    timed_out.set();
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            if is_header_timeout(&e) {
                // Answered 408 when `conn` drops the stream, if a head was
                // under way.
                timed_out.set();
                metrics::counter!(HEADER_TIMEOUTS, "direction" => direction).increment(1);
            }
            tracing::debug!(direction, error = %e, "http connection ended with error");
        }
    }

    async fn handle(
        &self,
        mut req: Request<RecvBody>,
        client: SocketAddr,
        caller: Option<Caller>,
        original_dst: Option<SocketAddr>,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        if let Err(why) = normalize_host(&mut req) {
            let grpc = is_grpc(req.headers());
            self.refused.record(400, start.elapsed());
            return local_response(
                StatusCode::BAD_REQUEST,
                "bad_host",
                format!("weft: {why}\n"),
                grpc,
            );
        }
        let snapshot = self.snapshot.load_full();
        match &self.handler {
            Handler::Outbound(out) => {
                out.handle(&snapshot, req, client, original_dst, start)
                    .await
            }
            Handler::Inbound(inb) => {
                let port = original_dst.map(|d| d.port());
                inb.handle(&snapshot, req, client, caller, port, start)
                    .await
            }
        }
    }
}

/// Reads until the first bytes are HTTP/2's preface or cannot be: true
/// for HTTP/2, with the bytes read (to be read again by the protocol).
async fn sniff_h2<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<(bool, BytesMut)> {
    let mut read = BytesMut::with_capacity(PREFACE.len());
    loop {
        let n = io.read_buf(&mut read).await?;
        let got = &read[..];
        if !PREFACE.starts_with(got) {
            return Ok((false, read));
        }
        if got.len() == PREFACE.len() {
            return Ok((true, read));
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
