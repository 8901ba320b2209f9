//! HTTP routes: which Routes apply to a proxy, and each rule compiled with
//! its matches, backends (clusters added on the way), header edits,
//! timeouts and retries.

use super::cluster::add_cluster;
use super::Sources;
use super::{ms, ResourceSet};
use crate::config::kinds::{Destination, HeaderOps, HttpRule, RouteSpec, StringMatch};
use crate::config::validate::grpc_code;
use crate::config::{resolve_service_ref, ObjectKey};
use std::collections::BTreeMap;
use xds_proto::units::parse_duration_ms as parse_ms;
use xds_proto::v1::{self as pb, route_rule::Path};

pub(super) fn route_applies(key: &ObjectKey, route: &RouteSpec, node: &pb::Node) -> bool {
    if route.sources.is_empty() {
        return key.namespace == node.namespace;
    }
    route.sources.iter().any(|s| {
        let (name, ns) = resolve_service_ref(s, &key.namespace);
        name == node.service && ns == node.namespace
    })
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
pub(super) fn compile_rule(
    set: &mut ResourceSet,
    sources: &Sources<'_>,
    trust_domain: &str,
    route_ns: &str,
    rule: &HttpRule,
) -> Option<pb::RouteRule> {
    let mut backends = Vec::new();
    if let Some(d) = &rule.destination {
        let c = add_cluster(set, sources, trust_domain, route_ns, d)?;
        backends.push(backend(c, &d.subset, 1));
    }
    for b in &rule.backends {
        let d = Destination {
            service: b.service.clone(),
            port: b.port,
            subset: b.subset.clone(),
        };
        let c = add_cluster(set, sources, trust_domain, route_ns, &d)?;
        backends.push(backend(c, &b.subset, b.weight));
    }
    let mirror = match &rule.mirror {
        Some(m) => {
            let d = Destination {
                service: m.service.clone(),
                port: m.port,
                subset: m.subset.clone(),
            };
            let c = add_cluster(set, sources, trust_domain, route_ns, &d)?;
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
