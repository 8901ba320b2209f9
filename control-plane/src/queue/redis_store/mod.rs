//! The Redis queue store (`--queue-store redis://...`): the same queues
//! with their state in Redis, so that several control-plane replicas serve
//! one queue. Every change is one Lua script (atomic); what Redis
//! acknowledges is as durable as its `appendfsync` makes it (`always`: on
//! disk before the reply, as the embedded store's group commit).
//!
//! Keys. A queue's keys share the hash tag of its config object
//! (`{<namespace>/<name>}`: a pubsub topic's subscriptions share their
//! topic's, so a message enters all of them in one script, also on Redis
//! Cluster). Under the base `weft:q:{<tag>}:<queue>`:
//! `:msg` (hash id → stored message, payload sealed when encrypted),
//! `:meta` (hash id → msgpack [priority, bytes, type, key, source]),
//! `:r0`..`:r9` (ready, by level, FIFO score), `:pos` (hash id → its
//! first FIFO score, where a redelivery goes back), `:wait` (zset due time),
//! `:fly` (zset deadline), `:own` (hash id → consumer), `:took` (hash
//! consumer → its last take's number and ids), `:cnt`, `:err`
//! (deliveries, last error), `:exp` (zset expiry), `:all` (zset publish
//! time), `:bytes`, `:busy` (keys in flight), `:dd:<key>` (dedup window),
//! `:mk:<marker>` (moves already made), `:leave` (on the way to the
//! dead-letter queue, with the reason), `:cons` (consumers per replica).
//! Ids come from `weft:q:{<tag>}:ids`, which each replica advances by a
//! block at a time (`ID_BLOCK`): ids are unique and rise within one
//! replica; a replica that stops leaves the rest of its block unused.
//!
//! Moves between queues (dead letters, redrive) cross hash tags, so they
//! are two steps made safe to repeat: the message waits under `:leave`,
//! is published into the other queue with a marker (a repeat is answered
//! as deduplicated), and only then erased. A replica that dies in between
//! leaves it under `:leave` for the next tick (any replica's).
//!
//! Consumers are `<replica>:<n>`: a delivery can only be settled through
//! the replica that made it; when a replica dies its deliveries come back
//! after the ack timeout. Replicas hear of ready messages and broadcasts
//! over Redis pub/sub (`weft:q:wake`, `weft:q:bc`).

mod ops;

use super::catalog::Catalog;
use super::crypt::Keys;
use super::state::{Backoff, Message, Settings};
use super::store::{Queue, QueueConfig, StoreError};
use super::wire::{from_wire, unseal};
use ::redis::aio::ConnectionManager;
use ::redis::{Script, Value};
use futures::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use xds_proto::v1::QueueMessage;

const PRELUDE: &str = include_str!("prelude.lua");
const WAKE: &str = "weft:q:wake";
const BROADCAST: &str = "weft:q:bc";
/// How often a replica records its consumers of a queue while it has
/// any (a record older than 5 s no longer counts).
const CONSUMERS_REFRESH_MS: u64 = 2_000;
/// Ids a replica reserves per `INCRBY` of a hash tag's id counter: one
/// write to Redis per this many publishes rather than one per request.
const ID_BLOCK: u64 = 1024;

struct Scripts {
    publish: Script,
    take: Script,
    settle: Script,
    tick: Script,
    admin: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            publish: s(include_str!("publish.lua")),
            take: s(include_str!("take.lua")),
            settle: s(include_str!("settle.lua")),
            tick: s(include_str!("tick.lua")),
            admin: s(include_str!("admin.lua")),
        }
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    display: String,
    keys: Keys,
    /// This replica's part of every consumer name.
    replica: String,
    queues: Catalog,
    ids: Arc<AtomicU64>,
    scripts: Scripts,
    /// When each queue's tick next has work (as of its last tick or
    /// publish here).
    wakeups: Mutex<HashMap<String, u64>>,
    /// Ids reserved here and not yet used, per id counter: next, end
    /// (exclusive).
    reserved: Mutex<HashMap<String, (u64, u64)>>,
    /// When this replica last recorded its consumers of each queue.
    consumers_recorded: Mutex<HashMap<String, u64>>,
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        use ::redis::ErrorKind as K;
        let down = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                K::BusyLoadingError | K::TryAgain | K::ClusterDown | K::MasterDown
            );
        if down {
            StoreError::Unavailable(format!("redis: {e}"))
        } else {
            StoreError::Backend(format!("redis: {e}"))
        }
    }
}

/// The hash tag of a store queue: its config object's "<namespace>/<name>".
fn tag(queue: &str) -> &str {
    match queue.match_indices('/').nth(1) {
        Some((i, _)) => &queue[..i],
        None => queue,
    }
}

fn base(queue: &str) -> String {
    format!("weft:q:{{{}}}:{queue}", tag(queue))
}

fn ids_key(queue: &str) -> String {
    format!("weft:q:{{{}}}:ids", tag(queue))
}

/// The settings as the scripts read them (ARGV[3..17]; 0 = none).
fn settings_args(s: &Settings) -> Vec<String> {
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
    let flag = |b: bool| u8::from(b).to_string();
    let (kind, initial, max, multiplier) = match &s.backoff {
        Backoff::None => (0, 0, 0, 1.0),
        Backoff::Fixed(d) => (1, ms(Some(*d)), 0, 1.0),
        Backoff::Exponential {
            initial,
            max,
            multiplier,
        } => (2, ms(Some(*initial)), ms(Some(*max)), *multiplier),
    };
    vec![
        flag(s.priorities),
        flag(s.order_by_key),
        ms(s.aging).to_string(),
        s.max_messages.unwrap_or(0).to_string(),
        s.max_bytes.unwrap_or(0).to_string(),
        flag(s.drop_oldest),
        flag(s.expire_to_dead_letter),
        flag(s.has_dead_letter),
        s.max_deliveries.unwrap_or(0).to_string(),
        kind.to_string(),
        initial.to_string(),
        max.to_string(),
        multiplier.to_string(),
        ms(Some(s.ack_timeout)).to_string(),
        ms(s.dedup_window).to_string(),
    ]
}

/// A redis:// URL without its password, for logs.
fn display(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

pub(super) fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

pub(super) fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

fn bytes(v: &Value) -> &[u8] {
    match v {
        Value::BulkString(b) => b,
        _ => &[],
    }
}

impl RedisStore {
    /// Connects (failing when Redis does not answer), gives back what this
    /// replica (`replica`: kept across restarts, e.g. in its data dir) had
    /// in flight before it restarted, and starts listening for other
    /// replicas' wake-ups and broadcasts.
    pub async fn open(
        url: &str,
        queues: &[QueueConfig],
        keys: Keys,
        replica: &str,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let client = ::redis::Client::open(url)?;
        // A call fails (and the service answers UNAVAILABLE) rather than
        // wait: 5 s for an answer, 2 s per connection attempt, a few
        // attempts at most 500 ms apart; the next call tries again.
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Duration::from_secs(5))
            .set_connection_timeout(Duration::from_secs(2))
            .set_number_of_retries(3)
            .set_max_delay(500);
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::Backend(format!("redis {}: no answer in 10 s", display(url))))??;
        let replica = replica.to_string();
        let store = Arc::new(RedisStore {
            conn,
            display: display(url),
            keys,
            replica,
            queues: Catalog::default(),
            ids: Arc::new(AtomicU64::new(1)),
            scripts: Scripts::load(),
            wakeups: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            consumers_recorded: Mutex::new(HashMap::new()),
        });
        store.configure(queues);
        store.reclaim().await?;
        tokio::spawn(listen(client, Arc::downgrade(&store)));
        Ok(store)
    }

    pub fn describe(&self) -> &str {
        &self.display
    }

    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, StoreError> {
        self.queues.get(name)
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.all()
    }

    pub fn configure(&self, queues: &[QueueConfig]) {
        self.queues.configure(queues, &self.ids);
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs `script` on `queue` with ARGV = name, now, settings, `extra`.
    async fn run(
        &self,
        script: &Script,
        queue: &Queue,
        now_ms: u64,
        extra: &[&str],
    ) -> Result<Value, StoreError> {
        let mut inv = script.prepare_invoke();
        inv.key(base(&queue.name)).arg(&queue.name).arg(now_ms);
        for a in settings_args(&queue.config().settings) {
            inv.arg(a);
        }
        for a in extra {
            inv.arg(*a);
        }
        Ok(inv.invoke_async(&mut self.conn()).await?)
    }

    async fn admin(
        &self,
        queue: &Queue,
        now_ms: u64,
        op: &str,
        extra: &[&str],
    ) -> Result<Value, StoreError> {
        let mut args = vec![op];
        args.extend_from_slice(extra);
        self.run(&self.scripts.admin, queue, now_ms, &args).await
    }

    /// A stored message of `queue` as delivered: payload opened, count
    /// and last error from Redis.
    fn decode(
        &self,
        queue: &str,
        stored: &Value,
        deliveries: &Value,
        error: &Value,
    ) -> Result<Message, StoreError> {
        let wire = QueueMessage::decode(bytes(stored)).map_err(|e| {
            StoreError::Backend(format!(
                "redis: a stored message of {queue} is unreadable: {e}"
            ))
        })?;
        let mut m = from_wire(unseal(&self.keys, queue, wire)?);
        m.deliveries = u32::try_from(int(deliveries)).unwrap_or(u32::MAX);
        let error = text(error);
        m.last_error = (!error.is_empty()).then_some(error);
        Ok(m)
    }

    /// `n` consecutive new ids for messages of `queue`: the first. Taken
    /// from this replica's reserved block, reserving another (one
    /// `INCRBY`) when it runs short.
    async fn new_ids(&self, queue: &str, n: u64) -> Result<u64, StoreError> {
        let counter = ids_key(queue);
        let from_block = |reserved: &mut HashMap<String, (u64, u64)>| {
            let (next, end) = reserved.get_mut(&counter)?;
            (*end - *next >= n).then(|| {
                *next += n;
                *next - n
            })
        };
        if let Some(first) =
            from_block(&mut self.reserved.lock().unwrap_or_else(|p| p.into_inner()))
        {
            return Ok(first);
        }
        let size = n.max(ID_BLOCK);
        let last: u64 = ::redis::cmd("INCRBY")
            .arg(&counter)
            .arg(size)
            .query_async(&mut self.conn())
            .await?;
        let first = last + 1 - size;
        // This call's ids come from the new block; what is left of it
        // replaces the old block (a concurrent call may have reserved one
        // meanwhile: the unused rest of either is skipped, never reused).
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(counter, (first + n, last + 1));
        Ok(first)
    }

    /// Drops this replica's reserved ids for `queue`'s counter (they may
    /// predate writes Redis lost); the next publish reserves a new block.
    fn forget_ids(&self, queue: &str) {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ids_key(queue));
    }

    /// Whether this replica's consumers of `queue` are due to be recorded
    /// again (and, if so, notes that they are being recorded now).
    fn consumers_due(&self, queue: &str, now_ms: u64) -> bool {
        let mut at = self
            .consumers_recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let last = at.entry(queue.to_string()).or_insert(0);
        if now_ms.saturating_sub(*last) < CONSUMERS_REFRESH_MS {
            return false;
        }
        *last = now_ms;
        true
    }

    /// A message published here may be due before the queue's next tick.
    fn hint(&self, queue: &str, at_ms: u64) {
        let mut w = self.wakeups.lock().unwrap_or_else(|p| p.into_inner());
        let e = w.entry(queue.to_string()).or_insert(at_ms);
        *e = (*e).min(at_ms);
    }

    pub fn next_wakeup(&self) -> Option<u64> {
        self.wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied()
    }

    /// A message heard on a channel.
    fn heard(&self, channel: &str, payload: &[u8]) {
        match channel {
            WAKE => {
                if let Ok(q) = self.queue(&String::from_utf8_lossy(payload)) {
                    q.ready.notify_waiters();
                }
            }
            BROADCAST => {
                let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
                    return;
                };
                let name = String::from_utf8_lossy(&payload[..nl]);
                let Ok(q) = self.queue(&name) else { return };
                if let Ok(wire) = QueueMessage::decode(&payload[nl + 1..]) {
                    let _ = q.feed.send(Arc::new(from_wire(wire)));
                }
            }
            _ => {}
        }
    }
}

/// Follows the wake-up and broadcast channels for as long as the store
/// lives, reconnecting after a second when Redis goes away; after a
/// reconnect every queue's consumers look again (wake-ups may have been
/// missed).
async fn listen(client: ::redis::Client, store: Weak<RedisStore>) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let subscribed = async {
                    pubsub.subscribe(WAKE).await?;
                    pubsub.subscribe(BROADCAST).await
                }
                .await;
                match subscribed {
                    Ok(()) => {
                        if let Some(s) = store.upgrade() {
                            for q in s.queues() {
                                q.ready.notify_waiters();
                            }
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(m) = messages.next().await {
                            let Some(s) = store.upgrade() else { return };
                            s.heard(m.get_channel_name(), m.get_payload_bytes());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "queue store: cannot subscribe to redis"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue store: redis pub/sub unavailable; retrying")
            }
        }
        if store.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_shares_its_topics_hash_tag_and_a_queue_has_its_own() {
        assert_eq!(base("intel/feed"), "weft:q:{intel/feed}:intel/feed");
        assert_eq!(
            base("intel/feed/audit"),
            "weft:q:{intel/feed}:intel/feed/audit"
        );
        assert_eq!(ids_key("intel/feed/audit"), "weft:q:{intel/feed}:ids");
    }

    #[test]
    fn a_redis_url_is_logged_without_its_password() {
        assert_eq!(
            display("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(display("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
