//! Field rules of a Policy: target, load balancer, outlier detection,
//! health checks, retry budget and rate limits.
use super::{
    check_duration, check_header_name, check_method, check_path, check_port, valid_dns_label,
};
use crate::config::kinds::{
    HealthCheckSpec, LbAlgorithm, LoadBalancerSpec, OutlierDetectionSpec, PolicySpec, RateLimitSpec,
};
use crate::config::{resolve_service_ref, ConfigError, Located};
use std::collections::HashSet;

pub(super) fn check_policy(obj: &Located, p: &PolicySpec) -> Result<(), ConfigError> {
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
        check_load_balancer(obj, lb)?;
    }
    if let Some(t) = &p.connect_timeout {
        check_duration(t).map_err(|e| obj.error("spec.connectTimeout", e))?;
    }
    if let Some(o) = &p.outlier_detection {
        check_outlier_detection(obj, o)?;
    }
    if let Some(h) = &p.health_check {
        check_health_check(obj, h)?;
    }
    if let Some(b) = &p.retry_budget {
        if b.percent
            .is_some_and(|x| !(x.is_finite() && (0.0..=1000.0).contains(&x)))
        {
            return Err(obj.error("spec.retryBudget.percent", "must be 0..=1000"));
        }
    }
    check_rate_limits(obj, &p.rate_limits)
}

fn check_load_balancer(obj: &Located, lb: &LoadBalancerSpec) -> Result<(), ConfigError> {
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
                check_header_name(hn).map_err(|r| obj.error("spec.loadBalancer.hash.header", r))?;
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
    Ok(())
}

fn check_outlier_detection(obj: &Located, o: &OutlierDetectionSpec) -> Result<(), ConfigError> {
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
    Ok(())
}

fn check_health_check(obj: &Located, h: &HealthCheckSpec) -> Result<(), ConfigError> {
    let f = "spec.healthCheck";
    check_duration(&h.interval).map_err(|e| obj.error(format!("{f}.interval"), e))?;
    check_duration(&h.timeout).map_err(|e| obj.error(format!("{f}.timeout"), e))?;
    if h.healthy_threshold == Some(0) {
        return Err(obj.error(format!("{f}.healthyThreshold"), "must be at least 1"));
    }
    if h.unhealthy_threshold == Some(0) {
        return Err(obj.error(format!("{f}.unhealthyThreshold"), "must be at least 1"));
    }
    let kinds = usize::from(h.http.is_some()) + usize::from(h.grpc.is_some()) + usize::from(h.tcp);
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
    Ok(())
}

fn check_rate_limits(obj: &Located, limits: &[RateLimitSpec]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, l) in limits.iter().enumerate() {
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
