//! The inbound request path (a peer sidecar, or a plaintext caller, to the
//! local app), in order: authorize → rate-limit → caller identity → app →
//! respond. Each phase is one call into its policy module.

use crate::http::body::RecvBody;
use crate::http::body::ResponseBody;
use crate::http::forward::Plain;
use crate::http::headers::is_grpc;
use crate::http::limits::ClientTimeouts;
use crate::http::local_response::{local_response, rate_limited};
use crate::http::upstream::{ConnectTarget, Upstreams};
use crate::metrics::RequestMetrics;
use crate::mtls::PEER_IDENTITY_HEADER;
use crate::policy::authz::{Access, Peer};
use crate::policy::rate_limit::{Call, Verdict};
use crate::snapshot::Snapshot;
use http::header::{HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
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
        mut req: Request<RecvBody>,
        client: SocketAddr,
        caller: Option<Caller>,
        port: Option<u16>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let grpc = is_grpc(req.headers());
        let peer = caller.as_ref().map(|c| &*c.peer);
        // An intercepted connection names its app port; else the default.
        let port = port.unwrap_or(self.app_port);
        let refused = self
            .authorize(snapshot, &req, port, peer, grpc)
            .or_else(|| self.rate_limit(snapshot, &req, port, peer, client, grpc));
        if let Some(refused) = refused {
            self.metrics
                .record(refused.status().as_u16(), start.elapsed());
            return refused;
        }
        set_caller_identity(req.headers_mut(), caller);
        self.to_app(snapshot, req, port, grpc, start).await
    }

    /// Authorization: who may call the app, on which path and method. Some:
    /// the refusal to answer with.
    fn authorize(
        &self,
        snapshot: &Snapshot,
        req: &Request<RecvBody>,
        port: u16,
        peer: Option<&Peer>,
        grpc: bool,
    ) -> Option<Refused> {
        let decision = snapshot.authz.check(
            port,
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
        req: &Request<RecvBody>,
        port: u16,
        peer: Option<&Peer>,
        client: SocketAddr,
        grpc: bool,
    ) -> Option<Refused> {
        if snapshot.rate_limits.is_empty() {
            return None;
        }
        let verdict = snapshot.rate_limits.check(&Call {
            port,
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
        req: Request<RecvBody>,
        port: u16,
        grpc: bool,
        start: Instant,
    ) -> Response<ResponseBody> {
        let (app, app_authority) = if port == self.app_port {
            (self.app.clone(), self.app_authority.clone())
        } else {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            (ConnectTarget::local(addr), crate::host::authority_of(&addr))
        };
        let h2 = match snapshot.app_port(port) {
            Some(p) if !p.protocol.is_opaque() => p.protocol.is_h2(),
            _ => req.version() == http::Version::HTTP_2,
        };
        let plain = Plain {
            target: app,
            authority: app_authority,
            h2,
            body_read: self.body_read,
            what: "app port",
            port,
            direction: "inbound",
        };
        plain
            .forward(&self.upstreams, req, grpc, &self.metrics, start)
            .await
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
