//! `weftctl queue ...`: the queue service as operators use it, with the
//! admin certificate (which every QueuePolicy lets through).

use crate::output::{table, value, Format};
use crate::{status_error, Conn};
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use std::time::SystemTime;
use xds_proto::v1::{self as pb, queue_client::QueueClient};

#[derive(Subcommand)]
pub enum QueueCommand {
    /// The queues of a namespace (a pubsub topic: one line per
    /// subscription).
    List {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Every queue of a namespace, or one: depth by priority, waiting, in
    /// flight, bytes, oldest message age, consumers, dead-letter queue.
    Describe {
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Print messages as they arrive (acknowledging each once printed)
    /// until Ctrl-C or --count.
    Consume {
        #[command(flatten)]
        at: Target,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Do not acknowledge: the messages go back when weftctl exits.
        #[arg(long)]
        no_ack: bool,
        /// Only messages of these types (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only messages of at least this priority.
        #[arg(long, default_value = "0", value_parser = parse_priority)]
        min_priority: u32,
    },
    /// Show messages in delivery order without delivering them.
    Peek {
        #[command(flatten)]
        at: Target,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Remove every queued message (deliveries in flight stay).
    Purge {
        #[command(flatten)]
        at: Target,
        /// Confirm: purged messages cannot be brought back.
        #[arg(long)]
        yes: bool,
    },
    /// The dead letters that came from a queue; `dlq redrive NAME` moves
    /// them back.
    Dlq(DlqArgs),
    /// Publish one message (payload from --data, or stdin with --data -).
    Publish {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The message type, e.g. ioc.enrichment.request.
        #[arg(long = "type", default_value = "")]
        kind: String,
        /// 0-9, or LOW, NORMAL, HIGH, CRITICAL.
        #[arg(long, default_value = "NORMAL", value_parser = parse_priority)]
        priority: u32,
        /// Dedup / ordering key.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        data: String,
        /// Deliver after this long, e.g. 30s.
        #[arg(long, value_parser = xds_proto::units::parse_duration)]
        delay: Option<std::time::Duration>,
    },
}

/// A queue, or one subscription of a pubsub topic.
#[derive(clap::Args, Clone)]
pub struct Target {
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// pubsub: the subscription.
    #[arg(short = 's', long, default_value = "")]
    subscription: String,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: Option<DlqCommand>,
    #[arg(required = true)]
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[arg(short = 's', long, default_value = "")]
    subscription: String,
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Move dead letters back into the queue they came from (delivery
    /// count reset).
    Redrive {
        #[command(flatten)]
        at: Target,
        /// Only these dead-letter ids (repeatable; default: all).
        #[arg(long = "id")]
        ids: Vec<u64>,
    },
}

/// LOW 1, NORMAL 4, HIGH 7, CRITICAL 9, or a number 0-9.
fn parse_priority(s: &str) -> Result<u32, String> {
    match s.to_ascii_uppercase().as_str() {
        "LOW" => Ok(1),
        "NORMAL" => Ok(4),
        "HIGH" => Ok(7),
        "CRITICAL" => Ok(9),
        n => match n.parse::<u32>() {
            Ok(p) if p <= 9 => Ok(p),
            _ => Err(format!(
                "\"{s}\" is not a priority: 0-9, LOW, NORMAL, HIGH or CRITICAL"
            )),
        },
    }
}

pub async fn run(conn: &Conn, format: Format, command: QueueCommand) -> anyhow::Result<()> {
    let mut c =
        QueueClient::new(weft_mesh_tls::admin_client::channel(&conn.url, &conn.auth).await?);
    match command {
        QueueCommand::List { namespace } => list(&mut c, format, namespace).await,
        QueueCommand::Consume {
            at,
            count,
            no_ack,
            types,
            min_priority,
        } => {
            let sub = pb::Subscribe {
                namespace: at.namespace,
                queue: at.name,
                types,
                min_priority,
                // No more in flight than will be printed.
                prefetch: count.map_or(0, |n| u32::try_from(n.min(16)).unwrap_or(16)),
                max_batch: 0,
                subscription: at.subscription,
            };
            consume(&mut c, format, sub, count, !no_ack).await
        }
        QueueCommand::Peek { at, limit } => {
            let resp = c
                .peek(pb::PeekRequest {
                    namespace: at.namespace,
                    queue: at.name,
                    subscription: at.subscription,
                    limit,
                    dead_letter: false,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            messages(format, &resp.messages)
        }
        QueueCommand::Purge { at, yes } => {
            let label = target_label(&at);
            if !yes {
                anyhow::bail!(
                    "purge removes every queued message of {label} for good: add --yes to confirm"
                );
            }
            let resp = c
                .purge(pb::PurgeRequest {
                    namespace: at.namespace,
                    queue: at.name,
                    subscription: at.subscription,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if !matches!(format, Format::Table) {
                return value(format, &json!({"purged": resp.purged}));
            }
            crate::output::outln!("purged {} messages from {label}", resp.purged);
            Ok(())
        }
        QueueCommand::Dlq(args) => match args.command {
            Some(DlqCommand::Redrive { at, ids }) => {
                let label = target_label(&at);
                let resp = c
                    .redrive(pb::RedriveRequest {
                        namespace: at.namespace,
                        queue: at.name,
                        subscription: at.subscription,
                        ids,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                if !matches!(format, Format::Table) {
                    return value(format, &json!({"redriven": resp.ids}));
                }
                crate::output::outln!("moved {} dead letters back into {label}", resp.ids.len());
                Ok(())
            }
            None => {
                let resp = c
                    .peek(pb::PeekRequest {
                        namespace: args.namespace,
                        queue: args.name.unwrap_or_default(),
                        subscription: args.subscription,
                        limit: args.limit,
                        dead_letter: true,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                messages(format, &resp.messages)
            }
        },
        QueueCommand::Describe { name, namespace } => {
            let resp = c
                .describe(pb::DescribeQueueRequest {
                    namespace,
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let now = xds_proto::units::unix_ms(SystemTime::now());
            let rows: Vec<serde_json::Value> = resp
                .queues
                .iter()
                .map(|q| {
                    json!({
                        "namespace": q.namespace, "name": display_name(q), "type": q.r#type,
                        "subscription": q.subscription, "consumers": q.consumers,
                        "ready": q.ready_by_priority.iter().sum::<u64>(),
                        "readyByPriority": q.ready_by_priority,
                        "waiting": q.waiting, "inFlight": q.in_flight, "bytes": q.bytes,
                        "oldestAgeSeconds": (q.oldest_unix_ms > 0).then(|| now.saturating_sub(q.oldest_unix_ms) / 1000),
                        "deadLetter": q.dead_letter,
                    })
                })
                .collect();
            if !matches!(format, Format::Table) {
                return value(format, &serde_json::Value::Array(rows));
            }
            let mut t = table(&[
                "NAMESPACE",
                "NAME",
                "TYPE",
                "READY",
                "WAITING",
                "IN FLIGHT",
                "BYTES",
                "OLDEST",
                "CONSUMERS",
                "DEAD LETTER",
            ]);
            for r in &rows {
                t.add_row(vec![
                    r["namespace"].as_str().unwrap_or("").to_string(),
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["type"].as_str().unwrap_or("").to_string(),
                    r["ready"].to_string(),
                    r["waiting"].to_string(),
                    r["inFlight"].to_string(),
                    r["bytes"].to_string(),
                    r["oldestAgeSeconds"]
                        .as_u64()
                        .map_or("-".into(), |s| format!("{s}s")),
                    r["consumers"].to_string(),
                    r["deadLetter"]
                        .as_str()
                        .filter(|d| !d.is_empty())
                        .unwrap_or("-")
                        .to_string(),
                ]);
            }
            crate::output::outln!("{t}");
            Ok(())
        }
        QueueCommand::Publish {
            name,
            namespace,
            kind,
            priority,
            key,
            data,
            delay,
        } => {
            let payload = if data == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .context("cannot read stdin")?;
                buf
            } else {
                data.into_bytes()
            };
            let deliver_at = delay.map_or(0, |d| xds_proto::units::unix_ms(SystemTime::now() + d));
            let resp = c
                .publish(pb::PublishRequest {
                    namespace,
                    queue: name,
                    messages: vec![pb::QueueMessage {
                        r#type: kind,
                        priority,
                        key: key.unwrap_or_default(),
                        payload: payload.into(),
                        deliver_at_unix_ms: deliver_at,
                        ..Default::default()
                    }],
                    ttl_ms: 0,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let o = resp.outcomes.first().context("no outcome in the answer")?;
            let result = pb::publish_outcome::Result::try_from(o.result)
                .map(|r| r.as_str_name().to_ascii_lowercase())
                .unwrap_or_else(|_| o.result.to_string());
            let v =
                json!({"result": result, "id": o.id, "reason": o.reason, "receivers": o.receivers});
            if !matches!(format, Format::Table) {
                return value(format, &v);
            }
            if o.reason.is_empty() {
                crate::output::outln!("{result} {}", o.id);
            } else {
                crate::output::outln!("{result}: {}", o.reason);
            }
            if o.result == pb::publish_outcome::Result::Refused as i32 {
                anyhow::bail!("refused");
            }
            Ok(())
        }
    }
}

/// "topic/subscription" for a subscription's entry, else the queue name.
fn display_name(q: &pb::QueueStatus) -> String {
    if q.subscription.is_empty() {
        q.name.clone()
    } else {
        format!("{}/{}", q.name, q.subscription)
    }
}

fn target_label(at: &Target) -> String {
    if at.subscription.is_empty() {
        format!("{}/{}", at.namespace, at.name)
    } else {
        format!(
            "{}/{} subscription {}",
            at.namespace, at.name, at.subscription
        )
    }
}

async fn list(
    c: &mut QueueClient<tonic::transport::Channel>,
    format: Format,
    namespace: String,
) -> anyhow::Result<()> {
    let resp = c
        .describe(pb::DescribeQueueRequest {
            namespace,
            name: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let rows: Vec<serde_json::Value> = resp
        .queues
        .iter()
        .map(|q| {
            json!({
                "namespace": q.namespace, "name": display_name(q), "type": q.r#type,
                "ready": q.ready_by_priority.iter().sum::<u64>(),
                "inFlight": q.in_flight, "consumers": q.consumers,
            })
        })
        .collect();
    if !matches!(format, Format::Table) {
        return value(format, &serde_json::Value::Array(rows));
    }
    let mut t = table(&["NAME", "TYPE", "READY", "IN FLIGHT", "CONSUMERS"]);
    for r in &rows {
        t.add_row(vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["type"].as_str().unwrap_or("").to_string(),
            r["ready"].to_string(),
            r["inFlight"].to_string(),
            r["consumers"].to_string(),
        ]);
    }
    crate::output::outln!("{t}");
    Ok(())
}

/// A message as weftctl shows it: the payload as text when it is UTF-8,
/// else as hex.
fn message_json(m: &pb::QueueMessage, state: &str) -> serde_json::Value {
    let payload = match std::str::from_utf8(&m.payload) {
        Ok(s) => json!({"text": s}),
        Err(_) => json!({"hex": m.payload.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
    };
    json!({
        "id": m.id, "type": m.r#type, "priority": m.priority, "key": m.key,
        "headers": m.headers, "payload": payload, "deliveries": m.deliveries,
        "lastError": m.last_error, "publisher": m.publisher,
        "publishedUnixMs": m.published_unix_ms, "traceparent": m.traceparent,
        "state": state,
    })
}

fn payload_cell(m: &pb::QueueMessage) -> String {
    let text = String::from_utf8_lossy(&m.payload);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 60 {
        format!("{}…", one_line.chars().take(59).collect::<String>())
    } else {
        one_line
    }
}

fn messages(format: Format, found: &[pb::PeekedMessage]) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = found
        .iter()
        .filter_map(|p| p.message.as_ref().map(|m| message_json(m, &p.state)))
        .collect();
    if !matches!(format, Format::Table) {
        return value(format, &serde_json::Value::Array(rows));
    }
    let now = xds_proto::units::unix_ms(SystemTime::now());
    let mut t = table(&[
        "ID",
        "TYPE",
        "PRIORITY",
        "DELIVERIES",
        "STATE",
        "AGE",
        "PAYLOAD",
        "LAST ERROR",
    ]);
    for p in found {
        let Some(m) = &p.message else { continue };
        t.add_row(vec![
            m.id.to_string(),
            m.r#type.clone(),
            m.priority.to_string(),
            m.deliveries.to_string(),
            p.state.clone(),
            format!("{}s", now.saturating_sub(m.published_unix_ms) / 1000),
            payload_cell(m),
            m.last_error.clone(),
        ]);
    }
    crate::output::outln!("{t}");
    Ok(())
}

/// Subscribes and prints each delivery as it comes (a table line, or one
/// JSON object per line with -o json), acknowledging it once printed.
async fn consume(
    c: &mut QueueClient<tonic::transport::Channel>,
    format: Format,
    sub: pb::Subscribe,
    count: Option<u64>,
    ack: bool,
) -> anyhow::Result<()> {
    use pb::{consume_request::Kind as In, consume_response::Kind as Out};
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(pb::ConsumeRequest {
        kind: Some(In::Subscribe(sub)),
    })
    .await?;
    let mut stream = c
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut seen = 0u64;
    if matches!(format, Format::Table) {
        crate::output::outln!(
            "{:<8} {:<28} {:>3} {:>3}  PAYLOAD",
            "ID",
            "TYPE",
            "PRI",
            "DLV"
        );
    }
    loop {
        if count.is_some_and(|n| seen >= n) {
            break;
        }
        let next = tokio::select! {
            m = stream.message() => m.map_err(status_error)?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(resp) = next else {
            anyhow::bail!("the control plane ended the stream");
        };
        let deliveries = match resp.kind {
            Some(Out::Delivery(d)) => vec![d],
            Some(Out::Deliveries(b)) => b.items,
            Some(Out::Error(e)) => {
                eprintln!("weftctl: the queue service says: {e}");
                continue;
            }
            None => continue,
        };
        for d in deliveries {
            if count.is_some_and(|n| seen >= n) {
                break;
            }
            {
                let Some(m) = d.message else { continue };
                match format {
                    Format::Table => crate::output::outln!(
                        "{:<8} {:<28} {:>3} {:>3}  {}",
                        m.id,
                        m.r#type,
                        m.priority,
                        m.deliveries,
                        payload_cell(&m)
                    ),
                    _ => crate::output::outln!("{}", message_json(&m, "delivered")),
                }
                seen += 1;
                let settle = if ack { In::Ack(m.id) } else { In::Credit(1) };
                tx.send(pb::ConsumeRequest { kind: Some(settle) }).await?;
            }
        }
    }
    // Close our side and let the server finish: the acks sent so far are
    // applied before it ends the stream (what was delivered but not
    // printed goes back to the queue).
    drop(tx);
    let drain = async { while let Ok(Some(_)) = stream.message().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    Ok(())
}
