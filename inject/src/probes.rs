//! The app's kubelet probes, pointed at the sidecar. The kubelet probes
//! plaintext from the node; with interception and strict mTLS the inbound
//! side would refuse it, so each HTTP(S), TCP and gRPC probe becomes an HTTP
//! GET of the sidecar's `/app-health/<container>/<kind>` on the health
//! port, and the sidecar runs the original against the app over loopback.
//! Exec probes never cross the network and stay as they are.

use crate::patch::{pointer_token, Op};
use crate::template::HEALTH_PORT;
use serde_json::{json, Map, Value};
use xds_proto::app_probe::{self, AppProbe, AppProbes};

/// Probe fields and the kind names their rewritten paths use.
pub const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

#[derive(Debug, Default)]
pub struct Rewrite {
    /// What the sidecar runs (env WEFT_APP_PROBES).
    pub probes: AppProbes,
    /// `replace` ops on the containers' probes.
    pub ops: Vec<Op>,
    /// container name → probe field → the probe as it was (uninject).
    pub originals: Map<String, Value>,
    pub warnings: Vec<String>,
}

/// Rewrites the probes of `containers` (at `{spec}/containers`).
pub fn rewrite(containers: &[Value], spec: &str) -> Rewrite {
    let mut out = Rewrite::default();
    for (i, c) in containers.iter().enumerate() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        for (field, kind) in KINDS {
            let Some(probe) = c.get(field).and_then(Value::as_object) else {
                continue;
            };
            let action = match original(c, probe) {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(why) => {
                    out.warnings
                        .push(format!("container {name} {field}: {why}; not rewritten"));
                    continue;
                }
            };
            let path = app_probe::path(name, kind);
            let mut rewritten = probe.clone();
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                rewritten.remove(handler);
            }
            rewritten.insert(
                "httpGet".into(),
                json!({ "path": path, "port": HEALTH_PORT, "scheme": "HTTP" }),
            );
            out.ops.push(Op::replace(
                format!("{spec}/containers/{i}/{}", pointer_token(field)),
                Value::Object(rewritten),
            ));
            out.originals
                .entry(name.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .map(|m| m.insert(field.to_string(), Value::Object(probe.clone())));
            out.probes.insert(path, action);
        }
    }
    out
}

/// What the sidecar should run for `probe`; None for exec probes.
fn original(container: &Value, probe: &Map<String, Value>) -> Result<Option<AppProbe>, String> {
    if let Some(h) = probe.get("httpGet") {
        let https = h
            .get("scheme")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let port = port(container, h.get("port"))?;
        let path = h.get("path").and_then(Value::as_str).unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let mut host = h.get("host").and_then(Value::as_str).map(str::to_string);
        let mut headers = Vec::new();
        for header in h
            .get("httpHeaders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = header
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let value = header
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.eq_ignore_ascii_case("host") {
                host = Some(value.to_string());
            } else if !name.is_empty() {
                headers.push((name.to_string(), value.to_string()));
            }
        }
        return Ok(Some(AppProbe::Http {
            port,
            path,
            https,
            host,
            headers,
        }));
    }
    if let Some(t) = probe.get("tcpSocket") {
        return Ok(Some(AppProbe::Tcp {
            port: port(container, t.get("port"))?,
        }));
    }
    if let Some(g) = probe.get("grpc") {
        return Ok(Some(AppProbe::Grpc {
            port: port(container, g.get("port"))?,
            service: g
                .get("service")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        }));
    }
    Ok(None)
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(container: &Value, port: Option<&Value>) -> Result<u16, String> {
    match port {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is not 1-65535")),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("port \"{name}\" names no port of the container"))
        }
        _ => Err("the probe has no port".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_tcp_and_grpc_probes_point_at_the_sidecar_and_keep_their_timing() {
        let containers = [json!({
            "name": "web",
            "ports": [{ "name": "http", "containerPort": 8080 }],
            "readinessProbe": { "httpGet": { "path": "healthz", "port": "http",
                "httpHeaders": [{ "name": "Host", "value": "web.local" }, { "name": "X-Probe", "value": "1" }] },
                "periodSeconds": 3 },
            "livenessProbe": { "tcpSocket": { "port": 8080 }, "failureThreshold": 7 },
            "startupProbe": { "grpc": { "port": 9090, "service": "web" } },
        })];
        let r = rewrite(&containers, "/spec");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.ops.len(), 3);
        assert_eq!(
            r.probes["/app-health/web/readyz"],
            AppProbe::Http {
                port: 8080,
                path: "/healthz".into(),
                https: false,
                host: Some("web.local".into()),
                headers: vec![("X-Probe".into(), "1".into())],
            }
        );
        assert_eq!(
            r.probes["/app-health/web/livez"],
            AppProbe::Tcp { port: 8080 }
        );
        assert_eq!(
            r.probes["/app-health/web/startupz"],
            AppProbe::Grpc {
                port: 9090,
                service: Some("web".into())
            }
        );
        let ready = r
            .ops
            .iter()
            .find(|o| o.path.ends_with("readinessProbe"))
            .unwrap();
        let v = ready.value.as_ref().unwrap();
        assert_eq!(v["periodSeconds"], 3);
        assert_eq!(v["httpGet"]["port"], HEALTH_PORT);
        assert_eq!(v["httpGet"]["path"], "/app-health/web/readyz");
        assert!(v.get("tcpSocket").is_none() && v.get("grpc").is_none());
        assert_eq!(
            r.originals["web"]["livenessProbe"]["tcpSocket"]["port"],
            8080
        );
    }

    #[test]
    fn exec_probes_stay_https_is_kept_and_unknown_named_ports_are_left_with_a_warning() {
        let containers = [json!({
            "name": "db",
            "livenessProbe": { "exec": { "command": ["true"] } },
            "readinessProbe": { "httpGet": { "port": 8443, "scheme": "HTTPS" } },
            "startupProbe": { "tcpSocket": { "port": "nope" } },
        })];
        let r = rewrite(&containers, "/spec");
        assert_eq!(r.ops.len(), 1, "only the HTTPS probe is rewritten");
        assert_eq!(
            r.probes["/app-health/db/readyz"],
            AppProbe::Http {
                port: 8443,
                path: "/".into(),
                https: true,
                host: None,
                headers: vec![]
            }
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("\"nope\""));
    }
}
