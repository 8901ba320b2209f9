use super::*;
use crate::patch::{apply, Op};
use serde_json::json;

fn template() -> Template {
    Template {
        ca_bundle: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
        ..Template::default()
    }
}

/// A review as the API server sends it for `kubectl run`.
fn review_body(uid: &str, operation: &str, pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "name": "web-1",
            "namespace": "shop",
            "operation": operation,
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "6b0f", "groups": ["system:serviceaccounts", "system:authenticated"] },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" }
        }
    }))
    .unwrap()
}

fn web_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "web-7d4b9-", "labels": { "app": "web" } },
        "spec": { "containers": [{ "name": "web", "image": "web:1",
            "ports": [{ "containerPort": 8080 }] }] }
    })
}

#[test]
fn a_pod_creation_gets_an_allowing_answer_with_its_uid_and_a_base64_json_patch() {
    let (answer, verdict, _) = review(
        &review_body("705ab4f5-6393-11e8-b7cc-42010a800002", "CREATE", web_pod()),
        &template(),
        Selection::Namespace,
    );
    assert_eq!(verdict, Verdict::Injected);
    let wire = serde_json::to_value(&answer).unwrap();
    assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(wire["kind"], "AdmissionReview");
    assert_eq!(
        wire["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(wire["response"]["allowed"], true);
    assert_eq!(wire["response"]["patchType"], "JSONPatch");
    assert!(wire.get("request").is_none());
    let raw = base64::engine::general_purpose::STANDARD
        .decode(wire["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Op> = serde_json::from_slice(&raw).unwrap();
    let mut pod = web_pod();
    apply(&mut pod, &ops).unwrap();
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "weft-proxy");
}

#[test]
fn malformed_reviews_are_allowed_unchanged_with_a_warning_and_the_uid_when_known() {
    let t = template();
    for (body, uid) in [
        (b"not json".to_vec(), ""),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), ""),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1"}}"#.to_vec(), "u-1"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u-2","kind":{"version":"v1","kind":"Pod"},"resource":{"version":"v1","resource":"pods"},"operation":"CREATE"}}"#.to_vec(), "u-2"),
    ] {
        let (answer, verdict, why) = review(&body, &t, Selection::Namespace);
        assert_eq!(verdict, Verdict::Malformed, "{why}");
        let r = answer.response.unwrap();
        assert!(r.allowed && r.patch.is_none() && r.patch_type.is_none());
        assert_eq!(r.uid, uid);
        assert!(r.warnings[0].starts_with("weft injector"), "{:?}", r.warnings);
    }
    // A pod review with no object.
    let mut body: Value =
        serde_json::from_slice(&review_body("u-3", "CREATE", json!(null))).unwrap();
    body["request"]["object"] = Value::Null;
    let (answer, verdict, _) = review(
        &serde_json::to_vec(&body).unwrap(),
        &t,
        Selection::Namespace,
    );
    assert_eq!(verdict, Verdict::Malformed);
    assert_eq!(answer.response.unwrap().uid, "u-3");
}

#[test]
fn updates_are_left_alone_and_a_bad_annotation_admits_the_pod_with_a_warning() {
    let t = template();
    let (answer, verdict, _) = review(
        &review_body("u", "UPDATE", web_pod()),
        &t,
        Selection::Namespace,
    );
    assert_eq!(verdict, Verdict::Skipped);
    assert!(answer.response.unwrap().patch.is_none());
    let mut pod = web_pod();
    pod["metadata"]["annotations"] = json!({ "weft.dev/skip-outbound-ports": "http" });
    let (answer, verdict, _) = review(&review_body("u", "CREATE", pod), &t, Selection::Namespace);
    assert_eq!(verdict, Verdict::Refused);
    let r = answer.response.unwrap();
    assert!(r.allowed && r.patch.is_none());
    assert!(
        r.warnings[0].contains("weft.dev/skip-outbound-ports"),
        "{:?}",
        r.warnings
    );
}
