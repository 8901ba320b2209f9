//! Each proxy's sync status as operators see it (`weftctl proxy-status`):
//! what was sent, what was ACKed or NACKed and why, whether it is connected,
//! its certificate's validity. Discovery streams write it; the Admin API,
//! the identity service and the trust rotation read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use xds_proto::v1 as pb;

/// Per-proxy sync state, shared with the Admin service.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    pub node: pb::Node,
    pub sent_version: String,
    pub acked_version: String,
    /// The config and registry revisions of the last ACKed push.
    pub acked_revision: u64,
    pub acked_registry_revision: u64,
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
            last_seen_unix_ms: xds_proto::units::unix_ms(self.last_seen),
            acked_revision: self.acked_revision,
            acked_registry_revision: self.acked_registry_revision,
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
    /// Woken on every ACK.
    acks: tokio::sync::Notify,
}

impl ProxyRegistry {
    pub fn key(node: &pb::Node) -> String {
        format!("{}/{}", node.namespace, node.name)
    }

    /// Records a new stream for `node` (replacing any older one of the same
    /// node) and returns the node's key and the stream's id.
    /// A proxy's stream opened; `cert_issued_unix`: when the certificate it
    /// connected with was issued (it may come from another replica).
    pub fn connect(&self, node: &pb::Node, cert_issued_unix: i64) -> (String, u64) {
        let key = Self::key(node);
        self.purge_stale(SystemTime::now());
        let stream_id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let issued = self
            .issued
            .lock()
            .ok()
            .and_then(|i| i.get(&key).copied())
            .unwrap_or((0, 0));
        let issued = (issued.0.max(cert_issued_unix), issued.1);
        if let Ok(mut records) = self.records.lock() {
            records.insert(
                key.clone(),
                ProxyRecord {
                    node: node.clone(),
                    sent_version: String::new(),
                    acked_version: String::new(),
                    acked_revision: 0,
                    acked_registry_revision: 0,
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
        self.refresh_gauge();
        (key, stream_id)
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

    pub fn update(&self, key: &str, stream_id: u64, f: impl FnOnce(&mut ProxyRecord)) {
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

    /// Wakes whoever waits in `acked` (call after recording an ACK).
    pub fn notify_acked(&self) {
        self.acks.notify_waiters();
    }

    /// Resolves at the next recorded ACK (create it before checking
    /// `registry_sync`, then await it).
    pub fn acked(&self) -> tokio::sync::futures::Notified<'_> {
        self.acks.notified()
    }

    /// Connected proxies that have ACKed registry revision `revision` or
    /// later, and those that have not.
    pub fn registry_sync(&self, revision: u64) -> (usize, usize) {
        let records = match self.records.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let (mut synced, mut all) = (0, 0);
        for r in records.values().filter(|r| r.connected) {
            all += 1;
            if r.acked_registry_revision >= revision {
                synced += 1;
            }
        }
        (synced, all - synced)
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

    /// Proxies with a live discovery stream.
    pub fn connected(&self) -> usize {
        self.records
            .lock()
            .map(|r| r.values().filter(|r| r.connected).count())
            .unwrap_or(0)
    }

    fn refresh_gauge(&self) {
        metrics::gauge!("weft_control_connected_proxies").set(self.connected() as f64);
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
            acked_revision: 1,
            acked_registry_revision: 0,
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
