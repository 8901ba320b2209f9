//! Metric names and pre-registered handles. Handles are created when a
//! snapshot is built, so recording on the request path is an atomic add, not
//! a label lookup.

use metrics::{Counter, Gauge, Histogram};
use std::time::Duration;

pub const REQUESTS_TOTAL: &str = "weft_requests_total";
pub const REQUEST_DURATION: &str = "weft_request_duration_seconds";
pub const TCP_ACTIVE: &str = "weft_tcp_connections_active";
pub const TCP_BYTES: &str = "weft_tcp_bytes_total";
pub const TCP_CONNECTIONS: &str = "weft_tcp_connections_total";
pub const CONFIG_VERSION: &str = "weft_config_version";
pub const REGISTRY_VERSION: &str = "weft_registry_version";
pub const CONFIG_UPDATES: &str = "weft_config_updates_total";
pub const CONFIG_NACKS: &str = "weft_config_nacks_total";
/// HTTP/1.1 upgrades (WebSocket) spliced after a 101, by how they ended,
/// and the bytes they carried each way.
pub const UPGRADES: &str = "weft_http_upgrades_total";
pub const UPGRADE_BYTES: &str = "weft_http_upgrade_bytes_total";
pub const DETECT_RESULTS: &str = "weft_protocol_detection_total";
/// Outbound requests (HTTP) and connections (TCP) by how they left the
/// sidecar: over mTLS to a peer sidecar, or in plaintext to a workload
/// outside the mesh.
pub const OUTBOUND_SECURITY: &str = "weft_outbound_security_total";

/// Pre-registered counters for `OUTBOUND_SECURITY` of one protocol.
#[derive(Clone)]
pub struct SecurityCounters {
    pub mtls: Counter,
    pub plaintext: Counter,
}

impl SecurityCounters {
    pub fn new(protocol: &'static str) -> Self {
        SecurityCounters {
            mtls: metrics::counter!(OUTBOUND_SECURITY, "protocol" => protocol, "security" => "mtls"),
            plaintext: metrics::counter!(OUTBOUND_SECURITY, "protocol" => protocol, "security" => "plaintext"),
        }
    }

    pub fn record(&self, mtls: bool) {
        if mtls {
            self.mtls.increment(1)
        } else {
            self.plaintext.increment(1)
        }
    }
}

const CLASSES: [&str; 6] = ["error", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request counters (one per status class) and the latency histogram for
/// one (direction, route, service).
#[derive(Clone)]
pub struct RequestMetrics {
    by_class: [Counter; 6],
    duration: Histogram,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestMetrics")
    }
}

impl RequestMetrics {
    pub fn new(direction: &'static str, route: &str, service: &str) -> Self {
        let by_class = CLASSES.map(|class| {
            metrics::counter!(REQUESTS_TOTAL, "direction" => direction, "route" => route.to_string(), "service" => service.to_string(), "status_class" => class)
        });
        let duration = metrics::histogram!(REQUEST_DURATION, "direction" => direction, "route" => route.to_string(), "service" => service.to_string());
        RequestMetrics { by_class, duration }
    }

    /// `status` 0 means no response was sent (connection error).
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.by_class[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// TCP connection metrics for one direction.
#[derive(Clone)]
pub struct TcpMetrics {
    pub active: Gauge,
    pub opened: Counter,
    pub bytes: Counter,
    pub security: SecurityCounters,
}

impl TcpMetrics {
    pub fn new(direction: &'static str) -> Self {
        TcpMetrics {
            active: metrics::gauge!(TCP_ACTIVE, "direction" => direction),
            opened: metrics::counter!(TCP_CONNECTIONS, "direction" => direction),
            bytes: metrics::counter!(TCP_BYTES, "direction" => direction),
            security: SecurityCounters::new("tcp"),
        }
    }
}

/// Plaintext connections to the inbound listener with mTLS on, by result
/// (`accepted` in permissive mode, `refused` in strict mode).
pub const INBOUND_PLAINTEXT: &str = "weft_inbound_plaintext_connections_total";
/// Intercepted traffic to destinations outside the mesh, sent on to its
/// original destination unchanged, by protocol (`http` requests, `tcp`
/// connections).
pub const PASSTHROUGH: &str = "weft_outbound_passthrough_total";

pub fn inbound_plaintext(result: &'static str) {
    metrics::counter!(INBOUND_PLAINTEXT, "result" => result).increment(1);
}

pub fn passthrough(protocol: &'static str) {
    metrics::counter!(PASSTHROUGH, "protocol" => protocol).increment(1);
}

pub fn detection(result: &'static str) {
    metrics::counter!(DETECT_RESULTS, "result" => result).increment(1);
}

/// Records an applied version ("r<config revision>.<registry revision>"):
/// the config revision and the registry revision as gauges.
pub fn counter_config_update(version: &str) {
    metrics::counter!(CONFIG_UPDATES).increment(1);
    let Some(v) = version.strip_prefix('r') else {
        return;
    };
    let (config, registry) = v.split_once('.').unwrap_or((v, ""));
    if let Ok(rev) = config.parse::<u64>() {
        metrics::gauge!(CONFIG_VERSION).set(rev as f64);
    }
    if let Ok(rev) = registry.parse::<u64>() {
        metrics::gauge!(REGISTRY_VERSION).set(rev as f64);
    }
}
