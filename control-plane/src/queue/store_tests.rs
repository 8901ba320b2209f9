use super::*;
use crate::queue::crypt::Keys;
use crate::queue::state::NORMAL;
use bytes::Bytes;
use std::path::Path;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn queues() -> Vec<QueueConfig> {
    vec![
        QueueConfig {
            name: "intel/jobs".into(),
            settings: Settings {
                max_deliveries: Some(2),
                has_dead_letter: true,
                dedup_window: Some(Duration::from_secs(600)),
                ..Settings::default()
            },
            dead_letter: Some("intel/jobs-dlq".into()),
            kind: "fifo".into(),
            max_message_bytes: 1 << 20,
            encrypted: false,
            fanout: Fanout::None,
        },
        QueueConfig {
            name: "intel/jobs-dlq".into(),
            settings: Settings::default(),
            dead_letter: None,
            kind: "fifo".into(),
            max_message_bytes: 1 << 20,
            encrypted: false,
            fanout: Fanout::None,
        },
    ]
}

fn open(dir: &Path, segment_bytes: u64) -> (Store, Opened) {
    let config = log::Config {
        segment_bytes,
        ..log::Config::new(dir)
    };
    Store::open(config, &queues(), 1_000, Keys::default()).unwrap()
}

fn body(text: &str) -> NewMessage {
    NewMessage {
        kind: "ioc.enrichment.request".into(),
        priority: NORMAL,
        payload: Bytes::from(text.to_string()),
        publisher: "spiffe://cluster.local/ns/intel/sa/feed".into(),
        ..Default::default()
    }
}

fn ids(out: &[(Published, u32)]) -> Vec<u64> {
    out.iter()
        .map(|(p, _)| match p {
            Published::Enqueued(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn drain(store: &Store, queue: &str, consumer: u64) -> Vec<Arc<Message>> {
    let mut out = Vec::new();
    while let Some(d) = store
        .next(queue, 1_000, consumer, &Filter::default())
        .unwrap()
    {
        out.push(d.message);
    }
    out
}

#[test]
fn acknowledged_messages_stay_gone_and_unacknowledged_ones_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let published = {
        let (store, _) = open(dir.path(), 1 << 20);
        let out = rt
            .block_on(store.publish(
                "intel/jobs",
                1_000,
                (0..4).map(|i| body(&format!("m{i}"))).collect(),
            ))
            .unwrap();
        let published = ids(&out);
        let got = drain(&store, "intel/jobs", 1);
        assert_eq!(got.len(), 4);
        // Two acked; two still in flight when the process "dies".
        store.ack("intel/jobs", &[got[0].id], 1).unwrap();
        store.ack("intel/jobs", &[got[2].id], 1).unwrap();
        published
    };
    let (store, opened) = open(dir.path(), 1 << 20);
    assert_eq!(opened.messages, 2);
    let back = drain(&store, "intel/jobs", 9);
    let back_ids: Vec<u64> = back.iter().map(|m| m.id).collect();
    assert_eq!(back_ids, vec![published[1], published[3]]);
    assert_eq!(back[0].body.payload, Bytes::from("m1"));
    assert_eq!(
        back[0].body.publisher,
        "spiffe://cluster.local/ns/intel/sa/feed"
    );
    // New ids never repeat old ones.
    let out = rt
        .block_on(store.publish("intel/jobs", 1_000, vec![body("new")]))
        .unwrap();
    assert!(ids(&out)[0] > published[3]);
}

#[test]
fn delivery_counts_and_dead_letters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let id = {
        let (store, _) = open(dir.path(), 1 << 20);
        let id = ids(&rt
            .block_on(store.publish("intel/jobs", 1_000, vec![body("poison")]))
            .unwrap())[0];
        store
            .next("intel/jobs", 1_000, 1, &Filter::default())
            .unwrap()
            .unwrap();
        rt.block_on(store.nack("intel/jobs", 1_000, id, 1, true, "bad"))
            .unwrap();
        id
    };
    {
        let (store, _) = open(dir.path(), 1 << 20);
        let d = store
            .next("intel/jobs", 1_000, 1, &Filter::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.message.id, d.message.deliveries),
            (id, 2),
            "the count was kept"
        );
        assert_eq!(d.message.last_error.as_deref(), Some("bad"));
        // The second and last delivery fails: to the dead-letter queue.
        rt.block_on(store.nack("intel/jobs", 1_000, id, 1, true, "still bad"))
            .unwrap();
        assert!(drain(&store, "intel/jobs", 1).is_empty());
    }
    let (store, _) = open(dir.path(), 1 << 20);
    assert!(
        drain(&store, "intel/jobs", 1).is_empty(),
        "gone from the source"
    );
    let dead = drain(&store, "intel/jobs-dlq", 1);
    assert_eq!(dead.len(), 1);
    let h = &dead[0].body.headers;
    assert_eq!(h["x-weft-dead-letter-queue"], "intel/jobs");
    assert_eq!(h["x-weft-dead-letter-id"], id.to_string());
    assert!(h["x-weft-dead-letter-reason"].contains("still bad"));
    assert_eq!(dead[0].body.payload, Bytes::from("poison"));
}

#[test]
fn the_dedup_window_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let keyed = |k: &str| NewMessage {
        key: Some(k.into()),
        ..body(k)
    };
    let first = {
        let (store, _) = open(dir.path(), 1 << 20);
        ids(&rt
            .block_on(store.publish("intel/jobs", 1_000, vec![keyed("order-7")]))
            .unwrap())[0]
    };
    let (store, _) = open(dir.path(), 1 << 20);
    let out = rt
        .block_on(store.publish("intel/jobs", 2_000, vec![keyed("order-7")]))
        .unwrap();
    assert_eq!(out, vec![(Published::Deduplicated(first), 1)]);
}

#[test]
fn compaction_drops_segments_of_finished_messages_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let keep = {
        let (store, _) = open(dir.path(), 512);
        let keep = ids(&rt
            .block_on(store.publish("intel/jobs", 1_000, vec![body("keep me")]))
            .unwrap())[0];
        let held = store
            .next("intel/jobs", 1_000, 1, &Filter::default())
            .unwrap()
            .unwrap();
        assert_eq!(held.message.id, keep);
        for i in 0..50 {
            let id = ids(&rt
                .block_on(store.publish("intel/jobs", 1_000, vec![body(&format!("done {i}"))]))
                .unwrap())[0];
            store
                .next("intel/jobs", 1_000, 2, &Filter::default())
                .unwrap()
                .unwrap();
            store.ack("intel/jobs", &[id], 2).unwrap();
        }
        let before = store.log_segments().len();
        rt.block_on(store.compact()).unwrap();
        assert_eq!(
            store.log_segments().len(),
            before,
            "the live first message pins the log"
        );
        rt.block_on(store.release("intel/jobs", 1_000, 1)).unwrap();
        let m = store
            .next("intel/jobs", 1_000, 3, &Filter::default())
            .unwrap()
            .unwrap();
        // Its body is read back from the log the compaction kept.
        assert_eq!(m.message.body.payload, Bytes::from("keep me"));
        store.ack("intel/jobs", &[m.message.id], 3).unwrap();
        rt.block_on(store.compact()).unwrap();
        assert_eq!(store.log_segments().len(), 1, "{:?}", store.log_segments());
        keep
    };
    let (store, opened) = open(dir.path(), 512);
    assert_eq!(opened.messages, 0);
    let out = rt
        .block_on(store.publish("intel/jobs", 1_000, vec![body("after")]))
        .unwrap();
    assert!(ids(&out)[0] > keep + 50, "ids stay unique after compaction");
}

#[test]
fn records_of_a_deleted_queue_are_skipped_and_an_unknown_queue_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (store, _) = open(dir.path(), 1 << 20);
        store.configure(&[QueueConfig {
            name: "intel/old".into(),
            settings: Settings::default(),
            dead_letter: None,
            kind: "fifo".into(),
            max_message_bytes: 1 << 20,
            encrypted: false,
            fanout: Fanout::None,
        }]);
        rt.block_on(store.publish("intel/old", 1_000, vec![body("x")]))
            .unwrap();
    }
    let (store, opened) = open(dir.path(), 1 << 20);
    assert_eq!(opened.orphaned, 1);
    let e = rt
        .block_on(store.publish("intel/old", 1_000, vec![body("x")]))
        .unwrap_err();
    assert_eq!(e.to_string(), "queue \"intel/old\" does not exist");
}

fn secret_queues() -> Vec<QueueConfig> {
    vec![QueueConfig {
        name: "intel/secrets".into(),
        settings: Settings::default(),
        dead_letter: None,
        kind: "fifo".into(),
        max_message_bytes: 1 << 20,
        encrypted: true,
        fanout: Fanout::None,
    }]
}

fn log_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

#[test]
fn an_encrypted_queue_never_writes_a_payload_in_clear_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let marker = "PLAINTEXT-MARKER-7f3a";
    let (old, new) = ([1u8; 32], [2u8; 32]);
    let open_with = |keys: &[[u8; 32]]| {
        Store::open(
            log::Config::new(dir.path()),
            &secret_queues(),
            1_000,
            Keys::from_raw(keys),
        )
    };
    {
        let (store, _) = open_with(&[old]).unwrap();
        rt.block_on(store.publish("intel/secrets", 1_000, vec![body(&format!("{marker} one"))]))
            .unwrap();
        // A requeue record carries the payload too.
        let d = store
            .next("intel/secrets", 1_000, 1, &Filter::default())
            .unwrap()
            .unwrap();
        rt.block_on(store.nack("intel/secrets", 1_000, d.message.id, 1, true, "later"))
            .unwrap();
    }
    let bytes = log_bytes(dir.path());
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "a payload reached the disk in clear"
    );
    // Rotation: the new key first, the old one still there to read.
    {
        let (store, opened) = open_with(&[new, old]).unwrap();
        assert_eq!(opened.messages, 1);
        rt.block_on(store.publish("intel/secrets", 1_000, vec![body(&format!("{marker} two"))]))
            .unwrap();
        let got: Vec<String> = drain(&store, "intel/secrets", 1)
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body.payload).into_owned())
            .collect();
        assert_eq!(got, [format!("{marker} one"), format!("{marker} two")]);
    }
    assert!(!log_bytes(dir.path())
        .windows(marker.len())
        .any(|w| w == marker.as_bytes()));
    // Without the old key the store refuses to start rather than lose it.
    let e = open_with(&[new]).err().expect("refused").to_string();
    assert!(e.contains("no --queue-key-file holds"), "{e}");
    // No key at all: publishing to an encrypted queue is refused.
    let dir2 = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(
        log::Config::new(dir2.path()),
        &secret_queues(),
        1_000,
        Keys::default(),
    )
    .unwrap();
    let e = rt
        .block_on(store.publish("intel/secrets", 1_000, vec![body("x")]))
        .unwrap_err();
    assert!(e.to_string().contains("--queue-key-file"), "{e}");
    assert!(
        drain(&store, "intel/secrets", 1).is_empty(),
        "nothing enqueued"
    );
}

#[test]
fn a_queued_message_keeps_only_its_index_in_memory_and_is_delivered_whole() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut b = body("the payload");
    b.traceparent = Some(tp.into());
    b.headers.insert("x-tenant".into(), "acme".into());
    for restart in [false, true] {
        let (store, _) = open(dir.path(), 1 << 20);
        if !restart {
            rt.block_on(store.publish("intel/jobs", 1_000, vec![b.clone()]))
                .unwrap();
        }
        let q = store.queue("intel/jobs").unwrap();
        let kept = q.lock().peek(1, &|_| true);
        let (m, _) = &kept[0];
        assert!(m.body.payload.is_empty() && m.body.publisher.is_empty());
        assert_eq!(m.body.traceparent, None);
        assert_eq!(m.stored.map(|s| s.payload_len), Some(11));
        assert_eq!(q.depth().bytes, 11, "depth counts the payload");
        // Peek and delivery read the body back.
        let peeked = store.peek("intel/jobs", 1, false).unwrap();
        assert_eq!(peeked[0].0.body.payload, Bytes::from("the payload"));
        let d = store
            .next("intel/jobs", 1_000, 1, &Filter::default())
            .unwrap()
            .unwrap();
        assert_eq!(d.message.body.payload, Bytes::from("the payload"));
        assert_eq!(d.message.body.publisher, b.publisher);
        assert_eq!(d.message.body.traceparent.as_deref(), Some(tp));
        assert_eq!(d.message.body.headers["x-tenant"], "acme");
        assert_eq!(d.message.stored, None);
        // Not acked: delivered again after the restart.
    }
}

#[test]
fn a_message_requeued_before_a_restart_is_read_back_and_once_acked_lets_the_log_compact() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let id = {
        let (store, _) = open(dir.path(), 512);
        let id = ids(&rt
            .block_on(store.publish("intel/jobs", 1_000, vec![body("requeued body")]))
            .unwrap())[0];
        store
            .next("intel/jobs", 1_000, 1, &Filter::default())
            .unwrap()
            .unwrap();
        rt.block_on(store.nack("intel/jobs", 1_000, id, 1, true, "once"))
            .unwrap();
        id
    };
    let (store, _) = open(dir.path(), 512);
    let mut seen = false;
    for i in 0..30 {
        let done = ids(&rt
            .block_on(store.publish("intel/jobs", 1_000, vec![body(&format!("filler {i}"))]))
            .unwrap())[0];
        let d = store
            .next("intel/jobs", 1_000, 2, &Filter::default())
            .unwrap()
            .unwrap();
        if d.message.id == id {
            // Delivered whole from its requeue record.
            assert_eq!(d.message.body.payload, Bytes::from("requeued body"));
            assert_eq!(d.message.deliveries, 2);
            seen = true;
            store.ack("intel/jobs", &[id], 2).unwrap();
            let again = store
                .next("intel/jobs", 1_000, 2, &Filter::default())
                .unwrap()
                .unwrap();
            store.ack("intel/jobs", &[again.message.id], 2).unwrap();
        } else {
            store.ack("intel/jobs", &[done], 2).unwrap();
        }
    }
    assert!(seen, "the requeued message came back");
    assert!(drain(&store, "intel/jobs", 3).is_empty());
    rt.block_on(store.compact()).unwrap();
    assert_eq!(
        store.log_segments().len(),
        1,
        "nothing live pins the log: {:?}",
        store.log_segments()
    );
}
