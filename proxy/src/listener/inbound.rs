//! Inbound listener (traffic from other sidecars, or plaintext callers, to
//! the local app). A connection redirected by the pod's interception rules
//! names its app port (SO_ORIGINAL_DST); one made to the listener directly
//! goes to `--app-port`.
//!
//! With mTLS (the default) a connection opening with a TLS handshake is a
//! sidecar: the handshake proves the caller and ALPN picks HTTP (h2, or
//! HTTP/1.1 for an upgrade) or opaque TCP. Anything else is a plaintext
//! caller from outside the mesh: refused in strict mode (the default),
//! served without an identity in permissive mode (`mtls: permissive` on
//! an Authorization). Plaintext is served by the port's declared protocol:
//! http/http2/grpc as HTTP, tcp/opaque untouched (server-first protocols
//! never wait), an undeclared port sniffed.

use super::Context;
use crate::http::server::Conn;
use crate::listener::detect::{detect, opening, Detected, Opening};
use crate::listener::orig_dst::original_dst;
use crate::metrics;
use crate::mtls::{Alpn, MeshTls};
use crate::policy::authz::Access;
use crate::protocol::Protocol;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn handle(ctx: Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let original = stream
        .local_addr()
        .ok()
        .and_then(|local| original_dst(&stream, local));
    let port = original.map_or(ctx.app_port, |o| o.port());
    if let Some(mtls) = &ctx.mtls {
        match opening(&stream, ctx.detect_timeout).await {
            Opening::Closed => return,
            Opening::Tls => return meshed(&ctx, mtls, stream, peer, original, port).await,
            Opening::Plaintext => {
                if !ctx.snapshot.load().authz.permissive {
                    metrics::inbound_plaintext("refused");
                    tracing::info!(%peer, port, "plaintext connection refused (mtls: strict)");
                    return;
                }
                metrics::inbound_plaintext("accepted");
            }
        }
    }
    plaintext(&ctx, stream, peer, original, port).await
}

/// A sidecar's mTLS connection.
async fn meshed(
    ctx: &Context,
    mtls: &MeshTls,
    stream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    port: u16,
) {
    let _ = stream.set_nodelay(true);
    let Some((tls, identity, alpn)) = mtls.accept(stream, peer).await else {
        return;
    };
    match alpn {
        // One HTTP server for both: it tells h2 from HTTP/1.1 by the
        // preface; HTTP/1.1 here carries an upgrade.
        Alpn::H2 | Alpn::Http1 => {
            let conn = Conn {
                peer,
                identity: Some(identity),
                original_dst,
            };
            ctx.inbound_http
                .clone()
                .serve(tls, conn, ctx.drain.watch())
                .await
        }
        Alpn::Tcp => {
            let decision = ctx
                .snapshot
                .load()
                .authz
                .check(port, Some(&identity), Access::Tcp);
            if !decision.allow {
                tracing::info!(caller = %identity.uri, policy = %decision.policy, "tcp connection denied; closing");
                return;
            }
            identity.traffic.increment(1);
            let app = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
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
}

/// A plaintext caller (--insecure-dev, or permissive mode).
async fn plaintext(
    ctx: &Context,
    stream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    port: u16,
) {
    let declared = ctx.snapshot.load().app_port(port).map(|p| p.protocol);
    let http = match declared {
        Some(p) if p.is_opaque() => {
            metrics::detection("skipped_opaque");
            false
        }
        _ if ctx.is_opaque_port(port) => {
            metrics::detection("skipped_opaque");
            false
        }
        Some(Protocol::Http | Protocol::Http2 | Protocol::Grpc) => true,
        _ => !matches!(detect(&stream, ctx.detect_timeout).await, Detected::Opaque),
    };
    if http {
        let conn = Conn {
            peer,
            identity: None,
            original_dst,
        };
        ctx.serve_http(crate::http::Direction::Inbound, stream, conn, false)
            .await;
        return;
    }
    // Opaque bytes from a caller without an identity: authorization
    // decides as for any unauthenticated caller.
    let decision = ctx.snapshot.load().authz.check(port, None, Access::Tcp);
    if !decision.allow {
        tracing::info!(%peer, policy = %decision.policy, "plaintext tcp connection denied; closing");
        return;
    }
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if let Err(e) = crate::tcp::forward(stream, app, &ctx.tcp_inbound).await {
        tracing::debug!(%app, error = %e, "inbound tcp ended with error");
    }
}
