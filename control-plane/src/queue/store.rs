//! The embedded queue store: every queue's state in memory, every change
//! made durable in the segment log (`log`) before anyone sees it, and the
//! states rebuilt from the log on start.
//!
//! A publish is admitted (dedup, size), appended (group commit), then
//! committed and only then delivered and acknowledged. Acks, removals and
//! requeues are appended before they are answered. Deliveries are not
//! logged: after a restart what was in flight is delivered again (at least
//! once). Dead letters move as one append: removed here, published there.
//! Message ids come from one counter for all queues, started past every
//! sequence number the log ever used, so an id is never reused even after
//! compaction dropped its records.
//!
//! A queued message's payload is not kept in memory: only its index entry
//! and its record's position (`stored`); it is read back on delivery.

use super::catalog::Catalog;
use super::crypt::{CryptError, Keys};
use super::live::Live;
use super::log::{self, Log, LogError};
use super::state::{
    AckError, Delivery, Effect, Filter, Message, NewMessage, Published, QueueState, Settings,
};
use super::stored::Stored;
use super::wire::{from_wire, record, sealed, unseal};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use xds_proto::v1::{queue_record::Event, QueueMessage, QueueRecord, QueueRemoved};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("queue \"{0}\" does not exist")]
    UnknownQueue(String),
    #[error("{0}")]
    Ack(#[from] AckError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error("queue \"{0}\" has no dead-letter queue")]
    NoDeadLetter(String),
    /// The external store (Redis) failed or answered nonsense.
    #[error("{0}")]
    Backend(String),
    /// The external store cannot be reached now (down, restarting,
    /// loading its data): the same call may succeed later.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the same call may succeed when tried again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// One queue: its state and who to wake when it has messages.
pub struct Queue {
    pub name: String,
    state: Mutex<QueueState>,
    /// Woken when messages become ready.
    pub ready: tokio::sync::Notify,
    config: Mutex<QueueConfig>,
    /// broadcast: every connected consumer's feed.
    pub feed: tokio::sync::broadcast::Sender<Arc<Message>>,
    /// Consumers connected now.
    pub consumers: AtomicU64,
}

/// Messages a broadcast consumer may fall behind by before it misses some.
pub const BROADCAST_BUFFER: usize = 4096;

impl Queue {
    pub(super) fn new(config: &QueueConfig, state: QueueState) -> Queue {
        Queue {
            name: config.name.clone(),
            state: Mutex::new(state),
            ready: tokio::sync::Notify::new(),
            config: Mutex::new(config.clone()),
            feed: tokio::sync::broadcast::channel(BROADCAST_BUFFER).0,
            consumers: AtomicU64::new(0),
        }
    }

    /// (largest payload, broadcast?) under one lock: what a publish checks.
    pub fn publish_limits(&self) -> (u64, bool) {
        let c = self.settings();
        (c.max_message_bytes, c.fanout == Fanout::Broadcast)
    }

    pub fn consumer_count(&self) -> u64 {
        self.consumers.load(Ordering::Relaxed)
    }

    pub fn fanout(&self) -> Fanout {
        self.settings().fanout.clone()
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, QueueConfig> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn dead_letter(&self) -> Option<String> {
        self.settings().dead_letter.clone()
    }

    pub(super) fn encrypted(&self) -> bool {
        self.settings().encrypted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding the lock leaves a consistent state (every
        // mutation is a single call), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn depth(&self) -> super::state::Depth {
        self.lock().depth().clone()
    }

    pub fn oldest_ms(&self) -> Option<u64> {
        self.lock().oldest_ms()
    }

    pub fn config(&self) -> QueueConfig {
        self.settings().clone()
    }

    /// New settings from a changed Queue (messages already queued keep
    /// their level and expiry).
    pub(super) fn reconfigure(&self, config: &QueueConfig) {
        self.lock().reconfigure(config.settings.clone());
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
    }
}

/// A queue's configuration as the store needs it.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// "<namespace>/<name>"
    pub name: String,
    pub settings: Settings,
    /// "<namespace>/<name>" of its dead-letter queue.
    pub dead_letter: Option<String>,
    /// fifo, priority, ... (for describe).
    pub kind: String,
    pub max_message_bytes: u64,
    /// Payloads encrypted at rest.
    pub encrypted: bool,
    pub fanout: Fanout,
}

/// Where a publish to a queue goes besides the queue itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fanout {
    /// Into the queue; its consumers compete.
    #[default]
    None,
    /// A pubsub topic: a copy (same id) into each subscription's queue
    /// ("<namespace>/<topic>/<subscription>"), none into the topic.
    Topic(Vec<String>),
    /// To every consumer connected now; nothing is kept.
    Broadcast,
}

pub struct Store {
    log: Log,
    keys: Keys,
    ids: Arc<AtomicU64>,
    queues: Catalog,
    /// Log sequence of each live message's `published` record: the
    /// smallest bounds what compaction may drop.
    live: Mutex<Live>,
}

pub use super::dead_letter::{DEAD_LETTER_ID, DEAD_LETTER_QUEUE, DEAD_LETTER_REASON};

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub recovery: log::Recovery,
    /// Messages back in their queues.
    pub messages: u64,
    /// Records of queues no longer configured, skipped.
    pub orphaned: u64,
}

impl Store {
    /// Opens the log and rebuilds `queues` from it (records of other
    /// queues are skipped: their queue was deleted).
    pub fn open(
        config: log::Config,
        queues: &[QueueConfig],
        now_ms: u64,
        keys: Keys,
    ) -> Result<(Store, Opened), StoreError> {
        let ids = Arc::new(AtomicU64::new(1));
        let mut states: HashMap<String, QueueState> = queues
            .iter()
            .map(|q| {
                (
                    q.name.clone(),
                    QueueState::with_ids(q.settings.clone(), ids.clone()),
                )
            })
            .collect();
        let mut live = Live::default();
        let mut orphaned = 0;
        let mut undecodable = 0;
        let mut sealed: Option<CryptError> = None;
        let (log, recovery) = Log::open(config, |at, bytes| {
            let seq = at.seq;
            let Ok(record) = QueueRecord::decode(bytes) else {
                undecodable += 1;
                return;
            };
            let Some(state) = states.get_mut(&record.queue) else {
                orphaned += 1;
                return;
            };
            let mut clear = |m: QueueMessage| match unseal(&keys, &record.queue, m) {
                Ok(m) => Some(m),
                Err(e) => {
                    sealed.get_or_insert(e);
                    None
                }
            };
            match record.event {
                Some(Event::Published(m)) => {
                    if let Some(m) = clear(m) {
                        live.add(seq);
                        let m = from_wire(m);
                        state.restore(&m, Some(Stored::of(&m, at, seq)), now_ms);
                    }
                }
                // Only for a message still here: an ack's removal may be
                // written before the requeue record of an earlier failure.
                Some(Event::Requeued(m)) => {
                    if let Some(old) = state.discard(m.id) {
                        let live_seq = old.stored.map_or(seq, |s| s.live_seq);
                        if let Some(m) = clear(m) {
                            let m = from_wire(m);
                            let stored = Stored::of(&m, at, live_seq);
                            state.restore(&m, Some(stored), now_ms);
                        }
                    }
                }
                Some(Event::Removed(r)) => {
                    if let Some(gone) = state.discard(r.id) {
                        if let Some(s) = gone.stored {
                            live.remove(s.live_seq);
                        }
                    }
                }
                None => undecodable += 1,
            }
        })?;
        if let Some(e) = sealed {
            // Starting without those messages would lose them.
            return Err(e.into());
        }
        if undecodable > 0 {
            tracing::warn!(
                records = undecodable,
                "queue log: records that are not queue records were skipped"
            );
        }
        // Past every id and every sequence ever written (see the module doc).
        ids.fetch_max(recovery.next + 1, Ordering::Relaxed);
        let messages = states.values().map(|s| s.len() as u64).sum();
        let queues = queues
            .iter()
            .filter_map(|q| {
                let state = states.remove(&q.name)?;
                Some((q.name.clone(), Arc::new(Queue::new(q, state))))
            })
            .collect();
        Ok((
            Store {
                log,
                keys,
                ids,
                queues: Catalog::new(queues),
                live: Mutex::new(live),
            },
            Opened {
                recovery,
                messages,
                orphaned,
            },
        ))
    }

    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, StoreError> {
        self.queues.get(name)
    }

    /// Every queue, by name.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.all()
    }

    /// Adds new queues and updates the settings of existing ones.
    pub fn configure(&self, queues: &[QueueConfig]) {
        self.queues.configure(queues, &self.ids);
    }

    /// Publishes `bodies` in order; each outcome is final (an enqueued
    /// message is durable) once this returns. A pubsub topic's message goes
    /// into every subscription with one id, or into none (when one refuses
    /// it); a broadcast message goes to the consumers connected now.
    pub async fn publish(
        &self,
        queue: &str,
        now_ms: u64,
        bodies: Vec<NewMessage>,
    ) -> Result<Vec<(Published, u32)>, StoreError> {
        let q = self.queue(queue)?;
        let targets = match q.fanout() {
            Fanout::Broadcast => return Ok(self.broadcast(&q, now_ms, bodies)),
            Fanout::None => vec![q],
            Fanout::Topic(subs) => subs
                .iter()
                .map(|s| self.queue(s))
                .collect::<Result<Vec<_>, _>>()?,
        };
        for t in &targets {
            self.queues.check_key(t, &self.keys)?;
        }
        let receivers = targets.len() as u32;
        let mut outcomes = Vec::with_capacity(bodies.len());
        let mut batch = Batch::default();
        let mut effects: Vec<(usize, Vec<Effect>)> = Vec::new();
        let drops = targets.iter().any(|t| t.settings().settings.drop_oldest);
        for body in bodies {
            let (out, copies) = if drops {
                self.admit_dropping(&targets, now_ms, body, &mut batch, &mut effects)
            } else {
                let (out, copies, _) = admit_everywhere(&targets, now_ms, body, &mut effects);
                (out, copies)
            };
            outcomes.push((out, receivers));
            for (t, m) in copies {
                let wire = match self.wire(&targets[t], &m) {
                    Ok(w) => w,
                    Err(e) => {
                        targets[t].lock().abandon(&m);
                        self.abandon(batch);
                        return Err(e);
                    }
                };
                batch.admit(
                    &targets[t],
                    m,
                    record(&targets[t].name, Event::Published(wire)),
                );
            }
        }
        for (t, e) in effects {
            if let Err(err) = self.add_effects(&mut batch, &targets[t], now_ms, e) {
                self.abandon(batch);
                return Err(err);
            }
        }
        self.write(batch, now_ms).await?;
        Ok(outcomes)
    }

    /// `admit_everywhere` for targets that drop their oldest when full:
    /// when the oldest are this request's own (not yet committed)
    /// messages, those are dropped to make room, as a committed one would
    /// be.
    fn admit_dropping(
        &self,
        targets: &[Arc<Queue>],
        now_ms: u64,
        body: NewMessage,
        batch: &mut Batch,
        effects: &mut Vec<(usize, Vec<Effect>)>,
    ) -> (Published, Copies) {
        loop {
            let (out, copies, refused_by) =
                admit_everywhere(targets, now_ms, body.clone(), effects);
            let Some(t) = refused_by.filter(|t| targets[*t].settings().settings.drop_oldest) else {
                return (out, copies);
            };
            let Some(m) = batch.take_back_oldest(&targets[t]) else {
                return (out, copies);
            };
            targets[t].lock().forget_pending(&m);
            effects.push((
                t,
                vec![Effect::Dropped {
                    message: m,
                    reason: "dropped as the oldest: the queue was full".into(),
                }],
            ));
        }
    }

    /// A broadcast publish: checked (dedup) and handed to every consumer
    /// connected now; nothing is kept, so nothing is written.
    fn broadcast(&self, q: &Queue, now_ms: u64, bodies: Vec<NewMessage>) -> Vec<(Published, u32)> {
        let mut state = q.lock();
        bodies
            .into_iter()
            .map(|body| {
                let (out, message, _) = state.admit(now_ms, body);
                let Some(m) = message else {
                    return (out, 0);
                };
                state.pass(&m);
                let receivers = q.feed.send(m).unwrap_or(0) as u32;
                (out, receivers)
            })
            .collect()
    }

    /// Appends a batch and, once durable, applies it (or undoes it).
    async fn write(&self, mut batch: Batch, now_ms: u64) -> Result<(), StoreError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut batch.records);
        match self.log.append(records).await {
            Ok(positions) => {
                self.settle(batch, &positions, now_ms);
                Ok(())
            }
            Err(e) => {
                self.abandon(batch);
                Err(e.into())
            }
        }
    }

    /// The batch is durable: admitted messages join their queues, removed
    /// ones stop holding back compaction, consumers are woken.
    fn settle(&self, batch: Batch, positions: &[log::Position], now_ms: u64) {
        {
            let mut live = self.live();
            for seq in &batch.removed {
                live.remove(*seq);
            }
            for (_, _, i) in &batch.admitted {
                if let Some(at) = positions.get(*i) {
                    live.add(at.seq);
                }
            }
        }
        let mut woken: Vec<&Arc<Queue>> = Vec::new();
        for (target, m, i) in &batch.admitted {
            let stored = positions.get(*i).map(|at| Stored::of(m, *at, at.seq));
            target.lock().commit(m, stored, now_ms);
            if !woken.iter().any(|w| Arc::ptr_eq(w, target)) {
                woken.push(target);
            }
        }
        for q in woken.into_iter().chain(&batch.wake) {
            q.ready.notify_waiters();
        }
    }

    /// The batch could not be made durable: admitted messages are forgotten
    /// and messages taken out for it go back.
    fn abandon(&self, batch: Batch) {
        for (target, m, _) in &batch.admitted {
            target.lock().abandon(m);
        }
        for (q, m) in batch.taken {
            q.lock().restore(&m, m.stored, m.published_ms);
        }
    }

    async fn persist(
        &self,
        queue: &Arc<Queue>,
        now_ms: u64,
        effects: Vec<Effect>,
    ) -> Result<(), StoreError> {
        if effects.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        if let Err(e) = self.add_effects(&mut batch, queue, now_ms, effects) {
            self.abandon(batch);
            return Err(e);
        }
        self.write(batch, now_ms).await
    }

    /// The records for `effects` of `source`; dead letters are admitted
    /// into its dead-letter queue (committed when the batch settles).
    fn add_effects(
        &self,
        batch: &mut Batch,
        source: &Arc<Queue>,
        now_ms: u64,
        effects: Vec<Effect>,
    ) -> Result<(), StoreError> {
        let queue = source.name.as_str();
        let target = source.dead_letter().and_then(|d| self.queue(&d).ok());
        for e in effects {
            if let Effect::Dropped { reason, .. } | Effect::DeadLetter { reason, .. } = &e {
                if reason == super::state::EXPIRED {
                    metrics::counter!(crate::queue::metrics::EXPIRED_TOTAL, "queue" => queue.to_string())
                        .increment(1);
                }
            }
            match e {
                Effect::Requeued { message } => {
                    let message = self.full(source, &message)?;
                    batch.push(record(queue, Event::Requeued(self.wire(source, &message)?)));
                    if !batch.wake.iter().any(|w| Arc::ptr_eq(w, source)) {
                        batch.wake.push(source.clone());
                    }
                }
                Effect::Dropped { message, reason } => {
                    tracing::info!(queue, id = message.id, reason = %reason, "queue message dropped");
                    metrics::counter!(crate::queue::metrics::DROPPED_TOTAL, "queue" => queue.to_string())
                        .increment(1);
                    batch.remove(queue, &message, "dropped");
                }
                Effect::DeadLetter { message, reason } => {
                    batch.remove(queue, &message, "dead-lettered");
                    metrics::counter!(crate::queue::metrics::DEAD_LETTERED_TOTAL, "queue" => queue.to_string())
                        .increment(1);
                    let Some(target) = &target else {
                        tracing::warn!(
                            queue,
                            id = message.id,
                            "dead-letter queue missing; message dropped"
                        );
                        continue;
                    };
                    let message = self.full(source, &message)?;
                    let body = super::dead_letter::dead_letter(&message, queue, &reason);
                    let (out, admitted, _) = target.lock().admit(now_ms, body);
                    match admitted {
                        Some(m) => {
                            let wire = match self.wire(target, &m) {
                                Ok(w) => w,
                                Err(e) => {
                                    target.lock().abandon(&m);
                                    return Err(e);
                                }
                            };
                            batch.admit(target, m, record(&target.name, Event::Published(wire)));
                        }
                        None => {
                            tracing::warn!(queue, id = message.id, outcome = ?out, "dead-letter queue refused the message; dropped")
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The next message for `consumer`, if one is ready (its body read
    /// back from the log, outside the queue's lock).
    pub fn next(
        &self,
        queue: &str,
        now_ms: u64,
        consumer: u64,
        filter: &Filter,
    ) -> Result<Option<Delivery>, StoreError> {
        let q = self.queue(queue)?;
        let delivery = q.lock().next(now_ms, consumer, filter);
        match delivery {
            Some(mut d) => {
                d.message = self.full(&q, &d.message)?;
                Ok(Some(d))
            }
            None => Ok(None),
        }
    }

    /// Acknowledges deliveries; returns those that could not be (with
    /// why). The removals are written in the next group commit without
    /// waiting: the consumer is not answered, and an ack lost in a crash
    /// only means one more delivery (at least once).
    pub fn ack(
        &self,
        queue: &str,
        ids: &[u64],
        consumer: u64,
    ) -> Result<Vec<(u64, AckError)>, StoreError> {
        let q = self.queue(queue)?;
        let mut failed = Vec::new();
        let mut done = Vec::with_capacity(ids.len());
        let mut gone = Vec::with_capacity(ids.len());
        {
            let mut state = q.lock();
            for &id in ids {
                match state.ack(id, consumer) {
                    Ok(m) => {
                        done.push(id);
                        gone.extend(m.stored.map(|s| s.live_seq));
                    }
                    Err(e) => failed.push((id, e)),
                }
            }
        }
        if done.is_empty() {
            return Ok(failed);
        }
        let records = done
            .iter()
            .map(|&id| {
                record(
                    queue,
                    Event::Removed(QueueRemoved {
                        id,
                        why: "acked".into(),
                    }),
                )
            })
            .collect();
        self.log.append_detached(records)?;
        let mut live = self.live();
        for seq in gone {
            live.remove(seq);
        }
        Ok(failed)
    }

    pub fn extend(
        &self,
        queue: &str,
        now_ms: u64,
        id: u64,
        consumer: u64,
        by: std::time::Duration,
    ) -> Result<u64, StoreError> {
        Ok(self.queue(queue)?.lock().extend(now_ms, id, consumer, by)?)
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
        let q = self.queue(queue)?;
        let effects = q.lock().nack(now_ms, id, consumer, requeue, error)?;
        self.persist(&q, now_ms, effects).await
    }

    /// A consumer's stream ended: its deliveries go back.
    pub async fn release(&self, queue: &str, now_ms: u64, consumer: u64) -> Result<(), StoreError> {
        let q = self.queue(queue)?;
        let effects = q.lock().release(now_ms, consumer);
        self.persist(&q, now_ms, effects).await
    }

    /// Moves every queue's clock (due messages, ack timeouts, expiry),
    /// persists what changed, and compacts the log.
    pub async fn tick(&self, now_ms: u64) -> Result<(), StoreError> {
        for q in self.queues() {
            let (effects, had_ready) = {
                let mut state = q.lock();
                let before = state.depth().ready_by_priority.iter().sum::<u64>();
                let effects = state.tick(now_ms);
                (
                    effects,
                    state.depth().ready_by_priority.iter().sum::<u64>() > before,
                )
            };
            self.persist(&q, now_ms, effects).await?;
            if had_ready {
                q.ready.notify_waiters();
            }
        }
        self.compact().await
    }

    /// The earliest time any queue's `tick` has work.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.queues
            .all()
            .iter()
            .filter_map(|q| q.lock().next_wakeup())
            .min()
    }

    /// Drops the log segments that hold no live message.
    pub async fn compact(&self) -> Result<(), StoreError> {
        let mark = self.live().low_mark();
        self.log.drop_before(mark).await?;
        Ok(())
    }

    pub fn log_segments(&self) -> Vec<log::Segment> {
        self.log.segments()
    }

    /// Group commits (fsyncs) and records written since start.
    pub fn log_commits(&self) -> (u64, u64) {
        let s = self.log.stats();
        (
            s.commits.load(std::sync::atomic::Ordering::Relaxed),
            s.records.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// A message as stored: its payload sealed when the queue is encrypted.
    fn wire(&self, queue: &Queue, m: &Message) -> Result<QueueMessage, StoreError> {
        Ok(sealed(&self.keys, &queue.name, queue.encrypted(), m)?)
    }

    pub(super) fn log(&self) -> &Log {
        &self.log
    }

    pub(super) fn keys(&self) -> &Keys {
        &self.keys
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[path = "store_batch.rs"]
mod batch;
use batch::{admit_everywhere, Batch, Copies};

#[path = "store_admin.rs"]
mod admin;
pub use admin::Redriven;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "store_admin_tests.rs"]
mod admin_tests;
