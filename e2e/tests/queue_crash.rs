//! Crash safety of the queue stores: a publisher loop and a consumer loop
//! run while the store is killed with SIGKILL at random moments 20 times:
//! the control plane with the embedded store, Redis (AOF, `appendfsync
//! always`, restarted on its files) with the Redis store. Afterwards every
//! message whose publish was acknowledged has been delivered (duplicates
//! are allowed and counted, loss is not), and FIFO order holds for first
//! deliveries.

#[path = "common/workload.rs"]
mod workload;

#[path = "common/queue.rs"]
mod queue;

use queue::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_testbed::redis::QueueStore;
use weft_testbed::*;
use xds_proto::v1::{self as pb, consume_request::Kind as In};

const CONFIG: &str = "\
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: ledger, namespace: intel}
spec: {type: fifo, ackTimeout: 2s}
---
apiVersion: weft.dev/v1
kind: QueuePolicy
metadata: {name: ledger, namespace: intel}
spec:
  queues: [ledger]
  rules:
  - permissions: [publish, consume]
    from: {namespaces: [intel]}
";

const KILLS: usize = 20;
const BATCH: u64 = 5;
/// The publisher stops after this many messages even if the kills are slow.
const MAX_MESSAGES: u64 = 200_000;

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Seen {
    /// Sequence number → times delivered.
    deliveries: BTreeMap<u64, u32>,
    /// Sequence numbers in the order of their first delivery.
    first_order: Vec<u64>,
}

#[test]
fn twenty_kill_9s_under_load_lose_no_acknowledged_publish_and_keep_fifo_order() {
    crash_loop(QueueStore::Embedded);
}

/// An ack lost with Redis leaves its delivery in flight until the 2 s ack
/// timeout: a duplicate, never a loss.
#[test]
fn twenty_kill_9s_of_redis_under_load_lose_no_acknowledged_publish_and_keep_fifo_order() {
    crash_loop(QueueStore::Redis);
}

fn crash_loop(store: QueueStore) {
    let (mut mesh, mut redis) =
        Mesh::start_with_queue_store(&format!("queue-crashloop-{store:?}"), store, &[]);
    mesh.apply("queues.yaml", CONFIG).expect("apply");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("queue crash loop seed {seed}");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (publisher, consumer) = rt.block_on(async {
        (
            workload(&mesh, "intel", "publisher").await,
            workload(&mesh, "intel", "consumer").await,
        )
    });
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::new(Mutex::new(Seen::default()));

    // Publisher: batches of sequence numbers; a batch counts only once the
    // control plane acknowledged it. A failed batch is retried as new
    // messages (it may have been stored: that is a duplicate, not a loss).
    let pub_task = rt.spawn({
        let (stop, acknowledged, mut c) = (stop.clone(), acknowledged.clone(), publisher);
        async move {
            let mut next = 0u64;
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) && next < MAX_MESSAGES {
                let batch: Vec<pb::QueueMessage> = (next..next + BATCH)
                    .map(|n| message("ledger.entry", 4, &n.to_string()))
                    .collect();
                match tokio::time::timeout(Duration::from_secs(5), publish(&mut c, "ledger", batch))
                    .await
                {
                    Ok(Ok(outcomes)) => {
                        assert!(
                            outcomes
                                .iter()
                                .all(|o| o.result == pb::publish_outcome::Result::Enqueued as i32),
                            "{outcomes:?}"
                        );
                        acknowledged.lock().unwrap().extend(next..next + BATCH);
                        next += BATCH;
                    }
                    _ => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            failures
        }
    });

    // Consumer: acks every delivery; reconnects whenever the stream breaks.
    let con_task = rt.spawn({
        let (stop, seen, mut c) = (stop.clone(), seen.clone(), consumer);
        async move {
            let mut quiet_since = Instant::now();
            loop {
                let Ok(Ok(mut stream)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    Consumer::open(&mut c, "ledger", 64),
                )
                .await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
                    let got =
                        tokio::time::timeout(Duration::from_millis(500), stream.rx.message()).await;
                    match got {
                        Ok(Ok(Some(pb::ConsumeResponse {
                            kind: Some(pb::consume_response::Kind::Delivery(d)),
                        }))) => {
                            let Some(m) = d.message else { continue };
                            let n: u64 = String::from_utf8_lossy(&m.payload)
                                .parse()
                                .expect("a sequence number");
                            {
                                let mut guard = seen.lock().unwrap();
                                let s = &mut *guard;
                                let count = s.deliveries.entry(n).or_insert(0);
                                if *count == 0 {
                                    s.first_order.push(n);
                                }
                                *count += 1;
                            }
                            quiet_since = Instant::now();
                            if stream
                                .tx
                                .send(pb::ConsumeRequest {
                                    kind: Some(In::Ack(m.id)),
                                })
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(Ok(Some(_))) => {}
                        // Stream ended or broke: the control plane died.
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                        Err(_) => {
                            if stop.load(Ordering::Relaxed)
                                && quiet_since.elapsed() > Duration::from_secs(3)
                            {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let started = Instant::now();
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        match &mut redis {
            None => {
                mesh.kill_control();
                std::thread::sleep(Duration::from_millis(rng.below(50)));
                mesh.start_control();
            }
            Some(r) => {
                r.kill();
                std::thread::sleep(Duration::from_millis(rng.below(50)));
                r.restart().expect("redis restarts on its files");
            }
        }
    }
    // Run a little after the last restart, then stop publishing and drain.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failures = rt.block_on(async {
        let failures = tokio::time::timeout(Duration::from_secs(30), pub_task)
            .await
            .expect("publisher stops")
            .expect("publisher task");
        tokio::time::timeout(Duration::from_secs(60), con_task)
            .await
            .expect("consumer drains")
            .expect("consumer task");
        failures
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    let seen = seen.lock().unwrap();
    let lost: Vec<u64> = acknowledged
        .iter()
        .filter(|n| !seen.deliveries.contains_key(n))
        .copied()
        .collect();
    let duplicates: u32 = seen.deliveries.values().map(|c| c - 1).sum();
    eprintln!(
        "{store:?}: {KILLS} kills in {:?}: {} publishes acknowledged, {} failed batches retried, {} distinct delivered, {duplicates} duplicate deliveries",
        started.elapsed(),
        acknowledged.len(),
        failures,
        seen.deliveries.len()
    );
    assert!(
        acknowledged.len() as u64 >= 20 * BATCH,
        "the publisher made progress between kills"
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?} (seed {seed})"
    );
    // FIFO: first deliveries come in publish order. A sequence number can
    // appear out of place only as the retry of a batch that failed (its
    // first copy may have been stored), never by reordering stored ones.
    let out_of_order: Vec<(u64, u64)> = seen
        .first_order
        .windows(2)
        .filter(|w| w[1] < w[0] && acknowledged.contains(&w[1]))
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        out_of_order.is_empty(),
        "FIFO broken: {out_of_order:?} (seed {seed})"
    );
}
