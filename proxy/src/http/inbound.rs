//! The inbound request path (a peer sidecar, or a plaintext caller, to the
//! local app), in order: authorize → rate-limit → caller identity → app →
//! respond. Each phase is one call into its policy module.

use crate::http::body::{ClientBody, Held, RequestBody, ResponseBody};
use crate::http::headers::{authority_as_host, is_grpc, is_upgrade, strip_hop_by_hop};
use crate::http::limits::ClientTimeouts;
use crate::http::local_response::{local_response, rate_limited};
use crate::http::upgrade;
use crate::http::upstream::{upstream_uri, ConnectTarget, Upstreams};
use crate::metrics::RequestMetrics;
use crate::mtls::PEER_IDENTITY_HEADER;
use crate::policy::authz::{Access, Peer};
use crate::policy::rate_limit::{Call, Verdict};
use crate::snapshot::Snapshot;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The caller a connection's certificate proved, and its identity as the
/// header value the app receives.
#[derive(Clone)]
pub struct Caller {
    pub peer: Arc<Peer>,
    pub header: Option<HeaderValue>,
}

pub struct Inbound {
    /// How long the client's body may stall (ClientTimeouts::body_read).
    pub body_read: Duration,
    app_port: u16,
    /// 127.0.0.1:<app_port>.
    app: ConnectTarget,
    app_authority: Authority,
    metrics: RequestMetrics,
    upstreams: Upstreams,
}

type Refused = Response<ResponseBody>;

impl Inbound {
    pub fn new(service: &str, app_port: u16) -> Self {
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, app_port));
        Inbound {
            body_read: ClientTimeouts::default().body_read,
            app_port,
            app: ConnectTarget::local(app),
            app_authority: crate::host::authority_of(&app),
            metrics: RequestMetrics::new("inbound", "inbound", service),
            upstreams: Upstreams::new(None),
        }
    }

    pub async fn handle(
        &self,
        snapshot: &Snapshot,
        mut req: Request<Incoming>,
        client: SocketAddr,
        caller: Option<Caller>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let grpc = is_grpc(req.headers());
        let peer = caller.as_ref().map(|c| &*c.peer);
        let refused = self
            .authorize(snapshot, &req, peer, grpc)
            .or_else(|| self.rate_limit(snapshot, &req, peer, client, grpc));
        if let Some(refused) = refused {
            self.metrics
                .record(refused.status().as_u16(), start.elapsed());
            return refused;
        }
        set_caller_identity(req.headers_mut(), caller);
        self.to_app(snapshot, req, grpc, start).await
    }

    /// Authorization: who may call the app, on which path and method. Some:
    /// the refusal to answer with.
    fn authorize(
        &self,
        snapshot: &Snapshot,
        req: &Request<Incoming>,
        peer: Option<&Peer>,
        grpc: bool,
    ) -> Option<Refused> {
        let decision = snapshot.authz.check(
            self.app_port,
            peer,
            Access::Http {
                path: req.uri().path(),
                method: req.method().as_str(),
            },
        );
        if decision.allow {
            return None;
        }
        tracing::debug!(caller = ?peer.map(|p| &p.uri), policy = %decision.policy, "request denied");
        Some(local_response(
            StatusCode::FORBIDDEN,
            "authz_denied",
            format!("weft: denied by authorization {}\n", decision.policy),
            grpc,
        ))
    }

    /// Rate limits on calls to the app. Some: the refusal to answer with.
    fn rate_limit(
        &self,
        snapshot: &Snapshot,
        req: &Request<Incoming>,
        peer: Option<&Peer>,
        client: SocketAddr,
        grpc: bool,
    ) -> Option<Refused> {
        if snapshot.rate_limits.is_empty() {
            return None;
        }
        let verdict = snapshot.rate_limits.check(&Call {
            port: self.app_port,
            path: req.uri().path(),
            method: req.method().as_str(),
            identity: peer.map(|p| &*p.uri),
            headers: req.headers(),
            source: client.ip(),
        });
        match verdict {
            Verdict::Limited { name, retry_after } => Some(rate_limited(&name, retry_after, grpc)),
            Verdict::Allow => None,
        }
    }

    /// The request to the app, and the app's response back.
    async fn to_app(
        &self,
        snapshot: &Snapshot,
        mut req: Request<Incoming>,
        grpc: bool,
        start: Instant,
    ) -> Response<ResponseBody> {
        let h2 = match snapshot.app_port(self.app_port) {
            Some(p) if !p.protocol.is_opaque() => p.protocol.is_h2(),
            _ => req.version() == http::Version::HTTP_2,
        };
        let upgrade = !h2 && is_upgrade(req.headers());
        let on_client_upgrade = upgrade::client_side(&mut req, upgrade);
        let (mut parts, body) = req.into_parts();
        if !h2 {
            if let Some(host) = authority_as_host(&parts) {
                parts.headers.insert(header::HOST, host);
            }
        }
        parts.uri = match upstream_uri(self.app_authority.clone(), &parts.uri, false) {
            Ok(u) => u,
            Err(e) => {
                self.metrics.record(400, start.elapsed());
                return local_response(
                    StatusCode::BAD_REQUEST,
                    "bad_uri",
                    format!("weft: {e}\n"),
                    grpc,
                );
            }
        };
        strip_hop_by_hop(&mut parts.headers, upgrade);
        parts.version = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let (body, body_watch) = ClientBody::new(body, self.body_read);
        let request = Request::from_parts(parts, RequestBody::Stream(body));
        match self
            .upstreams
            .send(request, self.app.clone(), false, h2)
            .await
        {
            Ok(mut resp) => {
                self.metrics.record(resp.status().as_u16(), start.elapsed());
                if !upgrade::splice_if_switched(on_client_upgrade, &mut resp, "inbound") {
                    strip_hop_by_hop(resp.headers_mut(), false);
                }
                resp.map(|b| ResponseBody::upstream(b, Held::default(), None, None))
            }
            Err(e) => {
                if let Some(fault) = body_watch.fault() {
                    tracing::debug!(port = self.app_port, error = %e, "request body from the caller failed");
                    let (status, reason) = fault.status();
                    self.metrics.record(status.as_u16(), start.elapsed());
                    return local_response(status, reason, format!("weft: {e}\n"), grpc);
                }
                let reason = if e.is_connect() {
                    "upstream_connect"
                } else {
                    "upstream_error"
                };
                tracing::debug!(port = self.app_port, error = %e, "request to the app failed");
                self.metrics.record(502, start.elapsed());
                local_response(
                    StatusCode::BAD_GATEWAY,
                    reason,
                    format!("weft: app port {}: {reason}\n", self.app_port),
                    grpc,
                )
            }
        }
    }
}

/// Only the sidecar may say who called: drop any copy the caller sent, then
/// add the verified identity.
fn set_caller_identity(headers: &mut HeaderMap, caller: Option<Caller>) {
    headers.remove(PEER_IDENTITY_HEADER);
    if let Some(Caller { peer, header }) = caller {
        peer.traffic.increment(1);
        if let Some(id) = header {
            headers.insert(PEER_IDENTITY_HEADER, id);
        }
    }
}
