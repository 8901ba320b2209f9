//! The two halves of an HTTP/2 stream as the proxy moves bodies through
//! them, the same for both sides (`h2_client` to upstreams, `h2_server` for
//! clients): an incoming body read from a `RecvStream` with its window given
//! back as it is read (`H2Body`), and an outgoing body written into a
//! `SendStream` as the peer's window allows (`send_body`).

use bytes::Bytes;
use futures::future::poll_fn;
use h2::{RecvStream, SendStream};
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A body read from an HTTP/2 stream, its window given back as it is read.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
    len: Option<u64>,
    /// A response's stream reset with NO_ERROR or CANCEL after its head is
    /// the body's end (hyper reads it so too); a request's is a failure
    /// (the client gave up on it: what came so far is not the whole body).
    reset_ends: bool,
    /// Held while the body is: what counts the connection as in use.
    _conn: Option<Arc<dyn Send + Sync>>,
}

impl H2Body {
    /// A response body from upstream; `conn` is held until it drops.
    pub fn response(recv: RecvStream, headers: &HeaderMap, conn: Arc<dyn Send + Sync>) -> Self {
        H2Body {
            recv,
            data_done: false,
            len: content_length(headers),
            reset_ends: true,
            _conn: Some(conn),
        }
    }

    /// A request body from a client.
    pub fn request(recv: RecvStream, headers: &HeaderMap) -> Self {
        H2Body {
            recv,
            data_done: false,
            len: content_length(headers),
            reset_ends: false,
            _conn: None,
        }
    }
}

/// The declared length (h2 resets a stream whose DATA does not add up to
/// it, so it can be promised on).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    return match e.reason() {
                        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) if this.reset_ends => {
                            Poll::Ready(None)
                        }
                        _ => Poll::Ready(Some(Err(e))),
                    };
                }
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) if !self.data_done => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Copies `body` into its HTTP/2 stream as the peer's window allows,
/// trailers included; a failing body resets the stream (CANCEL), a stream
/// the peer reset stops reading the body. Returns once either is done.
pub async fn send_body<B>(mut body: B, mut tx: SendStream<Bytes>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    loop {
        // Room for at least one byte, or the stream reset.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            let ok = poll_fn(|cx| loop {
                match tx.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => continue,
                    Poll::Ready(Some(Ok(_))) => return Poll::Ready(true),
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(false),
                    Poll::Pending => {
                        return match tx.poll_reset(cx) {
                            Poll::Ready(_) => Poll::Ready(false),
                            Poll::Pending => Poll::Pending,
                        }
                    }
                }
            })
            .await;
            if !ok {
                return;
            }
        }
        let frame = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Some(r));
            }
            match tx.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let Some(frame) = frame else {
            return; // the peer reset the stream
        };
        match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "body failed, resetting the h2 stream");
                tx.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    if tx.send_data(data, eos).is_err() || eos {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = tx.send_trailers(trailers);
                    } else {
                        let _ = tx.send_data(Bytes::new(), true);
                    }
                    return;
                }
            },
        }
    }
}
