//! The pod annotations (and the one label) that steer injection, parsed
//! and checked: a bad value is an error that names the annotation.

use crate::template::Template;
use crate::{quantity, InjectError};
use serde_json::{Map, Value};

/// `enabled` / `disabled`, as a pod annotation or label (webhook object
/// selectors see labels only) or a namespace label.
pub const INJECT: &str = "weft.dev/inject";
/// Set on injected pods to the injector's version; its presence makes a
/// second injection a no-op.
pub const INJECTED: &str = "weft.dev/injected";
/// The app probes as they were before the rewrite (JSON); uninject
/// restores them.
pub const ORIGINAL_PROBES: &str = "weft.dev/app-probes";
pub const SERVICE: &str = "weft.dev/service";
pub const APP_PORT: &str = "weft.dev/app-port";
pub const OPAQUE_PORTS: &str = "weft.dev/opaque-ports";
pub const SKIP_INBOUND_PORTS: &str = "weft.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "weft.dev/skip-outbound-ports";
pub const SKIP_OUTBOUND_CIDRS: &str = "weft.dev/skip-outbound-cidrs";
pub const LOG_LEVEL: &str = "weft.dev/proxy-log-level";
pub const CPU_REQUEST: &str = "weft.dev/proxy-cpu-request";
pub const CPU_LIMIT: &str = "weft.dev/proxy-cpu-limit";
pub const MEMORY_REQUEST: &str = "weft.dev/proxy-memory-request";
pub const MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
pub const NATIVE_SIDECAR: &str = "weft.dev/native-sidecar";
pub const REWRITE_APP_PROBES: &str = "weft.dev/rewrite-app-probes";

/// Every annotation the injector reads, for docs and error hints.
pub const ALL: [&str; 15] = [
    INJECT,
    SERVICE,
    APP_PORT,
    OPAQUE_PORTS,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
    LOG_LEVEL,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    NATIVE_SIDECAR,
    REWRITE_APP_PROBES,
    INJECTED,
];

/// What a pod asks for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Overrides {
    /// Some(true) enabled, Some(false) disabled, None: not said.
    pub inject: Option<bool>,
    pub service: Option<String>,
    pub app_port: Option<u16>,
    /// Comma lists, already checked, passed on verbatim.
    pub opaque_ports: Option<String>,
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    pub skip_outbound_cidrs: Option<String>,
    pub log_level: Option<String>,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub native_sidecar: Option<bool>,
    pub rewrite_app_probes: Option<bool>,
}

impl Overrides {
    /// Reads a pod template's `metadata.annotations` and `metadata.labels`.
    pub fn parse(metadata: Option<&Map<String, Value>>) -> Result<Overrides, InjectError> {
        let section = |name: &str| {
            metadata
                .and_then(|m| m.get(name))
                .and_then(Value::as_object)
        };
        let annotations = section("annotations");
        let get = |key: &str| -> Result<Option<String>, InjectError> {
            match annotations.and_then(|a| a.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(other) => Err(bad(
                    key,
                    &other.to_string(),
                    "annotation values are strings",
                )),
            }
        };
        let label = section("labels")
            .and_then(|l| l.get(INJECT))
            .and_then(Value::as_str)
            .map(str::to_string);
        let inject = match get(INJECT)?.or(label) {
            None => None,
            Some(v) => Some(enabled(INJECT, &v)?),
        };
        let flag = |key: &str| -> Result<Option<bool>, InjectError> {
            get(key)?
                .map(|v| match v.as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(bad(key, &v, "expected true or false")),
                })
                .transpose()
        };
        let ports = |key: &str| -> Result<Option<String>, InjectError> {
            get(key)?
                .map(|v| {
                    xds_proto::ports::parse_list(&v)
                        .map(|_| v.clone())
                        .map_err(|why| bad(key, &v, &why))
                })
                .transpose()
        };
        let quantity = |key: &str| -> Result<Option<String>, InjectError> {
            get(key)?
                .map(|v| {
                    quantity::check(&v)
                        .map(|()| v.clone())
                        .map_err(|why| bad(key, &v, &why))
                })
                .transpose()
        };
        let service = get(SERVICE)?;
        if let Some(s) = &service {
            dns_label(s).map_err(|why| bad(SERVICE, s, &why))?;
        }
        let app_port = get(APP_PORT)?
            .map(|v| match v.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(bad(APP_PORT, &v, "expected a port, 1-65535")),
            })
            .transpose()?;
        let skip_outbound_cidrs = get(SKIP_OUTBOUND_CIDRS)?;
        if let Some(v) = &skip_outbound_cidrs {
            cidr_list(v).map_err(|why| bad(SKIP_OUTBOUND_CIDRS, v, &why))?;
        }
        let log_level = get(LOG_LEVEL)?;
        if let Some(v) = &log_level {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=,:".contains(c))
            {
                return Err(bad(
                    LOG_LEVEL,
                    v,
                    "expected a level (error, warn, info, debug, trace) or a RUST_LOG filter",
                ));
            }
        }
        Ok(Overrides {
            inject,
            service,
            app_port,
            opaque_ports: ports(OPAQUE_PORTS)?,
            skip_inbound_ports: ports(SKIP_INBOUND_PORTS)?,
            skip_outbound_ports: ports(SKIP_OUTBOUND_PORTS)?,
            skip_outbound_cidrs,
            log_level,
            cpu_request: quantity(CPU_REQUEST)?,
            cpu_limit: quantity(CPU_LIMIT)?,
            memory_request: quantity(MEMORY_REQUEST)?,
            memory_limit: quantity(MEMORY_LIMIT)?,
            native_sidecar: flag(NATIVE_SIDECAR)?,
            rewrite_app_probes: flag(REWRITE_APP_PROBES)?,
        })
    }

    /// The proxy's resources: the template's, with the annotations on top.
    pub fn resources(&self, template: &Template) -> Value {
        let mut requests = template.resources.requests.clone();
        let mut limits = template.resources.limits.clone();
        for (is_limit, key, v) in [
            (false, "cpu", &self.cpu_request),
            (false, "memory", &self.memory_request),
            (true, "cpu", &self.cpu_limit),
            (true, "memory", &self.memory_limit),
        ] {
            if let Some(v) = v {
                let map = if is_limit { &mut limits } else { &mut requests };
                map.insert(key.to_string(), v.clone());
            }
        }
        resources_json(&requests, &limits)
    }
}

pub(crate) fn resources_json(
    requests: &std::collections::BTreeMap<String, String>,
    limits: &std::collections::BTreeMap<String, String>,
) -> Value {
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert(
            "requests".into(),
            serde_json::to_value(requests).unwrap_or_default(),
        );
    }
    if !limits.is_empty() {
        out.insert(
            "limits".into(),
            serde_json::to_value(limits).unwrap_or_default(),
        );
    }
    Value::Object(out)
}

fn bad(key: &str, value: &str, why: &str) -> InjectError {
    InjectError::Annotation {
        key: key.to_string(),
        value: value.to_string(),
        reason: why.to_string(),
    }
}

fn enabled(key: &str, v: &str) -> Result<bool, InjectError> {
    match v {
        "enabled" => Ok(true),
        "disabled" => Ok(false),
        _ => Err(bad(key, v, "expected enabled or disabled")),
    }
}

/// "10.0.0.0/8,fd00::/8".
fn cidr_list(v: &str) -> Result<(), String> {
    for item in v.split(',').map(str::trim) {
        let (ip, len) = item
            .split_once('/')
            .ok_or_else(|| format!("\"{item}\" is not address/prefix"))?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("\"{ip}\" is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("\"{len}\" is not a prefix length for {ip}")),
        }
    }
    Ok(())
}

/// A Kubernetes service name: a DNS-1035 label.
pub(crate) fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err("expected a DNS label: lowercase letters, digits and '-', starting with a letter, at most 63".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(annotations: Value) -> Result<Overrides, InjectError> {
        let meta = json!({ "annotations": annotations });
        Overrides::parse(meta.as_object())
    }

    #[test]
    fn every_annotation_is_read_and_checked() {
        let o = parse(json!({
            INJECT: "enabled", SERVICE: "cart", APP_PORT: "8080",
            OPAQUE_PORTS: "6379", SKIP_INBOUND_PORTS: "9000-9010,22",
            SKIP_OUTBOUND_PORTS: "5432", SKIP_OUTBOUND_CIDRS: "169.254.169.254/32,fd00::/8",
            LOG_LEVEL: "debug", CPU_REQUEST: "200m", MEMORY_LIMIT: "1Gi",
            NATIVE_SIDECAR: "false", REWRITE_APP_PROBES: "false",
        }))
        .unwrap();
        assert_eq!(o.inject, Some(true));
        assert_eq!(o.app_port, Some(8080));
        assert_eq!(o.skip_inbound_ports.as_deref(), Some("9000-9010,22"));
        assert_eq!(o.native_sidecar, Some(false));
        let r = o.resources(&Template::default());
        assert_eq!(r["requests"]["cpu"], "200m");
        assert_eq!(r["limits"]["memory"], "1Gi");
        assert_eq!(r["requests"]["memory"], "32Mi", "template defaults stay");
    }

    #[test]
    fn a_bad_annotation_names_itself_its_value_and_what_was_expected() {
        for (key, value, expect) in [
            (INJECT, "yes", "enabled or disabled"),
            (APP_PORT, "http", "port"),
            (SKIP_INBOUND_PORTS, "80,70000", "70000"),
            (SKIP_OUTBOUND_PORTS, "90-80", "ends before"),
            (SKIP_OUTBOUND_CIDRS, "10.0.0.0/33", "33"),
            (CPU_LIMIT, "two", "quantity"),
            (SERVICE, "Cart_1", "DNS label"),
            (NATIVE_SIDECAR, "yes", "true or false"),
        ] {
            let e = parse(json!({ key: value })).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(value) && e.contains(expect),
                "{e}"
            );
        }
    }

    #[test]
    fn the_inject_label_counts_when_there_is_no_annotation() {
        let meta = json!({ "labels": { INJECT: "disabled" } });
        assert_eq!(
            Overrides::parse(meta.as_object()).unwrap().inject,
            Some(false)
        );
        let meta =
            json!({ "labels": { INJECT: "disabled" }, "annotations": { INJECT: "enabled" } });
        assert_eq!(
            Overrides::parse(meta.as_object()).unwrap().inject,
            Some(true)
        );
    }
}
