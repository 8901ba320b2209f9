//! Admin endpoints on 127.0.0.1:15000: /ready (200 once the first config is
//! applied, 503 while draining), /live, /config_dump, /clusters, POST /drain.
//! The metrics port (the pod IP in Kubernetes) serves the read-only part
//! the kubelet needs: /metrics, /ready, /live and the app probes the
//! injector moved there (`/app-health/<container>/<kind>`).

use crate::drain::Drain;
use crate::identity::WorkloadIdentity;
use crate::snapshot::SnapshotHolder;
use crate::xds_client::XdsStatus;
use hyper::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use weft_telemetry::{self as telemetry, AdminRequest, Body};
use xds_proto::app_probe::{self, AppProbes};
use xds_proto::v1 as pb;

pub struct Admin {
    pub snapshot: SnapshotHolder,
    pub drain: Drain,
    pub xds: Arc<XdsStatus>,
    pub node: pb::Node,
    /// None with --insecure-dev.
    pub identity: Option<Arc<WorkloadIdentity>>,
}

impl Admin {
    pub fn handle(&self, req: AdminRequest) -> hyper::Response<Body> {
        match (req.method.clone(), req.path.as_str()) {
            (_, "/live") => telemetry::text(StatusCode::OK, "live\n"),
            (_, "/ready") => {
                if self.drain.is_draining() {
                    telemetry::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.drain.is_requested() {
                    telemetry::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shutting down: deregistering before the drain\n",
                    )
                } else if self.identity.as_ref().is_some_and(|i| !i.has_certificate()) {
                    telemetry::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for a workload certificate from the control plane\n",
                    )
                } else if self.snapshot.load().version.is_empty() {
                    telemetry::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for first config from the control plane\n",
                    )
                } else {
                    telemetry::text(StatusCode::OK, "ready\n")
                }
            }
            (Method::GET, "/config_dump") => {
                let snap = self.snapshot.load_full();
                let dump = serde_json::json!({
                    "version": snap.version,
                    "node": {
                        "name": self.node.name,
                        "namespace": self.node.namespace,
                        "service": self.node.service,
                        "labels": self.node.labels,
                    },
                    "control_plane": {
                        "connected": self.xds.connected.load(Ordering::Relaxed),
                        "last_nack": self.xds.last_nack.lock().ok().and_then(|n| n.clone()),
                    },
                    "snapshot": &*snap,
                });
                telemetry::json(StatusCode::OK, format!("{dump:#}\n"))
            }
            (Method::GET, "/clusters") => {
                let snap = self.snapshot.load_full();
                let mut out = String::new();
                for c in snap.clusters.values() {
                    for h in &c.hosts {
                        out.push_str(
                            &format!("{} {} {:?}\n", c.name, h.addr, c.protocol).to_lowercase(),
                        );
                    }
                }
                telemetry::text(StatusCode::OK, out)
            }
            (Method::GET, "/certs") => self.certs(),
            (Method::POST, "/drain") => {
                self.drain.request();
                telemetry::text(
                    StatusCode::ACCEPTED,
                    "draining: deregistering, then no new connections; exiting when in-flight requests finish\n",
                )
            }
            (_, "/drain") => telemetry::text(StatusCode::METHOD_NOT_ALLOWED, "use POST /drain\n"),
            _ => telemetry::text(
                StatusCode::NOT_FOUND,
                "not found: /ready /live /config_dump /clusters /certs /drain\n",
            ),
        }
    }
}

/// The metrics port's endpoints.
pub struct MetricsPort {
    pub admin: Arc<Admin>,
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// The app's kubelet probes (env WEFT_APP_PROBES).
    pub app_probes: Arc<AppProbes>,
}

/// How long an app probe may take; the kubelet's own timeout is usually
/// shorter and decides first.
const APP_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl MetricsPort {
    pub async fn handle(self: Arc<Self>, req: AdminRequest) -> hyper::Response<Body> {
        match req.path.as_str() {
            "/metrics" => telemetry::text(StatusCode::OK, self.prometheus.render()),
            "/ready" | "/live" => self.admin.handle(req),
            path if path.starts_with(app_probe::PATH_PREFIX) => {
                let Some(probe) = self.app_probes.get(path) else {
                    return telemetry::text(
                        StatusCode::NOT_FOUND,
                        format!("no app probe {path}: the pod's WEFT_APP_PROBES has none\n"),
                    );
                };
                match crate::app_probe::kubelet_probe(probe, APP_PROBE_TIMEOUT).await {
                    Ok(()) => {
                        metrics::counter!(APP_PROBES_TOTAL, "result" => "pass").increment(1);
                        telemetry::text(StatusCode::OK, "ok\n")
                    }
                    Err(e) => {
                        metrics::counter!(APP_PROBES_TOTAL, "result" => "fail").increment(1);
                        tracing::debug!(path, error = %e, "app probe failed");
                        telemetry::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
                    }
                }
            }
            _ => telemetry::text(
                StatusCode::NOT_FOUND,
                "not found: /metrics /ready /live /app-health/<container>/<livez|readyz|startupz>\n",
            ),
        }
    }
}

/// Kubelet probes the sidecar ran for the app, by result.
pub const APP_PROBES_TOTAL: &str = "weft_app_probes_total";

impl Admin {
    /// Identity, serial, validity, time to renewal and trust bundle
    /// fingerprints, read from the certificates themselves.
    fn certs(&self) -> hyper::Response<Body> {
        let Some(identity) = &self.identity else {
            return telemetry::json(
                StatusCode::OK,
                "{\"mtls\": false, \"reason\": \"--insecure-dev\"}\n".to_string(),
            );
        };
        let unix = xds_proto::units::unix_secs;
        let now = unix(std::time::SystemTime::now());
        let chain: Vec<serde_json::Value> = identity
            .cert
            .get()
            .map(|ck| {
                ck.cert
                    .iter()
                    .filter_map(|c| weft_mesh_tls::svid::inspect(c).ok())
                    .map(|i| {
                        serde_json::json!({
                            "subject": i.subject,
                            "issuer": i.issuer,
                            "spiffe_id": i.spiffe_id,
                            "serial": i.serial,
                            "not_before_unix": unix(i.not_before),
                            "not_after_unix": unix(i.not_after),
                            "is_ca": i.is_ca,
                            "sha256": i.fingerprint_sha256,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let st = identity.status();
        let body = serde_json::json!({
            "mtls": true,
            "identity": identity.id.to_string(),
            "serial": st.serial,
            "not_after_unix": st.not_after_unix,
            "expires_in_seconds": st.not_after_unix - now,
            "renew_in_seconds": (st.renew_at_unix - now).max(0),
            "renewals": st.renewals,
            "chain": chain,
            "trust_bundle_sha256": identity.bundle.fingerprints(),
        });
        telemetry::json(StatusCode::OK, format!("{body:#}\n"))
    }
}
