//! The service registry's keys in etcd, shared by every replica (under the
//! store's prefix):
//!
//! - `registry/instances/<namespace>/<service>/<instance id>` →
//!   `StoredInstance` (protobuf), kept until deregistered or evicted;
//! - `registry/alive/<lease id>` → empty, attached to the instance's etcd
//!   lease (the registry lease's TTL). A heartbeat to any replica keeps that
//!   etcd lease alive; when the workload goes quiet the lease runs out, etcd
//!   deletes the key, and every replica sees it.
//!
//! Each replica mirrors these keys (a paged range at one revision, then a
//! watch from the next one); every write is one transaction guarded by the
//! instance key's mod revision, so two replicas cannot both win.

use super::etcd::{prefix_end, EtcdStore};
use super::etcd_txn::TxnOp;
use super::StoreError;
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;
use xds_proto::etcd::{self as pb, kv_client::KvClient, watch_client::WatchClient, watch_request};
use xds_proto::v1 as reg;

pub const INSTANCES: &str = "registry/instances/";
pub const ALIVE: &str = "registry/alive/";
const ROOT: &str = "registry/";
/// Keys per page when loading.
const PAGE: i64 = 2000;
/// Big registries come in big responses.
const MAX_MESSAGE: usize = 64 << 20;

/// One write of a registry transaction.
#[derive(Debug, Clone)]
pub enum RegistryOp {
    Put {
        key: String,
        stored: Box<reg::StoredInstance>,
    },
    Delete {
        key: String,
    },
    /// The instance's liveness key, on its etcd lease.
    Alive {
        lease_id: String,
        etcd_lease: i64,
    },
    Gone {
        lease_id: String,
    },
}

/// One change the mirror learns from etcd.
#[derive(Debug, Clone)]
pub enum RegistryChange {
    Put {
        mod_revision: i64,
        stored: reg::StoredInstance,
    },
    Deleted {
        mod_revision: i64,
        prev: Option<reg::StoredInstance>,
    },
    Alive(String),
    Gone(String),
}

/// The registry's keys at one revision.
#[derive(Debug, Default)]
pub struct SharedRegistry {
    pub revision: i64,
    /// (mod revision, instance).
    pub instances: Vec<(i64, reg::StoredInstance)>,
    pub alive: Vec<String>,
}

/// What the registry watch delivers.
#[derive(Debug)]
pub enum RegistryFeed {
    /// The changes of one etcd revision or more, in order, up to `revision`.
    Changes {
        revision: i64,
        changes: Vec<RegistryChange>,
    },
    /// The watch could not resume where it broke (etcd compacted that
    /// history): everything, afresh.
    Reload(SharedRegistry),
}

impl EtcdStore {
    fn rel<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Option<reg::StoredInstance> {
        match reg::StoredInstance::decode(value) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(key = %String::from_utf8_lossy(key), error = %e, "registry: a stored instance is corrupt; skipped");
                None
            }
        }
    }

    /// Every registry key, paged, at one revision.
    pub async fn load_shared_registry(&self) -> Result<SharedRegistry, StoreError> {
        let root = self.key(ROOT);
        let end = prefix_end(&root);
        let mut out = SharedRegistry::default();
        let mut from = root;
        loop {
            let req = pb::RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision: out.revision,
                ..Default::default()
            };
            let r = self
                .call(|ch| {
                    let req = self.request(req.clone());
                    async move {
                        KvClient::new(ch)
                            .max_decoding_message_size(MAX_MESSAGE)
                            .range(req)
                            .await
                    }
                })
                .await?;
            if out.revision == 0 {
                out.revision = r.header.map(|h| h.revision).unwrap_or(0);
            }
            for kv in &r.kvs {
                self.sort_in(kv, &mut out);
            }
            match (r.more, r.kvs.last()) {
                (true, Some(last)) => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn sort_in(&self, kv: &pb::KeyValue, out: &mut SharedRegistry) {
        let Some(k) = self.rel(&kv.key) else { return };
        if k.starts_with(INSTANCES) {
            if let Some(s) = self.decode(&kv.key, &kv.value) {
                out.instances.push((kv.mod_revision, s));
            }
        } else if let Some(lease) = k.strip_prefix(ALIVE) {
            out.alive.push(lease.to_string());
        }
    }

    /// Applies `ops` if every `(key, mod revision)` in `expect` still holds
    /// (0: the key does not exist). Some(the new revision), or None when
    /// another writer changed one of them first.
    pub async fn registry_txn(
        &self,
        expect: &[(String, i64)],
        ops: &[RegistryOp],
    ) -> Result<Option<i64>, StoreError> {
        let ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                RegistryOp::Put { key, stored } => TxnOp::Put {
                    key: key.clone(),
                    value: stored.encode_to_vec(),
                    lease: 0,
                },
                RegistryOp::Delete { key } => TxnOp::Delete { key: key.clone() },
                RegistryOp::Alive {
                    lease_id,
                    etcd_lease,
                } => TxnOp::Put {
                    key: format!("{ALIVE}{lease_id}"),
                    value: vec![],
                    lease: *etcd_lease,
                },
                RegistryOp::Gone { lease_id } => TxnOp::Delete {
                    key: format!("{ALIVE}{lease_id}"),
                },
            })
            .collect();
        self.guarded_txn(expect, &ops).await
    }

    /// The registry's changes after revision `after`, as they happen, until
    /// the receiver goes away; re-watches from where it broke.
    pub fn watch_registry(&self, mut after: i64) -> mpsc::Receiver<RegistryFeed> {
        let (tx, rx) = mpsc::channel(64);
        let store = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match store.watch_registry_once(&mut after, &tx).await {
                    Ok(()) => return,
                    Err(Broke::Compacted) => match store.load_shared_registry().await {
                        Ok(all) => {
                            tracing::warn!(
                                revision = all.revision,
                                "registry watch history compacted; reloaded"
                            );
                            after = all.revision;
                            if tx.send(RegistryFeed::Reload(all)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Err(e) => tracing::warn!(error = %e, "registry reload failed"),
                    },
                    Err(Broke::Error(e)) => {
                        tracing::warn!(store = %store.describe, error = %e, "registry watch broke; re-watching");
                        metrics::counter!("weft_control_store_watch_errors_total").increment(1);
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        rx
    }

    async fn watch_registry_once(
        &self,
        after: &mut i64,
        tx: &mpsc::Sender<RegistryFeed>,
    ) -> Result<(), Broke> {
        let root = self.key(ROOT);
        let (req_tx, req_rx) = mpsc::channel(1);
        let _ = req_tx
            .send(pb::WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        range_end: prefix_end(&root),
                        key: root,
                        start_revision: *after + 1,
                        prev_kv: true,
                        ..Default::default()
                    },
                )),
            })
            .await;
        let member = self.members
            [self.current.load(std::sync::atomic::Ordering::Relaxed) % self.members.len()]
        .clone();
        let opened = WatchClient::new(member)
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(self.request(tokio_stream::wrappers::ReceiverStream::new(req_rx)))
            .await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) => {
                self.current
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Broke::Error(self.status(s)));
            }
        };
        loop {
            let m = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(Broke::Error(StoreError::Backend {
                        path: self.describe.clone(),
                        message: "the registry watch stream ended".into(),
                    }))
                }
                Err(s) => {
                    self.current
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(Broke::Error(self.status(s)));
                }
            };
            if m.compact_revision > 0 {
                return Err(Broke::Compacted);
            }
            if m.canceled {
                return Err(Broke::Error(StoreError::Backend {
                    path: self.describe.clone(),
                    message: format!("registry watch canceled: {}", m.cancel_reason),
                }));
            }
            if m.events.is_empty() {
                continue;
            }
            let mut changes = Vec::with_capacity(m.events.len());
            let mut top = *after;
            for e in m.events {
                let Some(kv) = e.kv else { continue };
                top = top.max(kv.mod_revision);
                let Some(k) = self.rel(&kv.key) else { continue };
                let deleted = e.r#type == pb::event::EventType::Delete as i32;
                if let Some(lease) = k.strip_prefix(ALIVE) {
                    changes.push(if deleted {
                        RegistryChange::Gone(lease.to_string())
                    } else {
                        RegistryChange::Alive(lease.to_string())
                    });
                } else if k.starts_with(INSTANCES) {
                    if deleted {
                        changes.push(RegistryChange::Deleted {
                            mod_revision: kv.mod_revision,
                            prev: e.prev_kv.and_then(|p| self.decode(&p.key, &p.value)),
                        });
                    } else if let Some(stored) = self.decode(&kv.key, &kv.value) {
                        changes.push(RegistryChange::Put {
                            mod_revision: kv.mod_revision,
                            stored,
                        });
                    }
                }
            }
            *after = top;
            if tx
                .send(RegistryFeed::Changes {
                    revision: top,
                    changes,
                })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

enum Broke {
    Compacted,
    Error(StoreError),
}
