//! The store's fan-out (pubsub topics, broadcast) and admin operations
//! (peek, purge, redrive), through restarts.

use super::*;
use crate::queue::crypt::Keys;
use crate::queue::state::{Place, NORMAL};
use bytes::Bytes;
use std::path::Path;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn plain(name: &str) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        settings: Settings::default(),
        dead_letter: None,
        kind: "fifo".into(),
        max_message_bytes: 1 << 20,
        encrypted: false,
        fanout: Fanout::None,
    }
}

/// intel/iocs: a topic with subscriptions enrich and archive (archive
/// holds at most 2); intel/alerts: broadcast; intel/jobs with its DLQ.
fn queues() -> Vec<QueueConfig> {
    let mut archive = plain("intel/iocs/archive");
    archive.settings.max_messages = Some(2);
    let mut jobs = plain("intel/jobs");
    jobs.settings.has_dead_letter = true;
    jobs.settings.max_deliveries = Some(1);
    jobs.dead_letter = Some("intel/jobs-dlq".into());
    vec![
        plain("intel/iocs/enrich"),
        archive,
        QueueConfig {
            fanout: Fanout::Topic(vec![
                "intel/iocs/enrich".into(),
                "intel/iocs/archive".into(),
            ]),
            ..plain("intel/iocs")
        },
        QueueConfig {
            fanout: Fanout::Broadcast,
            ..plain("intel/alerts")
        },
        jobs,
        plain("intel/jobs-dlq"),
        plain("intel/other"),
    ]
}

fn open(dir: &Path) -> Store {
    Store::open(log::Config::new(dir), &queues(), 1_000, Keys::default())
        .unwrap()
        .0
}

fn body(text: &str) -> NewMessage {
    NewMessage {
        kind: "ioc".into(),
        priority: NORMAL,
        payload: Bytes::from(text.to_string()),
        ..Default::default()
    }
}

fn payloads(store: &Store, queue: &str, consumer: u64) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = store
        .next(queue, 1_000, consumer, &Filter::default())
        .unwrap()
    {
        out.push(String::from_utf8_lossy(&d.message.body.payload).into_owned());
    }
    out
}

#[test]
fn every_subscription_of_a_topic_gets_every_message_with_one_id_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let ids = {
        let store = open(dir.path());
        let out = rt
            .block_on(store.publish("intel/iocs", 1_000, vec![body("a"), body("b")]))
            .unwrap();
        assert!(out.iter().all(|(_, receivers)| *receivers == 2), "{out:?}");
        // Consumed (and acked) on one subscription only.
        while let Some(d) = store
            .next("intel/iocs/enrich", 1_000, 1, &Filter::default())
            .unwrap()
        {
            store.ack("intel/iocs/enrich", &[d.message.id], 1).unwrap();
        }
        out.into_iter()
            .map(|(p, _)| match p {
                Published::Enqueued(id) => id,
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    let store = open(dir.path());
    assert!(payloads(&store, "intel/iocs/enrich", 2).is_empty());
    let archive: Vec<u64> = std::iter::from_fn(|| {
        store
            .next("intel/iocs/archive", 1_000, 2, &Filter::default())
            .unwrap()
            .map(|d| d.message.id)
    })
    .collect();
    assert_eq!(archive, ids, "the same ids in every subscription");
    // Nothing is kept under the topic itself.
    assert_eq!(
        store
            .queue("intel/iocs")
            .unwrap()
            .depth()
            .ready_by_priority
            .iter()
            .sum::<u64>(),
        0
    );
}

#[test]
fn a_topic_message_one_subscription_refuses_goes_into_none() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    let out = rt
        .block_on(store.publish("intel/iocs", 1_000, vec![body("1"), body("2"), body("3")]))
        .unwrap();
    assert!(matches!(out[0].0, Published::Enqueued(_)));
    assert!(matches!(out[1].0, Published::Enqueued(_)));
    match &out[2].0 {
        Published::Refused(why) => assert!(
            why.contains("subscription archive") && why.contains("queue full"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(payloads(&store, "intel/iocs/enrich", 1), vec!["1", "2"]);
    assert_eq!(payloads(&store, "intel/iocs/archive", 1), vec!["1", "2"]);
}

#[test]
fn broadcast_hands_each_message_to_every_subscriber_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    let q = store.queue("intel/alerts").unwrap();
    let mut a = q.feed.subscribe();
    let mut b = q.feed.subscribe();
    let out = rt
        .block_on(store.publish("intel/alerts", 1_000, vec![body("x")]))
        .unwrap();
    assert_eq!(out[0].1, 2);
    assert_eq!(a.try_recv().unwrap().body.payload, Bytes::from("x"));
    assert_eq!(b.try_recv().unwrap().body.payload, Bytes::from("x"));
    assert_eq!(
        store.log.stats().records.load(Ordering::Relaxed),
        0,
        "nothing written"
    );
    assert!(q.lock().is_empty());
    drop((a, b));
    let out = rt
        .block_on(store.publish("intel/alerts", 1_000, vec![body("y")]))
        .unwrap();
    assert_eq!(
        out[0],
        (Published::Enqueued(out_id(&out)), 0),
        "no one listening"
    );
}

fn out_id(out: &[(Published, u32)]) -> u64 {
    match out[0].0 {
        Published::Enqueued(id) => id,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn peek_shows_delivery_order_without_delivering_and_purge_empties_durably() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = open(dir.path());
        let mut later = body("later");
        later.deliver_at_ms = Some(60_000);
        rt.block_on(store.publish(
            "intel/other",
            1_000,
            vec![body("1"), later, body("2"), body("3")],
        ))
        .unwrap();
        let d = store
            .next("intel/other", 1_000, 7, &Filter::default())
            .unwrap()
            .unwrap();
        let seen: Vec<(String, Place)> = store
            .peek("intel/other", 10, false)
            .unwrap()
            .into_iter()
            .map(|(m, p)| (String::from_utf8_lossy(&m.body.payload).into_owned(), p))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("2".into(), Place::Ready),
                ("3".into(), Place::Ready),
                ("later".into(), Place::Waiting),
                ("1".into(), Place::InFlight)
            ]
        );
        assert_eq!(store.peek("intel/other", 1, false).unwrap().len(), 1);
        // Purge takes the queued three; the delivery in flight stays.
        assert_eq!(rt.block_on(store.purge("intel/other", 1_000)).unwrap(), 3);
        store.ack("intel/other", &[d.message.id], 7).unwrap();
    }
    let store = open(dir.path());
    assert!(
        store.queue("intel/other").unwrap().lock().is_empty(),
        "purge survived the restart"
    );
}

#[test]
fn redrive_moves_dead_letters_back_with_a_fresh_count_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = open(dir.path());
        rt.block_on(store.publish("intel/jobs", 1_000, vec![body("p1"), body("p2")]))
            .unwrap();
        rt.block_on(store.publish("intel/jobs-dlq", 1_000, vec![body("from elsewhere")]))
            .unwrap();
        for _ in 0..2 {
            let d = store
                .next("intel/jobs", 1_000, 1, &Filter::default())
                .unwrap()
                .unwrap();
            rt.block_on(store.nack("intel/jobs", 1_000, d.message.id, 1, true, "boom"))
                .unwrap();
        }
        let dead = store.peek("intel/jobs", 10, true).unwrap();
        assert_eq!(dead.len(), 2, "only the dead letters from intel/jobs");
        assert!(dead[0].0.body.headers[DEAD_LETTER_REASON].contains("boom"));
        let first = dead[0].0.id;
        let done = rt
            .block_on(store.redrive("intel/jobs", &[first], 2_000))
            .unwrap();
        assert_eq!(done.ids.len(), 1);
        assert_eq!(done.stopped, None);
    }
    let store = open(dir.path());
    let back = store
        .next("intel/jobs", 3_000, 2, &Filter::default())
        .unwrap()
        .unwrap();
    assert_eq!(back.message.body.payload, Bytes::from("p1"));
    assert_eq!(back.message.deliveries, 1, "count starts again");
    assert!(!back.message.body.headers.contains_key(DEAD_LETTER_QUEUE));
    assert_eq!(store.peek("intel/jobs", 10, true).unwrap().len(), 1);
    assert_eq!(store.peek("intel/jobs-dlq", 10, false).unwrap().len(), 2);
    match store.peek("intel/other", 10, true) {
        Err(StoreError::NoDeadLetter(q)) => assert_eq!(q, "intel/other"),
        other => panic!("{other:?}"),
    }
}
