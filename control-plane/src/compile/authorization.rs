//! The inbound authorization policy of one workload.

use crate::config::kinds::{AuthzAction, MtlsMode};
use crate::config::{resolve_service_ref, ConfigSet};
use xds_proto::v1 as pb;

use super::MESH_NAMESPACE;

/// The authorization policy for the workload behind `node`: the rules of
/// every Authorization targeting its service, and the default of its
/// namespace, else of the mesh, else allow. The mTLS mode is found the same
/// way (the service's, the namespace's, the mesh's, else strict).
pub(super) fn authorization_for(config: &ConfigSet, node: &pb::Node) -> pb::AuthorizationPolicy {
    let mut policy = pb::AuthorizationPolicy::default();
    let mut ns_default = None;
    let mut mesh_default = None;
    // (service's, namespace's, mesh's) mode and the policy that set it.
    let mut mtls: [Option<(MtlsMode, String)>; 3] = [None, None, None];
    for (key, a) in config.authorizations() {
        let name = format!("{}/{}", key.namespace, key.name);
        match &a.target {
            None => {
                let level = if key.namespace == node.namespace {
                    1
                } else if key.namespace == MESH_NAMESPACE {
                    2
                } else {
                    continue;
                };
                if let Some(mode) = a.mtls {
                    mtls[level] = Some((mode, name.clone()));
                }
                let Some(default) = a.default else { continue };
                let deny = default == AuthzAction::Deny;
                if level == 1 {
                    ns_default = Some((deny, name));
                } else {
                    mesh_default = Some((deny, name));
                }
            }
            Some(t) => {
                let (svc, ns) = resolve_service_ref(&t.service, &key.namespace);
                if svc != node.service || ns != node.namespace {
                    continue;
                }
                if let Some(mode) = a.mtls {
                    mtls[0] = Some((mode, name.clone()));
                }
                for r in &a.rules {
                    let (exact, prefix): (Vec<_>, Vec<_>) =
                        r.to.paths.iter().partition(|p| p.exact.is_some());
                    policy.rules.push(pb::AuthorizationRule {
                        policy: name.clone(),
                        deny: r.action == AuthzAction::Deny,
                        port: t.port.unwrap_or(0) as u32,
                        identities: r.from.identities.clone(),
                        namespaces: r.from.namespaces.clone(),
                        trust_domains: r.from.trust_domains.clone(),
                        path_exact: exact.into_iter().filter_map(|p| p.exact.clone()).collect(),
                        path_prefix: prefix
                            .into_iter()
                            .filter_map(|p| p.prefix.clone())
                            .collect(),
                        methods: r.to.methods.clone(),
                    });
                }
            }
        }
    }
    if let Some((deny, name)) = ns_default.or(mesh_default) {
        policy.default_deny = deny;
        policy.default_policy = name;
    }
    if let Some((mode, name)) = mtls.into_iter().flatten().next() {
        policy.permissive = mode == MtlsMode::Permissive;
        policy.mtls_policy = name;
    }
    policy
}
