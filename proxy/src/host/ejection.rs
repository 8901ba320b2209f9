//! A host's ejection state: whether outlier detection has taken it out of
//! rotation, until when, and the single half-open probe slot. Balancers ask
//! `availability`; `policy::outlier` decides ejections and writes it.

use metrics::Gauge;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

pub const BREAKER_STATE: &str = "weft_circuit_breaker_state";

/// Gauge values of `weft_circuit_breaker_state`.
pub const CLOSED: f64 = 0.0;
pub const OPEN: f64 = 1.0;
pub const HALF_OPEN: f64 = 2.0;

pub enum Availability {
    Available,
    /// Half-open: this request is the one probe.
    Probe,
    Unavailable,
}

/// One host's ejection state (its breaker, as `weft_circuit_breaker_state`
/// shows it): written by outlier detection, read by every balancer.
#[derive(Debug)]
pub struct EjectionState {
    /// 0: in rotation; else ejected until this `clock_ms`.
    pub(crate) ejected_until_ms: AtomicU64,
    pub(crate) probing: AtomicBool,
    pub(crate) ejections: AtomicU32,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) consecutive_connect: AtomicU32,
    pub(crate) window_total: AtomicU32,
    pub(crate) window_success: AtomicU32,
    /// Registered once the host's cluster has outlier detection (or at its
    /// first ejection), not for every endpoint a sidecar knows.
    pub(crate) gauge: OnceLock<Gauge>,
}

impl Default for EjectionState {
    fn default() -> Self {
        Self::new()
    }
}

impl EjectionState {
    pub fn new() -> Self {
        EjectionState {
            ejected_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            window_total: AtomicU32::new(0),
            window_success: AtomicU32::new(0),
            gauge: OnceLock::new(),
        }
    }

    /// The host's `weft_circuit_breaker_state` gauge, registered on first use.
    pub(crate) fn gauge(&self, cluster: &str, addr: SocketAddr) -> &Gauge {
        self.gauge.get_or_init(|| {
            metrics::gauge!(BREAKER_STATE, "cluster" => cluster.to_string(), "host" => addr.to_string())
        })
    }

    pub(crate) fn state_value(&self) -> f64 {
        if self.is_ejected() {
            OPEN
        } else {
            CLOSED
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Whether a request may go to the host now; a half-open host admits
    /// exactly one probe at a time.
    pub fn availability(&self, now_ms: u64) -> Availability {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Availability::Available;
        }
        if now_ms < until {
            return Availability::Unavailable;
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // The gauge exists: the host was ejected.
            if let Some(g) = self.gauge.get() {
                g.set(HALF_OPEN);
            }
            Availability::Probe
        } else {
            Availability::Unavailable
        }
    }

    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }
}
