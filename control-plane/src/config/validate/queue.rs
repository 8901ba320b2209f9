//! Field rules of a Queue (options that belong to its type, durations and
//! sizes in range, a dead-letter target that is another queue, a retry
//! backoff that grows) and of a QueuePolicy (queues named, every rule
//! granting something to someone).
use super::valid_dns_label;
use crate::config::kinds::{OnExpiry, QueueBackoff, QueuePolicySpec, QueueSpec, QueueType};
use crate::config::{ConfigError, Located};
use std::time::Duration;

/// Largest message the service takes.
pub const MAX_MESSAGE_BYTES: u64 = 16 << 20;

/// Parses a duration field, within `min..=max`.
fn duration(
    obj: &Located,
    field: &str,
    v: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = xds_proto::units::parse_duration(v).map_err(|e| obj.error(field, e))?;
    if d < min || d > max {
        return Err(obj.error(field, format!("{v} is outside {min:?}..={max:?}")));
    }
    Ok(d)
}

const DAY: Duration = Duration::from_secs(86_400);

pub(super) fn check_queue(obj: &Located, q: &QueueSpec) -> Result<(), ConfigError> {
    let only = |set: bool, field: &str, kind: &str| -> Result<(), ConfigError> {
        if set {
            Err(obj.error(
                format!("spec.{field}"),
                format!("only a {kind} queue takes `{field}`"),
            ))
        } else {
            Ok(())
        }
    };
    only(
        q.order_by_key && q.kind != QueueType::Fifo,
        "orderByKey",
        "fifo",
    )?;
    only(
        q.aging.is_some() && q.kind != QueueType::Priority,
        "aging",
        "priority",
    )?;
    only(
        !q.subscriptions.is_empty() && q.kind != QueueType::Pubsub,
        "subscriptions",
        "pubsub",
    )?;
    only(
        q.retention.is_some() && q.kind != QueueType::Pubsub,
        "retention",
        "pubsub",
    )?;
    if q.kind == QueueType::Broadcast {
        // Live fan-out: nothing is kept, so nothing to retry, expire,
        // bound or encrypt.
        let kept = [
            ("retry", q.retry.is_some()),
            ("deadLetter", q.dead_letter.is_some()),
            ("ackTimeout", q.ack_timeout.is_some()),
            ("messageTtl", q.message_ttl.is_some()),
            ("onExpiry", q.on_expiry.is_some()),
            ("maxSize", q.max_size.is_some()),
            ("encrypted", q.encrypted),
        ];
        if let Some((field, _)) = kept.iter().find(|(_, set)| *set) {
            return Err(obj.error(
                format!("spec.{field}"),
                "a broadcast queue hands each message to the consumers connected now and keeps nothing, so it takes no `".to_string() + field + "`",
            ));
        }
    }
    if q.kind == QueueType::Pubsub {
        if q.subscriptions.is_empty() {
            return Err(obj.error(
                "spec.subscriptions",
                "a pubsub queue needs at least one subscription",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in q.subscriptions.iter().enumerate() {
            if !valid_dns_label(s) {
                return Err(obj.error(
                    format!("spec.subscriptions[{i}]"),
                    format!("\"{s}\" is not a DNS label"),
                ));
            }
            if !seen.insert(s) {
                return Err(obj.error(
                    format!("spec.subscriptions[{i}]"),
                    format!("\"{s}\" is listed twice"),
                ));
            }
        }
    }
    if let Some(a) = &q.aging {
        duration(obj, "spec.aging", a, Duration::from_secs(1), DAY)?;
    }
    if let Some(r) = &q.retention {
        duration(obj, "spec.retention", r, Duration::from_secs(1), 30 * DAY)?;
    }
    if let Some(m) = &q.max_size {
        if m.messages.is_none() && m.bytes.is_none() {
            return Err(obj.error("spec.maxSize", "set `messages`, `bytes` or both"));
        }
        if m.messages == Some(0) {
            return Err(obj.error("spec.maxSize.messages", "must be at least 1"));
        }
        if let Some(b) = m.bytes {
            let least = q.max_message_bytes.unwrap_or(1 << 20);
            if b < least {
                return Err(obj.error(
                    "spec.maxSize.bytes",
                    format!("{b} is smaller than one largest message ({least} bytes)"),
                ));
            }
        }
    }
    if let Some(b) = q.max_message_bytes {
        if !(1..=MAX_MESSAGE_BYTES).contains(&b) {
            return Err(obj.error(
                "spec.maxMessageBytes",
                format!("must be 1..={MAX_MESSAGE_BYTES}, got {b}"),
            ));
        }
    }
    if let Some(t) = &q.message_ttl {
        duration(obj, "spec.messageTtl", t, Duration::from_secs(1), 365 * DAY)?;
    }
    if q.on_expiry == Some(OnExpiry::DeadLetter) && q.dead_letter.is_none() {
        return Err(obj.error(
            "spec.onExpiry",
            "`deadLetter` expired messages needs a `deadLetter` queue",
        ));
    }
    if let Some(d) = &q.dead_letter {
        if !valid_dns_label(&d.queue) {
            return Err(obj.error(
                "spec.deadLetter.queue",
                format!("\"{}\" is not a queue name", d.queue),
            ));
        }
        if d.queue == obj.object.metadata.name {
            return Err(obj.error(
                "spec.deadLetter.queue",
                "a queue cannot be its own dead-letter queue",
            ));
        }
        if let Some(t) = &d.ttl {
            duration(
                obj,
                "spec.deadLetter.ttl",
                t,
                Duration::from_secs(1),
                365 * DAY,
            )?;
        }
    }
    if let Some(a) = &q.ack_timeout {
        duration(obj, "spec.ackTimeout", a, Duration::from_secs(1), DAY / 2)?;
    }
    if let Some(d) = &q.deduplication {
        duration(
            obj,
            "spec.deduplication.window",
            &d.window,
            Duration::from_secs(1),
            7 * DAY,
        )?;
    }
    if let Some(r) = &q.retry {
        if !(1..=1000).contains(&r.max_deliveries) {
            return Err(obj.error(
                "spec.retry.maxDeliveries",
                format!("must be 1..=1000, got {}", r.max_deliveries),
            ));
        }
        match &r.backoff {
            Some(QueueBackoff::Exponential {
                initial,
                max,
                multiplier,
            }) => {
                let i = duration(
                    obj,
                    "spec.retry.backoff.initial",
                    initial,
                    Duration::from_millis(1),
                    DAY,
                )?;
                let m = duration(
                    obj,
                    "spec.retry.backoff.max",
                    max,
                    Duration::from_millis(1),
                    DAY,
                )?;
                if i > m {
                    return Err(obj.error(
                        "spec.retry.backoff",
                        format!("initial {initial} is longer than max {max}"),
                    ));
                }
                if !(1.0..=10.0).contains(multiplier) {
                    return Err(obj.error(
                        "spec.retry.backoff.multiplier",
                        format!("must be 1.0..=10.0, got {multiplier}"),
                    ));
                }
            }
            Some(QueueBackoff::Fixed { delay }) => {
                duration(
                    obj,
                    "spec.retry.backoff.delay",
                    delay,
                    Duration::from_millis(1),
                    DAY,
                )?;
            }
            None => {}
        }
    }
    Ok(())
}

pub(super) fn check_queue_policy(obj: &Located, p: &QueuePolicySpec) -> Result<(), ConfigError> {
    if p.queues.is_empty() {
        return Err(obj.error(
            "spec.queues",
            "name the queues (or `*` for all of the namespace)",
        ));
    }
    for (i, q) in p.queues.iter().enumerate() {
        if q != "*" && !valid_dns_label(q) {
            return Err(obj.error(
                format!("spec.queues[{i}]"),
                format!("\"{q}\" is not a queue name (or `*`)"),
            ));
        }
    }
    if p.rules.is_empty() {
        return Err(obj.error("spec.rules", "a QueuePolicy needs at least one rule"));
    }
    for (i, rule) in p.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        if rule.permissions.is_empty() {
            return Err(obj.error(
                format!("{base}.permissions"),
                "grant at least one of publish, consume, admin",
            ));
        }
        if rule.from.is_empty() {
            return Err(obj.error(
                format!("{base}.from"),
                "name the callers (identities, namespaces or trustDomains); queues are closed to everyone else",
            ));
        }
        super::check_from(obj, &base, &rule.from)?;
    }
    Ok(())
}
