//! weft-control: stores declarative config, compiles it per proxy and pushes
//! it over the discovery stream; serves the operator Admin API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ca;
pub mod compile;
pub mod config;
pub mod discovery;
pub mod duration;
pub mod identity;
pub mod local_certs;
pub mod quota;
pub mod state;
pub mod store;
pub mod token;
pub mod transport;
pub mod trust;
