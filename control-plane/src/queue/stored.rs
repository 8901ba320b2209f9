//! Queued messages' bodies stay in the log, not in memory. Once a message
//! is durable the embedded store keeps only what choosing and accounting
//! need (id, type, key, priority, headers, times, counts) and where its
//! record is (`Stored`); payload, publisher and traceparent are read back
//! from that record, and opened when sealed, when the message leaves the
//! store: delivered, peeked, dead-lettered, requeued or redriven. A queue
//! of a million 1 KiB messages then holds its index in memory, not its
//! payloads (see benches/RESULTS.md).
//!
//! The record stays readable while the message is queued or in flight:
//! compaction only drops segments below the oldest live message's record.

use super::log::Position;
use super::state::Message;
use super::store::{Queue, Store, StoreError};
use super::wire::unseal;
use prost::Message as _;
use std::sync::Arc;
use xds_proto::v1::{queue_record::Event, QueueRecord};

/// A message body kept in the log: the record holding it and its
/// payload's length (for size limits and depth in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The record to read the body from (its `published` record, or a
    /// later `requeued` one after a restart).
    pub record: super::log::Position,
    /// The sequence of its `published` record: what keeps it live in the
    /// log (see `live`).
    pub live_seq: u64,
    pub payload_len: u32,
}

impl Stored {
    /// Where `m`'s body is once its record, at `at`, is durable;
    /// `live_seq`: its `published` record's sequence. A queue given this
    /// keeps none of the body in memory (see `held`).
    pub(super) fn of(m: &Message, at: Position, live_seq: u64) -> Stored {
        Stored {
            record: at,
            live_seq,
            payload_len: u32::try_from(m.payload_len()).unwrap_or(u32::MAX),
        }
    }
}

impl Store {
    /// `m` whole: its body read back from its record when the queue keeps
    /// it there. Counts, times and headers are the queue's (newer than
    /// the record's).
    pub(super) fn full(&self, queue: &Queue, m: &Arc<Message>) -> Result<Arc<Message>, StoreError> {
        let Some(stored) = m.stored else {
            return Ok(m.clone());
        };
        let bytes = self.log().read(stored.record)?;
        let broken = |why: &str| {
            StoreError::Backend(format!(
                "queue {}: the log record {} of message {}: {why}",
                queue.name, stored.record.seq, m.id
            ))
        };
        let record = QueueRecord::decode(bytes.as_slice()).map_err(|e| broken(&e.to_string()))?;
        let wire = match record.event {
            Some(Event::Published(w)) | Some(Event::Requeued(w)) if w.id == m.id => w,
            _ => return Err(broken("it holds another message")),
        };
        let wire = unseal(self.keys(), &record.queue, wire)?;
        let mut full = (**m).clone();
        full.body.payload = wire.payload;
        full.body.publisher = wire.publisher;
        full.body.traceparent = (!wire.traceparent.is_empty()).then_some(wire.traceparent);
        full.stored = None;
        Ok(Arc::new(full))
    }
}
