//! The proxy's end of the discovery stream: subscribe, apply each push to a
//! copy of the resource cache, build and validate a snapshot, bind any new
//! listeners, swap the snapshot in, ACK. Anything that fails is NACKed with
//! the reason and the last good snapshot keeps serving. Reconnects with
//! jittered exponential backoff; the server resyncs with a full-state push.

use crate::listener::explicit::ExplicitListeners;
use crate::metrics;
use crate::snapshot::{ResourceCache, Snapshot, SnapshotHolder};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_proto::type_url;
use xds_proto::v1::{self as pb, discovery_client::DiscoveryClient};

/// What admin shows about the control-plane connection.
#[derive(Default)]
pub struct XdsStatus {
    pub connected: AtomicBool,
    pub last_nack: Mutex<Option<String>>,
}

pub struct XdsClient {
    pub url: String,
    /// mTLS with the workload certificate (or plaintext with --insecure-dev).
    pub control_plane: weft_mesh_tls::channel::ControlPlane,
    pub node: pb::Node,
    pub snapshot: SnapshotHolder,
    pub listeners: Arc<ExplicitListeners>,
    pub status: Arc<XdsStatus>,
    /// Receives the pushed trust bundle and rotation requests (None with
    /// --insecure-dev).
    pub identity: Option<Arc<crate::identity::WorkloadIdentity>>,
}

/// The trust resources of a resource cache: (bundle roots, rotate-before).
fn trust_of(cache: &ResourceCache) -> (Option<Vec<String>>, i64) {
    use xds_proto::v1::resource::Kind as RKind;
    let roots = cache
        .of(type_url::TRUST_BUNDLE)
        .find_map(|(_, r)| match &r.kind {
            Some(RKind::TrustBundle(b)) => Some(b.roots_pem.clone()),
            _ => None,
        });
    let rotate = cache
        .of(type_url::CERTIFICATE_ROTATION)
        .find_map(|(_, r)| match &r.kind {
            Some(RKind::CertificateRotation(c)) => Some(c.issued_before_unix),
            _ => None,
        })
        .unwrap_or(0);
    (roots, rotate)
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl XdsClient {
    pub async fn run(self) {
        let mut cache = ResourceCache::default();
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.session(&mut cache).await {
                Ok(got_push) => {
                    tracing::warn!(url = %self.url, "control plane closed the stream");
                    if got_push {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err((e, got_push)) => {
                    tracing::warn!(url = %self.url, error = %e, "control plane unreachable; serving last good config");
                    if got_push {
                        backoff = BACKOFF_MIN;
                    }
                }
            }
            self.status.connected.store(false, Ordering::Relaxed);
            // Full jitter: spread reconnects of many proxies after an outage.
            let sleep = rand::rng().random_range(backoff / 2..=backoff);
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One stream. Returns whether at least one push arrived.
    async fn session(&self, cache: &mut ResourceCache) -> Result<bool, (String, bool)> {
        let channel = self
            .control_plane
            .connect(&self.url, Duration::from_secs(2))
            .await
            .map_err(|e| (format!("connect: {e}"), false))?;
        let mut client = DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::DiscoveryRequest {
            node: Some(self.node.clone()),
            subscribe: type_url::SUPPORTED.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        tx.send(hello)
            .await
            .map_err(|_| ("stream closed".to_string(), false))?;
        let mut pushes = client
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|e| (format!("open stream: {}", e.message()), false))?
            .into_inner();
        self.status.connected.store(true, Ordering::Relaxed);
        tracing::info!(url = %self.url, "connected to control plane");
        let mut got = false;
        loop {
            let push = match pushes.message().await {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(got),
                Err(e) => return Err((format!("stream: {}", e.message()), got)),
            };
            got = true;
            let reply = self.apply(push, cache);
            if tx.send(reply).await.is_err() {
                return Err(("stream closed while replying".into(), got));
            }
        }
    }

    /// Applies one push; returns the ACK or NACK to send.
    fn apply(
        &self,
        mut push: pb::DiscoveryResponse,
        cache: &mut ResourceCache,
    ) -> pb::DiscoveryRequest {
        let (changed, removed) = (push.resources.len(), push.removed.len());
        let version = std::mem::take(&mut push.version);
        let nonce = std::mem::take(&mut push.nonce);
        let result = cache
            .apply(push)
            .and_then(|next| {
                let prev = self.snapshot.load();
                Snapshot::build_after(&version, &next, Some(&prev)).map(|snap| (next, snap))
            })
            .and_then(|(next, snap)| {
                // A bundle that does not parse is refused with the config.
                if let (Some(roots), Some(_)) = (trust_of(&next).0, &self.identity) {
                    weft_mesh_tls::tls::TrustBundle::new(&roots)
                        .map_err(|e| format!("trust bundle: {e}"))?;
                }
                Ok((next, snap))
            })
            .and_then(|(next, snap)| {
                self.listeners
                    .prepare(&snap.tcp_listeners)
                    .map(|p| (next, snap, p))
            });
        match result {
            Ok((next, snap, prepared)) => {
                let resources = next.len();
                if let Some(identity) = &self.identity {
                    let (roots, rotate_before) = trust_of(&next);
                    identity.apply_trust(roots.as_deref(), rotate_before);
                }
                *cache = next;
                self.snapshot.store(Arc::new(snap));
                self.listeners.commit(prepared);
                if let Ok(mut n) = self.status.last_nack.lock() {
                    *n = None;
                }
                metrics::counter_config_update(&version);
                tracing::info!(%version, resources, changed, removed, "config applied");
                pb::DiscoveryRequest {
                    response_nonce: nonce,
                    version,
                    ..Default::default()
                }
            }
            Err(reason) => {
                ::metrics::counter!(metrics::CONFIG_NACKS).increment(1);
                tracing::warn!(%version, %reason, "config rejected; keeping last good config");
                if let Ok(mut n) = self.status.last_nack.lock() {
                    *n = Some(format!("{version}: {reason}"));
                }
                pb::DiscoveryRequest {
                    response_nonce: nonce,
                    version: self.snapshot.load().version.clone(),
                    error: reason,
                    ..Default::default()
                }
            }
        }
    }
}
