//! The cluster model: a destination's endpoints (hosts with live state) and
//! the traffic policy callers apply to it, built from a `Cluster` and its
//! `Endpoints` resource. `ClusterRuntime` is the state that outlives one
//! snapshot (load, retry budget, ejections).

use crate::host::{authority_of, no_labels, Host, HostState};
use crate::lb::{Balancer, LbConfig};
use crate::policy::circuit_breaker::{ClusterLoad, Limit, Limits, RequestSlot, RetrySlot};
use crate::policy::outlier::{ClusterOutliers, Outcome, OutlierConfig};
use crate::policy::retry::RetryCounters;
use crate::policy::retry_budget::{BudgetConfig, RetryBudget};
use crate::policy::timeout::Deadline;
use crate::protocol::Protocol;
use crate::resource_cache::ResourceCache;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::type_url;
use xds_proto::v1::{self as pb, resource::Kind as RKind};

/// A destination: its endpoints (hosts with live state) and the traffic
/// policy callers apply to it.
#[derive(Debug, Serialize)]
pub struct Cluster {
    pub name: String,
    pub service: String,
    pub namespace: String,
    pub port: u16,
    pub protocol: Protocol,
    pub addresses: Vec<IpAddr>,
    /// The endpoints (shown as their addresses in the config dump).
    #[serde(rename = "endpoints", serialize_with = "host_addrs")]
    pub hosts: Vec<Host>,
    /// Some endpoint has a sidecar (an identity): reached over mTLS.
    #[serde(skip)]
    pub has_sidecars: bool,
    #[serde(skip)]
    pub lb: Balancer,
    #[serde(skip)]
    pub limits: Limits,
    #[serde(skip)]
    pub outlier: Option<OutlierConfig>,
    #[serde(skip)]
    pub health_check: Option<pb::HealthCheck>,
    #[serde(skip)]
    pub budget: BudgetConfig,
    #[serde(skip)]
    pub connect_timeout: Option<Duration>,
    /// State that outlives this snapshot (load, budget, ejections).
    #[serde(skip)]
    pub runtime: Arc<ClusterRuntime>,
}

fn host_addrs<S: serde::Serializer>(hosts: &[Host], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(hosts.iter().map(|h| h.addr))
}

/// The live state of a cluster, carried from snapshot to snapshot.
#[derive(Debug)]
pub struct ClusterRuntime {
    pub load: Arc<ClusterLoad>,
    pub budget: RetryBudget,
    pub outliers: ClusterOutliers,
    pub retries: RetryCounters,
    /// Hosts failing active health checks.
    pub unhealthy: AtomicU32,
}

impl ClusterRuntime {
    pub fn new(name: &str) -> Self {
        let name: Arc<str> = Arc::from(name);
        ClusterRuntime {
            load: Arc::new(ClusterLoad::new(name.clone())),
            budget: RetryBudget::new(name.clone()),
            outliers: ClusterOutliers::new(name.clone()),
            retries: RetryCounters::new(name),
            unhealthy: AtomicU32::new(0),
        }
    }
}

impl Cluster {
    /// Hosts out of rotation (ejected or unhealthy), for panic mode.
    pub fn unavailable(&self) -> usize {
        (self.runtime.outliers.ejected.load(Ordering::Relaxed)
            + self.runtime.unhealthy.load(Ordering::Relaxed)) as usize
    }

    /// A host by the cluster's balancer, for a connection with no request
    /// to hash (TCP).
    pub fn pick(&self) -> Option<SocketAddr> {
        self.pick_with_identity().map(|(a, _)| a)
    }

    /// `pick`, with the endpoint's identity (Some: mTLS).
    pub fn pick_with_identity(&self) -> Option<(SocketAddr, Option<Arc<str>>)> {
        let p = self.lb.pick(&self.hosts, None, None, self.unavailable())?;
        let h = &self.hosts[p.index];
        Some((h.addr, h.identity.clone()))
    }

    /// A request slot under the cluster's limits (waiting in the pending
    /// queue no longer than `deadline` leaves), and the request counted for
    /// the retry budget.
    pub async fn admit(&self, deadline: Option<Deadline>) -> Result<RequestSlot, Limit> {
        let slot = self
            .runtime
            .load
            .admit(&self.limits, deadline.map(|d| d.remaining()))
            .await?;
        self.runtime.budget.record_request();
        Ok(slot)
    }

    /// Takes a retry slot (`max_retries`) and budget for one more try;
    /// None when either is spent.
    pub fn admit_retry(&self) -> Option<RetrySlot> {
        let slot = self.runtime.load.try_retry(&self.limits).ok()?;
        self.runtime
            .budget
            .try_withdraw(&self.budget)
            .then_some(slot)
    }

    /// Records the outcome of a try at `host` for outlier detection.
    pub fn record_outcome(&self, host: &Host, probe: bool, outcome: Outcome) {
        if let Some(cfg) = &self.outlier {
            self.runtime
                .outliers
                .record(cfg, &self.hosts, host, probe, outcome);
        } else if probe {
            host.state.ejection.release_probe();
        }
    }
}

/// Every cluster of the cache, carrying live state over from the clusters
/// of the snapshot being replaced (`prev`).
pub fn build_all(
    cache: &ResourceCache,
    prev: Option<&BTreeMap<String, Arc<Cluster>>>,
) -> Result<BTreeMap<String, Arc<Cluster>>, String> {
    let mut clusters = BTreeMap::new();
    for (name, r) in cache.of(type_url::CLUSTER) {
        let Some(RKind::Cluster(c)) = &r.kind else {
            return Err(format!(
                "cluster \"{name}\": resource body is not a Cluster"
            ));
        };
        let prev = prev.and_then(|p| p.get(name));
        let cluster = build(name, c, cache, prev)?;
        clusters.insert(name.to_string(), Arc::new(cluster));
    }
    Ok(clusters)
}

/// One cluster from its resource and its endpoints.
fn build(
    name: &str,
    c: &pb::Cluster,
    cache: &ResourceCache,
    prev: Option<&Arc<Cluster>>,
) -> Result<Cluster, String> {
    let protocol = Protocol::from_pb(c.protocol)
        .ok_or_else(|| format!("cluster \"{name}\": unknown protocol {}", c.protocol))?;
    let port = u16::try_from(c.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("cluster \"{name}\": bad port {}", c.port))?;
    let addresses = c
        .addresses
        .iter()
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("cluster \"{name}\": bad address \"{a}\""))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hosts = match cache.get(type_url::ENDPOINTS, name) {
        Some(pb::Resource {
            kind: Some(RKind::Endpoints(e)),
            ..
        }) => build_hosts(name, e, prev)?,
        Some(_) => {
            return Err(format!(
                "endpoints \"{name}\": resource body is not Endpoints"
            ))
        }
        None => vec![],
    };
    let lb = LbConfig::from_pb(c.lb.as_deref()).map_err(|e| format!("cluster \"{name}\": {e}"))?;
    let runtime = prev
        .map(|p| p.runtime.clone())
        .unwrap_or_else(|| Arc::new(ClusterRuntime::new(name)));
    runtime.outliers.recount(&hosts, c.outlier.is_some());
    runtime.unhealthy.store(
        hosts.iter().filter(|h| !h.state.is_healthy()).count() as u32,
        Ordering::Relaxed,
    );
    Ok(Cluster {
        name: name.to_string(),
        service: c.service.clone(),
        namespace: c.namespace.clone(),
        port,
        protocol,
        addresses,
        lb: Balancer::new(lb, &hosts),
        has_sidecars: hosts.iter().any(|h| h.identity.is_some()),
        hosts,
        limits: Limits::from_pb(c.limits.as_deref()),
        outlier: c.outlier.as_deref().map(OutlierConfig::from_pb),
        health_check: c.health_check.as_deref().cloned(),
        budget: BudgetConfig::from_pb(c.retry_budget.as_deref()),
        connect_timeout: (c.connect_timeout_ms > 0)
            .then(|| Duration::from_millis(c.connect_timeout_ms)),
        runtime,
    })
}

/// The cluster's hosts, each keeping the live state it had in `prev`.
fn build_hosts(
    name: &str,
    e: &pb::Endpoints,
    prev: Option<&Arc<Cluster>>,
) -> Result<Vec<Host>, String> {
    let prev_states: HashMap<SocketAddr, &Arc<HostState>> = prev
        .map(|c| c.hosts.iter().map(|h| (h.addr, &h.state)).collect())
        .unwrap_or_default();
    // One allocation per distinct identity, not per endpoint.
    let mut last_identity: Option<Arc<str>> = None;
    let mut seen = HashSet::new();
    e.endpoints
        .iter()
        .map(|ep| {
            let ip = ep
                .address
                .parse::<IpAddr>()
                .map_err(|_| format!("endpoints \"{name}\": bad address \"{}\"", ep.address))?;
            let port = u16::try_from(ep.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("endpoints \"{name}\": bad port {}", ep.port))?;
            let addr = SocketAddr::new(ip, port);
            if !seen.insert(addr) {
                return Err(format!("endpoints \"{name}\": {addr} listed twice"));
            }
            let identity = match &last_identity {
                _ if ep.identity.is_empty() => None,
                Some(prev) if **prev == *ep.identity => Some(prev.clone()),
                _ => {
                    ep.identity
                        .parse::<weft_mesh_tls::SpiffeId>()
                        .map_err(|e| format!("endpoints \"{name}\": {e}"))?;
                    let id = Arc::<str>::from(ep.identity.as_str());
                    last_identity = Some(id.clone());
                    Some(id)
                }
            };
            let state = prev_states
                .get(&addr)
                .map(|s| (*s).clone())
                .unwrap_or_else(|| Arc::new(HostState::new()));
            Ok(Host {
                addr,
                authority: authority_of(&addr),
                identity,
                weight: ep.weight.max(1),
                labels: if ep.labels.is_empty() {
                    no_labels()
                } else {
                    Arc::new(
                        ep.labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                },
                state,
            })
        })
        .collect()
}
