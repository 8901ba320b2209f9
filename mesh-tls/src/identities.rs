//! The mesh's own identities, which no workload may hold: the control plane
//! (`spiffe://<td>/ns/weft-system/sa/weft-control`) and weftctl's admin
//! (`.../sa/admin`). The CA never issues them to a workload, and sidecars'
//! inbound listeners refuse them as callers: the admin credential opens the
//! control plane's Admin API and nothing else.

use xds_proto::spiffe::SpiffeId;

pub const ADMIN_NAMESPACE: &str = "weft-system";
pub const ADMIN_ACCOUNT: &str = "admin";
pub const CONTROL_ACCOUNT: &str = "weft-control";

/// The identity `weftctl` presents.
pub fn admin_identity(trust_domain: &str) -> SpiffeId {
    reserved(trust_domain, ADMIN_ACCOUNT)
}

/// The identity the control plane serves with.
pub fn control_identity(trust_domain: &str) -> SpiffeId {
    reserved(trust_domain, CONTROL_ACCOUNT)
}

fn reserved(trust_domain: &str, account: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: trust_domain.to_string(),
        namespace: ADMIN_NAMESPACE.to_string(),
        service_account: account.to_string(),
    }
}

/// Whether `id` is one of the mesh's own identities (in any trust domain).
pub fn is_reserved(id: &SpiffeId) -> bool {
    id.namespace == ADMIN_NAMESPACE
        && (id.service_account == ADMIN_ACCOUNT || id.service_account == CONTROL_ACCOUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_control_plane_are_reserved_and_workloads_are_not() {
        assert!(is_reserved(&admin_identity("cluster.local")));
        assert!(is_reserved(&control_identity("cluster.local")));
        let workload = SpiffeId::new("cluster.local", "weft-system", "metrics").unwrap();
        assert!(!is_reserved(&workload));
        let other_ns = SpiffeId::new("cluster.local", "shop", "admin").unwrap();
        assert!(!is_reserved(&other_ns));
    }
}
