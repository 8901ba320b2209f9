//! The app probes a Kubernetes pod's kubelet would have run, handed to its
//! sidecar by the injector (env `WEFT_APP_PROBES`, JSON): the kubelet probes
//! the sidecar's `/app-health/<container>/<livez|readyz|startupz>` instead,
//! and the sidecar runs the original probe against the app over loopback.
//! A kubelet probe is plaintext; in strict mTLS the inbound side would
//! refuse it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Env var that carries [`AppProbes`] as JSON.
pub const ENV: &str = "WEFT_APP_PROBES";
/// Path prefix the rewritten probes use.
pub const PATH_PREFIX: &str = "/app-health/";

/// Probe path (`/app-health/app/readyz`) → the original probe.
pub type AppProbes = BTreeMap<String, AppProbe>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AppProbe {
    /// HTTP GET (2xx and 3xx pass, as the kubelet judges); over TLS
    /// without verifying the app's certificate when `https` (as the
    /// kubelet does).
    Http {
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        https: bool,
        /// The Host header, when the probe set one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    /// A TCP connect.
    Tcp { port: u16 },
    /// grpc.health.v1 Check; SERVING passes.
    Grpc {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
}

/// The probe path for a container's probe kind (`livez`, `readyz`,
/// `startupz`).
pub fn path(container: &str, kind: &str) -> String {
    format!("{PATH_PREFIX}{container}/{kind}")
}
