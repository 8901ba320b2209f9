//! Which messages are live, by the log sequence of their `published`
//! record: the smallest bounds what compaction may drop.

use std::collections::{BTreeMap, HashMap};

/// Live messages by log sequence. Queue names are interned to small
/// numbers: one entry costs two integers a side, not two name copies.
#[derive(Default)]
pub(crate) struct Live {
    names: HashMap<String, u32>,
    by_seq: BTreeMap<u64, (u32, u64)>,
    by_id: HashMap<(u32, u64), u64>,
}

impl Live {
    fn qid(&mut self, queue: &str) -> u32 {
        if let Some(q) = self.names.get(queue) {
            return *q;
        }
        let q = self.names.len() as u32;
        self.names.insert(queue.to_string(), q);
        q
    }
    pub(crate) fn add(&mut self, queue: &str, id: u64, seq: u64) {
        let q = self.qid(queue);
        self.by_seq.insert(seq, (q, id));
        self.by_id.insert((q, id), seq);
    }
    pub(crate) fn remove(&mut self, queue: &str, id: u64) {
        let Some(q) = self.names.get(queue).copied() else {
            return;
        };
        if let Some(seq) = self.by_id.remove(&(q, id)) {
            self.by_seq.remove(&seq);
        }
    }
}

impl Live {
    /// The log sequence below which no record holds a live message.
    pub(crate) fn low_mark(&self) -> u64 {
        self.by_seq.keys().next().copied().unwrap_or(u64::MAX)
    }
}
