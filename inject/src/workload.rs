//! Where a Kubernetes object keeps its pod template.

use serde_json::Value;

/// The JSON Pointers of the pod templates in `object` ("" for a Pod), by
/// kind; empty for kinds that run no pods. A `List` yields its items'.
pub fn pod_templates(object: &Value) -> Vec<String> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "Pod" => vec![String::new()],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => vec!["/spec/template".into()],
        "CronJob" => vec!["/spec/jobTemplate/spec/template".into()],
        "List" => object
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, item)| {
                pod_templates(item)
                    .into_iter()
                    .map(move |p| format!("/items/{i}{p}"))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `kind/name` for reports.
pub fn describe(object: &Value) -> String {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .or_else(|| {
            object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
        })
        .unwrap_or("(unnamed)");
    format!("{kind}/{name}")
}

/// The object's namespace, when it says.
pub fn namespace(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_workload_kind_has_its_pod_template_and_others_have_none() {
        for (kind, ptr) in [
            ("Pod", ""),
            ("Deployment", "/spec/template"),
            ("StatefulSet", "/spec/template"),
            ("DaemonSet", "/spec/template"),
            ("Job", "/spec/template"),
            ("CronJob", "/spec/jobTemplate/spec/template"),
        ] {
            assert_eq!(
                pod_templates(&json!({ "kind": kind })),
                vec![ptr.to_string()]
            );
        }
        assert!(pod_templates(&json!({ "kind": "Service" })).is_empty());
        let list =
            json!({ "kind": "List", "items": [{ "kind": "Service" }, { "kind": "CronJob" }] });
        assert_eq!(
            pod_templates(&list),
            vec!["/items/1/spec/jobTemplate/spec/template"]
        );
    }
}
