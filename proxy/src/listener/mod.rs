//! Listeners: the fixed outbound and inbound ones, and the explicit-mode TCP
//! listeners the control plane asks for. Each accepted connection is either
//! handed to pingora (HTTP) or forwarded as opaque TCP.

pub mod explicit;
pub mod inbound;
pub mod outbound;

use crate::drain::Drain;
use crate::http::MeshHttp;
use crate::metrics::TcpMetrics;
use crate::snapshot::SnapshotHolder;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_proxy::HttpProxy;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Everything a connection handler needs.
pub struct Context {
    pub snapshot: SnapshotHolder,
    pub drain: Drain,
    pub outbound_http: Arc<HttpProxy<MeshHttp>>,
    pub inbound_http: Arc<HttpProxy<MeshHttp>>,
    pub detect_timeout: Duration,
    pub app_port: u16,
    pub tcp_outbound: TcpMetrics,
    pub tcp_inbound: TcpMetrics,
}

impl Context {
    /// Serves one HTTP connection (h1 or h2c) with pingora. The addresses
    /// we already know go into pingora's socket digest, as its own listener
    /// does, so it never asks the kernel for them per request.
    pub async fn serve_http(
        &self,
        app: &Arc<HttpProxy<MeshHttp>>,
        stream: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) {
        let _ = stream.set_nodelay(true);
        let mut l4: pingora_core::protocols::l4::stream::Stream = stream.into();
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        if let Some(local) = local {
            let _ = digest.local_addr.set(Some(local.into()));
        }
        l4.set_socket_digest(digest);
        let boxed: pingora_core::protocols::Stream = Box::new(l4);
        app.process_new(boxed, &self.drain.watch()).await;
    }
}

/// Accepts until the drain starts, running `handle` per connection while
/// holding a drain guard.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    ctx: Arc<Context>,
    name: &'static str,
    handle: F,
) where
    F: Fn(Arc<Context>, TcpStream, SocketAddr) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut draining = ctx.drain.watch();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = draining.wait_for(|d| *d) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = ctx.drain.track();
                let ctx = ctx.clone();
                let handle = handle.clone();
                tokio::spawn(async move {
                    handle(ctx, stream, peer).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::info!(listener = name, "stopped accepting (draining)");
}
