//! Peak-EWMA latency estimate of one host (the peak-EWMA balancer's input):
//! a slower sample takes over at once, faster ones are blended in with an
//! exponential decay over time. Lock-free: two atomics.

use crate::clock::clock_ns;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default latency assumed for a host with no measurement yet.
pub const DEFAULT_RTT_NS: f64 = 1_000_000.0;
/// Decay time constant.
const EWMA_DECAY_NS: f64 = 10_000_000_000.0;

#[derive(Debug)]
pub struct PeakEwma {
    /// f64 bits: the estimate in nanoseconds (0: no sample yet).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated (ns on the process clock).
    stamp_ns: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    pub fn new() -> Self {
        PeakEwma {
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            stamp_ns: AtomicU64::new(0),
        }
    }

    /// The estimate in nanoseconds.
    pub fn get(&self) -> f64 {
        let v = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        if v == 0.0 {
            DEFAULT_RTT_NS
        } else {
            v
        }
    }

    /// Records one response latency.
    pub fn observe(&self, rtt: Duration) {
        let now = clock_ns();
        let rtt = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let last = self.stamp_ns.swap(now, Ordering::Relaxed);
        let next = if prev == 0.0 || rtt > prev {
            rtt
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / EWMA_DECAY_NS).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_to_a_slow_sample_and_decays_towards_fast_ones() {
        let h = PeakEwma::new();
        assert_eq!(h.get(), DEFAULT_RTT_NS);
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(50));
        assert_eq!(h.get(), 50_000_000.0, "peak takes over at once");
        std::thread::sleep(Duration::from_millis(20));
        h.observe(Duration::from_millis(1));
        let v = h.get();
        assert!(v < 50_000_000.0 && v > 1_000_000.0, "{v}");
    }
}
