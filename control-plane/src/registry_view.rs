//! The registry as discovery compiles it: the instances of each service at
//! one committed registry revision, swapped in whole like the config.

use std::collections::BTreeMap;
use std::sync::Arc;
use xds_proto::v1 as pb;

/// The instances of one service, ordered by instance id.
pub type ServiceInstances = Arc<[Arc<pb::Instance>]>;

#[derive(Debug, Default, Clone)]
pub struct RegistryView {
    pub revision: u64,
    /// namespace → service → instances.
    services: BTreeMap<String, BTreeMap<String, ServiceInstances>>,
}

impl RegistryView {
    pub fn instances(&self, namespace: &str, service: &str) -> &[Arc<pb::Instance>] {
        self.services
            .get(namespace)
            .and_then(|s| s.get(service))
            .map(|i| &i[..])
            .unwrap_or(&[])
    }

    /// A copy with one service's instances replaced (an empty list removes
    /// the service).
    pub(crate) fn set(&mut self, namespace: &str, service: &str, instances: ServiceInstances) {
        if instances.is_empty() {
            if let Some(ns) = self.services.get_mut(namespace) {
                ns.remove(service);
                if ns.is_empty() {
                    self.services.remove(namespace);
                }
            }
        } else {
            self.services
                .entry(namespace.to_string())
                .or_default()
                .insert(service.to_string(), instances);
        }
    }

    pub fn len(&self) -> usize {
        self.services
            .values()
            .flat_map(|s| s.values())
            .map(|i| i.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}
