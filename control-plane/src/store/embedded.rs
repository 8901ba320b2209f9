//! Single-file embedded store (redb). One table of objects keyed
//! `Kind/namespace/name` → JSON, one of metadata (the revision). Every apply
//! is one write transaction: all of it lands or none of it does.

use super::StoreError;
use crate::config::{ConfigSet, Object, ObjectKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

pub struct EmbeddedStore {
    pub(super) db: Database,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (creating if missing) `<dir>/weft.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("weft.redb");
        let err = |m: String| StoreError::Backend {
            path: path.display().to_string(),
            message: m,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create data dir: {e}")))?;
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        let store = EmbeddedStore { db, path };
        // Make sure the tables exist so the first read does not fail.
        let txn = store.db.begin_write().map_err(|e| store.err(e))?;
        txn.open_table(OBJECTS).map_err(|e| store.err(e))?;
        txn.open_table(META).map_err(|e| store.err(e))?;
        txn.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    pub(super) fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Loads the whole configuration.
    pub fn load(&self) -> Result<ConfigSet, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let revision = meta
            .get(REVISION)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = txn.open_table(OBJECTS).map_err(|e| self.err(e))?;
        let mut set = ConfigSet {
            revision,
            ..Default::default()
        };
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let object: Object =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    key: k.value().to_string(),
                    message: e.to_string(),
                })?;
            set.objects.insert(object.key(), object);
        }
        Ok(set)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `upserts`, removes `deletes` and sets the revision, atomically,
    /// if the stored revision is still `expected`.
    pub fn commit(
        &self,
        expected: u64,
        revision: u64,
        upserts: &[&Object],
        deletes: &[ObjectKey],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let stored = txn
                .open_table(META)
                .map_err(|e| self.err(e))?
                .get(REVISION)
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            if stored != expected {
                return Err(StoreError::Conflict {
                    expected,
                    found: stored,
                });
            }
            let mut table = txn.open_table(OBJECTS).map_err(|e| self.err(e))?;
            for o in upserts {
                let bytes = serde_json::to_vec(o).map_err(|e| self.err(e))?;
                table
                    .insert(o.key().storage_key().as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for k in deletes {
                table
                    .remove(k.storage_key().as_str())
                    .map_err(|e| self.err(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(REVISION, revision).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_documents;

    #[test]
    fn committed_objects_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let objs = parse_documents("t", "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: http}]}\n").unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.commit(0, 7, &[&objs[0].object], &[]).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let set = store.load().unwrap();
        assert_eq!(set.revision, 7);
        assert_eq!(
            set.objects.get(&objs[0].object.key()),
            Some(&objs[0].object)
        );
        let e = store
            .commit(6, 8, &[], &[objs[0].object.key()])
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Conflict {
                    expected: 6,
                    found: 7
                }
            ),
            "{e}"
        );
        store.commit(7, 8, &[], &[objs[0].object.key()]).unwrap();
        assert!(store.load().unwrap().objects.is_empty());
    }
}
