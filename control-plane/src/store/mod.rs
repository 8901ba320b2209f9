//! Durable storage. Applied configuration goes through `ConfigStore`, with
//! two backends: `embedded` (redb, one file under `--data-dir`, the
//! default) and `etcd` (shared by several control-plane replicas). The
//! registry's tables (`registry`) live in the embedded file.

pub mod embedded;
pub mod etcd;
mod etcd_auth;
pub mod etcd_lease;
pub mod etcd_registry;
mod etcd_tls;
pub mod etcd_txn;
pub mod registry;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdOptions, EtcdStore};

use crate::config::{ConfigSet, Object, ObjectKey};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Backend { path: String, message: String },
    #[error("stored object {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error(
        "the configuration changed meanwhile (expected revision {expected}, the store has {found})"
    )]
    Conflict { expected: u64, found: u64 },
    #[error("store unavailable: {store}: {reason} (writes resume when it is back; discovery keeps serving the last config)")]
    Unavailable { store: String, reason: String },
}

/// Where applied configuration lives. A commit writes revision `revision`
/// only if the stored revision is still `expected` (compare-and-swap), all
/// of it or none of it.
#[tonic::async_trait]
pub trait ConfigStore: Send + Sync {
    fn describe(&self) -> String;
    async fn load(&self) -> Result<ConfigSet, StoreError>;
    async fn commit(
        &self,
        expected: u64,
        revision: u64,
        upserts: &[&Object],
        deletes: &[ObjectKey],
    ) -> Result<(), StoreError>;
    /// Revisions other writers (other replicas) commit, as they happen;
    /// None where nothing else writes.
    fn watch(&self) -> Option<mpsc::Receiver<u64>>;
    /// Whether writes can be stored now, and why not.
    fn available(&self) -> Result<(), String>;
}

#[tonic::async_trait]
impl ConfigStore for EmbeddedStore {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    async fn load(&self) -> Result<ConfigSet, StoreError> {
        EmbeddedStore::load(self)
    }

    async fn commit(
        &self,
        expected: u64,
        revision: u64,
        upserts: &[&Object],
        deletes: &[ObjectKey],
    ) -> Result<(), StoreError> {
        EmbeddedStore::commit(self, expected, revision, upserts, deletes)
    }

    fn watch(&self) -> Option<mpsc::Receiver<u64>> {
        None
    }

    fn available(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tonic::async_trait]
impl ConfigStore for EtcdStore {
    fn describe(&self) -> String {
        EtcdStore::describe(self).to_string()
    }

    async fn load(&self) -> Result<ConfigSet, StoreError> {
        EtcdStore::load(self).await
    }

    async fn commit(
        &self,
        expected: u64,
        revision: u64,
        upserts: &[&Object],
        deletes: &[ObjectKey],
    ) -> Result<(), StoreError> {
        EtcdStore::commit(self, expected, revision, upserts, deletes).await
    }

    fn watch(&self) -> Option<mpsc::Receiver<u64>> {
        Some(self.watch_config())
    }

    fn available(&self) -> Result<(), String> {
        self.health()
    }
}
