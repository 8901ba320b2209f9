//! The per-cluster retry budget that keeps retries from multiplying an
//! outage: retries may add at most `percent` % on top of the cluster's
//! requests over the last 10 s, or `min_per_second` in the current second,
//! whichever is more. A 10 s sliding window of 1 s slots, all atomics.

use crate::clock::clock_ms;
use metrics::Counter;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use xds_proto::v1 as pb;

pub const BUDGET_EXHAUSTED_TOTAL: &str = "weft_retry_budget_exhausted_total";

const WINDOW_SECS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// The retry budget of one cluster: a 10 s sliding window of 1 s slots.
#[derive(Debug)]
pub struct RetryBudget {
    slots: [Slot; WINDOW_SECS as usize],
    cluster: Arc<str>,
    /// Registered the first time the budget runs out.
    exhausted: OnceLock<Counter>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries per request allowed on top (0.2 = 20 %).
    pub ratio: f64,
    pub min_per_second: u32,
}

impl BudgetConfig {
    pub fn from_pb(b: Option<&pb::RetryBudget>) -> BudgetConfig {
        match b {
            Some(b) => BudgetConfig {
                ratio: (b.percent / 100.0).max(0.0),
                min_per_second: b.min_retries_per_second,
            },
            None => BudgetConfig {
                ratio: 0.2,
                min_per_second: 10,
            },
        }
    }
}

impl RetryBudget {
    pub fn new(cluster: Arc<str>) -> Self {
        RetryBudget {
            slots: Default::default(),
            cluster,
            exhausted: OnceLock::new(),
        }
    }

    fn slot(&self, second: u64) -> &Slot {
        let s = &self.slots[(second % WINDOW_SECS) as usize];
        let seen = s.second.load(Ordering::Acquire);
        if seen != second
            && s.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            s.requests.store(0, Ordering::Relaxed);
            s.retries.store(0, Ordering::Relaxed);
        }
        s
    }

    /// Counts one original request (not a retry).
    pub fn record_request(&self) {
        self.slot(clock_ms() / 1000 + 1)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes budget for one retry if there is any left.
    pub fn try_withdraw(&self, cfg: &BudgetConfig) -> bool {
        let now = clock_ms() / 1000 + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let sec = s.second.load(Ordering::Acquire);
            if sec + WINDOW_SECS > now && sec <= now {
                requests += u64::from(s.requests.load(Ordering::Relaxed));
                retries += u64::from(s.retries.load(Ordering::Relaxed));
            }
        }
        let current = self.slot(now);
        let this_second = u64::from(current.retries.load(Ordering::Relaxed));
        let allowed = (retries as f64) < cfg.ratio * requests as f64
            || this_second < u64::from(cfg.min_per_second);
        if allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.exhausted
                .get_or_init(|| {
                    metrics::counter!(BUDGET_EXHAUSTED_TOTAL, "cluster" => self.cluster.to_string())
                })
                .increment(1);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_ratio_or_the_floor_not_more() {
        let b = RetryBudget::new("c".into());
        let cfg = BudgetConfig {
            ratio: 0.2,
            min_per_second: 0,
        };
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_withdraw(&cfg)).count();
        assert_eq!(granted, 20);
        let floor = BudgetConfig {
            ratio: 0.0,
            min_per_second: 10,
        };
        let b = RetryBudget::new("c".into());
        let granted = (0..100).filter(|_| b.try_withdraw(&floor)).count();
        assert_eq!(granted, 10, "the floor holds with no traffic");
    }
}
