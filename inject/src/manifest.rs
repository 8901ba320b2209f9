//! `weftctl inject` / `uninject` on YAML manifests: every document of a
//! multi-document stream, each workload's pod templates patched with the
//! same patch the webhook returns; other objects pass through.

use crate::patch::apply;
use crate::pod::{inject, uninject, Outcome, Selection};
use crate::template::Template;
use crate::{workload, InjectError};
use serde::Deserialize;
use serde_json::Value;

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `Deployment/web`, `List/…` items included.
    pub object: String,
    pub result: String,
    pub warnings: Vec<String>,
}

pub enum Direction<'a> {
    /// Inject, treating objects without a namespace as in `namespace`.
    Inject {
        template: &'a Template,
        namespace: &'a str,
    },
    Uninject,
}

/// Transforms every document of `text`; returns the YAML stream and what
/// happened to each pod template. An error names the document (1-based).
pub fn transform(
    text: &str,
    direction: &Direction<'_>,
) -> Result<(String, Vec<Report>), InjectError> {
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let doc_err = |reason: String| InjectError::Document { index, reason };
        let mut doc = Value::deserialize(de).map_err(|e| doc_err(e.to_string()))?;
        if doc.is_null() {
            continue;
        }
        if !doc.is_object() {
            return Err(doc_err("not a Kubernetes object (a YAML mapping)".into()));
        }
        let name = workload::describe(&doc);
        for base in workload::pod_templates(&doc) {
            let (patch, result, warnings) = match direction {
                Direction::Inject {
                    template,
                    namespace,
                } => {
                    let ns = workload::namespace(owner(&doc, &base))
                        .unwrap_or(namespace)
                        .to_string();
                    match inject(template, &doc, &base, &ns, Selection::Namespace)
                        .map_err(|e| doc_err(format!("{name}: {e}")))?
                    {
                        Outcome::Injected { patch, warnings } => {
                            (patch, "injected".to_string(), warnings)
                        }
                        Outcome::Skipped(why) => {
                            (Vec::new(), format!("skipped: {why}"), Vec::new())
                        }
                    }
                }
                Direction::Uninject => {
                    match uninject(&doc, &base).map_err(|e| doc_err(format!("{name}: {e}")))? {
                        Some(patch) => (patch, "uninjected".to_string(), Vec::new()),
                        None => (Vec::new(), "not injected".to_string(), Vec::new()),
                    }
                }
            };
            apply(&mut doc, &patch).map_err(|e| doc_err(format!("{name}: {e}")))?;
            reports.push(Report {
                object: if base.starts_with("/items/") {
                    format!("{name} item {}", workload::describe(owner(&doc, &base)))
                } else {
                    name.clone()
                },
                result,
                warnings,
            });
        }
        out.push(serde_yaml_ng::to_string(&doc).map_err(|e| doc_err(e.to_string()))?);
    }
    Ok((out.join("---\n"), reports))
}

/// The object that owns the pod template at `base`: a `List`'s item, or
/// the document itself.
fn owner<'a>(doc: &'a Value, base: &str) -> &'a Value {
    let mut parts = base.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(""), Some("items"), Some(i)) => doc.pointer(&format!("/items/{i}")).unwrap_or(doc),
        _ => doc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            ca_bundle: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
            ..Template::default()
        }
    }

    const STREAM: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
";

    #[test]
    fn a_stream_keeps_its_other_objects_and_injects_then_uninjects_its_workloads() {
        let t = template();
        let dir = Direction::Inject {
            template: &t,
            namespace: "default",
        };
        let (out, reports) = transform(STREAM, &dir).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].object, "Deployment/web");
        assert_eq!(reports[0].result, "injected");
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "{out}");
        assert_eq!(docs[0]["kind"], "Service");
        let inits = docs[1]
            .pointer("/spec/template/spec/initContainers")
            .and_then(Value::as_array)
            .unwrap();
        assert_eq!(inits[1]["name"], "weft-proxy");
        // Injecting twice changes nothing.
        let (again, reports) = transform(&out, &dir).unwrap();
        assert_eq!(again, out);
        assert!(
            reports[0].result.contains("already injected"),
            "{reports:?}"
        );
        // Uninject restores the original objects.
        let (back, _) = transform(&out, &Direction::Uninject).unwrap();
        let original: Vec<Value> = serde_yaml_ng::Deserializer::from_str(STREAM)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        let restored: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&back)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(restored, original);
    }

    #[test]
    fn a_lists_items_are_injected_by_their_own_namespace() {
        let t = template();
        let dir = Direction::Inject {
            template: &t,
            namespace: "default",
        };
        let list = "\
kind: List
items:
- {kind: Pod, metadata: {name: p, namespace: kube-system, labels: {app: p}}, spec: {containers: [{name: p, image: p}]}}
- {kind: Deployment, metadata: {name: d}, spec: {template: {metadata: {labels: {app: d}}, spec: {containers: [{name: d, image: d}]}}}}
";
        let (_, reports) = transform(list, &dir).unwrap();
        assert_eq!(reports[0].object, "List/(unnamed) item Pod/p");
        assert!(reports[0].result.contains("kube-system"), "{reports:?}");
        assert_eq!(reports[1].object, "List/(unnamed) item Deployment/d");
        assert_eq!(reports[1].result, "injected");
    }

    #[test]
    fn a_broken_document_is_named_by_its_position() {
        let t = template();
        let dir = Direction::Inject {
            template: &t,
            namespace: "default",
        };
        let e = transform("kind: Service\n---\n[1, 2\n", &dir)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("document 2"), "{e}");
        let e = transform("kind: Pod\nmetadata: {name: p}\n", &dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document 1") && e.contains("Pod/p") && e.contains("spec"),
            "{e}"
        );
    }
}
