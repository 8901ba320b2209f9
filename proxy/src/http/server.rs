//! Serves one client connection with hyper (HTTP/1.1 or h2c, told apart by
//! the preface; upgrades allowed) and hands each request, with the snapshot
//! read once for it, to its direction's handler.

use crate::http::body::ResponseBody;
use crate::http::fast_h1::{Ended, FastH1, Prefixed};
use crate::http::head_timeout::{is_header_timeout, ClientIo, Watched, HEADER_TIMEOUTS};
use crate::http::headers::{is_grpc, normalize_host};
use crate::http::idle::{Activity, Counted};
use crate::http::inbound::{Caller, Inbound};
use crate::http::limits::{ClientTimeouts, KEEPALIVE_ACK, MAX_HEADER_LIST_BYTES, MAX_HEAD_BYTES};
use crate::http::local_response::local_response;
use crate::http::outbound::Outbound;
use crate::metrics::RequestMetrics;
use crate::mtls::MeshTls;
use crate::policy::authz::Peer;
use crate::snapshot::SnapshotHolder;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
        stream: Box<dyn ClientIo>,
        conn: Conn,
        mut draining: watch::Receiver<bool>,
    ) {
        let direction = self.direction().as_str();
        let Conn {
            peer,
            identity,
            original_dst,
        } = conn;
        let span = tracing::debug_span!("http_connection", direction, %peer);
        let caller = identity.map(|p| Caller {
            header: HeaderValue::from_str(&p.uri).ok(),
            peer: p,
        });
        let t = self.timeouts;
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(t.header_read)
            .max_buf_size(MAX_HEAD_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(t.keepalive))
            .keep_alive_timeout(KEEPALIVE_ACK)
            .max_header_list_size(MAX_HEADER_LIST_BYTES);
        let activity = Activity::new();
        let this = self.clone();
        let counting = activity.clone();
        let svc = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let caller = caller.clone();
            let in_flight = counting.start();
            async move {
                // Boxed: hyper moves the service future into the stream's
                // task, and this one is kilobytes.
                let resp = Box::pin(this.handle(req, peer, caller, original_dst)).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Counted::new(b, in_flight)))
            }
        });
        let (stream, timed_out) = Watched::new(stream);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .instrument(span);
        tokio::pin!(conn);
        let drain_started = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = drain_started => {
                conn.as_mut().inner_pin_mut().graceful_shutdown();
                conn.await
            }
            served = activity.idle_for(t.header_read, t.idle) => {
                // Nothing in flight. A client that never sent a request is
                // dropped; one that did is asked to go (HTTP/2 GOAWAY) and
                // dropped if it does not.
                metrics::counter!(IDLE_CLOSED, "direction" => direction).increment(1);
                if served {
                    conn.as_mut().inner_pin_mut().graceful_shutdown();
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
            if is_header_timeout(e.as_ref()) {
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
        mut req: Request<Incoming>,
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
