//! Sidecar injection for Kubernetes: from a pod (or a workload's pod
//! template) to the RFC 6902 JSON Patch that adds the Weft sidecar, the
//! interception init container, the identity token volume and the probe
//! rewrites. The admission webhook in `weft-control` returns the patch;
//! `weftctl inject` applies the same patch offline; `uninject` reverses it.
#![forbid(unsafe_code)]

pub mod admission;
pub mod annotations;
pub mod manifest;
pub mod patch;
pub mod pod;
pub mod probes;
pub mod quantity;
pub mod template;
pub mod workload;

pub use annotations::Overrides;
pub use patch::Op;
pub use pod::{inject, uninject, Outcome, Selection};
pub use template::Template;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("injection template: {0}")]
    Template(String),
    #[error("annotation {key}: \"{value}\": {reason}")]
    Annotation {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Malformed(String),
    #[error("document {index}: {reason}")]
    Document { index: usize, reason: String },
}
