//! Outbound listener (app egress). An intercepted connection (SO_ORIGINAL_DST)
//! to a tcp/opaque mesh destination is forwarded without sniffing; everything
//! else is sniffed: HTTP is routed by Host (then by the mesh service the
//! original destination belongs to, else passed through to it, see
//! `http::outbound`); other bytes go to the mesh service the original
//! destination belongs to, else pass through to it unchanged, or are refused
//! when there is no original destination. Destination ports in
//! WEFT_OPAQUE_PORTS are never sniffed.

use super::Context;
use crate::http::server::Conn;
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
    let detected = match original {
        Some(o) if ctx.is_opaque_port(o.port()) => {
            metrics::detection("skipped_opaque");
            Detected::Opaque
        }
        _ => {
            let d = detect(&stream, ctx.detect_timeout).await;
            if d == Detected::Opaque {
                metrics::detection("opaque");
            }
            d
        }
    };
    match detected {
        Detected::Http1 | Detected::Http2 => {
            metrics::detection("http");
            let conn = Conn {
                peer,
                identity: None,
                original_dst: original,
            };
            let h1 = detected == Detected::Http1;
            ctx.serve_http(crate::http::Direction::Outbound, stream, conn, h1)
                .await;
        }
        Detected::Opaque => {
            let target = match (cluster, original) {
                (Some(c), _) => c.pick_with_identity().or(original.map(|o| (o, None))),
                (None, Some(o)) => {
                    // Outside the mesh: on to where the app was going.
                    metrics::passthrough("tcp");
                    Some((o, None))
                }
                (None, None) => None,
            };
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
