//! Outlier detection: decides when a host is ejected (its per-host breaker
//! opens; the state itself is `host::ejection`). A host that fails too often
//! in a row (5xx, gateway errors, connect failures) or whose success rate falls
//! far below its peers' is ejected for a time that grows with each ejection.
//! When the time is up the host is half-open: one probe request goes to it;
//! success closes the breaker, failure ejects it again. At most
//! `max_ejection_percent` of a cluster is ejected at once.
//!
//! State is atomics on the host (`EjectionState`) and on the cluster
//! (`ClusterOutliers`); success rates are evaluated by whichever request
//! first finds the interval elapsed, so no background task is needed.

use crate::clock::clock_ms;
use crate::host::ejection::{BREAKER_STATE, CLOSED, HALF_OPEN, OPEN};
use crate::host::Host;
use metrics::{Counter, Gauge};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use xds_proto::v1 as pb;

pub const EJECTIONS_TOTAL: &str = "weft_outlier_ejections_total";

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    pub success_rate: Option<SuccessRate>,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: f64,
}

impl OutlierConfig {
    pub fn from_pb(o: &pb::OutlierDetection) -> Self {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        OutlierConfig {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            consecutive_connect_failures: o.consecutive_connect_failures,
            success_rate: o.success_rate.then(|| SuccessRate {
                minimum_hosts: o.success_rate_minimum_hosts.max(1),
                request_volume: o.success_rate_request_volume.max(1),
                stdev_factor: if o.success_rate_stdev_factor > 0.0 {
                    o.success_rate_stdev_factor
                } else {
                    1.9
                },
            }),
            interval_ms: or(o.interval_ms, 1_000),
            base_ejection_ms: or(o.base_ejection_time_ms, 5_000),
            max_ejection_ms: or(o.max_ejection_time_ms, 300_000),
            max_ejection_percent: o.max_ejection_percent.min(100),
        }
    }

    fn ejection_ms(&self, ejections: u32) -> u64 {
        self.base_ejection_ms
            .saturating_mul(u64::from(ejections.max(1)))
            .min(self.max_ejection_ms.max(self.base_ejection_ms))
    }
}

/// What one try at a host came to, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than 502/503/504.
    ServerError,
    /// 502, 503, 504, a reset or a timeout.
    GatewayError,
    ConnectFailure,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}

/// A cluster's share of outlier state: the config, how many hosts are out,
/// when success rates are next evaluated.
#[derive(Debug)]
pub struct ClusterOutliers {
    pub ejected: AtomicU32,
    next_eval_ms: AtomicU64,
    cluster: Arc<str>,
    /// Both registered when the cluster gets outlier detection.
    ejections_total: OnceLock<Counter>,
    gauge: OnceLock<Gauge>,
}

impl ClusterOutliers {
    pub fn new(cluster: Arc<str>) -> Self {
        ClusterOutliers {
            ejected: AtomicU32::new(0),
            next_eval_ms: AtomicU64::new(0),
            cluster,
            ejections_total: OnceLock::new(),
            gauge: OnceLock::new(),
        }
    }

    fn gauge(&self) -> &Gauge {
        self.gauge.get_or_init(
            || metrics::gauge!(BREAKER_STATE, "cluster" => self.cluster.to_string(), "host" => "*"),
        )
    }

    fn ejections_total(&self) -> &Counter {
        self.ejections_total.get_or_init(
            || metrics::counter!(EJECTIONS_TOTAL, "cluster" => self.cluster.to_string()),
        )
    }

    /// Recounts ejected hosts (after the host list changed). With outlier
    /// detection configured (`detecting`) the cluster's and hosts' breaker
    /// gauges are registered and refreshed.
    pub fn recount(&self, hosts: &[Host], detecting: bool) {
        let n = hosts
            .iter()
            .filter(|h| h.state.ejection.is_ejected())
            .count() as u32;
        self.ejected.store(n, Ordering::Relaxed);
        if detecting {
            for h in hosts {
                let s = &h.state.ejection;
                s.gauge(&self.cluster, h.addr).set(s.state_value());
            }
            let _ = self.ejections_total();
            self.update_gauge(hosts.len());
        }
    }

    fn update_gauge(&self, hosts: usize) {
        let ejected = self.ejected.load(Ordering::Relaxed) as usize;
        self.gauge().set(if ejected == 0 {
            CLOSED
        } else if ejected >= hosts {
            OPEN
        } else {
            HALF_OPEN
        });
    }

    /// Takes one ejection slot if `max_ejection_percent` allows (at least one
    /// host may always be ejected when the percentage is above 0).
    fn try_reserve(&self, cfg: &OutlierConfig, hosts: usize) -> bool {
        if cfg.max_ejection_percent == 0 {
            return false;
        }
        let cap = ((hosts as u64 * u64::from(cfg.max_ejection_percent)) / 100).max(1) as u32;
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn eject(&self, cfg: &OutlierConfig, host: &Host, now_ms: u64, reason: &str) {
        let s = &host.state.ejection;
        let n = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        s.ejected_until_ms
            .store(now_ms + cfg.ejection_ms(n).max(1), Ordering::Relaxed);
        s.gauge(&self.cluster, host.addr).set(OPEN);
        self.ejections_total().increment(1);
        tracing::info!(host = %host.addr, ejections = n, reason, "outlier ejected");
    }

    /// Records the outcome of one try at `host` (of `hosts`, the cluster's).
    pub fn record(
        &self,
        cfg: &OutlierConfig,
        hosts: &[Host],
        host: &Host,
        probe: bool,
        outcome: Outcome,
    ) {
        let s = &host.state.ejection;
        let now = clock_ms();
        let ok = outcome == Outcome::Success;
        s.window_total.fetch_add(1, Ordering::Relaxed);
        if ok {
            s.window_success.fetch_add(1, Ordering::Relaxed);
            s.consecutive_5xx.store(0, Ordering::Relaxed);
            s.consecutive_gateway.store(0, Ordering::Relaxed);
            s.consecutive_connect.store(0, Ordering::Relaxed);
        }
        if probe {
            s.probing.store(false, Ordering::Release);
            if ok {
                if s.ejected_until_ms.swap(0, Ordering::Relaxed) != 0 {
                    self.ejected.fetch_sub(1, Ordering::Relaxed);
                }
                s.gauge(&self.cluster, host.addr).set(CLOSED);
                tracing::info!(host = %host.addr, "outlier readmitted after a successful probe");
            } else {
                // Still in the ejected count: just extend the ejection.
                self.eject(cfg, host, now, "probe failed");
            }
            self.update_gauge(hosts.len());
        } else if !ok && !s.is_ejected() {
            let c5 = s.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            let cg = if outcome == Outcome::ServerError {
                s.consecutive_gateway.load(Ordering::Relaxed)
            } else {
                s.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
            };
            let cc = if outcome == Outcome::ConnectFailure {
                s.consecutive_connect.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                s.consecutive_connect.store(0, Ordering::Relaxed);
                0
            };
            let reason = if cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx {
                Some("consecutive_5xx")
            } else if cfg.consecutive_gateway_errors > 0 && cg >= cfg.consecutive_gateway_errors {
                Some("consecutive_gateway_errors")
            } else if cfg.consecutive_connect_failures > 0 && cc >= cfg.consecutive_connect_failures
            {
                Some("consecutive_connect_failures")
            } else {
                None
            };
            if let Some(reason) = reason {
                if self.try_reserve(cfg, hosts.len()) {
                    s.consecutive_5xx.store(0, Ordering::Relaxed);
                    s.consecutive_gateway.store(0, Ordering::Relaxed);
                    s.consecutive_connect.store(0, Ordering::Relaxed);
                    self.eject(cfg, host, now, reason);
                    self.update_gauge(hosts.len());
                }
            }
        }
        if let Some(sr) = &cfg.success_rate {
            let due = self.next_eval_ms.load(Ordering::Relaxed);
            if now >= due
                && self
                    .next_eval_ms
                    .compare_exchange(
                        due,
                        now + cfg.interval_ms,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                && due != 0
            {
                self.evaluate_success_rates(cfg, sr, hosts, now);
            }
        }
    }

    /// Ejects hosts whose success rate over the last interval is below
    /// mean - stdev_factor * stdev, among hosts with enough requests.
    fn evaluate_success_rates(
        &self,
        cfg: &OutlierConfig,
        sr: &SuccessRate,
        hosts: &[Host],
        now: u64,
    ) {
        let rates: Vec<(usize, f64)> = hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let s = &h.state.ejection;
                let total = s.window_total.swap(0, Ordering::Relaxed);
                let ok = s.window_success.swap(0, Ordering::Relaxed);
                (total >= sr.request_volume && !s.is_ejected())
                    .then(|| (i, f64::from(ok) / f64::from(total)))
            })
            .collect();
        if rates.len() < sr.minimum_hosts as usize {
            return;
        }
        let n = rates.len() as f64;
        let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
        let var = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
        let threshold = mean - sr.stdev_factor * var.sqrt();
        for (i, rate) in rates {
            if rate < threshold && self.try_reserve(cfg, hosts.len()) {
                self.eject(cfg, &hosts[i], now, "success_rate");
            }
        }
        self.update_gauge(hosts.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ejection::Availability;

    fn hosts(n: usize) -> Vec<Host> {
        crate::host::test_hosts(n, &[])
    }

    fn cfg() -> OutlierConfig {
        OutlierConfig::from_pb(&pb::OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_time_ms: 50,
            max_ejection_percent: 50,
            ..Default::default()
        })
    }

    #[test]
    fn consecutive_failures_eject_then_a_probe_readmits() {
        let (c, hs) = (ClusterOutliers::new("c".into()), hosts(4));
        let cfg = cfg();
        for _ in 0..2 {
            c.record(&cfg, &hs, &hs[0], false, Outcome::ServerError);
        }
        c.record(&cfg, &hs, &hs[0], false, Outcome::Success);
        c.record(&cfg, &hs, &hs[0], false, Outcome::ServerError);
        assert!(
            !hs[0].state.ejection.is_ejected(),
            "a success resets the streak"
        );
        for _ in 0..2 {
            c.record(&cfg, &hs, &hs[0], false, Outcome::ServerError);
        }
        assert!(hs[0].state.ejection.is_ejected());
        assert!(matches!(
            hs[0].state.ejection.availability(clock_ms()),
            Availability::Unavailable
        ));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(matches!(
            hs[0].state.ejection.availability(clock_ms()),
            Availability::Probe
        ));
        assert!(
            matches!(
                hs[0].state.ejection.availability(clock_ms()),
                Availability::Unavailable
            ),
            "only one probe at a time"
        );
        c.record(&cfg, &hs, &hs[0], true, Outcome::Success);
        assert!(!hs[0].state.ejection.is_ejected());
        assert_eq!(c.ejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failed_probe_ejects_again_for_longer() {
        let (c, hs) = (ClusterOutliers::new("c".into()), hosts(2));
        let cfg = cfg();
        for _ in 0..3 {
            c.record(&cfg, &hs, &hs[1], false, Outcome::GatewayError);
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(matches!(
            hs[1].state.ejection.availability(clock_ms()),
            Availability::Probe
        ));
        let ejected_at = clock_ms();
        c.record(&cfg, &hs, &hs[1], true, Outcome::GatewayError);
        assert_eq!(hs[1].state.ejection.ejection_count(), 2);
        // Read the deadline rather than sleeping past the first one: a
        // loaded machine can oversleep any margin.
        let until = hs[1]
            .state
            .ejection
            .ejected_until_ms
            .load(Ordering::Relaxed);
        assert!(
            until >= ejected_at + 2 * cfg.base_ejection_ms,
            "second ejection lasts 2 x base: until {until}, ejected at {ejected_at}"
        );
        assert!(matches!(
            hs[1]
                .state
                .ejection
                .availability(ejected_at + cfg.base_ejection_ms + 1),
            Availability::Unavailable
        ));
        assert_eq!(c.ejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn max_ejection_percent_caps_ejected_hosts() {
        let (c, hs) = (ClusterOutliers::new("c".into()), hosts(4));
        let cfg = cfg();
        for h in &hs {
            for _ in 0..3 {
                c.record(&cfg, &hs, h, false, Outcome::ConnectFailure);
            }
        }
        let ejected = hs.iter().filter(|h| h.state.ejection.is_ejected()).count();
        assert_eq!(ejected, 2, "50 % of 4");
    }

    #[test]
    fn connect_failures_trigger_their_own_threshold() {
        let (c, hs) = (ClusterOutliers::new("c".into()), hosts(3));
        let cfg = OutlierConfig::from_pb(&pb::OutlierDetection {
            consecutive_connect_failures: 2,
            max_ejection_percent: 100,
            ..Default::default()
        });
        c.record(&cfg, &hs, &hs[2], false, Outcome::GatewayError);
        c.record(&cfg, &hs, &hs[2], false, Outcome::ConnectFailure);
        assert!(
            !hs[2].state.ejection.is_ejected(),
            "only consecutive connect failures count"
        );
        c.record(&cfg, &hs, &hs[2], false, Outcome::ConnectFailure);
        assert!(hs[2].state.ejection.is_ejected());
    }

    #[test]
    fn success_rate_ejects_the_host_far_below_its_peers() {
        let (c, hs) = (ClusterOutliers::new("c".into()), hosts(5));
        let cfg = OutlierConfig::from_pb(&pb::OutlierDetection {
            success_rate: true,
            success_rate_minimum_hosts: 3,
            success_rate_request_volume: 10,
            success_rate_stdev_factor: 1.0,
            interval_ms: 1,
            max_ejection_percent: 100,
            ..Default::default()
        });
        // The first record arms the evaluation clock.
        c.record(&cfg, &hs, &hs[0], false, Outcome::Success);
        for (i, h) in hs.iter().enumerate() {
            for n in 0..20 {
                let bad = i == 3 && n % 2 == 0;
                let o = if bad {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                };
                c.record(&cfg, &[], h, false, o);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        c.record(&cfg, &hs, &hs[0], false, Outcome::Success);
        let ejected: Vec<usize> = (0..5)
            .filter(|i| hs[*i].state.ejection.is_ejected())
            .collect();
        assert_eq!(ejected, vec![3]);
    }
}
