//! The mesh's queue service (issue 16), being built: the durable segment
//! log (`log`), one queue's delivery rules (`state`) and the embedded store
//! that joins them (`store`). The `weft.v1.Queue` API, pubsub and broadcast
//! fan-out, access control, encryption and the Redis backend come on top.

pub mod log;
pub mod state;
pub mod store;

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

/// Whether a publish is acknowledged only once on disk.
pub fn synchronous(spec: &QueueSpec) -> bool {
    spec.durability != Some(Durability::Async)
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
