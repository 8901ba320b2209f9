//! Validation: per-object field rules (`check_object`) and whole-config rules
//! (`check_set`: dangling references, duplicates, port conflicts). An apply is
//! all or nothing, so `check_set` runs on the config as it would be after it.

use super::kinds::{AuthorizationSpec, Destination, PathMatch, RouteSpec, ServiceSpec};
use super::{resolve_service_ref, ConfigError, ConfigSet, Located, ObjectKey, Spec};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_host(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn check_port(v: i64) -> Result<(), String> {
    if (1..=65535).contains(&v) {
        Ok(())
    } else {
        Err(format!("must be 1..=65535, got {v}"))
    }
}

/// Rules that need only the object itself.
pub fn check_object(obj: &Located) -> Result<(), ConfigError> {
    let md = &obj.object.metadata;
    if !valid_dns_label(&md.name) {
        return Err(obj.error(
            "metadata.name",
            format!(
                "\"{}\" is not a DNS label (lowercase letters, digits, '-', at most 63)",
                md.name
            ),
        ));
    }
    if !valid_dns_label(&md.namespace) {
        return Err(obj.error(
            "metadata.namespace",
            format!("\"{}\" is not a DNS label", md.namespace),
        ));
    }
    match &obj.object.spec {
        Spec::Service(s) => check_service(obj, s),
        Spec::Route(r) => check_route(obj, r),
        Spec::Authorization(a) => check_authorization(obj, a),
    }
}

fn check_service(obj: &Located, s: &ServiceSpec) -> Result<(), ConfigError> {
    if s.ports.is_empty() {
        return Err(obj.error("spec.ports", "must list at least one port"));
    }
    let mut numbers = HashSet::new();
    let mut names = HashSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        check_port(p.port).map_err(|r| obj.error(format!("spec.ports[{i}].port"), r))?;
        if !numbers.insert(p.port) {
            return Err(obj.error(
                format!("spec.ports[{i}].port"),
                format!("duplicate port {}", p.port),
            ));
        }
        if let Some(name) = &p.name {
            if !valid_dns_label(name) {
                return Err(obj.error(
                    format!("spec.ports[{i}].name"),
                    format!("\"{name}\" is not a DNS label"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(obj.error(
                    format!("spec.ports[{i}].name"),
                    format!("duplicate port name \"{name}\""),
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.address.parse::<IpAddr>().is_err() {
            return Err(obj.error(
                format!("spec.endpoints[{i}].address"),
                format!("\"{}\" is not an IP address", e.address),
            ));
        }
        if let Some(p) = e.port {
            check_port(p).map_err(|r| obj.error(format!("spec.endpoints[{i}].port"), r))?;
        }
        if !seen.insert((e.address.clone(), e.port)) {
            return Err(obj.error(
                format!("spec.endpoints[{i}]"),
                format!("duplicate endpoint {}", e.address),
            ));
        }
    }
    if let Some(sa) = &s.service_account {
        xds_proto::spiffe::check_name("service account", sa)
            .map_err(|e| obj.error("spec.serviceAccount".to_string(), e.to_string()))?;
    }
    for (i, a) in s.addresses.iter().enumerate() {
        if a.parse::<IpAddr>().is_err() {
            return Err(obj.error(
                format!("spec.addresses[{i}]"),
                format!("\"{a}\" is not an IP address"),
            ));
        }
    }
    Ok(())
}

fn check_destination(obj: &Located, field: &str, d: &Destination) -> Result<(), ConfigError> {
    let (name, ns) = resolve_service_ref(&d.service, &obj.object.metadata.namespace);
    if !valid_dns_label(name) || !valid_dns_label(ns) {
        return Err(obj.error(
            format!("{field}.service"),
            format!("\"{}\" is not \"name\" or \"name.namespace\"", d.service),
        ));
    }
    check_port(d.port).map_err(|r| obj.error(format!("{field}.port"), r))
}

fn check_path(p: &PathMatch) -> Result<(), String> {
    match (&p.prefix, &p.exact) {
        (Some(v), None) | (None, Some(v)) if v.starts_with('/') => Ok(()),
        (Some(v), None) | (None, Some(v)) => Err(format!("\"{v}\" must start with '/'")),
        _ => Err("set exactly one of `prefix` or `exact`".into()),
    }
}

fn check_method(m: &str) -> Result<(), String> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "\"{m}\" is not an HTTP method (uppercase, e.g. GET)"
        ));
    }
    Ok(())
}

fn check_authorization(obj: &Located, a: &AuthorizationSpec) -> Result<(), ConfigError> {
    match (&a.target, a.rules.is_empty(), a.default) {
        (None, true, None) => {
            return Err(obj.error(
                "spec",
                "set `target` and `rules` (a policy for one service) or `default` (the namespace's default)",
            ))
        }
        (None, false, _) => {
            return Err(obj.error("spec.rules", "rules need a `target` service"))
        }
        (Some(_), true, _) => {
            return Err(obj.error("spec.rules", "a policy with a target needs at least one rule"))
        }
        (Some(_), false, Some(_)) => {
            return Err(obj.error(
                "spec.default",
                "`default` belongs in a namespace default without `target`",
            ))
        }
        _ => {}
    }
    if let Some(t) = &a.target {
        if let Some(p) = t.port {
            check_port(p).map_err(|r| obj.error("spec.target.port", r))?;
        }
    }
    for (i, rule) in a.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        for (j, id) in rule.from.identities.iter().enumerate() {
            id.parse::<xds_proto::spiffe::SpiffeId>()
                .map_err(|e| obj.error(format!("{base}.from.identities[{j}]"), e.to_string()))?;
        }
        for (j, ns) in rule.from.namespaces.iter().enumerate() {
            if !valid_dns_label(ns) {
                return Err(obj.error(
                    format!("{base}.from.namespaces[{j}]"),
                    format!("\"{ns}\" is not a namespace name"),
                ));
            }
        }
        for (j, td) in rule.from.trust_domains.iter().enumerate() {
            xds_proto::spiffe::check_name("trust domain", td)
                .map_err(|e| obj.error(format!("{base}.from.trustDomains[{j}]"), e.to_string()))?;
        }
        for (j, p) in rule.to.paths.iter().enumerate() {
            check_path(p).map_err(|r| obj.error(format!("{base}.to.paths[{j}]"), r))?;
        }
        for (j, m) in rule.to.methods.iter().enumerate() {
            check_method(m).map_err(|r| obj.error(format!("{base}.to.methods[{j}]"), r))?;
        }
    }
    Ok(())
}

fn check_route(obj: &Located, r: &RouteSpec) -> Result<(), ConfigError> {
    match (r.http.is_empty(), &r.tcp) {
        (true, None) => return Err(obj.error("spec", "needs `http` rules or a `tcp` route")),
        (false, Some(_)) => {
            return Err(obj.error(
                "spec.tcp",
                "a route has either `http` rules or `tcp`, not both",
            ))
        }
        _ => {}
    }
    for (i, s) in r.sources.iter().enumerate() {
        let (name, ns) = resolve_service_ref(s, &obj.object.metadata.namespace);
        if !valid_dns_label(name) || !valid_dns_label(ns) {
            return Err(obj.error(
                format!("spec.sources[{i}]"),
                format!("\"{s}\" is not \"name\" or \"name.namespace\""),
            ));
        }
    }
    if !r.http.is_empty() && r.hosts.is_empty() {
        return Err(obj.error("spec.hosts", "HTTP routes need at least one host"));
    }
    for (i, h) in r.hosts.iter().enumerate() {
        if !valid_host(h) {
            return Err(obj.error(format!("spec.hosts[{i}]"), format!("\"{h}\" is not a host name (lowercase, no port; \"*.suffix\" or \"*\" allowed)")));
        }
    }
    for (i, rule) in r.http.iter().enumerate() {
        let base = format!("spec.http[{i}]");
        if let Some(m) = &rule.matches {
            if let Some(p) = &m.path {
                check_path(p).map_err(|r| obj.error(format!("{base}.match.path"), r))?;
            }
            if let Some(method) = &m.method {
                check_method(method).map_err(|r| obj.error(format!("{base}.match.method"), r))?;
            }
            for name in m.headers.keys() {
                if name.is_empty()
                    || !name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
                {
                    return Err(obj.error(
                        format!("{base}.match.headers.{name}"),
                        "header names are lowercase tokens",
                    ));
                }
            }
        }
        check_destination(obj, &format!("{base}.destination"), &rule.destination)?;
    }
    if let Some(tcp) = &r.tcp {
        check_port(tcp.bind_port).map_err(|e| obj.error("spec.tcp.bindPort", e))?;
        check_destination(obj, "spec.tcp.destination", &tcp.destination)?;
    }
    Ok(())
}

/// Rules across objects, on the configuration as it would be after an apply
/// or delete. `origin` tells where each object came from (for the message);
/// objects already stored are reported as `stored`.
pub fn check_set(
    set: &ConfigSet,
    origin: &BTreeMap<ObjectKey, (String, usize)>,
) -> Result<(), ConfigError> {
    let located = |key: &ObjectKey| {
        let (source_name, document) = origin
            .get(key)
            .cloned()
            .unwrap_or_else(|| ("stored config".to_string(), 0));
        let object = set.objects[key].clone();
        Located {
            object,
            source_name,
            document,
        }
    };
    let mut defaults: BTreeMap<&str, &ObjectKey> = BTreeMap::new();
    for (key, a) in set.authorizations() {
        if a.target.is_none() {
            if let Some(other) = defaults.insert(key.namespace.as_str(), key) {
                return Err(located(key).error(
                    "spec.default",
                    format!(
                        "namespace \"{}\" already has a default in Authorization \"{}\"",
                        key.namespace, other.name
                    ),
                ));
            }
        }
        if let Some(t) = &a.target {
            let (name, ns) = resolve_service_ref(&t.service, &key.namespace);
            let Some(svc) = set.service(ns, name) else {
                return Err(located(key).error(
                    "spec.target.service",
                    format!("service \"{ns}/{name}\" not found (apply the Service first)"),
                ));
            };
            if let Some(p) = t.port {
                if !svc.ports.iter().any(|sp| sp.port == p) {
                    return Err(located(key).error(
                        "spec.target.port",
                        format!("service \"{ns}/{name}\" has no port {p}"),
                    ));
                }
            }
        }
    }
    let mut bind_ports: BTreeMap<(String, i64), ObjectKey> = BTreeMap::new();
    for (key, route) in set.routes() {
        let ns = &key.namespace;
        for (i, s) in route.sources.iter().enumerate() {
            let (name, sns) = resolve_service_ref(s, ns);
            if set.service(sns, name).is_none() {
                return Err(located(key).error(
                    format!("spec.sources[{i}]"),
                    format!("service \"{sns}/{name}\" not found (apply the Service first)"),
                ));
            }
        }
        let mut dests: Vec<(String, &Destination, bool)> = route
            .http
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.http[{i}].destination"), &r.destination, true))
            .collect();
        if let Some(tcp) = &route.tcp {
            dests.push(("spec.tcp.destination".into(), &tcp.destination, false));
            if let Some(other) = bind_ports.insert((ns.clone(), tcp.bind_port), key.clone()) {
                return Err(located(key).error(
                    "spec.tcp.bindPort",
                    format!(
                        "port {} is already bound by Route \"{}/{}\"",
                        tcp.bind_port, other.namespace, other.name
                    ),
                ));
            }
        }
        for (field, d, http) in dests {
            let (name, dns) = resolve_service_ref(&d.service, ns);
            let Some(svc) = set.service(dns, name) else {
                return Err(located(key).error(
                    format!("{field}.service"),
                    format!("service \"{dns}/{name}\" not found (apply the Service first)"),
                ));
            };
            let Some(port) = svc.ports.iter().find(|p| p.port == d.port) else {
                let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
                return Err(located(key).error(
                    format!("{field}.port"),
                    format!(
                        "service \"{dns}/{name}\" has no port {} (ports: {})",
                        d.port,
                        ports.join(", ")
                    ),
                ));
            };
            if http && !port.protocol.is_http() {
                return Err(located(key).error(
                    format!("{field}.port"),
                    format!("port {} of \"{dns}/{name}\" is {:?}; HTTP rules need an http, http2 or grpc port (use `tcp`)", d.port, port.protocol).to_lowercase(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_documents;

    fn set_of(yaml: &str) -> (ConfigSet, BTreeMap<ObjectKey, (String, usize)>) {
        let mut set = ConfigSet::default();
        let mut origin = BTreeMap::new();
        for l in parse_documents("t.yaml", yaml).unwrap() {
            origin.insert(l.object.key(), (l.source_name.clone(), l.document));
            set.objects.insert(l.object.key(), l.object);
        }
        (set, origin)
    }

    const SVC: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api, namespace: demo}\nspec:\n  ports: [{port: 8080, protocol: http}, {port: 5432, protocol: opaque}]\n  endpoints: [{address: 127.0.0.2, port: 15006}]\n";

    #[test]
    fn route_to_missing_service_is_a_dangling_reference() {
        let (set, origin) = set_of("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {name: r, namespace: demo}\nspec:\n  hosts: [api]\n  http: [{destination: {service: nope, port: 80}}]\n");
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.http[0].destination.service");
        assert!(e.reason.contains("\"demo/nope\" not found"), "{e}");
    }

    #[test]
    fn route_to_missing_port_lists_the_ports_that_exist() {
        let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api]\n  http: [{{destination: {{service: api, port: 9}}}}]\n"));
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.http[0].destination.port");
        assert!(e.reason.contains("8080, 5432"), "{e}");
    }

    #[test]
    fn http_rule_to_opaque_port_is_rejected() {
        let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api]\n  http: [{{destination: {{service: api, port: 5432}}}}]\n"));
        assert!(check_set(&set, &origin)
            .unwrap_err()
            .reason
            .contains("opaque"));
    }

    #[test]
    fn valid_config_passes() {
        let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api, api.demo]\n  http:\n  - match: {{path: {{prefix: /v1}}, method: GET, headers: {{x-canary: \"1\"}}}}\n    destination: {{service: api, port: 8080}}\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: db, namespace: demo}}\nspec:\n  tcp: {{bindPort: 15432, destination: {{service: api.demo, port: 5432}}}}\n"));
        check_set(&set, &origin).unwrap();
    }

    #[test]
    fn field_rules_reject_bad_ports_hosts_and_paths() {
        let cases = [
            ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0, protocol: http}]}", "spec.ports[0].port"),
            ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 70000, protocol: http}]}", "spec.ports[0].port"),
            ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: http}, {port: 80, protocol: tcp}]}", "spec.ports[1].port"),
            ("kind: Service\nmetadata: {name: A_b}\nspec: {ports: [{port: 80, protocol: http}]}", "metadata.name"),
            ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: http}], endpoints: [{address: nope}]}", "spec.endpoints[0].address"),
            ("kind: Route\nmetadata: {name: a}\nspec: {hosts: ['a:80'], http: [{destination: {service: a, port: 80}}]}", "spec.hosts[0]"),
            ("kind: Route\nmetadata: {name: a}\nspec: {hosts: [a], http: [{match: {path: {prefix: x}}, destination: {service: a, port: 80}}]}", "spec.http[0].match.path"),
            ("kind: Route\nmetadata: {name: a}\nspec: {hosts: [a]}", "spec"),
            ("kind: Route\nmetadata: {name: a}\nspec: {tcp: {bindPort: 0, destination: {service: a, port: 80}}}", "spec.tcp.bindPort"),
        ];
        for (doc, field) in cases {
            let e = parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n"))
                .unwrap_err();
            assert_eq!(e.field, field, "{doc}: {e}");
        }
    }

    #[test]
    fn authorization_field_rules_name_the_field() {
        let cases = [
            ("kind: Authorization\nmetadata: {name: a}\nspec: {}", "spec"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {rules: [{action: allow}]}", "spec.rules"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}}", "spec.rules"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, default: deny, rules: [{action: allow}]}", "spec.default"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: allow, from: {identities: [nope]}}]}", "spec.rules[0].from.identities[0]"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: allow, from: {namespaces: [Bad_NS]}}]}", "spec.rules[0].from.namespaces[0]"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: deny, to: {paths: [{prefix: x}]}}]}", "spec.rules[0].to.paths[0]"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: deny, to: {methods: [get]}}]}", "spec.rules[0].to.methods[0]"),
            ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s, port: 0}, rules: [{action: deny}]}", "spec.target.port"),
        ];
        for (doc, field) in cases {
            let e = parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n"))
                .unwrap_err();
            assert_eq!(e.field, field, "{doc}: {e}");
        }
    }

    #[test]
    fn authorization_must_target_an_existing_service_port() {
        let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: p, namespace: demo}}\nspec: {{target: {{service: api, port: 9}}, rules: [{{action: deny}}]}}\n"));
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.target.port");
        let (set, origin) = set_of("apiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {name: p, namespace: demo}\nspec: {target: {service: ghost}, rules: [{action: deny}]}\n");
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.target.service");
        assert!(e.reason.contains("\"demo/ghost\" not found"), "{e}");
    }

    #[test]
    fn two_routes_cannot_bind_the_same_tcp_port() {
        let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: a, namespace: demo}}\nspec: {{tcp: {{bindPort: 9000, destination: {{service: api, port: 5432}}}}}}\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: b, namespace: demo}}\nspec: {{tcp: {{bindPort: 9000, destination: {{service: api, port: 5432}}}}}}\n"));
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.tcp.bindPort");
    }
}
