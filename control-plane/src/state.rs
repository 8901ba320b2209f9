//! The live configuration: the stored objects at the current revision and
//! the apply / delete transactions that change them (validate all, store
//! all, then swap). Each change is handed to `publish`, which debounces it
//! onto the discovery streams.

use crate::config::{self, validate, ConfigError, ConfigSet, Object, ObjectKey};
use crate::publish::{Published, Publisher};
use crate::store::{EmbeddedStore, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a change did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub key: ObjectKey,
    pub action: &'static str,
}

pub struct ConfigState {
    store: Arc<EmbeddedStore>,
    publisher: Arc<Publisher>,
    writer: tokio::sync::Mutex<()>,
}

impl ConfigState {
    /// Loads the stored config and starts the publisher, which publishes on
    /// the returned watch channel at most `debounce` after a change.
    pub fn start(
        store: Arc<EmbeddedStore>,
        debounce: Duration,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Published>>), StoreError> {
        let initial = Arc::new(store.load()?);
        let (publisher, published) = Publisher::start(initial, debounce);
        let state = Arc::new(ConfigState {
            store,
            publisher,
            writer: tokio::sync::Mutex::new(()),
        });
        Ok((state, published))
    }

    pub fn current(&self) -> Arc<ConfigSet> {
        self.publisher.config()
    }

    /// The publisher config changes go to (the registry publishes on it too).
    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }

    /// Validates and stores every object of `documents` (source, yaml), or
    /// nothing. `dry_run` validates only.
    pub async fn apply(
        &self,
        documents: &[(String, String)],
        dry_run: bool,
    ) -> Result<(Vec<Outcome>, u64), ApplyError> {
        let incoming = parse_off_runtime(documents).await?;
        let _guard = self.writer.lock().await;
        let current = self.current();
        let mut next = (*current).clone();
        let mut origin = BTreeMap::new();
        let mut outcomes = Vec::new();
        for l in &incoming {
            let key = l.object.key();
            if let Some((src, doc)) = origin.get(&key) {
                return Err(l
                    .error(
                        "metadata.name",
                        format!("duplicate: {key} is also defined in {src} document {doc}"),
                    )
                    .into());
            }
            origin.insert(key.clone(), (l.source_name.clone(), l.document));
            let action = match current.objects.get(&key) {
                None => "created",
                Some(old) if *old == l.object => "unchanged",
                Some(_) => "configured",
            };
            outcomes.push(Outcome {
                key: key.clone(),
                action,
            });
            next.objects.insert(key, l.object.clone());
        }
        validate::check_set(&next, &origin)?;
        let upserts: Vec<&Object> = incoming
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.action != "unchanged")
            .map(|(l, _)| &l.object)
            .collect();
        if dry_run || upserts.is_empty() {
            return Ok((outcomes, current.revision));
        }
        next.revision = current.revision + 1;
        self.store.commit(next.revision, &upserts, &[])?;
        let revision = next.revision;
        self.publisher.set_config(Arc::new(next));
        Ok((outcomes, revision))
    }

    /// Deletes the objects named in `documents`, or nothing if any is missing
    /// or still referenced.
    pub async fn delete(
        &self,
        documents: &[(String, String)],
    ) -> Result<(Vec<Outcome>, u64), ApplyError> {
        let named = parse_off_runtime(documents).await?;
        let _guard = self.writer.lock().await;
        let current = self.current();
        let mut next = (*current).clone();
        let mut keys = Vec::new();
        for l in &named {
            let key = l.object.key();
            if next.objects.remove(&key).is_none() && !keys.contains(&key) {
                return Err(l.error("metadata.name", format!("{key} not found")).into());
            }
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        validate::check_set(&next, &BTreeMap::new()).map_err(|mut e| {
            e.reason = format!(
                "{} (it is still referenced; delete or change the referencing object first)",
                e.reason
            );
            e
        })?;
        if keys.is_empty() {
            return Ok((vec![], current.revision));
        }
        next.revision = current.revision + 1;
        self.store.commit(next.revision, &[], &keys)?;
        let revision = next.revision;
        self.publisher.set_config(Arc::new(next));
        let outcomes = keys
            .into_iter()
            .map(|key| Outcome {
                key,
                action: "deleted",
            })
            .collect();
        Ok((outcomes, revision))
    }
}

/// Longest one apply's parsing may take.
const PARSE_DEADLINE: Duration = Duration::from_secs(10);

/// Parses `documents` on the blocking pool, so a large or hostile file never
/// holds the runtime that serves discovery streams and `/ready`, within
/// `PARSE_DEADLINE`.
async fn parse_off_runtime(
    documents: &[(String, String)],
) -> Result<Vec<config::Located>, ConfigError> {
    let documents = documents.to_vec();
    let parsed = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (source, yaml) in &documents {
            out.extend(config::parse_documents(source, yaml)?);
        }
        Ok(out)
    });
    let failed = |reason: String| ConfigError {
        source_name: "apply".into(),
        document: 0,
        object: None,
        field: String::new(),
        reason,
    };
    match tokio::time::timeout(PARSE_DEADLINE, parsed).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(failed(format!("parser failed: {e}"))),
        Err(_) => Err(failed(format!(
            "parsing took longer than {PARSE_DEADLINE:?}; split the file"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80, protocol: http}]}\n";
    const ROUTE: &str = "apiVersion: weft.dev/v1\nkind: Route\nmetadata: {name: r}\nspec: {hosts: [api], http: [{destination: {service: api, port: 80}}]}\n";

    fn docs(y: &str) -> Vec<(String, String)> {
        vec![("f.yaml".into(), y.into())]
    }

    #[tokio::test]
    async fn rejected_apply_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _rx) = ConfigState::start(
            Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            Duration::from_millis(5),
        )
        .unwrap();
        // The route is valid on its own, but the second document is broken:
        // neither may land.
        let bad = format!("{SVC}---\n{}", ROUTE.replace("port: 80}", "port: 81}"));
        let err = state.apply(&docs(&bad), false).await.unwrap_err();
        assert!(
            err.to_string().contains("spec.http[0].destination.port"),
            "{err}"
        );
        assert!(state.current().objects.is_empty());
        assert_eq!(state.current().revision, 0);
    }

    #[tokio::test]
    async fn apply_reports_created_configured_unchanged_and_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let (state, mut rx) = ConfigState::start(
            Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            Duration::from_millis(5),
        )
        .unwrap();
        let (o, rev) = state
            .apply(&docs(&format!("{SVC}---\n{ROUTE}")), false)
            .await
            .unwrap();
        assert_eq!(rev, 1);
        assert!(o.iter().all(|o| o.action == "created"));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().config.revision, 1);
        let (o, rev) = state.apply(&docs(SVC), false).await.unwrap();
        assert_eq!((o[0].action, rev), ("unchanged", 1));
        let (o, rev) = state
            .apply(
                &docs(&SVC.replace(
                    "80, protocol: http}",
                    "80, protocol: http}, {port: 81, protocol: tcp}",
                )),
                false,
            )
            .await
            .unwrap();
        assert_eq!((o[0].action, rev), ("configured", 2));
    }

    #[tokio::test]
    async fn deleting_a_referenced_service_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _rx) = ConfigState::start(
            Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            Duration::from_millis(5),
        )
        .unwrap();
        state
            .apply(&docs(&format!("{SVC}---\n{ROUTE}")), false)
            .await
            .unwrap();
        let err = state.delete(&docs(SVC)).await.unwrap_err();
        assert!(err.to_string().contains("still referenced"), "{err}");
        assert_eq!(state.current().objects.len(), 2);
        state
            .delete(&docs(&format!("{ROUTE}---\n{SVC}")))
            .await
            .unwrap();
        assert!(state.current().objects.is_empty());
    }

    #[tokio::test]
    async fn duplicate_objects_in_one_apply_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _rx) = ConfigState::start(
            Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            Duration::from_millis(5),
        )
        .unwrap();
        let err = state
            .apply(&docs(&format!("{SVC}---\n{SVC}")), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[tokio::test]
    async fn a_burst_of_applies_is_folded_into_fewer_publications() {
        let dir = tempfile::tempdir().unwrap();
        let (state, mut rx) = ConfigState::start(
            Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            Duration::from_millis(500),
        )
        .unwrap();
        for port in 1..=5 {
            let yaml = SVC.replace("port: 80", &format!("port: {port}"));
            state.apply(&docs(&yaml), false).await.unwrap();
        }
        let mut publications = 0;
        let mut last = 0;
        while last < 5 {
            tokio::time::timeout(Duration::from_secs(2), rx.changed())
                .await
                .expect("published within the bound")
                .unwrap();
            publications += 1;
            last = rx.borrow_and_update().config.revision;
        }
        assert!(
            publications < 5,
            "{publications} publications for 5 changes"
        );
    }
}
