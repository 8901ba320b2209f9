//! Rendering results as a table, JSON or YAML (`-o`).

use clap::ValueEnum;
use comfy_table::{presets::NOTHING, Table};
use serde_json::{json, Value};
use xds_proto::v1 as pb;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().copied());
    t
}

/// Writes to stdout. A closed pipe (`weftctl ... | head`) is not an error
/// worth a panic: `main` exits quietly when it sees `BrokenPipe`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use outln;

pub fn value(format: Format, v: &Value) -> anyhow::Result<()> {
    match format {
        Format::Yaml => out!("{}", serde_yaml_ng::to_string(v)?),
        Format::Json | Format::Table => outln!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

pub fn results(
    format: Format,
    results: &[pb::ObjectResult],
    revision: u64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let rows: Vec<Value> = results
        .iter()
        .map(|r| json!({"kind": r.kind, "namespace": r.namespace, "name": r.name, "action": r.action}))
        .collect();
    match format {
        Format::Table => {
            let suffix = if dry_run { " (dry run)" } else { "" };
            for r in results {
                outln!(
                    "{}/{}/{} {}{suffix}",
                    r.kind.to_lowercase(),
                    r.namespace,
                    r.name,
                    r.action
                );
            }
            outln!("revision {revision}");
            Ok(())
        }
        _ => value(
            format,
            &json!({"revision": revision, "dryRun": dry_run, "results": rows}),
        ),
    }
}

pub fn objects(format: Format, kind: &str, objects: &[pb::ConfigObject]) -> anyhow::Result<()> {
    let manifests: Vec<Value> = objects
        .iter()
        .map(|o| serde_json::from_str(&o.json))
        .collect::<Result<_, _>>()?;
    match format {
        Format::Json => value(format, &Value::Array(manifests)),
        Format::Yaml => {
            for m in &manifests {
                out!("---\n{}", serde_yaml_ng::to_string(m)?);
            }
            Ok(())
        }
        Format::Table => {
            let mut t = if kind == "Service" {
                table(&["NAMESPACE", "NAME", "PORTS", "ENDPOINTS"])
            } else if kind == "Queue" {
                table(&["NAMESPACE", "NAME", "TYPE", "DEAD LETTER"])
            } else if kind == "QueuePolicy" {
                table(&["NAMESPACE", "NAME", "QUEUES", "GRANTS"])
            } else {
                table(&["NAMESPACE", "NAME", "HOSTS", "DESTINATIONS"])
            };
            for m in &manifests {
                let md = &m["metadata"];
                let spec = &m["spec"];
                let join = |v: &Value, f: &dyn Fn(&Value) -> String| {
                    v.as_array()
                        .map(|a| a.iter().map(f).collect::<Vec<_>>().join(","))
                        .unwrap_or_default()
                };
                let (a, b) = if kind == "QueuePolicy" {
                    (
                        join(&spec["queues"], &|q| q.as_str().unwrap_or("").to_string()),
                        join(&spec["rules"], &|r| {
                            join(&r["permissions"], &|p| p.as_str().unwrap_or("").to_string())
                        }),
                    )
                } else if kind == "Queue" {
                    (
                        spec["type"].as_str().unwrap_or("").to_string(),
                        spec["deadLetter"]["queue"]
                            .as_str()
                            .unwrap_or("-")
                            .to_string(),
                    )
                } else if kind == "Service" {
                    (
                        join(&spec["ports"], &|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or(""))
                        }),
                        join(&spec["endpoints"], &|e| match e["port"].as_i64() {
                            Some(port) => format!("{}:{port}", e["address"].as_str().unwrap_or("")),
                            None => e["address"].as_str().unwrap_or("").to_string(),
                        }),
                    )
                } else {
                    let dests = if spec["tcp"].is_object() {
                        format!(
                            "tcp :{} → {}:{}",
                            spec["tcp"]["bindPort"],
                            spec["tcp"]["destination"]["service"].as_str().unwrap_or(""),
                            spec["tcp"]["destination"]["port"]
                        )
                    } else {
                        join(&spec["http"], &|r| {
                            format!(
                                "{}:{}",
                                r["destination"]["service"].as_str().unwrap_or(""),
                                r["destination"]["port"]
                            )
                        })
                    };
                    (
                        join(&spec["hosts"], &|h| h.as_str().unwrap_or("").to_string()),
                        dests,
                    )
                };
                t.add_row(vec![
                    md["namespace"].as_str().unwrap_or("").to_string(),
                    md["name"].as_str().unwrap_or("").to_string(),
                    a,
                    b,
                ]);
            }
            outln!("{t}");
            Ok(())
        }
    }
}

fn state_name(s: i32) -> &'static str {
    match pb::SyncState::try_from(s) {
        Ok(pb::SyncState::Synced) => "SYNCED",
        Ok(pb::SyncState::Stale) => "STALE",
        Ok(pb::SyncState::Nacked) => "NACKED",
        Ok(pb::SyncState::Disconnected) => "DISCONNECTED",
        _ => "UNKNOWN",
    }
}

pub fn proxies(format: Format, resp: &pb::ProxyStatusResponse) -> anyhow::Result<()> {
    let rows: Vec<Value> = resp
        .proxies
        .iter()
        .map(|p| {
            let node = p.node.clone().unwrap_or_default();
            json!({
                "namespace": node.namespace,
                "name": node.name,
                "service": node.service,
                "state": state_name(p.state),
                "sentVersion": p.sent_version,
                "ackedVersion": p.acked_version,
                "ackedRevision": p.acked_revision,
                "ackedRegistryRevision": p.acked_registry_revision,
                "resources": p.resources,
                "nackReason": p.nack_reason,
                "connected": p.connected,
                "lastSeenUnixMs": p.last_seen_unix_ms,
            })
        })
        .collect();
    match format {
        Format::Table => {
            let mut t = table(&[
                "NAMESPACE",
                "NAME",
                "SERVICE",
                "STATE",
                "SENT",
                "ACKED",
                "RESOURCES",
                "REASON",
            ]);
            for r in &rows {
                t.add_row(
                    [
                        "namespace",
                        "name",
                        "service",
                        "state",
                        "sentVersion",
                        "ackedVersion",
                        "resources",
                        "nackReason",
                    ]
                    .iter()
                    .map(|k| match &r[*k] {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    })
                    .collect::<Vec<_>>(),
                );
            }
            outln!("{t}");
            outln!("control plane revision r{}", resp.revision);
            Ok(())
        }
        _ => value(
            format,
            &json!({"revision": format!("r{}", resp.revision), "registryRevision": resp.registry_revision, "proxies": rows}),
        ),
    }
}

pub fn control_planes(format: Format, resp: &pb::ListControlPlanesResponse) -> anyhow::Result<()> {
    let now = xds_proto::units::unix_ms(std::time::SystemTime::now()) as i64;
    let rows: Vec<Value> = resp
        .control_planes
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "address": c.address,
                "version": c.version,
                "connectedProxies": c.connected_proxies,
                "leader": c.leader,
                "startedUnixMs": c.started_unix_ms,
                "uptimeSeconds": (now - c.started_unix_ms).max(0) / 1000,
            })
        })
        .collect();
    match format {
        Format::Table => {
            let mut t = table(&["ID", "ADDRESS", "VERSION", "PROXIES", "LEADER", "UPTIME"]);
            for c in &resp.control_planes {
                t.add_row(vec![
                    c.id.clone(),
                    c.address.clone(),
                    c.version.clone(),
                    c.connected_proxies.to_string(),
                    if c.leader {
                        "yes".into()
                    } else {
                        String::new()
                    },
                    format!("{}s", (now - c.started_unix_ms).max(0) / 1000),
                ]);
            }
            outln!("{t}");
            outln!("store {}", resp.store);
            Ok(())
        }
        _ => value(format, &json!({"store": resp.store, "controlPlanes": rows})),
    }
}
