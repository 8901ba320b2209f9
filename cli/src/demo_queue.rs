//! The demo's queue flow: threat-intel enrichment through the mesh's queue
//! service. A `feed` workload publishes `ioc.enrichment.request` messages
//! (indicators: example domains and file hashes) to the priority queue
//! `ioc-enrichment`; an `enricher` workload consumes them, publishes an
//! `ioc.enrichment.result` to `ioc-results` and acks. One poison request
//! (an indicator nobody can parse) is nacked on every delivery and ends in
//! `ioc-enrichment-dlq` after its three allowed deliveries. Each workload
//! calls the queue service with its own mesh certificate; a QueuePolicy
//! grants exactly what each may do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_proxy::identity::{workload_channel, Credential, WorkloadIdentity};
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1::{
    self as pb, admin_client::AdminClient, consume_request::Kind as In,
    consume_response::Kind as Out, queue_client::QueueClient,
};

pub const NAMESPACE: &str = "demo";
pub const REQUESTS: &str = "ioc-enrichment";
pub const DEAD_LETTERS: &str = "ioc-enrichment-dlq";
pub const RESULTS: &str = "ioc-results";

/// The queues and who may use them.
pub const CONFIG: &str = "\
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: ioc-enrichment, namespace: demo}
spec:
  type: priority
  retry: {maxDeliveries: 3, backoff: {type: exponential, initial: 200ms, max: 2s}}
  deadLetter: {queue: ioc-enrichment-dlq}
  ackTimeout: 30s
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: ioc-enrichment-dlq, namespace: demo}
spec: {type: fifo}
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: ioc-results, namespace: demo}
spec: {type: fifo, messageTtl: 1h}
---
apiVersion: weft.dev/v1
kind: QueuePolicy
metadata: {name: enrichment-publishers, namespace: demo}
spec:
  queues: [ioc-enrichment]
  rules:
  - permissions: [publish]
    from: {identities: ['spiffe://cluster.local/ns/demo/sa/feed']}
  - permissions: [consume]
    from: {identities: ['spiffe://cluster.local/ns/demo/sa/enricher']}
---
apiVersion: weft.dev/v1
kind: QueuePolicy
metadata: {name: enrichment-results, namespace: demo}
spec:
  queues: [ioc-results]
  rules:
  - permissions: [publish]
    from: {identities: ['spiffe://cluster.local/ns/demo/sa/enricher']}
";

/// What the flow did so far.
#[derive(Default)]
pub struct FlowStats {
    pub requests: AtomicU64,
    pub results: AtomicU64,
    /// Deliveries of the poison message the enricher rejected.
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
}

pub struct Flow {
    pub stats: Arc<FlowStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Held so the workloads' certificates stay in use.
    _identities: Vec<Arc<WorkloadIdentity>>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

type Client = QueueClient<tonic::transport::Channel>;

/// A client for `sa` in the demo namespace, with its own certificate.
async fn workload(
    admin: &mut AdminClient<tonic::transport::Channel>,
    cp_url: &str,
    bundle_pem: &str,
    sa: &str,
) -> anyhow::Result<(Arc<WorkloadIdentity>, Client)> {
    let token = admin
        .create_token(pb::CreateTokenRequest {
            namespace: NAMESPACE.into(),
            service_account: sa.into(),
            ttl_seconds: 3600,
        })
        .await
        .map_err(|e| anyhow::anyhow!("create token: {}", e.message()))?
        .into_inner()
        .token;
    let (identity, channel) = workload_channel(
        SpiffeId::new("cluster.local", NAMESPACE, sa)?,
        format!("{sa}-0"),
        cp_url,
        Credential::Token(token),
        bundle_pem,
        Duration::from_secs(20),
    )
    .await?;
    Ok((identity, QueueClient::new(channel)))
}

/// Starts the feed and the enricher.
pub async fn start(
    admin: &mut AdminClient<tonic::transport::Channel>,
    cp_url: &str,
    bundle_pem: &str,
) -> anyhow::Result<Flow> {
    let (feed_id, feed) = workload(admin, cp_url, bundle_pem, "feed").await?;
    let (enricher_id, enricher) = workload(admin, cp_url, bundle_pem, "enricher").await?;
    let stats = Arc::new(FlowStats::default());
    let tasks = vec![
        tokio::spawn(produce(feed, stats.clone())),
        tokio::spawn(enrich(enricher, stats.clone())),
    ];
    Ok(Flow {
        stats,
        tasks,
        _identities: vec![feed_id, enricher_id],
    })
}

fn request(indicator: &str, kind: &str, priority: u32) -> pb::QueueMessage {
    pb::QueueMessage {
        r#type: "ioc.enrichment.request".into(),
        priority,
        key: format!("{kind}:{indicator}"),
        payload: serde_json::json!({"indicator": indicator, "kind": kind})
            .to_string()
            .into_bytes()
            .into(),
        ..Default::default()
    }
}

async fn publish(c: &mut Client, queue: &str, m: pb::QueueMessage) -> Result<(), tonic::Status> {
    c.publish(pb::PublishRequest {
        namespace: NAMESPACE.into(),
        queue: queue.into(),
        messages: vec![m],
        ttl_ms: 0,
    })
    .await
    .map(drop)
}

/// The feed: one poison request first, then an indicator every 400 ms
/// (every fifth one HIGH priority).
async fn produce(mut c: Client, stats: Arc<FlowStats>) {
    let poison = request("%%% not an indicator %%%", "domain", 4);
    if publish(&mut c, REQUESTS, poison).await.is_ok() {
        stats.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    loop {
        tick.tick().await;
        n += 1;
        let m = if n.is_multiple_of(2) {
            let hash = format!("{:064x}", u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            request(&hash, "sha256", 4)
        } else {
            request(
                &format!("c2-{n}.evil.example"),
                "domain",
                if n.is_multiple_of(5) { 7 } else { 4 },
            )
        };
        match publish(&mut c, REQUESTS, m).await {
            Ok(()) => stats.requests.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The verdict on one request, or why it cannot be enriched.
fn verdict(payload: &[u8]) -> Result<serde_json::Value, String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let indicator = v["indicator"].as_str().unwrap_or_default();
    let valid = match v["kind"].as_str() {
        Some("domain") => {
            !indicator.is_empty()
                && indicator
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        Some("sha256") => indicator.len() == 64 && indicator.chars().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    };
    if !valid {
        return Err(format!("unparseable indicator {indicator:?}"));
    }
    let score = indicator.bytes().map(u64::from).sum::<u64>() % 100;
    Ok(serde_json::json!({
        "indicator": indicator,
        "verdict": if score > 50 { "malicious" } else { "benign" },
        "score": score,
    }))
}

/// The enricher: each request becomes a result (then acked); one it cannot
/// parse is nacked with the reason (retried, then dead-lettered).
async fn enrich(mut c: Client, stats: Arc<FlowStats>) {
    loop {
        if enrich_stream(&mut c, &stats).await.is_err() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn enrich_stream(c: &mut Client, stats: &FlowStats) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::ConsumeRequest {
        kind: Some(In::Subscribe(pb::Subscribe {
            namespace: NAMESPACE.into(),
            queue: REQUESTS.into(),
            types: vec!["ioc.enrichment.request".into()],
            prefetch: 8,
            ..Default::default()
        })),
    })
    .await?;
    let mut stream = c.consume(ReceiverStream::new(rx)).await?.into_inner();
    let mut results = c.clone();
    while let Some(resp) = stream.message().await? {
        let Some(Out::Delivery(d)) = resp.kind else {
            continue;
        };
        let Some(m) = d.message else { continue };
        let settle = match verdict(&m.payload) {
            Ok(v) => {
                let result = pb::QueueMessage {
                    r#type: "ioc.enrichment.result".into(),
                    key: m.key.clone(),
                    payload: v.to_string().into_bytes().into(),
                    traceparent: m.traceparent.clone(),
                    ..Default::default()
                };
                match publish(&mut results, RESULTS, result).await {
                    Ok(()) => {
                        stats.results.fetch_add(1, Ordering::Relaxed);
                        In::Ack(m.id)
                    }
                    Err(e) => In::Nack(pb::Nack {
                        id: m.id,
                        requeue: true,
                        error: format!("could not publish the result: {}", e.message()),
                    }),
                }
            }
            Err(why) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                In::Nack(pb::Nack {
                    id: m.id,
                    requeue: true,
                    error: why,
                })
            }
        };
        tx.send(pb::ConsumeRequest { kind: Some(settle) }).await?;
    }
    Ok(())
}

/// One line on the queues: requests in, results out, dead letters.
pub async fn summary(
    queue: &mut Client,
    stats: &FlowStats,
) -> Result<(String, u64, u64), tonic::Status> {
    let described = queue
        .describe(pb::DescribeQueueRequest {
            namespace: NAMESPACE.into(),
            name: String::new(),
        })
        .await?
        .into_inner();
    let depth = |name: &str| {
        described
            .queues
            .iter()
            .find(|q| q.name == name)
            .map_or(0, |q| {
                q.ready_by_priority.iter().sum::<u64>() + q.waiting + q.in_flight
            })
    };
    let dead = depth(DEAD_LETTERS);
    let results = stats.results.load(Ordering::Relaxed);
    Ok((
        format!(
            "queue: {} requests published → {results} results in {RESULTS} ({} waiting); {} queued in {REQUESTS}; dead letters: {dead} (poison rejected {}×)",
            stats.requests.load(Ordering::Relaxed),
            depth(RESULTS),
            depth(REQUESTS),
            stats.rejected.load(Ordering::Relaxed),
        ),
        results,
        dead,
    ))
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn the_enricher_scores_valid_indicators_and_rejects_the_poison_one() {
        let ok = verdict(br#"{"indicator":"c2-1.evil.example","kind":"domain"}"#).unwrap();
        assert_eq!(ok["indicator"], "c2-1.evil.example");
        assert!(ok["verdict"] == "malicious" || ok["verdict"] == "benign");
        let hash = "a".repeat(64);
        assert!(verdict(format!(r#"{{"indicator":"{hash}","kind":"sha256"}}"#).as_bytes()).is_ok());
        let e =
            verdict(br#"{"indicator":"%%% not an indicator %%%","kind":"domain"}"#).unwrap_err();
        assert!(e.contains("unparseable"), "{e}");
        assert!(verdict(b"not json").is_err());
    }
}
