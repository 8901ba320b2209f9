//! A message's stored and delivered form (`xds_proto::v1::QueueMessage`
//! inside a `QueueRecord`): conversions both ways, and opening a sealed
//! payload.

use super::crypt::{CryptError, Keys};
use super::state::{Message, NewMessage};
use prost::Message as _;
use xds_proto::v1::{queue_record::Event, QueueMessage, QueueRecord};

pub(crate) fn record(queue: &str, event: Event) -> Vec<u8> {
    QueueRecord {
        queue: queue.to_string(),
        event: Some(event),
    }
    .encode_to_vec()
}

pub(crate) fn to_wire(m: &Message) -> QueueMessage {
    QueueMessage {
        id: m.id,
        key: m.body.key.clone().unwrap_or_default(),
        r#type: m.body.kind.clone(),
        priority: u32::from(m.body.priority),
        headers: m.body.headers.clone(),
        payload: m.body.payload.clone(),
        deliver_at_unix_ms: m.body.deliver_at_ms.unwrap_or(0),
        traceparent: m.body.traceparent.clone().unwrap_or_default(),
        publisher: m.body.publisher.clone(),
        published_unix_ms: m.published_ms,
        expires_unix_ms: m.expires_ms.unwrap_or(0),
        deliveries: m.deliveries,
        last_error: m.last_error.clone().unwrap_or_default(),
        key_id: String::new(),
        nonce: Vec::new(),
    }
}

/// A message as stored: its payload sealed (with the queue's name and the
/// id as associated data) when the queue is encrypted.
pub(crate) fn sealed(
    keys: &Keys,
    queue: &str,
    encrypted: bool,
    m: &Message,
) -> Result<QueueMessage, CryptError> {
    let mut w = to_wire(m);
    if encrypted {
        let (key_id, nonce, ct) = keys.seal(format!("{queue}/{}", m.id).as_bytes(), &w.payload)?;
        w.payload = ct.into();
        w.key_id = key_id;
        w.nonce = nonce;
    }
    Ok(w)
}

/// A stored message with its payload opened (when it was sealed).
pub(crate) fn unseal(
    keys: &Keys,
    queue: &str,
    mut m: QueueMessage,
) -> Result<QueueMessage, CryptError> {
    if !m.key_id.is_empty() {
        let clear = keys.open(
            &m.key_id,
            &m.nonce,
            format!("{queue}/{}", m.id).as_bytes(),
            &m.payload,
        )?;
        m.payload = clear.into();
        m.key_id.clear();
        m.nonce.clear();
    }
    Ok(m)
}

pub(crate) fn from_wire(m: QueueMessage) -> Message {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Message {
        id: m.id,
        body: NewMessage {
            key: opt(m.key),
            kind: m.r#type,
            priority: u8::try_from(m.priority.min(9)).unwrap_or(9),
            headers: m.headers,
            payload: m.payload,
            deliver_at_ms: (m.deliver_at_unix_ms > 0).then_some(m.deliver_at_unix_ms),
            ttl: None,
            traceparent: opt(m.traceparent),
            publisher: m.publisher,
        },
        published_ms: m.published_unix_ms,
        expires_ms: (m.expires_unix_ms > 0).then_some(m.expires_unix_ms),
        deliveries: m.deliveries,
        last_error: opt(m.last_error),
        stored: None,
    }
}
