//! The HTTP path, as pingora's ordered phases: `request_filter` routes the
//! request against the snapshot read once for it, `upstream_peer` picks the
//! endpoint, `logging` records metrics. Policies (authz, rate limits, splits,
//! retries, breakers) slot into these phases in later issues.

use crate::metrics::RequestMetrics;
use crate::snapshot::{Snapshot, SnapshotHolder};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub struct MeshHttp {
    direction: Direction,
    snapshot: SnapshotHolder,
    app_port: u16,
    /// Inbound: every request; outbound: requests no route matched.
    fallback_metrics: RequestMetrics,
}

impl MeshHttp {
    pub fn outbound(snapshot: SnapshotHolder) -> Self {
        MeshHttp {
            direction: Direction::Outbound,
            snapshot,
            app_port: 0,
            fallback_metrics: RequestMetrics::new(Direction::Outbound.as_str(), "none", "none"),
        }
    }

    pub fn inbound(snapshot: SnapshotHolder, service: &str, app_port: u16) -> Self {
        MeshHttp {
            direction: Direction::Inbound,
            snapshot,
            app_port,
            fallback_metrics: RequestMetrics::new(Direction::Inbound.as_str(), "inbound", service),
        }
    }
}

pub struct RequestCtx {
    snapshot: Option<Arc<Snapshot>>,
    /// (virtual host, rule) indexes in `snapshot.routes`.
    rule: Option<(usize, usize)>,
    start: Instant,
}

const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const H2_STREAMS_PER_CONNECTION: usize = 128;

async fn respond(
    session: &mut Session,
    status: u16,
    reason: &'static str,
    body: String,
) -> Result<()> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-weft-error", reason)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

fn peer(addr: SocketAddr, h2: bool) -> Box<HttpPeer> {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(UPSTREAM_CONNECT_TIMEOUT);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    if h2 {
        // HTTP/2 prior knowledge (h2c): there is no ALPN in plaintext.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    Box::new(peer)
}

#[async_trait]
impl ProxyHttp for MeshHttp {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: None,
            rule: None,
            start: Instant::now(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Instant::now();
        let snapshot = self.snapshot.load_full();
        if self.direction == Direction::Outbound {
            let req = session.req_header();
            let authority = req
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| {
                    req.headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                })
                .unwrap_or("");
            match snapshot
                .routes
                .route_index(authority, req.uri.path(), &req.method, &req.headers)
            {
                Some(ix) => ctx.rule = Some(ix),
                None => {
                    let body = format!(
                        "weft: no route for host \"{authority}\" path \"{}\"\n",
                        req.uri.path()
                    );
                    ctx.snapshot = Some(snapshot);
                    respond(session, 404, "no_route", body).await?;
                    return Ok(true);
                }
            }
        }
        ctx.snapshot = Some(snapshot);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let snapshot = ctx.snapshot.as_ref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no snapshot in request context")
        })?;
        match self.direction {
            Direction::Outbound => {
                let (_, rule) = ctx
                    .rule
                    .and_then(|ix| snapshot.routes.rule(ix))
                    .ok_or_else(|| {
                        Error::explain(ErrorType::InternalError, "no route in request context")
                    })?;
                let addr = rule.target.pick().ok_or_else(|| {
                    Error::explain(
                        ErrorType::HTTPStatus(503),
                        format!("cluster {} has no endpoints", rule.target.name),
                    )
                })?;
                Ok(peer(addr, rule.target.protocol.is_h2()))
            }
            Direction::Inbound => {
                let h2 = match snapshot.app_port(self.app_port) {
                    Some(p) if !p.protocol.is_opaque() => p.protocol.is_h2(),
                    // Unknown app protocol: speak what the client spoke.
                    _ => session.is_http2(),
                };
                Ok(peer(
                    SocketAddr::from((Ipv4Addr::LOCALHOST, self.app_port)),
                    h2,
                ))
            }
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let rule = ctx
            .snapshot
            .as_ref()
            .zip(ctx.rule)
            .and_then(|(s, ix)| s.routes.rule(ix).map(|(_, r)| r.metrics.clone()));
        match rule {
            Some(m) => m.record(status, ctx.start.elapsed()),
            None => self.fallback_metrics.record(status, ctx.start.elapsed()),
        }
    }
}
