//! The queue service's fan-out and admin side through the real control
//! plane: a pubsub topic whose two subscriptions each get every message, a
//! broadcast queue whose every connected consumer gets every message, and
//! an operator's peek, dead-letter list, redrive, purge and consume with
//! weftctl, each admin action and refusal in the JSON audit log.

#[path = "common/workload.rs"]
mod workload;

#[path = "common/queue.rs"]
mod queue;

use queue::*;
use std::time::Duration;
use weft_testbed::redis::QueueStore;
use weft_testbed::*;
use xds_proto::v1::{self as pb, consume_request::Kind as In};

const CONFIG: &str = "\
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: iocs, namespace: intel}
spec: {type: pubsub, subscriptions: [enrich, archive], retention: 1h}
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: alerts, namespace: intel}
spec: {type: broadcast}
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: jobs, namespace: intel}
spec:
  type: fifo
  retry: {maxDeliveries: 3}
  deadLetter: {queue: jobs-dlq}
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: jobs-dlq, namespace: intel}
spec: {type: fifo}
---
apiVersion: weft.dev/v1
kind: QueuePolicy
metadata: {name: intel, namespace: intel}
spec:
  queues: ['*']
  rules:
  - permissions: [publish, consume]
    from: {namespaces: [intel]}
";

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "weftctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("json")
}

fn payloads(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|m| m["payload"]["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn each_subscription_of_a_topic_and_each_broadcast_consumer_gets_every_message() {
    fanout(QueueStore::Embedded);
}

#[test]
fn on_redis_each_subscription_of_a_topic_and_each_broadcast_consumer_gets_every_message() {
    fanout(QueueStore::Redis);
}

fn fanout(store: QueueStore) {
    let (mesh, _redis) =
        Mesh::start_with_queue_store(&format!("queue-fanout-{store:?}"), store, &[]);
    mesh.apply("queues.yaml", CONFIG).expect("apply");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut app = workload(&mesh, "intel", "app").await;
        let mut app2 = workload(&mesh, "intel", "app2").await;

        // A topic needs a subscription named, and an existing one.
        let sub = |queue: &str, subscription: &str| pb::Subscribe {
            namespace: "intel".into(),
            queue: queue.into(),
            subscription: subscription.into(),
            prefetch: 100,
            ..Default::default()
        };
        let e = Consumer::subscribe(&mut app, sub("iocs", ""))
            .await
            .err()
            .expect("no subscription");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("enrich, archive"), "{}", e.message());
        let e = Consumer::subscribe(&mut app, sub("iocs", "nope"))
            .await
            .err()
            .expect("unknown subscription");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = Consumer::subscribe(&mut app, sub("jobs", "enrich"))
            .await
            .err()
            .expect("not a topic");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let outcomes = publish(
            &mut app,
            "iocs",
            (0..5)
                .map(|i| message("ioc", 4, &format!("ioc-{i}")))
                .collect(),
        )
        .await
        .expect("publish");
        assert!(outcomes.iter().all(|o| o.receivers == 2), "{outcomes:?}");
        let published: Vec<u64> = outcomes.iter().map(|o| o.id).collect();
        // Two consumers compete on `enrich`; `archive` has its own cursor.
        let mut enrich_a = Consumer::subscribe(&mut app, sub("iocs", "enrich"))
            .await
            .expect("enrich");
        let mut enrich_b = Consumer::subscribe(&mut app2, sub("iocs", "enrich"))
            .await
            .expect("enrich");
        // `archive` takes its deliveries in batches (prefetch 3, up to 2
        // per response) and acks them in batches.
        let mut archive = Consumer::subscribe(
            &mut app2,
            pb::Subscribe {
                prefetch: 3,
                max_batch: 2,
                ..sub("iocs", "archive")
            },
        )
        .await
        .expect("archive");
        let mut enriched = Vec::new();
        for c in [&mut enrich_a, &mut enrich_b] {
            while let Some(m) = c.next(Duration::from_millis(700)).await {
                c.send(In::Ack(m.id)).await;
                enriched.push(m.id);
            }
        }
        enriched.sort_unstable();
        assert_eq!(
            enriched, published,
            "enrich: each message once across its consumers"
        );
        let mut archived: Vec<u64> = Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        while let Ok(Ok(Some(resp))) =
            tokio::time::timeout(Duration::from_millis(700), archive.rx.message()).await
        {
            let Some(pb::consume_response::Kind::Deliveries(b)) = resp.kind else {
                panic!("expected a batch: {resp:?}");
            };
            let ids: Vec<u64> = b
                .items
                .iter()
                .filter_map(|d| d.message.as_ref().map(|m| m.id))
                .collect();
            sizes.push(ids.len());
            archived.extend(&ids);
            archive.send(In::Acks(pb::Acks { ids })).await;
        }
        assert!(
            sizes.iter().all(|n| (1..=2).contains(n)),
            "batches of at most 2: {sizes:?}"
        );
        assert_eq!(
            archived, published,
            "archive: every message, in order, same ids"
        );

        // Broadcast: both connected consumers get both messages.
        let mut b1 = Consumer::open(&mut app, "alerts", 10).await.expect("b1");
        let mut b2 = Consumer::open(&mut app2, "alerts", 10).await.expect("b2");
        let mut receivers = 0;
        for _ in 0..50 {
            // The consumers register asynchronously: publish once both are.
            let described = admin(&mesh)
                .await
                .describe(pb::DescribeQueueRequest {
                    namespace: "intel".into(),
                    name: "alerts".into(),
                })
                .await
                .expect("describe")
                .into_inner();
            if described.queues[0].consumers == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in ["storm", "all clear"] {
            let o = publish(&mut app, "alerts", vec![message("alert", 4, p)])
                .await
                .expect("publish");
            receivers += o[0].receivers;
        }
        assert_eq!(receivers, 4);
        for c in [&mut b1, &mut b2] {
            let mut got = Vec::new();
            while let Some(m) = c.next(Duration::from_millis(700)).await {
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            assert_eq!(got, ["storm", "all clear"]);
        }
        let e = publish(
            &mut app,
            "alerts",
            vec![pb::QueueMessage {
                deliver_at_unix_ms: 1,
                ..message("alert", 4, "later")
            }],
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("deliver_at"), "{}", e.message());
    });
    let m = mesh.control_metrics();
    assert!(
        metric(
            &m,
            "weft_queue_delivered_total",
            "queue=\"intel/iocs/archive\""
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{m}"
    );
    assert!(
        metric(&m, "weft_queue_acked_total", "queue=\"intel/iocs/enrich\"").unwrap_or(0.0) >= 5.0,
        "{m}"
    );
}

#[test]
fn an_operator_peeks_redrives_dead_letters_purges_and_consumes_with_weftctl_and_each_action_is_audited(
) {
    operator(QueueStore::Embedded);
}

#[test]
fn on_redis_an_operator_peeks_redrives_dead_letters_purges_and_consumes_with_weftctl_and_each_action_is_audited(
) {
    operator(QueueStore::Redis);
}

fn operator(store: QueueStore) {
    let audit =
        std::env::temp_dir().join(format!("weft-audit-{}-{store:?}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&audit);
    let (mesh, _redis) = Mesh::start_with_queue_store(
        &format!("queue-admin-{store:?}"),
        store,
        &["--audit-log", audit.to_str().expect("utf-8 path")],
    );
    mesh.apply("queues.yaml", CONFIG).expect("apply");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut app = workload(&mesh, "intel", "app").await;
        publish(
            &mut app,
            "jobs",
            ["good-1", "poison", "good-2"]
                .iter()
                .map(|p| message("job", 4, p))
                .collect(),
        )
        .await
        .expect("publish");
        // A workload without admin may not peek; the refusal is audited.
        let e = app
            .peek(pb::PeekRequest {
                namespace: "intel".into(),
                queue: "jobs".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // The consumer rejects the poison message outright.
        let mut c = Consumer::open(&mut app, "jobs", 1).await.expect("consume");
        let m = c.next(Duration::from_secs(5)).await.expect("first");
        assert_eq!(String::from_utf8_lossy(&m.payload), "good-1");
        c.send(In::Ack(m.id)).await;
        let m = c.next(Duration::from_secs(5)).await.expect("second");
        assert_eq!(String::from_utf8_lossy(&m.payload), "poison");
        c.send(In::Nack(pb::Nack {
            id: m.id,
            requeue: false,
            error: "unparseable indicator".into(),
        }))
        .await;
        let m = c.next(Duration::from_secs(5)).await.expect("third");
        // Left in flight: peek shows it, purge leaves it.
        assert_eq!(String::from_utf8_lossy(&m.payload), "good-2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(c);
    });

    let peek = json(&mesh.weftctl(&["-o", "json", "queue", "peek", "jobs", "-n", "intel"]));
    assert_eq!(payloads(&peek), ["good-2"], "{peek}");
    let dead = json(&mesh.weftctl(&["-o", "json", "queue", "dlq", "jobs", "-n", "intel"]));
    assert_eq!(payloads(&dead), ["poison"], "{dead}");
    assert!(
        dead[0]["headers"]["x-weft-dead-letter-reason"]
            .as_str()
            .unwrap_or("")
            .contains("unparseable indicator"),
        "{dead}"
    );
    let out = ok(&mesh.weftctl(&["queue", "dlq", "redrive", "jobs", "-n", "intel"]));
    assert!(
        out.contains("moved 1 dead letters back into intel/jobs"),
        "{out}"
    );
    assert!(payloads(&json(
        &mesh.weftctl(&["-o", "json", "queue", "dlq", "jobs", "-n", "intel"])
    ))
    .is_empty());
    let peek = json(&mesh.weftctl(&["-o", "json", "queue", "peek", "jobs", "-n", "intel"]));
    let back: Vec<_> = peek
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["payload"]["text"] == "poison")
        .collect();
    assert_eq!(back.len(), 1, "{peek}");
    assert_eq!(back[0]["deliveries"], 0, "count reset: {peek}");

    // consume prints and acknowledges; --count stops it.
    let out = ok(&mesh.weftctl(&[
        "-o", "json", "queue", "consume", "jobs", "-n", "intel", "--count", "1",
    ]));
    let line: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect("json line");
    assert!(
        line["payload"]["text"] == "good-2" || line["payload"]["text"] == "poison",
        "{line}"
    );

    let out = mesh.weftctl(&["queue", "purge", "jobs", "-n", "intel"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = ok(&mesh.weftctl(&["queue", "purge", "jobs", "-n", "intel", "--yes"]));
    assert!(out.contains("purged 1 messages"), "{out}");
    let list = json(&mesh.weftctl(&["-o", "json", "queue", "list", "-n", "intel"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(
        names.contains(&"iocs/enrich")
            && names.contains(&"iocs/archive")
            && names.contains(&"jobs"),
        "{list}"
    );
    let jobs = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "jobs")
        .unwrap();
    assert_eq!(jobs["ready"], 0, "{list}");

    // Unknown queue, and a pubsub topic without a subscription.
    let out = mesh.weftctl(&["queue", "peek", "nowhere", "-n", "intel"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = mesh.weftctl(&["queue", "purge", "iocs", "-n", "intel", "--yes"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("subscription"));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let find = |event: &str, action: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event && l["action"] == action)
            .cloned()
    };
    let refused = find("queue_access_denied", "admin").expect("refusal audited");
    assert_eq!(
        refused["identity"],
        "spiffe://cluster.local/ns/intel/sa/app"
    );
    assert_eq!(refused["queue"], "intel/jobs");
    let redrive = find("queue_admin", "redrive").expect("redrive audited");
    assert_eq!(
        redrive["identity"],
        "spiffe://cluster.local/ns/weft-system/sa/admin"
    );
    assert!(
        find("queue_admin", "purge").expect("purge audited")["detail"]
            .as_str()
            .unwrap_or("")
            .contains("1 messages")
    );
    let _ = std::fs::remove_file(&audit);
}
