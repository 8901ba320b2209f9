//! Idle upstream connections of the fast path, per worker (each worker's
//! HTTP server has its own, so workers never contend). A client connection
//! keeps the upstream connection it last used while it goes to the same
//! address, so the pool is touched only when a request goes elsewhere.

use crate::http::upstream::{connect_plain, ConnectTarget, IDLE_TIMEOUT};
use crate::policy::circuit_breaker::ConnectionSlot;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per address; more are closed.
const MAX_IDLE_PER_ADDR: usize = 256;

/// An HTTP/1.1 connection to one upstream address.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub stream: TcpStream,
    /// The cluster's `max_connections` slot, held while the connection is.
    _slot: Option<ConnectionSlot>,
    /// When it last finished a response.
    pub idle_since: Instant,
    /// It carried a request before this one (a failure before any response
    /// byte may then be the server's keep-alive close racing the request).
    pub reused: bool,
}

impl Upstream {
    pub async fn connect(target: &ConnectTarget) -> io::Result<Upstream> {
        let (stream, slot) = connect_plain(target).await?;
        Ok(Upstream {
            addr: target.addr,
            stream,
            _slot: slot,
            idle_since: Instant::now(),
            reused: false,
        })
    }

    /// Whether the connection can carry another request: not past the idle
    /// time, and the server has not closed it or sent anything unasked.
    /// tokio answers from the readiness it already has, so a quiet
    /// connection costs no system call.
    pub fn usable(&self, now: Instant) -> bool {
        if now.saturating_duration_since(self.idle_since) >= IDLE_TIMEOUT {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How often idle connections to every address are checked (on the next
/// use of the pool after that long).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    by_addr: HashMap<SocketAddr, Vec<Upstream>>,
    swept: Option<Instant>,
}

impl Idle {
    /// Closes connections past the idle time or closed by their server,
    /// for every address, at most every `SWEEP_EVERY`.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.by_addr.retain(|_, list| {
            list.retain(|u| u.usable(now));
            !list.is_empty()
        });
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently idle usable connection to `addr`.
    pub fn take(&self, addr: SocketAddr, now: Instant) -> Option<Upstream> {
        let mut idle = self.lock();
        idle.sweep(now);
        let list = idle.by_addr.get_mut(&addr)?;
        while let Some(mut up) = list.pop() {
            if up.usable(now) {
                up.reused = true;
                return Some(up);
            }
        }
        None
    }

    /// Keeps `up` for reuse if it can carry another request (closing the
    /// oldest beyond the per-address cap).
    pub fn put(&self, up: Upstream) {
        let now = Instant::now();
        if !up.usable(now) {
            return;
        }
        let mut idle = self.lock();
        idle.sweep(now);
        let list = idle.by_addr.entry(up.addr).or_default();
        if list.len() >= MAX_IDLE_PER_ADDR {
            list.remove(0);
        }
        list.push(up);
    }

    /// Idle connections held, every address together.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_addr.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_handed_out_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let target = ConnectTarget::local(addr);
        let a = Upstream::connect(&target).await.unwrap();
        let (server_a, _) = listener.accept().await.unwrap();
        let b = Upstream::connect(&target).await.unwrap();
        let (mut server_b, _) = listener.accept().await.unwrap();
        pool.put(a);
        pool.put(b);
        // The newest (b) is closed by its server; a is still open.
        server_b.shutdown().await.unwrap();
        drop(server_b);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let got = pool.take(addr, Instant::now()).expect("a is usable");
        assert!(got.reused);
        assert_eq!(
            got.stream.local_addr().unwrap(),
            server_a.peer_addr().unwrap()
        );
        assert!(pool.take(addr, Instant::now()).is_none());
        assert_eq!(pool.len(), 0);
    }
}
