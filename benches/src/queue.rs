//! `weft-benches queue`: the queue service's embedded store against Redis
//! Streams on the same machine, same client concurrency, same message size.
//! The server under test (weft-control, or redis-server) is pinned to core
//! 0 and this process drives it from core 1.
//!
//! Phases, each on both where it applies:
//! 1. durable publish, one message per request (batching off), C
//!    concurrent publishers: weft `Publish` (sync durability: fsync before
//!    the answer) vs `XADD` (AOF `appendfsync always`, and `everysec`);
//! 2. the same with B messages per request (weft batch publish, Redis
//!    pipelining B `XADD`s);
//! 3. consume: K consumers with credit, acking each message (weft
//!    `Consume` + ack) vs `XREADGROUP COUNT 100` + one `XACK` per read;
//! 4. weft only (Streams have no priorities): a backlog of M NORMAL
//!    messages, then CRITICAL messages at a fixed rate; publish → deliver
//!    latency p50/p99 at a consumer draining the queue, and RSS with the
//!    backlog (Redis's RSS with the same backlog beside it).

use crate::resp::{self, Reply};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_mesh_tls::admin_client::AdminAuth;
use weft_testbed::redis::{QueueStore, RedisServer};
use weft_testbed::Mesh;
use xds_proto::v1::{
    self as pb, consume_request::Kind as In, consume_response::Kind as Out,
    queue_client::QueueClient,
};

type Client = QueueClient<tonic::transport::Channel>;

#[derive(Args)]
pub struct QueueArgs {
    /// Messages per publish phase and consumed in the consume phase.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent publishers (requests in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Messages per request when batching.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Consumers in the consume phase.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// NORMAL messages queued before the priority phase.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// CRITICAL messages per second in the priority phase.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Prefetch (credit) of the priority phase's consumer: a CRITICAL
    /// message overtakes the queued backlog but not the deliveries already
    /// sent to a draining consumer.
    #[arg(long, default_value_t = 100)]
    priority_prefetch: u32,
    /// Length of the priority phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Only the backlog and priority phases of weft (quick checks).
    #[arg(long)]
    only_priority: bool,
    /// Weft's queue store: `embedded`, or `redis` (a redis-server with AOF
    /// at `appendfsync always`, pinned to core 0 beside weft-control; only
    /// the publish and consume phases, then Redis Streams alone).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Write the results as JSON here too.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const QUEUES: &str = "apiVersion: weft.dev/v1\nkind: Queue\nmetadata: {name: bench, namespace: bench}\nspec: {type: fifo, maxMessageBytes: 65536}\n---\napiVersion: weft.dev/v1\nkind: Queue\nmetadata: {name: prio, namespace: bench}\nspec: {type: priority, maxMessageBytes: 65536}\n";

pub fn run(args: QueueArgs) -> anyhow::Result<()> {
    crate::registry::pin(std::process::id(), "1")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut results = serde_json::Map::new();
    println!(
        "queue benchmark: {} B messages, {} publishers, batch {}, {} consumers; server on core 0, clients on core 1",
        args.size, args.concurrency, args.batch, args.consumers
    );
    let weft = rt.block_on(weft(&args))?;
    results.insert("weft".into(), weft);
    if args.only_priority {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    for fsync in ["always", "everysec"] {
        let r = rt.block_on(redis(&args, fsync, false))?;
        results.insert(format!("redis_{fsync}"), r);
    }
    if args.store == "embedded" {
        let r = rt.block_on(redis(&args, "everysec", true))?;
        results.insert("redis_backlog".into(), r);
    }
    let v = serde_json::Value::Object(results);
    println!("{}", serde_json::to_string_pretty(&v)?);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}

/// How long after the last publish the backlog's RSS is read (what the
/// server holds, not the request buffers of the burst it just freed).
const SETTLE: Duration = Duration::from_secs(3);

/// RSS of `pid` right after a burst and `SETTLE` later.
async fn settled_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let right_after = crate::rss_bytes(pid)?;
    tokio::time::sleep(SETTLE).await;
    Ok((right_after, crate::rss_bytes(pid)?))
}

fn payload(size: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; size])
}

fn rate(n: u64, took: Duration) -> f64 {
    (n as f64 / took.as_secs_f64()).round()
}

/// A bench mesh whose directory (the queue log: ~1 GB after the backlog
/// phase) is removed once its processes are stopped.
struct BenchMesh(Option<Mesh>);

impl std::ops::Deref for BenchMesh {
    type Target = Mesh;
    fn deref(&self) -> &Mesh {
        self.0.as_ref().expect("the mesh lives until drop")
    }
}

impl Drop for BenchMesh {
    fn drop(&mut self) {
        if let Some(mesh) = self.0.take() {
            let dir = mesh.dir.clone();
            drop(mesh);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh control plane pinned to core 0 with the bench queues, and four
/// admin clients.
async fn weft_mesh(
    name: &str,
    store: QueueStore,
) -> anyhow::Result<(BenchMesh, Option<RedisServer>, u32, Vec<Client>)> {
    let (mesh, redis) = Mesh::start_with_queue_store(name, store, &[]);
    let mesh = BenchMesh(Some(mesh));
    mesh.apply("queue-bench.yaml", QUEUES)?;
    let pid = mesh
        .control
        .as_ref()
        .and_then(|p| p.pid())
        .context("weft-control is not running")?;
    crate::registry::pin(pid, "0")?;
    if let Some(r) = &redis {
        crate::registry::pin(r.pid().context("redis-server is not running")?, "0")?;
    }
    let auth = AdminAuth::Certs(mesh.pki().admin_certs);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(QueueClient::new(
            weft_mesh_tls::admin_client::channel(&mesh.cp_url(), &auth).await?,
        ));
    }
    Ok((mesh, redis, pid, clients))
}

fn store_of(args: &QueueArgs) -> anyhow::Result<QueueStore> {
    match args.store.as_str() {
        "embedded" => Ok(QueueStore::Embedded),
        "redis" => Ok(QueueStore::Redis),
        other => anyhow::bail!("--store {other:?}: expected embedded or redis"),
    }
}

async fn weft(args: &QueueArgs) -> anyhow::Result<serde_json::Value> {
    if args.only_priority {
        return weft_backlog(args).await;
    }
    let store = store_of(args)?;
    let (mesh, redis, _, clients) = weft_mesh("queue-bench", store).await?;
    let single = weft_publish(&clients, args, "bench", 1, 4).await?;
    let folded = records_per_commit(&mesh).await;
    println!("weft publish, 1 per request: {single} msg/s ({folded:.1} records per log commit)");
    let batched = weft_publish(&clients, args, "bench", args.batch, 4).await?;
    println!("weft publish, {} per request: {batched} msg/s", args.batch);
    let consumed = weft_consume(&clients, args.messages, args.consumers, 1).await?;
    println!("weft consume + ack, one per message: {consumed} msg/s");
    let consumed_batched = weft_consume(&clients, args.messages, args.consumers, 100).await?;
    println!("weft consume + ack, up to 100 per response/request: {consumed_batched} msg/s");
    drop(clients);
    drop(mesh);
    drop(redis);
    let mut out = json!({
        "store": args.store,
        "publish_single_msgs_per_s": single,
        "publish_single_records_per_commit": (folded * 10.0).round() / 10.0,
        "publish_batch_msgs_per_s": batched,
        "consume_msgs_per_s": consumed,
        "consume_batch_msgs_per_s": consumed_batched,
    });
    if store == QueueStore::Redis {
        return Ok(out);
    }
    if let (Some(o), serde_json::Value::Object(b)) =
        (out.as_object_mut(), weft_backlog(args).await?)
    {
        o.extend(b);
    }
    Ok(out)
}

/// Records per group commit of the embedded log so far (0 for Redis),
/// from the control plane's metrics once they refresh (every second).
async fn records_per_commit(mesh: &Mesh) -> f64 {
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, text) = mesh.admin_get(mesh.control_admin, "/metrics");
    let commits = weft_testbed::metric(&text, "weft_queue_log_commits_total", "").unwrap_or(0.0);
    let records = weft_testbed::metric(&text, "weft_queue_log_records_total", "").unwrap_or(0.0);
    if commits > 0.0 {
        records / commits
    } else {
        0.0
    }
}

/// RSS with the backlog, in a fresh control plane, and the priority
/// latency over it.
async fn weft_backlog(args: &QueueArgs) -> anyhow::Result<serde_json::Value> {
    let (_mesh, _redis, pid, clients) =
        weft_mesh("queue-bench-backlog", QueueStore::Embedded).await?;
    let rss_before = crate::rss_bytes(pid)?;
    let backlog_args = QueueArgs {
        messages: args.backlog,
        batch: 500,
        ..args.clone_for_backlog()
    };
    let started = Instant::now();
    weft_publish(&clients, &backlog_args, "prio", 500, 4).await?;
    let took = started.elapsed();
    let (rss_after, rss) = settled_rss(pid).await?;
    println!(
        "weft backlog of {} NORMAL in {:.1}s; RSS {:.0} MB {SETTLE:?} later, {:.0} MB right after (idle {:.0} MB)",
        args.backlog,
        took.as_secs_f64(),
        rss / 1e6,
        rss_after / 1e6,
        rss_before / 1e6
    );
    let (p50, p99, n) = weft_priority(&clients, args, true).await?;
    println!("weft CRITICAL at {}/s, backlog sitting: publish→deliver p50 {p50:.2} ms, p99 {p99:.2} ms ({n} timed)", args.rate);
    let (d50, d99, dn) = weft_priority(&clients, args, false).await?;
    println!("weft CRITICAL at {}/s, one consumer draining the backlog too: p50 {d50:.2} ms, p99 {d99:.2} ms ({dn} timed)", args.rate);
    Ok(json!({
        "backlog_messages": args.backlog,
        "idle_rss_mb": (rss_before / 1e6).round(),
        "backlog_rss_mb": (rss / 1e6).round(),
        "backlog_rss_right_after_mb": (rss_after / 1e6).round(),
        "priority_p50_ms": p50,
        "priority_p99_ms": p99,
        "priority_timed": n,
        "priority_draining_p50_ms": d50,
        "priority_draining_p99_ms": d99,
    }))
}

impl QueueArgs {
    fn clone_for_backlog(&self) -> QueueArgs {
        QueueArgs {
            messages: self.messages,
            size: self.size,
            concurrency: self.concurrency,
            batch: self.batch,
            consumers: self.consumers,
            backlog: self.backlog,
            rate: self.rate,
            priority_prefetch: self.priority_prefetch,
            seconds: self.seconds,
            only_priority: self.only_priority,
            store: self.store.clone(),
            out: None,
        }
    }
}

/// Publishes `args.messages` to `queue` from `args.concurrency` tasks,
/// `batch` per request, at `priority`; messages per second.
async fn weft_publish(
    clients: &[Client],
    args: &QueueArgs,
    queue: &str,
    batch: usize,
    priority: u32,
) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicU64::new(args.messages));
    let body = payload(args.size);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let mut c = clients[i % clients.len()].clone();
        let (left, body, queue) = (left.clone(), body.clone(), queue.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(n) = take(&left, batch as u64) else {
                    return anyhow::Ok(());
                };
                let messages = (0..n)
                    .map(|_| pb::QueueMessage {
                        r#type: "bench".into(),
                        priority,
                        payload: body.clone(),
                        ..Default::default()
                    })
                    .collect();
                let out = c
                    .publish(pb::PublishRequest {
                        namespace: "bench".into(),
                        queue: queue.clone(),
                        messages,
                        ttl_ms: 0,
                    })
                    .await?
                    .into_inner();
                if out.outcomes.iter().any(|o| o.result != 0) {
                    bail!("a publish was not enqueued: {:?}", out.outcomes.first());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(args.messages, started.elapsed()))
}

/// Takes up to `n` from the shared count; None when it is used up.
fn take(left: &AtomicU64, n: u64) -> Option<u64> {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
        (l > 0).then(|| l - n.min(l))
    })
    .ok()
    .map(|before| n.min(before))
}

type Stream = (
    mpsc::Sender<pb::ConsumeRequest>,
    tonic::Streaming<pb::ConsumeResponse>,
);

/// One consumer stream of messages at or above `min_priority`.
async fn open_filtered(
    c: &mut Client,
    queue: &str,
    prefetch: u32,
    min_priority: u32,
) -> anyhow::Result<Stream> {
    subscribe(
        c,
        pb::Subscribe {
            namespace: "bench".into(),
            queue: queue.into(),
            prefetch,
            min_priority,
            ..Default::default()
        },
    )
    .await
}

async fn subscribe(c: &mut Client, sub: pb::Subscribe) -> anyhow::Result<Stream> {
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::ConsumeRequest {
        kind: Some(In::Subscribe(sub)),
    })
    .await?;
    let stream = c.consume(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

/// One consumer stream: its request sender and responses.
async fn open(
    c: &mut Client,
    queue: &str,
    prefetch: u32,
    max_batch: u32,
) -> anyhow::Result<Stream> {
    subscribe(
        c,
        pb::Subscribe {
            namespace: "bench".into(),
            queue: queue.into(),
            prefetch,
            max_batch,
            ..Default::default()
        },
    )
    .await
}

/// `consumers` streams, prefetch 1000, acking as they go: one delivery
/// per response and one ack per request (`batch` 1), or up to `batch` of
/// each per message.
async fn weft_consume(
    clients: &[Client],
    total: u64,
    consumers: usize,
    batch: u32,
) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicU64::new(total));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..consumers {
        let mut c = clients[i % clients.len()].clone();
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = open(&mut c, "bench", 1000, batch).await?;
            while left.load(Ordering::Relaxed) > 0 {
                let Ok(m) = tokio::time::timeout(Duration::from_secs(10), rx.message()).await
                else {
                    bail!("no delivery within 10 s");
                };
                let ids: Vec<u64> = match m?.and_then(|r| r.kind) {
                    Some(Out::Delivery(d)) => d.message.map(|m| m.id).into_iter().collect(),
                    Some(Out::Deliveries(b)) => b
                        .items
                        .into_iter()
                        .filter_map(|d| d.message.map(|m| m.id))
                        .collect(),
                    Some(Out::Error(e)) => bail!("consume: {e}"),
                    None => bail!("the consume stream ended"),
                };
                // Several consumers race for the last ones: never below zero.
                take(&left, ids.len() as u64);
                let kind = if batch > 1 {
                    In::Acks(pb::Acks { ids })
                } else {
                    In::Ack(ids.first().copied().unwrap_or_default())
                };
                tx.send(pb::ConsumeRequest { kind: Some(kind) }).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(total, started.elapsed()))
}

/// CRITICAL messages at `args.rate`/s (10 per request every ms) into
/// `prio` while one consumer (prefetch `args.priority_prefetch`) drains it; latency from the
/// publish call to the delivery, for the CRITICAL ones.
/// `critical_only`: the consumer takes only CRITICAL messages (min
/// priority 9) and the backlog sits; else it drains the backlog too and
/// each CRITICAL message must overtake it.
async fn weft_priority(
    clients: &[Client],
    args: &QueueArgs,
    critical_only: bool,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut c = clients[0].clone();
    let (tx, mut rx) = open_filtered(
        &mut c,
        "prio",
        args.priority_prefetch,
        if critical_only { 9 } else { 0 },
    )
    .await?;
    let epoch = Instant::now();
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = tokio::spawn({
        let (lat, stop) = (lat.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(Some(m))) =
                    tokio::time::timeout(Duration::from_millis(200), rx.message()).await
                else {
                    continue;
                };
                let Some(Out::Delivery(d)) = m.kind else {
                    continue;
                };
                let Some(msg) = d.message else { continue };
                if msg.priority == 9 {
                    let sent = u64::from_le_bytes(msg.payload[..8].try_into().unwrap_or_default());
                    let now = epoch.elapsed().as_micros() as u64;
                    lat.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(now.saturating_sub(sent));
                }
                if tx
                    .send(pb::ConsumeRequest {
                        kind: Some(In::Ack(msg.id)),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let per_tick = (args.rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut inflight = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let mut p = clients[inflight.len() % clients.len()].clone();
        let mut body = vec![b'c'; args.size.max(8)];
        body[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
        let body = bytes::Bytes::from(body);
        inflight.push(tokio::spawn(async move {
            let messages = (0..per_tick)
                .map(|_| pb::QueueMessage {
                    r#type: "critical".into(),
                    priority: 9,
                    payload: body.clone(),
                    ..Default::default()
                })
                .collect();
            p.publish(pb::PublishRequest {
                namespace: "bench".into(),
                queue: "prio".into(),
                messages,
                ttl_ms: 0,
            })
            .await
        }));
    }
    for t in inflight {
        t.await??;
    }
    // Let the last CRITICAL ones through (the backlog keeps the consumer
    // busy with NORMAL ones after them).
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    consumer.await?;
    let mut lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    if lat.is_empty() {
        bail!("no CRITICAL message was timed");
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    eprintln!(
        "  (p90 {:.2} ms, p95 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms)",
        q(0.9),
        q(0.95),
        q(0.999),
        q(1.0)
    );
    Ok((q(0.5), q(0.99), lat.len()))
}

/// redis-server with AOF at `fsync`, pinned to core 0, in a temporary
/// directory; the same phases over Redis Streams.
/// With `backlog`, only the backlog's RSS is measured.
async fn redis(args: &QueueArgs, fsync: &str, backlog: bool) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!(
        "weft-queue-bench-redis-{}-{fsync}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.to_str().unwrap_or("."),
            "--appendonly",
            "yes",
            "--appendfsync",
            fsync,
            "--save",
            "",
            "--protected-mode",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let result = redis_phases(args, fsync, port, child.id(), backlog).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn redis_phases(
    args: &QueueArgs,
    fsync: &str,
    port: u16,
    pid: u32,
    backlog: bool,
) -> anyhow::Result<serde_json::Value> {
    crate::registry::pin(pid, "0")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut admin = None;
    for _ in 0..100 {
        if let Ok(c) = resp::Conn::connect(addr).await {
            admin = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut admin = admin.context("redis-server did not start")?;
    if backlog {
        let idle = crate::rss_bytes(pid)?;
        let args = QueueArgs {
            messages: args.backlog,
            ..args.clone_for_backlog()
        };
        redis_publish(addr, &args, b"backlog", 500).await?;
        let (rss_after, rss) = settled_rss(pid).await?;
        println!(
            "redis backlog of {} in one stream: RSS {:.0} MB {SETTLE:?} later, {:.0} MB right after (idle {:.0} MB)",
            args.messages,
            rss / 1e6,
            rss_after / 1e6,
            idle / 1e6
        );
        return Ok(json!({
            "backlog_messages": args.messages,
            "idle_rss_mb": (idle / 1e6).round(),
            "backlog_rss_mb": (rss / 1e6).round(),
            "backlog_rss_right_after_mb": (rss_after / 1e6).round(),
        }));
    }
    admin
        .call(&[b"XGROUP", b"CREATE", b"bench", b"g", b"0", b"MKSTREAM"])
        .await?;
    let single = redis_publish(addr, args, b"bench", 1).await?;
    println!("redis ({fsync}) XADD, 1 per round trip: {single} msg/s");
    let batched = redis_publish(addr, args, b"bench", args.batch).await?;
    println!(
        "redis ({fsync}) XADD, {} pipelined: {batched} msg/s",
        args.batch
    );
    let consumed = redis_consume(addr, args.messages, args.consumers).await?;
    println!("redis ({fsync}) XREADGROUP COUNT 100 + XACK of those: {consumed} msg/s");
    Ok(json!({
        "publish_single_msgs_per_s": single,
        "publish_batch_msgs_per_s": batched,
        "consume_batch_msgs_per_s": consumed,
    }))
}

async fn redis_publish(
    addr: SocketAddr,
    args: &QueueArgs,
    stream: &'static [u8],
    batch: usize,
) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicU64::new(args.messages));
    let body = payload(args.size);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (left, body) = (left.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = resp::Conn::connect(addr).await?;
            while let Some(n) = take(&left, batch as u64) {
                for _ in 0..n {
                    c.push(&[b"XADD", stream, b"*", b"d", &body]);
                }
                c.flush(n as usize).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(args.messages, started.elapsed()))
}

async fn redis_consume(addr: SocketAddr, total: u64, consumers: usize) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicU64::new(total));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..consumers {
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = resp::Conn::connect(addr).await?;
            let name = format!("c{i}");
            while left.load(Ordering::Relaxed) > 0 {
                let reply = c
                    .call(&[
                        b"XREADGROUP",
                        b"GROUP",
                        b"g",
                        name.as_bytes(),
                        b"COUNT",
                        b"100",
                        b"STREAMS",
                        b"bench",
                        b">",
                    ])
                    .await?;
                let ids = resp::stream_ids(&reply);
                if ids.is_empty() {
                    if reply == Reply::Array(None) {
                        bail!("the stream ran dry before {total} were consumed");
                    }
                    continue;
                }
                let mut cmd: Vec<&[u8]> = vec![b"XACK", b"bench", b"g"];
                cmd.extend(ids.iter().map(Vec::as_slice));
                c.call(&cmd).await?;
                left.fetch_sub(
                    (ids.len() as u64).min(left.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(total, started.elapsed()))
}
