//! Operators' actions on the store: peek (a queue's or its dead letters),
//! purge, and redrive dead letters back to the queue they came from. Each
//! change is appended before it is visible, like every other.

use super::{record, Batch, Event, Store, StoreError};
use crate::queue::dead_letter::{self, redriven};
use crate::queue::metrics::{PURGED_TOTAL, REDRIVEN_TOTAL};
use crate::queue::state::{Message, Place};
use std::sync::Arc;

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// New ids in the source queue, in the order moved.
    pub ids: Vec<u64>,
    /// Why the rest stayed in the dead-letter queue (the source refused).
    pub stopped: Option<String>,
}

impl Store {
    /// Up to `limit` messages of `queue` in delivery order; with
    /// `dead_letters`, those of its dead-letter queue that came from it.
    pub fn peek(
        &self,
        queue: &str,
        limit: usize,
        dead_letters: bool,
    ) -> Result<Vec<(Arc<Message>, Place)>, StoreError> {
        let q = self.queue(queue)?;
        let (q, found) = if dead_letters {
            let dlq = self.dead_letter_of(queue)?;
            let from_here = |m: &Message| dead_letter::source(m) == Some(queue);
            let found = dlq.lock().peek(limit, &from_here);
            (dlq, found)
        } else {
            let found = q.lock().peek(limit, &|_| true);
            (q, found)
        };
        found
            .into_iter()
            .map(|(m, place)| Ok((self.full(&q, &m)?, place)))
            .collect()
    }

    fn dead_letter_of(&self, queue: &str) -> Result<Arc<super::Queue>, StoreError> {
        self.queues.dead_letter_of(&*self.queue(queue)?)
    }

    /// Removes every queued message of `queue`; returns how many.
    pub async fn purge(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        let q = self.queue(queue)?;
        let taken = q.lock().purge();
        let mut batch = Batch::default();
        for m in &taken {
            batch.remove(&q.name, m, "purged");
        }
        let n = taken.len() as u64;
        batch.taken = taken.into_iter().map(|m| (q.clone(), m)).collect();
        self.write(batch, now_ms).await?;
        metrics::counter!(PURGED_TOTAL, "queue" => queue.to_string()).increment(n);
        Ok(n)
    }

    /// Moves the dead letters that came from `queue` (only `ids` when
    /// given) back into it as new messages: delivery count reset, the
    /// dead-letter headers removed. Stops at the first one `queue` refuses
    /// (full); that one and the rest stay where they are.
    pub async fn redrive(
        &self,
        queue: &str,
        ids: &[u64],
        now_ms: u64,
    ) -> Result<Redriven, StoreError> {
        let source = self.queue(queue)?;
        let dlq = self.dead_letter_of(queue)?;
        let mut batch = Batch::default();
        let mut moved = Vec::new();
        let mut stopped = None;
        let candidates: Vec<u64> = {
            let state = dlq.lock();
            state
                .peek(usize::MAX, &|m| {
                    dead_letter::source(m) == Some(queue) && (ids.is_empty() || ids.contains(&m.id))
                })
                .into_iter()
                .filter(|(_, place)| *place != Place::InFlight)
                .map(|(m, _)| m.id)
                .collect()
        };
        for id in candidates {
            let Some(dead) = dlq.lock().take_queued(id) else {
                continue;
            };
            let body = match self.full(&dlq, &dead) {
                Ok(whole) => redriven(&whole),
                Err(e) => {
                    dlq.lock().restore(&dead, dead.stored, now_ms);
                    self.abandon(batch);
                    return Err(e);
                }
            };
            let (out, admitted, _) = source.lock().admit(now_ms, body);
            let Some(m) = admitted else {
                dlq.lock().restore(&dead, dead.stored, now_ms);
                stopped = Some(format!("{queue} refused message {id}: {out:?}"));
                break;
            };
            batch.remove(&dlq.name, &dead, "redriven");
            batch.taken.push((dlq.clone(), dead));
            let wire = match self.wire(&source, &m) {
                Ok(w) => w,
                Err(e) => {
                    source.lock().abandon(&m);
                    self.abandon(batch);
                    return Err(e);
                }
            };
            moved.push(m.id);
            batch.admit(&source, m, record(&source.name, Event::Published(wire)));
        }
        self.write(batch, now_ms).await?;
        metrics::counter!(REDRIVEN_TOTAL, "queue" => queue.to_string())
            .increment(moved.len() as u64);
        Ok(Redriven {
            ids: moved,
            stopped,
        })
    }
}
