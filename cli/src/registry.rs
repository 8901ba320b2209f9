//! `weftctl registry ...` and `weftctl get endpoints`: the mesh's service
//! registry as operators use it. `register` is a small registrar for a
//! workload without a sidecar (a database, an external API): it registers
//! the address, probes it with a TCP connect, heartbeats its lease with the
//! result until Ctrl-C, then deregisters (or `--detach`es after registering).

use crate::output::{table, value, Format};
use crate::{status_error, Conn};
use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_proto::v1::{self as pb, registry_client::RegistryClient};

type Client = RegistryClient<tonic::transport::Channel>;

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Registered instances (all, or those matching the filters).
    List {
        #[arg(short = 's', long)]
        service: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only instances with this label, repeatable: -l version=v2
        #[arg(short = 'l', long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Stream registry changes (ADDED, MODIFIED, REMOVED, HEALTH) until
    /// Ctrl-C; a snapshot first unless --from gives a revision to resume
    /// after.
    Watch {
        #[arg(short = 's', long)]
        service: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Register an instance without a sidecar (callers reach it directly on
    /// its port), probe it with a TCP connect and keep its lease alive until
    /// Ctrl-C, then deregister it.
    Register {
        #[arg(short = 's', long)]
        service: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        address: IpAddr,
        #[arg(long)]
        port: u16,
        /// The port's name (matches the Service port of that name).
        #[arg(long, default_value = "")]
        port_name: String,
        /// Defaults to <service>-<address>-<port>.
        #[arg(long)]
        instance_id: Option<String>,
        #[arg(short = 'l', long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long, value_parser = xds_proto::units::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        weight: Option<u32>,
        /// Register and exit: the lease runs out after its TTL unless
        /// something else renews it.
        #[arg(long)]
        detach: bool,
    },
    /// Remove an instance now: by lease id, or by service and instance id.
    Deregister {
        lease: Option<String>,
        #[arg(short = 's', long, requires = "instance_id", conflicts_with = "lease")]
        service: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        instance_id: Option<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label \"{s}\" is not key=value"))
}

async fn client(conn: &Conn) -> anyhow::Result<Client> {
    Ok(RegistryClient::new(
        weft_mesh_tls::admin_client::channel(&conn.url, &conn.auth).await?,
    ))
}

pub async fn run(conn: &Conn, format: Format, command: RegistryCommand) -> anyhow::Result<()> {
    let mut c = client(conn).await?;
    match command {
        RegistryCommand::List {
            service,
            namespace,
            labels,
        } => {
            let r = c
                .list(pb::ListInstancesRequest {
                    namespace: namespace.unwrap_or_default(),
                    service: service.unwrap_or_default(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            instances(format, &r.instances, r.revision)
        }
        RegistryCommand::Watch {
            service,
            namespace,
            from,
        } => watch(&mut c, format, namespace, service, from).await,
        RegistryCommand::Register {
            service,
            namespace,
            address,
            port,
            port_name,
            instance_id,
            labels,
            ttl,
            weight,
            detach,
        } => {
            let instance = pb::Instance {
                instance_id: instance_id.unwrap_or_else(|| format!("{service}-{address}-{port}")),
                namespace,
                service,
                address: address.to_string(),
                ports: vec![pb::InstancePort {
                    name: port_name,
                    port: u32::from(port),
                    protocol: pb::Protocol::Unspecified as i32,
                }],
                labels: labels.into_iter().collect(),
                weight: weight.unwrap_or(0),
                ..Default::default()
            };
            if ttl.is_some_and(|t| t.is_zero()) {
                bail!("--ttl must be above 0 (leave it out for the control plane's default)");
            }
            let target = SocketAddr::new(address, port);
            register(&mut c, instance, ttl, target, detach).await
        }
        RegistryCommand::Deregister {
            lease,
            service,
            namespace,
            instance_id,
        } => {
            let lease = match (lease, service, instance_id) {
                (Some(l), _, _) => l,
                (None, Some(s), Some(id)) => {
                    let found = c
                        .list(pb::ListInstancesRequest {
                            namespace: namespace.clone(),
                            service: s.clone(),
                            labels: Default::default(),
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .instances
                        .into_iter()
                        .find(|i| i.instance_id == id);
                    match found {
                        Some(i) => i.lease_id,
                        None => bail!("no instance \"{id}\" of {namespace}/{s} is registered"),
                    }
                }
                _ => bail!("give a lease id, or --service and --instance-id"),
            };
            let r = c
                .deregister(pb::DeregisterRequest { lease_id: lease })
                .await
                .map_err(status_error)?
                .into_inner();
            value(
                format,
                &json!({
                    "deregistered": true,
                    "revision": r.revision,
                    "proxiesSynced": r.proxies_synced,
                    "proxiesPending": r.proxies_pending,
                }),
            )
        }
    }
}

/// `weftctl get endpoints SERVICE`.
pub async fn endpoints(
    conn: &Conn,
    format: Format,
    namespace: String,
    service: String,
) -> anyhow::Result<()> {
    let mut c = client(conn).await?;
    let r = c
        .list_endpoints(pb::ListEndpointsRequest { namespace, service })
        .await
        .map_err(status_error)?
        .into_inner();
    let now = now_ms();
    let rows: Vec<Value> = r
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "address": e.address,
                "port": e.port,
                "source": e.source,
                "instanceId": e.instance_id,
                "health": health_name(e.health),
                "reason": e.health_reason,
                "labels": e.labels,
                "weight": e.weight,
                "sidecar": e.sidecar,
                "age": if e.since_unix_ms > 0 { age(now - e.since_unix_ms) } else { String::new() },
            })
        })
        .collect();
    match format {
        Format::Table => {
            let mut t = table(&[
                "ADDRESS", "PORT", "SOURCE", "INSTANCE", "HEALTH", "WEIGHT", "LABELS", "AGE",
                "REASON",
            ]);
            for (e, row) in r.endpoints.iter().zip(&rows) {
                t.add_row(vec![
                    e.address.clone(),
                    e.port.to_string(),
                    e.source.clone(),
                    e.instance_id.clone(),
                    health_name(e.health).to_string(),
                    e.weight.to_string(),
                    labels(&e.labels),
                    row["age"].as_str().unwrap_or("").to_string(),
                    e.health_reason.clone(),
                ]);
            }
            crate::output::outln!("{t}");
            Ok(())
        }
        _ => value(format, &json!({"revision": r.revision, "endpoints": rows})),
    }
}

fn now_ms() -> i64 {
    xds_proto::units::unix_ms(SystemTime::now()) as i64
}

fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn health_name(h: i32) -> &'static str {
    match pb::Health::try_from(h) {
        Ok(pb::Health::Passing) => "passing",
        Ok(pb::Health::Warning) => "warning",
        Ok(pb::Health::Critical) => "critical",
        _ => "unknown",
    }
}

fn event_name(t: i32) -> &'static str {
    match pb::EventType::try_from(t) {
        Ok(pb::EventType::Added) => "ADDED",
        Ok(pb::EventType::Modified) => "MODIFIED",
        Ok(pb::EventType::Removed) => "REMOVED",
        Ok(pb::EventType::Health) => "HEALTH",
        _ => "UNKNOWN",
    }
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn instance_json(i: &pb::Instance, now: i64) -> Value {
    json!({
        "namespace": i.namespace,
        "service": i.service,
        "instanceId": i.instance_id,
        "address": i.address,
        "sidecarPort": i.sidecar_port,
        "ports": i.ports.iter().map(|p| json!({"name": p.name, "port": p.port})).collect::<Vec<_>>(),
        "health": health_name(i.health),
        "reason": i.health_reason,
        "labels": i.labels,
        "metadata": i.metadata,
        "weight": i.weight.max(1),
        "leaseId": i.lease_id,
        "ttlMs": i.ttl_ms,
        "registeredBy": i.registered_by,
        "registeredUnixMs": i.registered_unix_ms,
        "age": age(now - i.registered_unix_ms),
        "revision": i.revision,
    })
}

fn instances(format: Format, list: &[pb::Instance], revision: u64) -> anyhow::Result<()> {
    let now = now_ms();
    match format {
        Format::Table => {
            let mut t = table(&[
                "NAMESPACE",
                "SERVICE",
                "INSTANCE",
                "ADDRESS",
                "PORT",
                "HEALTH",
                "LABELS",
                "AGE",
                "REASON",
            ]);
            for i in list {
                let port = if i.sidecar_port != 0 {
                    format!("{} (sidecar)", i.sidecar_port)
                } else {
                    i.ports
                        .iter()
                        .map(|p| p.port.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                t.add_row(vec![
                    i.namespace.clone(),
                    i.service.clone(),
                    i.instance_id.clone(),
                    i.address.clone(),
                    port,
                    health_name(i.health).to_string(),
                    labels(&i.labels),
                    age(now - i.registered_unix_ms),
                    i.health_reason.clone(),
                ]);
            }
            crate::output::outln!("{t}");
            crate::output::outln!("registry revision {revision}");
            Ok(())
        }
        _ => value(
            format,
            &json!({
                "revision": revision,
                "instances": list.iter().map(|i| instance_json(i, now)).collect::<Vec<_>>(),
            }),
        ),
    }
}

async fn watch(
    c: &mut Client,
    format: Format,
    namespace: Option<String>,
    service: Option<String>,
    from: u64,
) -> anyhow::Result<()> {
    let mut stream = c
        .watch(pb::WatchInstancesRequest {
            namespace: namespace.unwrap_or_default(),
            service: service.unwrap_or_default(),
            from_revision: from,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.map_err(status_error)?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(m) = msg else {
            bail!("the control plane ended the watch");
        };
        let now = now_ms();
        for e in &m.events {
            let i = e.instance.clone().unwrap_or_default();
            let kind = if m.snapshot {
                "SNAPSHOT"
            } else {
                event_name(e.r#type)
            };
            match format {
                Format::Table => crate::output::outln!(
                    "{:>8} {:<8} {}/{} {} {} {} {}",
                    e.revision,
                    kind,
                    i.namespace,
                    i.service,
                    i.instance_id,
                    i.address,
                    health_name(i.health),
                    i.health_reason
                ),
                // One object per line, so it can be piped.
                _ => crate::output::outln!(
                    "{}",
                    json!({"revision": e.revision, "type": kind, "instance": instance_json(&i, now)})
                ),
            }
        }
        if m.snapshot && matches!(format, Format::Table) {
            crate::output::outln!("-- snapshot at revision {}; watching", m.revision);
        }
    }
}

async fn register(
    c: &mut Client,
    instance: pb::Instance,
    ttl: Option<Duration>,
    target: SocketAddr,
    detach: bool,
) -> anyhow::Result<()> {
    let name = format!(
        "{}/{} {} at {target}",
        instance.namespace, instance.service, instance.instance_id
    );
    let probe = || async {
        match tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(_)) => (pb::Health::Passing, String::new()),
            Ok(Err(e)) => (pb::Health::Critical, format!("TCP connect {target}: {e}")),
            Err(_) => (
                pb::Health::Critical,
                format!("TCP connect {target}: no answer within 1s"),
            ),
        }
    };
    let first = probe().await;
    let r = c
        .register(pb::RegisterRequest {
            instance: Some(instance),
            ttl_ms: ttl
                .map(|t| t.as_millis().min(u32::MAX as u128) as u32)
                .unwrap_or(0),
            health: first.0 as i32,
            health_reason: first.1.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "registered {name}: lease {} (ttl {} ms), {}",
        r.lease_id,
        r.ttl_ms,
        health_name(first.0 as i32)
    );
    if detach {
        return Ok(());
    }
    println!("probing and heartbeating until Ctrl-C");
    let (tx, rx) = mpsc::channel(4);
    let beat = |h: (pb::Health, String)| pb::HeartbeatRequest {
        lease_id: r.lease_id.clone(),
        health: h.0 as i32,
        reason: h.1,
    };
    tx.send(beat(first)).await.context("heartbeat stream")?;
    let mut replies = c
        .heartbeat(ReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let every = Duration::from_millis(u64::from(r.ttl_ms.max(300)) / 3);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                tx.send(beat(probe().await)).await.context("heartbeat stream closed")?;
            }
            reply = replies.message() => match reply.map_err(status_error)? {
                Some(h) if !h.known => bail!("the control plane no longer knows the lease: {}", h.error),
                Some(h) if !h.error.is_empty() => bail!("heartbeat refused: {}", h.error),
                Some(_) => {}
                None => bail!("the control plane ended the heartbeat stream"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    c.deregister(pb::DeregisterRequest {
        lease_id: r.lease_id.clone(),
    })
    .await
    .map_err(status_error)?;
    println!("deregistered {name}");
    Ok(())
}
