//! Inbound listener (traffic from other sidecars to the local app). The app
//! port's declared protocol decides: http/http2/grpc are served as HTTP, tcp/opaque
//! are forwarded untouched (server-first protocols never wait), and an
//! undeclared port is sniffed. mTLS termination arrives with the identity issue.

use super::Context;
use crate::detect::{detect, Detected};
use crate::metrics;
use crate::snapshot::Protocol;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn handle(ctx: Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let declared = ctx
        .snapshot
        .load()
        .app_port(ctx.app_port)
        .map(|p| p.protocol);
    let http = match declared {
        Some(p) if p.is_opaque() => {
            metrics::detection("skipped_opaque");
            false
        }
        Some(Protocol::Http | Protocol::Http2 | Protocol::Grpc) => true,
        _ => !matches!(detect(&stream, ctx.detect_timeout).await, Detected::Opaque),
    };
    if http {
        ctx.serve_http(crate::http::Direction::Inbound, stream, peer)
            .await;
    } else {
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, ctx.app_port));
        if let Err(e) = crate::tcp::forward(stream, app, &ctx.tcp_inbound).await {
            tracing::debug!(%app, error = %e, "inbound tcp ended with error");
        }
    }
}
