//! The `Queue` kind through the real control plane and weftctl (issue 16,
//! first part): queues are applied, listed and read back as written; a
//! queue whose dead-letter queue does not exist is refused with the file,
//! the document and the field, and nothing of that apply is stored.

use serde_json::Value;
use weft_testbed::*;

const QUEUES: &str = "\
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: enrichment, namespace: intel}
spec:
  type: priority
  aging: 30s
  maxSize: {messages: 1000000, onFull: reject}
  retry: {maxDeliveries: 5, backoff: {type: exponential, initial: 1s, max: 5m}}
  ackTimeout: 30s
  deduplication: {window: 10m}
  deadLetter: {queue: enrichment-dlq, ttl: 168h}
---
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: enrichment-dlq, namespace: intel}
spec: {type: fifo}
";

#[test]
fn queues_and_their_policies_are_applied_listed_and_dangling_references_are_refused_with_the_field()
{
    let mesh = Mesh::start("queue-config");
    mesh.apply("queues.yaml", QUEUES).expect("apply");
    let out = mesh.weftctl(&["-o", "json", "get", "queues", "-n", "intel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = got
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|q| q["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["enrichment", "enrichment-dlq"]);
    let q = &got[0]["spec"];
    assert_eq!(q["type"], "priority");
    assert_eq!(q["retry"]["backoff"]["type"], "exponential");
    assert_eq!(q["deadLetter"]["queue"], "enrichment-dlq");

    let bad = "apiVersion: weft.dev/v1\nkind: Queue\nmetadata: {name: orders, namespace: intel}\nspec: {type: fifo, deadLetter: {queue: nowhere}}\n";
    let e = mesh.apply("bad.yaml", bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml")
            && e.contains("spec.deadLetter.queue")
            && e.contains("intel/nowhere"),
        "{e}"
    );
    let out = mesh.weftctl(&["-o", "json", "get", "queues", "-n", "intel"]);
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        got.as_array().map(Vec::len),
        Some(2),
        "nothing of the refused apply is stored"
    );
}

/// Config pushes to sidecars are debounced (here by 3 s); the queue
/// service does not wait for that: a Queue applied a moment ago takes a
/// publish at once.
#[test]
fn a_queue_takes_publishes_as_soon_as_its_apply_returns() {
    let mesh = Mesh::start_with("queue-fresh", &["--push-debounce-ms", "3000"]);
    mesh.apply(
        "queue.yaml",
        "apiVersion: weft.dev/v1\nkind: Queue\nmetadata: {name: fresh, namespace: intel}\nspec: {type: fifo}\n",
    )
    .expect("apply");
    let out = mesh.weftctl(&["queue", "publish", "fresh", "-n", "intel", "--data", "now"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("enqueued "));
}
