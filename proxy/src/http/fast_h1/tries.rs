//! The tries of one request on the fast path: pick a host, take or open an
//! HTTP/1.1 connection to it, send the head and body, read the response
//! head; outlier bookkeeping and the retry decision as `http::outbound`
//! makes them (bodiless requests only are retried here).

use super::connection::Connection;
use super::head::{self, ResponseHead, ResponseParse};
use super::pool::Upstream;
use super::relay::{self, RelayError, Remaining};
use super::FastH1;
use crate::host::HostGuard;
use crate::http::body::BodyFault;
use crate::http::limits::MAX_HEAD_BYTES;
use crate::http::outbound::{failure_status, no_endpoints_detail};
use crate::http::upstream::{over_limit, ConnectTarget};
use crate::policy::circuit_breaker::{Limit, RetrySlot};
use crate::policy::outlier::Outcome;
use crate::policy::retry::{FailedTry, Failure};
use crate::policy::timeout::Deadline;
use crate::route::{Backend, Rule};
use bytes::Buf;
use http::StatusCode;
use std::time::{Duration, Instant};

/// An upstream connection used this recently is reused without checking
/// whether its server closed it (a bodiless request that finds it closed is
/// sent again on a new one).
const RECENT: Duration = Duration::from_millis(100);

/// What every try of a request needs.
pub struct Req<'a> {
    pub rule: &'a Rule,
    pub backend: &'a Backend,
    pub key: Option<u64>,
    pub method: &'a http::Method,
    pub head_request: bool,
    pub may_retry: bool,
    /// No request body (any failure can be retried; with a body, only one
    /// before anything was sent).
    pub bodiless: bool,
    pub body_stall: Duration,
    pub deadline: Option<Deadline>,
}

/// What the request's tries came to.
pub enum Tried {
    Response(ResponseHead, HostGuard),
    Failed(StatusCode, &'static str, String),
    Overloaded(Limit),
    /// The client's body failed; answered, never retried.
    Client(BodyFault, String),
}

/// Why one try failed.
enum TryError {
    Upstream(Failure),
    OverLimit(Limit),
    Client(BodyFault, String),
}

impl FastH1 {
    /// Sends the request, retrying as the rule's policy and the cluster's
    /// `max_retries` and budget allow.
    pub(super) async fn tries(
        &self,
        c: &mut Connection,
        r: &Req<'_>,
        body: &mut Remaining,
    ) -> Tried {
        let cluster = &r.backend.cluster;
        let policy = &r.rule.retry;
        let (hosts, lb) = r.backend.hosts();
        let mut previous = None;
        let mut _retry_slot: Option<RetrySlot> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let Some(picked) = lb.pick(hosts, r.key, previous, cluster.unavailable()) else {
                let detail = no_endpoints_detail(hosts).into();
                return Tried::Failed(StatusCode::SERVICE_UNAVAILABLE, "no_endpoints", detail);
            };
            let host = &hosts[picked.index];
            self.security.record(false);
            let target = ConnectTarget::endpoint(cluster, host);
            let per_try = match (policy.per_try_timeout, r.deadline) {
                (Some(t), Some(d)) => Some(t.min(d.remaining())),
                (t, _) => t,
            };
            let sent_at = Instant::now();
            let once = self.send(c, &target, body, r);
            let result = match per_try {
                Some(t) => match tokio::time::timeout(t, once).await {
                    Ok(r) => r,
                    Err(_) => {
                        c.up = None;
                        Err(TryError::Upstream(Failure::PerTryTimeout))
                    }
                },
                None => once.await,
            };
            let (failure, response) = match result {
                Ok(resp) => {
                    host.state.latency.observe(sent_at.elapsed());
                    let status = resp.status;
                    cluster.record_outcome(host, picked.guard.probe, Outcome::of_status(status));
                    let failure = Failure::Status(status);
                    if status < 400 || !r.may_retry || policy.reason(failure).is_none() {
                        return Tried::Response(resp, picked.guard);
                    }
                    (failure, Some(resp))
                }
                Err(TryError::OverLimit(limit)) => return Tried::Overloaded(limit),
                Err(TryError::Client(fault, detail)) => return Tried::Client(fault, detail),
                Err(TryError::Upstream(f)) => {
                    let outcome = if f == Failure::ConnectFailure {
                        Outcome::ConnectFailure
                    } else {
                        Outcome::GatewayError
                    };
                    tracing::debug!(host = %host.addr, failure = ?f, attempt, "try failed");
                    cluster.record_outcome(host, picked.guard.probe, outcome);
                    (f, None)
                }
            };
            let headers = response
                .as_ref()
                .map(|_| head::header_map(&c.rbuf, &c.rfields));
            let next = policy.next_try(
                failure,
                &FailedTry {
                    attempt,
                    replayable: r.may_retry && (r.bodiless || failure == Failure::ConnectFailure),
                    method: r.method,
                    grpc: false,
                    response: headers.as_ref(),
                    remaining: r.deadline.map(|d| d.remaining()),
                },
            );
            let admitted = next.and_then(|n| Some((n, cluster.admit_retry()?)));
            let Some(((reason, wait), retry_slot)) = admitted else {
                return match response {
                    Some(resp) => Tried::Response(resp, picked.guard),
                    None => failed(failure),
                };
            };
            // The failed response's body is not wanted: its connection goes.
            c.up = None;
            _retry_slot = Some(retry_slot);
            cluster.runtime.retries.count(reason);
            tracing::debug!(host = %host.addr, ?failure, ?wait, attempt, "retrying");
            previous = Some(picked.index);
            drop(picked);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One try at `target`: the connection (kept, pooled or new), the head
    /// and body, the response head. A reused connection that the server
    /// closed before answering is replaced once when the request can be
    /// sent again (no body).
    async fn send(
        &self,
        c: &mut Connection,
        target: &ConnectTarget,
        body: &mut Remaining,
        r: &Req<'_>,
    ) -> Result<ResponseHead, TryError> {
        let bodiless = body.done();
        let mut fresh_only = false;
        loop {
            let mut up = self.connection(c, target, fresh_only).await?;
            let reused = up.reused;
            let sent = write_request(c, &mut up, body, r.body_stall).await;
            let result = match sent {
                Ok(()) => read_response(c, &mut up, r.head_request).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(head) => {
                    c.up = Some(up);
                    return Ok(head);
                }
                Err(Sent::Nothing) if reused && bodiless && !fresh_only => {
                    // The keep-alive close raced this request.
                    fresh_only = true;
                }
                Err(Sent::Nothing | Sent::Upstream) => {
                    return Err(TryError::Upstream(Failure::Reset))
                }
                Err(Sent::Client(fault, detail)) => return Err(TryError::Client(fault, detail)),
            }
        }
    }

    /// The connection for this try: the one the client connection holds if
    /// it goes to the same address, else one from the pool, else a new one.
    async fn connection(
        &self,
        c: &mut Connection,
        target: &ConnectTarget,
        fresh_only: bool,
    ) -> Result<Upstream, TryError> {
        let now = Instant::now();
        if let Some(up) = c.up.take() {
            // Back to back on one connection, a server has had no time to
            // close it; a connection idle for longer is checked first.
            let recent = now.saturating_duration_since(up.idle_since) < RECENT;
            if up.addr == target.addr && !fresh_only && (recent || up.usable(now)) {
                let mut up = up;
                up.reused = true;
                return Ok(up);
            }
            if up.addr != target.addr {
                self.pool.put(up);
            }
        }
        if !fresh_only {
            if let Some(up) = self.pool.take(target.addr, now) {
                return Ok(up);
            }
        }
        Upstream::connect(target)
            .await
            .map_err(|e| match over_limit(&e) {
                Some(limit) => TryError::OverLimit(limit),
                None => {
                    tracing::debug!(addr = %target.addr, error = %e, "connect failed");
                    TryError::Upstream(Failure::ConnectFailure)
                }
            })
    }
}

/// How far a try got before it failed.
enum Sent {
    /// Nothing came back from the upstream.
    Nothing,
    /// The upstream failed after answering in part.
    Upstream,
    Client(BodyFault, String),
}

/// The head and as much body as is at hand in one write, then the rest of
/// the body as the client sends it. The response is read only after the
/// whole body was sent: an upstream that answers early and stops reading a
/// large body fails the request (502) where hyper would pass its early
/// answer on; such a body's write is bounded by the body stall limit.
async fn write_request(
    c: &mut Connection,
    up: &mut Upstream,
    body: &mut Remaining,
    stall: Duration,
) -> Result<(), Sent> {
    let bad = |e: super::chunked::BadChunk| Sent::Client(BodyFault::Malformed, e.to_string());
    let k = body.take(&c.cbuf).map_err(bad)?;
    let written = relay::write_head(&mut up.stream, &mut c.req_out, &c.cbuf[..k]).await;
    c.cbuf.advance(k);
    written.map_err(|_| Sent::Nothing)?;
    if body.done() {
        return Ok(());
    }
    match relay::relay(
        &mut c.client,
        &mut c.cbuf,
        &mut up.stream,
        body,
        Some(stall),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(RelayError::Write(_)) => Err(Sent::Upstream),
        Err(RelayError::Stalled(t)) => Err(Sent::Client(
            BodyFault::Stalled,
            format!("the request body stalled for {t:?}"),
        )),
        Err(e) => Err(Sent::Client(BodyFault::Malformed, e.to_string())),
    }
}

/// Reads the response head (skipping interim 1xx responses).
async fn read_response(
    c: &mut Connection,
    up: &mut Upstream,
    head_request: bool,
) -> Result<ResponseHead, Sent> {
    c.rbuf.clear();
    c.rbuf.reserve(relay::RESPONSE_BUFFER);
    let mut got_any = false;
    loop {
        if !c.rbuf.is_empty() {
            match head::parse_response(&c.rbuf, head_request, &mut c.rfields, MAX_HEAD_BYTES) {
                ResponseParse::Partial => {}
                ResponseParse::Head(h) if h.status == 101 => {
                    tracing::debug!("upstream switched protocols unasked");
                    return Err(Sent::Upstream);
                }
                ResponseParse::Head(h) if h.status < 200 => {
                    c.rbuf.advance(h.len);
                    continue;
                }
                ResponseParse::Head(h) => return Ok(h),
                ResponseParse::Invalid(why) => {
                    tracing::debug!(why, "bad response head from upstream");
                    return Err(Sent::Upstream);
                }
            }
        }
        match relay::read_more(&mut up.stream, &mut c.rbuf, None).await {
            Ok(0) | Err(_) if !got_any => return Err(Sent::Nothing),
            Ok(0) | Err(_) => return Err(Sent::Upstream),
            Ok(_) => got_any = true,
        }
    }
}

fn failed(f: Failure) -> Tried {
    let (status, reason) = failure_status(f);
    Tried::Failed(status, reason, format!("{f:?}"))
}
