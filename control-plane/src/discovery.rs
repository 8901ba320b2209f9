//! The discovery stream server: one bidirectional stream per proxy. It sends
//! the full state on connect, then an incremental push (changed resources and
//! removed names) for every published revision, and records each proxy's
//! ACK / NACK so operators can see who is SYNCED, STALE or NACKED.

use crate::compile::{self, ResourceSet};
use crate::state::Published;
use crate::trust::MeshTrust;
use futures::Stream;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::v1::{self as pb, discovery_server::Discovery};

pub fn version_of(revision: u64) -> String {
    format!("r{revision}")
}

/// Per-proxy sync state, shared with the Admin service.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    pub node: pb::Node,
    pub sent_version: String,
    pub acked_version: String,
    pub nack_reason: String,
    pub nacked: bool,
    pub connected: bool,
    pub resources: u64,
    pub last_seen: SystemTime,
    /// The trust-bundle epoch the proxy last ACKed.
    pub trust_epoch_acked: u64,
    /// When its current certificate was issued (unix seconds; 0: unknown).
    pub cert_issued_unix: i64,
    /// When that certificate expires (unix seconds; 0: unknown).
    pub cert_not_after_unix: i64,
    /// Which stream owns the record (a reconnect replaces the old stream).
    stream_id: u64,
}

impl ProxyRecord {
    pub fn to_status(&self) -> pb::ProxyStatus {
        let state = if !self.connected {
            pb::SyncState::Disconnected
        } else if self.nacked {
            pb::SyncState::Nacked
        } else if self.acked_version == self.sent_version && !self.sent_version.is_empty() {
            pb::SyncState::Synced
        } else {
            pb::SyncState::Stale
        };
        pb::ProxyStatus {
            node: Some(self.node.clone()),
            sent_version: self.sent_version.clone(),
            acked_version: self.acked_version.clone(),
            state: state as i32,
            nack_reason: self.nack_reason.clone(),
            connected: self.connected,
            resources: self.resources,
            cert_not_after_unix: self.cert_not_after_unix,
            last_seen_unix_ms: self
                .last_seen
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

/// How long a disconnected proxy stays visible in `proxy-status`.
pub const DISCONNECTED_RETENTION: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct ProxyRegistry {
    records: Mutex<BTreeMap<String, ProxyRecord>>,
    next_stream: std::sync::atomic::AtomicU64,
    /// "ns/node" → when its certificate was last issued (the CSR may come
    /// before the node's discovery stream).
    issued: Mutex<HashMap<String, (i64, i64)>>,
}

impl ProxyRegistry {
    fn key(node: &pb::Node) -> String {
        format!("{}/{}", node.namespace, node.name)
    }

    /// Records a certificate issued to node `name` in `namespace`.
    pub fn certificate_issued(
        &self,
        namespace: &str,
        name: &str,
        at_unix: i64,
        not_after_unix: i64,
    ) {
        let key = format!("{namespace}/{name}");
        if let Ok(mut issued) = self.issued.lock() {
            issued.insert(key.clone(), (at_unix, not_after_unix));
        }
        if let Ok(mut records) = self.records.lock() {
            if let Some(r) = records.get_mut(&key) {
                r.cert_issued_unix = at_unix;
                r.cert_not_after_unix = not_after_unix;
            }
        }
    }

    pub fn snapshot(&self) -> Vec<ProxyRecord> {
        self.records
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    fn update(&self, key: &str, stream_id: u64, f: impl FnOnce(&mut ProxyRecord)) {
        if let Ok(mut records) = self.records.lock() {
            if let Some(r) = records.get_mut(key) {
                if r.stream_id == stream_id {
                    f(r);
                    r.last_seen = SystemTime::now();
                }
            }
        }
        self.refresh_gauge();
    }

    /// Forgets proxies that have been disconnected for longer than
    /// `DISCONNECTED_RETENTION`, so churn (pods coming and going) does not
    /// grow the registry without bound.
    fn purge_stale(&self, now: SystemTime) {
        if let Ok(mut records) = self.records.lock() {
            records.retain(|_, r| {
                r.connected
                    || now
                        .duration_since(r.last_seen)
                        .map(|age| age < DISCONNECTED_RETENTION)
                        .unwrap_or(true)
            });
        }
    }

    fn refresh_gauge(&self) {
        let connected = self
            .records
            .lock()
            .map(|r| r.values().filter(|r| r.connected).count())
            .unwrap_or(0);
        metrics::gauge!("weft_control_connected_proxies").set(connected as f64);
    }
}

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
        let peer = request
            .extensions()
            .get::<crate::identity::PeerIdentity>()
            .and_then(|p| p.0.clone());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no node sent within 10s of opening the stream")
            })?
            .ok_or_else(|| Status::invalid_argument("stream closed before the node was sent"))??;
        let node = first
            .node
            .filter(|n| !n.name.is_empty() && !n.namespace.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument("first message must carry node.name and node.namespace")
            })?;
        // A workload gets the config of its own namespace only.
        if let Some(id) = &peer {
            if id.namespace != node.namespace {
                tracing::warn!(identity = %id, namespace = %node.namespace, "discovery refused: node namespace does not match the certificate");
                return Err(Status::permission_denied(format!(
                    "node namespace \"{}\" does not match the certificate identity {id}",
                    node.namespace
                )));
            }
        }
        let key = ProxyRegistry::key(&node);
        self.registry.purge_stale(SystemTime::now());
        let stream_id = self
            .registry
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let issued = self
            .registry
            .issued
            .lock()
            .ok()
            .and_then(|i| i.get(&key).copied())
            .unwrap_or((0, 0));
        if let Ok(mut records) = self.registry.records.lock() {
            records.insert(
                key.clone(),
                ProxyRecord {
                    node: node.clone(),
                    sent_version: String::new(),
                    acked_version: String::new(),
                    nack_reason: String::new(),
                    nacked: false,
                    connected: true,
                    resources: 0,
                    last_seen: SystemTime::now(),
                    trust_epoch_acked: 0,
                    cert_issued_unix: issued.0,
                    cert_not_after_unix: issued.1,
                    stream_id,
                },
            );
        }
        self.registry.refresh_gauge();
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
    /// nonce → (version, when its config change was committed, trust epoch)
    in_flight: HashMap<String, (String, Instant, u64)>,
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
        let compiled = compile::compile_for(&published.config, &self.node, &trust);
        let on_connect = full;
        let full = full || std::mem::take(&mut self.resync);
        let (resources, removed) = if full {
            (compiled.values().cloned().collect(), vec![])
        } else {
            compile::diff(&self.sent, &compiled)
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = version_of(published.config.revision);
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
        self.in_flight
            .insert(nonce, (version.clone(), changed_at, trust.epoch));
        self.registry.update(&self.key, self.stream_id, |r| {
            r.sent_version = version;
            r.resources = count;
        });
        metrics::counter!("weft_control_pushes_total").increment(1);
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }

    fn on_reply(&mut self, req: pb::DiscoveryRequest) {
        let Some((version, changed_at, epoch)) = self.in_flight.remove(&req.response_nonce) else {
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
                .record(changed_at.elapsed().as_secs_f64());
            self.registry.update(&self.key, self.stream_id, |r| {
                r.acked_version = version;
                r.trust_epoch_acked = r.trust_epoch_acked.max(epoch);
                r.nacked = false;
                r.nack_reason.clear();
            });
        } else {
            tracing::warn!(proxy = %self.key, %version, reason = %req.error, "push NACKed");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ProxyRecord {
        ProxyRecord {
            node: pb::Node::default(),
            sent_version: "r2".into(),
            acked_version: "r1".into(),
            nack_reason: String::new(),
            nacked: false,
            connected: true,
            resources: 3,
            last_seen: SystemTime::now(),
            trust_epoch_acked: 0,
            cert_issued_unix: 0,
            cert_not_after_unix: 0,
            stream_id: 0,
        }
    }

    fn state(r: &ProxyRecord) -> pb::SyncState {
        pb::SyncState::try_from(r.to_status().state).unwrap()
    }

    #[test]
    fn sync_state_follows_sent_acked_nacked_and_connection() {
        let mut r = record();
        assert_eq!(state(&r), pb::SyncState::Stale, "sent r2, acked r1");
        r.acked_version = "r2".into();
        assert_eq!(state(&r), pb::SyncState::Synced);
        r.nacked = true;
        assert_eq!(state(&r), pb::SyncState::Nacked);
        r.connected = false;
        assert_eq!(state(&r), pb::SyncState::Disconnected);
    }

    #[test]
    fn updates_from_a_replaced_stream_are_ignored() {
        let registry = ProxyRegistry::default();
        let mut r = record();
        r.stream_id = 7;
        registry.records.lock().unwrap().insert("ns/p".into(), r);
        // The old stream (id 6) ends after the proxy reconnected as stream 7:
        // it must not mark the live connection as disconnected.
        registry.update("ns/p", 6, |r| r.connected = false);
        assert!(registry.snapshot()[0].connected);
        registry.update("ns/p", 7, |r| r.connected = false);
        assert!(!registry.snapshot()[0].connected);
    }

    #[test]
    fn long_disconnected_proxies_are_forgotten_but_connected_ones_stay() {
        let registry = ProxyRegistry::default();
        let old = SystemTime::now() - DISCONNECTED_RETENTION - Duration::from_secs(1);
        let mut gone = record();
        gone.connected = false;
        gone.last_seen = old;
        let mut idle_but_connected = record();
        idle_but_connected.last_seen = old;
        let mut recently_gone = record();
        recently_gone.connected = false;
        {
            let mut r = registry.records.lock().unwrap();
            r.insert("ns/gone".into(), gone);
            r.insert("ns/connected".into(), idle_but_connected);
            r.insert("ns/recent".into(), recently_gone);
        }
        registry.purge_stale(SystemTime::now());
        let keys: Vec<String> = registry.records.lock().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            vec!["ns/connected".to_string(), "ns/recent".to_string()]
        );
    }
}
