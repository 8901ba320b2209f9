//! The process harness the e2e tests, the benchmarks and `weftctl demo`
//! share: find the built binaries, start control planes, sidecars and
//! sample apps (and peers) as child processes on loopback, wait for them,
//! and stop every one of them, also when the caller panics.
//!
//! - `localmesh`: binaries, processes, ports, sidecar and control-plane
//!   command lines, the PKI files a control plane writes.
//! - `mesh`: a whole mesh per e2e test on its own 127.A.B.0/24, with
//!   clients (curl, raw HTTP/1.1, keep-alive) and metric readers.
//! - `procfs`: CPU time of processes and threads.
#![forbid(unsafe_code)]

pub mod etcd;
pub mod http_client;
pub mod k8s_issuer;
pub mod localmesh;
pub mod mesh;
pub mod netlab;
pub mod procfs;
pub mod redis;

pub use http_client::*;
pub use localmesh::{Binaries, Pki, Proc, ProxyAddrs, ProxyAuth, ProxySpec};
pub use mesh::*;
