use super::*;
use bytes::Bytes;

fn msg(kind: &str, priority: u8) -> NewMessage {
    NewMessage {
        kind: kind.into(),
        priority,
        payload: Bytes::from(format!("{kind}/{priority}")),
        publisher: "spiffe://cluster.local/ns/intel/sa/feed".into(),
        ..Default::default()
    }
}

fn keyed(key: &str) -> NewMessage {
    NewMessage {
        key: Some(key.into()),
        ..msg(key, NORMAL)
    }
}

fn enqueue(q: &mut QueueState, now: u64, m: NewMessage) -> u64 {
    match q.publish(now, m).0 {
        Published::Enqueued(id) => id,
        other => panic!("not enqueued: {other:?}"),
    }
}

fn take(q: &mut QueueState, now: u64, consumer: u64) -> Option<Arc<Message>> {
    q.next(now, consumer, &Filter::default()).map(|d| d.message)
}

fn all_kinds(q: &mut QueueState, now: u64) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = take(q, now, 1) {
        out.push(m.body.kind.clone());
        q.ack(m.id, 1).unwrap();
    }
    out
}

#[test]
fn a_priority_queue_serves_higher_levels_first_and_fifo_within_a_level() {
    let mut q = QueueState::new(Settings {
        priorities: true,
        ..Settings::default()
    });
    for (k, p) in [("a", 1), ("b", 9), ("c", 4), ("d", 9), ("e", 1), ("f", 4)] {
        enqueue(&mut q, 0, msg(k, p));
    }
    assert_eq!(q.depth().ready_by_priority[9], 2);
    assert_eq!(all_kinds(&mut q, 1), ["b", "d", "c", "f", "a", "e"]);
    assert!(q.is_empty());
}

#[test]
fn without_priorities_order_is_publish_order_whatever_the_priority_says() {
    let mut q = QueueState::new(Settings::default());
    for (k, p) in [("a", 1), ("b", 9), ("c", 4)] {
        enqueue(&mut q, 0, msg(k, p));
    }
    assert_eq!(all_kinds(&mut q, 1), ["a", "b", "c"]);
}

#[test]
fn aging_lifts_a_long_waiting_low_priority_message_over_newer_high_ones() {
    let mut q = QueueState::new(Settings {
        priorities: true,
        aging: Some(Duration::from_secs(1)),
        ..Settings::default()
    });
    enqueue(&mut q, 0, msg("old-low", 2));
    enqueue(&mut q, 9_000, msg("new-high", 8));
    // At 9.5 s the low one has waited 9 levels' worth: 2 + 9 > 8 + 0.
    assert_eq!(all_kinds(&mut q, 9_500), ["old-low", "new-high"]);
    // Without enough wait the higher level still wins.
    enqueue(&mut q, 10_000, msg("low", 2));
    enqueue(&mut q, 10_000, msg("high", 8));
    assert_eq!(all_kinds(&mut q, 10_500), ["high", "low"]);
}

#[test]
fn order_by_key_holds_a_keys_next_message_while_one_is_in_flight() {
    let mut q = QueueState::new(Settings {
        order_by_key: true,
        ..Settings::default()
    });
    for k in ["a", "a", "b"] {
        enqueue(&mut q, 0, keyed(k));
    }
    let first = take(&mut q, 1, 1).unwrap();
    assert_eq!(first.body.kind, "a");
    // The second "a" waits; another consumer gets "b".
    let second = take(&mut q, 1, 2).unwrap();
    assert_eq!(second.body.kind, "b");
    assert!(take(&mut q, 1, 2).is_none());
    q.ack(first.id, 1).unwrap();
    assert_eq!(take(&mut q, 1, 2).unwrap().body.kind, "a");
}

#[test]
fn a_delayed_message_waits_for_its_time() {
    let mut q = QueueState::new(Settings::default());
    enqueue(
        &mut q,
        0,
        NewMessage {
            deliver_at_ms: Some(5_000),
            ..msg("later", NORMAL)
        },
    );
    enqueue(&mut q, 0, msg("now", NORMAL));
    assert_eq!(q.depth().waiting, 1);
    assert_eq!(q.next_wakeup(), Some(5_000));
    assert_eq!(all_kinds(&mut q, 4_999), ["now"]);
    q.tick(4_999);
    assert!(take(&mut q, 4_999, 1).is_none());
    q.tick(5_000);
    assert_eq!(all_kinds(&mut q, 5_000), ["later"]);
}

#[test]
fn an_unacknowledged_delivery_returns_after_the_ack_timeout_with_its_count() {
    let mut q = QueueState::new(Settings {
        ack_timeout: Duration::from_secs(10),
        ..Settings::default()
    });
    let id = enqueue(&mut q, 0, msg("job", NORMAL));
    let d = q.next(0, 7, &Filter::default()).unwrap();
    assert_eq!((d.deadline_ms, d.message.deliveries), (10_000, 1));
    assert!(q.tick(9_999).is_empty());
    assert!(take(&mut q, 9_999, 8).is_none());
    q.tick(10_000);
    let again = take(&mut q, 10_000, 8).unwrap();
    assert_eq!((again.id, again.deliveries), (id, 2));
    assert_eq!(
        again.last_error.as_deref(),
        Some("not acknowledged within the ack timeout")
    );
    // The first consumer's late ack is refused; extend keeps it alive.
    assert_eq!(q.ack(id, 7), Err(AckError::NotYours(id)));
    assert_eq!(q.extend(10_000, id, 8, Duration::from_secs(60)), Ok(70_000));
    assert!(q.tick(20_000).is_empty());
    q.ack(id, 8).unwrap();
    assert_eq!(q.ack(id, 8), Err(AckError::Unknown(id)));
}

#[test]
fn retries_wait_out_the_backoff_and_the_last_failure_dead_letters_with_the_error() {
    let mut q = QueueState::new(Settings {
        max_deliveries: Some(3),
        backoff: Backoff::Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3),
            multiplier: 2.0,
        },
        has_dead_letter: true,
        ..Settings::default()
    });
    let id = enqueue(&mut q, 0, msg("poison", NORMAL));
    let mut now = 0;
    for (delivery, wait) in [(1, 1_000), (2, 2_000)] {
        let m = take(&mut q, now, 1).unwrap();
        assert_eq!(m.deliveries, delivery);
        let effects = q.nack(now, id, 1, true, "bad input").unwrap();
        assert!(
            matches!(&effects[..], [Effect::Requeued { message }] if message.deliveries == delivery),
            "{effects:?}"
        );
        assert!(
            take(&mut q, now + wait - 1, 1).is_none(),
            "delivery {delivery}: too early"
        );
        q.tick(now + wait);
        now += wait;
    }
    take(&mut q, now, 1).unwrap();
    let effects = q.nack(now, id, 1, true, "still bad").unwrap();
    match &effects[..] {
        [Effect::DeadLetter { message, reason }] => {
            assert_eq!(message.id, id);
            assert_eq!(message.deliveries, 3);
            assert!(
                reason.contains("3 deliveries") && reason.contains("still bad"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(q.is_empty());
    assert_eq!(
        Backoff::Fixed(Duration::from_secs(5)).delay(7),
        Duration::from_secs(5)
    );
}

#[test]
fn a_nack_without_requeue_dead_letters_at_once_or_drops_without_a_dead_letter_queue() {
    for has_dead_letter in [true, false] {
        let mut q = QueueState::new(Settings {
            has_dead_letter,
            ..Settings::default()
        });
        let id = enqueue(&mut q, 0, msg("x", NORMAL));
        take(&mut q, 0, 1).unwrap();
        let effects = q.nack(0, id, 1, false, "unparseable").unwrap();
        let dead = matches!(&effects[..], [Effect::DeadLetter { .. }]);
        let dropped = matches!(&effects[..], [Effect::Dropped { .. }]);
        assert_eq!(
            (dead, dropped),
            (has_dead_letter, !has_dead_letter),
            "{effects:?}"
        );
    }
}

#[test]
fn expired_messages_leave_as_configured_but_not_while_in_flight() {
    let mut q = QueueState::new(Settings {
        ttl: Some(Duration::from_secs(60)),
        ack_timeout: Duration::from_secs(120),
        expire_to_dead_letter: true,
        has_dead_letter: true,
        ..Settings::default()
    });
    enqueue(&mut q, 0, msg("a", NORMAL));
    let short = enqueue(
        &mut q,
        0,
        NewMessage {
            ttl: Some(Duration::from_secs(5)),
            ..msg("b", NORMAL)
        },
    );
    let effects = q.tick(5_000);
    assert!(
        matches!(&effects[..], [Effect::DeadLetter { message, reason }] if message.id == short && reason.contains("expired")),
        "{effects:?}"
    );
    let a = take(&mut q, 5_000, 1).unwrap();
    assert!(
        q.tick(61_000).is_empty(),
        "in flight: not expired under the consumer"
    );
    // A nack after the TTL: requeued, then expired at the next tick.
    q.nack(61_000, a.id, 1, true, "busy").unwrap();
    let effects = q.tick(61_000);
    assert!(
        matches!(&effects[..], [Effect::DeadLetter { message, .. }] if message.id == a.id),
        "{effects:?}"
    );
    assert!(q.is_empty());
}

#[test]
fn a_duplicate_inside_the_window_is_acknowledged_as_such_and_enqueued_after_it() {
    let mut q = QueueState::new(Settings {
        dedup_window: Some(Duration::from_secs(10)),
        ..Settings::default()
    });
    let first = enqueue(&mut q, 0, keyed("order-1"));
    assert_eq!(
        q.publish(9_999, keyed("order-1")).0,
        Published::Deduplicated(first)
    );
    assert_eq!(q.len(), 1);
    let later = enqueue(&mut q, 10_000, keyed("order-1"));
    assert_ne!(later, first);
    // Messages without a key are never deduplicated.
    enqueue(&mut q, 10_000, msg("x", NORMAL));
    enqueue(&mut q, 10_000, msg("x", NORMAL));
    assert_eq!(q.len(), 4);
}

#[test]
fn a_full_queue_refuses_or_drops_its_oldest_as_configured() {
    let mut q = QueueState::new(Settings {
        max_messages: Some(2),
        ..Settings::default()
    });
    enqueue(&mut q, 0, msg("a", NORMAL));
    enqueue(&mut q, 0, msg("b", NORMAL));
    match q.publish(0, msg("c", NORMAL)).0 {
        Published::Refused(why) => assert!(why.contains("queue full"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut q = QueueState::new(Settings {
        max_bytes: Some(8),
        drop_oldest: true,
        ..Settings::default()
    });
    enqueue(&mut q, 0, msg("a", NORMAL)); // "a/4": 3 bytes
    enqueue(&mut q, 0, msg("b", NORMAL));
    let (out, effects) = q.publish(0, msg("c", NORMAL));
    assert!(matches!(out, Published::Enqueued(_)));
    assert!(
        matches!(&effects[..], [Effect::Dropped { message, .. }] if message.body.kind == "a"),
        "{effects:?}"
    );
    assert_eq!(all_kinds(&mut q, 0), ["b", "c"]);
    assert_eq!(q.depth().bytes, 0);
}

#[test]
fn filters_by_type_and_priority_leave_other_messages_for_other_consumers() {
    let mut q = QueueState::new(Settings {
        priorities: true,
        ..Settings::default()
    });
    enqueue(&mut q, 0, msg("ioc.enrichment.request", 4));
    enqueue(&mut q, 0, msg("ioc.report", 9));
    let f = Filter {
        kinds: vec!["ioc.enrichment.request".into()],
        min_priority: 0,
    };
    assert_eq!(
        q.next(0, 1, &f).unwrap().message.body.kind,
        "ioc.enrichment.request"
    );
    let urgent = Filter {
        kinds: vec![],
        min_priority: 8,
    };
    assert_eq!(
        q.next(0, 2, &urgent).unwrap().message.body.kind,
        "ioc.report"
    );
    assert!(q.next(0, 2, &urgent).is_none());
}

#[test]
fn a_consumer_that_goes_away_gives_its_deliveries_back() {
    let mut q = QueueState::new(Settings::default());
    for k in ["a", "b"] {
        enqueue(&mut q, 0, msg(k, NORMAL));
    }
    take(&mut q, 0, 1).unwrap();
    take(&mut q, 0, 1).unwrap();
    assert_eq!(q.depth().in_flight, 2);
    assert_eq!(q.release(0, 1).len(), 2, "both requeued");
    assert_eq!(q.depth().in_flight, 0);
    let back = all_kinds(&mut q, 0);
    assert_eq!(back.len(), 2);
}
