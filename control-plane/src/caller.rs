//! Who is calling: the SPIFFE ID a connection's client certificate proved
//! (`PeerIdentity`, attached by `transport`), and the one set of rules every
//! gRPC service applies to it: the Admin API takes only the admin identity,
//! Discovery only workloads of the trust domain, and a workload may speak
//! only for a node in its own namespace (`authenticate_node`).

use tonic::{Request, Status};
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1 as pb;

/// The workload identity proven by the client certificate of the connection
/// a request arrived on (inserted by the TLS layer as connect info).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    pub id: Option<SpiffeId>,
    /// When that certificate was issued (unix seconds; 0: no certificate).
    pub cert_issued_unix: i64,
}

pub use weft_certs::admin_cert::{admin_identity, ADMIN_ACCOUNT, ADMIN_NAMESPACE, CONTROL_ACCOUNT};

/// The identity a request's connection proved, if any.
pub fn peer_of<T>(req: &Request<T>) -> Option<SpiffeId> {
    req.extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.id.clone())
}

/// When the client certificate of a request's connection was issued (unix
/// seconds; 0: none), e.g. by another replica before the proxy moved here.
pub fn peer_cert_issued<T>(req: &Request<T>) -> i64 {
    req.extensions()
        .get::<PeerIdentity>()
        .map_or(0, |p| p.cert_issued_unix)
}

/// The node a workload's request speaks for, checked against its
/// certificate: name and namespace must be set, and a caller with a
/// workload certificate may only speak for a node of its own namespace
/// (a plaintext caller exists only with --insecure-dev). `service` names
/// the gRPC service in the log line of a refusal.
pub fn authenticate_node(
    service: &'static str,
    peer: Option<&SpiffeId>,
    node: Option<pb::Node>,
) -> Result<pb::Node, Status> {
    let node = node
        .filter(|n| !n.name.is_empty() && !n.namespace.is_empty())
        .ok_or_else(|| Status::invalid_argument("node.name and node.namespace are required"))?;
    if let Some(id) = peer {
        if id.namespace != node.namespace {
            tracing::warn!(service, identity = %id, namespace = %node.namespace, "refused: node namespace does not match the certificate");
            return Err(Status::permission_denied(format!(
                "node namespace \"{}\" does not match the certificate identity {id}",
                node.namespace
            )));
        }
    }
    Ok(node)
}

/// Whether `peer` may act for `service` in `namespace` (register its
/// instances), whose workloads run as service account `account`: the admin
/// identity may; a workload only for the service its own identity maps to
/// (same namespace and service account, as the CA issued it). `call` names
/// the gRPC service in the refusal's log line and metric.
pub fn authorize_service(
    call: &'static str,
    peer: Option<&SpiffeId>,
    trust_domain: &str,
    namespace: &str,
    service: &str,
    account: &str,
) -> Result<(), Status> {
    let Some(id) = peer else {
        // --insecure-dev: nobody to check.
        return Ok(());
    };
    if *id == admin_identity(trust_domain)
        || (id.trust_domain == trust_domain
            && id.namespace == namespace
            && id.service_account == account)
    {
        return Ok(());
    }
    let msg = format!(
        "{id} may not act for service \"{service}\" in namespace \"{namespace}\": its workloads run as spiffe://{trust_domain}/ns/{namespace}/sa/{account}"
    );
    tracing::warn!(call, identity = %id, %namespace, %service, "refused: identity does not map to the service");
    metrics::counter!("weft_control_permission_denied_total", "service" => call).increment(1);
    Err(Status::permission_denied(msg))
}

/// Admin API: only the admin identity.
pub fn require_admin(
    trust_domain: String,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let admin = admin_identity(&trust_domain);
    move |req: Request<()>| match peer_of(&req) {
        Some(id) if id == admin => Ok(req),
        Some(id) => Err(denied(format!("{id} is not the admin identity ({admin})"))),
        None => Err(denied(
            "the admin API needs a client certificate: create one with `weftctl certs admin-cert`"
                .into(),
        )),
    }
}

/// Discovery: any workload certificate of this trust domain.
pub fn require_workload(
    trust_domain: String,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| match peer_of(&req) {
        Some(id) if id.trust_domain == trust_domain => Ok(req),
        Some(id) => Err(denied(format!(
            "{id} is not in trust domain {trust_domain}"
        ))),
        None => Err(denied(
            "discovery needs a workload certificate: call Identity.Certify with a join token first"
                .into(),
        )),
    }
}

fn denied(msg: String) -> Status {
    metrics::counter!("weft_control_unauthenticated_total").increment(1);
    tracing::warn!(reason = %msg, "request refused");
    Status::unauthenticated(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, namespace: &str) -> Option<pb::Node> {
        Some(pb::Node {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        })
    }

    #[test]
    fn only_the_service_account_of_a_service_or_the_admin_may_act_for_it() {
        let td = "cluster.local";
        let x = SpiffeId::new(td, "a", "x").unwrap();
        assert!(authorize_service("t", Some(&x), td, "a", "x-svc", "x").is_ok());
        let err = authorize_service("t", Some(&x), td, "a", "y", "y").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("spiffe://cluster.local/ns/a/sa/x")
                && err.message().contains("\"y\""),
            "{}",
            err.message()
        );
        // Same account name, other namespace.
        assert!(authorize_service("t", Some(&x), td, "b", "x", "x").is_err());
        let admin = admin_identity(td);
        assert!(authorize_service("t", Some(&admin), td, "b", "y", "y").is_ok());
        assert!(authorize_service("t", None, td, "b", "y", "y").is_ok());
    }

    #[test]
    fn a_workload_speaks_only_for_a_node_of_its_own_namespace() {
        let id = SpiffeId::new("cluster.local", "shop", "web").unwrap();
        assert!(authenticate_node("test", Some(&id), node("web-0", "shop")).is_ok());
        let err = authenticate_node("test", Some(&id), node("web-0", "bank")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("\"bank\""), "{}", err.message());
        let err = authenticate_node("test", Some(&id), node("", "shop")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(authenticate_node("test", Some(&id), None).is_err());
        // --insecure-dev: no certificate, nothing to compare.
        assert!(authenticate_node("test", None, node("web-0", "bank")).is_ok());
    }
}
