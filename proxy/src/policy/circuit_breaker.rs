//! Circuit-breaking limits per cluster: connections, requests in flight,
//! requests waiting for a slot, retries in flight. Over a limit the request
//! fails fast with 503 and `x-weft-overloaded: <limit>`; nothing queues
//! beyond `max_pending_requests`, and a queued request waits no longer than
//! its deadline. Counters are atomics shared by every snapshot that has the
//! cluster (`ClusterLoad` survives config pushes).

use metrics::Counter;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use xds_proto::v1 as pb;

pub const OVERLOADED_TOTAL: &str = "weft_overloaded_total";
pub const OVERLOADED_HEADER: &str = "x-weft-overloaded";

/// Longest a queued request waits for a slot when it has no deadline.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// 0 means unlimited, except `max_pending`: 0 means no request waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Limits {
    pub fn from_pb(l: Option<&pb::CircuitBreaker>) -> Limits {
        l.map(|l| Limits {
            max_connections: l.max_connections,
            max_pending: l.max_pending_requests,
            max_requests: l.max_requests,
            max_retries: l.max_retries,
        })
        .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxConnections,
    MaxPending,
    MaxRequests,
    MaxRetries,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxPending => "max_pending",
            Limit::MaxRequests => "max_requests",
            Limit::MaxRetries => "max_retries",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster's load against its limits.
#[derive(Debug)]
pub struct ClusterLoad {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    freed: Notify,
    cluster: Arc<str>,
    /// Registered on first use: clusters that never hit a limit cost no
    /// series (a sidecar may know thousands of clusters).
    overloaded: [OnceLock<Counter>; 4],
}

impl ClusterLoad {
    pub fn new(cluster: Arc<str>) -> Self {
        ClusterLoad {
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            freed: Notify::new(),
            cluster,
            overloaded: Default::default(),
        }
    }

    fn over(&self, limit: Limit) -> Limit {
        self.overloaded[limit as usize]
            .get_or_init(|| {
                metrics::counter!(OVERLOADED_TOTAL, "cluster" => self.cluster.to_string(), "limit" => limit.as_str())
            })
            .increment(1);
        limit
    }

    fn try_take(counter: &AtomicU32, max: u32) -> bool {
        max == 0
            || counter
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
    }

    /// A slot for one request: at once, or after waiting in the pending
    /// queue (bounded by `max_pending` and by `wait`).
    pub async fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        wait: Option<Duration>,
    ) -> Result<RequestSlot, Limit> {
        if limits.max_requests == 0 {
            self.requests.fetch_add(1, Ordering::Relaxed);
            return Ok(RequestSlot(self.clone()));
        }
        if Self::try_take(&self.requests, limits.max_requests) {
            return Ok(RequestSlot(self.clone()));
        }
        if limits.max_pending == 0 {
            return Err(self.over(Limit::MaxRequests));
        }
        if !Self::try_take(&self.pending, limits.max_pending) {
            return Err(self.over(Limit::MaxPending));
        }
        let _pending = PendingGuard(self);
        let waited = tokio::time::timeout(wait.unwrap_or(MAX_QUEUE_WAIT), async {
            loop {
                let freed = self.freed.notified();
                if Self::try_take(&self.requests, limits.max_requests) {
                    return;
                }
                freed.await;
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(RequestSlot(self.clone())),
            Err(_) => Err(self.over(Limit::MaxPending)),
        }
    }

    /// A slot for one retry, if `max_retries` allows.
    pub fn try_retry(self: &Arc<Self>, limits: &Limits) -> Result<RetrySlot, Limit> {
        if limits.max_retries == 0 {
            self.retries.fetch_add(1, Ordering::Relaxed);
            return Ok(RetrySlot(self.clone()));
        }
        if Self::try_take(&self.retries, limits.max_retries) {
            Ok(RetrySlot(self.clone()))
        } else {
            Err(self.over(Limit::MaxRetries))
        }
    }

    /// A slot for one upstream connection, if `max_connections` allows.
    pub fn try_connect(self: &Arc<Self>, limits: &Limits) -> Result<ConnectionSlot, Limit> {
        if limits.max_connections == 0 {
            self.connections.fetch_add(1, Ordering::Relaxed);
            return Ok(ConnectionSlot(self.clone()));
        }
        if Self::try_take(&self.connections, limits.max_connections) {
            Ok(ConnectionSlot(self.clone()))
        } else {
            Err(self.over(Limit::MaxConnections))
        }
    }

    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }
}

struct PendingGuard<'a>(&'a ClusterLoad);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight; the slot frees (and wakes a queued request) on drop.
#[derive(Debug)]
pub struct RequestSlot(Arc<ClusterLoad>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

#[derive(Debug)]
pub struct RetrySlot(Arc<ClusterLoad>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct ConnectionSlot(Arc<ClusterLoad>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_max_requests_without_a_queue_fails_fast() {
        let load = Arc::new(ClusterLoad::new("c".into()));
        let limits = Limits {
            max_requests: 2,
            ..Limits::default()
        };
        let a = load.admit(&limits, None).await.unwrap();
        let _b = load.admit(&limits, None).await.unwrap();
        assert_eq!(
            load.admit(&limits, None).await.unwrap_err(),
            Limit::MaxRequests
        );
        drop(a);
        load.admit(&limits, None)
            .await
            .expect("a freed slot is reusable");
    }

    #[tokio::test]
    async fn queued_requests_get_freed_slots_and_the_overflow_fails_fast() {
        let load = Arc::new(ClusterLoad::new("c".into()));
        let limits = Limits {
            max_requests: 1,
            max_pending: 1,
            ..Limits::default()
        };
        let first = load.admit(&limits, None).await.unwrap();
        let l2 = load.clone();
        let queued = tokio::spawn(async move { l2.admit(&limits, None).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            load.admit(&limits, None).await.unwrap_err(),
            Limit::MaxPending
        );
        drop(first);
        queued
            .await
            .unwrap()
            .expect("the queued request gets the slot");
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_at_its_deadline() {
        let load = Arc::new(ClusterLoad::new("c".into()));
        let limits = Limits {
            max_requests: 1,
            max_pending: 5,
            ..Limits::default()
        };
        let _held = load.admit(&limits, None).await.unwrap();
        let t = std::time::Instant::now();
        let r = load.admit(&limits, Some(Duration::from_millis(50))).await;
        assert_eq!(r.unwrap_err(), Limit::MaxPending);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn retries_and_connections_have_their_own_limits() {
        let load = Arc::new(ClusterLoad::new("c".into()));
        let limits = Limits {
            max_retries: 1,
            max_connections: 1,
            ..Limits::default()
        };
        let r = load.try_retry(&limits).unwrap();
        assert_eq!(load.try_retry(&limits).unwrap_err(), Limit::MaxRetries);
        drop(r);
        assert!(load.try_retry(&limits).is_ok());
        let c = load.try_connect(&limits).unwrap();
        assert_eq!(
            load.try_connect(&limits).unwrap_err(),
            Limit::MaxConnections
        );
        assert_eq!(load.connections(), 1);
        drop(c);
        assert_eq!(load.connections(), 0);
    }
}
