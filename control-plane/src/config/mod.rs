//! Declarative configuration: the kinds (`kinds`), decoding YAML files into
//! objects with precise errors (`parse`), and whole-config checks (`validate`).

pub mod kinds;
pub mod parse;
pub mod validate;

pub use kinds::{Kind, Object, ObjectKey, Spec};
pub use parse::{parse_documents, ConfigError, Located};

use std::collections::BTreeMap;

/// The complete stored configuration at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSet {
    pub revision: u64,
    pub objects: BTreeMap<ObjectKey, Object>,
}

impl ConfigSet {
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &kinds::ServiceSpec)> {
        self.objects.iter().filter_map(|(k, o)| match &o.spec {
            Spec::Service(s) => Some((k, s)),
            _ => None,
        })
    }

    pub fn routes(&self) -> impl Iterator<Item = (&ObjectKey, &kinds::RouteSpec)> {
        self.objects.iter().filter_map(|(k, o)| match &o.spec {
            Spec::Route(r) => Some((k, r)),
            _ => None,
        })
    }

    pub fn authorizations(&self) -> impl Iterator<Item = (&ObjectKey, &kinds::AuthorizationSpec)> {
        self.objects.iter().filter_map(|(k, o)| match &o.spec {
            Spec::Authorization(a) => Some((k, a)),
            _ => None,
        })
    }

    pub fn policies(&self) -> impl Iterator<Item = (&ObjectKey, &kinds::PolicySpec)> {
        self.objects.iter().filter_map(|(k, o)| match &o.spec {
            Spec::Policy(p) => Some((k, &**p)),
            _ => None,
        })
    }

    /// The Policy in force for one port of a service: the port-specific one,
    /// else the service-wide one.
    pub fn policy_for(
        &self,
        namespace: &str,
        service: &str,
        port: i64,
    ) -> Option<(&ObjectKey, &kinds::PolicySpec)> {
        let mut wide = None;
        for (key, p) in self.policies() {
            let (name, ns) = resolve_service_ref(&p.target.service, &key.namespace);
            if name != service || ns != namespace {
                continue;
            }
            match p.target.port {
                Some(pp) if pp == port => return Some((key, p)),
                Some(_) => {}
                None => wide = Some((key, p)),
            }
        }
        wide
    }

    pub fn queues(&self) -> impl Iterator<Item = (&ObjectKey, &kinds::QueueSpec)> {
        self.objects.iter().filter_map(|(k, o)| match &o.spec {
            Spec::Queue(q) => Some((k, &**q)),
            _ => None,
        })
    }

    pub fn queue_policies(&self) -> impl Iterator<Item = (&ObjectKey, &kinds::QueuePolicySpec)> {
        self.objects.iter().filter_map(|(k, o)| match &o.spec {
            Spec::QueuePolicy(p) => Some((k, p)),
            _ => None,
        })
    }

    /// The spec of the object `kind` `namespace/name`, if stored.
    fn spec(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Spec> {
        let key = ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.objects.get(&key).map(|o| &o.spec)
    }

    pub fn queue(&self, namespace: &str, name: &str) -> Option<&kinds::QueueSpec> {
        match self.spec(Kind::Queue, namespace, name) {
            Some(Spec::Queue(q)) => Some(q),
            _ => None,
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&kinds::ServiceSpec> {
        match self.spec(Kind::Service, namespace, name) {
            Some(Spec::Service(s)) => Some(s),
            _ => None,
        }
    }
}

/// Resolves "name" or "name.namespace" relative to `namespace`.
pub fn resolve_service_ref<'a>(reference: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    match reference.split_once('.') {
        Some((name, ns)) => (name, ns),
        None => (reference, namespace),
    }
}
