//! The admission.k8s.io/v1 AdmissionReview contract (field names as in
//! k8s.io/api/admission/v1 and apimachinery's GroupVersionKind/Resource),
//! and the injector's answer to one review. The answer always allows the
//! pod: a bad review or a pod that cannot be injected gets a warning and
//! no patch, never a refusal.

use crate::pod::{inject, Outcome, Selection};
use crate::template::Template;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub resource: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_kind: Option<GroupVersionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_resource: Option<GroupVersionResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sub_resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_object: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Base64 of the JSON Patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What became of a review (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Injected,
    Skipped,
    /// The pod could not be injected (a bad annotation, no service name):
    /// admitted unchanged with a warning.
    Refused,
    /// Not an AdmissionReview we understand: admitted with a warning.
    Malformed,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Skipped => "skipped",
            Verdict::Refused => "error",
            Verdict::Malformed => "malformed",
        }
    }
}

/// Answers one review body; never fails.
pub fn review(
    body: &[u8],
    template: &Template,
    selection: Selection,
) -> (AdmissionReview, Verdict, String) {
    let parsed: Result<AdmissionReview, _> = serde_json::from_slice(body);
    let request = match parsed {
        Ok(AdmissionReview {
            api_version,
            kind,
            request: Some(request),
            ..
        }) if api_version == API_VERSION && kind == KIND => request,
        Ok(r) => {
            let uid = r.request.map(|q| q.uid).unwrap_or_default();
            let why = format!(
                "weft injector: expected an {API_VERSION} {KIND} with a request, got {} {}",
                r.api_version, r.kind
            );
            return (
                answer(uid, None, vec![why.clone()]),
                Verdict::Malformed,
                why,
            );
        }
        Err(e) => {
            // Echo the uid when the body has one, so the API server can
            // match the answer.
            let uid = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.pointer("/request/uid")?.as_str().map(str::to_string))
                .unwrap_or_default();
            let why = format!("weft injector: malformed AdmissionReview: {e}");
            return (
                answer(uid, None, vec![why.clone()]),
                Verdict::Malformed,
                why,
            );
        }
    };
    let uid = request.uid.clone();
    if request.kind.kind != "Pod" || request.resource.resource != "pods" {
        let why = format!(
            "weft injector: only pods are injected, not {}",
            request.resource.resource
        );
        return (
            answer(uid, None, vec![why.clone()]),
            Verdict::Malformed,
            why,
        );
    }
    if request.operation != "CREATE" || request.sub_resource.is_some() {
        let why = format!("{} is not a pod creation", request.operation);
        return (answer(uid, None, Vec::new()), Verdict::Skipped, why);
    }
    let Some(pod) = request.object.as_ref().filter(|o| o.is_object()) else {
        let why = "weft injector: the review carries no pod object".to_string();
        return (
            answer(uid, None, vec![why.clone()]),
            Verdict::Malformed,
            why,
        );
    };
    let namespace = request
        .namespace
        .as_deref()
        .or_else(|| crate::workload::namespace(pod))
        .unwrap_or("default");
    match inject(template, pod, "", namespace, selection) {
        Ok(Outcome::Injected { patch, warnings }) => match serde_json::to_vec(&patch) {
            Ok(json) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(json);
                let why = format!("{} ops", patch.len());
                (answer(uid, Some(encoded), warnings), Verdict::Injected, why)
            }
            Err(e) => {
                let why = format!("weft injector: cannot encode the patch: {e}");
                (answer(uid, None, vec![why.clone()]), Verdict::Refused, why)
            }
        },
        Ok(Outcome::Skipped(why)) => (answer(uid, None, Vec::new()), Verdict::Skipped, why),
        Err(e) => {
            let why = format!("weft injector: pod not injected: {e}");
            (answer(uid, None, vec![why.clone()]), Verdict::Refused, why)
        }
    }
}

/// An allowing answer with an optional base64 JSON Patch.
fn answer(uid: String, patch: Option<String>, warnings: Vec<String>) -> AdmissionReview {
    let patch_type = patch.as_ref().map(|_| "JSONPatch".to_string());
    AdmissionReview {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        request: None,
        response: Some(AdmissionResponse {
            uid,
            allowed: true,
            patch,
            patch_type,
            warnings,
            ..Default::default()
        }),
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
