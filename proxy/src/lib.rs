//! weft-proxy: the sidecar's data plane and its control-plane client.
//! ARCHITECTURE.md at the repository root maps the modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app_probe;
pub mod clock;
pub mod cluster;
pub mod drain;
pub mod health;
pub mod host;
pub mod http;
pub mod identity;
pub mod lb;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod mtls;
pub mod policy;
pub mod protocol;
pub mod rate_limit_lease;
pub mod registration;
pub mod resource_cache;
pub mod route;
pub mod snapshot;
pub mod tcp;
pub mod xds_client;
