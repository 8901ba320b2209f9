//! One request sent on, plaintext and untouched but for hop-by-hop headers,
//! to one address: the local app (inbound), or an intercepted request's
//! original destination outside the mesh (outbound passthrough). No
//! retries: the caller chose the address, and the body streams through.

use crate::http::body::RecvBody;
use crate::http::body::{ClientBody, Held, RequestBody, ResponseBody};
use crate::http::headers::{authority_as_host, is_upgrade, strip_hop_by_hop};
use crate::http::local_response::local_response;
use crate::http::upgrade;
use crate::http::upstream::{upstream_uri, ConnectTarget, Upstreams};
use crate::metrics::RequestMetrics;
use http::header;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use std::time::{Duration, Instant};

/// Where and how to send.
pub struct Plain {
    pub target: ConnectTarget,
    pub authority: Authority,
    /// h2c prior knowledge; else HTTP/1.1.
    pub h2: bool,
    /// How long the client's body may stall.
    pub body_read: Duration,
    /// For logs and 502 bodies: "app port" or "passthrough to port".
    pub what: &'static str,
    pub port: u16,
    /// "inbound" or "outbound", for the upgrade metrics.
    pub direction: &'static str,
}

impl Plain {
    pub async fn forward(
        &self,
        upstreams: &Upstreams,
        mut req: Request<RecvBody>,
        grpc: bool,
        metrics: &RequestMetrics,
        start: Instant,
    ) -> Response<ResponseBody> {
        let (h2, port, what) = (self.h2, self.port, self.what);
        let upgrade = !h2 && is_upgrade(req.headers());
        let on_client_upgrade = upgrade::client_side(&mut req, upgrade);
        let (mut parts, body) = req.into_parts();
        if !h2 {
            if let Some(host) = authority_as_host(&parts) {
                parts.headers.insert(header::HOST, host);
            }
        }
        parts.uri = match upstream_uri(self.authority.clone(), &parts.uri, false) {
            Ok(u) => u,
            Err(e) => {
                metrics.record(400, start.elapsed());
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
        match upstreams
            .send(request, self.target.clone(), false, h2)
            .await
        {
            Ok(mut resp) => {
                metrics.record(resp.status().as_u16(), start.elapsed());
                if !upgrade::splice_if_switched(on_client_upgrade, &mut resp, self.direction) {
                    strip_hop_by_hop(resp.headers_mut(), false);
                }
                resp.map(|b| ResponseBody::upstream(b, Held::default(), None, None))
            }
            Err(e) => {
                if let Some(fault) = body_watch.fault() {
                    tracing::debug!(what, port, error = %e, "request body from the client failed");
                    let (status, reason) = fault.status();
                    metrics.record(status.as_u16(), start.elapsed());
                    return local_response(status, reason, format!("weft: {e}\n"), grpc);
                }
                let reason = if e.is_connect() {
                    "upstream_connect"
                } else {
                    "upstream_error"
                };
                tracing::debug!(what, port, error = %e, "request failed");
                metrics.record(502, start.elapsed());
                local_response(
                    StatusCode::BAD_GATEWAY,
                    reason,
                    format!("weft: {what} {port}: {reason}\n"),
                    grpc,
                )
            }
        }
    }
}
