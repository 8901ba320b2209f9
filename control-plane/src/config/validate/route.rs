//! Field rules of a Route: hosts, matches, destinations and splits,
//! header edits, timeouts and retries.
use super::{
    check_duration, check_header_name, check_label, check_method, check_path_match, check_port,
    check_string_match, http_header_value_invalid, valid_dns_label, valid_host,
};
use crate::config::kinds::{Destination, HeaderOps, HttpRule, RetrySpec, RouteSpec};
use crate::config::{resolve_service_ref, ConfigError, Located};

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
        let base = xds_proto::units::parse_duration(&b.base)
            .map_err(|e| obj.error(format!("{field}.backoff.base"), e))?;
        let max = xds_proto::units::parse_duration(&b.max)
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

pub(super) fn check_route(obj: &Located, r: &RouteSpec) -> Result<(), ConfigError> {
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
