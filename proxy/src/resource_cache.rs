//! Every resource received on the discovery stream, by type and name: the
//! input every snapshot is built from. A push is applied to a copy
//! (full-state or incremental); an unsupported type refuses the push.

use std::collections::BTreeMap;
use xds_proto::type_url;
use xds_proto::v1 as pb;

/// Every resource received on the stream, by type and name.
#[derive(Debug, Clone, Default)]
pub struct ResourceCache {
    resources: BTreeMap<(String, String), pb::Resource>,
}

impl ResourceCache {
    /// Applies a push: `full_state` replaces everything; otherwise changed
    /// resources are upserted and removed names dropped. Unknown types are
    /// refused so the control plane learns this proxy cannot use them.
    /// The push is consumed: its resources move into the new cache rather
    /// than being copied (a large push is never held twice).
    pub fn apply(&self, push: pb::DiscoveryResponse) -> Result<ResourceCache, String> {
        if let Some(r) = push
            .resources
            .iter()
            .find(|r| !type_url::SUPPORTED.contains(&r.type_url.as_str()))
        {
            return Err(format!(
                "resource \"{}\": unsupported type \"{}\"",
                r.name, r.type_url
            ));
        }
        let mut next = if push.full_state {
            ResourceCache::default()
        } else {
            self.clone()
        };
        for r in push.resources {
            next.resources
                .insert((r.type_url.clone(), r.name.clone()), r);
        }
        for r in push.removed {
            next.resources.remove(&(r.type_url, r.name));
        }
        Ok(next)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&pb::Resource> {
        self.resources
            .get(&(type_url.to_string(), name.to_string()))
    }

    pub fn of<'a>(
        &'a self,
        type_url: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a pb::Resource)> + 'a {
        self.resources
            .iter()
            .filter(move |((t, _), _)| t == type_url)
            .map(|((_, n), r)| (n.as_str(), r))
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}
