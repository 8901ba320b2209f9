//! Outbound listener (app egress). An intercepted connection (SO_ORIGINAL_DST)
//! to a tcp/opaque destination is forwarded without sniffing; everything else
//! is sniffed: HTTP is routed by Host, other bytes go to
//! the original destination, or are refused when there is none.

use super::Context;
use crate::listener::detect::{detect, Detected};
use crate::listener::orig_dst::original_dst;
use crate::metrics;
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn handle(ctx: Arc<Context>, stream: TcpStream, peer: std::net::SocketAddr) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let original = original_dst(&stream, local);
    let snapshot = ctx.snapshot.load_full();
    let cluster = original.and_then(|a| snapshot.cluster_for_address(a).cloned());
    if let Some(c) = &cluster {
        if c.protocol.is_opaque() {
            metrics::detection("skipped_opaque");
            if let Some((target, identity)) = c.pick_with_identity() {
                ctx.forward_tcp("outbound", stream, target, identity.as_deref())
                    .await;
            }
            return;
        }
    }
    match detect(&stream, ctx.detect_timeout).await {
        Detected::Http1 | Detected::Http2 => {
            metrics::detection("http");
            ctx.serve_http(crate::http::Direction::Outbound, stream, peer)
                .await;
        }
        Detected::Opaque => {
            metrics::detection("opaque");
            let target = cluster
                .and_then(|c| c.pick_with_identity())
                .or(original.map(|o| (o, None)));
            match target {
                Some((t, identity)) => {
                    ctx.forward_tcp("outbound", stream, t, identity.as_deref())
                        .await
                }
                None => tracing::debug!(%local, "non-HTTP connection with no destination; closing"),
            }
        }
    }
}
