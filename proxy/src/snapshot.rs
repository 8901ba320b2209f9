//! The proxy's configuration at one version: an immutable `Snapshot` built
//! from the resources received so far, validated as a whole, and published
//! through an `ArcSwap` that every connection reads once, without locks.

use crate::cluster::Cluster;
use crate::policy::authz::Authz;
use crate::policy::rate_limit::RateLimits;
use crate::protocol::Protocol;
pub use crate::resource_cache::ResourceCache;
use crate::route::{RouteTable, Rule};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use xds_proto::type_url;
use xds_proto::v1::{self as pb, resource::Kind as RKind};

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

/// The mesh service behind an address intercepted traffic may be headed
/// for, and the rule its unrouted HTTP requests take.
#[derive(Debug)]
struct Intercepted {
    cluster: Arc<Cluster>,
    rule: Arc<Rule>,
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub version: String,
    pub app_ports: Vec<AppPort>,
    pub routes: RouteTable,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub tcp_listeners: Vec<TcpListenerSpec>,
    #[serde(skip)]
    by_address: HashMap<SocketAddr, Intercepted>,
    /// Who may call the local workload.
    #[serde(skip)]
    pub authz: Authz,
    /// How often it may be called.
    #[serde(skip)]
    pub rate_limits: RateLimits,
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
            authz: Authz::default(),
            rate_limits: RateLimits::default(),
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The cluster an intercepted connection to `addr` was meant for: a
    /// service VIP on the cluster's port, or one of its endpoints.
    pub fn cluster_for_address(&self, addr: SocketAddr) -> Option<&Arc<Cluster>> {
        self.by_address.get(&addr).map(|i| &i.cluster)
    }

    /// The rule for an intercepted HTTP request to `addr` that no route
    /// takes: to the mesh service there, if `addr` is one of its.
    pub fn intercepted_rule(&self, addr: SocketAddr) -> Option<&Rule> {
        self.by_address.get(&addr).map(|i| &*i.rule)
    }

    pub fn app_port(&self, port: u16) -> Option<&AppPort> {
        self.app_ports.iter().find(|p| p.port == port)
    }

    /// Builds and validates a snapshot from the full resource cache. An error
    /// becomes the NACK reason.
    pub fn build(version: &str, cache: &ResourceCache) -> Result<Snapshot, String> {
        Self::build_after(version, cache, None)
    }

    /// A snapshot of exactly `resources`, as a full-state push of them
    /// would build it (tests and benchmarks start from one).
    pub fn from_resources(version: &str, resources: Vec<pb::Resource>) -> Result<Snapshot, String> {
        let cache = ResourceCache::default().apply(pb::DiscoveryResponse {
            version: version.into(),
            nonce: "1".into(),
            resources,
            removed: vec![],
            full_state: true,
        })?;
        Self::build(version, &cache)
    }

    /// `build`, carrying the live state (host ejections and health, cluster
    /// load and retry budget) over from the snapshot it replaces.
    pub fn build_after(
        version: &str,
        cache: &ResourceCache,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        let clusters = crate::cluster::build_all(cache, prev.map(|p| &p.clusters))?;
        let (app_ports, tcp_listeners) = build_listeners(cache, &clusters)?;
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
            }) => Authz::from_pb(p)?,
            Some(_) => {
                return Err(
                    "authorization \"inbound\": resource body is not an AuthorizationPolicy".into(),
                )
            }
            None => Authz::default(),
        };
        let rate_limits = match cache.get(type_url::RATE_LIMIT_POLICY, "inbound") {
            Some(pb::Resource {
                kind: Some(RKind::RateLimitPolicy(p)),
                ..
            }) => RateLimits::from_pb(p, prev.map(|p| &p.rate_limits))?,
            Some(_) => {
                return Err(
                    "rate limits \"inbound\": resource body is not a RateLimitPolicy".into(),
                )
            }
            None => RateLimits::default(),
        };
        let by_address = index_by_address(&clusters)?;
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

/// The inbound listener's app ports and the explicit-mode TCP listeners.
fn build_listeners(
    cache: &ResourceCache,
    clusters: &BTreeMap<String, Arc<Cluster>>,
) -> Result<(Vec<AppPort>, Vec<TcpListenerSpec>), String> {
    let mut app_ports = Vec::new();
    let mut tcp_listeners: Vec<TcpListenerSpec> = Vec::new();
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
                        port: u16::try_from(p.port)
                            .map_err(|_| format!("listener \"{name}\": bad app port {}", p.port))?,
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
                    .ok_or_else(|| format!("listener \"{name}\": bad bind port {}", l.bind_port))?;
                if let Some(other) = tcp_listeners.iter().find(|t| t.bind_port == bind_port) {
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
    Ok((app_ports, tcp_listeners))
}

/// Service VIPs (on the cluster's port) and endpoint addresses → cluster,
/// for intercepted connections.
fn index_by_address(
    clusters: &BTreeMap<String, Arc<Cluster>>,
) -> Result<HashMap<SocketAddr, Intercepted>, String> {
    let mut by_address = HashMap::new();
    for (name, c) in clusters {
        if c.addresses.is_empty() && c.hosts.is_empty() {
            continue;
        }
        let rule = Arc::new(Rule::intercepted(name, clusters)?);
        let entry = || Intercepted {
            cluster: c.clone(),
            rule: rule.clone(),
        };
        for ip in &c.addresses {
            by_address.insert(SocketAddr::new(*ip, c.port), entry());
        }
        for h in &c.hosts {
            by_address.entry(h.addr).or_insert_with(entry);
        }
    }
    Ok(by_address)
}

/// The current snapshot, shared by listeners, the xDS client and admin.
pub type SnapshotHolder = Arc<ArcSwap<Snapshot>>;

pub fn new_holder() -> SnapshotHolder {
    Arc::new(ArcSwap::from_pointee(Snapshot::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

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
