//! Config → the resources one proxy needs (scoping). A proxy for service S in
//! namespace N gets: an inbound listener describing S's ports, the HTTP routes
//! and TCP listeners of every Route whose sources include S, and the clusters
//! and endpoints those routes reach. Nothing else: sidecar memory must not
//! grow with the size of the mesh.

mod authorization;
mod cluster;
mod rate_limit;
mod route;

use crate::config::kinds::Protocol;
use crate::config::ConfigSet;
use crate::registry_view::RegistryView;
use crate::trust::MeshTrust;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use xds_proto::type_url;
use xds_proto::units::parse_duration_ms as parse_ms;
use xds_proto::v1::{self as pb, resource::Kind as RKind};

/// Resources keyed by (type URL, name), ordered for stable output. Shared:
/// a cluster and its endpoints are the same for every proxy that reaches
/// them, so one publication builds them once (`Shared`) and every proxy's
/// set points at the same copy.
pub type ResourceSet = BTreeMap<(String, String), Arc<pb::Resource>>;

/// The clusters (and their endpoints) one publication has built so far,
/// by cluster name, for every proxy's compilation to share.
#[derive(Debug, Default)]
pub struct Shared {
    clusters: Mutex<HashMap<String, Built>>,
    /// What the previous publication built: an unchanged cluster keeps its
    /// copy, so proxies' sets keep sharing it and diffs compare pointers.
    previous: HashMap<String, Built>,
}

/// A cluster and its endpoints.
type Built = (Arc<pb::Resource>, Arc<pb::Resource>);

impl Shared {
    /// An empty cache for the publication after the one `previous` served.
    pub fn following(previous: &Shared) -> Shared {
        Shared {
            clusters: Mutex::default(),
            previous: previous.lock().clone(),
        }
    }

    fn get(&self, cluster: &str) -> Option<Built> {
        self.lock().get(cluster).cloned()
    }

    /// Keeps `built` (or the previous publication's equal copy) and returns
    /// what was kept.
    fn put(&self, cluster: String, built: Built) -> Built {
        let kept = match self.previous.get(&cluster) {
            Some(prev) => (
                if *prev.0 == *built.0 {
                    prev.0.clone()
                } else {
                    built.0
                },
                if *prev.1 == *built.1 {
                    prev.1.clone()
                } else {
                    built.1
                },
            ),
            None => built,
        };
        self.lock().insert(cluster, kept.clone());
        kept
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Built>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub const INBOUND_LISTENER: &str = "inbound";

pub const OUTBOUND_ROUTES: &str = "outbound";

/// Names of the identity resources every proxy gets.
pub const TRUST_BUNDLE: &str = "trust-bundle";

pub const ROTATION: &str = "rotation";

pub const AUTHORIZATION: &str = "inbound";

pub const RATE_LIMITS: &str = "inbound";

/// The namespace whose default Authorization applies mesh-wide.
pub const MESH_NAMESPACE: &str = "weft-system";

pub fn cluster_name(service: &str, namespace: &str, port: i64) -> String {
    format!("{service}.{namespace}:{port}")
}

pub(crate) fn proto(p: Protocol) -> i32 {
    (match p {
        Protocol::Http => pb::Protocol::Http,
        Protocol::Http2 => pb::Protocol::Http2,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Opaque => pb::Protocol::Opaque,
    }) as i32
}

/// An optional duration as wire milliseconds (0: unset).
pub(crate) fn ms(v: &Option<String>) -> u64 {
    v.as_deref().and_then(|v| parse_ms(v).ok()).unwrap_or(0)
}

pub(crate) fn resource(type_url: &str, name: String, kind: RKind) -> Arc<pb::Resource> {
    Arc::new(pb::Resource {
        name,
        type_url: type_url.to_string(),
        kind: Some(kind),
    })
}

pub(crate) fn insert(set: &mut ResourceSet, type_url: &str, name: String, kind: RKind) {
    set.insert(
        (type_url.to_string(), name.clone()),
        resource(type_url, name, kind),
    );
}

/// Compiles the resources for one proxy.
pub fn compile_for(
    config: &ConfigSet,
    registry: &RegistryView,
    node: &pb::Node,
    trust: &MeshTrust,
) -> ResourceSet {
    compile_shared(config, registry, &Shared::default(), node, trust)
}

/// `compile_for`, reusing (and adding to) the clusters `shared` holds for
/// this config and registry revision.
pub fn compile_shared(
    config: &ConfigSet,
    registry: &RegistryView,
    shared: &Shared,
    node: &pb::Node,
    trust: &MeshTrust,
) -> ResourceSet {
    let mut set = ResourceSet::new();
    identity_and_policy(&mut set, config, node, trust);
    inbound_listener(&mut set, config, node);
    let sources = Sources {
        config,
        registry,
        shared,
    };
    outbound(&mut set, &sources, node, trust.trust_domain.as_str());
    set
}

/// What the outbound side is compiled from: the config, the registered
/// instances, and the clusters already built from them.
pub(crate) struct Sources<'a> {
    pub config: &'a ConfigSet,
    pub registry: &'a RegistryView,
    pub shared: &'a Shared,
}

/// What every proxy gets: the trust bundle, a pending certificate
/// rotation, and its workload's authorization and rate limits.
fn identity_and_policy(
    set: &mut ResourceSet,
    config: &ConfigSet,
    node: &pb::Node,
    trust: &MeshTrust,
) {
    insert(
        set,
        type_url::TRUST_BUNDLE,
        TRUST_BUNDLE.to_string(),
        RKind::TrustBundle(pb::TrustBundle {
            trust_domain: trust.trust_domain.clone(),
            roots_pem: trust.roots_pem.clone(),
        }),
    );
    insert(
        set,
        type_url::AUTHORIZATION_POLICY,
        AUTHORIZATION.to_string(),
        RKind::AuthorizationPolicy(authorization::authorization_for(config, node)),
    );
    insert(
        set,
        type_url::RATE_LIMIT_POLICY,
        RATE_LIMITS.to_string(),
        RKind::RateLimitPolicy(rate_limit::rate_limits_for(config, node)),
    );
    if trust.rotate_before_unix > 0 {
        insert(
            set,
            type_url::CERTIFICATE_ROTATION,
            ROTATION.to_string(),
            RKind::CertificateRotation(pb::CertificateRotation {
                issued_before_unix: trust.rotate_before_unix,
                reason: "CA rotation".into(),
            }),
        );
    }
}

/// The inbound listener: the workload's ports and what they speak.
fn inbound_listener(set: &mut ResourceSet, config: &ConfigSet, node: &pb::Node) {
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
        set,
        type_url::LISTENER,
        INBOUND_LISTENER.to_string(),
        RKind::Listener(pb::Listener {
            name: INBOUND_LISTENER.to_string(),
            direction: pb::Direction::Inbound as i32,
            app_ports,
            ..Default::default()
        }),
    );
}

/// The outbound side: the route table of every Route whose sources include
/// the workload, its TCP listeners, and the clusters they reach.
fn outbound(set: &mut ResourceSet, sources: &Sources<'_>, node: &pb::Node, trust_domain: &str) {
    let config = sources.config;
    let mut vhosts = Vec::new();
    for (key, route) in config.routes() {
        if !route::route_applies(key, route, node) {
            continue;
        }
        let route_name = format!("{}/{}", key.namespace, key.name);
        if let Some(tcp) = &route.tcp {
            let Some(cluster) =
                cluster::add_cluster(set, sources, trust_domain, &key.namespace, &tcp.destination)
            else {
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
                set,
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
            if let Some(r) = route::compile_rule(set, sources, trust_domain, &key.namespace, rule) {
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
    intercepted_services(set, sources, trust_domain);
    insert(
        set,
        type_url::ROUTE_TABLE,
        OUTBOUND_ROUTES.to_string(),
        RKind::RouteTable(pb::RouteTable {
            name: OUTBOUND_ROUTES.to_string(),
            virtual_hosts: vhosts,
        }),
    );
}

/// Every port of every service with virtual IPs (`addresses`): an
/// intercepted app reaches them by address without a Route (the proxy
/// sends HTTP no route takes, and TCP, to the service whose VIP or
/// endpoint was dialled). Services without VIPs are reached through
/// Routes only.
fn intercepted_services(set: &mut ResourceSet, sources: &Sources<'_>, trust_domain: &str) {
    for (key, svc) in sources.config.services() {
        if svc.addresses.is_empty() {
            continue;
        }
        for port in &svc.ports {
            let dest = crate::config::kinds::Destination {
                service: key.name.clone(),
                port: port.port,
                subset: Default::default(),
            };
            cluster::add_cluster(set, sources, trust_domain, &key.namespace, &dest);
        }
    }
}

/// What changed between two resource sets: (changed or new, removed).
pub fn diff(old: &ResourceSet, new: &ResourceSet) -> (Vec<pb::Resource>, Vec<pb::ResourceRef>) {
    let changed = new
        .iter()
        .filter(|(k, v)| match old.get(*k) {
            Some(o) => !Arc::ptr_eq(o, v) && o != *v,
            None => true,
        })
        .map(|(_, v)| (**v).clone())
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
        let set = compile_for(&config(MESH), &RegistryView::default(), &node("web"), &td());
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
    fn registered_instances_join_the_static_endpoints_unless_critical() {
        let inst = |id: &str, addr: &str, health: pb::Health, sidecar_port: u32, port: u32| {
            std::sync::Arc::new(pb::Instance {
                namespace: "shop".into(),
                service: "cart".into(),
                instance_id: id.into(),
                address: addr.into(),
                sidecar_port,
                ports: vec![pb::InstancePort {
                    name: "grpc".into(),
                    port,
                    protocol: pb::Protocol::Grpc as i32,
                }],
                health: health as i32,
                weight: 0,
                labels: [("version".to_string(), "v2".to_string())].into(),
                ..Default::default()
            })
        };
        let mut view = RegistryView::default();
        view.set(
            "shop",
            "cart",
            vec![
                inst("a", "127.0.0.21", pb::Health::Passing, 15006, 9090),
                inst("b", "127.0.0.22", pb::Health::Critical, 15006, 9090),
                inst("c", "127.0.0.23", pb::Health::Warning, 0, 9090),
                inst("d", "127.0.0.24", pb::Health::Passing, 0, 7777),
                // Also listed statically: one endpoint.
                inst("e", "10.0.0.3", pb::Health::Passing, 15006, 9090),
                // Intercepted pods are dialled on the port itself (mTLS).
                std::sync::Arc::new(pb::Instance {
                    intercepted: true,
                    ..(*inst("f", "10.1.0.6", pb::Health::Passing, 15006, 9090)).clone()
                }),
                std::sync::Arc::new(pb::Instance {
                    intercepted: true,
                    ..(*inst("g", "10.1.0.7", pb::Health::Passing, 15006, 7777)).clone()
                }),
            ]
            .into(),
        );
        let set = compile_for(&config(MESH), &view, &node("web"), &td());
        let Some(RKind::Endpoints(e)) = &set[&(
            type_url::ENDPOINTS.to_string(),
            "cart.shop:9090".to_string(),
        )]
            .kind
        else {
            panic!()
        };
        let got: Vec<(String, u32, bool, u32)> = e
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.port, e.identity.is_empty(), e.weight))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.2".into(), 9090, false, 1),
                ("10.0.0.3".into(), 15006, false, 1),
                // Through its sidecar, with the service's identity.
                ("127.0.0.21".into(), 15006, false, 1),
                // Warning stays; no sidecar: its own port, plaintext.
                ("127.0.0.23".into(), 9090, true, 1),
                ("10.1.0.6".into(), 9090, false, 1),
                // "grpc" is not a port name of the Service, and 7777 is not
                // its port: d (and intercepted g) do not serve cart:9090.
            ]
        );
        assert_eq!(
            e.endpoints[2].labels.get("version").map(String::as_str),
            Some("v2")
        );
    }

    #[test]
    fn proxies_of_one_publication_share_a_cluster_and_the_next_publication_keeps_it_if_unchanged() {
        let cfg = config(MESH);
        let view = RegistryView::default();
        let shared = Shared::default();
        let key = (
            type_url::ENDPOINTS.to_string(),
            "cart.shop:9090".to_string(),
        );
        let mut web1 = node("web");
        web1.name = "web-1".into();
        let a = compile_shared(&cfg, &view, &shared, &node("web"), &td());
        let b = compile_shared(&cfg, &view, &shared, &web1, &td());
        assert!(Arc::ptr_eq(&a[&key], &b[&key]));
        // Same config: the next publication hands out the same copy, and
        // the diff sees nothing without comparing contents.
        let next = Shared::following(&shared);
        let c = compile_shared(&cfg, &view, &next, &node("web"), &td());
        assert!(Arc::ptr_eq(&a[&key], &c[&key]));
        assert_eq!(diff(&a, &c), (vec![], vec![]));
        // A changed endpoint list is a new copy.
        let mut changed = view.clone();
        changed.set(
            "shop",
            "cart",
            vec![Arc::new(pb::Instance {
                address: "127.0.0.9".into(),
                sidecar_port: 15006,
                health: pb::Health::Passing as i32,
                ..Default::default()
            })]
            .into(),
        );
        let after = Shared::following(&next);
        let d = compile_shared(&cfg, &changed, &after, &node("web"), &td());
        assert!(!Arc::ptr_eq(&a[&key], &d[&key]));
        let (resources, removed) = diff(&c, &d);
        assert_eq!((resources.len(), removed.len()), (1, 0));
    }

    #[test]
    fn inbound_listener_describes_the_own_service_ports() {
        let set = compile_for(
            &config(MESH),
            &RegistryView::default(),
            &node("cart"),
            &td(),
        );
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
        let a = compile_for(&cfg, &RegistryView::default(), &node("web"), &td());
        let mut cfg2 = cfg.clone();
        cfg2.objects
            .retain(|k, _| k.name != "cart" || k.kind != crate::config::Kind::Route);
        let b = compile_for(&cfg2, &RegistryView::default(), &node("web"), &td());
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
            let set = compile_for(&cfg, &RegistryView::default(), &node(service), &td());
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

    #[test]
    fn services_with_virtual_ips_reach_every_proxy_without_a_route() {
        let cfg = config(&format!(
            "{MESH}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: cache, namespace: infra}}\nspec: {{ports: [{{port: 6379, protocol: tcp}}, {{port: 9121, protocol: http}}], addresses: [10.96.0.9]}}\n"
        ));
        let clusters = |service: &str| -> Vec<String> {
            compile_for(&cfg, &RegistryView::default(), &node(service), &td())
                .keys()
                .filter(|(t, _)| t == type_url::CLUSTER)
                .map(|(_, n)| n.clone())
                .collect()
        };
        assert_eq!(
            clusters("web"),
            vec!["cache.infra:6379", "cache.infra:9121", "cart.shop:9090"]
        );
        assert_eq!(
            clusters("billing"),
            vec!["cache.infra:6379", "cache.infra:9121"]
        );
    }

    #[test]
    fn the_mtls_mode_is_the_services_else_the_namespaces_else_the_meshs_else_strict() {
        let auth = |ns: &str, name: &str, spec: &str| {
            format!("---\napiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
        };
        let mode = |extra: &str, service: &str| {
            let cfg = config(&format!("{MESH}{extra}"));
            let set = compile_for(&cfg, &RegistryView::default(), &node(service), &td());
            match &set[&(
                type_url::AUTHORIZATION_POLICY.to_string(),
                AUTHORIZATION.to_string(),
            )]
                .kind
            {
                Some(RKind::AuthorizationPolicy(p)) => (p.permissive, p.mtls_policy.clone()),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(mode("", "web"), (false, String::new()));
        let mesh = auth("weft-system", "mesh", "{mtls: permissive}");
        assert_eq!(mode(&mesh, "web"), (true, "weft-system/mesh".into()));
        let ns = auth("shop", "shop-mtls", "{mtls: strict, default: allow}");
        assert_eq!(
            mode(&format!("{mesh}{ns}"), "web"),
            (false, "shop/shop-mtls".into())
        );
        let svc = auth(
            "shop",
            "web-mtls",
            "{target: {service: web}, mtls: permissive}",
        );
        let all = format!("{mesh}{ns}{svc}");
        assert_eq!(mode(&all, "web"), (true, "shop/web-mtls".into()));
        assert_eq!(mode(&all, "cart"), (false, "shop/shop-mtls".into()));
    }
}
