//! Fault injection for the HTTP sample app, so tests can make an upstream
//! misbehave and count what reached it.
//!
//! Per request, with headers (they pass through sidecars untouched):
//!   x-fault-status: 503        answer with this status
//!   x-fault-percent: 30        ... only for this share of requests
//!   x-fault-delay-ms: 200      wait before answering
//!   x-fault-abort: 1           close the connection without answering
//!   x-fault-reset: 1           send headers and part of the body, then reset
//!   x-fault-slow-body-ms: 100  send the body in 4 chunks this far apart
//!   x-fault-retry-after: 1     add Retry-After to a faulted response
//!
//! For every request (an admin call, straight to the app):
//!   POST /fault?status=503&percent=30&delay_ms=..&abort=1&reset=1&slow_body_ms=..&retry_after=..
//!   DELETE /fault               back to normal
//!   GET /stats                  "requests <n>" served since start (admin calls excluded)
//!   POST /stats/reset           zero the counter
//!   GET /healthz                200, or the status set by POST /health?status=N

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    pub status: Option<u16>,
    pub percent: Option<f64>,
    pub delay: Option<Duration>,
    pub abort: bool,
    pub reset: bool,
    pub slow_body: Option<Duration>,
    pub retry_after: Option<u64>,
}

impl Fault {
    /// Reads `key=value` pairs (query-string names).
    pub fn from_pairs<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Fault, String> {
        let mut f = Fault::default();
        for (k, v) in pairs {
            let bad = || format!("bad value \"{v}\" for {k}");
            match k {
                "status" => f.status = Some(v.parse().map_err(|_| bad())?),
                "percent" => f.percent = Some(v.parse().map_err(|_| bad())?),
                "delay_ms" => f.delay = Some(Duration::from_millis(v.parse().map_err(|_| bad())?)),
                "abort" => f.abort = v == "1" || v == "true",
                "reset" => f.reset = v == "1" || v == "true",
                "slow_body_ms" => {
                    f.slow_body = Some(Duration::from_millis(v.parse().map_err(|_| bad())?))
                }
                "retry_after" => f.retry_after = Some(v.parse().map_err(|_| bad())?),
                other => return Err(format!("unknown fault \"{other}\"")),
            }
        }
        Ok(f)
    }

    /// Reads the `x-fault-*` request headers.
    pub fn from_headers(h: &http::HeaderMap) -> Result<Fault, String> {
        let pairs: Vec<(String, String)> = h
            .iter()
            .filter_map(|(k, v)| {
                let name = k.as_str().strip_prefix("x-fault-")?;
                let key = match name {
                    "delay-ms" => "delay_ms",
                    "slow-body-ms" => "slow_body_ms",
                    "retry-after" => "retry_after",
                    other => other,
                };
                Some((key.to_string(), v.to_str().ok()?.to_string()))
            })
            .filter(|(k, _)| k != "grpc-status")
            .collect();
        Fault::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    pub fn is_empty(&self) -> bool {
        *self == Fault::default()
    }

    /// Whether this request is one the fault applies to.
    pub fn fires(&self) -> bool {
        match self.percent {
            Some(p) => rand::random::<f64>() * 100.0 < p,
            None => true,
        }
    }
}

/// The app-wide fault and counters.
#[derive(Debug, Default)]
pub struct FaultState {
    default: Mutex<Fault>,
    requests: AtomicU64,
    health: AtomicU16,
}

impl FaultState {
    pub fn new() -> Self {
        FaultState {
            health: AtomicU16::new(200),
            ..Default::default()
        }
    }

    pub fn set(&self, f: Fault) {
        if let Ok(mut d) = self.default.lock() {
            *d = f;
        }
    }

    pub fn current(&self) -> Fault {
        self.default.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn reset_requests(&self) {
        self.requests.store(0, Ordering::Relaxed);
    }

    pub fn health(&self) -> u16 {
        self.health.load(Ordering::Relaxed)
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_query_pairs_and_headers() {
        let f = Fault::from_pairs(
            [("status", "503"), ("percent", "30"), ("delay_ms", "20")].into_iter(),
        )
        .unwrap();
        assert_eq!(f.status, Some(503));
        assert_eq!(f.percent, Some(30.0));
        assert_eq!(f.delay, Some(Duration::from_millis(20)));
        assert!(Fault::from_pairs([("status", "x")].into_iter()).is_err());
        assert!(Fault::from_pairs([("nope", "1")].into_iter()).is_err());
        let mut h = http::HeaderMap::new();
        h.insert("x-fault-reset", "1".parse().unwrap());
        h.insert("x-fault-slow-body-ms", "50".parse().unwrap());
        let f = Fault::from_headers(&h).unwrap();
        assert!(f.reset);
        assert_eq!(f.slow_body, Some(Duration::from_millis(50)));
        assert!(Fault::from_headers(&http::HeaderMap::new())
            .unwrap()
            .is_empty());
    }
}
