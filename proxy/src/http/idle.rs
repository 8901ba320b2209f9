//! When a client connection is idle. A request is in flight from the moment
//! its head is read until hyper drops its response body (sent, or reset);
//! the connection is idle while none is. A watchdog per connection says
//! when it has been idle too long: `first` before any request (a client
//! that connects, or sends the HTTP/2 preface, and then nothing), `idle`
//! after one. Counting costs two uncontended atomic adds per request, on an
//! object only this connection's tasks touch.

use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// One connection's requests in flight and when the last one ended.
pub struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `opened` at which the last request ended; 0 with
    /// no request yet.
    last_end_ms: AtomicU64,
    seen: AtomicU32,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_end_ms: AtomicU64::new(0),
            seen: AtomicU32::new(0),
        })
    }

    /// A request started; it is in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.seen.store(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for
    /// `first` (no request ever) or `idle` (after one). Never resolves while
    /// a request is in flight. True if the connection ever had a request.
    pub async fn idle_for(&self, first: Duration, idle: Duration) -> bool {
        loop {
            let now = Instant::now();
            let wake = if self.in_flight.load(Ordering::Relaxed) > 0 {
                // Busy: look again later; a request ending restarts the clock.
                now + idle
            } else if self.seen.load(Ordering::Relaxed) == 0 {
                // A request may come and go meanwhile: look again by `idle`.
                (self.opened + first).min(now + idle)
            } else {
                self.opened + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed)) + idle
            };
            if wake <= now {
                return self.seen.load(Ordering::Relaxed) != 0;
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in flight on its connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.opened.elapsed().as_millis().max(1) as u64;
        a.last_end_ms.fetch_max(ms, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until hyper drops it.
pub struct Counted<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Counted<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Counted {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, short limits: the assertions are lower bounds (never
    // idle early) plus "idle at all", so a slow machine cannot fail them.
    #[tokio::test]
    async fn a_connection_is_idle_only_with_nothing_in_flight_for_the_limit() {
        // The end of a request is kept in whole milliseconds: allow 1 ms.
        let ms = Duration::from_millis(1);
        let t0 = Instant::now();
        let a = Activity::new();
        let first = Duration::from_millis(100);
        let idle = Duration::from_millis(250);
        // No request ever: `first` applies.
        assert!(!a.idle_for(first, idle).await);
        assert!(t0.elapsed() >= first, "idle after {:?}", t0.elapsed());
        // A request in flight holds the connection open past both limits.
        let req = a.start();
        let waited = tokio::time::timeout(idle * 3, a.idle_for(first, idle)).await;
        assert!(waited.is_err(), "idle while a request was in flight");
        drop(req);
        // After it ends, `idle` runs from its end.
        let t1 = Instant::now();
        assert!(a.idle_for(first, idle).await);
        assert!(t1.elapsed() + ms >= idle, "idle after {:?}", t1.elapsed());
    }
}
