//! The rate limits enforced at one workload's sidecar.

use crate::config::ConfigSet;
use xds_proto::v1 as pb;

/// The rate limits the sidecar of `node` enforces: per app port, those of
/// the Policy in force for it.
pub(super) fn rate_limits_for(config: &ConfigSet, node: &pb::Node) -> pb::RateLimitPolicy {
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
