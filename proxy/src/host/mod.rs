//! One upstream endpoint of a cluster and its live state: requests in flight
//! (least-request), its latency estimate (`peak_ewma`), its ejection state
//! (`ejection`, written by outlier detection) and the active health-check
//! verdict. The state is kept in an `Arc` that survives config pushes (a new
//! snapshot reuses the state of the same endpoint), so an ejection or a health verdict is not forgotten
//! because an unrelated route changed. Everything is atomics: the request
//! path reads and updates it without locks.

pub mod ejection;
pub mod peak_ewma;

use crate::clock::clock_ms;
use ejection::EjectionState;
use peak_ewma::PeakEwma;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// `addr` as a URI authority, built once per host so requests do not format
/// it (a SocketAddr always formats as a valid authority).
pub fn authority_of(addr: &SocketAddr) -> http::uri::Authority {
    http::uri::Authority::try_from(addr.to_string())
        .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
}

/// The labels of an endpoint without any (shared, not allocated per host).
pub fn no_labels() -> Arc<BTreeMap<String, String>> {
    static EMPTY: OnceLock<Arc<BTreeMap<String, String>>> = OnceLock::new();
    EMPTY.get_or_init(Arc::default).clone()
}

/// An endpoint as the snapshot describes it, with its shared live state.
#[derive(Debug, Clone)]
pub struct Host {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once so requests do not format it.
    pub authority: http::uri::Authority,
    /// The SPIFFE ID its sidecar must present; None: plaintext workload.
    pub identity: Option<Arc<str>>,
    /// Relative share for weighted balancers (at least 1).
    pub weight: u32,
    pub labels: Arc<BTreeMap<String, String>>,
    pub state: Arc<HostState>,
}

impl Host {
    /// The weight after slow start: a host added `age` ago ramps linearly
    /// from 10 % to 100 % of its weight over `window`.
    pub fn effective_weight(&self, window: Option<Duration>, now_ms: u64) -> f64 {
        let w = f64::from(self.weight.max(1));
        let Some(window) = window else { return w };
        let age = now_ms.saturating_sub(self.state.added_ms) as f64;
        let frac = (age / window.as_millis().max(1) as f64).clamp(0.1, 1.0);
        w * frac
    }
}

#[derive(Debug)]
pub struct HostState {
    /// Requests in flight to this host.
    pub active: AtomicU32,
    /// Response latency as peak-EWMA sees it.
    pub latency: PeakEwma,
    /// When the host first appeared (slow start).
    pub added_ms: u64,
    /// Active health checks: false once `unhealthy_threshold` checks failed.
    pub healthy: AtomicBool,
    pub health_streak: AtomicU32,
    pub ejection: EjectionState,
}

impl Default for HostState {
    fn default() -> Self {
        Self::new()
    }
}

impl HostState {
    pub fn new() -> Self {
        HostState {
            active: AtomicU32::new(0),
            latency: PeakEwma::new(),
            added_ms: clock_ms(),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            ejection: EjectionState::new(),
        }
    }

    /// Whether active health checks currently let the host take traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// A request in flight to a host: counted in `active` until dropped.
#[derive(Debug)]
pub struct HostGuard {
    state: Arc<HostState>,
    /// This request is the half-open probe of an ejected host.
    pub probe: bool,
}

impl HostGuard {
    pub fn new(state: Arc<HostState>, probe: bool) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        HostGuard { state, probe }
    }

    pub fn state(&self) -> &Arc<HostState> {
        &self.state
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            // A probe that ended without a verdict (cancelled) frees the
            // slot so another request can probe.
            self.state.ejection.release_probe();
        }
    }
}

/// `n` hosts 10.0.0.1.. on port 80 with `weights` (default 1), for tests.
#[cfg(test)]
pub(crate) fn test_hosts(n: usize, weights: &[u32]) -> Vec<Host> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{}:80", i + 1)
                .parse()
                .expect("valid address");
            Host {
                addr,
                authority: authority_of(&addr),
                identity: None,
                weight: weights.get(i).copied().unwrap_or(1),
                labels: no_labels(),
                state: Arc::new(HostState::new()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramps_weight_from_a_tenth_to_full() {
        let state = Arc::new(HostState::new());
        let host = Host {
            addr: "10.0.0.1:80".parse().unwrap(),
            authority: http::uri::Authority::from_static("10.0.0.1:80"),
            identity: None,
            weight: 10,
            labels: Arc::default(),
            state: state.clone(),
        };
        let w = Some(Duration::from_secs(10));
        assert_eq!(host.effective_weight(w, state.added_ms), 1.0);
        assert_eq!(host.effective_weight(w, state.added_ms + 5_000), 5.0);
        assert_eq!(host.effective_weight(w, state.added_ms + 60_000), 10.0);
        assert_eq!(host.effective_weight(None, state.added_ms), 10.0);
    }

    #[test]
    fn guard_counts_a_request_in_flight_until_dropped() {
        let state = Arc::new(HostState::new());
        let g = HostGuard::new(state.clone(), false);
        assert_eq!(state.active.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(state.active.load(Ordering::Relaxed), 0);
    }
}
