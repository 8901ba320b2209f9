//! One append to the log and the state changes it carries (applied once
//! it is durable, undone if it fails), and the admission of one message
//! into every target of a publish.

use super::Queue;
use crate::queue::state::{Effect, Message, NewMessage, Published};
use crate::queue::wire::record;
use std::sync::Arc;
use xds_proto::v1::{queue_record::Event, QueueRemoved};

/// Changes to append together and then apply.
#[derive(Default)]
pub(super) struct Batch {
    pub records: Vec<Vec<u8>>,
    /// Admitted messages to commit, with the index of their record.
    pub admitted: Vec<(Arc<Queue>, Arc<Message>, usize)>,
    /// Messages that leave the log's live set: their `published`
    /// records' sequences.
    pub removed: Vec<u64>,
    /// Messages already taken out of their queue state, to put back if
    /// the append fails.
    pub taken: Vec<(Arc<Queue>, Arc<Message>)>,
    /// Queues with requeued messages.
    pub wake: Vec<Arc<Queue>>,
}

impl Batch {
    pub fn push(&mut self, record: Vec<u8>) {
        self.records.push(record);
    }

    pub fn admit(&mut self, queue: &Arc<Queue>, message: Arc<Message>, record: Vec<u8>) {
        self.admitted
            .push((queue.clone(), message, self.records.len()));
        self.records.push(record);
    }

    /// Takes back the earliest message this batch admitted into `queue`
    /// (it will not be committed; its record stays, followed by the
    /// removal the caller's `Dropped` effect writes).
    pub fn take_back_oldest(&mut self, queue: &Arc<Queue>) -> Option<Arc<Message>> {
        let at = self
            .admitted
            .iter()
            .position(|(q, _, _)| Arc::ptr_eq(q, queue))?;
        Some(self.admitted.remove(at).1)
    }

    /// `m` (as its queue kept it) leaves `queue`.
    pub fn remove(&mut self, queue: &str, m: &Message, why: &str) {
        self.records.push(record(
            queue,
            Event::Removed(QueueRemoved {
                id: m.id,
                why: why.into(),
            }),
        ));
        self.removed.extend(m.stored.map(|s| s.live_seq));
    }
}

/// A message's copies as admitted, by target index.
pub(super) type Copies = Vec<(usize, Arc<Message>)>;

/// Admits one message into every target (all with the first one's id), or
/// into none when one refuses it (its index is the third part). Effects
/// are collected by target index.
pub(super) fn admit_everywhere(
    targets: &[Arc<Queue>],
    now_ms: u64,
    body: NewMessage,
    effects: &mut Vec<(usize, Vec<Effect>)>,
) -> (Published, Copies, Option<usize>) {
    let mut copies: Copies = Vec::new();
    let mut first: Option<Published> = None;
    let mut id = None;
    let last = targets.len().saturating_sub(1);
    let mut body = Some(body);
    for (i, t) in targets.iter().enumerate() {
        let b = if i == last { body.take() } else { body.clone() };
        let Some(b) = b else { break };
        let (out, message, e) = t.lock().admit_as(now_ms, b, id);
        if !e.is_empty() {
            effects.push((i, e));
        }
        if let Published::Refused(why) = out {
            for (j, m) in copies.drain(..) {
                targets[j].lock().abandon(&m);
            }
            let why = if targets.len() > 1 {
                format!(
                    "subscription {}: {why}",
                    t.name.rsplit('/').next().unwrap_or("")
                )
            } else {
                why
            };
            return (Published::Refused(why), Vec::new(), Some(i));
        }
        if let Some(m) = message {
            id = Some(m.id);
            copies.push((i, m));
        }
        first.get_or_insert(out);
    }
    let out = match (id, first) {
        (Some(id), _) => Published::Enqueued(id),
        (None, Some(out)) => out,
        (None, None) => Published::Refused("no subscription to take it".into()),
    };
    (out, copies, None)
}
