//! The outbound request path (app egress to a mesh destination), in order:
//!
//! 1. route: the rule for host, path, method and headers (`route`);
//! 2. backend: the weighted split picks one (`route::Rule::pick_backend`);
//! 3. breaker: the cluster's limits admit it (`policy::circuit_breaker`);
//! 4. body: kept for replay if small (`replay`), request header edits;
//! 5. mirror: a copy to the shadow backend (`mirror`);
//! 6. tries: balancer pick (`lb`), per-try timeout (`policy::timeout`),
//!    send (`upstream`), outlier bookkeeping (`policy::outlier`), retry
//!    decision (`policy::retry`) with budget (`policy::retry_budget`);
//! 7. respond: response header edits, upgrades spliced, metrics.
//!
//! The whole of 4–7 runs under the request deadline.

use crate::cluster::Cluster;
use crate::host::{Host, HostGuard};
use crate::http::body::RecvBody;
use crate::http::body::{BodyFault, BodyWatch, ClientBody, Held, RequestBody, ResponseBody};
use crate::http::forward::Plain;
use crate::http::headers::{authority_as_host, grpc_status, is_grpc, is_upgrade, strip_hop_by_hop};
use crate::http::limits::ClientTimeouts;
use crate::http::local_response::{local_response, overloaded};
use crate::http::mirror::{self, MirrorTarget, Mirrors};
use crate::http::replay::Replay;
use crate::http::upgrade;
use crate::http::upstream::{over_limit, refused_stream, upstream_uri, ConnectTarget, Upstreams};
use crate::metrics::{RequestMetrics, SecurityCounters};
use crate::mtls::MeshTls;
use crate::policy::circuit_breaker::{Limit, RetrySlot};
use crate::policy::outlier::Outcome;
use crate::policy::retry::{FailedTry, Failure};
use crate::policy::timeout::{format_grpc_timeout, Deadline, GRPC_TIMEOUT};
use crate::route::{Backend, Rule};
use crate::snapshot::Snapshot;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Outbound {
    /// How long the client's body may stall (ClientTimeouts::body_read).
    pub body_read: Duration,
    upstreams: Upstreams,
    security: SecurityCounters,
    /// Requests that match no route.
    unrouted: RequestMetrics,
    /// Intercepted requests passed through to a destination outside the
    /// mesh.
    passthrough: RequestMetrics,
    mirrors: Mirrors,
}

/// What the tries came to.
enum Tried {
    Response(Response<RecvBody>, HostGuard),
    Failed {
        status: StatusCode,
        reason: &'static str,
        detail: String,
    },
    Overloaded(Limit),
}

/// Parts of the request every try needs.
struct Prepared<'a> {
    parts: request::Parts,
    /// Whether the client's body failed while a try was sending it.
    body_watch: BodyWatch,
    /// The client's authority as a Host header (for HTTP/1.1 hops when the
    /// client spoke HTTP/2).
    host_header: Option<HeaderValue>,
    grpc: bool,
    /// An HTTP/1.1 upgrade (WebSocket): sent over HTTP/1.1, never retried
    /// or mirrored.
    upgrade: bool,
    deadline: Option<Deadline>,
    client: SocketAddr,
    rule: &'a Rule,
    backend: &'a Backend,
}

/// One hop to a chosen host: where, and how.
struct Hop {
    target: ConnectTarget,
    meshed: bool,
    h2: bool,
}

impl Outbound {
    pub fn new(mtls: Option<Arc<MeshTls>>) -> Self {
        Outbound {
            body_read: ClientTimeouts::default().body_read,
            upstreams: Upstreams::new(mtls),
            security: SecurityCounters::new("http"),
            unrouted: RequestMetrics::new("outbound", "none", "none"),
            passthrough: RequestMetrics::new("outbound", "passthrough", "passthrough"),
            mirrors: Mirrors::default(),
        }
    }

    /// Whether endpoints with a sidecar are reached over mTLS.
    pub fn has_mesh_tls(&self) -> bool {
        self.upstreams.has_mesh()
    }

    /// `original_dst`: where an intercepted connection was headed. A
    /// request no route takes goes to the mesh service at that address
    /// (its VIP or an endpoint's address), else passes through to it;
    /// without one it gets 404.
    pub async fn handle(
        &self,
        snapshot: &Snapshot,
        mut req: Request<RecvBody>,
        client: SocketAddr,
        original_dst: Option<SocketAddr>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let grpc = is_grpc(req.headers());
        // 1. route
        let rule = match (route(snapshot, &req), original_dst) {
            (Some(rule), _) => rule,
            (None, Some(dst)) => match snapshot.intercepted_rule(dst) {
                Some(rule) => rule,
                None => return self.passthrough(req, dst, grpc, start).await,
            },
            (None, None) => {
                self.unrouted.record(404, start.elapsed());
                return no_route(&req, grpc);
            }
        };
        // 2. backend
        let backend = rule.pick_backend();
        backend.count_request();
        let cluster = &backend.cluster;
        let deadline = Deadline::of(start, rule.timeout, req.headers());
        // 3. breaker
        let slot = match cluster.admit(deadline).await {
            Ok(s) => s,
            Err(limit) => {
                rule.metrics.record(503, start.elapsed());
                return overloaded(limit, grpc);
            }
        };

        // 4. body and request headers
        let upgrade = is_upgrade(req.headers());
        let on_client_upgrade = upgrade::client_side(&mut req, upgrade);
        let (mut parts, body) = req.into_parts();
        let host_header = authority_as_host(&parts);
        if let Some(ops) = &rule.request_headers {
            ops.apply(&mut parts.headers);
        }
        strip_hop_by_hop(&mut parts.headers, upgrade);
        let may_retry = rule.retry.enabled() && !upgrade;
        let (body, body_watch) = ClientBody::new(body, self.body_read);
        let mut replay = match read_body(body, &body_watch, rule, may_retry, deadline).await {
            Ok(r) => r,
            Err((status, reason, e)) => {
                rule.metrics.record(status.as_u16(), start.elapsed());
                return local_response(status, reason, format!("weft: {e}\n"), grpc);
            }
        };
        let prepared = Prepared {
            parts,
            body_watch,
            host_header,
            grpc,
            upgrade,
            deadline,
            client,
            rule,
            backend,
        };
        // 5. mirror
        if let (false, Some(shadow), Some(body)) = (upgrade, rule.mirror_this(), replay.bytes()) {
            self.mirror(&prepared, shadow, body.cloned());
        }
        // 6. tries, under the deadline
        let tries = self.tries(&prepared, &mut replay, may_retry);
        let tried = match deadline {
            Some(d) => tokio::time::timeout_at(d.at.into(), tries)
                .await
                .unwrap_or_else(|_| Tried::Failed {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    reason: "request_timeout",
                    detail: format!(
                        "request timeout{} reached",
                        if d.from_grpc { " (grpc-timeout)" } else { "" }
                    ),
                }),
            None => tries.await,
        };
        // 7. respond
        match tried {
            Tried::Response(mut resp, host) => {
                rule.metrics.record(resp.status().as_u16(), start.elapsed());
                let held = Held {
                    slot: Some(slot),
                    host: Some(host),
                };
                if upgrade::splice_if_switched(on_client_upgrade, &mut resp, "outbound") {
                    return resp.map(|b| ResponseBody::upstream(b, held, None, None));
                }
                strip_hop_by_hop(resp.headers_mut(), false);
                if let Some(ops) = &rule.response_headers {
                    ops.apply(resp.headers_mut());
                }
                resp.map(|b| {
                    ResponseBody::upstream(b, held, rule.idle_timeout, deadline.map(|d| d.at))
                })
            }
            Tried::Failed {
                status,
                reason,
                detail,
            } => {
                tracing::debug!(cluster = %cluster.name, reason, %detail, "request failed");
                rule.metrics.record(status.as_u16(), start.elapsed());
                local_response(
                    status,
                    reason,
                    format!("weft: {}: {detail}\n", cluster.name),
                    grpc,
                )
            }
            Tried::Overloaded(limit) => {
                rule.metrics.record(503, start.elapsed());
                overloaded(limit, grpc)
            }
        }
    }

    /// An intercepted request for a destination outside the mesh: sent on
    /// to it as it is (plaintext, the client's HTTP version), counted.
    async fn passthrough(
        &self,
        req: Request<RecvBody>,
        dst: SocketAddr,
        grpc: bool,
        start: Instant,
    ) -> Response<ResponseBody> {
        crate::metrics::passthrough("http");
        let plain = Plain {
            target: ConnectTarget::local(dst),
            authority: crate::host::authority_of(&dst),
            h2: req.version() == http::Version::HTTP_2,
            body_read: self.body_read,
            what: "passthrough to",
            port: dst.port(),
            direction: "outbound",
        };
        plain
            .forward(&self.upstreams, req, grpc, &self.passthrough, start)
            .await
    }

    /// Sends the request, retrying as the rule's policy, the cluster's budget
    /// and its `max_retries` allow.
    async fn tries(&self, p: &Prepared<'_>, replay: &mut Replay, may_retry: bool) -> Tried {
        let cluster = &p.backend.cluster;
        let policy = &p.rule.retry;
        let (hosts, lb) = p.backend.hosts();
        let key = lb.hash_key(&p.parts.headers, Some(p.client.ip()));
        let mut previous: Option<usize> = None;
        let mut _retry_slot: Option<RetrySlot> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let Some(picked) = lb.pick(hosts, key, previous, cluster.unavailable()) else {
                return no_endpoints(hosts);
            };
            let host = &hosts[picked.index];
            let Some(body) = replay.next().await else {
                return Tried::Failed {
                    status: StatusCode::BAD_GATEWAY,
                    reason: "upstream_error",
                    detail: "the request body could not be replayed".into(),
                };
            };
            let hop = self.hop(cluster, host, p.upgrade);
            let req = match p.build(body, host, &hop) {
                Ok(r) => r,
                Err(e) => {
                    return Tried::Failed {
                        status: StatusCode::BAD_REQUEST,
                        reason: "bad_uri",
                        detail: e,
                    }
                }
            };
            self.security.record(hop.meshed);
            let per_try = match (policy.per_try_timeout, p.deadline) {
                (Some(t), Some(d)) => Some(t.min(d.remaining())),
                (t, _) => t,
            };
            let sent_at = Instant::now();
            let send = self.upstreams.send(req, hop.target, hop.meshed, hop.h2);
            let result = match per_try {
                Some(t) => tokio::time::timeout(t, send).await.map_err(|_| ()),
                None => Ok(send.await),
            };
            let (failure, response) = match result {
                Ok(Ok(resp)) => {
                    host.state.latency.observe(sent_at.elapsed());
                    let status = resp.status().as_u16();
                    cluster.record_outcome(host, picked.guard.probe, Outcome::of_status(status));
                    let failure = grpc_status(resp.headers())
                        .filter(|c| *c != 0)
                        .map(Failure::Grpc)
                        .or_else(|| (status >= 400).then_some(Failure::Status(status)));
                    match failure {
                        Some(f) => (f, Some(resp)),
                        None => return Tried::Response(resp, picked.guard),
                    }
                }
                Ok(Err(e)) => {
                    if let Some(limit) = over_limit(&e) {
                        return Tried::Overloaded(limit);
                    }
                    if let Some(fault) = p.body_watch.fault() {
                        // The client's fault: no retry, no outlier record.
                        let (status, reason) = fault.status();
                        return Tried::Failed {
                            status,
                            reason,
                            detail: e.to_string(),
                        };
                    }
                    let f = if e.is_connect() {
                        Failure::ConnectFailure
                    } else if refused_stream(&e) {
                        Failure::RefusedStream
                    } else {
                        Failure::Reset
                    };
                    tracing::debug!(host = %host.addr, error = %e, attempt, "try failed");
                    let outcome = if f == Failure::ConnectFailure {
                        Outcome::ConnectFailure
                    } else {
                        Outcome::GatewayError
                    };
                    cluster.record_outcome(host, picked.guard.probe, outcome);
                    (f, None)
                }
                Err(()) => {
                    cluster.record_outcome(host, picked.guard.probe, Outcome::GatewayError);
                    (Failure::PerTryTimeout, None)
                }
            };

            // Another try? The route's policy first, then the cluster's
            // max_retries and budget.
            let next = policy.next_try(
                failure,
                &FailedTry {
                    attempt,
                    replayable: may_retry && replay.replayable(),
                    method: &p.parts.method,
                    grpc: p.grpc,
                    response: response.as_ref().map(|r| r.headers()),
                    remaining: p.deadline.map(|d| d.remaining()),
                },
            );
            let admitted = next.and_then(|n| Some((n, cluster.admit_retry()?)));
            let Some(((reason, wait), retry_slot)) = admitted else {
                return match response {
                    Some(resp) => Tried::Response(resp, picked.guard),
                    None => failed(failure),
                };
            };
            _retry_slot = Some(retry_slot);
            cluster.runtime.retries.count(reason);
            tracing::debug!(host = %host.addr, ?failure, ?wait, attempt, "retrying");
            previous = Some(picked.index);
            drop(response);
            drop(picked);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// How a request reaches `host` of `cluster`: mTLS when a sidecar
    /// fronts it (and this proxy has mTLS), else the cluster's protocol; h2,
    /// except for an upgrade, which only HTTP/1.1 carries as it is.
    fn hop(&self, cluster: &Arc<Cluster>, host: &Host, upgrade: bool) -> Hop {
        let meshed = host.identity.is_some() && self.upstreams.has_mesh();
        Hop {
            target: ConnectTarget::endpoint(cluster, host),
            meshed,
            h2: !upgrade && (meshed || cluster.protocol.is_h2()),
        }
    }

    /// Sends a copy of the request to `shadow` in the background.
    fn mirror(&self, p: &Prepared<'_>, shadow: &Backend, body: Option<Bytes>) {
        let Some(slot) = self.mirrors.admit() else {
            return;
        };
        let (hosts, lb) = shadow.hosts();
        let Some(picked) = lb.pick(hosts, None, None, shadow.cluster.unavailable()) else {
            mirror::count("no_endpoints");
            return;
        };
        shadow.count_request();
        let host = &hosts[picked.index];
        let hop = self.hop(&shadow.cluster, host, false);
        let Ok(req) = p.build(RequestBody::Full(body), host, &hop) else {
            return;
        };
        let to = MirrorTarget {
            target: hop.target,
            meshed: hop.meshed,
            h2: hop.h2,
            guard: picked.guard,
        };
        mirror::send(&self.upstreams, slot, req, to);
    }
}

impl Prepared<'_> {
    /// One try's request: the same method, path and headers each time, sent
    /// to the chosen host.
    fn build(
        &self,
        body: RequestBody,
        host: &Host,
        hop: &Hop,
    ) -> Result<Request<RequestBody>, String> {
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = upstream_uri(host.authority.clone(), &self.parts.uri, hop.meshed)
            .map_err(|e| e.to_string())?;
        *req.version_mut() = if hop.h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let headers = req.headers_mut();
        *headers = self.parts.headers.clone();
        if !hop.h2 {
            if let Some(h) = &self.host_header {
                headers.insert(header::HOST, h.clone());
            }
        }
        if let (true, Some(d)) = (self.grpc, self.deadline) {
            headers.insert(GRPC_TIMEOUT, format_grpc_timeout(d.remaining()));
        }
        Ok(req)
    }
}

/// The rule for this request: by its authority (or Host), path, query,
/// method and headers.
fn route<'s>(snapshot: &'s Snapshot, req: &Request<RecvBody>) -> Option<&'s Rule> {
    let uri = req.uri();
    snapshot
        .routes
        .route(
            authority(req),
            uri.path(),
            uri.query(),
            req.method(),
            req.headers(),
        )
        .map(|(_, rule)| rule)
}

fn authority(req: &Request<RecvBody>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("")
}

fn no_route(req: &Request<RecvBody>, grpc: bool) -> Response<ResponseBody> {
    let body = format!(
        "weft: no route for host \"{}\" path \"{}\"\n",
        authority(req),
        req.uri().path()
    );
    local_response(StatusCode::NOT_FOUND, "no_route", body, grpc)
}

/// Reads the body as far as retries and mirrors need it. A small body is
/// read before the first try; a client that sends it slower than the
/// request deadline, or stalls it, gets 408.
async fn read_body(
    body: ClientBody,
    watch: &BodyWatch,
    rule: &Rule,
    may_retry: bool,
    deadline: Option<Deadline>,
) -> Result<Replay, (StatusCode, &'static str, String)> {
    let keep = may_retry || rule.mirror.is_some();
    let read = Replay::new(body, keep, rule.retry.max_body_bytes);
    let read = match deadline {
        Some(d) => match tokio::time::timeout_at(d.at.into(), read).await {
            Ok(read) => read,
            Err(_) => {
                return Err((
                    StatusCode::REQUEST_TIMEOUT,
                    "request_body_timeout",
                    "the request body did not arrive before the request deadline".into(),
                ))
            }
        },
        None => read.await,
    };
    read.map_err(|e| {
        let (status, reason) = watch.fault().unwrap_or(BodyFault::Malformed).status();
        (status, reason, e)
    })
}

fn no_endpoints(hosts: &[Host]) -> Tried {
    Tried::Failed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "no_endpoints",
        detail: no_endpoints_detail(hosts).into(),
    }
}

/// Why the balancer found no host among `hosts` (for the 503's text).
pub fn no_endpoints_detail(hosts: &[Host]) -> &'static str {
    if hosts.is_empty() {
        "no endpoints"
    } else {
        "no healthy endpoint"
    }
}

/// The status and `x-weft-error` reason for a request whose last try
/// failed with `f` (no response to pass on).
pub fn failure_status(f: Failure) -> (StatusCode, &'static str) {
    match f {
        Failure::ConnectFailure => (StatusCode::BAD_GATEWAY, "upstream_connect"),
        Failure::PerTryTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
    }
}

fn failed(f: Failure) -> Tried {
    let (status, reason) = failure_status(f);
    Tried::Failed {
        status,
        reason,
        detail: format!("{f:?}"),
    }
}
