//! weft-control: stores declarative config, compiles it per proxy and pushes
//! it over the discovery stream; runs the mesh CA; serves the operator Admin
//! API. ARCHITECTURE.md at the repository root maps the modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ca_store;
pub mod caller;
pub mod compile;
pub mod config;
pub mod discovery;
pub mod identity;
pub mod injector;
pub mod join_token;
pub mod k8s_token;
pub mod local_certs;
pub mod proxy_status;
pub mod publish;
pub mod queue;
pub mod rate_limit_quota;
pub mod registry;
pub mod registry_view;
pub mod replicas;
pub mod state;
pub mod store;
pub mod transport;
pub mod trust;
