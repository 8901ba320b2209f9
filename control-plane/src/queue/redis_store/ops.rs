//! The Redis store's operations: publish (queues, topics, broadcast),
//! deliveries and what consumers say about them, the clock, dead letters,
//! and the operators' peek / purge / redrive. Each is one script call per
//! queue (see the Lua files beside this one).

use super::{base, int, items, settings_args, text, RedisStore, BROADCAST};
use crate::queue::backend::Stats;
use crate::queue::dead_letter;
use crate::queue::metrics::{
    DEAD_LETTERED_TOTAL, DROPPED_TOTAL, EXPIRED_TOTAL, PURGED_TOTAL, REDRIVEN_TOTAL,
};
use crate::queue::state::{
    AckError, Delivery, Filter, Message, NewMessage, Place, Published, EXPIRED, LEVELS, NORMAL,
};
use crate::queue::store::{Fanout, Queue, Redriven, StoreError};
use crate::queue::wire::{sealed, to_wire};
use ::redis::Value;
use prost::Message as _;
use std::sync::Arc;

/// One message to admit, with the marker that makes a move idempotent and
/// the queue a dead letter came from.
struct Item {
    body: NewMessage,
    marker: String,
    source: String,
}

impl Item {
    fn new(body: NewMessage) -> Item {
        Item {
            body,
            marker: String::new(),
            source: String::new(),
        }
    }
}

fn place(s: &str) -> Place {
    match s {
        "waiting" => Place::Waiting,
        "in-flight" => Place::InFlight,
        _ => Place::Ready,
    }
}

impl RedisStore {
    /// Publishes `bodies` in order (see `Store::publish`); each enqueued
    /// message is in Redis when this returns.
    pub async fn publish(
        &self,
        queue: &str,
        now_ms: u64,
        bodies: Vec<NewMessage>,
    ) -> Result<Vec<(Published, u32)>, StoreError> {
        let q = self.queue(queue)?;
        let targets = match q.fanout() {
            Fanout::Broadcast => return self.broadcast(&q, now_ms, bodies).await,
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
        let out = self
            .admit(
                &targets,
                now_ms,
                bodies.into_iter().map(Item::new).collect(),
            )
            .await?;
        Ok(out.into_iter().map(|o| (o, receivers)).collect())
    }

    /// Admits `items` into every target (a queue, or a topic's
    /// subscriptions: one hash tag) in one script.
    async fn admit(
        &self,
        targets: &[Arc<Queue>],
        now_ms: u64,
        items_in: Vec<Item>,
    ) -> Result<Vec<Published>, StoreError> {
        let Some(first) = targets.first() else {
            return Ok(vec![
                Published::Refused("no subscription to take it".into());
                items_in.len()
            ]);
        };
        if items_in.is_empty() {
            return Ok(Vec::new());
        }
        let settings = first.config().settings;
        let ttl_default = settings.ttl;
        let mut batch = Vec::with_capacity(items_in.len());
        for item in items_in {
            let mut body = item.body;
            body.priority = if settings.priorities {
                body.priority.min(LEVELS as u8 - 1)
            } else {
                NORMAL
            };
            let ttl = match (ttl_default, body.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let expires_ms = ttl.map(|t| now_ms + t.as_millis() as u64);
            for at in [body.deliver_at_ms.filter(|t| *t > now_ms), expires_ms]
                .into_iter()
                .flatten()
            {
                for t in targets {
                    self.hint(&t.name, at);
                }
            }
            let m = Message {
                id: 0,
                body,
                published_ms: now_ms,
                expires_ms,
                deliveries: 0,
                last_error: None,
                stored: None,
            };
            batch.push((m, item.marker, item.source));
        }
        let n = batch.len() as u64;
        let mut v = Value::Nil;
        // Twice at most: a block of ids reserved before Redis lost writes
        // (a restart under a weaker appendfsync than `always`) may name
        // messages already there; the script then writes nothing and a
        // fresh block is reserved.
        for _ in 0..2 {
            let first_id = self.new_ids(&first.name, n).await?;
            let mut inv = self.scripts.publish.prepare_invoke();
            for t in targets {
                inv.key(base(&t.name));
            }
            inv.arg(&first.name).arg(now_ms);
            for a in settings_args(&settings) {
                inv.arg(a);
            }
            inv.arg(n);
            for (i, (m, marker, source)) in batch.iter_mut().enumerate() {
                m.id = first_id + i as u64;
                let body = &m.body;
                inv.arg(m.id)
                    .arg(body.priority)
                    .arg(body.payload.len())
                    .arg(&body.kind)
                    .arg(body.key.as_deref().unwrap_or(""))
                    .arg(body.deliver_at_ms.unwrap_or(0))
                    .arg(m.expires_ms.unwrap_or(0))
                    .arg(&*marker)
                    .arg(&*source);
                for t in targets {
                    inv.arg(sealed(&self.keys, &t.name, t.encrypted(), m)?.encode_to_vec());
                }
            }
            v = match inv.invoke_async(&mut self.conn()).await {
                Ok(v) => v,
                Err(e) => {
                    let e = StoreError::from(e);
                    if e.is_transient() {
                        // Redis may be restarting: its counter may come
                        // back behind this block.
                        self.forget_ids(&first.name);
                    }
                    return Err(e);
                }
            };
            if text(&v) != "ids-taken" {
                break;
            }
            tracing::warn!(queue = %first.name, first_id, "queue store: reserved ids already in use (Redis lost writes?); reserving anew");
            self.forget_ids(&first.name);
        }
        if text(&v) == "ids-taken" {
            return Err(StoreError::Unavailable(format!(
                "redis: ids of {} collide with stored messages twice; try again",
                first.name
            )));
        }
        let mut parts = items(v).into_iter();
        let results = parts.next().map(items).unwrap_or_default();
        let dropped = parts.next().map_or(0, |d| int(&d));
        if dropped > 0 {
            metrics::counter!(DROPPED_TOTAL, "queue" => first.name.clone())
                .increment(dropped as u64);
        }
        Ok(results
            .into_iter()
            .map(|r| {
                let r = items(r);
                let code = r.first().map_or(2, int);
                let value = r.get(1).cloned().unwrap_or(Value::Nil);
                match code {
                    0 => Published::Enqueued(int(&value) as u64),
                    1 => Published::Deduplicated(int(&value) as u64),
                    _ => Published::Refused(text(&value)),
                }
            })
            .collect())
    }

    /// Broadcast: dedup in Redis, then to every replica's consumers.
    async fn broadcast(
        &self,
        q: &Queue,
        now_ms: u64,
        bodies: Vec<NewMessage>,
    ) -> Result<Vec<(Published, u32)>, StoreError> {
        let settings = q.config().settings;
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            let id = self.new_ids(&q.name, 1).await?;
            if let (Some(window), Some(key)) = (settings.dedup_window, &body.key) {
                let window = window.as_millis().to_string();
                let had = self
                    .admin(q, now_ms, "dedup", &[key, &id.to_string(), &window])
                    .await?;
                if had != Value::Nil {
                    out.push((Published::Deduplicated(int(&had) as u64), 0));
                    continue;
                }
            }
            let receivers = self.consumers_changed(q, now_ms).await?;
            let m = Message {
                id,
                body,
                published_ms: now_ms,
                expires_ms: None,
                deliveries: 0,
                last_error: None,
                stored: None,
            };
            let mut payload = q.name.clone().into_bytes();
            payload.push(b'\n');
            payload.extend(to_wire(&m).encode_to_vec());
            let _: i64 = ::redis::cmd("PUBLISH")
                .arg(BROADCAST)
                .arg(payload)
                .query_async(&mut self.conn())
                .await?;
            out.push((Published::Enqueued(id), receivers));
        }
        Ok(out)
    }

    /// Records this replica's consumers of `q`; every replica's together.
    pub async fn consumers_changed(&self, q: &Queue, now_ms: u64) -> Result<u32, StoreError> {
        let mine = q.consumer_count().to_string();
        let total = self
            .admin(q, now_ms, "consumers", &[&self.replica, &mine])
            .await?;
        Ok(u32::try_from(int(&total)).unwrap_or(0))
    }

    fn consumer(&self, consumer: u64) -> String {
        format!("{}:{consumer}", self.replica)
    }

    /// Up to `max` deliveries for `consumer`, in flight until acked.
    /// `take_no` numbers the consumer's takes: the same number again
    /// answers with what that take made (see take.lua).
    pub async fn take(
        &self,
        queue: &str,
        now_ms: u64,
        (consumer, take_no): (u64, u64),
        filter: &Filter,
        max: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let q = self.queue(queue)?;
        let who = self.consumer(consumer);
        let min = filter.min_priority.to_string();
        let max = max.to_string();
        let take_no = take_no.to_string();
        let mut args: Vec<&str> = vec![&who, &min, &max, &take_no];
        args.extend(filter.kinds.iter().map(String::as_str));
        let v = self.run(&self.scripts.take, &q, now_ms, &args).await?;
        let mut parts = items(v).into_iter();
        let deadline_ms = parts.next().map_or(0, |d| int(&d)) as u64;
        let mut out = Vec::new();
        for d in parts.next().map(items).unwrap_or_default() {
            let d = items(d);
            let [_, stored, count, error] = d.as_slice() else {
                continue;
            };
            let m = self.decode(&q.name, stored, count, error)?;
            out.push(Delivery {
                message: Arc::new(m),
                deadline_ms,
            });
        }
        Ok(out)
    }

    pub async fn ack(
        &self,
        queue: &str,
        ids: &[u64],
        consumer: u64,
    ) -> Result<Vec<(u64, AckError)>, StoreError> {
        let q = self.queue(queue)?;
        let who = self.consumer(consumer);
        let ids_s: Vec<String> = ids.iter().map(u64::to_string).collect();
        let mut args: Vec<&str> = vec!["ack", &who];
        args.extend(ids_s.iter().map(String::as_str));
        let v = self.run(&self.scripts.settle, &q, 0, &args).await?;
        Ok(items(v)
            .iter()
            .zip(ids)
            .filter_map(|(c, id)| match int(c) {
                0 => None,
                2 => Some((*id, AckError::NotYours(*id))),
                _ => Some((*id, AckError::Unknown(*id))),
            })
            .collect())
    }

    fn settle_error(v: &Value, id: u64) -> Option<AckError> {
        match v {
            Value::Int(1) => Some(AckError::Unknown(id)),
            Value::Int(2) => Some(AckError::NotYours(id)),
            _ => None,
        }
    }

    pub async fn extend(
        &self,
        queue: &str,
        now_ms: u64,
        id: u64,
        consumer: u64,
        by: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let q = self.queue(queue)?;
        let who = self.consumer(consumer);
        let by = by.as_millis().to_string();
        let v = self
            .run(
                &self.scripts.settle,
                &q,
                now_ms,
                &["extend", &who, &id.to_string(), &by],
            )
            .await?;
        if let Some(e) = Self::settle_error(&v, id) {
            return Err(e.into());
        }
        Ok(items(v).get(1).map_or(0, int) as u64)
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
        let who = self.consumer(consumer);
        let requeue = if requeue { "1" } else { "0" };
        let v = self
            .run(
                &self.scripts.settle,
                &q,
                now_ms,
                &["nack", &who, &id.to_string(), requeue, error],
            )
            .await?;
        if let Some(e) = Self::settle_error(&v, id) {
            return Err(e.into());
        }
        match text(&v).as_str() {
            "dead" => self.move_dead_letters(&q, now_ms).await,
            "dropped" => {
                metrics::counter!(DROPPED_TOTAL, "queue" => q.name.clone()).increment(1);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Deliveries this replica made before it restarted come back now
    /// rather than after their ack timeout.
    pub(super) async fn reclaim(&self) -> Result<(), StoreError> {
        let mine = format!("{}:", self.replica);
        let now_ms = super::super::service::now_ms();
        for q in self.queues() {
            if q.fanout() != Fanout::None {
                continue;
            }
            let v = self
                .run(&self.scripts.settle, &q, now_ms, &["reclaim", &mine])
                .await?;
            if int(&v) > 0 {
                self.move_dead_letters(&q, now_ms).await?;
            }
        }
        Ok(())
    }

    /// A consumer's stream ended: its deliveries go back.
    pub async fn release(&self, queue: &str, now_ms: u64, consumer: u64) -> Result<(), StoreError> {
        let q = self.queue(queue)?;
        let who = self.consumer(consumer);
        let v = self
            .run(&self.scripts.settle, &q, now_ms, &["release", &who])
            .await?;
        if int(&v) > 0 {
            self.move_dead_letters(&q, now_ms).await?;
        }
        Ok(())
    }

    /// Moves every queue's clock (any replica may: the scripts are
    /// atomic), moves what left to the dead-letter queues, and refreshes
    /// this replica's consumer counts (every `CONSUMERS_REFRESH_MS`: other
    /// replicas count a record older than 5 s as gone).
    pub async fn tick(&self, now_ms: u64) -> Result<(), StoreError> {
        let mut wakeups = std::collections::HashMap::new();
        for q in self.queues() {
            if q.consumer_count() > 0 && self.consumers_due(&q.name, now_ms) {
                self.consumers_changed(&q, now_ms).await?;
            }
            match q.fanout() {
                Fanout::Topic(_) | Fanout::Broadcast => continue,
                Fanout::None => {}
            }
            let v = self.run(&self.scripts.tick, &q, now_ms, &[EXPIRED]).await?;
            let r: Vec<i64> = items(v).iter().map(int).collect();
            let [_, dropped, expired, leaving, next] = r.as_slice() else {
                continue;
            };
            if *dropped > 0 {
                metrics::counter!(DROPPED_TOTAL, "queue" => q.name.clone())
                    .increment(*dropped as u64);
            }
            if *expired > 0 {
                metrics::counter!(EXPIRED_TOTAL, "queue" => q.name.clone())
                    .increment(*expired as u64);
            }
            if *leaving > 0 {
                self.move_dead_letters(&q, now_ms).await?;
            }
            if *next >= 0 {
                wakeups.insert(q.name.clone(), *next as u64);
            }
        }
        *self.wakeups.lock().unwrap_or_else(|p| p.into_inner()) = wakeups;
        Ok(())
    }

    /// Publishes what waits under `:leave` into the dead-letter queue
    /// (with a marker, so a repeat after a crash is not a second copy),
    /// then erases it here.
    async fn move_dead_letters(&self, q: &Arc<Queue>, now_ms: u64) -> Result<(), StoreError> {
        let target = q.dead_letter().and_then(|d| self.queue(&d).ok());
        for _ in 0..100 {
            let v = self.admin(q, now_ms, "leaving", &[]).await?;
            let found = items(v);
            if found.is_empty() {
                return Ok(());
            }
            let mut ids = Vec::new();
            let mut moving = Vec::new();
            for e in found {
                let e = items(e);
                let [id, reason, stored, count, error] = e.as_slice() else {
                    continue;
                };
                let id = int(id) as u64;
                ids.push(id.to_string());
                if target.is_none() {
                    tracing::warn!(queue = %q.name, id, "dead-letter queue missing; message dropped");
                    continue;
                }
                let m = match self.decode(&q.name, stored, count, error) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(queue = %q.name, id, error = %e, "unreadable message dropped on its way to the dead-letter queue");
                        continue;
                    }
                };
                moving.push(Item {
                    body: dead_letter::dead_letter(&m, &q.name, &text(reason)),
                    marker: format!("dl:{}:{id}", q.name),
                    source: q.name.clone(),
                });
            }
            if let Some(target) = &target {
                self.queues.check_key(target, &self.keys)?;
                let n = moving.len() as u64;
                for out in self
                    .admit(std::slice::from_ref(target), now_ms, moving)
                    .await?
                {
                    if let Published::Refused(why) = out {
                        tracing::warn!(queue = %q.name, reason = %why, "dead-letter queue refused a message; dropped");
                    }
                }
                metrics::counter!(DEAD_LETTERED_TOTAL, "queue" => q.name.clone()).increment(n);
            }
            let mut args: Vec<&str> = vec![];
            args.extend(ids.iter().map(String::as_str));
            self.admin(q, now_ms, "gone", &args).await?;
        }
        Ok(())
    }

    /// Depth, the oldest message's publish time, and the consumers of
    /// every replica (as each last recorded them).
    pub async fn stats(&self, q: &Queue, now_ms: u64) -> Result<Stats, StoreError> {
        let v = self.admin(q, now_ms, "stats", &[]).await?;
        let r: Vec<i64> = items(v).iter().map(int).collect();
        let mut stats = Stats::default();
        if r.len() < LEVELS + 5 {
            return Ok(stats);
        }
        for (level, n) in r[..LEVELS].iter().enumerate() {
            stats.depth.ready_by_priority[level] = *n as u64;
        }
        stats.depth.waiting = r[LEVELS] as u64;
        stats.depth.in_flight = r[LEVELS + 1] as u64;
        stats.depth.bytes = r[LEVELS + 2] as u64;
        stats.oldest_ms = u64::try_from(r[LEVELS + 3]).ok();
        stats.consumers = u64::try_from(r[LEVELS + 4]).unwrap_or(0);
        Ok(stats)
    }

    async fn peek_in(
        &self,
        q: &Queue,
        limit: usize,
        source: &str,
        queued_only: bool,
    ) -> Result<Vec<(Arc<Message>, Place)>, StoreError> {
        let limit = limit.to_string();
        let queued = if queued_only { "1" } else { "0" };
        let v = self.admin(q, 0, "peek", &[&limit, source, queued]).await?;
        let mut out = Vec::new();
        for e in items(v) {
            let e = items(e);
            let [_, stored, count, error, at] = e.as_slice() else {
                continue;
            };
            let m = self.decode(&q.name, stored, count, error)?;
            out.push((Arc::new(m), place(&text(at))));
        }
        Ok(out)
    }

    /// See `Store::peek`.
    pub async fn peek(
        &self,
        queue: &str,
        limit: usize,
        dead_letters: bool,
    ) -> Result<Vec<(Arc<Message>, Place)>, StoreError> {
        let q = self.queue(queue)?;
        if !dead_letters {
            return self.peek_in(&q, limit, "", false).await;
        }
        let dlq = self.queues.dead_letter_of(&q)?;
        self.peek_in(&dlq, limit, &q.name, false).await
    }

    /// Removes every queued message of `queue`; returns how many.
    pub async fn purge(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        let q = self.queue(queue)?;
        let mut n = 0;
        loop {
            let removed = int(&self.admin(&q, now_ms, "purge", &[]).await?) as u64;
            n += removed;
            if removed < 1000 {
                break;
            }
        }
        metrics::counter!(PURGED_TOTAL, "queue" => queue.to_string()).increment(n);
        Ok(n)
    }

    /// See `Store::redrive`: each dead letter is published back (with a
    /// marker, so a repeat is not a second copy), then erased from the
    /// dead-letter queue.
    pub async fn redrive(
        &self,
        queue: &str,
        ids: &[u64],
        now_ms: u64,
    ) -> Result<Redriven, StoreError> {
        let source = self.queue(queue)?;
        let dlq = self.queues.dead_letter_of(&source)?;
        self.queues.check_key(&source, &self.keys)?;
        let candidates = self.peek_in(&dlq, 100_000, queue, true).await?;
        let mut moved = Vec::new();
        let mut stopped = None;
        for (dead, _) in candidates {
            if !ids.is_empty() && !ids.contains(&dead.id) {
                continue;
            }
            let item = Item {
                body: dead_letter::redriven(&dead),
                marker: format!("rd:{}:{}", dlq.name, dead.id),
                source: String::new(),
            };
            let out = self
                .admit(std::slice::from_ref(&source), now_ms, vec![item])
                .await?;
            match out.into_iter().next() {
                Some(Published::Enqueued(id) | Published::Deduplicated(id)) => {
                    self.admin(&dlq, now_ms, "gone", &[&dead.id.to_string()])
                        .await?;
                    moved.push(id);
                }
                other => {
                    let out = other.unwrap_or(Published::Refused("no answer".into()));
                    stopped = Some(format!("{queue} refused message {}: {out:?}", dead.id));
                    break;
                }
            }
        }
        metrics::counter!(REDRIVEN_TOTAL, "queue" => queue.to_string())
            .increment(moved.len() as u64);
        Ok(Redriven {
            ids: moved,
            stopped,
        })
    }
}
