//! A queue's messages by id, in id order, without a hash table: ids are
//! handed out in increasing order and a queue's messages mostly leave
//! oldest first, so they sit in a deque sorted by id. A removal leaves a
//! hole, dropped once it reaches either end (or when holes outnumber the
//! messages); a lookup guesses the slot from the id (exact while the ids
//! are dense, as with one busy queue) and else binary-searches. An id
//! inserted below the deque's last one (a message redriven back, a
//! replayed requeue) fills its own hole when it has one, goes in place
//! when it is near the end, and else into a small ordered map beside.
//!
//! Per message this costs its id and its value, with no hashing and no
//! spare buckets (a `HashMap` at a million entries holds two million).

use std::collections::{BTreeMap, VecDeque};

/// How far from the end an out-of-order id is inserted in place (a
/// shift of at most this many slots).
const NEAR_END: usize = 64;
/// Holes are swept out when there are more than this many and more holes
/// than values.
const SWEEP_AT: usize = 1024;

#[derive(Debug)]
pub struct Table<T> {
    slots: VecDeque<(u64, Option<T>)>,
    /// Values in `slots`.
    filled: usize,
    /// Ids that came below the deque's last id, far from its end.
    aside: BTreeMap<u64, T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: VecDeque::new(),
            filled: 0,
            aside: BTreeMap::new(),
        }
    }
}

impl<T> Table<T> {
    pub fn len(&self) -> usize {
        self.filled + self.aside.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot holding `id` (filled or a hole), or where it would go.
    fn slot(&self, id: u64) -> Result<usize, usize> {
        let first = self.slots.front().map_or(0, |s| s.0);
        if let Some(guess) = id.checked_sub(first).and_then(|d| usize::try_from(d).ok()) {
            if self.slots.get(guess).is_some_and(|s| s.0 == id) {
                return Ok(guess);
            }
        }
        self.slots.binary_search_by_key(&id, |s| s.0)
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        match self.slot(id) {
            Ok(i) => self.slots[i].1.as_ref(),
            Err(_) => self.aside.get(&id),
        }
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        match self.slot(id) {
            Ok(i) => self.slots[i].1.as_mut(),
            Err(_) => self.aside.get_mut(&id),
        }
    }

    /// Adds or replaces the value of `id`; the old one, if any.
    pub fn insert(&mut self, id: u64, value: T) -> Option<T> {
        let at = match self.slots.back() {
            Some(last) if last.0 >= id => self.slot(id),
            _ => Err(self.slots.len()),
        };
        let i = match at {
            Ok(i) => {
                let old = self.slots[i].1.replace(value);
                if old.is_none() {
                    self.filled += 1;
                }
                return old;
            }
            Err(i) => i,
        };
        if let Some(v) = self.aside.get_mut(&id) {
            return Some(std::mem::replace(v, value));
        }
        if i == self.slots.len() {
            self.slots.push_back((id, Some(value)));
        } else if i == 0 {
            self.slots.push_front((id, Some(value)));
        } else if self.slots.len() - i <= NEAR_END {
            self.slots.insert(i, (id, Some(value)));
        } else {
            self.aside.insert(id, value);
            return None;
        }
        self.filled += 1;
        None
    }

    pub fn remove(&mut self, id: u64) -> Option<T> {
        let Ok(i) = self.slot(id) else {
            return self.aside.remove(&id);
        };
        let old = self.slots[i].1.take()?;
        self.filled -= 1;
        while self.slots.front().is_some_and(|s| s.1.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|s| s.1.is_none()) {
            self.slots.pop_back();
        }
        let holes = self.slots.len() - self.filled;
        if holes > SWEEP_AT && holes > self.filled {
            self.slots.retain(|s| s.1.is_some());
            self.slots.shrink_to(self.slots.len() * 2);
        }
        Some(old)
    }

    /// The lowest id whose value `pred` accepts.
    pub fn first(&self, pred: impl Fn(&T) -> bool) -> Option<u64> {
        let in_deque = self
            .slots
            .iter()
            .find(|(_, v)| v.as_ref().is_some_and(&pred))
            .map(|s| s.0);
        let aside = self.aside.iter().find(|(_, v)| pred(v)).map(|(id, _)| *id);
        match (in_deque, aside) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The ids whose values `pred` accepts, lowest first.
    pub fn ids(&self, pred: impl Fn(&T) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .iter()
            .filter(|(_, v)| pred(v))
            .map(|(id, _)| id)
            .collect();
        if !self.aside.is_empty() {
            ids.sort_unstable();
        }
        ids
    }

    /// Every (id, value), the deque's in id order, then those aside.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots
            .iter()
            .filter_map(|(id, v)| v.as_ref().map(|v| (*id, v)))
            .chain(self.aside.iter().map(|(id, v)| (*id, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn the_table_agrees_with_a_map_under_random_inserts_and_removals() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut t = Table::default();
        let mut m = BTreeMap::new();
        let mut next = 1u64;
        for step in 0..200_000u64 {
            match rng.below(10) {
                // New ids, mostly increasing.
                0..=3 => {
                    next += 1 + rng.below(3);
                    assert_eq!(t.insert(next, step), m.insert(next, step));
                }
                // Any id (old ones back, replaced values).
                4 => {
                    let id = rng.below(next + 1);
                    assert_eq!(t.insert(id, step), m.insert(id, step), "insert {id}");
                }
                // Removals, oldest first mostly.
                5..=7 => {
                    let id = m.keys().next().copied().unwrap_or(0) + rng.below(8);
                    assert_eq!(t.remove(id), m.remove(&id), "remove {id}");
                }
                _ => {
                    let id = rng.below(next + 1);
                    assert_eq!(t.remove(id), m.remove(&id), "remove {id}");
                }
            }
            let id = rng.below(next + 2);
            assert_eq!(t.get(id), m.get(&id), "get {id} at step {step}");
            assert_eq!(t.len(), m.len());
        }
        let mut all: Vec<(u64, u64)> = t.iter().map(|(id, v)| (id, *v)).collect();
        all.sort_unstable();
        let odd = |v: &u64| v % 2 == 1;
        let odd_ids: Vec<u64> = m
            .iter()
            .filter(|(_, v)| odd(v))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(t.ids(odd), odd_ids);
        assert_eq!(t.first(odd), odd_ids.first().copied());
        assert_eq!(all, m.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn holes_are_swept_when_they_outnumber_the_values() {
        let mut t = Table::default();
        for id in 0..10_000u64 {
            t.insert(id, id);
        }
        // Remove all but every 100th, from the middle out: holes stay
        // between the survivors until swept.
        for id in 1..9_999u64 {
            if id % 100 != 0 {
                t.remove(id);
            }
        }
        assert_eq!(t.len(), 101);
        assert!(t.slots.len() < 2 * SWEEP_AT, "{} slots", t.slots.len());
        assert_eq!(t.get(500), Some(&500));
        assert_eq!(t.get(501), None);
    }

    #[test]
    fn an_old_id_far_from_the_end_goes_aside_and_is_found_there() {
        let mut t = Table::default();
        for id in (100..1_000u64).step_by(2) {
            t.insert(id, id);
        }
        t.remove(500);
        assert_eq!(t.insert(500, 1), None, "fills its own hole");
        assert!(!t.aside.contains_key(&500));
        assert_eq!(t.insert(301, 2), None);
        assert!(t.aside.contains_key(&301), "far from the end");
        assert_eq!(t.insert(997, 3), None);
        assert!(!t.aside.contains_key(&997), "near the end: in place");
        assert_eq!(t.insert(7, 4), None);
        assert!(!t.aside.contains_key(&7), "below the first: at the front");
        assert_eq!(t.insert(301, 5), Some(2), "replaced aside");
        assert_eq!(
            (t.get(301), t.get(997), t.get(7), t.get(500)),
            (Some(&5), Some(&3), Some(&4), Some(&1))
        );
        assert_eq!(t.remove(301), Some(5));
        assert_eq!(t.len(), 452);
    }
}
