//! Listeners: the fixed outbound and inbound ones, and the explicit-mode TCP
//! listeners the control plane asks for. Each accepted connection is either
//! served as HTTP (`crate::http`) or forwarded as opaque TCP (`crate::tcp`),
//! after protocol detection (`detect`) and, for intercepted connections,
//! their original destination (`orig_dst`).

pub mod connection_cap;
pub mod detect;
pub mod explicit;
pub mod inbound;
pub mod orig_dst;
pub mod outbound;
pub mod workers;

use crate::drain::Drain;
use crate::http::server::Conn;
use crate::http::{Direction, HttpServer};
use crate::metrics::TcpMetrics;
use crate::mtls::MeshTls;
use crate::snapshot::SnapshotHolder;
use connection_cap::ConnectionCap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Everything a connection handler needs.
pub struct Context {
    pub snapshot: SnapshotHolder,
    pub drain: Drain,
    pub outbound_http: Arc<HttpServer>,
    pub inbound_http: Arc<HttpServer>,
    /// Sidecar-to-sidecar mTLS; None with --insecure-dev.
    pub mtls: Option<Arc<MeshTls>>,
    pub detect_timeout: Duration,
    /// Destination ports never sniffed (WEFT_OPAQUE_PORTS).
    pub opaque_ports: Vec<xds_proto::ports::PortRange>,
    pub app_port: u16,
    pub tcp_outbound: TcpMetrics,
    pub tcp_inbound: TcpMetrics,
    /// Connection caps: outbound (shared by the explicit TCP listeners,
    /// also app egress) and inbound.
    pub outbound_cap: Arc<ConnectionCap>,
    pub inbound_cap: Arc<ConnectionCap>,
}

impl Context {
    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.iter().any(|r| r.contains(port))
    }

    /// Serves one HTTP connection (h1 or h2c) in `direction`; `h1`: it
    /// starts with an HTTP/1.x request.
    pub async fn serve_http(&self, direction: Direction, stream: TcpStream, conn: Conn, h1: bool) {
        let http = match direction {
            Direction::Outbound => &self.outbound_http,
            Direction::Inbound => &self.inbound_http,
        };
        let _ = stream.set_nodelay(true);
        http.clone()
            .serve_tcp(stream, conn, self.drain.watch(), h1)
            .await
    }

    /// Forwards an opaque connection to `target` (mTLS when `identity` names
    /// its sidecar), logging how it ended.
    pub async fn forward_tcp(
        &self,
        listener: &'static str,
        stream: TcpStream,
        target: SocketAddr,
        identity: Option<&str>,
    ) {
        let forwarded = crate::tcp::forward_to_endpoint(
            stream,
            target,
            identity,
            self.mtls.as_deref(),
            &self.tcp_outbound,
        )
        .await;
        if let Err(e) = forwarded {
            tracing::debug!(listener, %target, error = %e, "tcp forwarding ended with error");
        }
    }
}

/// Accepts until the drain starts, running `handle` per connection while
/// holding a drain guard and a slot of `cap`. Accept errors (EMFILE and
/// friends) back off from 10 ms up to 1 s instead of spinning, are counted,
/// and logged at most once a second.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    ctx: Arc<Context>,
    name: &'static str,
    cap: Arc<ConnectionCap>,
    handle: F,
) where
    F: Fn(Arc<Context>, TcpStream, SocketAddr) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut draining = ctx.drain.watch();
    let accept_errors = metrics::counter!(connection_cap::ACCEPT_ERRORS_TOTAL, "listener" => name);
    let last_error_log = AtomicU64::new(0);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = draining.wait_for(|d| *d) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let Some(slot) = cap.admit() else {
                    drop(stream);
                    continue;
                };
                let guard = ctx.drain.track();
                let ctx = ctx.clone();
                let handle = handle.clone();
                tokio::spawn(async move {
                    handle(ctx, stream, peer).await;
                    drop(slot);
                    drop(guard);
                });
            }
            Err(e) => {
                accept_errors.increment(1);
                if connection_cap::once_a_second(&last_error_log) {
                    tracing::warn!(listener = name, error = %e, retry_in = ?backoff, "accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    tracing::info!(listener = name, "stopped accepting (draining)");
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
