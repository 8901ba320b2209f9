//! Config → the resources one proxy needs (scoping). A proxy for service S in
//! namespace N gets: an inbound listener describing S's ports, the HTTP routes
//! and TCP listeners of every Route whose sources include S, and the clusters
//! and endpoints those routes reach. Nothing else: sidecar memory must not
//! grow with the size of the mesh.

use crate::config::kinds::{
    AuthzAction, Destination, HeaderOps, HttpRule, LbAlgorithm, PolicySpec, Protocol, RouteSpec,
    ServiceSpec, StringMatch,
};
use crate::config::validate::grpc_code;
use crate::config::{resolve_service_ref, ConfigSet, ObjectKey};
use crate::trust::MeshTrust;
use std::collections::BTreeMap;
use xds_proto::type_url;
use xds_proto::units::parse_duration_ms as parse_ms;
use xds_proto::v1::{self as pb, resource::Kind as RKind, route_rule::Path};

/// Resources keyed by (type URL, name), ordered for stable output.
pub type ResourceSet = BTreeMap<(String, String), pb::Resource>;

pub const INBOUND_LISTENER: &str = "inbound";
pub const OUTBOUND_ROUTES: &str = "outbound";

/// Names of the identity resources every proxy gets.
pub const TRUST_BUNDLE: &str = "trust-bundle";
pub const ROTATION: &str = "rotation";
pub const AUTHORIZATION: &str = "inbound";
pub const RATE_LIMITS: &str = "inbound";
/// The namespace whose default Authorization applies mesh-wide.
pub const MESH_NAMESPACE: &str = "weft-system";

/// The authorization policy for the workload behind `node`: the rules of
/// every Authorization targeting its service, and the default of its
/// namespace, else of the mesh, else allow.
fn authorization_for(config: &ConfigSet, node: &pb::Node) -> pb::AuthorizationPolicy {
    let mut policy = pb::AuthorizationPolicy::default();
    let mut ns_default = None;
    let mut mesh_default = None;
    for (key, a) in config.authorizations() {
        let name = format!("{}/{}", key.namespace, key.name);
        match &a.target {
            None => {
                let deny = a.default == Some(AuthzAction::Deny);
                if key.namespace == node.namespace {
                    ns_default = Some((deny, name));
                } else if key.namespace == MESH_NAMESPACE {
                    mesh_default = Some((deny, name));
                }
            }
            Some(t) => {
                let (svc, ns) = resolve_service_ref(&t.service, &key.namespace);
                if svc != node.service || ns != node.namespace {
                    continue;
                }
                for r in &a.rules {
                    let (exact, prefix): (Vec<_>, Vec<_>) =
                        r.to.paths.iter().partition(|p| p.exact.is_some());
                    policy.rules.push(pb::AuthorizationRule {
                        policy: name.clone(),
                        deny: r.action == AuthzAction::Deny,
                        port: t.port.unwrap_or(0) as u32,
                        identities: r.from.identities.clone(),
                        namespaces: r.from.namespaces.clone(),
                        trust_domains: r.from.trust_domains.clone(),
                        path_exact: exact.into_iter().filter_map(|p| p.exact.clone()).collect(),
                        path_prefix: prefix
                            .into_iter()
                            .filter_map(|p| p.prefix.clone())
                            .collect(),
                        methods: r.to.methods.clone(),
                    });
                }
            }
        }
    }
    if let Some((deny, name)) = ns_default.or(mesh_default) {
        policy.default_deny = deny;
        policy.default_policy = name;
    }
    policy
}

pub fn cluster_name(service: &str, namespace: &str, port: i64) -> String {
    format!("{service}.{namespace}:{port}")
}

fn proto(p: Protocol) -> i32 {
    (match p {
        Protocol::Http => pb::Protocol::Http,
        Protocol::Http2 => pb::Protocol::Http2,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Opaque => pb::Protocol::Opaque,
    }) as i32
}

fn route_applies(key: &ObjectKey, route: &RouteSpec, node: &pb::Node) -> bool {
    if route.sources.is_empty() {
        return key.namespace == node.namespace;
    }
    route.sources.iter().any(|s| {
        let (name, ns) = resolve_service_ref(s, &key.namespace);
        name == node.service && ns == node.namespace
    })
}

fn insert(set: &mut ResourceSet, type_url: &str, name: String, kind: RKind) {
    set.insert(
        (type_url.to_string(), name.clone()),
        pb::Resource {
            name,
            type_url: type_url.to_string(),
            kind: Some(kind),
        },
    );
}

/// Adds the cluster and endpoints for `dest` (as seen from a route in
/// `route_ns`) and returns the cluster name; None if it does not resolve
/// (validation prevents that for stored config).
fn add_cluster(
    set: &mut ResourceSet,
    config: &ConfigSet,
    trust_domain: &str,
    route_ns: &str,
    dest: &Destination,
) -> Option<String> {
    let (name, ns) = resolve_service_ref(&dest.service, route_ns);
    let svc: &ServiceSpec = config.service(ns, name)?;
    let port = svc.ports.iter().find(|p| p.port == dest.port)?;
    let cname = cluster_name(name, ns, dest.port);
    let mut cluster = pb::Cluster {
        name: cname.clone(),
        service: name.to_string(),
        namespace: ns.to_string(),
        port: dest.port as u32,
        protocol: proto(port.protocol),
        addresses: svc.addresses.clone(),
        ..Default::default()
    };
    if let Some((_, policy)) = config.policy_for(ns, name, dest.port) {
        apply_cluster_policy(&mut cluster, policy);
    }
    insert(
        set,
        type_url::CLUSTER,
        cname.clone(),
        RKind::Cluster(Box::new(cluster)),
    );
    // Endpoints behind a sidecar are reached over mTLS and must present the
    // service account's identity.
    let identity = xds_proto::spiffe::SpiffeId::new(trust_domain, ns, svc.service_account_or(name))
        .map(|id| id.to_string())
        .unwrap_or_default();
    let endpoints = svc
        .endpoints
        .iter()
        .map(|e| pb::Endpoint {
            address: e.address.clone(),
            port: e.port.unwrap_or(dest.port) as u32,
            identity: if e.sidecar.unwrap_or(true) {
                identity.clone()
            } else {
                String::new()
            },
            weight: e.weight.unwrap_or(1),
            labels: e.labels.clone().into_iter().collect(),
        })
        .collect();
    insert(
        set,
        type_url::ENDPOINTS,
        cname.clone(),
        RKind::Endpoints(pb::Endpoints {
            cluster: cname.clone(),
            endpoints,
        }),
    );
    Some(cname)
}

fn ms(v: &Option<String>) -> u64 {
    v.as_deref().and_then(|v| parse_ms(v).ok()).unwrap_or(0)
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

fn string_match(name: &str, m: &StringMatch) -> pb::StringMatch {
    use pb::string_match::Match;
    let m = match m {
        StringMatch::Exact(v) => Match::Exact(v.clone()),
        StringMatch::Rule(r) => match (&r.exact, &r.regex) {
            (Some(v), _) => Match::Exact(v.clone()),
            (None, Some(re)) => Match::Regex(re.clone()),
            (None, None) => Match::Present(true),
        },
    };
    pb::StringMatch {
        name: name.to_string(),
        r#match: Some(m),
    }
}

fn header_ops(ops: &Option<HeaderOps>) -> Option<pb::HeaderOps> {
    let ops = ops.as_ref()?;
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(name, value)| pb::HeaderValue {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    };
    Some(pb::HeaderOps {
        add: pairs(&ops.add),
        set: pairs(&ops.set),
        remove: ops.remove.clone(),
    })
}

/// Conditions retried when a route says nothing: the request provably never
/// reached the application, so even a POST is safe to send again.
const DEFAULT_RETRY_ON: &[&str] = &["connect-failure", "refused-stream"];

fn retry_policy(rule: &HttpRule) -> pb::RetryPolicy {
    let Some(r) = &rule.retries else {
        return pb::RetryPolicy {
            attempts: 2,
            on: DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            non_idempotent: false,
            max_body_bytes: 64 * 1024,
            ..Default::default()
        };
    };
    let mut on = r.on.clone();
    if on.is_empty() {
        on = vec![
            "connect-failure".into(),
            "refused-stream".into(),
            "gateway-error".into(),
        ];
    }
    if !r.status_codes.is_empty() && !on.iter().any(|c| c == "retriable-status-codes") {
        on.push("retriable-status-codes".into());
    }
    if !r.grpc_codes.is_empty() && !on.iter().any(|c| c == "retriable-grpc-codes") {
        on.push("retriable-grpc-codes".into());
    }
    let (base, max) = r
        .backoff
        .as_ref()
        .map(|b| {
            (
                parse_ms(&b.base).unwrap_or(25),
                parse_ms(&b.max).unwrap_or(250),
            )
        })
        .unwrap_or((25, 250));
    pb::RetryPolicy {
        attempts: r.attempts,
        per_try_timeout_ms: ms(&r.per_try_timeout),
        on,
        status_codes: r.status_codes.iter().map(|c| *c as u32).collect(),
        grpc_codes: r.grpc_codes.iter().filter_map(|c| grpc_code(c)).collect(),
        backoff_base_ms: base,
        backoff_max_ms: max,
        non_idempotent: r.retry_non_idempotent,
        max_body_bytes: r.max_body_bytes.unwrap_or(64 * 1024),
    }
}

fn backend(cluster: String, subset: &BTreeMap<String, String>, weight: u32) -> pb::Backend {
    let name = if subset.is_empty() {
        cluster.clone()
    } else {
        let labels: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{cluster}/{}", labels.join(","))
    };
    pb::Backend {
        cluster,
        subset: subset.clone().into_iter().collect(),
        weight,
        name,
    }
}

/// One HTTP rule with the clusters it reaches added to `set`; None if a
/// destination does not resolve.
fn compile_rule(
    set: &mut ResourceSet,
    config: &ConfigSet,
    trust_domain: &str,
    route_ns: &str,
    rule: &HttpRule,
) -> Option<pb::RouteRule> {
    let mut backends = Vec::new();
    if let Some(d) = &rule.destination {
        let c = add_cluster(set, config, trust_domain, route_ns, d)?;
        backends.push(backend(c, &d.subset, 1));
    }
    for b in &rule.backends {
        let d = Destination {
            service: b.service.clone(),
            port: b.port,
            subset: b.subset.clone(),
        };
        let c = add_cluster(set, config, trust_domain, route_ns, &d)?;
        backends.push(backend(c, &b.subset, b.weight));
    }
    let mirror = match &rule.mirror {
        Some(m) => {
            let d = Destination {
                service: m.service.clone(),
                port: m.port,
                subset: m.subset.clone(),
            };
            let c = add_cluster(set, config, trust_domain, route_ns, &d)?;
            Some(Box::new(pb::Mirror {
                backend: Some(backend(c, &m.subset, 1)),
                percent: m.percent,
            }))
        }
        None => None,
    };
    let m = rule.matches.clone().unwrap_or_default();
    let path = m.path.and_then(|p| match (p.prefix, p.exact, p.regex) {
        (Some(v), _, _) => Some(Path::Prefix(v)),
        (None, Some(v), _) => Some(Path::Exact(v)),
        (None, None, Some(v)) => Some(Path::Regex(v)),
        _ => None,
    });
    Some(pb::RouteRule {
        path,
        method: m.method.unwrap_or_default(),
        headers: m.headers.iter().map(|(n, c)| string_match(n, c)).collect(),
        query: m.query.iter().map(|(n, c)| string_match(n, c)).collect(),
        backends,
        mirror,
        request_headers: header_ops(&rule.request_headers).map(Box::new),
        response_headers: header_ops(&rule.response_headers).map(Box::new),
        timeout_ms: ms(&rule.timeout),
        idle_timeout_ms: ms(&rule.idle_timeout),
        retry: Some(Box::new(retry_policy(rule))),
    })
}

/// The rate limits the sidecar of `node` enforces: per app port, those of
/// the Policy in force for it.
fn rate_limits_for(config: &ConfigSet, node: &pb::Node) -> pb::RateLimitPolicy {
    let mut out = pb::RateLimitPolicy::default();
    let Some(svc) = config.service(&node.namespace, &node.service) else {
        return out;
    };
    // A service-wide Policy's limits apply to every port (port 0: the
    // sidecar's app port need not equal the service port) unless a port has
    // its own Policy; then each port gets the limits of its own.
    let per_port = svc
        .ports
        .iter()
        .any(|p| matches!(config.policy_for(&node.namespace, &node.service, p.port), Some((_, pol)) if pol.target.port.is_some()));
    let ports: Vec<(u32, i64)> = if per_port {
        svc.ports.iter().map(|p| (p.port as u32, p.port)).collect()
    } else {
        svc.ports
            .first()
            .map(|p| vec![(0, p.port)])
            .unwrap_or_default()
    };
    for (port, service_port) in ports {
        let Some((key, policy)) = config.policy_for(&node.namespace, &node.service, service_port)
        else {
            continue;
        };
        for l in &policy.rate_limits {
            let m = l.matches.clone().unwrap_or_default();
            let path = m.path.unwrap_or_default();
            let k = l.key.clone().unwrap_or_default();
            let key_kind = if k.identity {
                pb::RateLimitKey::Identity
            } else if k.header.is_some() {
                pb::RateLimitKey::Header
            } else if k.source_ip {
                pb::RateLimitKey::SourceIp
            } else {
                pb::RateLimitKey::None
            };
            out.limits.push(pb::RateLimit {
                name: format!("{}/{}/{}", key.namespace, key.name, l.name),
                port,
                path_prefix: path.prefix.unwrap_or_default(),
                path_exact: path.exact.unwrap_or_default(),
                method: m.method.unwrap_or_default(),
                key: key_kind as i32,
                header: k.header.unwrap_or_default(),
                requests_per_second: l.rate,
                burst: l.burst.unwrap_or_else(|| l.rate.ceil().max(1.0) as u32),
                global: l.global,
            });
        }
    }
    out
}

/// Compiles the resources for one proxy.
pub fn compile_for(config: &ConfigSet, node: &pb::Node, trust: &MeshTrust) -> ResourceSet {
    let trust_domain = trust.trust_domain.as_str();
    let mut set = ResourceSet::new();
    insert(
        &mut set,
        type_url::TRUST_BUNDLE,
        TRUST_BUNDLE.to_string(),
        RKind::TrustBundle(pb::TrustBundle {
            trust_domain: trust.trust_domain.clone(),
            roots_pem: trust.roots_pem.clone(),
        }),
    );
    insert(
        &mut set,
        type_url::AUTHORIZATION_POLICY,
        AUTHORIZATION.to_string(),
        RKind::AuthorizationPolicy(authorization_for(config, node)),
    );
    insert(
        &mut set,
        type_url::RATE_LIMIT_POLICY,
        RATE_LIMITS.to_string(),
        RKind::RateLimitPolicy(rate_limits_for(config, node)),
    );
    if trust.rotate_before_unix > 0 {
        insert(
            &mut set,
            type_url::CERTIFICATE_ROTATION,
            ROTATION.to_string(),
            RKind::CertificateRotation(pb::CertificateRotation {
                issued_before_unix: trust.rotate_before_unix,
                reason: "CA rotation".into(),
            }),
        );
    }
    let app_ports = config
        .service(&node.namespace, &node.service)
        .map(|s| {
            s.ports
                .iter()
                .map(|p| pb::AppPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port as u32,
                    protocol: proto(p.protocol),
                })
                .collect()
        })
        .unwrap_or_default();
    insert(
        &mut set,
        type_url::LISTENER,
        INBOUND_LISTENER.to_string(),
        RKind::Listener(pb::Listener {
            name: INBOUND_LISTENER.to_string(),
            direction: pb::Direction::Inbound as i32,
            app_ports,
            ..Default::default()
        }),
    );

    let mut vhosts = Vec::new();
    for (key, route) in config.routes() {
        if !route_applies(key, route, node) {
            continue;
        }
        let route_name = format!("{}/{}", key.namespace, key.name);
        if let Some(tcp) = &route.tcp {
            let Some(cluster) = add_cluster(
                &mut set,
                config,
                trust_domain,
                &key.namespace,
                &tcp.destination,
            ) else {
                continue;
            };
            let name = format!("tcp/{route_name}");
            let protocol = set
                .get(&(type_url::CLUSTER.to_string(), cluster.clone()))
                .and_then(|r| match &r.kind {
                    Some(RKind::Cluster(c)) => Some(c.protocol),
                    _ => None,
                })
                .unwrap_or(pb::Protocol::Tcp as i32);
            insert(
                &mut set,
                type_url::LISTENER,
                name.clone(),
                RKind::Listener(pb::Listener {
                    name,
                    direction: pb::Direction::Outbound as i32,
                    protocol,
                    bind_port: tcp.bind_port as u32,
                    cluster,
                    app_ports: vec![],
                }),
            );
        }
        let mut rules = Vec::new();
        for rule in &route.http {
            if let Some(r) = compile_rule(&mut set, config, trust_domain, &key.namespace, rule) {
                rules.push(r);
            }
        }
        if !rules.is_empty() {
            vhosts.push(pb::VirtualHost {
                name: route_name,
                hosts: route.hosts.clone(),
                rules,
            });
        }
    }
    insert(
        &mut set,
        type_url::ROUTE_TABLE,
        OUTBOUND_ROUTES.to_string(),
        RKind::RouteTable(pb::RouteTable {
            name: OUTBOUND_ROUTES.to_string(),
            virtual_hosts: vhosts,
        }),
    );
    set
}

/// What changed between two resource sets: (changed or new, removed).
pub fn diff(old: &ResourceSet, new: &ResourceSet) -> (Vec<pb::Resource>, Vec<pb::ResourceRef>) {
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|(t, n)| pb::ResourceRef {
            type_url: t.clone(),
            name: n.clone(),
        })
        .collect();
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_documents;

    fn td() -> MeshTrust {
        MeshTrust {
            trust_domain: "cluster.local".into(),
            roots_pem: vec![],
            rotate_before_unix: 0,
            epoch: 1,
        }
    }

    fn config(yaml: &str) -> ConfigSet {
        let mut set = ConfigSet::default();
        for l in parse_documents("t", yaml).unwrap() {
            set.objects.insert(l.object.key(), l.object);
        }
        set
    }

    const MESH: &str = r#"
apiVersion: weft.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 8080, protocol: http}], endpoints: [{address: 10.0.0.1}]}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {ports: [{port: 9090, protocol: grpc}], endpoints: [{address: 10.0.0.2}, {address: 10.0.0.3, port: 15006}]}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: billing, namespace: shop}
spec: {ports: [{port: 7070, protocol: http}], endpoints: [{address: 10.0.0.4}]}
---
apiVersion: weft.dev/v1
kind: Route
metadata: {name: cart, namespace: shop}
spec:
  sources: [web]
  hosts: [cart]
  http: [{destination: {service: cart, port: 9090}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {name: billing, namespace: shop}
spec:
  sources: [cart]
  hosts: [billing]
  http: [{destination: {service: billing, port: 7070}}]
"#;

    fn node(service: &str) -> pb::Node {
        pb::Node {
            name: format!("{service}-0"),
            namespace: "shop".into(),
            service: service.into(),
            ..Default::default()
        }
    }

    #[test]
    fn proxy_receives_only_the_clusters_its_routes_reach() {
        let set = compile_for(&config(MESH), &node("web"), &td());
        let clusters: Vec<&str> = set
            .keys()
            .filter(|(t, _)| t == type_url::CLUSTER)
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(clusters, vec!["cart.shop:9090"]);
        let eps = &set[&(
            type_url::ENDPOINTS.to_string(),
            "cart.shop:9090".to_string(),
        )];
        let Some(RKind::Endpoints(e)) = &eps.kind else {
            panic!()
        };
        assert_eq!(
            e.endpoints
                .iter()
                .map(|e| format!("{}:{}", e.address, e.port))
                .collect::<Vec<_>>(),
            vec!["10.0.0.2:9090", "10.0.0.3:15006"]
        );
    }

    #[test]
    fn inbound_listener_describes_the_own_service_ports() {
        let set = compile_for(&config(MESH), &node("cart"), &td());
        let l = &set[&(type_url::LISTENER.to_string(), INBOUND_LISTENER.to_string())];
        let Some(RKind::Listener(l)) = &l.kind else {
            panic!()
        };
        assert_eq!(l.app_ports.len(), 1);
        assert_eq!(l.app_ports[0].protocol, pb::Protocol::Grpc as i32);
    }

    #[test]
    fn diff_reports_changes_and_removals_only() {
        let cfg = config(MESH);
        let a = compile_for(&cfg, &node("web"), &td());
        let mut cfg2 = cfg.clone();
        cfg2.objects
            .retain(|k, _| k.name != "cart" || k.kind != crate::config::Kind::Route);
        let b = compile_for(&cfg2, &node("web"), &td());
        let (changed, removed) = diff(&a, &b);
        assert_eq!(changed.len(), 1, "only the route table changed");
        assert_eq!(removed.len(), 2, "cluster and endpoints of cart removed");
        let (changed, removed) = diff(&b, &b);
        assert!(changed.is_empty() && removed.is_empty());
    }

    #[test]
    fn a_proxy_gets_the_rules_targeting_its_service_and_its_namespace_default() {
        let cfg = config(&format!(
            "{MESH}---\napiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: cart-policy, namespace: shop}}\nspec:\n  target: {{service: cart}}\n  rules:\n  - action: allow\n    from: {{namespaces: [shop]}}\n    to: {{paths: [{{prefix: /api}}, {{exact: /health}}], methods: [GET]}}\n---\napiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: default, namespace: shop}}\nspec: {{default: deny}}\n---\napiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: mesh, namespace: weft-system}}\nspec: {{default: allow}}\n"
        ));
        let policy = |service: &str| {
            let set = compile_for(&cfg, &node(service), &td());
            match &set[&(
                type_url::AUTHORIZATION_POLICY.to_string(),
                AUTHORIZATION.to_string(),
            )]
                .kind
            {
                Some(RKind::AuthorizationPolicy(p)) => p.clone(),
                other => panic!("{other:?}"),
            }
        };
        let cart = policy("cart");
        assert_eq!(cart.rules.len(), 1);
        let r = &cart.rules[0];
        assert_eq!(r.policy, "shop/cart-policy");
        assert_eq!(
            (r.path_prefix.clone(), r.path_exact.clone()),
            (vec!["/api".to_string()], vec!["/health".to_string()])
        );
        assert_eq!(
            (cart.default_deny, cart.default_policy.as_str()),
            (true, "shop/default")
        );
        // Another service of the namespace: no rules, the namespace default.
        let web = policy("web");
        assert!(web.rules.is_empty());
        assert!(web.default_deny);
    }
}
