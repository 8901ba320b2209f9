//! A message as a queue holds it while it is queued or in flight: what
//! choosing, ordering, expiring and accounting need, and where it is
//! (ready, waiting, in flight), in a fixed 88-byte form; the rest
//! (headers, delay, TTL, last error, the body of a message not kept in the
//! log) is boxed only when there is any. The type is an index into the
//! queue's `Kinds`. A whole `Message` is built when one leaves the queue's
//! state (delivered, peeked, dead-lettered, requeued).

use super::log::Position;
use super::state::{Message, NewMessage, Place};
use super::stored::Stored;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Distinct types a queue indexes; past this a message of a new type
/// holds its own copy (a flood of distinct types cannot grow the index
/// without bound).
const MAX_KINDS: u16 = 4096;
/// The type index of a message holding its own type.
const OWN_KIND: u16 = u16::MAX;

#[derive(Debug)]
pub struct Held {
    published_ms: u64,
    /// `u64::MAX`: never.
    expires_ms: u64,
    /// Where the body is, when it is in the log (see `stored`).
    record: Position,
    /// Where it is in the queue (the state's `Where`, flattened so the
    /// tag shares the padding): since / until / deadline, and the
    /// consumer of a delivery in flight.
    pub place: Place,
    pub at_ms: u64,
    pub consumer: u64,
    payload_len: u32,
    pub deliveries: u32,
    key: Option<Box<str>>,
    rest: Option<Box<Rest>>,
    pub priority: u8,
    kind: u16,
}

#[derive(Debug, Default)]
struct Rest {
    headers: BTreeMap<String, String>,
    deliver_at_ms: Option<u64>,
    ttl: Option<Duration>,
    last_error: Option<String>,
    /// The body of a message not kept in the log.
    body: Option<Body>,
    /// Its type, when the queue's index of types is full.
    kind: Option<Box<str>>,
    /// Its `published` record's sequence, when that is not the record it
    /// is read from (a requeue record after a restart).
    live_seq: Option<u64>,
}

#[derive(Debug)]
struct Body {
    payload: Bytes,
    publisher: String,
    traceparent: Option<String>,
}

/// The types of a queue's messages, indexed.
#[derive(Debug, Default)]
pub struct Kinds {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u16>,
}

impl Kinds {
    /// The index of `kind`; `OWN_KIND` when the index is full.
    fn index(&mut self, kind: &str) -> u16 {
        if let Some(&i) = self.index.get(kind) {
            return i;
        }
        let i = match u16::try_from(self.names.len()) {
            Ok(i) if i < MAX_KINDS => i,
            _ => return OWN_KIND,
        };
        self.names.push(kind.into());
        self.index.insert(kind.into(), i);
        i
    }

    fn name(&self, i: u16) -> Option<&str> {
        self.names.get(usize::from(i)).map(|n| &**n)
    }
}

impl Held {
    /// `m` as the queue holds it, ready since `at_ms` (see `place`), its
    /// body in the log at `stored` or else in memory.
    pub fn new(m: &Message, stored: Option<Stored>, kinds: &mut Kinds, at_ms: u64) -> Held {
        let b = &m.body;
        let kind = kinds.index(&b.kind);
        let own_kind = (kind == OWN_KIND).then(|| Box::from(b.kind.as_str()));
        let live_seq = stored.and_then(|s| (s.live_seq != s.record.seq).then_some(s.live_seq));
        let body = match stored {
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
            && body.is_none()
            && own_kind.is_none()
            && live_seq.is_none();
        let rest = (!plain).then(|| {
            Box::new(Rest {
                headers: b.headers.clone(),
                deliver_at_ms: b.deliver_at_ms,
                ttl: b.ttl,
                last_error: m.last_error.clone(),
                body,
                kind: own_kind,
                live_seq,
            })
        });
        Held {
            published_ms: m.published_ms,
            expires_ms: m.expires_ms.unwrap_or(u64::MAX),
            record: stored.map_or(Position { seq: 0, offset: 0 }, |s| s.record),
            place: Place::Ready,
            at_ms,
            consumer: 0,
            payload_len: stored.map_or(u32::try_from(m.payload_len()).unwrap_or(u32::MAX), |s| {
                s.payload_len
            }),
            deliveries: m.deliveries,
            key: b.key.as_deref().map(Box::from),
            rest,
            priority: b.priority,
            kind,
        }
    }

    /// The whole message (its body still in the log when it is kept there).
    pub fn message(&self, id: u64, kinds: &Kinds) -> Message {
        let rest = self.rest.as_deref();
        let body = rest.and_then(|r| r.body.as_ref());
        Message {
            id,
            body: NewMessage {
                key: self.key.as_deref().map(String::from),
                kind: self.kind(kinds).to_string(),
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
        let live_seq = self.rest.as_ref().and_then(|r| r.live_seq);
        (!in_memory).then_some(Stored {
            record: self.record,
            live_seq: live_seq.unwrap_or(self.record.seq),
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

    pub fn kind<'a>(&'a self, kinds: &'a Kinds) -> &'a str {
        let own = self.rest.as_ref().and_then(|r| r.kind.as_deref());
        own.or_else(|| kinds.name(self.kind)).unwrap_or_default()
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
            let held = Held::new(&m, m.stored, &mut kinds, 0);
            assert_eq!(held.message(9, &kinds), m, "stored: {stored}");
            assert_eq!(held.stored(), m.stored);
            assert_eq!(held.payload_len(), m.payload_len());
        }
    }

    #[test]
    fn a_plain_message_boxes_nothing_and_indexes_its_type() {
        let mut kinds = Kinds::default();
        let mut m = message(true);
        m.body.headers.clear();
        m.body.deliver_at_ms = None;
        m.body.ttl = None;
        m.last_error = None;
        if let Some(s) = &mut m.stored {
            s.live_seq = s.record.seq;
        }
        let (a, b) = (
            Held::new(&m, m.stored, &mut kinds, 0),
            Held::new(&m, m.stored, &mut kinds, 0),
        );
        assert!(a.rest.is_none());
        assert_eq!((a.kind, b.kind), (0, 0));
        assert_eq!(a.message(9, &kinds), m);
        assert_eq!(std::mem::size_of::<Held>(), 88);
        assert_eq!(
            std::mem::size_of::<Option<Held>>(),
            88,
            "a niche for the table's holes"
        );
    }

    #[test]
    fn past_the_index_of_types_a_message_keeps_its_own_and_a_requeue_record_its_live_seq() {
        let mut kinds = Kinds::default();
        for i in 0..MAX_KINDS {
            kinds.index(&format!("t{i}"));
        }
        let mut m = message(true);
        m.body.kind = "one.more".into();
        if let Some(s) = &mut m.stored {
            s.live_seq = 1;
        }
        let held = Held::new(&m, m.stored, &mut kinds, 0);
        assert_eq!(held.kind, OWN_KIND);
        assert_eq!(held.kind(&kinds), "one.more");
        assert_eq!(held.message(9, &kinds), m);
        assert_eq!(held.stored().map(|s| s.live_seq), Some(1));
    }
}
