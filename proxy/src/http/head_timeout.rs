//! `408 Request Timeout` for an HTTP/1.1 request head that did not arrive in
//! time (RFC 9110 §15.5.9). hyper enforces the header-read deadline but
//! closes the connection without a word, so a slow but honest client cannot
//! tell a timeout from a crash. The client's stream is wrapped to remember
//! whether bytes of a request arrived since the last response; when the
//! connection ends on that deadline with such bytes pending, the last words
//! on the socket are a 408. An idle kept-alive connection (nothing pending)
//! is closed silently, as clients expect; so is an HTTP/2 connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Client connections whose request head timed out, by listener.
pub const HEADER_TIMEOUTS: &str = "weft_http_header_timeouts_total";

/// The 408 for a request head that did not arrive in time.
pub const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\nx-weft-error: request_header_timeout\r\ncontent-length: 46\r\n\r\nweft: the request head did not arrive in time\n";

/// A stream that can take a few bytes without waiting (plain TCP); others
/// (TLS between sidecars) say nothing.
pub trait LastWords {
    fn try_write_now(&self, bytes: &[u8]);
}

impl LastWords for TcpStream {
    fn try_write_now(&self, bytes: &[u8]) {
        let _ = self.try_write(bytes);
    }
}

impl LastWords for tokio_rustls::server::TlsStream<TcpStream> {
    fn try_write_now(&self, _: &[u8]) {}
}

/// A client connection's stream (plain TCP, TLS, or handed off by the
/// fast path), boxed by `HttpServer::serve` so hyper's server is compiled
/// once for all of them (the binary's size is most of an idle sidecar's
/// RSS).
pub trait ClientIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + LastWords + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + LastWords + Unpin + Send> ClientIo for T {}

impl LastWords for Box<dyn ClientIo> {
    fn try_write_now(&self, bytes: &[u8]) {
        (**self).try_write_now(bytes)
    }
}

/// The client's stream, watched for a request left unanswered.
pub struct Watched<I: LastWords> {
    io: I,
    /// Request bytes read since the last response bytes were written.
    pending: bool,
    /// The connection started with the HTTP/2 preface.
    h2: Option<bool>,
    timed_out: Arc<AtomicBool>,
}

/// Set when the connection ended on the header-read deadline.
#[derive(Clone, Default)]
pub struct TimedOut(Arc<AtomicBool>);

impl TimedOut {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl<I: LastWords> Watched<I> {
    pub fn new(io: I) -> (Self, TimedOut) {
        let flag = TimedOut::default();
        let watched = Watched {
            io,
            pending: false,
            h2: None,
            timed_out: flag.0.clone(),
        };
        (watched, flag)
    }
}

impl<I: LastWords> Drop for Watched<I> {
    fn drop(&mut self) {
        if self.pending && self.h2 == Some(false) && self.timed_out.load(Ordering::Relaxed) {
            self.io.try_write_now(TIMEOUT_RESPONSE);
        }
    }
}

/// Whether `e` (a connection's error) is hyper's header-read timeout.
pub fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_timeout())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl<I: LastWords + AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                self.pending = true;
                if self.h2.is_none() {
                    self.h2 = Some(read.starts_with(b"PRI "));
                }
            }
        }
        polled
    }
}

impl<I: LastWords + AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.pending = false;
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.pending = false;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_408_body_is_as_long_as_its_content_length_says() {
        let text = std::str::from_utf8(TIMEOUT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
