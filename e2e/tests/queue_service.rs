//! The queue service (issue 16) through the real control plane over mTLS,
//! with real workload certificates: QueuePolicies decide who publishes and
//! consumes; priority order, acks, retries into the dead-letter queue, bad
//! input refused with the field, and a `kill -9` of the control plane that
//! loses no acknowledged publish and redelivers what was not acknowledged.

#[path = "common/workload.rs"]
mod workload;

#[path = "common/queue.rs"]
mod queue;

use queue::*;
use std::time::Duration;
use weft_testbed::redis::QueueStore;
use weft_testbed::*;
use xds_proto::v1::{self as pb, consume_request::Kind as In, consume_response::Kind as Out};

const CONFIG: &str = "\
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: enrichment, namespace: intel}
spec:
  type: priority
  maxMessageBytes: 1024
  retry: {maxDeliveries: 2, backoff: {type: fixed, delay: 100ms}}
  deadLetter: {queue: enrichment-dlq}
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: enrichment-dlq, namespace: intel}
spec: {type: fifo}
---
apiVersion: weft.dev/v1
kind: QueuePolicy
metadata: {name: enrichment-access, namespace: intel}
spec:
  queues: [enrichment]
  rules:
  - permissions: [publish]
    from: {namespaces: [feeds]}
  - permissions: [consume]
    from: {identities: ['spiffe://cluster.local/ns/intel/sa/enricher']}
";

#[test]
fn publishers_and_consumers_are_held_to_their_policy_and_messages_flow_by_priority_into_the_dead_letter_queue(
) {
    policy_priority_and_dead_letters(QueueStore::Embedded);
}

#[test]
fn on_redis_publishers_and_consumers_are_held_to_their_policy_and_messages_flow_by_priority_into_the_dead_letter_queue(
) {
    policy_priority_and_dead_letters(QueueStore::Redis);
}

fn policy_priority_and_dead_letters(store: QueueStore) {
    let (mesh, _redis, rt) = queue_mesh("queue-flow", store, CONFIG);
    rt.block_on(async {
        let mut feed = workload(&mesh, "feeds", "collector").await;
        let mut enricher = workload(&mesh, "intel", "enricher").await;
        let mut stranger = workload(&mesh, "shop", "web").await;
        let mut admin = admin(&mesh).await;

        // Deny by default: the refusal names who and what.
        let e = publish(
            &mut stranger,
            "enrichment",
            vec![message("ioc.enrichment.request", 4, "x")],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("spiffe://cluster.local/ns/shop/sa/web")
                && e.message().contains("publish"),
            "{}",
            e.message()
        );
        let e = Consumer::open(&mut feed, "enrichment", 1)
            .await
            .err()
            .expect("feed may not consume");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);

        // Bad input is refused with the field; nothing is enqueued.
        let e = publish(
            &mut feed,
            "enrichment",
            vec![message("a", 4, "ok"), message("a", 10, "x")],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("messages[1].priority"),
            "{}",
            e.message()
        );
        let e = publish(
            &mut feed,
            "enrichment",
            vec![message("a", 4, &"x".repeat(2000))],
        )
        .await
        .unwrap_err();
        assert!(
            e.message().contains("messages[0].payload") && e.message().contains("1024"),
            "{}",
            e.message()
        );
        let e = publish(&mut admin, "nowhere", vec![message("a", 4, "x")])
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);

        // Three NORMAL, then one CRITICAL: the CRITICAL one comes first.
        let mut batch: Vec<_> = (0..3)
            .map(|i| message("ioc.enrichment.request", 4, &format!("normal-{i}")))
            .collect();
        batch.push(message("ioc.enrichment.request", 9, "critical"));
        let outcomes = publish(&mut feed, "enrichment", batch)
            .await
            .expect("publish");
        assert!(
            outcomes
                .iter()
                .all(|o| o.result == pb::publish_outcome::Result::Enqueued as i32),
            "{outcomes:?}"
        );
        let described = admin
            .describe(pb::DescribeQueueRequest {
                namespace: "intel".into(),
                name: "enrichment".into(),
            })
            .await
            .expect("describe")
            .into_inner();
        assert_eq!(described.queues[0].ready_by_priority[4], 3);
        assert_eq!(described.queues[0].ready_by_priority[9], 1);

        let mut c = Consumer::open(&mut enricher, "enrichment", 10)
            .await
            .expect("consume");
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = c.next(Duration::from_secs(5)).await.expect("delivery");
            assert_eq!(
                m.publisher, "spiffe://cluster.local/ns/feeds/sa/collector",
                "set by the server"
            );
            got.push((m.id, String::from_utf8_lossy(&m.payload).into_owned()));
        }
        let order: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(order, ["critical", "normal-0", "normal-1", "normal-2"]);
        for (id, p) in &got {
            if p != "normal-1" {
                c.send(In::Ack(*id)).await;
            }
        }
        // normal-1 is poison: nacked twice (the queue allows 2 deliveries),
        // then it is in the dead-letter queue with the last error.
        let poison = got
            .iter()
            .find(|(_, p)| p == "normal-1")
            .map(|(id, _)| *id)
            .expect("poison");
        c.send(In::Nack(pb::Nack {
            id: poison,
            requeue: true,
            error: "enricher: bad indicator".into(),
        }))
        .await;
        let again = c
            .next(Duration::from_secs(5))
            .await
            .expect("retry after the backoff");
        assert_eq!((again.id, again.deliveries), (poison, 2));
        c.send(In::Nack(pb::Nack {
            id: poison,
            requeue: true,
            error: "enricher: still bad".into(),
        }))
        .await;
        let mut dlq = Consumer::open(&mut admin, "enrichment-dlq", 1)
            .await
            .expect("admin consumes the DLQ");
        let dead = dlq.next(Duration::from_secs(5)).await.expect("dead letter");
        assert_eq!(String::from_utf8_lossy(&dead.payload), "normal-1");
        assert!(
            dead.headers["x-weft-dead-letter-reason"].contains("still bad"),
            "{:?}",
            dead.headers
        );
        assert_eq!(dead.headers["x-weft-dead-letter-queue"], "intel/enrichment");
        assert!(
            c.next(Duration::from_millis(300)).await.is_none(),
            "nothing left"
        );
        // An ack of a message this consumer does not hold is answered
        // with an error on the stream.
        c.send(In::Ack(poison)).await;
        match tokio::time::timeout(Duration::from_secs(5), c.rx.message()).await {
            Ok(Ok(Some(pb::ConsumeResponse {
                kind: Some(Out::Error(e)),
            }))) => assert!(e.contains("not in flight"), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    });
    // The embedded log's group commits are counted (refreshed every
    // second): the publishes above were written, each commit carrying at
    // least one; Redis has no such log.
    let mut m = mesh.admin_get(mesh.control_admin, "/metrics").1;
    if store == QueueStore::Embedded {
        for _ in 0..50 {
            if metric(&m, "weft_queue_log_records_total", "").unwrap_or(0.0) >= 4.0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            m = mesh.admin_get(mesh.control_admin, "/metrics").1;
        }
        let commits = metric(&m, "weft_queue_log_commits_total", "").unwrap_or(0.0);
        let records = metric(&m, "weft_queue_log_records_total", "").unwrap_or(0.0);
        assert!(commits >= 1.0 && records >= commits, "{m}");
    } else {
        assert_eq!(metric(&m, "weft_queue_log_commits_total", ""), None, "{m}");
    }
    assert!(
        metric(
            &m,
            "weft_queue_access_denied_total",
            "permission=\"publish\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );

    // weftctl: publish with a named priority, then describe.
    let out = mesh.weftctl(&[
        "queue",
        "publish",
        "enrichment",
        "-n",
        "intel",
        "--type",
        "ioc.report",
        "--priority",
        "CRITICAL",
        "--data",
        "hello",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("enqueued "));
    let out = mesh.weftctl(&["-o", "json", "queue", "describe", "-n", "intel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queues: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let q = queues
        .as_array()
        .and_then(|a| a.iter().find(|q| q["name"] == "enrichment"))
        .expect("enrichment")
        .clone();
    assert_eq!(q["readyByPriority"][9], 1, "{q}");
    assert_eq!(q["deadLetter"], "intel/enrichment-dlq");
    let out = mesh.weftctl(&[
        "queue",
        "publish",
        "enrichment",
        "-n",
        "intel",
        "--priority",
        "12",
        "--data",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a priority"));
}

#[test]
fn acknowledged_publishes_survive_a_kill_9_and_unacknowledged_deliveries_come_back() {
    kill_9_of_the_control_plane(QueueStore::Embedded);
}

/// On Redis the restarted replica takes back what it had in flight (its
/// name is kept in its data dir), so those come back at once too.
#[test]
fn on_redis_acknowledged_publishes_survive_a_kill_9_of_the_control_plane_and_its_deliveries_come_back(
) {
    kill_9_of_the_control_plane(QueueStore::Redis);
}

fn kill_9_of_the_control_plane(store: QueueStore) {
    let (mut mesh, _redis, rt) = queue_mesh("queue-crash", store, CONFIG);
    let (acked, published) = rt.block_on(async {
        let mut feed = workload(&mesh, "feeds", "collector").await;
        let mut enricher = workload(&mesh, "intel", "enricher").await;
        let mut published = Vec::new();
        for i in 0..20 {
            let o = publish(
                &mut feed,
                "enrichment",
                vec![message("t", 4, &format!("m{i}"))],
            )
            .await
            .expect("publish");
            published.push(o[0].id);
        }
        let mut c = Consumer::open(&mut enricher, "enrichment", 10)
            .await
            .expect("consume");
        let mut acked = Vec::new();
        for i in 0..10 {
            let m = c.next(Duration::from_secs(5)).await.expect("delivery");
            if i % 2 == 0 {
                c.send(In::Ack(m.id)).await;
                acked.push(m.id);
            }
        }
        // Let the acks land before the crash.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (acked, published)
    });
    mesh.kill_control();
    mesh.start_control();
    let redelivered = rt.block_on(async {
        let mut enricher = workload(&mesh, "intel", "enricher").await;
        let mut c = Consumer::open(&mut enricher, "enrichment", 100)
            .await
            .expect("consume");
        let mut ids = Vec::new();
        while let Some(m) = c.next(Duration::from_secs(2)).await {
            ids.push(m.id);
        }
        ids
    });
    let mut expected: Vec<u64> = published
        .iter()
        .copied()
        .filter(|id| !acked.contains(id))
        .collect();
    let mut got = redelivered.clone();
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(
        got, expected,
        "every unacknowledged message, none of the acknowledged"
    );
}

#[test]
fn acks_sent_back_to_back_are_all_applied_and_a_bad_one_among_them_is_reported() {
    acks_back_to_back(QueueStore::Embedded);
}

#[test]
fn on_redis_acks_sent_back_to_back_are_all_applied_and_a_bad_one_among_them_is_reported() {
    acks_back_to_back(QueueStore::Redis);
}

/// A consumer with 60 deliveries in hand (one per response, prefetch 60)
/// acks them all without waiting, with an ack of a message it does not
/// hold in the middle (the server settles acks that arrive together in
/// one store call): every real ack lands, nothing comes back, and the bad
/// one is answered with an error naming it.
fn acks_back_to_back(store: QueueStore) {
    let (mesh, _redis, rt) = queue_mesh("queue-acks", store, CONFIG);
    rt.block_on(async {
        let mut feed = workload(&mesh, "feeds", "collector").await;
        let mut enricher = workload(&mesh, "intel", "enricher").await;
        let mut admin = admin(&mesh).await;
        let messages = (0..60).map(|i| message("t", 4, &format!("m{i}"))).collect();
        let out = publish(&mut feed, "enrichment", messages)
            .await
            .expect("publish");
        assert_eq!(out.len(), 60);
        let mut c = Consumer::open(&mut enricher, "enrichment", 60)
            .await
            .expect("consume");
        let mut ids = Vec::new();
        for _ in 0..60 {
            let m = c.next(Duration::from_secs(5)).await.expect("delivery");
            ids.push(m.id);
        }
        let stranger = ids.iter().max().copied().unwrap_or(0) + 1_000_000;
        for (i, id) in ids.iter().enumerate() {
            if i == 30 {
                c.send(In::Ack(stranger)).await;
            }
            c.send(In::Ack(*id)).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), c.rx.message()).await {
            Ok(Ok(Some(pb::ConsumeResponse {
                kind: Some(Out::Error(e)),
            }))) => assert!(
                e.contains(&stranger.to_string()) && e.contains("not in flight"),
                "{e}"
            ),
            other => panic!("expected an error, got {other:?}"),
        }
        let mut depth = (u64::MAX, u64::MAX);
        for _ in 0..50 {
            let d = admin
                .describe(pb::DescribeQueueRequest {
                    namespace: "intel".into(),
                    name: "enrichment".into(),
                })
                .await
                .expect("describe")
                .into_inner();
            let q = &d.queues[0];
            depth = (q.ready_by_priority.iter().sum::<u64>(), q.in_flight);
            if depth == (0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(depth, (0, 0), "every ack applied: (ready, in flight)");
        assert!(
            c.next(Duration::from_millis(300)).await.is_none(),
            "nothing comes back"
        );
    });
    let m = mesh.admin_get(mesh.control_admin, "/metrics").1;
    let acked = metric(&m, "weft_queue_acked_total", "queue=\"intel/enrichment\"");
    assert!(acked.is_some_and(|n| n >= 60.0), "{acked:?}");
}
