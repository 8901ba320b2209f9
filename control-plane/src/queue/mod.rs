//! The mesh's queue service (issue 16): the durable segment log (`log`),
//! one queue's delivery rules (`state`), the embedded store that joins them
//! and fans pubsub and broadcast messages out (`store`), encryption at rest
//! (`crypt`), access control (`access`), metrics and the `weft.v1.Queue`
//! API (`service`).

pub mod access;
pub mod audit;
pub mod backend;
mod catalog;
mod consume;
pub mod crypt;
mod dead_letter;
mod held;
mod live;
pub mod log;
pub mod message;
pub mod metrics;
pub mod redis_store;
pub mod service;
pub mod state;
pub mod store;
pub mod stored;
mod table;
mod wire;

use crate::config::kinds::{Durability, OnExpiry, OnFull, QueueBackoff, QueueSpec, QueueType};
use state::{Backoff, Settings};
use std::time::Duration;

/// Default ack timeout (visibility) when the Queue does not set one.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated Queue's delivery settings. Durations were checked on apply;
/// one that does not parse here falls back to "unset".
pub fn settings(spec: &QueueSpec) -> Settings {
    let d = |v: &Option<String>| {
        v.as_deref()
            .and_then(|s| xds_proto::units::parse_duration(s).ok())
    };
    let backoff = match spec.retry.as_ref().and_then(|r| r.backoff.as_ref()) {
        None => Backoff::None,
        Some(QueueBackoff::Fixed { delay }) => {
            d(&Some(delay.clone())).map_or(Backoff::None, Backoff::Fixed)
        }
        Some(QueueBackoff::Exponential {
            initial,
            max,
            multiplier,
        }) => match (d(&Some(initial.clone())), d(&Some(max.clone()))) {
            (Some(initial), Some(max)) => Backoff::Exponential {
                initial,
                max,
                multiplier: *multiplier,
            },
            _ => Backoff::None,
        },
    };
    Settings {
        priorities: spec.kind == QueueType::Priority,
        order_by_key: spec.order_by_key,
        aging: d(&spec.aging),
        max_messages: spec.max_size.as_ref().and_then(|m| m.messages),
        max_bytes: spec.max_size.as_ref().and_then(|m| m.bytes),
        drop_oldest: spec.max_size.as_ref().and_then(|m| m.on_full) == Some(OnFull::DropOldest),
        ttl: d(&spec.message_ttl),
        expire_to_dead_letter: spec.on_expiry == Some(OnExpiry::DeadLetter)
            || (spec.on_expiry.is_none() && spec.dead_letter.is_some()),
        has_dead_letter: spec.dead_letter.is_some(),
        max_deliveries: spec.retry.as_ref().map(|r| r.max_deliveries),
        backoff,
        ack_timeout: d(&spec.ack_timeout).unwrap_or(DEFAULT_ACK_TIMEOUT),
        dedup_window: spec
            .deduplication
            .as_ref()
            .and_then(|w| d(&Some(w.window.clone()))),
    }
}

/// The store's view of every Queue in the config ("<ns>/<name>" names):
/// a pubsub topic adds one queue per subscription ("<ns>/<topic>/<sub>"),
/// with the topic's settings and `retention` as their message TTL.
pub fn configs(config: &crate::config::ConfigSet) -> Vec<store::QueueConfig> {
    let mut out = Vec::new();
    for (key, spec) in config.queues() {
        let name = format!("{}/{}", key.namespace, key.name);
        let base = store::QueueConfig {
            name: name.clone(),
            settings: settings(spec),
            dead_letter: spec
                .dead_letter
                .as_ref()
                .map(|d| format!("{}/{}", key.namespace, d.queue)),
            kind: serde_json::to_value(spec.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            max_message_bytes: spec.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            encrypted: spec.encrypted,
            fanout: store::Fanout::None,
        };
        match spec.kind {
            QueueType::Pubsub => {
                let subs: Vec<String> = spec
                    .subscriptions
                    .iter()
                    .map(|s| format!("{name}/{s}"))
                    .collect();
                let retention = spec
                    .retention
                    .as_deref()
                    .and_then(|r| xds_proto::units::parse_duration(r).ok());
                for s in &subs {
                    let mut sub = base.clone();
                    sub.name = s.clone();
                    if sub.settings.ttl.is_none() && retention.is_some() {
                        // Past its retention an unconsumed message is
                        // dropped, unless onExpiry says otherwise.
                        sub.settings.ttl = retention;
                        sub.settings.expire_to_dead_letter =
                            spec.on_expiry == Some(OnExpiry::DeadLetter);
                    }
                    out.push(sub);
                }
                out.push(store::QueueConfig {
                    fanout: store::Fanout::Topic(subs),
                    ..base
                });
            }
            QueueType::Broadcast => out.push(store::QueueConfig {
                fanout: store::Fanout::Broadcast,
                ..base
            }),
            _ => out.push(base),
        }
    }
    out
}

/// The store name of a queue, or of one subscription of a pubsub topic.
pub fn store_name(namespace: &str, queue: &str, subscription: &str) -> String {
    if subscription.is_empty() {
        format!("{namespace}/{queue}")
    } else {
        format!("{namespace}/{queue}/{subscription}")
    }
}

/// Largest payload when the Queue does not say.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1 << 20;

/// Whether a publish is acknowledged only once on disk.
pub fn synchronous(spec: &QueueSpec) -> bool {
    spec.durability != Some(Durability::Async)
}

/// Keeps the store's queues and the access rules in step with the config.
/// The pushed config is debounced; a queue call first catches up with the
/// committed one (`catch_up`), so a Queue or QueuePolicy applied a moment
/// ago is already in force for the next publish.
pub struct Follower {
    store: std::sync::Arc<backend::Backend>,
    access: std::sync::Arc<arc_swap::ArcSwap<access::Access>>,
    trust_domain: String,
    source: Option<std::sync::Arc<crate::publish::Publisher>>,
    /// The config revision in force (None: none yet).
    followed: std::sync::Mutex<Option<u64>>,
    /// That revision + 1 (0: none), for the lock-free check.
    seen: std::sync::atomic::AtomicU64,
}

impl Follower {
    pub fn new(
        store: std::sync::Arc<backend::Backend>,
        access: std::sync::Arc<arc_swap::ArcSwap<access::Access>>,
        trust_domain: String,
        source: Option<std::sync::Arc<crate::publish::Publisher>>,
    ) -> Follower {
        Follower {
            store,
            access,
            trust_domain,
            source,
            followed: std::sync::Mutex::new(None),
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Puts `config` in force unless it (or a later one) already is.
    pub fn follow(&self, config: &crate::config::ConfigSet) {
        let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if followed.is_some_and(|r| r >= config.revision) {
            return;
        }
        self.store.configure(&configs(config));
        self.access
            .store(std::sync::Arc::new(access::Access::compile(
                config,
                &self.trust_domain,
            )));
        *followed = Some(config.revision);
        self.seen.store(
            config.revision.saturating_add(1),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Follows the committed config now if it is newer than the one in
    /// force (no lock taken when it is not).
    pub fn catch_up(&self) {
        if let Some(source) = &self.source {
            let config = source.config();
            let seen = self.seen.load(std::sync::atomic::Ordering::Acquire);
            if config.revision.saturating_add(1) > seen {
                self.follow(&config);
            }
        }
    }
}

/// Follows every pushed config revision.
pub async fn follow_config(
    follower: std::sync::Arc<Follower>,
    mut published: tokio::sync::watch::Receiver<std::sync::Arc<crate::publish::Published>>,
) {
    loop {
        let config = published.borrow_and_update().config.clone();
        follower.follow(&config);
        if published.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_spec_becomes_the_delivery_settings_it_describes() {
        let spec: QueueSpec = serde_yaml_ng::from_str(
            "type: priority\naging: 30s\nmaxSize: {messages: 10, onFull: dropOldest}\nmessageTtl: 1h\ndeadLetter: {queue: dlq}\nretry: {maxDeliveries: 4, backoff: {type: exponential, initial: 1s, max: 1m, multiplier: 3}}\nackTimeout: 45s\ndeduplication: {window: 10m}\ndurability: async\n",
        )
        .unwrap();
        let s = settings(&spec);
        assert!(s.priorities && s.drop_oldest && s.has_dead_letter && s.expire_to_dead_letter);
        assert_eq!(s.aging, Some(Duration::from_secs(30)));
        assert_eq!(s.max_messages, Some(10));
        assert_eq!(s.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(s.max_deliveries, Some(4));
        assert_eq!(s.backoff.delay(2), Duration::from_secs(3));
        assert_eq!(s.ack_timeout, Duration::from_secs(45));
        assert_eq!(s.dedup_window, Some(Duration::from_secs(600)));
        assert!(!synchronous(&spec));
        let plain: QueueSpec = serde_yaml_ng::from_str("type: fifo\n").unwrap();
        let s = settings(&plain);
        assert!(!s.priorities && !s.has_dead_letter && !s.expire_to_dead_letter);
        assert_eq!(s.ack_timeout, DEFAULT_ACK_TIMEOUT);
        assert!(synchronous(&plain));
    }
}
