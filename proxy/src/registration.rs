//! The sidecar registers its workload in the mesh's service registry: once
//! it has a certificate and its first config, it registers the instance
//! (its inbound address, the app's ports, its labels), keeps the lease alive
//! on one heartbeat stream (every TTL/3, and at once when the app's
//! readiness changes), registers again if the control plane lost the lease,
//! and on shutdown deregisters before the drain starts, so callers stop
//! sending before the listeners close.

use crate::app_probe::Readiness;
use crate::snapshot::SnapshotHolder;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weft_mesh_tls::channel::ControlPlane;
use xds_proto::v1::{self as pb, registry_client::RegistryClient};

type Client = RegistryClient<tonic::transport::Channel>;

/// The longest the sidecar waits for the control plane to confirm a
/// deregistration before it drains anyway.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Registration {
    pub url: String,
    pub control_plane: ControlPlane,
    /// namespace, service, instance id, address, sidecar port, labels,
    /// weight; ports are filled in from the config.
    pub instance: pb::Instance,
    /// 0: the control plane's default.
    pub ttl_ms: u32,
    pub snapshot: SnapshotHolder,
}

enum Ended {
    /// The stream broke: reconnect, keep the lease.
    Reconnect,
    /// The control plane no longer knows the lease: register again.
    LeaseLost,
    Shutdown,
}

impl Registration {
    /// Registers and heartbeats until a shutdown is requested, then
    /// deregisters (bounded) and returns.
    pub async fn run(
        self,
        mut readiness: watch::Receiver<Readiness>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut client: Option<Client> = None;
        let mut lease: Option<(String, Duration)> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown_requested(&shutdown) {
                break;
            }
            // Holding a lease, retry within a third of its TTL: a control
            // plane that restarts gives every lease a fresh TTL, and the
            // heartbeat must come back before it runs out.
            let cap = lease
                .as_ref()
                .map(|(_, ttl)| *ttl / 3)
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_millis(100), Duration::from_secs(5));
            let retry = |backoff: &mut Duration| {
                let wait = (*backoff).min(cap);
                *backoff = (*backoff * 2).min(cap);
                wait
            };
            if self.snapshot.load().version.is_empty() {
                // Registered ports come from the first config.
                if wait_or_shutdown(Duration::from_millis(50), &mut shutdown).await {
                    break;
                }
                continue;
            }
            if client.is_none() {
                match self
                    .control_plane
                    .connect(&self.url, Duration::from_secs(5))
                    .await
                {
                    Ok(ch) => client = Some(RegistryClient::new(ch)),
                    Err(e) => {
                        tracing::warn!(error = %e, "registry: cannot reach the control plane");
                        if wait_or_shutdown(retry(&mut backoff), &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some(c) = client.as_mut() else { continue };
            if lease.is_none() {
                let now = readiness.borrow().clone();
                match self.register(c, &now).await {
                    Ok(l) => lease = Some(l),
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), error = %status.message(), "registry: registration refused");
                        metrics::counter!("weft_registry_registration_failures_total").increment(1);
                        if status.code() == tonic::Code::Unavailable {
                            client = None;
                        }
                        if wait_or_shutdown(retry(&mut backoff), &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some((id, ttl)) = lease.clone() else {
                continue;
            };
            match heartbeat(c, &id, ttl, &mut readiness, &mut shutdown).await {
                Ended::Shutdown => break,
                Ended::LeaseLost => {
                    tracing::warn!(lease = %id, "registry: the control plane lost the lease; registering again");
                    lease = None;
                }
                Ended::Reconnect => {
                    client = None;
                    if wait_or_shutdown(retry(&mut backoff), &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
        }
        if let Some((id, _)) = lease {
            self.deregister(client, &id).await;
        }
    }

    async fn register(
        &self,
        c: &mut Client,
        readiness: &Readiness,
    ) -> Result<(String, Duration), tonic::Status> {
        let mut instance = self.instance.clone();
        instance.ports = self
            .snapshot
            .load()
            .app_ports
            .iter()
            .map(|p| pb::InstancePort {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: p.protocol.to_pb() as i32,
            })
            .collect();
        let r = c
            .register(pb::RegisterRequest {
                instance: Some(instance),
                ttl_ms: self.ttl_ms,
                health: readiness.0 as i32,
                health_reason: readiness.1.clone(),
            })
            .await?
            .into_inner();
        tracing::info!(lease = %r.lease_id, ttl_ms = r.ttl_ms, action = %r.action, revision = r.revision, "registry: registered");
        metrics::counter!("weft_registry_registrations_total").increment(1);
        Ok((
            r.lease_id,
            Duration::from_millis(u64::from(r.ttl_ms.max(300))),
        ))
    }

    async fn deregister(&self, client: Option<Client>, lease: &str) {
        let attempt = async {
            let mut c = match client {
                Some(c) => c,
                None => RegistryClient::new(
                    self.control_plane
                        .connect(&self.url, Duration::from_secs(3))
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?,
                ),
            };
            c.deregister(pb::DeregisterRequest {
                lease_id: lease.to_string(),
            })
            .await
        };
        match tokio::time::timeout(DEREGISTER_TIMEOUT, attempt).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                tracing::info!(
                    revision = r.revision,
                    proxies_synced = r.proxies_synced,
                    proxies_pending = r.proxies_pending,
                    "registry: deregistered; draining"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e.message(), "registry: deregistration failed; draining anyway")
            }
            Err(_) => tracing::warn!(
                "registry: no answer to the deregistration within {DEREGISTER_TIMEOUT:?}; draining anyway"
            ),
        }
    }
}

/// One heartbeat stream, until it ends.
async fn heartbeat(
    c: &mut Client,
    lease: &str,
    ttl: Duration,
    readiness: &mut watch::Receiver<Readiness>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let (tx, rx) = mpsc::channel(4);
    let beat = |r: &Readiness| pb::HeartbeatRequest {
        lease_id: lease.to_string(),
        health: r.0 as i32,
        reason: r.1.clone(),
    };
    let first = beat(&readiness.borrow());
    if tx.send(first).await.is_err() {
        return Ended::Reconnect;
    }
    let mut responses = match c.heartbeat(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::warn!(error = %e.message(), "registry: heartbeat stream refused");
            return if e.code() == tonic::Code::NotFound {
                Ended::LeaseLost
            } else {
                Ended::Reconnect
            };
        }
    };
    let mut every = tokio::time::interval(ttl / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {
                let msg = beat(&readiness.borrow());
                if tx.send(msg).await.is_err() {
                    return Ended::Reconnect;
                }
            }
            changed = readiness.changed() => {
                if changed.is_err() {
                    return Ended::Reconnect;
                }
                let r = readiness.borrow_and_update().clone();
                if tx.send(beat(&r)).await.is_err() {
                    return Ended::Reconnect;
                }
            }
            reply = responses.message() => match reply {
                Ok(Some(r)) if !r.known => return Ended::LeaseLost,
                Ok(Some(r)) if !r.error.is_empty() => {
                    tracing::warn!(error = %r.error, "registry: heartbeat refused");
                }
                Ok(Some(_)) => metrics::counter!("weft_registry_heartbeats_total").increment(1),
                Ok(None) => return Ended::Reconnect,
                Err(e) => {
                    tracing::info!(error = %e.message(), "registry: heartbeat stream ended");
                    return Ended::Reconnect;
                }
            },
            _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return Ended::Shutdown,
        }
    }
}

fn shutdown_requested(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// Sleeps `d`; true if a shutdown was requested meanwhile.
async fn wait_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::time::timeout(d, shutdown.wait_for(|s| *s))
        .await
        .is_ok()
}
