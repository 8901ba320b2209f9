//! Inbound listener (traffic from other sidecars to the local app). The app
//! port's declared protocol decides: http/http2/grpc are served as HTTP, tcp/opaque
//! are forwarded untouched (server-first protocols never wait), and an
//! undeclared port is sniffed. With mTLS (the default) every connection is a
//! TLS handshake first; ALPN then picks HTTP (h2, or HTTP/1.1 for an
//! upgrade) or opaque TCP.

use super::Context;
use crate::listener::detect::{detect, Detected};
use crate::metrics;
use crate::mtls::Alpn;
use crate::policy::authz::Access;
use crate::protocol::Protocol;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn handle(ctx: Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    if let Some(mtls) = &ctx.mtls {
        // mTLS: the handshake proves the caller; ALPN says what follows.
        let _ = stream.set_nodelay(true);
        let Some((tls, identity, alpn)) = mtls.accept(stream, peer).await else {
            return;
        };
        match alpn {
            // One HTTP server for both: it tells h2 from HTTP/1.1 by the
            // preface; HTTP/1.1 here carries an upgrade.
            Alpn::H2 | Alpn::Http1 => {
                ctx.inbound_http
                    .clone()
                    .serve(tls, peer, Some(identity), ctx.drain.watch())
                    .await
            }
            Alpn::Tcp => {
                let decision =
                    ctx.snapshot
                        .load()
                        .authz
                        .check(ctx.app_port, Some(&identity), Access::Tcp);
                if !decision.allow {
                    tracing::info!(caller = %identity.uri, policy = %decision.policy, "tcp connection denied; closing");
                    return;
                }
                identity.traffic.increment(1);
                let app = SocketAddr::from((Ipv4Addr::LOCALHOST, ctx.app_port));
                let relayed = match tokio::net::TcpStream::connect(app).await {
                    Ok(up) => {
                        let _ = up.set_nodelay(true);
                        crate::tcp::relay(tls, up, &ctx.tcp_inbound).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = relayed {
                    tracing::debug!(%app, caller = %identity.uri, error = %e, "inbound tcp ended with error");
                }
            }
        }
        return;
    }
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
