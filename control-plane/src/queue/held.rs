//! A message as a queue holds it while it is queued or in flight: what
//! choosing, ordering, expiring and accounting need, in a fixed ~100-byte
//! form, and the rest (headers, delay, TTL, last error, and the body of a
//! message not kept in the log) boxed only when there is any. The type is
//! shared with the queue's other messages of that type. A whole `Message`
//! is built when one leaves the queue's state (delivered, peeked, dead-
//! lettered, requeued).

use super::log::Position;
use super::state::{Message, NewMessage};
use super::stored::Stored;
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Distinct types a queue shares among its messages; past this each
/// message of a new type holds its own copy (a flood of distinct types
/// cannot grow the set without bound).
const MAX_KINDS: usize = 4096;

#[derive(Debug)]
pub struct Held {
    published_ms: u64,
    /// `u64::MAX`: never.
    expires_ms: u64,
    /// Where the body is, when it is in the log (see `stored`).
    record: Position,
    live_seq: u64,
    payload_len: u32,
    pub deliveries: u32,
    kind: Arc<str>,
    key: Option<Box<str>>,
    rest: Option<Box<Rest>>,
    pub priority: u8,
}

#[derive(Debug, Default)]
struct Rest {
    headers: BTreeMap<String, String>,
    deliver_at_ms: Option<u64>,
    ttl: Option<Duration>,
    last_error: Option<String>,
    /// The body of a message not kept in the log.
    body: Option<Body>,
}

#[derive(Debug)]
struct Body {
    payload: Bytes,
    publisher: String,
    traceparent: Option<String>,
}

/// The types a queue's messages share.
#[derive(Debug, Default)]
pub struct Kinds(HashSet<Arc<str>>);

impl Kinds {
    fn get(&mut self, kind: &str) -> Arc<str> {
        if let Some(k) = self.0.get(kind) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(kind);
        if self.0.len() < MAX_KINDS {
            self.0.insert(k.clone());
        }
        k
    }
}

impl Held {
    pub fn new(m: &Message, kinds: &mut Kinds) -> Held {
        let b = &m.body;
        let body = match m.stored {
            Some(_) => None,
            None => Some(Body {
                payload: b.payload.clone(),
                publisher: b.publisher.clone(),
                traceparent: b.traceparent.clone(),
            }),
        };
        let plain = b.headers.is_empty()
            && b.deliver_at_ms.is_none()
            && b.ttl.is_none()
            && m.last_error.is_none()
            && body.is_none();
        let rest = (!plain).then(|| {
            Box::new(Rest {
                headers: b.headers.clone(),
                deliver_at_ms: b.deliver_at_ms,
                ttl: b.ttl,
                last_error: m.last_error.clone(),
                body,
            })
        });
        let stored = m.stored;
        Held {
            published_ms: m.published_ms,
            expires_ms: m.expires_ms.unwrap_or(u64::MAX),
            record: stored.map_or(Position { seq: 0, offset: 0 }, |s| s.record),
            live_seq: stored.map_or(0, |s| s.live_seq),
            payload_len: u32::try_from(m.payload_len()).unwrap_or(u32::MAX),
            deliveries: m.deliveries,
            kind: kinds.get(&b.kind),
            key: b.key.as_deref().map(Box::from),
            rest,
            priority: b.priority,
        }
    }

    /// The whole message (its body still in the log when it is kept there).
    pub fn message(&self, id: u64) -> Message {
        let rest = self.rest.as_deref();
        let body = rest.and_then(|r| r.body.as_ref());
        Message {
            id,
            body: NewMessage {
                key: self.key.as_deref().map(String::from),
                kind: self.kind.to_string(),
                priority: self.priority,
                headers: rest.map(|r| r.headers.clone()).unwrap_or_default(),
                payload: body.map(|b| b.payload.clone()).unwrap_or_default(),
                deliver_at_ms: self.deliver_at_ms(),
                ttl: rest.and_then(|r| r.ttl),
                traceparent: body.and_then(|b| b.traceparent.clone()),
                publisher: body.map(|b| b.publisher.clone()).unwrap_or_default(),
            },
            published_ms: self.published_ms,
            expires_ms: self.expires_ms(),
            deliveries: self.deliveries,
            last_error: rest.and_then(|r| r.last_error.clone()),
            stored: self.stored(),
        }
    }

    /// Where its body is in the log; None when it is in memory.
    pub fn stored(&self) -> Option<Stored> {
        let in_memory = self.rest.as_ref().is_some_and(|r| r.body.is_some());
        (!in_memory).then_some(Stored {
            record: self.record,
            live_seq: self.live_seq,
            payload_len: self.payload_len,
        })
    }

    pub fn published_ms(&self) -> u64 {
        self.published_ms
    }

    pub fn expires_ms(&self) -> Option<u64> {
        (self.expires_ms != u64::MAX).then_some(self.expires_ms)
    }

    pub fn payload_len(&self) -> u64 {
        u64::from(self.payload_len)
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn deliver_at_ms(&self) -> Option<u64> {
        self.rest.as_ref().and_then(|r| r.deliver_at_ms)
    }

    fn rest_mut(&mut self) -> &mut Rest {
        self.rest.get_or_insert_with(Box::default)
    }

    pub fn set_deliver_at_ms(&mut self, at: Option<u64>) {
        if at.is_some() || self.rest.is_some() {
            self.rest_mut().deliver_at_ms = at;
        }
    }

    pub fn set_last_error(&mut self, error: &str) {
        self.rest_mut().last_error = Some(error.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(stored: bool) -> Message {
        let mut headers = BTreeMap::new();
        headers.insert("h".to_string(), "v".to_string());
        Message {
            id: 9,
            body: NewMessage {
                key: Some("k".into()),
                kind: "ioc.enrichment.request".into(),
                priority: 7,
                headers,
                payload: if stored {
                    Bytes::new()
                } else {
                    Bytes::from_static(b"body")
                },
                deliver_at_ms: Some(5),
                ttl: Some(Duration::from_secs(3)),
                traceparent: (!stored).then(|| "00-ab-cd-01".to_string()),
                publisher: if stored {
                    String::new()
                } else {
                    "spiffe://x".into()
                },
            },
            published_ms: 1,
            expires_ms: Some(3_001),
            deliveries: 2,
            last_error: Some("boom".into()),
            stored: stored.then_some(Stored {
                record: Position { seq: 4, offset: 96 },
                live_seq: 3,
                payload_len: 1024,
            }),
        }
    }

    #[test]
    fn a_held_message_comes_back_whole_in_memory_or_in_the_log() {
        let mut kinds = Kinds::default();
        for stored in [false, true] {
            let m = message(stored);
            let held = Held::new(&m, &mut kinds);
            assert_eq!(held.message(9), m, "stored: {stored}");
            assert_eq!(held.stored(), m.stored);
            assert_eq!(held.payload_len(), m.payload_len());
        }
    }

    #[test]
    fn a_plain_message_boxes_nothing_and_shares_its_type() {
        let mut kinds = Kinds::default();
        let mut m = message(true);
        m.body.headers.clear();
        m.body.deliver_at_ms = None;
        m.body.ttl = None;
        m.last_error = None;
        let (a, b) = (Held::new(&m, &mut kinds), Held::new(&m, &mut kinds));
        assert!(a.rest.is_none());
        assert!(Arc::ptr_eq(&a.kind, &b.kind));
        assert_eq!(a.message(9), m);
        assert!(
            std::mem::size_of::<Held>() <= 96,
            "{}",
            std::mem::size_of::<Held>()
        );
    }
}
