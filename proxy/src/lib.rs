//! weft-proxy: the sidecar's data plane and its control-plane client.
#![deny(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod body;
pub mod breaker;
pub mod detect;
pub mod drain;
pub mod forward;
pub mod health;
pub mod host;
pub mod http;
pub mod identity;
pub mod lb;
pub mod listener;
pub mod metrics;
pub mod mtls;
pub mod orig_dst;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod snapshot;
pub mod tcp;
pub mod timeout;
pub mod upstream;
pub mod xds_client;
