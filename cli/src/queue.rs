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
    /// Every queue of a namespace, or one: depth by priority, waiting, in
    /// flight, bytes, oldest message age, dead-letter queue.
    Describe {
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
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
                        "namespace": q.namespace, "name": q.name, "type": q.r#type,
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
            let v = json!({"result": result, "id": o.id, "reason": o.reason});
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
