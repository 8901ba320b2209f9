//! Weft's wire types: the only place protobuf messages are defined.
//!
//! `weft.v1` is the mesh protocol (discovery, admin); `weft.sample.v1` is the
//! sample workload used by the demo, tests and benches.
#![forbid(unsafe_code)]

pub mod v1 {
    tonic::include_proto!("weft.v1");
}

/// etcd's v3 API, as far as the control plane's etcd store uses it
/// (`proto/etcd/v3.proto`).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub mod app_probe;
pub mod ports;
pub mod spiffe;
pub mod units;

/// The standard gRPC health protocol (active health checks, sample app).
pub mod health {
    pub mod v1 {
        tonic::include_proto!("grpc.health.v1");
    }
}

pub mod sample {
    pub mod v1 {
        tonic::include_proto!("weft.sample.v1");
    }
}

/// Type URLs of the resources carried on the discovery stream.
pub mod type_url {
    pub const LISTENER: &str = "weft.v1.Listener";
    pub const ROUTE_TABLE: &str = "weft.v1.RouteTable";
    pub const CLUSTER: &str = "weft.v1.Cluster";
    pub const ENDPOINTS: &str = "weft.v1.Endpoints";
    pub const TRUST_BUNDLE: &str = "weft.v1.TrustBundle";
    pub const CERTIFICATE_ROTATION: &str = "weft.v1.CertificateRotation";
    pub const AUTHORIZATION_POLICY: &str = "weft.v1.AuthorizationPolicy";
    pub const RATE_LIMIT_POLICY: &str = "weft.v1.RateLimitPolicy";

    /// The types a proxy of this version understands.
    pub const SUPPORTED: &[&str] = &[
        LISTENER,
        ROUTE_TABLE,
        CLUSTER,
        ENDPOINTS,
        TRUST_BUNDLE,
        CERTIFICATE_ROTATION,
        AUTHORIZATION_POLICY,
        RATE_LIMIT_POLICY,
    ];
}
