//! The outbound request path, in order: route → backend (weighted split) →
//! cluster limits → request header edits → body kept for replay if small →
//! mirror copy → tries (balancer pick, per-try timeout, outlier bookkeeping,
//! retry conditions, budget and backoff) → response header edits, with the
//! whole thing under the request deadline. Each policy lives in its own
//! module; this file only composes them.

use crate::body::{Held, RequestBody, ResponseBody, Tee};
use crate::breaker::{Limit, RetrySlot, OVERLOADED_HEADER};
use crate::host::HostGuard;
use crate::http::{
    is_grpc, is_upgrade, local_response, splice_upgraded, strip_hop_by_hop, upstream_uri,
};
use crate::metrics::{RequestMetrics, SecurityCounters};
use crate::outlier::Outcome;
use crate::retry::{retry_after, Failure};
use crate::route::{Backend, Rule};
use crate::snapshot::Snapshot;
use crate::timeout::{format_grpc_timeout, Deadline, GRPC_TIMEOUT};
use crate::upstream::{over_limit, refused_stream, Upstreams};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Mirror requests in flight at most (more are dropped, never queued).
const MAX_MIRRORS_IN_FLIGHT: usize = 256;
/// A mirror request gives up after this long.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a retry waits for the tee to hand over a body the first try
/// was still sending.
const TEE_WAIT: Duration = Duration::from_millis(250);
pub const MIRRORS_TOTAL: &str = "weft_mirror_requests_total";
const BODY_TIMEOUT: &str = "the request body did not arrive before the request deadline";

pub struct Outbound {
    pub upstreams: Upstreams,
    pub security: SecurityCounters,
    pub fallback_metrics: RequestMetrics,
    mirrors_in_flight: Arc<AtomicUsize>,
}

/// The request body as retries see it.
enum Replay {
    /// Complete in memory (possibly empty): every try gets a copy.
    Bytes(Option<Bytes>),
    /// Streamed once; no second try.
    Stream(Option<Incoming>),
    /// Streamed while copied; a second try is possible if the copy ends up
    /// complete.
    Tee {
        body: Option<Incoming>,
        copy: Option<oneshot::Receiver<Option<Bytes>>>,
        max: usize,
    },
}

impl Replay {
    /// Reads a small body of known length into memory (the client is sending
    /// it whole anyway); tees one of unknown length.
    async fn new(body: Incoming, keep: bool, max: u64) -> Result<Replay, String> {
        if body.is_end_stream() {
            return Ok(Replay::Bytes(None));
        }
        if !keep {
            return Ok(Replay::Stream(Some(body)));
        }
        match body.size_hint().exact() {
            Some(n) if n <= max => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| format!("reading the request body: {e}"))?
                    .to_bytes();
                Ok(Replay::Bytes(Some(bytes)))
            }
            Some(_) => Ok(Replay::Stream(Some(body))),
            None => Ok(Replay::Tee {
                body: Some(body),
                copy: None,
                max: usize::try_from(max).unwrap_or(usize::MAX),
            }),
        }
    }

    fn bytes(&self) -> Option<Option<&Bytes>> {
        match self {
            Replay::Bytes(b) => Some(b.as_ref()),
            _ => None,
        }
    }

    /// The body for the next try, None if it cannot be sent again.
    async fn next(&mut self) -> Option<RequestBody> {
        match self {
            Replay::Bytes(b) => Some(RequestBody::Full(b.clone())),
            Replay::Stream(b) => b.take().map(RequestBody::Stream),
            Replay::Tee { body, copy, max } => {
                if let Some(b) = body.take() {
                    let (tee, rx) = Tee::new(b, *max);
                    *copy = Some(rx);
                    return Some(RequestBody::Tee(tee));
                }
                let rx = copy.take()?;
                let bytes = tokio::time::timeout(TEE_WAIT, rx).await.ok()?.ok()??;
                *self = Replay::Bytes(Some(bytes));
                self.bytes().map(|b| RequestBody::Full(b.cloned()))
            }
        }
    }

    /// Whether a second try could have a body.
    fn replayable(&self) -> bool {
        match self {
            Replay::Bytes(_) => true,
            Replay::Stream(_) => false,
            Replay::Tee { copy, .. } => copy.is_some(),
        }
    }
}

/// What the tries came to.
enum Tried {
    Response(Response<Incoming>, HostGuard),
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
    /// The client's authority as a Host header (for HTTP/1.1 hops when the
    /// client spoke HTTP/2).
    host_header: Option<HeaderValue>,
    grpc: bool,
    deadline: Option<Deadline>,
    client: SocketAddr,
    rule: &'a Rule,
    backend: &'a Backend,
}

impl Outbound {
    pub fn new(upstreams: Upstreams) -> Self {
        Outbound {
            upstreams,
            security: SecurityCounters::new("http"),
            fallback_metrics: RequestMetrics::new("outbound", "none", "none"),
            mirrors_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub async fn handle(
        &self,
        snapshot: &Snapshot,
        mut req: Request<Incoming>,
        client: SocketAddr,
        start: Instant,
    ) -> Response<ResponseBody> {
        let grpc = is_grpc(req.headers());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("");
        let uri = req.uri();
        let Some((_, rule)) = snapshot.routes.route(
            authority,
            uri.path(),
            uri.query(),
            req.method(),
            req.headers(),
        ) else {
            let body = format!(
                "weft: no route for host \"{authority}\" path \"{}\"\n",
                req.uri().path()
            );
            self.fallback_metrics.record(404, start.elapsed());
            return local_response(StatusCode::NOT_FOUND, "no_route", body, grpc);
        };
        let backend = rule.pick_backend();
        backend.count_request();
        let cluster = &backend.cluster;
        let deadline = Deadline::of(start, rule.timeout, req.headers());

        let slot = match cluster
            .runtime
            .load
            .admit(&cluster.limits, deadline.map(|d| d.remaining()))
            .await
        {
            Ok(s) => s,
            Err(limit) => {
                rule.metrics.record(503, start.elapsed());
                return overloaded(limit, grpc);
            }
        };
        cluster.runtime.budget.record_request();

        let upgrade = is_upgrade(req.headers());
        let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host_header = (parts.version == http::Version::HTTP_2
            && !parts.headers.contains_key(header::HOST))
        .then(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .flatten();
        if let Some(ops) = &rule.request_headers {
            ops.apply(&mut parts.headers);
        }
        strip_hop_by_hop(&mut parts.headers, upgrade);

        let policy = &rule.retry;
        let may_retry = policy.enabled() && !upgrade;
        let keep = may_retry || rule.mirror.is_some();
        // A small body is read before the first try; a client that sends it
        // slower than the request deadline gets 408.
        let read = Replay::new(body, keep, policy.max_body_bytes);
        let read = match deadline {
            Some(d) => tokio::time::timeout_at(d.at.into(), read)
                .await
                .unwrap_or_else(|_| Err(BODY_TIMEOUT.into())),
            None => read.await,
        };
        let mut replay = match read {
            Ok(r) => r,
            Err(e) => {
                let (status, reason) = if e == BODY_TIMEOUT {
                    (StatusCode::REQUEST_TIMEOUT, "request_body_timeout")
                } else {
                    (StatusCode::BAD_REQUEST, "bad_request_body")
                };
                rule.metrics.record(status.as_u16(), start.elapsed());
                return local_response(status, reason, format!("weft: {e}\n"), grpc);
            }
        };

        let prepared = Prepared {
            parts,
            host_header,
            grpc,
            deadline,
            client,
            rule,
            backend,
        };
        if let (Some(mirror), Some(body)) = (rule.mirror_this(), replay.bytes()) {
            self.mirror(&prepared, mirror, body.cloned());
        }

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
        match tried {
            Tried::Response(mut resp, host) => {
                rule.metrics.record(resp.status().as_u16(), start.elapsed());
                let held = Held {
                    slot: Some(slot),
                    host: Some(host),
                };
                if let Some(client_side) = on_client_upgrade {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let upstream_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice_upgraded(client_side, upstream_side));
                        return resp.map(|b| ResponseBody::upstream(b, held, None, None));
                    }
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
                return Tried::Failed {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "no_endpoints",
                    detail: if hosts.is_empty() {
                        "no endpoints".into()
                    } else {
                        "no healthy endpoint".into()
                    },
                };
            };
            let host = &hosts[picked.index];
            let Some(body) = replay.next().await else {
                return Tried::Failed {
                    status: StatusCode::BAD_GATEWAY,
                    reason: "upstream_error",
                    detail: "the request body could not be replayed".into(),
                };
            };
            let meshed = host.identity.is_some() && self.upstreams.mesh.is_some();
            let h2 = meshed || cluster.protocol.is_h2();
            let req = match self.build(p, body, host.authority.clone(), meshed, h2) {
                Ok(r) => r,
                Err(e) => {
                    return Tried::Failed {
                        status: StatusCode::BAD_REQUEST,
                        reason: "bad_uri",
                        detail: e,
                    }
                }
            };
            self.security.record(meshed);
            let per_try = match (policy.per_try_timeout, p.deadline) {
                (Some(t), Some(d)) => Some(t.min(d.remaining())),
                (t, _) => t,
            };
            let sent_at = Instant::now();
            let send = self.upstreams.send(req, meshed, h2);
            let result = match per_try {
                Some(t) => tokio::time::timeout(t, send).await.map_err(|_| ()),
                None => Ok(send.await),
            };
            let (failure, response) = match result {
                Ok(Ok(resp)) => {
                    host.state.observe_latency(sent_at.elapsed());
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

            // Is another try allowed?
            let reason = policy.reason(failure).filter(|_| {
                may_retry
                    && attempt < policy.attempts
                    && replay.replayable()
                    && (failure.never_processed()
                        || policy.method_allowed(&p.parts.method)
                        // Every gRPC call is a POST: listing a gRPC code
                        // is the route saying that status is safe to retry.
                        || (p.grpc && matches!(failure, Failure::Grpc(_))))
            });
            let wait = reason.map(|_| {
                response
                    .as_ref()
                    .and_then(|r| retry_after(r.headers()))
                    .unwrap_or_else(|| policy.backoff(attempt))
            });
            let fits = match (wait, p.deadline) {
                (Some(w), Some(d)) => w < d.remaining(),
                (Some(w), None) => w <= Duration::from_secs(30),
                (None, _) => false,
            };
            let allowed = fits
                && match cluster.runtime.load.try_retry(&cluster.limits) {
                    Ok(s) => {
                        if cluster.runtime.budget.try_withdraw(&cluster.budget) {
                            _retry_slot = Some(s);
                            true
                        } else {
                            false
                        }
                    }
                    Err(_) => false,
                };
            match (allowed, reason, wait) {
                (true, Some(reason), Some(wait)) => {
                    cluster.runtime.retries.count(reason);
                    tracing::debug!(host = %host.addr, ?failure, ?wait, attempt, "retrying");
                    previous = Some(picked.index);
                    drop(response);
                    drop(picked);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                _ => {
                    return match response {
                        Some(resp) => Tried::Response(resp, picked.guard),
                        None => failed(failure),
                    }
                }
            }
        }
    }

    /// One try's request: the same method, path and headers each time, sent
    /// to the chosen endpoint.
    fn build(
        &self,
        p: &Prepared<'_>,
        body: RequestBody,
        authority: http::uri::Authority,
        meshed: bool,
        h2: bool,
    ) -> Result<Request<RequestBody>, String> {
        let mut req = Request::new(body);
        *req.method_mut() = p.parts.method.clone();
        *req.uri_mut() =
            upstream_uri(authority, &p.parts.uri, meshed).map_err(|e| e.to_string())?;
        *req.version_mut() = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let headers = req.headers_mut();
        *headers = p.parts.headers.clone();
        if !h2 {
            if let Some(h) = &p.host_header {
                headers.insert(header::HOST, h.clone());
            }
        }
        if let (true, Some(d)) = (p.grpc, p.deadline) {
            headers.insert(GRPC_TIMEOUT, format_grpc_timeout(d.remaining()));
        }
        Ok(req)
    }

    /// Sends a copy of the request to `mirror` in the background; its
    /// response is dropped, and at most `MAX_MIRRORS_IN_FLIGHT` run at once.
    fn mirror(&self, p: &Prepared<'_>, mirror: &Backend, body: Option<Bytes>) {
        let in_flight = self.mirrors_in_flight.clone();
        if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_MIRRORS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(MIRRORS_TOTAL, "result" => "dropped").increment(1);
            return;
        }
        let (hosts, lb) = mirror.hosts();
        let Some(picked) = lb.pick(hosts, None, None, mirror.cluster.unavailable()) else {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(MIRRORS_TOTAL, "result" => "no_endpoints").increment(1);
            return;
        };
        mirror.count_request();
        let host = &hosts[picked.index];
        let meshed = host.identity.is_some() && self.upstreams.mesh.is_some();
        let h2 = meshed || mirror.cluster.protocol.is_h2();
        let req = match self.build(
            p,
            RequestBody::Full(body),
            host.authority.clone(),
            meshed,
            h2,
        ) {
            Ok(r) => r,
            Err(_) => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        let upstreams = self.upstreams.clone();
        tokio::spawn(async move {
            let _guard = picked.guard;
            let sent = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let resp = upstreams.send(req, meshed, h2).await?;
                // Read the body so the connection goes back to the pool.
                let _ = resp.into_body().collect().await;
                Ok::<_, hyper_util::client::legacy::Error>(())
            })
            .await;
            let result = match sent {
                Ok(Ok(())) => "sent",
                Ok(Err(_)) => "failed",
                Err(_) => "timeout",
            };
            metrics::counter!(MIRRORS_TOTAL, "result" => result).increment(1);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The gRPC status in response headers (a trailers-only response).
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn failed(f: Failure) -> Tried {
    let (status, reason) = match f {
        Failure::ConnectFailure => (StatusCode::BAD_GATEWAY, "upstream_connect"),
        Failure::PerTryTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
    };
    Tried::Failed {
        status,
        reason,
        detail: format!("{f:?}"),
    }
}

fn overloaded(limit: Limit, grpc: bool) -> Response<ResponseBody> {
    let mut resp = local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("weft: over the cluster's {limit} limit\n"),
        grpc,
    );
    resp.headers_mut()
        .insert(OVERLOADED_HEADER, HeaderValue::from_static(limit.as_str()));
    resp
}
