//! A queue message: what a publisher sends (`NewMessage`), what a queue
//! makes of it (`Message`: id, times, counts, where its body is kept), and
//! what a publish comes to (`Published`), and what a consumer accepts
//! (`Filter`).

use super::stored::Stored;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a publisher sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewMessage {
    pub key: Option<String>,
    pub kind: String,
    pub priority: u8,
    pub headers: BTreeMap<String, String>,
    pub payload: Bytes,
    pub deliver_at_ms: Option<u64>,
    pub ttl: Option<Duration>,
    pub traceparent: Option<String>,
    /// Set by the server from the caller's certificate.
    pub publisher: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: u64,
    pub body: NewMessage,
    pub published_ms: u64,
    pub expires_ms: Option<u64>,
    pub deliveries: u32,
    pub last_error: Option<String>,
    /// Set when the body's payload, publisher and traceparent are not in
    /// memory but in the store's log (the embedded store keeps queued
    /// messages this way): where, and how long the payload is.
    pub stored: Option<Stored>,
}

impl Message {
    /// The payload's length, in memory or not.
    pub fn payload_len(&self) -> u64 {
        match self.stored {
            Some(s) => u64::from(s.payload_len),
            None => self.body.payload.len() as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    Enqueued(u64),
    /// A publish with this key is inside the dedup window: the original's id.
    Deduplicated(u64),
    Refused(String),
}

/// Consumer filters: only these types, at least this priority.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub kinds: Vec<String>,
    pub min_priority: u8,
}

impl Filter {
    pub fn accepts(&self, m: &Message) -> bool {
        self.admits(&m.body.kind, m.body.priority)
    }

    /// Whether a message of this type and level passes.
    pub fn admits(&self, kind: &str, priority: u8) -> bool {
        priority >= self.min_priority
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
    }
}
