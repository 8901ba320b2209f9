//! Serves one client connection with hyper (HTTP/1.1 or h2c, told apart by
//! the preface; upgrades allowed) and hands each request, with the snapshot
//! read once for it, to its direction's handler.

use crate::http::body::ResponseBody;
use crate::http::headers::{is_grpc, normalize_host};
use crate::http::inbound::{Caller, Inbound};
use crate::http::limits::{MAX_HEADER_LIST_BYTES, MAX_HEAD_BYTES};
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

/// How long a client may take to send a request head (HTTP/1.1) unless
/// `--header-read-timeout-ms` says otherwise; HAProxy's `timeout
/// http-request` is the same idea.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

enum Handler {
    Inbound(Inbound),
    Outbound(Outbound),
}

/// The HTTP server of one listener direction.
pub struct HttpServer {
    snapshot: SnapshotHolder,
    handler: Handler,
    header_read_timeout: Duration,
    /// Requests refused at the edge, before any route or app port.
    refused: RequestMetrics,
}

impl HttpServer {
    /// Outbound (app egress). `mtls`: None with --insecure-dev (every hop
    /// plaintext).
    pub fn outbound(snapshot: SnapshotHolder, mtls: Option<Arc<MeshTls>>) -> Self {
        HttpServer {
            snapshot,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            handler: Handler::Outbound(Outbound::new(mtls)),
            refused: RequestMetrics::new("outbound", "none", "none"),
        }
    }

    /// Inbound (to the local app on `app_port`).
    pub fn inbound(snapshot: SnapshotHolder, service: &str, app_port: u16) -> Self {
        HttpServer {
            snapshot,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            handler: Handler::Inbound(Inbound::new(service, app_port)),
            refused: RequestMetrics::new("inbound", "inbound", service),
        }
    }

    /// Closes HTTP/1.1 connections whose request head takes longer than
    /// `timeout` (slow or stalled clients).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    fn direction(&self) -> Direction {
        match self.handler {
            Handler::Inbound(_) => Direction::Inbound,
            Handler::Outbound(_) => Direction::Outbound,
        }
    }

    /// Serves one client connection until it closes or the drain asks it to
    /// finish its in-flight requests and close.
    /// `peer_identity`: the caller proven by its certificate (inbound mTLS).
    pub async fn serve<I>(
        self: Arc<Self>,
        stream: I,
        peer: SocketAddr,
        peer_identity: Option<Arc<Peer>>,
        mut draining: watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let direction = self.direction().as_str();
        let span = tracing::debug_span!("http_connection", direction, %peer);
        let caller = peer_identity.map(|p| Caller {
            header: HeaderValue::from_str(&p.uri).ok(),
            peer: p,
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        builder.http2().max_header_list_size(MAX_HEADER_LIST_BYTES);
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let caller = caller.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req, peer, caller).await) }
        });
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
        };
        if let Err(e) = result {
            tracing::debug!(direction, error = %e, "http connection ended with error");
        }
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        caller: Option<Caller>,
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
            Handler::Outbound(out) => out.handle(&snapshot, req, client, start).await,
            Handler::Inbound(inb) => inb.handle(&snapshot, req, client, caller, start).await,
        }
    }
}
