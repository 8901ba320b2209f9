//! What operators do to one queue besides consuming: look at its messages
//! in delivery order, purge what is queued, take single messages out (a
//! redrive), and let a broadcast message pass without being kept.

use super::{Entry, Message, QueueState, LEVELS};
use std::sync::Arc;

/// Where a peeked message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Ready,
    Waiting,
    InFlight,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Ready => "ready",
            Place::Waiting => "waiting",
            Place::InFlight => "in-flight",
        }
    }
}

impl QueueState {
    /// Up to `limit` messages, ready ones in the order they would be
    /// delivered (highest level first, oldest first; aging ignored), then
    /// waiting ones by due time, then those in flight by deadline; only
    /// those `keep` accepts.
    pub fn peek(
        &self,
        limit: usize,
        keep: &dyn Fn(&Message) -> bool,
    ) -> Vec<(Arc<Message>, Place)> {
        let mut out = Vec::new();
        let ready = (0..LEVELS).rev().flat_map(|level| {
            self.ready[level]
                .iter()
                .filter_map(move |&id| match self.entries.get(id) {
                    Some(Entry { held })
                        if held.place == Place::Ready && usize::from(held.priority) == level =>
                    {
                        Some(Arc::new(held.message(id, &self.kinds)))
                    }
                    _ => None,
                })
        });
        // A requeued id may sit twice in a deque (once stale): keep the first.
        let mut seen = std::collections::HashSet::new();
        for m in ready {
            if out.len() >= limit {
                return out;
            }
            if keep(&m) && seen.insert(m.id) {
                out.push((m, Place::Ready));
            }
        }
        let later = self
            .waiting
            .iter()
            .map(|(_, id)| (id, Place::Waiting))
            .chain(self.deadlines.iter().map(|(_, id)| (id, Place::InFlight)));
        for (id, place) in later {
            if out.len() >= limit {
                break;
            }
            if let Some(m) = self
                .entries
                .get(*id)
                .map(|e| e.held.message(*id, &self.kinds))
            {
                if keep(&m) {
                    out.push((Arc::new(m), place));
                }
            }
        }
        out
    }

    /// Removes every queued (ready or waiting) message; deliveries in
    /// flight stay. Returns what was removed, oldest first.
    pub fn purge(&mut self) -> Vec<Arc<Message>> {
        let ids = self.queued_ids();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Takes one queued message out (not one in flight: its consumer may
    /// still ack it).
    pub fn take_queued(&mut self, id: u64) -> Option<Arc<Message>> {
        if self.entries.get(id).is_some_and(Entry::queued) {
            self.remove(id)
        } else {
            None
        }
    }

    /// Ids of the queued messages, oldest first.
    pub fn queued_ids(&self) -> Vec<u64> {
        self.entries.ids(Entry::queued)
    }

    /// An admitted message that is handed on rather than kept (broadcast):
    /// it stops counting as pending; its dedup key stays.
    pub fn pass(&mut self, message: &Message) {
        self.unpend(message);
    }
}
