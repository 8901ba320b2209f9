//! Where the queues live: the embedded segment-log store (`store`), or
//! Redis (`redis_store`, `--queue-store redis://...`) so several replicas
//! serve the same queues. The service and the consumers' streams speak to
//! this one type; each call goes to the store chosen at start.

use super::redis_store::RedisStore;
use super::state::{AckError, Delivery, Depth, Filter, Message, NewMessage, Place, Published};
use super::store::{Queue, QueueConfig, Redriven, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// What Describe and the gauges show of one queue.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub depth: Depth,
    /// When its oldest message was published (Unix ms).
    pub oldest_ms: Option<u64>,
    /// Its consumers: on Redis, every replica's seen in the last seconds.
    pub consumers: u64,
}

pub enum Backend {
    Embedded(Box<Store>),
    Redis(Arc<RedisStore>),
}

impl Backend {
    pub fn describe(&self) -> String {
        match self {
            Backend::Embedded(_) => "embedded".into(),
            Backend::Redis(r) => r.describe().to_string(),
        }
    }

    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, StoreError> {
        match self {
            Backend::Embedded(s) => s.queue(name),
            Backend::Redis(r) => r.queue(name),
        }
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        match self {
            Backend::Embedded(s) => s.queues(),
            Backend::Redis(r) => r.queues(),
        }
    }

    pub fn configure(&self, queues: &[QueueConfig]) {
        match self {
            Backend::Embedded(s) => s.configure(queues),
            Backend::Redis(r) => r.configure(queues),
        }
    }

    pub async fn publish(
        &self,
        queue: &str,
        now_ms: u64,
        bodies: Vec<NewMessage>,
    ) -> Result<Vec<(Published, u32)>, StoreError> {
        match self {
            Backend::Embedded(s) => s.publish(queue, now_ms, bodies).await,
            Backend::Redis(r) => r.publish(queue, now_ms, bodies).await,
        }
    }

    /// Up to `max` deliveries for `consumer`, in flight until acked.
    /// `take_no` numbers the consumer's takes: after an error, taking
    /// again with the same number gets what the failed call may have
    /// taken (Redis: the script ran but its reply was lost) rather than
    /// leaving it in flight to nobody until its ack timeout. The embedded
    /// store has no lost replies.
    pub async fn take(
        &self,
        queue: &str,
        now_ms: u64,
        (consumer, take_no): (u64, u64),
        filter: &Filter,
        max: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        match self {
            Backend::Embedded(s) => {
                let mut out = Vec::new();
                while out.len() < max as usize {
                    match s.next(queue, now_ms, consumer, filter) {
                        Ok(Some(d)) => out.push(d),
                        Ok(None) => break,
                        // Those taken so far go out; the failed one is in
                        // flight and comes back after its ack timeout.
                        Err(e) if !out.is_empty() => {
                            tracing::warn!(queue, error = %e, "queue delivery failed");
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            Backend::Redis(r) => {
                r.take(queue, now_ms, (consumer, take_no), filter, max)
                    .await
            }
        }
    }

    pub async fn ack(
        &self,
        queue: &str,
        ids: &[u64],
        consumer: u64,
    ) -> Result<Vec<(u64, AckError)>, StoreError> {
        match self {
            Backend::Embedded(s) => s.ack(queue, ids, consumer),
            Backend::Redis(r) => r.ack(queue, ids, consumer).await,
        }
    }

    pub async fn extend(
        &self,
        queue: &str,
        now_ms: u64,
        id: u64,
        consumer: u64,
        by: Duration,
    ) -> Result<u64, StoreError> {
        match self {
            Backend::Embedded(s) => s.extend(queue, now_ms, id, consumer, by),
            Backend::Redis(r) => r.extend(queue, now_ms, id, consumer, by).await,
        }
    }

    pub async fn nack(
        &self,
        queue: &str,
        now_ms: u64,
        id: u64,
        consumer: u64,
        requeue: bool,
        error: &str,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.nack(queue, now_ms, id, consumer, requeue, error).await,
            Backend::Redis(r) => r.nack(queue, now_ms, id, consumer, requeue, error).await,
        }
    }

    pub async fn release(&self, queue: &str, now_ms: u64, consumer: u64) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.release(queue, now_ms, consumer).await,
            Backend::Redis(r) => r.release(queue, now_ms, consumer).await,
        }
    }

    /// A queue's consumers changed here (Redis counts every replica's:
    /// for a broadcast publisher's `receivers` and for Describe).
    pub async fn consumers_changed(&self, q: &Queue, now_ms: u64) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(r) => r.consumers_changed(q, now_ms).await.map(drop),
        }
    }

    pub async fn tick(&self, now_ms: u64) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.tick(now_ms).await,
            Backend::Redis(r) => r.tick(now_ms).await,
        }
    }

    pub fn next_wakeup(&self) -> Option<u64> {
        match self {
            Backend::Embedded(s) => s.next_wakeup(),
            Backend::Redis(r) => r.next_wakeup(),
        }
    }

    /// Depth, the oldest message's publish time and the consumers.
    pub async fn stats(&self, q: &Queue, now_ms: u64) -> Result<Stats, StoreError> {
        match self {
            Backend::Embedded(_) => Ok(Stats {
                depth: q.depth(),
                oldest_ms: q.oldest_ms(),
                consumers: q.consumer_count(),
            }),
            Backend::Redis(r) => r.stats(q, now_ms).await,
        }
    }

    /// Bytes of the embedded log on disk (none for Redis: its own metrics
    /// tell).
    pub fn log_bytes(&self) -> Option<u64> {
        match self {
            Backend::Embedded(s) => Some(s.log_segments().iter().map(|s| s.bytes).sum()),
            Backend::Redis(_) => None,
        }
    }

    /// The embedded log's group commits and records written since start.
    pub fn log_commits(&self) -> Option<(u64, u64)> {
        match self {
            Backend::Embedded(s) => Some(s.log_commits()),
            Backend::Redis(_) => None,
        }
    }

    pub async fn peek(
        &self,
        queue: &str,
        limit: usize,
        dead_letters: bool,
    ) -> Result<Vec<(Arc<Message>, Place)>, StoreError> {
        match self {
            Backend::Embedded(s) => s.peek(queue, limit, dead_letters),
            Backend::Redis(r) => r.peek(queue, limit, dead_letters).await,
        }
    }

    pub async fn purge(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        match self {
            Backend::Embedded(s) => s.purge(queue, now_ms).await,
            Backend::Redis(r) => r.purge(queue, now_ms).await,
        }
    }

    pub async fn redrive(
        &self,
        queue: &str,
        ids: &[u64],
        now_ms: u64,
    ) -> Result<Redriven, StoreError> {
        match self {
            Backend::Embedded(s) => s.redrive(queue, ids, now_ms).await,
            Backend::Redis(r) => r.redrive(queue, ids, now_ms).await,
        }
    }
}
