//! Durable storage of applied configuration and of the service registry.
//! `embedded` (redb, one file under `--data-dir`) is the default; the HA
//! issue adds an etcd backend beside it. `registry` holds the registry's
//! tables in the same file.

pub mod embedded;
pub mod registry;

pub use embedded::EmbeddedStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Backend { path: String, message: String },
    #[error("stored object {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
}
