//! One client connection on the fast path: its reused buffers, the upstream
//! connection it holds, reading request heads under the client deadlines,
//! and writing responses (relayed or local) back.

use super::head::{self, Field, Fields, RequestHead, RequestParse, ResponseHead};
use super::pool::Upstream;
use super::relay::{self, RelayError, Remaining};
use crate::http::body::ResponseBody;
use crate::http::head_timeout::{HEADER_TIMEOUTS, TIMEOUT_RESPONSE};
use crate::http::limits::{ClientTimeouts, MAX_HEAD_BYTES};
use crate::http::server::IDLE_CLOSED;
use crate::policy::timeout::Deadline;
use crate::route::Rule;
use bytes::{Buf, BytesMut};
use http::Response;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What the connection does after a request.
pub enum Next {
    KeepOpen,
    Close,
    /// hyper takes the connection, this request's head included (why).
    Handoff(&'static str),
}

pub struct Connection {
    pub client: TcpStream,
    /// The client's bytes not yet forwarded.
    pub cbuf: BytesMut,
    pub fields: Vec<Field>,
    /// The request head as sent upstream (kept for retries).
    pub req_out: Vec<u8>,
    /// The upstream's bytes not yet forwarded.
    pub rbuf: BytesMut,
    pub rfields: Vec<Field>,
    /// A response head on its way out.
    pub resp_out: Vec<u8>,
    /// The upstream connection this client connection last used.
    pub up: Option<Upstream>,
}

impl Connection {
    pub fn new(client: TcpStream) -> Self {
        Connection {
            client,
            cbuf: BytesMut::with_capacity(4096),
            fields: Vec::new(),
            req_out: Vec::new(),
            rbuf: BytesMut::new(),
            rfields: Vec::new(),
            resp_out: Vec::new(),
            up: None,
        }
    }

    /// The next request head. None: the connection is over (closed, idle,
    /// drained, or its head timed out: answered 408). `Err`: the head is
    /// not the fast path's (the reason, for the log).
    pub async fn read_head(
        &mut self,
        t: ClientTimeouts,
        served: bool,
        draining: &mut watch::Receiver<bool>,
    ) -> Option<Result<RequestHead, &'static str>> {
        // The first request's head must arrive within `header_read` of
        // the accept; later ones may wait `idle` for their first byte,
        // then have `header_read` for the rest.
        let mut head_deadline =
            (!served || !self.cbuf.is_empty()).then(|| tokio::time::Instant::now() + t.header_read);
        loop {
            if !self.cbuf.is_empty() {
                match head::parse_request(&self.cbuf, &mut self.fields, MAX_HEAD_BYTES) {
                    RequestParse::Partial => {}
                    RequestParse::Fast(h) => return Some(Ok(h)),
                    RequestParse::Fallback(why) => return Some(Err(why)),
                }
            }
            let waiting_first_byte = self.cbuf.is_empty();
            if waiting_first_byte && *draining.borrow() {
                return None;
            }
            let read = relay::read_more(&mut self.client, &mut self.cbuf, None);
            let read = match head_deadline {
                Some(at) => tokio::select! {
                    r = read => Some(r),
                    () = tokio::time::sleep_until(at) => None,
                    _ = draining.wait_for(|d| *d), if waiting_first_byte => return None,
                },
                None => tokio::select! {
                    r = tokio::time::timeout(t.idle, read) => r.ok(),
                    _ = draining.wait_for(|d| *d) => return None,
                },
            };
            match read {
                Some(Ok(0)) | Some(Err(_)) => return None,
                Some(Ok(_)) => {
                    head_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + t.header_read);
                }
                None if waiting_first_byte => {
                    metrics::counter!(IDLE_CLOSED, "direction" => "outbound").increment(1);
                    return None;
                }
                None => {
                    metrics::counter!(HEADER_TIMEOUTS, "direction" => "outbound").increment(1);
                    // Without waiting: a client that stalled its head may
                    // not read either.
                    let _ = self.client.try_write(TIMEOUT_RESPONSE);
                    return None;
                }
            }
        }
    }

    /// Writes a response the proxy made. The connection stays open only if
    /// the request's body was read to its end and nobody asked to close.
    pub async fn local(
        &mut self,
        resp: Response<ResponseBody>,
        body: &Remaining,
        close: bool,
    ) -> Next {
        let close = close || !body.done();
        self.resp_out.clear();
        let body = resp.body().local_bytes();
        head::write_local(
            &mut self.resp_out,
            resp.status(),
            resp.headers(),
            body,
            close,
        );
        match self.client.write_all(&self.resp_out).await {
            Ok(()) if !close => Next::KeepOpen,
            _ => Next::Close,
        }
    }

    /// Writes the upstream's response head (with the rule's header edits)
    /// and relays its body, the rule's idle timeout between reads and the
    /// request deadline over all. Ok(true): the response ended cleanly and
    /// the client may send another request (`close` and a response that
    /// ends at the close say it may not). The upstream connection is kept
    /// if it can carry another request.
    pub async fn respond(
        &mut self,
        rule: &Rule,
        resp: ResponseHead,
        close: bool,
        deadline: Option<Deadline>,
    ) -> Result<bool, RelayError> {
        let close = close || resp.framing == head::Framing::Close;
        self.resp_out.clear();
        match &rule.response_headers {
            Some(ops) => {
                let mut map = head::header_map(&self.rbuf, &self.rfields);
                ops.apply(&mut map);
                head::write_response(
                    &mut self.resp_out,
                    &self.rbuf,
                    &resp,
                    Fields::Map(&map),
                    close,
                );
            }
            None => head::write_response(
                &mut self.resp_out,
                &self.rbuf,
                &resp,
                Fields::Raw(&self.rfields),
                close,
            ),
        }
        self.rbuf.advance(resp.len);
        let mut rem = Remaining::new(resp.framing);
        let k = rem.take(&self.rbuf)?;
        let written =
            relay::write_head(&mut self.client, &mut self.resp_out, &self.rbuf[..k]).await;
        self.rbuf.advance(k);
        written.map_err(RelayError::Write)?;
        let Some(mut up) = self.up.take() else {
            return Ok(rem.done() && !close);
        };
        if !rem.done() {
            let relay = relay::relay(
                &mut up.stream,
                &mut self.rbuf,
                &mut self.client,
                &mut rem,
                rule.idle_timeout,
            );
            match deadline {
                Some(d) => tokio::time::timeout_at(d.at.into(), relay)
                    .await
                    .map_err(|_| {
                        RelayError::Stalled(d.at.saturating_duration_since(Instant::now()))
                    })??,
                None => relay.await?,
            };
        }
        if !resp.close && self.rbuf.is_empty() {
            up.idle_since = Instant::now();
            self.up = Some(up);
        }
        Ok(!close)
    }
}
