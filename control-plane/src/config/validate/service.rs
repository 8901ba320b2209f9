//! Field rules of a Service: ports, protocols, addresses, endpoints.
use super::{check_label, check_port, valid_dns_label};
use crate::config::kinds::ServiceSpec;
use crate::config::{ConfigError, Located};
use std::collections::HashSet;
use std::net::IpAddr;

pub(super) fn check_service(obj: &Located, s: &ServiceSpec) -> Result<(), ConfigError> {
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
