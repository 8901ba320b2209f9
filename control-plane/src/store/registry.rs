//! The service registry's tables in the embedded store: instances (key
//! `namespace/service/instance_id` → `StoredInstance`), the event log
//! (revision → `InstanceEvent`, the last `EVENT_RETENTION` kept so watchers
//! can resume) and the registry revision. A batch of changes is one write
//! transaction (group commit).

use super::embedded::META;
use super::{EmbeddedStore, StoreError};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use xds_proto::v1 as pb;

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("registry_instances");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("registry_events");
const REVISION: &str = "registry_revision";

/// How many events the log keeps; a watcher further behind gets a snapshot.
pub const EVENT_RETENTION: u64 = 100_000;

/// What the registry holds at start.
#[derive(Debug, Default)]
pub struct StoredRegistry {
    pub revision: u64,
    pub instances: Vec<pb::StoredInstance>,
}

/// One change of a batch: the instance's new stored form (None: removed),
/// and the event it made (None: a change watchers do not see, e.g. a new
/// lease id for an unchanged instance).
#[derive(Debug, Clone)]
pub struct RegistryWrite {
    pub key: String,
    pub stored: Option<pb::StoredInstance>,
    pub event: Option<pb::InstanceEvent>,
}

pub fn instance_key(namespace: &str, service: &str, instance_id: &str) -> String {
    format!("{namespace}/{service}/{instance_id}")
}

impl EmbeddedStore {
    pub fn load_registry(&self) -> Result<StoredRegistry, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let revision = match txn.open_table(META) {
            Ok(meta) => meta
                .get(REVISION)
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(self.err(e)),
        };
        let table = match txn.open_table(INSTANCES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(StoredRegistry {
                    revision,
                    instances: vec![],
                })
            }
            Err(e) => return Err(self.err(e)),
        };
        let mut instances = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let stored =
                pb::StoredInstance::decode(v.value()).map_err(|e| StoreError::Corrupt {
                    key: format!("registry/{}", k.value()),
                    message: e.to_string(),
                })?;
            instances.push(stored);
        }
        Ok(StoredRegistry {
            revision,
            instances,
        })
    }

    /// Writes a batch and the revision it brings the registry to, and drops
    /// events older than the retention, in one transaction.
    pub fn commit_registry(
        &self,
        revision: u64,
        batch: &[RegistryWrite],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            for w in batch {
                match &w.stored {
                    Some(s) => {
                        instances
                            .insert(w.key.as_str(), s.encode_to_vec().as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    None => {
                        instances.remove(w.key.as_str()).map_err(|e| self.err(e))?;
                    }
                }
                if let Some(ev) = &w.event {
                    events
                        .insert(ev.revision, ev.encode_to_vec().as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            if revision > EVENT_RETENTION {
                events
                    .retain_in(..revision - EVENT_RETENTION, |_, _| false)
                    .map_err(|e| self.err(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(REVISION, revision).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` logged events after `after`, oldest first, and whether
    /// the log still reaches back to `after + 1` (false: it was pruned).
    pub fn registry_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<pb::InstanceEvent>, bool), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((vec![], after == 0)),
            Err(e) => return Err(self.err(e)),
        };
        let oldest = events
            .first()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value());
        let complete = match oldest {
            Some(o) => o <= after + 1,
            None => true,
        };
        let mut out = Vec::new();
        for row in events.range(after + 1..).map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let ev = pb::InstanceEvent::decode(v.value()).map_err(|e| StoreError::Corrupt {
                key: format!("registry event {}", k.value()),
                message: e.to_string(),
            })?;
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
        Ok((out, complete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(rev: u64, id: &str, keep: bool) -> RegistryWrite {
        let instance = pb::Instance {
            namespace: "shop".into(),
            service: "cart".into(),
            instance_id: id.into(),
            address: "127.0.0.9".into(),
            revision: rev,
            ..Default::default()
        };
        RegistryWrite {
            key: instance_key("shop", "cart", id),
            stored: keep.then(|| pb::StoredInstance {
                instance: Some(instance.clone()),
                reported_health: pb::Health::Passing as i32,
                reported_reason: String::new(),
                ..Default::default()
            }),
            event: Some(pb::InstanceEvent {
                revision: rev,
                r#type: if keep {
                    pb::EventType::Added
                } else {
                    pb::EventType::Removed
                } as i32,
                instance: Some(instance),
            }),
        }
    }

    #[test]
    fn instances_and_events_survive_reopen_and_events_resume_after_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .commit_registry(2, &[write(1, "a", true), write(2, "b", true)])
                .unwrap();
            store.commit_registry(3, &[write(3, "a", false)]).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let loaded = store.load_registry().unwrap();
        assert_eq!(loaded.revision, 3);
        let ids: Vec<_> = loaded
            .instances
            .iter()
            .map(|s| s.instance.as_ref().unwrap().instance_id.as_str())
            .collect();
        assert_eq!(ids, vec!["b"]);
        let (events, complete) = store.registry_events_after(1, 100).unwrap();
        assert!(complete);
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let (events, _) = store.registry_events_after(0, 1).unwrap();
        assert_eq!(events.len(), 1, "the limit caps one read");
    }

    #[test]
    fn a_fresh_store_has_an_empty_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let loaded = store.load_registry().unwrap();
        assert_eq!((loaded.revision, loaded.instances.len()), (0, 0));
        assert_eq!(store.registry_events_after(0, 10).unwrap(), (vec![], true));
    }
}
