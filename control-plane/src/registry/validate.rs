//! Field rules of a registration. Every refusal names the field and the
//! value, and nothing is stored.

use super::Settings;
use crate::config::validate::{check_label, check_port, valid_dns_label};
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use tonic::Status;
use xds_proto::v1 as pb;

const MAX_INSTANCE_ID: usize = 253;
const MAX_PORTS: usize = 64;
const MAX_LABELS: usize = 64;
const MAX_METADATA: usize = 64;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;
const MAX_REASON: usize = 1024;
pub const MAX_WEIGHT: u32 = 10_000;

fn bad(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// The instance's own fields, and the lease TTL it gets (0: the default).
pub(super) fn check_registration(
    req: &pb::RegisterRequest,
    settings: &Settings,
) -> Result<Duration, Status> {
    let i = req
        .instance
        .as_ref()
        .ok_or_else(|| bad("instance", "is required"))?;
    if !valid_dns_label(&i.namespace) {
        return Err(bad(
            "instance.namespace",
            format!(
                "\"{}\" is not a DNS label (1-63 of a-z, 0-9, '-')",
                i.namespace
            ),
        ));
    }
    if !valid_dns_label(&i.service) {
        return Err(bad(
            "instance.service",
            format!(
                "\"{}\" is not a DNS label (1-63 of a-z, 0-9, '-')",
                i.service
            ),
        ));
    }
    check_instance_id(&i.instance_id)?;
    let ip: IpAddr = i.address.parse().map_err(|_| {
        bad(
            "instance.address",
            format!("\"{}\" is not an IP address", i.address),
        )
    })?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(bad(
            "instance.address",
            format!("{ip} cannot be connected to; give the instance's own address"),
        ));
    }
    if i.ports.len() > MAX_PORTS {
        return Err(bad(
            "instance.ports",
            format!("{} ports; at most {MAX_PORTS}", i.ports.len()),
        ));
    }
    if i.ports.is_empty() && i.sidecar_port == 0 {
        return Err(bad(
            "instance.ports",
            "must list at least one port (or a sidecar_port)",
        ));
    }
    let (mut numbers, mut names) = (HashSet::new(), HashSet::new());
    for (n, p) in i.ports.iter().enumerate() {
        check_port(i64::from(p.port)).map_err(|r| bad(&format!("instance.ports[{n}].port"), r))?;
        if !numbers.insert(p.port) {
            return Err(bad(
                &format!("instance.ports[{n}].port"),
                format!("duplicate port {}", p.port),
            ));
        }
        if !p.name.is_empty() {
            if !valid_dns_label(&p.name) {
                return Err(bad(
                    &format!("instance.ports[{n}].name"),
                    format!("\"{}\" is not a DNS label", p.name),
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(bad(
                    &format!("instance.ports[{n}].name"),
                    format!("duplicate port name \"{}\"", p.name),
                ));
            }
        }
    }
    if i.sidecar_port != 0 {
        check_port(i64::from(i.sidecar_port)).map_err(|r| bad("instance.sidecar_port", r))?;
    }
    if i.intercepted && (i.sidecar_port == 0 || i.ports.is_empty()) {
        return Err(bad(
            "instance.intercepted",
            "an intercepted instance needs its sidecar_port and at least one port (callers dial its ports)",
        ));
    }
    if i.labels.len() > MAX_LABELS {
        return Err(bad(
            "instance.labels",
            format!("{} labels; at most {MAX_LABELS}", i.labels.len()),
        ));
    }
    for (k, v) in &i.labels {
        check_label(k, v).map_err(|r| bad(&format!("instance.labels.{k}"), r))?;
    }
    if i.metadata.len() > MAX_METADATA {
        return Err(bad(
            "instance.metadata",
            format!("{} entries; at most {MAX_METADATA}", i.metadata.len()),
        ));
    }
    for (k, v) in &i.metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return Err(bad(
                "instance.metadata",
                format!(
                    "key of {} bytes; keys are 1-{MAX_METADATA_KEY} bytes",
                    k.len()
                ),
            ));
        }
        if v.len() > MAX_METADATA_VALUE {
            return Err(bad(
                &format!("instance.metadata.{k}"),
                format!("{} bytes; at most {MAX_METADATA_VALUE}", v.len()),
            ));
        }
    }
    if i.weight > MAX_WEIGHT {
        return Err(bad(
            "instance.weight",
            format!("{} is over {MAX_WEIGHT}", i.weight),
        ));
    }
    check_health(req.health, &req.health_reason, "health")?;
    ttl(req.ttl_ms, settings)
}

fn ttl(ttl_ms: u32, s: &Settings) -> Result<Duration, Status> {
    if ttl_ms == 0 {
        return Ok(s.default_ttl);
    }
    let ttl = Duration::from_millis(u64::from(ttl_ms));
    if ttl < s.min_ttl || ttl > s.max_ttl {
        return Err(bad(
            "ttl_ms",
            format!(
                "{ttl_ms} is out of bounds: a lease lasts {} to {} ms",
                s.min_ttl.as_millis(),
                s.max_ttl.as_millis()
            ),
        ));
    }
    Ok(ttl)
}

pub(super) fn check_instance_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(bad(
            "instance.instance_id",
            format!(
                "\"{}\" must be 1-{MAX_INSTANCE_ID} letters, digits, '-', '_' or '.'",
                id.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// A reported health: unset, passing, warning or critical, and a bounded
/// reason.
pub(super) fn check_health(health: i32, reason: &str, field: &str) -> Result<(), Status> {
    if pb::Health::try_from(health).is_err() {
        return Err(bad(field, format!("{health} is not a health value")));
    }
    if reason.len() > MAX_REASON {
        return Err(bad(
            &format!("{field}_reason"),
            format!("{} bytes; at most {MAX_REASON}", reason.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::RegisterRequest {
        pb::RegisterRequest {
            instance: Some(pb::Instance {
                namespace: "shop".into(),
                service: "cart".into(),
                instance_id: "cart-0".into(),
                address: "127.0.0.7".into(),
                ports: vec![pb::InstancePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: pb::Protocol::Http as i32,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err(f: impl FnOnce(&mut pb::RegisterRequest)) -> String {
        let mut r = req();
        f(&mut r);
        let e = check_registration(&r, &Settings::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        e.message().to_string()
    }

    fn inst(r: &mut pb::RegisterRequest) -> &mut pb::Instance {
        r.instance.as_mut().unwrap()
    }

    #[test]
    fn a_valid_registration_gets_the_default_ttl() {
        assert_eq!(
            check_registration(&req(), &Settings::default()).unwrap(),
            Settings::default().default_ttl
        );
    }

    #[test]
    fn each_bad_field_is_named_in_the_refusal() {
        assert!(err(|r| r.ttl_ms = 1).starts_with("ttl_ms: 1 is out of bounds"));
        assert!(err(|r| r.ttl_ms = u32::MAX).starts_with("ttl_ms:"));
        assert!(err(|r| inst(r).service = String::new()).starts_with("instance.service:"));
        assert!(err(|r| inst(r).service = "x".repeat(64)).starts_with("instance.service:"));
        assert!(err(|r| inst(r).namespace = "Shop".into()).starts_with("instance.namespace:"));
        assert!(err(|r| inst(r).instance_id = String::new()).starts_with("instance.instance_id:"));
        assert!(err(|r| inst(r).instance_id = "a".repeat(300)).starts_with("instance.instance_id:"));
        assert!(err(|r| inst(r).address = "cart.example".into()).starts_with("instance.address:"));
        assert!(err(|r| inst(r).address = "0.0.0.0".into()).starts_with("instance.address:"));
        assert!(err(|r| inst(r).ports[0].port = 0).starts_with("instance.ports[0].port:"));
        assert!(err(|r| {
            let p = inst(r).ports[0].clone();
            inst(r).ports.push(p)
        })
        .starts_with("instance.ports[1].port: duplicate"));
        assert!(err(|r| inst(r).ports.clear()).starts_with("instance.ports:"));
        assert!(err(|r| inst(r).sidecar_port = 70_000).starts_with("instance.sidecar_port:"));
        assert!(err(|r| {
            inst(r).labels.insert("ver sion".into(), "v1".into());
        })
        .starts_with("instance.labels.ver sion:"));
        assert!(err(|r| inst(r).weight = 10_001).starts_with("instance.weight:"));
        assert!(err(|r| r.health = 9).starts_with("health:"));
        assert!(err(|r| r.instance = None).starts_with("instance:"));
    }
}
