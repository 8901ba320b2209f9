//! The `Queue` kind: a queue of the mesh's queue service, as operators
//! write it. Durations are strings ("30s", "24h"), sizes are bytes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Strict order per queue, or per ordering key with `orderByKey`.
    Fifo,
    /// Higher priority first (0-9, or LOW/NORMAL/HIGH/CRITICAL), FIFO
    /// within a level.
    Priority,
    /// Messages wait until their `deliverAt` (any queue takes one too).
    Delayed,
    /// Named subscriptions, each gets every message.
    Pubsub,
    /// Every connected consumer gets every message.
    Broadcast,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueueSpec {
    #[serde(rename = "type")]
    pub kind: QueueType,
    /// fifo: order within each message key instead of the whole queue
    /// (consumers compete across keys).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub order_by_key: bool,
    /// priority: a waiting message climbs one level per this long, so low
    /// levels are not starved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aging: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<MaxSize>,
    /// Largest payload accepted (default 1 MiB, at most 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
    /// How long a message may wait; then it is dead-lettered or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_expiry: Option<OnExpiry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<QueueRetry>,
    /// An unacknowledged delivery is redelivered after this (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication: Option<Deduplication>,
    /// Payloads encrypted at rest (AES-256-GCM, weft-control
    /// --queue-key-file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// `sync` (default): a publish is acknowledged once on disk;
    /// `async`: once in memory (faster; a crash loses the last moments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// pubsub: the subscriptions, each with its own cursor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<String>,
    /// pubsub: how long messages are kept for the subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaxSize {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// At the limit: refuse the publish (default) or drop the oldest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_full: Option<OnFull>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnFull {
    Reject,
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnExpiry {
    DeadLetter,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Sync,
    Async,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeadLetter {
    /// Another Queue in the same namespace.
    pub queue: String,
    /// How long dead letters are kept there (overrides that queue's TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueueRetry {
    /// Deliveries before a message is dead-lettered (the first included).
    pub max_deliveries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<QueueBackoff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", tag = "type")]
pub enum QueueBackoff {
    /// initial × multiplierⁿ, capped at max.
    Exponential {
        initial: String,
        max: String,
        #[serde(default = "default_multiplier")]
        multiplier: f64,
    },
    Fixed {
        delay: String,
    },
}

fn default_multiplier() -> f64 {
    2.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deduplication {
    /// A second publish with the same key within this window is
    /// acknowledged as a duplicate and not enqueued.
    pub window: String,
}

/// `QueuePolicy`: who may publish to, consume from or administer queues
/// of its namespace. Queues are closed by default: a call is allowed only
/// when a rule grants it (weftctl's admin certificate may do everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueuePolicySpec {
    /// Queues of this namespace the rules cover; `*` for all of them.
    pub queues: Vec<String>,
    pub rules: Vec<QueueRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueueRule {
    pub permissions: Vec<QueuePermission>,
    /// Callers, by SPIFFE ID, namespace or trust domain (one must match).
    pub from: super::AuthzFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueuePermission {
    Publish,
    Consume,
    /// Describe, peek, purge, redrive dead letters.
    Admin,
}
