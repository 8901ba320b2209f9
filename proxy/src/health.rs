//! Active health checks: for every cluster whose Policy asks for them, each
//! endpoint is checked on an interval (HTTP GET with an expected status,
//! the gRPC health protocol, or a bare connect — a TLS handshake to an
//! endpoint behind a sidecar). `unhealthy_threshold` failures in a row take
//! a host out of rotation, `healthy_threshold` successes bring it back; the
//! verdict lives on the host's shared state, which the balancers read.
//!
//! One supervisor follows the snapshot and keeps one task per checked
//! cluster, restarting it when the cluster's check config changes.

use crate::cluster::Cluster;
use crate::http::body::RequestBody;
use crate::http::upstream::{ConnectTarget, Upstreams, DEFAULT_CONNECT_TIMEOUT};
use crate::mtls::{Alpn, MeshTls};
use crate::snapshot::SnapshotHolder;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use xds_proto::health::v1::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use xds_proto::v1::{self as pb, health_check::Check};

pub const FAILURES_TOTAL: &str = "weft_health_check_failures_total";
pub const HEALTHY: &str = "weft_endpoint_healthy";

/// How often the supervisor looks for config changes.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// Runs the supervisor until the process exits.
pub async fn run(snapshot: SnapshotHolder, tls: Option<Arc<MeshTls>>) {
    let upstreams = Upstreams::new(tls.clone());
    let mut tasks: HashMap<String, (pb::HealthCheck, JoinHandle<()>)> = HashMap::new();
    let mut seen_version = String::from("\0");
    loop {
        let snap = snapshot.load_full();
        if snap.version != seen_version {
            seen_version = snap.version.clone();
            let wanted: HashMap<&String, &pb::HealthCheck> = snap
                .clusters
                .iter()
                .filter_map(|(name, c)| c.health_check.as_ref().map(|h| (name, h)))
                .collect();
            tasks.retain(|name, (cfg, handle)| {
                let keep = wanted.get(name).is_some_and(|w| *w == cfg);
                if !keep {
                    handle.abort();
                }
                keep
            });
            for (name, cfg) in wanted {
                if !tasks.contains_key(name) {
                    let handle = tokio::spawn(check_cluster(
                        name.clone(),
                        cfg.clone(),
                        snapshot.clone(),
                        upstreams.clone(),
                        tls.clone(),
                    ));
                    tasks.insert(name.clone(), (cfg.clone(), handle));
                }
            }
        }
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}

/// Checks every endpoint of one cluster each interval, against the cluster
/// as it is in the current snapshot (endpoints come and go).
async fn check_cluster(
    name: String,
    cfg: pb::HealthCheck,
    snapshot: SnapshotHolder,
    upstreams: Upstreams,
    tls: Option<Arc<MeshTls>>,
) {
    let interval = Duration::from_millis(cfg.interval_ms.max(10));
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    let failures = metrics::counter!(FAILURES_TOTAL, "cluster" => name.clone());
    tracing::info!(cluster = %name, ?interval, "health checks started");
    loop {
        let Some(cluster) = snapshot.load().cluster(&name).cloned() else {
            return;
        };
        let checks = cluster.hosts.iter().map(|host| {
            let upstreams = &upstreams;
            let tls = tls.as_deref();
            let cfg = &cfg;
            let cluster = &cluster;
            async move {
                let ok = tokio::time::timeout(timeout, probe(cfg, cluster, host, upstreams, tls))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                (host, ok)
            }
        });
        for (host, result) in futures::future::join_all(checks).await {
            if let Err(e) = &result {
                failures.increment(1);
                tracing::debug!(cluster = %name, host = %host.addr, error = %e, "health check failed");
            }
            record(&cluster, host, &cfg, result.is_ok());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Applies one check result with the thresholds; a change of verdict moves
/// the cluster's unhealthy count and the host's gauge.
fn record(cluster: &Cluster, host: &crate::host::Host, cfg: &pb::HealthCheck, ok: bool) {
    let s = &host.state;
    let healthy = s.is_healthy();
    if ok == healthy {
        s.health_streak.store(0, Ordering::Relaxed);
        return;
    }
    let streak = s.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let threshold = if healthy {
        cfg.unhealthy_threshold.max(1)
    } else {
        cfg.healthy_threshold.max(1)
    };
    if streak < threshold {
        return;
    }
    s.health_streak.store(0, Ordering::Relaxed);
    s.healthy.store(ok, Ordering::Relaxed);
    if ok {
        cluster.runtime.unhealthy.fetch_sub(1, Ordering::Relaxed);
    } else {
        cluster.runtime.unhealthy.fetch_add(1, Ordering::Relaxed);
    }
    metrics::gauge!(HEALTHY, "cluster" => cluster.name.clone(), "host" => host.addr.to_string())
        .set(if ok { 1.0 } else { 0.0 });
    tracing::info!(cluster = %cluster.name, host = %host.addr, healthy = ok, "endpoint health changed");
}

async fn probe(
    cfg: &pb::HealthCheck,
    cluster: &Arc<Cluster>,
    host: &crate::host::Host,
    upstreams: &Upstreams,
    tls: Option<&MeshTls>,
) -> Result<(), String> {
    let meshed = host.identity.is_some() && upstreams.has_mesh();
    match &cfg.check {
        Some(Check::Http(h)) => {
            let h2 = meshed || cluster.protocol.is_h2();
            let req = request(
                cluster,
                host,
                meshed,
                h2,
                "GET",
                &h.path,
                RequestBody::empty(),
                None,
            )?;
            let resp = upstreams
                .send(req, ConnectTarget::endpoint(cluster, host), meshed, h2)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            let ok = if h.expected_status == 0 {
                (200..300).contains(&status)
            } else {
                u32::from(status) == h.expected_status
            };
            ok.then_some(()).ok_or_else(|| format!("status {status}"))
        }
        Some(Check::Grpc(g)) => {
            let req = request(
                cluster,
                host,
                meshed,
                true,
                "POST",
                GRPC_CHECK_PATH,
                RequestBody::Full(Some(grpc_check_body(&g.service))),
                Some("application/grpc"),
            )?;
            let resp = upstreams
                .send(req, ConnectTarget::endpoint(cluster, host), meshed, true)
                .await
                .map_err(|e| e.to_string())?;
            grpc_check_verdict(resp).await
        }
        Some(Check::Tcp(_)) | None => {
            let connect = cluster.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            match (meshed, tls, &host.identity) {
                (true, Some(tls), Some(id)) => tls
                    .connect(host.addr, id, Alpn::Tcp, connect)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                _ => tokio::net::TcpStream::connect(host.addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            }
        }
    }
}

/// grpc.health.v1 Check: the method path, the framed request body, and
/// the verdict on the response (SERVING passes). Shared with the kubelet
/// probes the sidecar runs for the app (`app_probe`).
pub const GRPC_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

pub fn grpc_check_body(service: &str) -> Bytes {
    let msg = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

pub async fn grpc_check_verdict<B>(resp: http::Response<B>) -> Result<(), String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    let header_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match header_status.or(trailer_status).as_deref() {
        Some("0") => {}
        other => return Err(format!("grpc-status {other:?}")),
    }
    let mut body: Bytes = collected.to_bytes();
    if body.len() < 5 {
        return Err("empty health response".into());
    }
    body.advance(5);
    let reply = HealthCheckResponse::decode(body).map_err(|e| e.to_string())?;
    (reply.status == ServingStatus::Serving as i32)
        .then_some(())
        .ok_or_else(|| format!("serving status {}", reply.status))
}

#[allow(clippy::too_many_arguments)]
fn request(
    cluster: &Cluster,
    host: &crate::host::Host,
    meshed: bool,
    h2: bool,
    method: &str,
    path: &str,
    body: RequestBody,
    content_type: Option<&'static str>,
) -> Result<http::Request<RequestBody>, String> {
    let scheme = if meshed { "https" } else { "http" };
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{scheme}://{}{path}", host.authority))
        .version(if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        })
        .header(http::header::USER_AGENT, "weft-health-check")
        .header("x-weft-health-check", cluster.name.as_str());
    if !h2 {
        b = b.header(http::header::HOST, cluster.service.as_str());
    }
    if let Some(ct) = content_type {
        b = b
            .header(http::header::CONTENT_TYPE, ct)
            .header("te", "trailers");
    }
    b.body(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::type_url;
    use xds_proto::v1::resource::Kind as RKind;

    fn cluster() -> Arc<Cluster> {
        let resources = vec![
            pb::Resource {
                name: "c".into(),
                type_url: type_url::CLUSTER.into(),
                kind: Some(RKind::Cluster(Box::new(pb::Cluster {
                    name: "c".into(),
                    service: "s".into(),
                    namespace: "n".into(),
                    port: 80,
                    protocol: pb::Protocol::Http as i32,
                    ..Default::default()
                }))),
            },
            pb::Resource {
                name: "c".into(),
                type_url: type_url::ENDPOINTS.into(),
                kind: Some(RKind::Endpoints(pb::Endpoints {
                    cluster: "c".into(),
                    endpoints: vec![pb::Endpoint {
                        address: "10.0.0.1".into(),
                        port: 80,
                        ..Default::default()
                    }],
                })),
            },
        ];
        crate::snapshot::Snapshot::from_resources("r1", resources)
            .expect("valid snapshot")
            .clusters["c"]
            .clone()
    }

    #[test]
    fn thresholds_decide_when_a_host_leaves_and_returns() {
        let c = cluster();
        let h = &c.hosts[0];
        let cfg = pb::HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..Default::default()
        };
        record(&c, h, &cfg, false);
        record(&c, h, &cfg, false);
        record(&c, h, &cfg, true);
        record(&c, h, &cfg, false);
        record(&c, h, &cfg, false);
        assert!(h.state.is_healthy(), "a success resets the failure streak");
        record(&c, h, &cfg, false);
        assert!(!h.state.is_healthy());
        assert_eq!(c.unavailable(), 1);
        record(&c, h, &cfg, true);
        assert!(!h.state.is_healthy());
        record(&c, h, &cfg, true);
        assert!(h.state.is_healthy());
        assert_eq!(c.unavailable(), 0);
    }
}
