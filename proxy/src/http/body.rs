//! Bodies on the proxy's two sides.
//!
//! `RequestBody` is what goes upstream: the client's stream, a buffered copy
//! (replayable for retries and mirrors), or a tee that forwards the stream
//! while keeping a copy of up to `max` bytes, so a gRPC call of unknown
//! length can still be retried if it was small.
//!
//! `ResponseBody` is what goes back to the client: the upstream's stream with
//! the request's slots (cluster load, host in flight) held until it ends and
//! the idle/request timeouts enforced, or a locally generated body.

use crate::host::HostGuard;
use crate::http::h2_stream::H2Body;
use crate::policy::circuit_breaker::RequestSlot;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body as it arrives, from a client or from upstream: hyper's
/// (HTTP/1.1) or an HTTP/2 stream's.
pub enum RecvBody {
    H1(Incoming),
    H2(H2Body),
}

impl hyper::body::Body for RecvBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            RecvBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RecvBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RecvBody::H1(b) => b.is_end_stream(),
            RecvBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            RecvBody::H1(b) => b.size_hint(),
            RecvBody::H2(b) => b.size_hint(),
        }
    }
}

/// The client's request body failed while it was being forwarded: it was
/// malformed (bad chunked encoding), the connection was cut mid-body, or the
/// client stopped sending it. The request is the client's fault (400, or 408
/// for a stall), not the upstream's, and says nothing about the upstream
/// host's health.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the request body from the client is malformed or incomplete: {0}")]
    Malformed(#[source] BoxError),
    #[error("the client sent no request body bytes for {0:?}")]
    Stalled(Duration),
}

/// What went wrong with the client's body, as a `BodyWatch` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    Malformed,
    Stalled,
}

impl BodyFault {
    /// The status and `x-weft-error` reason the client is answered with.
    pub fn status(self) -> (http::StatusCode, &'static str) {
        match self {
            BodyFault::Malformed => (http::StatusCode::BAD_REQUEST, "bad_request_body"),
            BodyFault::Stalled => (http::StatusCode::REQUEST_TIMEOUT, "request_body_timeout"),
        }
    }
}

const FAULT_NONE: u8 = 0;
const FAULT_MALFORMED: u8 = 1;
const FAULT_STALLED: u8 = 2;

/// The client's request body as it is forwarded: a failure is returned as
/// `ClientBodyError` and marked on the `BodyWatch`, which is what callers
/// ask (an HTTP/2 upstream connection reports the failure only as a reset
/// stream, so the upstream error cannot tell). A client that sends nothing
/// for `stall_limit` while the body is being read fails it as stalled; the
/// clock runs only while the proxy waits on the client, never while the
/// upstream is slow to take what was already sent.
pub struct ClientBody {
    inner: RecvBody,
    fault: Option<Arc<AtomicU8>>,
    stall_limit: Duration,
    /// Armed when a read finds nothing to take; None while data flows.
    stall: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

/// Tells, after a failed send, whether the client's body was the cause.
#[derive(Clone, Default)]
pub struct BodyWatch(Option<Arc<AtomicU8>>);

impl BodyWatch {
    pub fn fault(&self) -> Option<BodyFault> {
        match self.0.as_ref()?.load(Ordering::Relaxed) {
            FAULT_MALFORMED => Some(BodyFault::Malformed),
            FAULT_STALLED => Some(BodyFault::Stalled),
            _ => None,
        }
    }
}

impl ClientBody {
    /// An empty body needs no watch (nothing is allocated for it).
    pub fn new(inner: RecvBody, stall_limit: Duration) -> (ClientBody, BodyWatch) {
        let fault = (!inner.is_end_stream()).then(|| Arc::new(AtomicU8::new(FAULT_NONE)));
        let watch = BodyWatch(fault.clone());
        let body = ClientBody {
            inner,
            fault,
            stall_limit,
            stall: None,
            waiting: false,
        };
        (body, watch)
    }

    fn fail(&self, fault: u8) {
        if let Some(f) = &self.fault {
            f.store(fault, Ordering::Relaxed);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.fail(FAULT_MALFORMED);
                Poll::Ready(Some(Err(Box::new(ClientBodyError::Malformed(e)))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if !this.waiting {
                    // The client owes us bytes from now on.
                    let deadline = Instant::now() + this.stall_limit;
                    match &mut this.stall {
                        Some(s) => s.as_mut().reset(deadline),
                        None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.waiting = true;
                }
                if let Some(stall) = &mut this.stall {
                    if stall.as_mut().poll(cx).is_ready() {
                        this.fail(FAULT_STALLED);
                        let e = ClientBodyError::Stalled(this.stall_limit);
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub enum RequestBody {
    Stream(ClientBody),
    Full(Option<Bytes>),
    Tee(Tee),
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody::Full(None)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Tee(t) => Pin::new(t).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Tee(t) => t.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Tee(t) => t.inner.size_hint(),
        }
    }
}

/// Forwards a stream and keeps a copy while it stays under `max` bytes;
/// the copy is handed over once the stream ends (None if it grew too big,
/// failed, or was dropped before its end).
pub struct Tee {
    inner: ClientBody,
    copy: Option<BytesMut>,
    max: usize,
    done: Option<oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    pub fn new(inner: ClientBody, max: usize) -> (Tee, oneshot::Receiver<Option<Bytes>>) {
        let (tx, rx) = oneshot::channel();
        (
            Tee {
                inner,
                copy: Some(BytesMut::new()),
                max,
                done: Some(tx),
            },
            rx,
        )
    }

    fn finish(&mut self, complete: bool) {
        if let Some(tx) = self.done.take() {
            let copy = self.copy.take().filter(|_| complete).map(BytesMut::freeze);
            let _ = tx.send(copy);
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let over = this
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() > this.max);
                    if over {
                        this.copy = None;
                    } else if let Some(c) = this.copy.as_mut() {
                        c.extend_from_slice(data);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// What a response holds until its body ends.
#[derive(Debug, Default)]
pub struct Held {
    pub slot: Option<RequestSlot>,
    pub host: Option<HostGuard>,
}

/// Why the proxy cut a response body short.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    #[error("no response data for {0:?} (idle timeout)")]
    Idle(Duration),
    #[error("request timeout reached while streaming the response")]
    Request,
}

pub struct ResponseBody {
    inner: Inner,
    _held: Held,
    timer: Option<Timer>,
}

enum Inner {
    Upstream(RecvBody),
    Local(Option<Bytes>),
}

struct Timer {
    idle: Option<Duration>,
    deadline: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
}

impl Timer {
    fn next_wake(&self) -> Instant {
        let idle = self.idle.map(|d| Instant::now() + d);
        match (idle, self.deadline) {
            (Some(i), Some(d)) => i.min(d),
            (Some(i), None) => i,
            (None, Some(d)) => d,
            (None, None) => Instant::now() + Duration::from_secs(86_400 * 365),
        }
    }
}

impl ResponseBody {
    pub fn local(bytes: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Local((!bytes.is_empty()).then_some(bytes)),
            _held: Held::default(),
            timer: None,
        }
    }

    /// The bytes of a local body (empty for an upstream one).
    pub fn local_bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Local(Some(b)) => b,
            _ => &[],
        }
    }

    /// An upstream body; `idle` and `deadline` (if any) cut it short.
    pub fn upstream(
        body: RecvBody,
        held: Held,
        idle: Option<Duration>,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        let timer = (idle.is_some() || deadline.is_some()).then(|| {
            let mut t = Timer {
                idle,
                deadline: deadline.map(Instant::from_std),
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            };
            let wake = t.next_wake();
            t.sleep.as_mut().reset(wake);
            t
        });
        ResponseBody {
            inner: Inner::Upstream(body),
            _held: held,
            timer,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(r) => {
                    if let Some(t) = this.timer.as_mut() {
                        let wake = t.next_wake();
                        t.sleep.as_mut().reset(wake);
                    }
                    Poll::Ready(r)
                }
                Poll::Pending => {
                    if let Some(t) = this.timer.as_mut() {
                        if t.sleep.as_mut().poll(cx).is_ready() {
                            let err = match t.deadline {
                                Some(d) if Instant::now() >= d => BodyTimeout::Request,
                                _ => BodyTimeout::Idle(t.idle.unwrap_or_default()),
                            };
                            tracing::debug!(error = %err, "response body cut short");
                            return Poll::Ready(Some(Err(err.into())));
                        }
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
