//! Who may do what with which queue: the QueuePolicies of the config,
//! compiled once per config revision. Deny by default; the admin identity
//! may do everything; a caller without a certificate exists only with
//! --insecure-dev, where nothing is checked. Refusals name the identity,
//! the permission and the queue, and are counted; the service writes them
//! to the audit log (`audit`).

use crate::caller::admin_identity;
use crate::config::kinds::{AuthzFrom, QueuePermission};
use crate::config::ConfigSet;
use std::collections::HashMap;
use tonic::Status;
use xds_proto::spiffe::SpiffeId;

pub const DENIED_TOTAL: &str = "weft_queue_access_denied_total";
/// What one rule grants, and to whom.
type Grant = (Vec<QueuePermission>, AuthzFrom);

#[derive(Debug, Default)]
pub struct Access {
    admin: Option<SpiffeId>,
    /// (namespace, queue or "*") → grants.
    grants: HashMap<(String, String), Vec<Grant>>,
}

pub fn permission_name(p: QueuePermission) -> &'static str {
    match p {
        QueuePermission::Publish => "publish",
        QueuePermission::Consume => "consume",
        QueuePermission::Admin => "admin",
    }
}

impl Access {
    pub fn compile(config: &ConfigSet, trust_domain: &str) -> Access {
        let mut grants: HashMap<(String, String), Vec<Grant>> = HashMap::new();
        for (key, policy) in config.queue_policies() {
            for q in &policy.queues {
                for rule in &policy.rules {
                    grants
                        .entry((key.namespace.clone(), q.clone()))
                        .or_default()
                        .push((rule.permissions.clone(), rule.from.clone()));
                }
            }
        }
        Access {
            admin: Some(admin_identity(trust_domain)),
            grants,
        }
    }

    fn granted(&self, id: &SpiffeId, namespace: &str, queue: &str, perm: QueuePermission) -> bool {
        let uri = id.to_string();
        [queue, "*"].iter().any(|q| {
            self.grants
                .get(&(namespace.to_string(), (*q).to_string()))
                .into_iter()
                .flatten()
                .any(|(perms, from)| {
                    perms.contains(&perm)
                        && (from.identities.contains(&uri)
                            || from.namespaces.contains(&id.namespace)
                            || from.trust_domains.contains(&id.trust_domain))
                })
        })
    }

    /// Ok when `caller` may `perm` on `namespace/queue`.
    pub fn check(
        &self,
        caller: Option<&SpiffeId>,
        namespace: &str,
        queue: &str,
        perm: QueuePermission,
    ) -> Result<(), Status> {
        let Some(id) = caller else {
            return Ok(());
        };
        if self.admin.as_ref() == Some(id) || self.granted(id, namespace, queue, perm) {
            return Ok(());
        }
        let name = permission_name(perm);
        metrics::counter!(DENIED_TOTAL, "permission" => name).increment(1);
        Err(Status::permission_denied(format!(
            "{id} may not {name} on queue {namespace}/{queue}: no QueuePolicy grants it"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_documents;

    fn access(yaml: &str) -> Access {
        let mut set = ConfigSet::default();
        for l in parse_documents("t.yaml", yaml).unwrap() {
            set.objects.insert(l.object.key(), l.object);
        }
        Access::compile(&set, "cluster.local")
    }

    #[test]
    fn only_what_a_policy_grants_is_allowed_and_refusals_name_who_and_what() {
        let a = access("apiVersion: weft.dev/v1\nkind: QueuePolicy\nmetadata: {name: p, namespace: intel}\nspec:\n  queues: [jobs]\n  rules:\n  - {permissions: [consume], from: {identities: ['spiffe://cluster.local/ns/intel/sa/worker']}}\n  - {permissions: [publish], from: {namespaces: [feeds]}}\n---\napiVersion: weft.dev/v1\nkind: QueuePolicy\nmetadata: {name: ops, namespace: intel}\nspec:\n  queues: ['*']\n  rules:\n  - {permissions: [admin], from: {trustDomains: [cluster.local]}}\n");
        let id = |ns: &str, sa: &str| SpiffeId::new("cluster.local", ns, sa).unwrap();
        let worker = id("intel", "worker");
        let feed = id("feeds", "collector");
        assert!(a
            .check(Some(&worker), "intel", "jobs", QueuePermission::Consume)
            .is_ok());
        assert!(a
            .check(Some(&feed), "intel", "jobs", QueuePermission::Publish)
            .is_ok());
        let e = a
            .check(Some(&worker), "intel", "jobs", QueuePermission::Publish)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("spiffe://cluster.local/ns/intel/sa/worker")
                && e.message().contains("publish")
                && e.message().contains("intel/jobs"),
            "{}",
            e.message()
        );
        // Grants are per queue and namespace.
        assert!(a
            .check(Some(&feed), "intel", "other", QueuePermission::Publish)
            .is_err());
        assert!(a
            .check(Some(&feed), "shop", "jobs", QueuePermission::Publish)
            .is_err());
        // `*` covers every queue of its namespace.
        assert!(a
            .check(Some(&feed), "intel", "anything", QueuePermission::Admin)
            .is_ok());
        let other_td = SpiffeId::new("other.local", "intel", "x").unwrap();
        assert!(a
            .check(Some(&other_td), "intel", "jobs", QueuePermission::Admin)
            .is_err());
        // The admin identity may do everything; --insecure-dev checks nothing.
        let admin = admin_identity("cluster.local");
        assert!(a
            .check(Some(&admin), "shop", "jobs", QueuePermission::Publish)
            .is_ok());
        assert!(a
            .check(None, "shop", "jobs", QueuePermission::Publish)
            .is_ok());
    }
}
