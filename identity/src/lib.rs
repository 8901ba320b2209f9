//! Workload identity on the wire, shared by the control plane, the proxy and
//! weftctl: reading SPIFFE IDs out of certificates (`svid`) and the rustls
//! pieces every mTLS endpoint in the mesh uses (`tls`): hot-swappable
//! certificates, a trust bundle that can change under live connections, and
//! verifiers that check SPIFFE IDs instead of DNS names.
#![forbid(unsafe_code)]

pub mod channel;
pub mod svid;
pub mod tls;

pub use xds_proto::spiffe::SpiffeId;
