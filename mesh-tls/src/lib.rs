//! The mesh's TLS, shared by the control plane, the proxy and weftctl:
//! reading SPIFFE IDs out of certificates (`svid`), the rustls pieces every
//! mTLS endpoint in the mesh uses (`tls`: hot-swappable certificates, a
//! trust bundle that can change under live connections, verifiers that check
//! SPIFFE IDs instead of DNS names), and the mTLS gRPC channel to the
//! control plane (`channel`, `admin_client`).
#![forbid(unsafe_code)]

pub mod admin_client;
pub mod channel;
pub mod identities;
pub mod svid;
pub mod tls;

pub use xds_proto::spiffe::SpiffeId;
