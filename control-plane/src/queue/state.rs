//! One queue's state: which message goes to the next consumer, what is in
//! flight and until when, what is waiting for its time, what expired. Pure
//! and clock-injected (every call takes `now` in Unix milliseconds), so the
//! rules are tested without sleeping; the service around it persists the
//! changes (`log`) and moves dead letters to their queue.
//!
//! Order: a `priority` queue serves the highest level first, FIFO within a
//! level; with `aging`, a waiting message counts one level higher per
//! `aging` waited. Other queues serve in publish order; `orderByKey` keeps
//! order within each key only: while a key has a message in flight, the
//! next of that key waits (consumers compete across keys). Any message may
//! carry `deliver_at`: it waits until then. Delivery is at least once: an
//! unacknowledged delivery comes back after the ack timeout; retries wait
//! out the backoff; the last allowed delivery failing, or a nack without
//! requeue, dead-letters the message (or drops it when the queue has no
//! dead-letter queue).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::held::{Held, Kinds};
pub use super::message::{Filter, Message, NewMessage, Published};
pub use super::stored::Stored;
use super::table::Table;

pub const LEVELS: usize = 10;
/// The reason an expired message leaves with.
pub const EXPIRED: &str = "expired (message TTL)";
/// The level of messages in queues without priorities, and the default.
pub const NORMAL: u8 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    None,
    Fixed(Duration),
    Exponential {
        initial: Duration,
        max: Duration,
        multiplier: f64,
    },
}

impl Backoff {
    /// The wait before delivery number `failed + 1`, after `failed`
    /// failed deliveries (1 or more).
    pub fn delay(&self, failed: u32) -> Duration {
        match self {
            Backoff::None => Duration::ZERO,
            Backoff::Fixed(d) => *d,
            Backoff::Exponential {
                initial,
                max,
                multiplier,
            } => {
                let exp = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
                let secs = initial.as_secs_f64() * multiplier.powi(exp);
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    *max
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub priorities: bool,
    pub order_by_key: bool,
    pub aging: Option<Duration>,
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
    pub drop_oldest: bool,
    pub ttl: Option<Duration>,
    /// Expired messages are dead-lettered (else dropped).
    pub expire_to_dead_letter: bool,
    pub has_dead_letter: bool,
    pub max_deliveries: Option<u32>,
    pub backoff: Backoff,
    pub ack_timeout: Duration,
    pub dedup_window: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            priorities: false,
            order_by_key: false,
            aging: None,
            max_messages: None,
            max_bytes: None,
            drop_oldest: false,
            ttl: None,
            expire_to_dead_letter: false,
            has_dead_letter: false,
            max_deliveries: None,
            backoff: Backoff::None,
            ack_timeout: Duration::from_secs(30),
            dedup_window: None,
        }
    }
}

/// What happened to messages besides delivery, for the service to act on
/// (move to the dead-letter queue, log, count).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    DeadLetter {
        message: Arc<Message>,
        reason: String,
    },
    Dropped {
        message: Arc<Message>,
        reason: String,
    },
    /// A failed delivery went back into the queue with its new count
    /// (and wait): stores persist it so the count survives a restart.
    Requeued { message: Arc<Message> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    Unknown(u64),
    NotYours(u64),
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::Unknown(id) => write!(
                f,
                "message {id} is not in flight (acknowledged, expired or redelivered)"
            ),
            AckError::NotYours(id) => write!(f, "message {id} was delivered to another consumer"),
        }
    }
}

impl std::error::Error for AckError {}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, Copy)]
enum Where {
    Ready { since_ms: u64 },
    Waiting { until_ms: u64 },
    InFlight { consumer: u64, deadline_ms: u64 },
}

#[derive(Debug)]
struct Entry {
    /// The message, with where it is flattened into it (see `at`).
    held: Held,
}

impl Entry {
    fn at(&self) -> Where {
        let h = &self.held;
        match h.place {
            Place::Ready => Where::Ready { since_ms: h.at_ms },
            Place::Waiting => Where::Waiting { until_ms: h.at_ms },
            Place::InFlight => Where::InFlight {
                consumer: h.consumer,
                deadline_ms: h.at_ms,
            },
        }
    }

    fn set_at(&mut self, at: Where) {
        let h = &mut self.held;
        (h.place, h.at_ms, h.consumer) = match at {
            Where::Ready { since_ms } => (Place::Ready, since_ms, 0),
            Where::Waiting { until_ms } => (Place::Waiting, until_ms, 0),
            Where::InFlight {
                consumer,
                deadline_ms,
            } => (Place::InFlight, deadline_ms, consumer),
        };
    }

    /// Ready or waiting (not in flight).
    fn queued(&self) -> bool {
        self.held.place != Place::InFlight
    }
}

/// A message taken out without an effect (acked, or a replayed removal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gone {
    /// Where its body was in the log.
    pub stored: Option<Stored>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Depth {
    pub ready_by_priority: [u64; LEVELS],
    pub waiting: u64,
    pub in_flight: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct QueueState {
    settings: Settings,
    /// Message ids, shared by every queue of a store so that none is ever
    /// reused (see `store`).
    ids: Arc<AtomicU64>,
    entries: Table<Entry>,
    kinds: Kinds,
    /// Ready ids per level, oldest first (stale ids are skipped lazily).
    ready: [VecDeque<u64>; LEVELS],
    waiting: BTreeSet<(u64, u64)>,
    deadlines: BTreeSet<(u64, u64)>,
    expiries: BTreeSet<(u64, u64)>,
    busy_keys: HashSet<String>,
    dedup: HashMap<String, (u64, u64)>,
    dedup_order: VecDeque<(u64, String)>,
    depth: Depth,
    /// Admitted, not yet committed (being made durable): they count
    /// against the size limits but cannot be delivered.
    pending: (u64, u64),
}

impl QueueState {
    pub fn new(settings: Settings) -> QueueState {
        Self::with_ids(settings, Arc::new(AtomicU64::new(1)))
    }

    /// A queue whose message ids come from `ids`.
    pub fn with_ids(settings: Settings, ids: Arc<AtomicU64>) -> QueueState {
        QueueState {
            settings,
            ids,
            entries: Table::default(),
            kinds: Kinds::default(),
            ready: Default::default(),
            waiting: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            expiries: BTreeSet::new(),
            busy_keys: HashSet::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            depth: Depth::default(),
            pending: (0, 0),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// New settings from a changed Queue (messages already queued keep
    /// their level and expiry).
    pub fn reconfigure(&mut self, settings: Settings) {
        self.settings = settings;
    }

    pub fn depth(&self) -> &Depth {
        &self.depth
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Publish time of the oldest queued (not in-flight) message.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.oldest_queued()
            .and_then(|id| self.entries.get(id))
            .map(|e| e.held.published_ms())
    }

    /// The oldest queued (ready or waiting) message: past those in flight,
    /// which are mostly the oldest.
    fn oldest_queued(&self) -> Option<u64> {
        self.entries.first(Entry::queued)
    }

    /// Admits and commits at once (a store that makes the message durable
    /// in between uses `admit` and `commit`).
    pub fn publish(&mut self, now_ms: u64, body: NewMessage) -> (Published, Vec<Effect>) {
        let (out, message, effects) = self.admit(now_ms, body);
        if let Some(m) = message {
            self.commit(&m, None, now_ms);
        }
        (out, effects)
    }

    /// Checks a publish (dedup window, size limits) and gives it its id;
    /// the message is delivered only after `commit` (or forgotten with
    /// `abandon`). Effects: messages dropped to make room.
    pub fn admit(
        &mut self,
        now_ms: u64,
        body: NewMessage,
    ) -> (Published, Option<Arc<Message>>, Vec<Effect>) {
        self.admit_as(now_ms, body, None)
    }

    /// `admit` with the id chosen by the caller (a pubsub topic gives every
    /// subscription's copy the same id); None takes the next one.
    pub fn admit_as(
        &mut self,
        now_ms: u64,
        mut body: NewMessage,
        id: Option<u64>,
    ) -> (Published, Option<Arc<Message>>, Vec<Effect>) {
        self.forget_dedup(now_ms);
        if let (Some(window), Some(key)) = (self.settings.dedup_window, &body.key) {
            if let Some((_, id)) = self.dedup.get(key) {
                return (Published::Deduplicated(*id), None, Vec::new());
            }
            let until = now_ms + window.as_millis() as u64;
            // The id this message will get if admitted (ids are taken
            // under this queue's lock, but other queues share the counter:
            // fixed up below).
            self.dedup.insert(key.clone(), (until, 0));
            self.dedup_order.push_back((until, key.clone()));
        }
        if !self.settings.priorities {
            body.priority = NORMAL;
        }
        body.priority = body.priority.min(LEVELS as u8 - 1);
        let size = body.payload.len() as u64;
        let mut effects = Vec::new();
        loop {
            let count = self.entries.len() as u64 + self.pending.0 + 1;
            let bytes = self.depth.bytes + self.pending.1 + size;
            let over_count = self.settings.max_messages.is_some_and(|m| count > m);
            let over_bytes = self.settings.max_bytes.is_some_and(|m| bytes > m);
            if !(over_count || over_bytes) {
                break;
            }
            let oldest = self.oldest_queued();
            match (self.settings.drop_oldest, oldest) {
                (true, Some(id)) => {
                    if let Some(m) = self.remove(id) {
                        effects.push(Effect::Dropped {
                            message: m,
                            reason: "dropped as the oldest: the queue was full".into(),
                        });
                    }
                }
                _ => {
                    if let Some(key) = &body.key {
                        self.dedup.remove(key);
                    }
                    let why = format!(
                        "queue full: {} messages, {} bytes (maxSize {:?} messages, {:?} bytes)",
                        self.entries.len() as u64 + self.pending.0,
                        self.depth.bytes + self.pending.1,
                        self.settings.max_messages,
                        self.settings.max_bytes
                    );
                    return (Published::Refused(why), None, effects);
                }
            }
        }
        let id = id.unwrap_or_else(|| self.ids.fetch_add(1, Ordering::Relaxed));
        if let (Some(_), Some(key)) = (self.settings.dedup_window, &body.key) {
            if let Some(entry) = self.dedup.get_mut(key) {
                entry.1 = id;
            }
        }
        let ttl = match (self.settings.ttl, body.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_ms = ttl.map(|t| now_ms + t.as_millis() as u64);
        let message = Arc::new(Message {
            id,
            published_ms: now_ms,
            expires_ms,
            deliveries: 0,
            last_error: None,
            body,
            stored: None,
        });
        self.pending.0 += 1;
        self.pending.1 += size;
        (Published::Enqueued(id), Some(message), effects)
    }

    /// An admitted message is durable: it joins the queue.
    /// `stored`: where its body is in the log (None: kept in memory).
    pub fn commit(&mut self, message: &Message, stored: Option<Stored>, now_ms: u64) {
        self.unpend(message);
        self.insert(message, stored, now_ms);
    }

    /// An admitted message could not be made durable: forget it.
    pub fn abandon(&mut self, message: &Message) {
        self.unpend(message);
        if let Some(k) = &message.body.key {
            if self.dedup.get(k).is_some_and(|(_, id)| *id == message.id) {
                self.dedup.remove(k);
            }
        }
    }

    /// An admitted message is dropped before it was committed (the oldest
    /// of a full queue that drops its oldest): it no longer counts
    /// against the limits; its key stays in the dedup window, as a
    /// committed message's does when it is dropped.
    pub fn forget_pending(&mut self, message: &Message) {
        self.unpend(message);
    }

    fn unpend(&mut self, message: &Message) {
        self.pending.0 = self.pending.0.saturating_sub(1);
        self.pending.1 = self.pending.1.saturating_sub(message.payload_len());
    }

    /// Takes a message out without an effect (replaying a removal).
    pub fn discard(&mut self, id: u64) -> Option<Gone> {
        self.remove_entry(id).map(|e| Gone {
            stored: e.held.stored(),
        })
    }

    /// Re-adds a message recovered from storage (ids and counts kept; its
    /// key re-enters the dedup window if it is still open).
    /// `stored`: where its body is in the log (None: kept in memory).
    pub fn restore(&mut self, message: &Message, stored: Option<Stored>, now_ms: u64) {
        self.ids.fetch_max(message.id + 1, Ordering::Relaxed);
        if let (Some(window), Some(key)) = (self.settings.dedup_window, &message.body.key) {
            let until = message.published_ms + window.as_millis() as u64;
            if until > now_ms && !self.dedup.contains_key(key) {
                self.dedup.insert(key.clone(), (until, message.id));
                self.dedup_order.push_back((until, key.clone()));
            }
        }
        self.insert(message, stored, now_ms);
    }

    fn insert(&mut self, message: &Message, stored: Option<Stored>, now_ms: u64) {
        let mut held = Held::new(message, stored, &mut self.kinds, now_ms);
        held.priority = held.priority.min(LEVELS as u8 - 1);
        self.place(message.id, held, now_ms);
    }

    /// Queues a held message: ready, or waiting for its time.
    fn place(&mut self, id: u64, held: Held, now_ms: u64) {
        if let Some(e) = held.expires_ms() {
            self.expiries.insert((e, id));
        }
        self.depth.bytes += held.payload_len();
        let priority = usize::from(held.priority);
        let due = held.deliver_at_ms().filter(|t| *t > now_ms);
        let at = match due {
            Some(until_ms) => {
                self.waiting.insert((until_ms, id));
                self.depth.waiting += 1;
                Where::Waiting { until_ms }
            }
            None => {
                // Back to its place in line: a redelivered message goes
                // before those published after it (FIFO survives retries;
                // it was taken from near the front, so this is cheap).
                let level = &mut self.ready[priority];
                match level.back() {
                    Some(&last) if last > id => {
                        let at = level.partition_point(|&x| x < id);
                        level.insert(at, id);
                    }
                    _ => level.push_back(id),
                }
                self.depth.ready_by_priority[priority] += 1;
                Where::Ready { since_ms: now_ms }
            }
        };
        let mut e = Entry { held };
        e.set_at(at);
        self.entries.insert(id, e);
    }

    /// Takes a message out of the queue entirely.
    fn remove(&mut self, id: u64) -> Option<Arc<Message>> {
        let e = self.remove_entry(id)?;
        Some(Arc::new(e.held.message(id, &self.kinds)))
    }

    /// `remove`, as the queue held it.
    fn remove_entry(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.unplace(id, e.held.priority, e.held.key(), &e.at());
        self.depth.bytes -= e.held.payload_len();
        if let Some(x) = e.held.expires_ms() {
            self.expiries.remove(&(x, id));
        }
        Some(e)
    }

    /// Undoes the bookkeeping of where the entry was (ready ids are left
    /// in their deque and skipped later).
    fn unplace(&mut self, id: u64, priority: u8, key: Option<&str>, at: &Where) {
        match *at {
            Where::Ready { .. } => {
                self.depth.ready_by_priority[usize::from(priority)] -= 1;
            }
            Where::Waiting { until_ms } => {
                self.waiting.remove(&(until_ms, id));
                self.depth.waiting -= 1;
            }
            Where::InFlight { deadline_ms, .. } => {
                self.deadlines.remove(&(deadline_ms, id));
                self.depth.in_flight -= 1;
                if let Some(k) = key {
                    if self.settings.order_by_key {
                        self.busy_keys.remove(k);
                    }
                }
            }
        }
    }

    /// The next message for `consumer`, now in flight until its deadline.
    pub fn next(&mut self, now_ms: u64, consumer: u64, filter: &Filter) -> Option<Delivery> {
        let id = self.pick(now_ms, filter)?;
        let deadline_ms = now_ms + self.settings.ack_timeout.as_millis() as u64;
        let e = self.entries.get_mut(id)?;
        e.held.deliveries += 1;
        let was = e.at();
        e.set_at(Where::InFlight {
            consumer,
            deadline_ms,
        });
        let priority = e.held.priority;
        let message = Arc::new(e.held.message(id, &self.kinds));
        // It was ready or waiting (no key of it was busy).
        self.unplace(id, priority, None, &was);
        self.deadlines.insert((deadline_ms, id));
        self.depth.in_flight += 1;
        if self.settings.order_by_key {
            if let Some(k) = &message.body.key {
                self.busy_keys.insert(k.clone());
            }
        }
        Some(Delivery {
            message,
            deadline_ms,
        })
    }

    /// Chooses (and unlinks from its deque) the ready id to deliver.
    fn pick(&mut self, now_ms: u64, filter: &Filter) -> Option<u64> {
        // (effective level, older first), level, index in the deque
        let mut best: Option<((u64, std::cmp::Reverse<u64>), usize, usize)> = None;
        // Levels under the filter's minimum are never looked at (a
        // consumer of CRITICAL messages does not scan a NORMAL backlog).
        for level in (usize::from(filter.min_priority).min(LEVELS - 1)..LEVELS).rev() {
            // Drop stale ids at the front.
            while let Some(id) = self.ready[level].front() {
                match self.entries.get(*id) {
                    Some(Entry { held })
                        if held.place == Place::Ready && usize::from(held.priority) == level =>
                    {
                        break
                    }
                    _ => {
                        self.ready[level].pop_front();
                    }
                }
            }
            let found = self.ready[level].iter().enumerate().find_map(|(i, id)| {
                let e = self.entries.get(*id)?;
                let Where::Ready { since_ms } = e.at() else {
                    return None;
                };
                let p = e.held.priority;
                if usize::from(p) != level || !filter.admits(e.held.kind(&self.kinds), p) {
                    return None;
                }
                if self.settings.order_by_key {
                    if let Some(k) = e.held.key() {
                        if self.busy_keys.contains(k) {
                            return None;
                        }
                    }
                }
                Some((i, since_ms))
            });
            let Some((i, since_ms)) = found else { continue };
            let aged = self.settings.aging.map_or(0, |a| {
                now_ms.saturating_sub(since_ms) / (a.as_millis().max(1) as u64)
            });
            // Effective level first, then the longer wait; levels are
            // visited from the top, so a tie keeps the higher base level.
            let score = (level as u64 + aged, std::cmp::Reverse(since_ms));
            if best.is_none_or(|(s, _, _)| score > s) {
                best = Some((score, level, i));
            }
            if self.settings.aging.is_none() {
                break; // the highest level with a candidate wins outright
            }
        }
        let (_, level, i) = best?;
        self.ready[level].remove(i)
    }

    pub fn ack(&mut self, id: u64, consumer: u64) -> Result<Gone, AckError> {
        self.in_flight(id, consumer)?;
        self.discard(id).ok_or(AckError::Unknown(id))
    }

    /// Extends an in-flight message's deadline to `now + by`.
    pub fn extend(
        &mut self,
        now_ms: u64,
        id: u64,
        consumer: u64,
        by: Duration,
    ) -> Result<u64, AckError> {
        self.in_flight(id, consumer)?;
        let e = self.entries.get_mut(id).ok_or(AckError::Unknown(id))?;
        let Where::InFlight {
            consumer,
            deadline_ms: old,
        } = e.at()
        else {
            return Err(AckError::Unknown(id));
        };
        let deadline_ms = now_ms + by.as_millis() as u64;
        e.set_at(Where::InFlight {
            consumer,
            deadline_ms,
        });
        self.deadlines.remove(&(old, id));
        self.deadlines.insert((deadline_ms, id));
        Ok(deadline_ms)
    }

    /// A consumer gives a delivery back: `requeue` retries it (after the
    /// backoff, while deliveries remain), else it is dead-lettered now.
    pub fn nack(
        &mut self,
        now_ms: u64,
        id: u64,
        consumer: u64,
        requeue: bool,
        error: &str,
    ) -> Result<Vec<Effect>, AckError> {
        self.in_flight(id, consumer)?;
        Ok(self.failed(now_ms, id, requeue, error))
    }

    fn in_flight(&self, id: u64, consumer: u64) -> Result<(), AckError> {
        match self.entries.get(id).map(Entry::at) {
            Some(Where::InFlight { consumer: c, .. }) if c == consumer => Ok(()),
            Some(Where::InFlight { .. }) => Err(AckError::NotYours(id)),
            _ => Err(AckError::Unknown(id)),
        }
    }

    /// A delivery failed (nack, ack timeout, consumer gone).
    fn failed(&mut self, now_ms: u64, id: u64, requeue: bool, error: &str) -> Vec<Effect> {
        let Some(Entry { mut held, .. }) = self.remove_entry(id) else {
            return Vec::new();
        };
        held.set_last_error(error);
        let deliveries = held.deliveries;
        let exhausted = self
            .settings
            .max_deliveries
            .is_some_and(|max| deliveries >= max);
        if !requeue || exhausted {
            let reason = if requeue {
                format!("{deliveries} deliveries failed; last error: {error}")
            } else {
                format!("rejected by the consumer: {error}")
            };
            return vec![self.dead(Arc::new(held.message(id, &self.kinds)), reason)];
        }
        let wait = self.settings.backoff.delay(deliveries);
        held.set_deliver_at_ms((!wait.is_zero()).then(|| now_ms + wait.as_millis() as u64));
        let message = Arc::new(held.message(id, &self.kinds));
        self.place(id, held, now_ms);
        vec![Effect::Requeued { message }]
    }

    fn dead(&self, message: Arc<Message>, reason: String) -> Effect {
        if self.settings.has_dead_letter {
            Effect::DeadLetter { message, reason }
        } else {
            Effect::Dropped { message, reason }
        }
    }

    /// Every in-flight delivery of `consumer` comes back (its stream ended).
    pub fn release(&mut self, now_ms: u64, consumer: u64) -> Vec<Effect> {
        let mine: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.at(), Where::InFlight { consumer: c, .. } if c == consumer))
            .map(|(id, _)| id)
            .collect();
        mine.into_iter()
            .flat_map(|id| self.failed(now_ms, id, true, "the consumer went away"))
            .collect()
    }

    /// Moves time forward: due messages become ready, overdue deliveries
    /// come back, expired messages leave.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(&(until, id)) = self.waiting.first() {
            if until > now_ms {
                break;
            }
            if let Some(Entry { mut held, .. }) = self.remove_entry(id) {
                held.set_deliver_at_ms(None);
                self.place(id, held, now_ms);
            } else {
                self.waiting.remove(&(until, id));
            }
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            effects.extend(self.failed(
                now_ms,
                id,
                true,
                "not acknowledged within the ack timeout",
            ));
        }
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now_ms {
                break;
            }
            self.expiries.remove(&(at, id));
            // In flight: the consumer may still finish; expiry waits.
            if matches!(
                self.entries.get(id).map(Entry::at),
                Some(Where::InFlight { .. })
            ) {
                continue;
            }
            if let Some(m) = self.remove(id) {
                let reason = EXPIRED.to_string();
                effects.push(if self.settings.expire_to_dead_letter {
                    self.dead(m, reason)
                } else {
                    Effect::Dropped { message: m, reason }
                });
            }
        }
        self.forget_dedup(now_ms);
        effects
    }

    /// When `tick` next has something to do.
    pub fn next_wakeup(&self) -> Option<u64> {
        [
            self.waiting.first().map(|w| w.0),
            self.deadlines.first().map(|d| d.0),
            self.expiries.first().map(|x| x.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn forget_dedup(&mut self, now_ms: u64) {
        while let Some((until, _)) = self.dedup_order.front() {
            if *until > now_ms {
                break;
            }
            if let Some((until, key)) = self.dedup_order.pop_front() {
                if self.dedup.get(&key).is_some_and(|(u, _)| *u == until) {
                    self.dedup.remove(&key);
                }
            }
        }
    }
}

#[path = "state_admin.rs"]
mod admin;
pub use admin::Place;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
