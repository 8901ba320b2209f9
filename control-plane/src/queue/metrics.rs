//! The queue service's Prometheus metrics: counters on every request path,
//! and per-queue gauges (depth by priority, waiting, in flight, bytes,
//! oldest age, consumers) refreshed by the clock loop. `queue` labels are
//! "<namespace>/<name>" ("<namespace>/<topic>/<subscription>" for pubsub).

use super::backend::Backend;

/// Publish outcomes, `result` = enqueued | deduplicated | refused.
pub const PUBLISHED_TOTAL: &str = "weft_queue_published_total";
/// Deliveries to consumers (every one, redeliveries included).
pub const DELIVERED_TOTAL: &str = "weft_queue_delivered_total";
/// Deliveries of a message that was delivered before.
pub const REDELIVERED_TOTAL: &str = "weft_queue_redelivered_total";
pub const ACKED_TOTAL: &str = "weft_queue_acked_total";
/// `requeue` = true | false.
pub const NACKED_TOTAL: &str = "weft_queue_nacked_total";
pub const DEAD_LETTERED_TOTAL: &str = "weft_queue_dead_lettered_total";
/// Dropped: full queue (dropOldest), no dead-letter queue, expiry.
pub const DROPPED_TOTAL: &str = "weft_queue_dropped_total";
/// Messages whose TTL ran out (dead-lettered or dropped after it).
pub const EXPIRED_TOTAL: &str = "weft_queue_expired_total";
/// Broadcast messages a slow consumer missed.
pub const BROADCAST_MISSED_TOTAL: &str = "weft_queue_broadcast_missed_total";
/// Purged and redriven messages.
pub const PURGED_TOTAL: &str = "weft_queue_purged_total";
pub const REDRIVEN_TOTAL: &str = "weft_queue_redriven_total";
/// A consumer's take that met an unreachable store (Redis down) and is
/// tried again.
pub const STORE_RETRIES_TOTAL: &str = "weft_queue_store_retries_total";
/// Publish call, received to answered (durable).
pub const PUBLISH_DURATION: &str = "weft_queue_publish_duration_seconds";
/// Published to first delivered, per message (end to end).
pub const DELIVERY_LATENCY: &str = "weft_queue_delivery_latency_seconds";

pub const READY: &str = "weft_queue_ready_messages";
pub const WAITING: &str = "weft_queue_waiting_messages";
pub const IN_FLIGHT: &str = "weft_queue_in_flight_messages";
pub const QUEUED_BYTES: &str = "weft_queue_queued_bytes";
pub const OLDEST_AGE: &str = "weft_queue_oldest_message_age_seconds";
pub const CONSUMERS: &str = "weft_queue_consumers";
/// The segment log on disk (all queues).
pub const LOG_BYTES: &str = "weft_queue_log_bytes";
/// Group commits of the log (one write + fsync each), and the records
/// they carried: records / commits is how well concurrent publishes fold.
pub const LOG_COMMITS_TOTAL: &str = "weft_queue_log_commits_total";
pub const LOG_RECORDS_TOTAL: &str = "weft_queue_log_records_total";

const PRIORITY: [&str; super::state::LEVELS] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Sets every queue's gauges from its state now.
pub async fn refresh(store: &Backend, now_ms: u64) {
    for q in store.queues() {
        let Ok(super::backend::Stats {
            depth, oldest_ms, ..
        }) = store.stats(&q, now_ms).await
        else {
            continue;
        };
        let name = q.name.clone();
        for (level, n) in depth.ready_by_priority.iter().enumerate() {
            metrics::gauge!(READY, "queue" => name.clone(), "priority" => PRIORITY[level])
                .set(*n as f64);
        }
        metrics::gauge!(WAITING, "queue" => name.clone()).set(depth.waiting as f64);
        metrics::gauge!(IN_FLIGHT, "queue" => name.clone()).set(depth.in_flight as f64);
        metrics::gauge!(QUEUED_BYTES, "queue" => name.clone()).set(depth.bytes as f64);
        let age = oldest_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
        metrics::gauge!(OLDEST_AGE, "queue" => name.clone()).set(age);
        // This replica's consumers (summed over replicas in a query).
        metrics::gauge!(CONSUMERS, "queue" => name).set(q.consumer_count() as f64);
    }
    if let Some(bytes) = store.log_bytes() {
        metrics::gauge!(LOG_BYTES).set(bytes as f64);
    }
    if let Some((commits, records)) = store.log_commits() {
        metrics::counter!(LOG_COMMITS_TOTAL).absolute(commits);
        metrics::counter!(LOG_RECORDS_TOTAL).absolute(records);
    }
}
