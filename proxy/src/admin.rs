//! Admin endpoints on 127.0.0.1:15000: /ready (200 once the first config is
//! applied, 503 while draining), /live, /config_dump, /clusters, POST /drain.

use crate::drain::Drain;
use crate::snapshot::SnapshotHolder;
use crate::xds_client::XdsStatus;
use hyper::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use weft_telemetry::{self as telemetry, AdminRequest, Body};
use xds_proto::v1 as pb;

pub struct Admin {
    pub snapshot: SnapshotHolder,
    pub drain: Drain,
    pub xds: Arc<XdsStatus>,
    pub node: pb::Node,
}

impl Admin {
    pub fn handle(&self, req: AdminRequest) -> hyper::Response<Body> {
        match (req.method.clone(), req.path.as_str()) {
            (_, "/live") => telemetry::text(StatusCode::OK, "live\n"),
            (_, "/ready") => {
                if self.drain.is_draining() {
                    telemetry::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
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
                    for e in &c.endpoints {
                        out.push_str(
                            &format!("{} {} {:?}\n", c.name, e, c.protocol).to_lowercase(),
                        );
                    }
                }
                telemetry::text(StatusCode::OK, out)
            }
            (Method::POST, "/drain") => {
                self.drain.start();
                telemetry::text(
                    StatusCode::ACCEPTED,
                    "draining: no new connections; exiting when in-flight requests finish\n",
                )
            }
            (_, "/drain") => telemetry::text(StatusCode::METHOD_NOT_ALLOWED, "use POST /drain\n"),
            _ => telemetry::text(
                StatusCode::NOT_FOUND,
                "not found: /ready /live /config_dump /clusters /drain\n",
            ),
        }
    }
}
