//! A deque stored in fixed chunks. A `VecDeque` of a million queue entries
//! doubles into a new buffer as it grows and leaves the old one (64 MB for
//! a 128 MB table) with the allocator, which an idle control plane never
//! returns to the system; it also rounds its size up to a power of two. In
//! chunks, growing allocates one more chunk and never copies, and the
//! memory is the length rounded up to a chunk.
//!
//! Every chunk holds at least one value; every chunk but the first and the
//! last is full, so a position finds its chunk by division.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

/// Values per chunk (a queue entry is ~128 bytes: 128 KiB chunks).
const CHUNK: usize = 1024;

#[derive(Debug)]
pub struct Chunked<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

fn chunk<T>() -> VecDeque<T> {
    VecDeque::with_capacity(CHUNK)
}

impl<T> Chunked<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The chunk and index of position `p` (< len).
    fn locate(&self, p: usize) -> (usize, usize) {
        let first = self.chunks.front().map_or(0, VecDeque::len);
        if p < first {
            (0, p)
        } else {
            let q = p - first;
            (1 + q / CHUNK, q % CHUNK)
        }
    }

    pub fn get(&self, p: usize) -> Option<&T> {
        if p >= self.len {
            return None;
        }
        let (c, i) = self.locate(p);
        self.chunks.get(c)?.get(i)
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.front()?.front()
    }

    pub fn back(&self) -> Option<&T> {
        self.chunks.back()?.back()
    }

    pub fn push_back(&mut self, v: T) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push_back(chunk());
        }
        if let Some(c) = self.chunks.back_mut() {
            c.push_back(v);
            self.len += 1;
        }
    }

    pub fn push_front(&mut self, v: T) {
        // A partial first chunk takes it; a full one stays whole behind a
        // new first chunk.
        if self.chunks.front().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push_front(chunk());
        }
        if let Some(c) = self.chunks.front_mut() {
            c.push_front(v);
            self.len += 1;
        }
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let c = self.chunks.front_mut()?;
        let v = c.pop_front();
        if c.is_empty() {
            self.chunks.pop_front();
        }
        self.len -= usize::from(v.is_some());
        v
    }

    pub fn pop_back(&mut self) -> Option<T> {
        let c = self.chunks.back_mut()?;
        let v = c.pop_back();
        if c.is_empty() {
            self.chunks.pop_back();
        }
        self.len -= usize::from(v.is_some());
        v
    }

    /// Inserts at position `p` (<= len), shifting what follows; cheap
    /// near the end (values carried to the following chunks one each).
    pub fn insert(&mut self, p: usize, v: T) {
        if p >= self.len {
            self.push_back(v);
            return;
        }
        let (c, i) = self.locate(p);
        if self.chunks[c].len() == CHUNK {
            // Make room: its last value moves to the next chunk, whose
            // last moves on, until a chunk with room (only the last).
            let mut carry = self.chunks[c].pop_back();
            let mut k = c + 1;
            while let Some(v) = carry.take() {
                match self.chunks.get_mut(k) {
                    Some(next) if next.len() == CHUNK => {
                        carry = next.pop_back();
                        next.push_front(v);
                    }
                    Some(next) => next.push_front(v),
                    None => {
                        let mut last = chunk();
                        last.push_back(v);
                        self.chunks.push_back(last);
                    }
                }
                k += 1;
            }
        }
        self.chunks[c].insert(i, v);
        self.len += 1;
    }

    /// Keeps the values `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let all = std::mem::take(self);
        for v in all.chunks.into_iter().flatten() {
            if keep(&v) {
                self.push_back(v);
            }
        }
    }

    /// The position of the value whose key is `key`, or where it would go
    /// (values sorted by key).
    pub fn binary_search_by_key<K: Ord>(
        &self,
        key: &K,
        f: impl Fn(&T) -> K,
    ) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match f(&self[mid]).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, p: usize) -> &T {
        let (c, i) = self.locate(p);
        &self.chunks[c][i]
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, p: usize) -> &mut T {
        let (c, i) = self.locate(p);
        &mut self.chunks[c][i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_agrees_with_a_vecdeque_and_keeps_its_chunks_whole() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut below = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut c = Chunked::default();
        let mut d = VecDeque::new();
        for step in 0..100_000u32 {
            match below(8) {
                0..=2 => {
                    c.push_back(step);
                    d.push_back(step);
                }
                3 => {
                    c.push_front(step);
                    d.push_front(step);
                }
                4 => assert_eq!(c.pop_front(), d.pop_front()),
                5 => assert_eq!(c.pop_back(), d.pop_back()),
                _ => {
                    let p = d.len() - (below(70) as usize).min(d.len());
                    c.insert(p, step);
                    d.insert(p, step);
                }
            }
            assert_eq!(c.len(), d.len());
            let last = c.chunks.len().saturating_sub(1);
            for (k, ch) in c.chunks.iter().enumerate() {
                assert!(!ch.is_empty(), "an empty chunk at step {step}");
                if k != 0 && k != last {
                    assert_eq!(ch.len(), CHUNK, "a partial middle chunk at step {step}");
                }
            }
            if step % 997 == 0 {
                assert!(c.iter().eq(d.iter()), "contents at step {step}");
                c.retain(|v| v % 3 != 0);
                d.retain(|v| v % 3 != 0);
            }
        }
        assert!(c.iter().eq(d.iter()));
        for (p, v) in d.iter().enumerate() {
            assert_eq!(c.get(p), Some(v));
        }
    }
}
