//! The global rate-limit service: leases every proxy of a service a share of
//! a mesh-wide limit. Proxies report the demand they saw for each global
//! limit every ~200 ms; shares are max-min fair over the live reporters
//! (nobody gets more than it asks while others are short), with any unused
//! rate spread evenly as headroom, so shares always sum to the limit.
//! Proxies enforce their share locally: a request never waits on this.
//!
//! With several replicas on etcd each replica hears only its own proxies:
//! every 250 ms it publishes their demand (`ratelimit/<replica>`) and reads
//! the others', and shares are computed over every replica's reporters, so
//! they still sum to the limit mesh-wide (`Peers`).

use crate::config::ConfigSet;
use crate::publish::Published;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use xds_proto::v1::{
    self as pb, rate_limit_quota_server::RateLimitQuota, LeaseRequest, LeaseResponse,
};

/// How often proxies renew.
pub const RENEW_EVERY: Duration = Duration::from_millis(200);
/// A proxy that stopped reporting no longer holds a share.
const STALE_AFTER: Duration = Duration::from_secs(1);

pub const LEASES_TOTAL: &str = "weft_control_rate_limit_leases_total";

#[derive(Default)]
struct Shares {
    /// node name → (demand in requests/s, last report).
    reporters: HashMap<String, (f64, Instant)>,
}

pub struct QuotaService {
    published: watch::Receiver<Arc<Published>>,
    table: Arc<Mutex<HashMap<String, Shares>>>,
    /// What the other replicas heard.
    peers: Arc<Mutex<PeerDemand>>,
}

/// Limit → (node, demand) heard by the other replicas.
type PeerDemand = HashMap<String, Vec<(String, f64)>>;

/// What one replica publishes: limit → node → demand, and when.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Demand {
    at_unix_ms: i64,
    limits: HashMap<String, HashMap<String, f64>>,
}

const PEERS_PREFIX: &str = "ratelimit/";
const PEERS_EVERY: Duration = Duration::from_millis(250);

impl QuotaService {
    pub fn new(published: watch::Receiver<Arc<Published>>) -> Self {
        QuotaService {
            published,
            table: Arc::default(),
            peers: Arc::default(),
        }
    }

    /// Shares demand with the other replicas on `etcd` (as `replica`).
    pub fn with_peers(self, etcd: crate::store::EtcdStore, replica: String) -> Self {
        let (table, peers) = (Arc::downgrade(&self.table), self.peers.clone());
        let published = self.published.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PEERS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut published_any = false;
            loop {
                tick.tick().await;
                let Some(table) = table.upgrade() else { return };
                let any_global = published
                    .borrow()
                    .config
                    .policies()
                    .any(|(_, p)| p.rate_limits.iter().any(|l| l.global));
                if !any_global && !published_any {
                    continue;
                }
                let now = Instant::now();
                let mine = Demand {
                    at_unix_ms: xds_proto::units::unix_ms(std::time::SystemTime::now()) as i64,
                    limits: table
                        .lock()
                        .map(|t| {
                            t.iter()
                                .map(|(limit, s)| {
                                    let fresh = s
                                        .reporters
                                        .iter()
                                        .filter(|(_, (_, seen))| {
                                            now.duration_since(*seen) < STALE_AFTER
                                        })
                                        .map(|(n, (d, _))| (n.clone(), *d))
                                        .collect();
                                    (limit.clone(), fresh)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                if let Ok(v) = serde_json::to_vec(&mine) {
                    published_any = etcd
                        .put(&format!("{PEERS_PREFIX}{replica}"), v, 0)
                        .await
                        .is_ok();
                }
                let Ok(all) = etcd.list(PEERS_PREFIX).await else {
                    continue;
                };
                let mut merged = PeerDemand::new();
                for (key, value) in all {
                    if key == format!("{PEERS_PREFIX}{replica}") {
                        continue;
                    }
                    let Ok(d) = serde_json::from_slice::<Demand>(&value) else {
                        continue;
                    };
                    // A replica that stopped publishing no longer counts.
                    if mine.at_unix_ms - d.at_unix_ms > STALE_AFTER.as_millis() as i64 * 2 {
                        continue;
                    }
                    for (limit, nodes) in d.limits {
                        merged.entry(limit).or_default().extend(nodes);
                    }
                }
                if let Ok(mut p) = peers.lock() {
                    *p = merged;
                }
            }
        });
        self
    }
}

/// The configured rate of global limit "<ns>/<policy>/<limit>", if it
/// exists and is global.
fn global_rate(config: &ConfigSet, name: &str) -> Option<f64> {
    let mut parts = name.splitn(3, '/');
    let (ns, policy, limit) = (parts.next()?, parts.next()?, parts.next()?);
    config
        .policies()
        .find(|(k, _)| k.namespace == ns && k.name == policy)?
        .1
        .rate_limits
        .iter()
        .find(|l| l.name == limit && l.global)
        .map(|l| l.rate)
}

/// Max-min fair shares of `limit` for `demands`, leftover spread evenly.
pub fn allocate(limit: f64, demands: &[f64]) -> Vec<f64> {
    let n = demands.len();
    let mut out = vec![0.0; n];
    if n == 0 {
        return out;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| demands[*a].total_cmp(&demands[*b]));
    let mut remaining = limit;
    for (k, i) in order.iter().enumerate() {
        let fair = remaining / (n - k) as f64;
        let give = demands[*i].max(0.0).min(fair);
        out[*i] = give;
        remaining -= give;
    }
    if remaining > 0.0 {
        for s in &mut out {
            *s += remaining / n as f64;
        }
    }
    out
}

#[tonic::async_trait]
impl RateLimitQuota for QuotaService {
    async fn lease(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let peer = crate::caller::peer_of(&request);
        let req = request.into_inner();
        let node = crate::caller::authenticate_node("rate_limit_quota", peer.as_ref(), req.node)?;
        let config = self.published.borrow().config.clone();
        let now = Instant::now();
        let mut leases = Vec::new();
        let mut table = self
            .table
            .lock()
            .map_err(|_| Status::internal("quota table poisoned"))?;
        // Limits no longer configured are forgotten.
        table.retain(|name, _| global_rate(&config, name).is_some());
        for d in &req.demands {
            // A proxy may only draw on limits of its own namespace.
            if !d.limit.starts_with(&format!("{}/", node.namespace)) {
                continue;
            }
            let Some(rate) = global_rate(&config, &d.limit) else {
                continue;
            };
            let shares = table.entry(d.limit.clone()).or_default();
            let demand = if d.requests_per_second.is_finite() {
                d.requests_per_second.max(0.0)
            } else {
                0.0
            };
            shares.reporters.insert(node.name.clone(), (demand, now));
            shares
                .reporters
                .retain(|_, (_, seen)| now.duration_since(*seen) < STALE_AFTER);
            let mut names: Vec<&String> = shares.reporters.keys().collect();
            let mut demands: Vec<f64> = names.iter().map(|n| shares.reporters[*n].0).collect();
            // Proxies of the other replicas (one that moved here counts here).
            let peers = self.peers.lock().ok();
            if let Some(remote) = peers.as_ref().and_then(|p| p.get(&d.limit)) {
                for (n, demand) in remote {
                    if !shares.reporters.contains_key(n) {
                        names.push(n);
                        demands.push(*demand);
                    }
                }
            }
            let alloc = allocate(rate, &demands);
            let mine = names
                .iter()
                .position(|n| **n == node.name)
                .map(|i| alloc[i])
                .unwrap_or(0.0);
            leases.push(pb::Lease {
                limit: d.limit.clone(),
                requests_per_second: mine,
                peers: names.len() as u32,
            });
        }
        drop(table);
        metrics::counter!(LEASES_TOTAL).increment(1);
        Ok(Response::new(LeaseResponse {
            leases,
            renew_after_ms: RENEW_EVERY.as_millis() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_max_min_fair_and_sum_to_the_limit() {
        let a = allocate(300.0, &[360.0, 120.0, 120.0]);
        assert_eq!(a, vec![100.0, 100.0, 100.0]);
        let a = allocate(300.0, &[20.0, 400.0, 400.0]);
        assert_eq!(a, vec![20.0, 140.0, 140.0]);
        let a = allocate(300.0, &[10.0, 20.0]);
        assert_eq!(a, vec![145.0, 155.0], "unused rate is spread as headroom");
        assert!((allocate(1000.0, &[1.0, 2.0, 3000.0]).iter().sum::<f64>() - 1000.0).abs() < 1e-9);
        assert!(allocate(10.0, &[]).is_empty());
    }
}
