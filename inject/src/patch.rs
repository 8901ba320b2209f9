//! RFC 6902 JSON Patch operations, as the admission response carries them
//! (base64 of the JSON array) and as `weftctl inject` applies them.

use crate::InjectError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub op: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl Op {
    pub fn add(path: String, value: Value) -> Op {
        Op {
            op: "add".into(),
            path,
            value: Some(value),
        }
    }
    pub fn replace(path: String, value: Value) -> Op {
        Op {
            op: "replace".into(),
            path,
            value: Some(value),
        }
    }
    pub fn remove(path: String) -> Op {
        Op {
            op: "remove".into(),
            path,
            value: None,
        }
    }
}

/// Escapes one JSON Pointer token (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Applies `ops` to `doc` with an independent RFC 6902 implementation
/// (the json-patch crate): what the API server would do with them.
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<(), InjectError> {
    let patch: json_patch::Patch = serde_json::to_value(ops)
        .and_then(serde_json::from_value)
        .map_err(|e| InjectError::Malformed(format!("patch: {e}")))?;
    json_patch::patch(doc, &patch).map_err(|e| InjectError::Malformed(format!("patch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops_serialize_as_rfc6902_and_keys_with_slashes_are_escaped() {
        let op = Op::add(
            format!(
                "/metadata/annotations/{}",
                pointer_token("weft.dev/injected")
            ),
            json!("x"),
        );
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "add", "path": "/metadata/annotations/weft.dev~1injected", "value": "x"})
        );
        let mut doc = json!({"metadata": {"annotations": {}}});
        apply(&mut doc, &[op]).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["weft.dev/injected"], "x");
        assert_eq!(
            serde_json::to_value(Op::remove("/a".into())).unwrap(),
            json!({"op": "remove", "path": "/a"})
        );
    }
}
