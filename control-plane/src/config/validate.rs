//! Validation: per-object field rules (`check_object`) and whole-config rules
//! (`check_set`: dangling references, duplicates, port conflicts). An apply is
//! all or nothing, so `check_set` runs on the config as it would be after it.

use super::kinds::{
    AuthorizationSpec, Destination, HeaderOps, HttpRule, LbAlgorithm, PathMatch, PolicySpec,
    RetrySpec, RouteSpec, ServiceSpec, StringMatch,
};
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
        Spec::Policy(p) => check_policy(obj, p),
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
        if e.weight == Some(0) || e.weight.is_some_and(|w| w > 10_000) {
            return Err(obj.error(format!("spec.endpoints[{i}].weight"), "must be 1..=10000"));
        }
        for (k, v) in &e.labels {
            check_label(k, v)
                .map_err(|r| obj.error(format!("spec.endpoints[{i}].labels.{k}"), r))?;
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
    for (k, v) in &d.subset {
        check_label(k, v).map_err(|r| obj.error(format!("{field}.subset.{k}"), r))?;
    }
    check_port(d.port).map_err(|r| obj.error(format!("{field}.port"), r))
}

/// Label keys and values: 1..=63 of letters, digits, '-', '_', '.'.
fn check_label(k: &str, v: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !ok(k) {
        return Err(format!(
            "label key \"{k}\" must be 1-63 letters, digits, '-', '_' or '.'"
        ));
    }
    if !ok(v) {
        return Err(format!(
            "label value \"{v}\" must be 1-63 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Paths in routes may be regular expressions; in authorization rules not.
fn check_path_match(p: &PathMatch, allow_regex: bool) -> Result<(), String> {
    match (&p.prefix, &p.exact, &p.regex) {
        (Some(v), None, None) | (None, Some(v), None) if v.starts_with('/') => Ok(()),
        (Some(v), None, None) | (None, Some(v), None) => {
            Err(format!("\"{v}\" must start with '/'"))
        }
        (None, None, Some(r)) if allow_regex => check_regex(r),
        (None, None, Some(_)) => {
            Err("`regex` is not supported here; use `prefix` or `exact`".into())
        }
        _ if allow_regex => Err("set exactly one of `prefix`, `exact` or `regex`".into()),
        _ => Err("set exactly one of `prefix` or `exact`".into()),
    }
}

fn check_path(p: &PathMatch) -> Result<(), String> {
    check_path_match(p, false)
}

fn check_regex(r: &str) -> Result<(), String> {
    regex::RegexBuilder::new(r)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| format!("bad regular expression \"{r}\": {e}"))
}

fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!("\"{name}\": header names are lowercase tokens"));
    }
    Ok(())
}

fn check_duration(v: &str) -> Result<(), String> {
    crate::duration::parse(v).map(|_| ())
}

fn check_string_match(m: &StringMatch) -> Result<(), String> {
    match m {
        StringMatch::Exact(_) => Ok(()),
        StringMatch::Rule(r) => match (&r.exact, &r.regex, r.present) {
            (Some(_), None, None) => Ok(()),
            (None, Some(re), None) => check_regex(re),
            (None, None, Some(true)) => Ok(()),
            (None, None, Some(false)) => {
                Err("`present: false` is not supported; use `present: true`".into())
            }
            _ => Err("set exactly one of `exact`, `regex` or `present`".into()),
        },
    }
}

fn check_header_ops(obj: &Located, field: &str, ops: &HeaderOps) -> Result<(), ConfigError> {
    for (verb, map) in [("add", &ops.add), ("set", &ops.set)] {
        for (name, value) in map {
            check_header_name(name).map_err(|r| obj.error(format!("{field}.{verb}.{name}"), r))?;
            if http_header_value_invalid(value) {
                return Err(obj.error(
                    format!("{field}.{verb}.{name}"),
                    "header values must be visible ASCII, spaces or tabs",
                ));
            }
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        check_header_name(name).map_err(|r| obj.error(format!("{field}.remove[{i}]"), r))?;
    }
    Ok(())
}

fn http_header_value_invalid(v: &str) -> bool {
    v.bytes()
        .any(|b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
}

/// Retry conditions a route may name.
pub const RETRY_CONDITIONS: &[&str] = &[
    "connect-failure",
    "reset",
    "refused-stream",
    "5xx",
    "gateway-error",
    "retriable-status-codes",
    "retriable-grpc-codes",
];

/// gRPC status codes by their lowercase, dashed names.
pub const GRPC_CODES: &[&str] = &[
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// A gRPC code by name or number.
pub fn grpc_code(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (n < GRPC_CODES.len() as u32).then_some(n);
    }
    let norm = s.to_ascii_lowercase().replace('_', "-");
    GRPC_CODES.iter().position(|c| *c == norm).map(|i| i as u32)
}

fn check_retries(obj: &Located, field: &str, r: &RetrySpec) -> Result<(), ConfigError> {
    if !(1..=10).contains(&r.attempts) {
        return Err(obj.error(
            format!("{field}.attempts"),
            "must be 1..=10 (tries, the first included)",
        ));
    }
    if let Some(t) = &r.per_try_timeout {
        check_duration(t).map_err(|e| obj.error(format!("{field}.perTryTimeout"), e))?;
    }
    for (i, c) in r.on.iter().enumerate() {
        if !RETRY_CONDITIONS.contains(&c.as_str()) {
            return Err(obj.error(
                format!("{field}.on[{i}]"),
                format!(
                    "unknown condition \"{c}\" (one of {})",
                    RETRY_CONDITIONS.join(", ")
                ),
            ));
        }
    }
    for (i, c) in r.status_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            return Err(obj.error(
                format!("{field}.statusCodes[{i}]"),
                format!("{c} is not an HTTP status"),
            ));
        }
    }
    for (i, c) in r.grpc_codes.iter().enumerate() {
        if grpc_code(c).is_none() {
            return Err(obj.error(
                format!("{field}.grpcCodes[{i}]"),
                format!("\"{c}\" is not a gRPC code (0..=16 or a name like unavailable)"),
            ));
        }
    }
    if let Some(b) = &r.backoff {
        let base = crate::duration::parse(&b.base)
            .map_err(|e| obj.error(format!("{field}.backoff.base"), e))?;
        let max = crate::duration::parse(&b.max)
            .map_err(|e| obj.error(format!("{field}.backoff.max"), e))?;
        if max < base {
            return Err(obj.error(format!("{field}.backoff.max"), "must not be below `base`"));
        }
    }
    if r.max_body_bytes.is_some_and(|b| b > 16 << 20) {
        return Err(obj.error(format!("{field}.maxBodyBytes"), "at most 16 MiB (16777216)"));
    }
    Ok(())
}

fn check_http_rule(obj: &Located, base: &str, rule: &HttpRule) -> Result<(), ConfigError> {
    if let Some(m) = &rule.matches {
        if let Some(p) = &m.path {
            check_path_match(p, true).map_err(|r| obj.error(format!("{base}.match.path"), r))?;
        }
        if let Some(method) = &m.method {
            check_method(method).map_err(|r| obj.error(format!("{base}.match.method"), r))?;
        }
        for (name, cond) in &m.headers {
            check_header_name(name)
                .map_err(|r| obj.error(format!("{base}.match.headers.{name}"), r))?;
            check_string_match(cond)
                .map_err(|r| obj.error(format!("{base}.match.headers.{name}"), r))?;
        }
        for (name, cond) in &m.query {
            if name.is_empty() {
                return Err(obj.error(format!("{base}.match.query"), "empty parameter name"));
            }
            check_string_match(cond)
                .map_err(|r| obj.error(format!("{base}.match.query.{name}"), r))?;
        }
    }
    match (&rule.destination, rule.backends.is_empty()) {
        (None, true) => return Err(obj.error(base, "needs a `destination` or `backends`")),
        (Some(_), false) => {
            return Err(obj.error(
                format!("{base}.backends"),
                "set `destination` or `backends`, not both",
            ))
        }
        _ => {}
    }
    for (i, b) in rule.backends.iter().enumerate() {
        if b.weight > 10_000 {
            return Err(obj.error(format!("{base}.backends[{i}].weight"), "must be 0..=10000"));
        }
    }
    if !rule.backends.is_empty() && rule.backends.iter().all(|b| b.weight == 0) {
        return Err(obj.error(
            format!("{base}.backends"),
            "at least one weight must be above 0",
        ));
    }
    if let Some(m) = &rule.mirror {
        if !(m.percent > 0.0 && m.percent <= 100.0) {
            return Err(obj.error(
                format!("{base}.mirror.percent"),
                "must be above 0 and at most 100",
            ));
        }
    }
    for (field, d) in rule.destinations() {
        check_destination(obj, &format!("{base}.{field}"), &d)?;
    }
    if let Some(h) = &rule.request_headers {
        check_header_ops(obj, &format!("{base}.requestHeaders"), h)?;
    }
    if let Some(h) = &rule.response_headers {
        check_header_ops(obj, &format!("{base}.responseHeaders"), h)?;
    }
    if let Some(t) = &rule.timeout {
        check_duration(t).map_err(|e| obj.error(format!("{base}.timeout"), e))?;
    }
    if let Some(t) = &rule.idle_timeout {
        check_duration(t).map_err(|e| obj.error(format!("{base}.idleTimeout"), e))?;
    }
    if let Some(r) = &rule.retries {
        check_retries(obj, &format!("{base}.retries"), r)?;
    }
    Ok(())
}

fn check_policy(obj: &Located, p: &PolicySpec) -> Result<(), ConfigError> {
    let (name, ns) = resolve_service_ref(&p.target.service, &obj.object.metadata.namespace);
    if !valid_dns_label(name) || !valid_dns_label(ns) {
        return Err(obj.error(
            "spec.target.service",
            format!(
                "\"{}\" is not \"name\" or \"name.namespace\"",
                p.target.service
            ),
        ));
    }
    if let Some(port) = p.target.port {
        check_port(port).map_err(|r| obj.error("spec.target.port", r))?;
    }
    if let Some(lb) = &p.load_balancer {
        let hashing = matches!(lb.algorithm, LbAlgorithm::RingHash | LbAlgorithm::Maglev);
        match (&lb.hash, hashing) {
            (None, true) => {
                return Err(obj.error(
                    "spec.loadBalancer.hash",
                    "ring-hash and maglev need a `hash` key (header, cookie or sourceIp)",
                ))
            }
            (Some(_), false) => {
                return Err(obj.error(
                    "spec.loadBalancer.hash",
                    "only ring-hash and maglev use a hash key",
                ))
            }
            (Some(h), true) => {
                let n = usize::from(h.header.is_some())
                    + usize::from(h.cookie.is_some())
                    + usize::from(h.source_ip);
                if n != 1 {
                    return Err(obj.error(
                        "spec.loadBalancer.hash",
                        "set exactly one of `header`, `cookie` or `sourceIp`",
                    ));
                }
                if let Some(hn) = &h.header {
                    check_header_name(hn)
                        .map_err(|r| obj.error("spec.loadBalancer.hash.header", r))?;
                }
                if h.cookie.as_deref() == Some("") {
                    return Err(obj.error("spec.loadBalancer.hash.cookie", "empty cookie name"));
                }
            }
            (None, false) => {}
        }
        if let Some(s) = &lb.slow_start {
            check_duration(s).map_err(|e| obj.error("spec.loadBalancer.slowStart", e))?;
        }
        if lb.panic_threshold.is_some_and(|t| t > 100) {
            return Err(obj.error("spec.loadBalancer.panicThreshold", "a percentage, 0..=100"));
        }
    }
    if let Some(t) = &p.connect_timeout {
        check_duration(t).map_err(|e| obj.error("spec.connectTimeout", e))?;
    }
    if let Some(o) = &p.outlier_detection {
        let f = "spec.outlierDetection";
        if o.consecutive5xx.unwrap_or(0) == 0
            && o.consecutive_gateway_errors.unwrap_or(0) == 0
            && o.consecutive_connect_failures.unwrap_or(0) == 0
            && o.success_rate.is_none()
        {
            return Err(obj.error(
                f,
                "set at least one trigger: consecutive5xx, consecutiveGatewayErrors, consecutiveConnectFailures or successRate",
            ));
        }
        for (field, v) in [
            ("interval", &o.interval),
            ("baseEjectionTime", &o.base_ejection_time),
            ("maxEjectionTime", &o.max_ejection_time),
        ] {
            if let Some(v) = v {
                check_duration(v).map_err(|e| obj.error(format!("{f}.{field}"), e))?;
            }
        }
        if o.max_ejection_percent.is_some_and(|p| p > 100) {
            return Err(obj.error(format!("{f}.maxEjectionPercent"), "a percentage, 0..=100"));
        }
        if let Some(sr) = &o.success_rate {
            if sr.stdev_factor.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
                return Err(obj.error(format!("{f}.successRate.stdevFactor"), "must be above 0"));
            }
        }
    }
    if let Some(h) = &p.health_check {
        let f = "spec.healthCheck";
        check_duration(&h.interval).map_err(|e| obj.error(format!("{f}.interval"), e))?;
        check_duration(&h.timeout).map_err(|e| obj.error(format!("{f}.timeout"), e))?;
        if h.healthy_threshold == Some(0) {
            return Err(obj.error(format!("{f}.healthyThreshold"), "must be at least 1"));
        }
        if h.unhealthy_threshold == Some(0) {
            return Err(obj.error(format!("{f}.unhealthyThreshold"), "must be at least 1"));
        }
        let kinds =
            usize::from(h.http.is_some()) + usize::from(h.grpc.is_some()) + usize::from(h.tcp);
        if kinds != 1 {
            return Err(obj.error(f, "set exactly one of `http`, `grpc` or `tcp: true`"));
        }
        if let Some(hh) = &h.http {
            if !hh.path.starts_with('/') {
                return Err(obj.error(
                    format!("{f}.http.path"),
                    format!("\"{}\" must start with '/'", hh.path),
                ));
            }
            if hh
                .expected_status
                .is_some_and(|s| !(100..=599).contains(&s))
            {
                return Err(obj.error(format!("{f}.http.expectedStatus"), "not an HTTP status"));
            }
        }
    }
    if let Some(b) = &p.retry_budget {
        if b.percent
            .is_some_and(|x| !(x.is_finite() && (0.0..=1000.0).contains(&x)))
        {
            return Err(obj.error("spec.retryBudget.percent", "must be 0..=1000"));
        }
    }
    let mut names = HashSet::new();
    for (i, l) in p.rate_limits.iter().enumerate() {
        let f = format!("spec.rateLimits[{i}]");
        if !valid_dns_label(&l.name) {
            return Err(obj.error(
                format!("{f}.name"),
                format!("\"{}\" is not a DNS label", l.name),
            ));
        }
        if !names.insert(l.name.as_str()) {
            return Err(obj.error(
                format!("{f}.name"),
                format!("duplicate limit \"{}\"", l.name),
            ));
        }
        if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 10_000_000.0) {
            return Err(obj.error(format!("{f}.rate"), "requests per second, above 0"));
        }
        if l.burst == Some(0) {
            return Err(obj.error(format!("{f}.burst"), "must be at least 1"));
        }
        if let Some(m) = &l.matches {
            if let Some(path) = &m.path {
                check_path(path).map_err(|r| obj.error(format!("{f}.match.path"), r))?;
            }
            if let Some(method) = &m.method {
                check_method(method).map_err(|r| obj.error(format!("{f}.match.method"), r))?;
            }
        }
        if let Some(k) = &l.key {
            let n = usize::from(k.identity)
                + usize::from(k.header.is_some())
                + usize::from(k.source_ip);
            if n != 1 {
                return Err(obj.error(
                    format!("{f}.key"),
                    "set exactly one of `identity: true`, `header` or `sourceIp: true`",
                ));
            }
            if let Some(h) = &k.header {
                check_header_name(h).map_err(|r| obj.error(format!("{f}.key.header"), r))?;
            }
            if l.global {
                return Err(obj.error(
                    format!("{f}.key"),
                    "global limits are per service; a keyed limit must be local",
                ));
            }
        }
    }
    Ok(())
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
        check_http_rule(obj, &format!("spec.http[{i}]"), rule)?;
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
    let mut policy_targets: BTreeMap<(String, String, Option<i64>), &ObjectKey> = BTreeMap::new();
    for (key, p) in set.policies() {
        let (name, ns) = resolve_service_ref(&p.target.service, &key.namespace);
        let Some(svc) = set.service(ns, name) else {
            return Err(located(key).error(
                "spec.target.service",
                format!("service \"{ns}/{name}\" not found (apply the Service first)"),
            ));
        };
        if let Some(port) = p.target.port {
            if !svc.ports.iter().any(|sp| sp.port == port) {
                return Err(located(key).error(
                    "spec.target.port",
                    format!("service \"{ns}/{name}\" has no port {port}"),
                ));
            }
        }
        if let Some(other) =
            policy_targets.insert((ns.to_string(), name.to_string(), p.target.port), key)
        {
            return Err(located(key).error(
                "spec.target",
                format!(
                    "Policy \"{}/{}\" already targets this service{}",
                    other.namespace,
                    other.name,
                    p.target
                        .port
                        .map(|p| format!(" port {p}"))
                        .unwrap_or_default()
                ),
            ));
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
        let mut dests: Vec<(String, Destination, bool)> = route
            .http
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.destinations()
                    .into_iter()
                    .map(move |(f, d)| (format!("spec.http[{i}].{f}"), d, true))
            })
            .collect();
        if let Some(tcp) = &route.tcp {
            dests.push((
                "spec.tcp.destination".into(),
                tcp.destination.clone(),
                false,
            ));
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
        for (field, d, http) in &dests {
            let (field, d, http) = (field, d, *http);
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
            if !d.subset.is_empty()
                && !svc.endpoints.is_empty()
                && !svc
                    .endpoints
                    .iter()
                    .any(|e| d.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            {
                return Err(located(key).error(
                    format!("{field}.subset"),
                    format!("no endpoint of \"{dns}/{name}\" has labels {:?}", d.subset),
                ));
            }
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
    fn traffic_policy_field_rules_name_the_field() {
        let d = "destination: {service: a, port: 80}";
        let route = |rule: &str| {
            format!("kind: Route\nmetadata: {{name: r}}\nspec: {{hosts: [a], http: [{rule}]}}")
        };
        let policy = |body: &str| {
            format!("kind: Policy\nmetadata: {{name: p}}\nspec: {{target: {{service: a}}, {body}}}")
        };
        let cases = [
            (
                route("{match: {path: {regex: '(['}}, destination: {service: a, port: 80}}"),
                "spec.http[0].match.path",
            ),
            (
                route(&format!(
                    "{{match: {{headers: {{x-a: {{regex: '(['}}}}}}, {d}}}"
                )),
                "spec.http[0].match.headers.x-a",
            ),
            (
                route(&format!(
                    "{{match: {{query: {{q: {{exact: a, present: true}}}}}}, {d}}}"
                )),
                "spec.http[0].match.query.q",
            ),
            (route("{}"), "spec.http[0]"),
            (
                route(&format!(
                    "{{{d}, backends: [{{service: a, port: 80, weight: 1}}]}}"
                )),
                "spec.http[0].backends",
            ),
            (
                route("{backends: [{service: a, port: 80, weight: 0}]}"),
                "spec.http[0].backends",
            ),
            (
                route(&format!(
                    "{{{d}, mirror: {{service: a, port: 80, percent: 0}}}}"
                )),
                "spec.http[0].mirror.percent",
            ),
            (
                route(&format!("{{{d}, timeout: 5x}}")),
                "spec.http[0].timeout",
            ),
            (
                route(&format!("{{{d}, retries: {{attempts: 0}}}}")),
                "spec.http[0].retries.attempts",
            ),
            (
                route(&format!(
                    "{{{d}, retries: {{attempts: 3, on: [sometimes]}}}}"
                )),
                "spec.http[0].retries.on[0]",
            ),
            (
                route(&format!(
                    "{{{d}, retries: {{attempts: 3, grpcCodes: [nope]}}}}"
                )),
                "spec.http[0].retries.grpcCodes[0]",
            ),
            (
                route(&format!(
                    "{{{d}, retries: {{attempts: 3, backoff: {{base: 1s, max: 10ms}}}}}}"
                )),
                "spec.http[0].retries.backoff.max",
            ),
            (
                route(&format!("{{{d}, requestHeaders: {{set: {{X-Up: a}}}}}}")),
                "spec.http[0].requestHeaders.set.X-Up",
            ),
            (
                route("{destination: {service: a, port: 80, subset: {'v@': x}}}"),
                "spec.http[0].destination.subset.v@",
            ),
            (
                policy("loadBalancer: {algorithm: ring-hash}"),
                "spec.loadBalancer.hash",
            ),
            (
                policy("loadBalancer: {algorithm: random, hash: {sourceIp: true}}"),
                "spec.loadBalancer.hash",
            ),
            (
                policy("loadBalancer: {algorithm: fastest}"),
                "spec.loadBalancer.algorithm",
            ),
            (
                policy("outlierDetection: {interval: 1s}"),
                "spec.outlierDetection",
            ),
            (
                policy("outlierDetection: {consecutive5xx: 3, maxEjectionPercent: 101}"),
                "spec.outlierDetection.maxEjectionPercent",
            ),
            (
                policy("healthCheck: {interval: 1s, timeout: 1s}"),
                "spec.healthCheck",
            ),
            (
                policy("healthCheck: {interval: 1s, timeout: 1s, http: {path: health}}"),
                "spec.healthCheck.http.path",
            ),
            (
                policy("rateLimits: [{name: a, rate: 0}]"),
                "spec.rateLimits[0].rate",
            ),
            (
                policy("rateLimits: [{name: a, rate: 1, key: {identity: true, sourceIp: true}}]"),
                "spec.rateLimits[0].key",
            ),
            (
                policy("rateLimits: [{name: a, rate: 1}, {name: a, rate: 2}]"),
                "spec.rateLimits[1].name",
            ),
            (
                policy("rateLimits: [{name: a, rate: 1, global: true, key: {identity: true}}]"),
                "spec.rateLimits[0].key",
            ),
        ];
        for (doc, field) in cases {
            let e = parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n"))
                .unwrap_err();
            assert_eq!(e.field, field, "{doc}: {e}");
        }
    }

    #[test]
    fn subsets_must_select_an_endpoint_and_one_policy_per_target() {
        let svc = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api, namespace: demo}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  endpoints: [{address: 127.0.0.2, labels: {version: v1}}]\n";
        let (set, origin) = set_of(&format!("{svc}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api]\n  http: [{{backends: [{{service: api, port: 8080, subset: {{version: v1}}, weight: 90}}, {{service: api, port: 8080, subset: {{version: v2}}, weight: 10}}]}}]\n"));
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.http[0].backends[1].subset");
        let (set, origin) = set_of(&format!("{svc}---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: a, namespace: demo}}\nspec: {{target: {{service: api}}}}\n---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: b, namespace: demo}}\nspec: {{target: {{service: api}}}}\n"));
        let e = check_set(&set, &origin).unwrap_err();
        assert_eq!(e.field, "spec.target");
        assert!(e.reason.contains("demo/a"), "{e}");
        let (set, origin) = set_of(&format!("{svc}---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: a, namespace: demo}}\nspec: {{target: {{service: api}}}}\n---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: b, namespace: demo}}\nspec: {{target: {{service: api, port: 8080}}}}\n"));
        check_set(&set, &origin).expect("a port-specific policy beside a service-wide one");
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
