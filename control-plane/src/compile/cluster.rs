//! Clusters and their endpoints: a destination (service port) with the
//! traffic policy of the Policy targeting it.

use super::{cluster_name, ms, proto, resource, ResourceSet, Sources};
use crate::config::kinds::{Destination, LbAlgorithm, PolicySpec, ServiceSpec};
use crate::config::resolve_service_ref;
use std::sync::Arc;
use xds_proto::type_url;
use xds_proto::units::parse_duration_ms as parse_ms;
use xds_proto::v1::{self as pb, resource::Kind as RKind};

/// Adds the cluster and endpoints for `dest` (as seen from a route in
/// `route_ns`) and returns the cluster name; None if it does not resolve
/// (validation prevents that for stored config).
pub(super) fn add_cluster(
    set: &mut ResourceSet,
    sources: &Sources<'_>,
    trust_domain: &str,
    route_ns: &str,
    dest: &Destination,
) -> Option<String> {
    let config = sources.config;
    let (name, ns) = resolve_service_ref(&dest.service, route_ns);
    let svc: &ServiceSpec = config.service(ns, name)?;
    let port = svc.ports.iter().find(|p| p.port == dest.port)?;
    let cname = cluster_name(name, ns, dest.port);
    let (cluster, endpoints) = match sources.shared.get(&cname) {
        Some(built) => built,
        None => {
            let built = build(sources, trust_domain, (name, ns), svc, port, dest.port);
            sources.shared.put(cname.clone(), built)
        }
    };
    set.insert((type_url::CLUSTER.to_string(), cname.clone()), cluster);
    set.insert((type_url::ENDPOINTS.to_string(), cname.clone()), endpoints);
    Some(cname)
}

/// The cluster of service `name` in `ns`, port `dest_port`, and its
/// endpoints.
fn build(
    sources: &Sources<'_>,
    trust_domain: &str,
    (name, ns): (&str, &str),
    svc: &ServiceSpec,
    port: &crate::config::kinds::ServicePort,
    dest_port: i64,
) -> (Arc<pb::Resource>, Arc<pb::Resource>) {
    let config = sources.config;
    let cname = cluster_name(name, ns, dest_port);
    let mut cluster = pb::Cluster {
        name: cname.clone(),
        service: name.to_string(),
        namespace: ns.to_string(),
        port: dest_port as u32,
        protocol: proto(port.protocol),
        addresses: svc.addresses.clone(),
        ..Default::default()
    };
    if let Some((_, policy)) = config.policy_for(ns, name, dest_port) {
        apply_cluster_policy(&mut cluster, policy);
    }
    let cluster = resource(
        type_url::CLUSTER,
        cname.clone(),
        RKind::Cluster(Box::new(cluster)),
    );
    // Endpoints behind a sidecar are reached over mTLS and must present the
    // service account's identity.
    let identity = xds_proto::spiffe::SpiffeId::new(trust_domain, ns, svc.service_account_or(name))
        .map(|id| id.to_string())
        .unwrap_or_default();
    let mut endpoints: Vec<pb::Endpoint> = svc
        .endpoints
        .iter()
        .map(|e| pb::Endpoint {
            address: e.address.clone(),
            port: e.port.unwrap_or(dest_port) as u32,
            identity: if e.sidecar.unwrap_or(true) {
                identity.clone()
            } else {
                String::new()
            },
            weight: e.weight.unwrap_or(1),
            labels: e.labels.clone().into_iter().collect(),
        })
        .collect();
    // Both sources merge; an address and port listed statically and also
    // registered is one endpoint (the static entry).
    let port_name = port.name.as_deref().unwrap_or("");
    let registered: Vec<pb::Endpoint> = sources
        .registry
        .instances(ns, name)
        .iter()
        .filter_map(|i| registered_endpoint(i, dest_port, port_name, &identity))
        .filter(|r| {
            !endpoints
                .iter()
                .any(|e| e.address == r.address && e.port == r.port)
        })
        .collect();
    endpoints.extend(registered);
    let endpoints = resource(
        type_url::ENDPOINTS,
        cname.clone(),
        RKind::Endpoints(pb::Endpoints {
            cluster: cname.clone(),
            endpoints,
        }),
    );
    (cluster, endpoints)
}

/// A registered instance as an endpoint of service port `port`: through its
/// sidecar (mTLS, the service's identity) or, without one, on its own port
/// of that number (or name). None while it is critical, or if it does not
/// serve the port.
fn registered_endpoint(
    i: &pb::Instance,
    port: i64,
    port_name: &str,
    identity: &str,
) -> Option<pb::Endpoint> {
    if i.health == pb::Health::Critical as i32 {
        return None;
    }
    let own_port = || {
        i.ports
            .iter()
            .find(|p| i64::from(p.port) == port)
            .or_else(|| {
                i.ports
                    .iter()
                    .find(|p| !port_name.is_empty() && p.name == port_name)
            })
            .map(|p| p.port)
    };
    let (port, identity) = match (i.sidecar_port, i.intercepted) {
        // Redirected into the sidecar on the pod: dial the port itself.
        (s, true) if s != 0 => (own_port()?, identity.to_string()),
        (0, _) => (own_port()?, String::new()),
        (s, _) => (s, identity.to_string()),
    };
    Some(pb::Endpoint {
        address: i.address.clone(),
        port,
        identity,
        weight: i.weight.max(1),
        labels: i.labels.clone(),
    })
}

/// The caller-side parts of a Policy, onto the cluster every caller gets.
fn apply_cluster_policy(c: &mut pb::Cluster, p: &PolicySpec) {
    if let Some(lb) = &p.load_balancer {
        let hash = lb.hash.clone().unwrap_or_default();
        c.lb = Some(Box::new(pb::LoadBalancer {
            algorithm: (match lb.algorithm {
                LbAlgorithm::RoundRobin => pb::LbAlgorithm::RoundRobin,
                LbAlgorithm::WeightedRoundRobin => pb::LbAlgorithm::WeightedRoundRobin,
                LbAlgorithm::Random => pb::LbAlgorithm::Random,
                LbAlgorithm::LeastRequest => pb::LbAlgorithm::LeastRequest,
                LbAlgorithm::PeakEwma => pb::LbAlgorithm::PeakEwma,
                LbAlgorithm::RingHash => pb::LbAlgorithm::RingHash,
                LbAlgorithm::Maglev => pb::LbAlgorithm::Maglev,
            }) as i32,
            hash_header: hash.header.unwrap_or_default(),
            hash_cookie: hash.cookie.unwrap_or_default(),
            hash_source_ip: hash.source_ip,
            slow_start_ms: ms(&lb.slow_start),
            panic_threshold_percent: lb.panic_threshold.unwrap_or(0),
        }));
    }
    c.connect_timeout_ms = ms(&p.connect_timeout);
    if let Some(b) = &p.circuit_breaker {
        c.limits = Some(Box::new(pb::CircuitBreaker {
            max_connections: b.max_connections.unwrap_or(0),
            max_pending_requests: b.max_pending_requests.unwrap_or(0),
            max_requests: b.max_requests.unwrap_or(0),
            max_retries: b.max_retries.unwrap_or(0),
        }));
    }
    if let Some(o) = &p.outlier_detection {
        let sr = o.success_rate.clone();
        c.outlier = Some(Box::new(pb::OutlierDetection {
            consecutive_5xx: o.consecutive5xx.unwrap_or(0),
            consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
            consecutive_connect_failures: o.consecutive_connect_failures.unwrap_or(0),
            success_rate: sr.is_some(),
            success_rate_minimum_hosts: sr.as_ref().and_then(|s| s.minimum_hosts).unwrap_or(3),
            success_rate_request_volume: sr.as_ref().and_then(|s| s.request_volume).unwrap_or(20),
            success_rate_stdev_factor: sr.as_ref().and_then(|s| s.stdev_factor).unwrap_or(1.9),
            interval_ms: ms(&o.interval),
            base_ejection_time_ms: ms(&o.base_ejection_time),
            max_ejection_time_ms: ms(&o.max_ejection_time),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(50),
        }));
    }
    if let Some(h) = &p.health_check {
        c.health_check = Some(Box::new(pb::HealthCheck {
            interval_ms: parse_ms(&h.interval).unwrap_or(1000),
            timeout_ms: parse_ms(&h.timeout).unwrap_or(1000),
            healthy_threshold: h.healthy_threshold.unwrap_or(1),
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(2),
            check: Some(if let Some(hh) = &h.http {
                pb::health_check::Check::Http(pb::HttpHealthCheck {
                    path: hh.path.clone(),
                    expected_status: hh.expected_status.unwrap_or(0) as u32,
                })
            } else if let Some(g) = &h.grpc {
                pb::health_check::Check::Grpc(pb::GrpcHealthCheck {
                    service: g.service.clone(),
                })
            } else {
                pb::health_check::Check::Tcp(true)
            }),
        }));
    }
    if let Some(b) = &p.retry_budget {
        c.retry_budget = Some(Box::new(pb::RetryBudget {
            percent: b.percent.unwrap_or(20.0),
            min_retries_per_second: b.min_retries_per_second.unwrap_or(10),
        }));
    }
}
