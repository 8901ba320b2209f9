//! The discovery stream server: one bidirectional stream per proxy. It sends
//! the full state on connect, then an incremental push (changed resources and
//! removed names) for every published revision, and records each proxy's
//! ACK / NACK so operators can see who is SYNCED, STALE or NACKED.

use crate::caller;
use crate::compile::{self, ResourceSet};
use crate::proxy_status::ProxyRegistry;
use crate::publish::Published;
use crate::trust::MeshTrust;
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::v1::{self as pb, discovery_server::Discovery};

pub struct DiscoveryService {
    published: watch::Receiver<Arc<Published>>,
    registry: Arc<ProxyRegistry>,
    trust: watch::Receiver<Arc<MeshTrust>>,
}

impl DiscoveryService {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        registry: Arc<ProxyRegistry>,
        trust: watch::Receiver<Arc<MeshTrust>>,
    ) -> Self {
        DiscoveryService {
            published,
            registry,
            trust,
        }
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = PushStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<PushStream>, Status> {
        let peer = caller::peer_of(&request);
        let cert_issued = caller::peer_cert_issued(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no node sent within 10s of opening the stream")
            })?
            .ok_or_else(|| Status::invalid_argument("stream closed before the node was sent"))??;
        // A workload gets the config of its own namespace only.
        let node = caller::authenticate_node("discovery", peer.as_ref(), first.node)?;
        let (key, stream_id) = self.registry.connect(&node, cert_issued);
        tracing::info!(proxy = %key, service = %node.service, "proxy connected");
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            node,
            key,
            stream_id,
            registry: self.registry.clone(),
            trust: self.trust.clone(),
            published: self.published.clone(),
            tx,
            sent: ResourceSet::new(),
            in_flight: HashMap::new(),
            nonce: 0,
            resync: false,
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A push waiting for its ACK.
struct InFlight {
    version: String,
    /// When its change was committed.
    changed_at: Instant,
    trust_epoch: u64,
    config_revision: u64,
    registry_revision: u64,
}

/// One proxy's stream.
struct Session {
    node: pb::Node,
    key: String,
    stream_id: u64,
    registry: Arc<ProxyRegistry>,
    trust: watch::Receiver<Arc<MeshTrust>>,
    published: watch::Receiver<Arc<Published>>,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    /// What the proxy has been sent (assumed applied unless it NACKs).
    sent: ResourceSet,
    /// nonce → what that push carried.
    in_flight: HashMap<String, InFlight>,
    nonce: u64,
    /// Send the full state next time (after a NACK).
    resync: bool,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::DiscoveryRequest>) {
        let initial = self.published.borrow_and_update().clone();
        if self.push(&initial, true).await.is_err() {
            return self.disconnect();
        }
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.on_reply(req),
                    Some(Err(e)) => {
                        tracing::info!(proxy = %self.key, error = %e, "stream error");
                        break;
                    }
                    None => break,
                },
                changed = self.published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let p = self.published.borrow_and_update().clone();
                    if self.push(&p, false).await.is_err() {
                        break;
                    }
                }
                changed = self.trust.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let p = self.published.borrow().clone();
                    if self.push(&p, false).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.disconnect();
    }

    fn disconnect(&self) {
        tracing::info!(proxy = %self.key, "proxy disconnected");
        self.registry
            .update(&self.key, self.stream_id, |r| r.connected = false);
    }

    async fn push(&mut self, published: &Published, full: bool) -> Result<(), ()> {
        let trust = self.trust.borrow_and_update().clone();
        let compiled = compile::compile_shared(
            &published.config,
            &published.registry,
            &published.shared,
            &self.node,
            &trust,
        );
        let on_connect = full;
        let full = full || std::mem::take(&mut self.resync);
        let (resources, removed) = if full {
            (compiled.values().map(|r| (**r).clone()).collect(), vec![])
        } else {
            compile::diff(&self.sent, &compiled)
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = published.version();
        let response = pb::DiscoveryResponse {
            version: version.clone(),
            nonce: nonce.clone(),
            resources,
            removed,
            full_state: full,
        };
        let count = compiled.len() as u64;
        self.sent = compiled;
        // The push on connect measures connect → ACK, not the age of the
        // revision (which may predate the proxy by hours).
        let changed_at = if on_connect {
            Instant::now()
        } else {
            published.changed_at
        };
        self.in_flight.insert(
            nonce,
            InFlight {
                version: version.clone(),
                changed_at,
                trust_epoch: trust.epoch,
                config_revision: published.config.revision,
                registry_revision: published.registry.revision,
            },
        );
        self.registry.update(&self.key, self.stream_id, |r| {
            r.sent_version = version;
            r.resources = count;
        });
        metrics::counter!("weft_control_pushes_total").increment(1);
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }

    fn on_reply(&mut self, req: pb::DiscoveryRequest) {
        let Some(pushed) = self.in_flight.remove(&req.response_nonce) else {
            tracing::debug!(proxy = %self.key, nonce = %req.response_nonce, "reply for unknown nonce");
            return;
        };
        // Older pushes were superseded by this one.
        if let Ok(n) = req.response_nonce.parse::<u64>() {
            self.in_flight
                .retain(|k, _| k.parse::<u64>().map(|k| k > n).unwrap_or(false));
        }
        if req.error.is_empty() {
            metrics::histogram!("weft_control_push_duration_seconds")
                .record(pushed.changed_at.elapsed().as_secs_f64());
            self.registry.update(&self.key, self.stream_id, |r| {
                r.acked_version = pushed.version;
                r.acked_revision = pushed.config_revision;
                r.acked_registry_revision = pushed.registry_revision;
                r.trust_epoch_acked = r.trust_epoch_acked.max(pushed.trust_epoch);
                r.nacked = false;
                r.nack_reason.clear();
            });
            self.registry.notify_acked();
        } else {
            tracing::warn!(proxy = %self.key, version = %pushed.version, reason = %req.error, "push NACKed");
            metrics::counter!("weft_control_nacks_total").increment(1);
            // The proxy kept its previous config, so our view of it is wrong:
            // the next push carries the full state.
            self.resync = true;
            self.registry.update(&self.key, self.stream_id, |r| {
                r.acked_version = req.version.clone();
                r.nacked = true;
                r.nack_reason = req.error.clone();
            });
        }
    }
}
