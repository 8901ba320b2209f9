//! What a dead letter carries and how it goes back: the headers that say
//! why a message left, from which queue and under which id, added when it
//! moves to the dead-letter queue and removed when it is redriven. Both
//! stores build the moved messages here.

use super::state::{Message, NewMessage};

/// Headers a dead letter carries: why, from which queue, its id there.
pub const DEAD_LETTER_REASON: &str = "x-weft-dead-letter-reason";
pub const DEAD_LETTER_QUEUE: &str = "x-weft-dead-letter-queue";
pub const DEAD_LETTER_ID: &str = "x-weft-dead-letter-id";

/// The message `message` of `queue` becomes in the dead-letter queue.
pub fn dead_letter(message: &Message, queue: &str, reason: &str) -> NewMessage {
    let mut body = message.body.clone();
    body.headers
        .insert(DEAD_LETTER_REASON.into(), reason.to_string());
    body.headers
        .insert(DEAD_LETTER_QUEUE.into(), queue.to_string());
    body.headers
        .insert(DEAD_LETTER_ID.into(), message.id.to_string());
    body.deliver_at_ms = None;
    body
}

/// A dead letter back in its source queue: a new message without the
/// dead-letter headers.
pub fn redriven(dead: &Message) -> NewMessage {
    let mut body = dead.body.clone();
    for h in [DEAD_LETTER_QUEUE, DEAD_LETTER_REASON, DEAD_LETTER_ID] {
        body.headers.remove(h);
    }
    body.deliver_at_ms = None;
    body
}

/// The queue a dead letter came from.
pub fn source(message: &Message) -> Option<&str> {
    message
        .body
        .headers
        .get(DEAD_LETTER_QUEUE)
        .map(String::as_str)
}
