//! `weft.v1.Registry` over gRPC: field checks (`validate`), who may do what
//! (`caller`), then the registry. Refusals are gRPC statuses that name the
//! field, the identity and the service.

use super::{validate, Registry, RegistryError};
use crate::caller;
use crate::config::kinds::ServiceSpec;
use crate::proxy_status::ProxyRegistry;
use crate::state::ConfigState;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1::{self as pb, registry_server};

pub struct RegistryService {
    registry: Arc<Registry>,
    config: Arc<ConfigState>,
    proxies: Arc<ProxyRegistry>,
    trust_domain: String,
}

impl RegistryService {
    pub fn new(
        registry: Arc<Registry>,
        config: Arc<ConfigState>,
        proxies: Arc<ProxyRegistry>,
        trust_domain: String,
    ) -> Self {
        RegistryService {
            registry,
            config,
            proxies,
            trust_domain,
        }
    }

    /// Whose lease a call may touch: None for the admin identity (and a
    /// plaintext --insecure-dev caller), who may touch any.
    fn lease_caller(&self, peer: Option<&SpiffeId>) -> Option<String> {
        let admin = caller::admin_identity(&self.trust_domain);
        peer.filter(|p| **p != admin).map(|p| p.to_string())
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        let msg = e.to_string();
        match e {
            RegistryError::UnknownLease(_) => Status::not_found(msg),
            RegistryError::NotYours { .. } => Status::permission_denied(msg),
            RegistryError::Duplicate { .. } => Status::already_exists(msg),
            RegistryError::Full(_) => Status::resource_exhausted(msg),
            RegistryError::NotStored(..) | RegistryError::Store(_) => Status::unavailable(msg),
            RegistryError::Contended(_) => Status::aborted(msg),
        }
    }
}

fn health_of(h: i32, reason: &str) -> Option<(pb::Health, String)> {
    match pb::Health::try_from(h) {
        Ok(pb::Health::Unspecified) | Err(_) => None,
        Ok(h) => Some((h, reason.to_string())),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = caller::peer_of(&request);
        let req = request.into_inner();
        let ttl = validate::check_registration(&req, self.registry.settings())?;
        let Some(instance) = req.instance else {
            return Err(Status::invalid_argument("instance: is required"));
        };
        let config = self.config.current();
        let spec: &ServiceSpec = config
            .service(&instance.namespace, &instance.service)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "instance.service: service \"{}\" is not defined in namespace \"{}\"; apply a Service object for it first",
                    instance.service, instance.namespace
                ))
            })?;
        caller::authorize_service(
            "registry",
            peer.as_ref(),
            &self.trust_domain,
            &instance.namespace,
            &instance.service,
            spec.service_account_or(&instance.service),
        )?;
        let owner = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "(unauthenticated --insecure-dev caller)".into());
        let health = health_of(req.health, &req.health_reason)
            .unwrap_or((pb::Health::Passing, String::new()));
        tracing::info!(namespace = %instance.namespace, service = %instance.service, instance = %instance.instance_id, address = %instance.address, %owner, "registry: register");
        let r = self
            .registry
            .register(instance, ttl, health, &owner)
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            lease_id: r.lease_id,
            ttl_ms: r.ttl.as_millis() as u32,
            revision: r.revision,
            action: r.action.to_string(),
        }))
    }

    type HeartbeatStream = BoxStream<pb::HeartbeatResponse>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let caller = self.lease_caller(caller::peer_of(&request).as_ref());
        let mut inbound = request.into_inner();
        let registry = self.registry.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(hb)) = inbound.next().await {
                let reply = match validate::check_health(hb.health, &hb.reason, "health") {
                    Err(e) => Err(e),
                    Ok(()) => Ok(registry.heartbeat(
                        &hb.lease_id,
                        health_of(hb.health, &hb.reason),
                        caller.as_deref(),
                    )),
                };
                let reply = match reply {
                    Err(status) => Err(status),
                    Ok(Ok((ttl, revision))) => Ok(pb::HeartbeatResponse {
                        lease_id: hb.lease_id,
                        known: true,
                        ttl_ms: ttl.as_millis() as u32,
                        revision,
                        error: String::new(),
                    }),
                    Ok(Err(e @ RegistryError::UnknownLease(_))) => Ok(pb::HeartbeatResponse {
                        lease_id: hb.lease_id,
                        known: false,
                        error: e.to_string(),
                        ..Default::default()
                    }),
                    Ok(Err(e)) => Ok(pb::HeartbeatResponse {
                        lease_id: hb.lease_id,
                        known: true,
                        error: e.to_string(),
                        ..Default::default()
                    }),
                };
                // A bad message ends the stream with its status.
                let end = reply.is_err();
                if tx.send(reply).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let caller = self.lease_caller(caller::peer_of(&request).as_ref());
        let lease = request.into_inner().lease_id;
        let revision = self.registry.deregister(&lease, caller.as_deref()).await?;
        // Callers must stop sending before the workload goes: answer once
        // the connected proxies have applied the removal (bounded).
        let deadline = Instant::now() + self.registry.settings().deregister_wait;
        let (synced, pending) = loop {
            let acked = self.proxies.acked();
            let (synced, pending) = self.proxies.registry_sync(revision);
            if pending == 0 || Instant::now() >= deadline {
                break (synced, pending);
            }
            let _ = tokio::time::timeout_at(deadline.into(), acked).await;
        };
        tracing::info!(lease, revision, synced, pending, "registry: deregistered");
        Ok(Response::new(pb::DeregisterResponse {
            revision,
            proxies_synced: synced as u32,
            proxies_pending: pending as u32,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let r = request.into_inner();
        let (instances, revision) = self.registry.list(&r.namespace, &r.service, &r.labels);
        Ok(Response::new(pb::ListInstancesResponse {
            instances,
            revision,
        }))
    }

    type WatchStream = BoxStream<pb::WatchInstancesResponse>;

    async fn watch(
        &self,
        request: Request<pb::WatchInstancesRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(super::watch::run(
            self.registry.clone(),
            r.namespace,
            r.service,
            r.from_revision,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let r = request.into_inner();
        let config = self.config.current();
        let spec = config.service(&r.namespace, &r.service).ok_or_else(|| {
            Status::not_found(format!(
                "service \"{}\" is not defined in namespace \"{}\"",
                r.service, r.namespace
            ))
        })?;
        let default_port = spec.ports.first().map(|p| p.port as u32).unwrap_or(0);
        let mut endpoints: Vec<pb::EndpointStatus> = spec
            .endpoints
            .iter()
            .map(|e| pb::EndpointStatus {
                address: e.address.clone(),
                port: e.port.map(|p| p as u32).unwrap_or(default_port),
                source: "static".into(),
                health: pb::Health::Passing as i32,
                labels: e.labels.clone().into_iter().collect(),
                weight: e.weight.unwrap_or(1),
                sidecar: e.sidecar.unwrap_or(true),
                ..Default::default()
            })
            .collect();
        let (instances, revision) =
            self.registry
                .list(&r.namespace, &r.service, &Default::default());
        endpoints.extend(instances.into_iter().map(|i| pb::EndpointStatus {
            port: if i.sidecar_port != 0 && !i.intercepted {
                i.sidecar_port
            } else {
                i.ports.first().map(|p| p.port).unwrap_or(0)
            },
            address: i.address,
            source: "registry".into(),
            health: i.health,
            health_reason: i.health_reason,
            labels: i.labels,
            weight: i.weight.max(1),
            since_unix_ms: i.registered_unix_ms,
            instance_id: i.instance_id,
            sidecar: i.sidecar_port != 0,
        }));
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints,
            revision,
        }))
    }
}
