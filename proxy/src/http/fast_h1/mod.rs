//! The fast HTTP/1.1 forwarding loop: outbound requests from an HTTP/1.1
//! client to a plaintext HTTP/1.1 endpoint, without hyper.
//!
//! One task per client connection reads a request head into a reused
//! buffer (`head`), routes it with the same route table, split, breaker,
//! balancer, outlier, retry and timeout policies as `http::outbound`, writes
//! the head and the first body bytes to the upstream in one write, relays
//! the rest of the body as it comes (`relay`), reads the response head and
//! writes it, with the first body bytes, to the client in one write. The
//! client connection keeps its upstream connection while requests go to
//! the same address (no pool lookup, no hand-off between tasks); others
//! wait in the worker's `pool`.
//!
//! Everything else goes to hyper (`http::server`) with the bytes already
//! read (`http::prefixed`), for the rest of the connection: a head that is not
//! the plain case (see `head`), a request no route takes, a rule with a
//! mirror or with retries and a request body, an h2 or mTLS upstream.
//! hyper then answers it exactly as before the fast path existed.

pub mod chunked;
pub mod head;
mod pool;
mod relay;

mod connection;
mod tries;

use crate::http::limits::ClientTimeouts;
use crate::http::local_response::{local_response, overloaded};
use crate::http::server::Conn;
use crate::metrics::SecurityCounters;
use crate::policy::timeout::Deadline;
use crate::snapshot::{Snapshot, SnapshotHolder};
use bytes::{Buf, BytesMut};
use connection::{Connection, Next};
use head::{Fields, Framing, RequestHead};
use http::{HeaderMap, StatusCode};
use pool::Pool;
use relay::Remaining;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tries::{Req, Tried};

/// Client connections handed to hyper, by reason (the head was not the
/// plain case, no route, a mirror, retries with a body, an h2 or mTLS
/// upstream).
pub const HANDOFFS_TOTAL: &str = "weft_http_fast_h1_handoffs_total";

/// The fast path of one worker's outbound HTTP server.
pub struct FastH1 {
    pool: Pool,
    security: SecurityCounters,
    /// The sidecar has mTLS: endpoints with a sidecar are reached over h2
    /// mTLS (hyper), not here.
    mesh: bool,
}

/// How a connection left the fast path.
pub enum Ended {
    /// Closed (by either side, a deadline or the drain).
    Closed,
    /// hyper serves the rest: these bytes were read, and are a request head
    /// (and what followed) the fast path did not take.
    Handoff(BytesMut, TcpStream),
}

impl FastH1 {
    pub fn new(mesh: bool) -> Self {
        FastH1 {
            pool: Pool::default(),
            security: SecurityCounters::new("http"),
            mesh,
        }
    }

    /// Serves `client` until it closes, or until a request needs hyper.
    pub async fn serve(
        &self,
        snapshot: &SnapshotHolder,
        t: ClientTimeouts,
        client: TcpStream,
        conn: &Conn,
        draining: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut c = Connection::new(client);
        let mut served = false;
        loop {
            let head = match c.read_head(t, served, draining).await {
                Some(Ok(h)) => h,
                Some(Err(why)) => return self.handoff(c, why),
                None => return self.close(c),
            };
            served = true;
            let start = Instant::now();
            let snap = snapshot.load_full();
            match self
                .exchange(&mut c, &snap, head, conn, t, start, draining)
                .await
            {
                Next::KeepOpen => {}
                Next::Close => return self.close(c),
                Next::Handoff(why) => return self.handoff(c, why),
            }
        }
    }

    /// The client connection is over; its upstream connection (if it
    /// ended cleanly) waits in the pool for the next client.
    fn close(&self, c: Connection) -> Ended {
        if let Some(up) = c.up {
            self.pool.put(up);
        }
        Ended::Closed
    }

    fn handoff(&self, mut c: Connection, why: &'static str) -> Ended {
        tracing::debug!(why, "request left to hyper");
        metrics::counter!(HANDOFFS_TOTAL, "reason" => why).increment(1);
        if let Some(up) = c.up.take() {
            self.pool.put(up);
        }
        Ended::Handoff(c.cbuf, c.client)
    }

    /// One request: route, breaker, tries, response. Returns before
    /// anything is sent when the request is hyper's.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        c: &mut Connection,
        snap: &Snapshot,
        head: RequestHead,
        conn: &Conn,
        t: ClientTimeouts,
        start: Instant,
        draining: &watch::Receiver<bool>,
    ) -> Next {
        // 1. route, by the same table as hyper's path
        let empty = HeaderMap::new();
        let mut map = snap
            .routes
            .uses_headers()
            .then(|| head::header_map(&c.cbuf, &c.fields));
        let (path, query) = head.path_and_query(&c.cbuf);
        let host = head.host(&c.cbuf);
        let routed = snap
            .routes
            .route(
                host,
                path,
                query,
                &head.method,
                map.as_ref().unwrap_or(&empty),
            )
            .map(|(_, r)| r)
            .or_else(|| conn.original_dst.and_then(|d| snap.intercepted_rule(d)));
        let Some(rule) = routed else {
            return Next::Handoff("no_route");
        };
        let may_retry = rule.retry.enabled();
        if rule.mirror.is_some() {
            return Next::Handoff("mirror");
        }
        let bodiless = head.framing == Framing::Empty;
        if may_retry && !bodiless && !rule.retry.only_unsent() {
            return Next::Handoff("retry_with_body");
        }
        // 2. backend (its hosts must be plaintext HTTP/1.1)
        let backend = rule.pick_backend();
        let cluster = &backend.cluster;
        if cluster.protocol.is_h2() {
            return Next::Handoff("h2_upstream");
        }
        if self.mesh && cluster.has_sidecars {
            return Next::Handoff("mtls_upstream");
        }
        backend.count_request();
        let (_, lb) = backend.hosts();
        if map.is_none() && (lb.hashes_headers() || rule.request_headers.is_some()) {
            map = Some(head::header_map(&c.cbuf, &c.fields));
        }
        let key = lb.hash_key(map.as_ref().unwrap_or(&empty), Some(conn.peer.ip()));
        // The head as the upstream gets it; the client's buffer then holds
        // only the body and what follows.
        c.req_out.clear();
        match (&rule.request_headers, map.as_mut()) {
            (Some(ops), Some(m)) => {
                ops.apply(m);
                head::write_request(&mut c.req_out, &c.cbuf, &head, Fields::Map(m));
            }
            _ => head::write_request(&mut c.req_out, &c.cbuf, &head, Fields::Raw(&c.fields)),
        }
        c.cbuf.advance(head.len);
        let deadline = Deadline::of(start, rule.timeout, &empty);
        let mut body = Remaining::new(head.framing);
        let close = head.close;
        // 3. breaker
        let slot = match cluster.admit(deadline).await {
            Ok(s) => s,
            Err(limit) => {
                rule.metrics.record(503, start.elapsed());
                return c.local(overloaded(limit, false), &body, close).await;
            }
        };
        // 4. tries, under the deadline
        let req = Req {
            rule,
            backend,
            key,
            method: &head.method,
            head_request: head.method == http::Method::HEAD,
            may_retry,
            bodiless,
            body_stall: t.body_read,
            deadline,
        };
        let tries = self.tries(c, &req, &mut body);
        let tried = match deadline {
            Some(d) => match tokio::time::timeout_at(d.at.into(), tries).await {
                Ok(t) => t,
                Err(_) => {
                    c.up = None;
                    Tried::Failed(
                        StatusCode::GATEWAY_TIMEOUT,
                        "request_timeout",
                        "request timeout reached".into(),
                    )
                }
            },
            None => tries.await,
        };
        // 5. respond
        let close = close || *draining.borrow();
        let (resp, guard) = match tried {
            Tried::Response(resp, guard) => (resp, guard),
            Tried::Overloaded(limit) => {
                rule.metrics.record(503, start.elapsed());
                return c.local(overloaded(limit, false), &body, close).await;
            }
            Tried::Client(fault, detail) => {
                let (status, reason) = fault.status();
                rule.metrics.record(status.as_u16(), start.elapsed());
                let r = local_response(status, reason, format!("weft: {detail}\n"), false);
                return c.local(r, &Remaining::Done, true).await;
            }
            Tried::Failed(status, reason, detail) => {
                tracing::debug!(cluster = %cluster.name, reason, %detail, "request failed");
                rule.metrics.record(status.as_u16(), start.elapsed());
                let text = format!("weft: {}: {detail}\n", cluster.name);
                return c
                    .local(local_response(status, reason, text, false), &body, close)
                    .await;
            }
        };
        rule.metrics.record(resp.status, start.elapsed());
        let sent = c.respond(rule, resp, close, deadline).await;
        drop((guard, slot));
        match sent {
            Ok(true) => Next::KeepOpen,
            Ok(false) => Next::Close,
            Err(e) => {
                tracing::debug!(error = %e, "response relay ended");
                Next::Close
            }
        }
    }
}
