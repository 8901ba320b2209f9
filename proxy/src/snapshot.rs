//! The proxy's configuration at one version: an immutable `Snapshot` built
//! from the resources received so far, validated as a whole, and published
//! through an `ArcSwap` that every connection reads once, without locks.

use crate::breaker::{ClusterLoad, Limits};
use crate::host::{Host, HostState};
use crate::lb::{Balancer, LbConfig};
use crate::outlier::{ClusterOutliers, Outcome, OutlierConfig};
use crate::retry::{BudgetConfig, RetryBudget, RetryCounters};
use crate::route::RouteTable;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::type_url;
use xds_proto::v1::{self as pb, resource::Kind as RKind};

/// What the app (or a destination) speaks on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Opaque,
}

impl Protocol {
    fn from_pb(v: i32) -> Option<Protocol> {
        Some(match pb::Protocol::try_from(v).ok()? {
            pb::Protocol::Http => Protocol::Http,
            pb::Protocol::Http2 => Protocol::Http2,
            pb::Protocol::Grpc => Protocol::Grpc,
            pb::Protocol::Tcp => Protocol::Tcp,
            pb::Protocol::Opaque => Protocol::Opaque,
            pb::Protocol::Unspecified => return None,
        })
    }

    /// HTTP/2 end to end (prior knowledge, no upgrade).
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Server-first or otherwise not to be sniffed.
    pub fn is_opaque(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Opaque)
    }
}

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

    /// Records the outcome of a try at `host` for outlier detection.
    pub fn record_outcome(&self, host: &Host, probe: bool, outcome: Outcome) {
        if let Some(cfg) = &self.outlier {
            self.runtime
                .outliers
                .record(cfg, &self.hosts, host, probe, outcome);
        } else if probe {
            host.state.outlier.release_probe();
        }
    }
}

pub fn authority_of(addr: &SocketAddr) -> http::uri::Authority {
    // A SocketAddr always formats as a valid authority.
    http::uri::Authority::try_from(addr.to_string())
        .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
}

/// An explicit-mode outbound TCP listener: local port → cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpListenerSpec {
    pub name: String,
    pub bind_port: u16,
    pub cluster: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub version: String,
    pub app_ports: Vec<AppPort>,
    pub routes: RouteTable,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub tcp_listeners: Vec<TcpListenerSpec>,
    #[serde(skip)]
    by_address: HashMap<SocketAddr, Arc<Cluster>>,
    /// Who may call the local workload.
    #[serde(skip)]
    pub authz: crate::authz::Authz,
    /// How often it may be called.
    #[serde(skip)]
    pub rate_limits: crate::ratelimit::RateLimits,
}

impl Snapshot {
    /// The snapshot before the first push: routes nothing.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: String::new(),
            app_ports: vec![],
            routes: RouteTable::default(),
            clusters: BTreeMap::new(),
            tcp_listeners: vec![],
            by_address: HashMap::new(),
            authz: crate::authz::Authz::default(),
            rate_limits: crate::ratelimit::RateLimits::default(),
        }
    }

    /// The identity the sidecar at `endpoint` must present, if it has one.
    pub fn endpoint_identity(&self, endpoint: SocketAddr) -> Option<&Arc<str>> {
        self.by_address
            .get(&endpoint)?
            .hosts
            .iter()
            .find(|h| h.addr == endpoint)?
            .identity
            .as_ref()
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The cluster an intercepted connection to `addr` was meant for: a
    /// service VIP on the cluster's port, or one of its endpoints.
    pub fn cluster_for_address(&self, addr: SocketAddr) -> Option<&Arc<Cluster>> {
        self.by_address.get(&addr)
    }

    pub fn app_port(&self, port: u16) -> Option<&AppPort> {
        self.app_ports.iter().find(|p| p.port == port)
    }

    /// Builds and validates a snapshot from the full resource cache. An error
    /// becomes the NACK reason.
    pub fn build(version: &str, cache: &ResourceCache) -> Result<Snapshot, String> {
        Self::build_after(version, cache, None)
    }

    /// `build`, carrying the live state (host ejections and health, cluster
    /// load and retry budget) over from the snapshot it replaces.
    pub fn build_after(
        version: &str,
        cache: &ResourceCache,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        let mut clusters = BTreeMap::new();
        for (name, r) in cache.of(type_url::CLUSTER) {
            let Some(RKind::Cluster(c)) = &r.kind else {
                return Err(format!(
                    "cluster \"{name}\": resource body is not a Cluster"
                ));
            };
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
            let prev_cluster = prev.and_then(|p| p.clusters.get(name));
            let prev_states: HashMap<SocketAddr, &Arc<HostState>> = prev_cluster
                .map(|c| c.hosts.iter().map(|h| (h.addr, &h.state)).collect())
                .unwrap_or_default();
            let hosts = match cache.get(type_url::ENDPOINTS, name) {
                Some(pb::Resource {
                    kind: Some(RKind::Endpoints(e)),
                    ..
                }) => {
                    // One allocation per distinct identity, not per endpoint.
                    let mut last_identity: Option<Arc<str>> = None;
                    let mut seen = std::collections::HashSet::new();
                    e.endpoints
                        .iter()
                        .map(|ep| {
                            let ip = ep.address.parse::<IpAddr>().map_err(|_| {
                                format!("endpoints \"{name}\": bad address \"{}\"", ep.address)
                            })?;
                            let port = u16::try_from(ep.port).ok().filter(|p| *p > 0).ok_or_else(
                                || format!("endpoints \"{name}\": bad port {}", ep.port),
                            )?;
                            let addr = SocketAddr::new(ip, port);
                            if !seen.insert(addr) {
                                return Err(format!("endpoints \"{name}\": {addr} listed twice"));
                            }
                            let identity = match &last_identity {
                                _ if ep.identity.is_empty() => None,
                                Some(prev) if **prev == *ep.identity => Some(prev.clone()),
                                _ => {
                                    ep.identity
                                        .parse::<weft_identity::SpiffeId>()
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
                                    crate::host::no_labels()
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
                        .collect::<Result<Vec<_>, String>>()?
                }
                Some(_) => {
                    return Err(format!(
                        "endpoints \"{name}\": resource body is not Endpoints"
                    ))
                }
                None => vec![],
            };
            let lb = LbConfig::from_pb(c.lb.as_deref())
                .map_err(|e| format!("cluster \"{name}\": {e}"))?;
            let runtime = prev_cluster
                .map(|p| p.runtime.clone())
                .unwrap_or_else(|| Arc::new(ClusterRuntime::new(name)));
            runtime.outliers.recount(&hosts, c.outlier.is_some());
            runtime.unhealthy.store(
                hosts.iter().filter(|h| !h.state.is_healthy()).count() as u32,
                Ordering::Relaxed,
            );
            clusters.insert(
                name.to_string(),
                Arc::new(Cluster {
                    name: name.to_string(),
                    service: c.service.clone(),
                    namespace: c.namespace.clone(),
                    port,
                    protocol,
                    addresses,
                    lb: Balancer::new(lb, &hosts),
                    hosts,
                    limits: Limits::from_pb(c.limits.as_deref()),
                    outlier: c.outlier.as_deref().map(OutlierConfig::from_pb),
                    health_check: c.health_check.as_deref().cloned(),
                    budget: BudgetConfig::from_pb(c.retry_budget.as_deref()),
                    connect_timeout: (c.connect_timeout_ms > 0)
                        .then(|| Duration::from_millis(c.connect_timeout_ms)),
                    runtime,
                }),
            );
        }

        let mut app_ports = Vec::new();
        let mut tcp_listeners = Vec::new();
        for (name, r) in cache.of(type_url::LISTENER) {
            let Some(RKind::Listener(l)) = &r.kind else {
                return Err(format!(
                    "listener \"{name}\": resource body is not a Listener"
                ));
            };
            match pb::Direction::try_from(l.direction) {
                Ok(pb::Direction::Inbound) => {
                    for p in &l.app_ports {
                        app_ports.push(AppPort {
                            name: p.name.clone(),
                            port: u16::try_from(p.port).map_err(|_| {
                                format!("listener \"{name}\": bad app port {}", p.port)
                            })?,
                            protocol: Protocol::from_pb(p.protocol).ok_or_else(|| {
                                format!("listener \"{name}\": unknown protocol {}", p.protocol)
                            })?,
                        });
                    }
                }
                Ok(pb::Direction::Outbound) => {
                    if !clusters.contains_key(&l.cluster) {
                        return Err(format!(
                            "listener \"{name}\": unknown cluster \"{}\"",
                            l.cluster
                        ));
                    }
                    let bind_port = u16::try_from(l.bind_port)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| {
                            format!("listener \"{name}\": bad bind port {}", l.bind_port)
                        })?;
                    if let Some(other) = tcp_listeners
                        .iter()
                        .find(|t: &&TcpListenerSpec| t.bind_port == bind_port)
                    {
                        return Err(format!(
                            "listener \"{name}\": port {bind_port} already used by \"{}\"",
                            other.name
                        ));
                    }
                    tcp_listeners.push(TcpListenerSpec {
                        name: name.to_string(),
                        bind_port,
                        cluster: l.cluster.clone(),
                    });
                }
                _ => {
                    return Err(format!(
                        "listener \"{name}\": unknown direction {}",
                        l.direction
                    ))
                }
            }
        }

        let routes = match cache.get(type_url::ROUTE_TABLE, "outbound") {
            Some(pb::Resource {
                kind: Some(RKind::RouteTable(t)),
                ..
            }) => RouteTable::build(t, &clusters)?,
            Some(_) => {
                return Err("route table \"outbound\": resource body is not a RouteTable".into())
            }
            None => RouteTable::default(),
        };

        let authz = match cache.get(type_url::AUTHORIZATION_POLICY, "inbound") {
            Some(pb::Resource {
                kind: Some(RKind::AuthorizationPolicy(p)),
                ..
            }) => crate::authz::Authz::from_pb(p)?,
            Some(_) => {
                return Err(
                    "authorization \"inbound\": resource body is not an AuthorizationPolicy".into(),
                )
            }
            None => crate::authz::Authz::default(),
        };
        let rate_limits = match cache.get(type_url::RATE_LIMIT_POLICY, "inbound") {
            Some(pb::Resource {
                kind: Some(RKind::RateLimitPolicy(p)),
                ..
            }) => crate::ratelimit::RateLimits::from_pb(p, prev.map(|p| &p.rate_limits))?,
            Some(_) => {
                return Err(
                    "rate limits \"inbound\": resource body is not a RateLimitPolicy".into(),
                )
            }
            None => crate::ratelimit::RateLimits::default(),
        };
        let mut by_address = HashMap::new();
        for c in clusters.values() {
            for ip in &c.addresses {
                by_address.insert(SocketAddr::new(*ip, c.port), c.clone());
            }
            for h in &c.hosts {
                by_address.entry(h.addr).or_insert_with(|| c.clone());
            }
        }

        Ok(Snapshot {
            version: version.to_string(),
            app_ports,
            routes,
            clusters,
            tcp_listeners,
            by_address,
            authz,
            rate_limits,
        })
    }
}

/// Every resource received on the stream, by type and name.
#[derive(Debug, Clone, Default)]
pub struct ResourceCache {
    resources: BTreeMap<(String, String), pb::Resource>,
}

impl ResourceCache {
    /// Applies a push: `full_state` replaces everything; otherwise changed
    /// resources are upserted and removed names dropped. Unknown types are
    /// refused so the control plane learns this proxy cannot use them.
    /// The push is consumed: its resources move into the new cache rather
    /// than being copied (a large push is never held twice).
    pub fn apply(&self, push: pb::DiscoveryResponse) -> Result<ResourceCache, String> {
        if let Some(r) = push
            .resources
            .iter()
            .find(|r| !type_url::SUPPORTED.contains(&r.type_url.as_str()))
        {
            return Err(format!(
                "resource \"{}\": unsupported type \"{}\"",
                r.name, r.type_url
            ));
        }
        let mut next = if push.full_state {
            ResourceCache::default()
        } else {
            self.clone()
        };
        for r in push.resources {
            next.resources
                .insert((r.type_url.clone(), r.name.clone()), r);
        }
        for r in push.removed {
            next.resources.remove(&(r.type_url, r.name));
        }
        Ok(next)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&pb::Resource> {
        self.resources
            .get(&(type_url.to_string(), name.to_string()))
    }

    pub fn of<'a>(
        &'a self,
        type_url: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a pb::Resource)> + 'a {
        self.resources
            .iter()
            .filter(move |((t, _), _)| t == type_url)
            .map(|((_, n), r)| (n.as_str(), r))
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// A snapshot of exactly `resources` (a full-state push), for tests.
#[cfg(test)]
pub(crate) fn test_snapshot(resources: Vec<pb::Resource>) -> Snapshot {
    let cache = ResourceCache::default()
        .apply(pb::DiscoveryResponse {
            version: "r1".into(),
            nonce: "1".into(),
            resources,
            removed: vec![],
            full_state: true,
        })
        .expect("supported resource types");
    Snapshot::build("r1", &cache).expect("valid snapshot")
}

/// The current snapshot, shared by listeners, the xDS client and admin.
pub type SnapshotHolder = Arc<ArcSwap<Snapshot>>;

pub fn new_holder() -> SnapshotHolder {
    Arc::new(ArcSwap::from_pointee(Snapshot::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, kind: RKind) -> pb::Resource {
        let type_url = match &kind {
            RKind::Listener(_) => type_url::LISTENER,
            RKind::RouteTable(_) => type_url::ROUTE_TABLE,
            RKind::Cluster(_) => type_url::CLUSTER,
            RKind::Endpoints(_) => type_url::ENDPOINTS,
            RKind::TrustBundle(_) => type_url::TRUST_BUNDLE,
            RKind::CertificateRotation(_) => type_url::CERTIFICATE_ROTATION,
            RKind::AuthorizationPolicy(_) => type_url::AUTHORIZATION_POLICY,
            RKind::RateLimitPolicy(_) => type_url::RATE_LIMIT_POLICY,
        };
        pb::Resource {
            name: name.into(),
            type_url: type_url.into(),
            kind: Some(kind),
        }
    }

    fn cluster(name: &str) -> pb::Resource {
        res(
            name,
            RKind::Cluster(Box::new(pb::Cluster {
                name: name.into(),
                service: "s".into(),
                namespace: "n".into(),
                port: 80,
                protocol: pb::Protocol::Http as i32,
                addresses: vec!["10.9.9.9".into()],
                ..Default::default()
            })),
        )
    }

    fn push(
        full: bool,
        resources: Vec<pb::Resource>,
        removed: Vec<(&str, &str)>,
    ) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version: "r1".into(),
            nonce: "1".into(),
            resources,
            removed: removed
                .into_iter()
                .map(|(t, n)| pb::ResourceRef {
                    type_url: t.into(),
                    name: n.into(),
                })
                .collect(),
            full_state: full,
        }
    }

    #[test]
    fn incremental_push_upserts_and_removes() {
        let cache = ResourceCache::default()
            .apply(push(true, vec![cluster("a"), cluster("b")], vec![]))
            .unwrap();
        let cache = cache
            .apply(push(
                false,
                vec![cluster("c")],
                vec![(type_url::CLUSTER, "a")],
            ))
            .unwrap();
        let names: Vec<&str> = cache.of(type_url::CLUSTER).map(|(n, _)| n).collect();
        assert_eq!(names, vec!["b", "c"]);
        let cache = cache.apply(push(true, vec![cluster("z")], vec![])).unwrap();
        assert_eq!(cache.len(), 1, "full state replaces everything");
    }

    #[test]
    fn listener_to_unknown_cluster_is_rejected() {
        let l = res(
            "tcp/x",
            RKind::Listener(pb::Listener {
                name: "tcp/x".into(),
                direction: pb::Direction::Outbound as i32,
                protocol: pb::Protocol::Tcp as i32,
                bind_port: 9000,
                cluster: "nope".into(),
                app_ports: vec![],
            }),
        );
        let cache = ResourceCache::default()
            .apply(push(true, vec![l], vec![]))
            .unwrap();
        let err = Snapshot::build("r1", &cache).unwrap_err();
        assert!(err.contains("unknown cluster \"nope\""), "{err}");
    }

    #[test]
    fn bad_endpoint_address_is_rejected() {
        let e = res(
            "a",
            RKind::Endpoints(pb::Endpoints {
                cluster: "a".into(),
                endpoints: vec![pb::Endpoint {
                    address: "not-an-ip".into(),
                    port: 1,
                    ..Default::default()
                }],
            }),
        );
        let cache = ResourceCache::default()
            .apply(push(true, vec![cluster("a"), e], vec![]))
            .unwrap();
        assert!(Snapshot::build("r1", &cache)
            .unwrap_err()
            .contains("bad address"));
    }

    #[test]
    fn live_host_state_survives_a_config_push() {
        let e = res(
            "a",
            RKind::Endpoints(pb::Endpoints {
                cluster: "a".into(),
                endpoints: vec![pb::Endpoint {
                    address: "10.0.0.1".into(),
                    port: 80,
                    ..Default::default()
                }],
            }),
        );
        let cache = ResourceCache::default()
            .apply(push(true, vec![cluster("a"), e], vec![]))
            .unwrap();
        let first = Snapshot::build("r1", &cache).unwrap();
        let h = &first.cluster("a").unwrap().hosts[0];
        h.state.healthy.store(false, Ordering::Relaxed);
        let second = Snapshot::build_after("r2", &cache, Some(&first)).unwrap();
        let c = second.cluster("a").unwrap();
        assert!(Arc::ptr_eq(&c.hosts[0].state, &h.state));
        assert!(Arc::ptr_eq(
            &c.runtime,
            &first.cluster("a").unwrap().runtime
        ));
        assert_eq!(c.unavailable(), 1, "the unhealthy host is still counted");
        let fresh = Snapshot::build("r3", &cache).unwrap();
        assert!(fresh.cluster("a").unwrap().hosts[0].state.is_healthy());
    }

    #[test]
    fn unsupported_type_is_refused() {
        let mut r = cluster("a");
        r.type_url = "weft.v1.FromTheFuture".into();
        assert!(ResourceCache::default()
            .apply(push(true, vec![r], vec![]))
            .is_err());
    }

    #[test]
    fn round_robin_cycles_and_vip_lookup_finds_cluster() {
        let e = res(
            "a",
            RKind::Endpoints(pb::Endpoints {
                cluster: "a".into(),
                endpoints: vec![
                    pb::Endpoint {
                        address: "10.0.0.1".into(),
                        port: 80,
                        ..Default::default()
                    },
                    pb::Endpoint {
                        address: "10.0.0.2".into(),
                        port: 80,
                        ..Default::default()
                    },
                ],
            }),
        );
        let cache = ResourceCache::default()
            .apply(push(true, vec![cluster("a"), e], vec![]))
            .unwrap();
        let snap = Snapshot::build("r1", &cache).unwrap();
        let c = snap.cluster("a").unwrap();
        let picks: Vec<SocketAddr> = (0..4).map(|_| c.pick().unwrap()).collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1]);
        assert!(snap
            .cluster_for_address("10.9.9.9:80".parse().unwrap())
            .is_some());
        assert!(snap
            .cluster_for_address("10.0.0.2:80".parse().unwrap())
            .is_some());
        assert!(snap
            .cluster_for_address("10.0.0.3:80".parse().unwrap())
            .is_none());
    }
}
