//! Which part of the log still holds live messages: a count of live
//! messages per block of log sequence numbers, by the sequence of each
//! message's `published` record. The first block with any bounds what
//! compaction may drop. A few integers per 4,096 records instead of an
//! index entry per message (a million queued messages used ~80 MB here).

use std::collections::BTreeMap;

/// Sequence numbers per block: the low mark is exact to a block, so
/// compaction keeps at most one block's records too many.
const BLOCK_BITS: u32 = 12;

#[derive(Default)]
pub(crate) struct Live {
    /// Live messages per block (first sequence >> BLOCK_BITS); no zeros.
    blocks: BTreeMap<u64, u64>,
}

impl Live {
    /// A message whose `published` record is `seq` is live.
    pub(crate) fn add(&mut self, seq: u64) {
        *self.blocks.entry(seq >> BLOCK_BITS).or_default() += 1;
    }

    /// That message is gone (acked, dropped, dead-lettered, purged).
    pub(crate) fn remove(&mut self, seq: u64) {
        let block = seq >> BLOCK_BITS;
        if let Some(n) = self.blocks.get_mut(&block) {
            *n -= 1;
            if *n == 0 {
                self.blocks.remove(&block);
            }
        } else {
            // Removing what was never added would let compaction drop a
            // live record later: say so loudly rather than guess.
            tracing::error!(seq, "queue log: a message left that was not counted live");
        }
    }

    /// The log sequence below which no record holds a live message.
    pub(crate) fn low_mark(&self) -> u64 {
        self.blocks
            .keys()
            .next()
            .map_or(u64::MAX, |b| b << BLOCK_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_mark_is_the_start_of_the_oldest_block_with_a_live_message() {
        let mut live = Live::default();
        assert_eq!(live.low_mark(), u64::MAX);
        live.add(5);
        live.add(4_100);
        live.add(9_000);
        assert_eq!(live.low_mark(), 0);
        live.remove(5);
        assert_eq!(
            live.low_mark(),
            4_096,
            "a block's start, never above a live record"
        );
        live.add(4_097);
        live.remove(4_100);
        assert_eq!(live.low_mark(), 4_096, "one left in the block");
        live.remove(4_097);
        assert_eq!(live.low_mark(), 8_192);
        live.remove(9_000);
        assert_eq!(live.low_mark(), u64::MAX);
    }
}
