//! Validation: per-object field rules (`check_object`, one module per kind)
//! and whole-config rules (`set::check_set`: dangling references,
//! duplicates, port conflicts). An apply is all or nothing, so `check_set`
//! runs on the config as it would be after it. This file holds the field
//! rules every kind shares.

mod authorization;
mod policy;
mod queue;
mod route;
mod service;
mod set;

pub use route::{grpc_code, GRPC_CODES, RETRY_CONDITIONS};
pub use set::check_set;

use super::kinds::{PathMatch, StringMatch};
use super::{ConfigError, Located, Spec};

pub(crate) fn valid_dns_label(s: &str) -> bool {
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

pub(crate) fn check_port(v: i64) -> Result<(), String> {
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
        Spec::Service(s) => service::check_service(obj, s),
        Spec::Route(r) => route::check_route(obj, r),
        Spec::Authorization(a) => authorization::check_authorization(obj, a),
        Spec::Policy(p) => policy::check_policy(obj, p),
        Spec::Queue(q) => queue::check_queue(obj, q),
        Spec::QueuePolicy(p) => queue::check_queue_policy(obj, p),
    }
}

/// The callers of an Authorization or QueuePolicy rule at `base`: SPIFFE
/// IDs that parse, namespace names, trust domain names.
pub(crate) fn check_from(
    obj: &Located,
    base: &str,
    from: &super::kinds::AuthzFrom,
) -> Result<(), ConfigError> {
    for (j, id) in from.identities.iter().enumerate() {
        id.parse::<xds_proto::spiffe::SpiffeId>()
            .map_err(|e| obj.error(format!("{base}.from.identities[{j}]"), e.to_string()))?;
    }
    for (j, ns) in from.namespaces.iter().enumerate() {
        if !valid_dns_label(ns) {
            return Err(obj.error(
                format!("{base}.from.namespaces[{j}]"),
                format!("\"{ns}\" is not a namespace name"),
            ));
        }
    }
    for (j, td) in from.trust_domains.iter().enumerate() {
        xds_proto::spiffe::check_name("trust domain", td)
            .map_err(|e| obj.error(format!("{base}.from.trustDomains[{j}]"), e.to_string()))?;
    }
    Ok(())
}

/// Label keys and values: 1..=63 of letters, digits, '-', '_', '.'.
pub(crate) fn check_label(k: &str, v: &str) -> Result<(), String> {
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
    xds_proto::units::parse_duration(v).map(|_| ())
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

fn http_header_value_invalid(v: &str) -> bool {
    v.bytes()
        .any(|b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
}

fn check_method(m: &str) -> Result<(), String> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "\"{m}\" is not an HTTP method (uppercase, e.g. GET)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
