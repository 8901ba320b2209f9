//! The live configuration: the stored objects at the current revision and
//! the apply / delete transactions that change them (validate all, store
//! all, then swap). Each change is handed to `publish`, which debounces it
//! onto the discovery streams.

use crate::config::{self, validate, ConfigError, ConfigSet, Object, ObjectKey};
use crate::publish::{Published, Publisher};
use crate::store::{ConfigStore, StoreError};
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
    store: Arc<dyn ConfigStore>,
    publisher: Arc<Publisher>,
    writer: tokio::sync::Mutex<()>,
}

impl ConfigState {
    /// Loads the stored config and starts the publisher, which publishes on
    /// the returned watch channel at most `debounce` after a change.
    /// Other replicas' commits are followed through the store's watch.
    pub async fn start(
        store: Arc<dyn ConfigStore>,
        debounce: Duration,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Published>>), StoreError> {
        let initial = Arc::new(store.load().await?);
        let (publisher, published) = Publisher::start(initial, debounce);
        let changes = store.watch();
        let state = Arc::new(ConfigState {
            store,
            publisher,
            writer: tokio::sync::Mutex::new(()),
        });
        if let Some(changes) = changes {
            tokio::spawn(state.clone().follow(changes));
        }
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
    /// nothing. `dry_run` validates only. If another replica changed the
    /// config meanwhile, the apply is planned again on its revision.
    pub async fn apply(
        &self,
        documents: &[(String, String)],
        dry_run: bool,
    ) -> Result<(Vec<Outcome>, u64), ApplyError> {
        let incoming = parse_off_runtime(documents).await?;
        let _guard = self.writer.lock().await;
        let mut attempt = 0;
        loop {
            let current = self.current();
            let (next, outcomes) = plan_apply(&current, &incoming)?;
            let upserts: Vec<&Object> = incoming
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| o.action != "unchanged")
                .map(|(l, _)| &l.object)
                .collect();
            if dry_run || upserts.is_empty() {
                return Ok((outcomes, current.revision));
            }
            match self
                .commit(&current, next, &upserts, &[], &mut attempt)
                .await?
            {
                Some(revision) => return Ok((outcomes, revision)),
                None => continue,
            }
        }
    }

    /// Deletes the objects named in `documents`, or nothing if any is missing
    /// or still referenced.
    pub async fn delete(
        &self,
        documents: &[(String, String)],
    ) -> Result<(Vec<Outcome>, u64), ApplyError> {
        let named = parse_off_runtime(documents).await?;
        let _guard = self.writer.lock().await;
        let mut attempt = 0;
        loop {
            let current = self.current();
            let (next, keys) = plan_delete(&current, &named)?;
            if keys.is_empty() {
                return Ok((vec![], current.revision));
            }
            if let Some(revision) = self
                .commit(&current, next, &[], &keys, &mut attempt)
                .await?
            {
                let outcomes = keys
                    .into_iter()
                    .map(|key| Outcome {
                        key,
                        action: "deleted",
                    })
                    .collect();
                return Ok((outcomes, revision));
            }
        }
    }

    /// Stores `next` as the revision after `current`'s. Some(revision) when
    /// stored; None when another writer got there first and the caller
    /// should plan again on what is stored now (at most `CONFLICT_RETRIES`
    /// times, then the conflict is the error).
    async fn commit(
        &self,
        current: &ConfigSet,
        mut next: ConfigSet,
        upserts: &[&Object],
        deletes: &[ObjectKey],
        attempt: &mut u32,
    ) -> Result<Option<u64>, ApplyError> {
        next.revision = current.revision + 1;
        match self
            .store
            .commit(current.revision, next.revision, upserts, deletes)
            .await
        {
            Ok(()) => {
                let revision = next.revision;
                self.publisher.set_config(Arc::new(next));
                Ok(Some(revision))
            }
            Err(StoreError::Conflict { .. }) if *attempt < CONFLICT_RETRIES => {
                *attempt += 1;
                metrics::counter!("weft_control_apply_conflicts_total").increment(1);
                self.reload().await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Loads what the store holds now, if it is newer than what is live.
    async fn reload(&self) -> Result<(), StoreError> {
        let stored = self.store.load().await?;
        if stored.revision > self.current().revision {
            tracing::info!(revision = stored.revision, store = %self.store.describe(), "config changed by another replica");
            self.publisher.set_config(Arc::new(stored));
        }
        Ok(())
    }

    /// Follows revisions other replicas commit (the store's watch).
    async fn follow(self: Arc<Self>, mut revisions: tokio::sync::mpsc::Receiver<u64>) {
        while let Some(revision) = revisions.recv().await {
            if revision <= self.current().revision {
                continue;
            }
            let _guard = self.writer.lock().await;
            if revision <= self.current().revision {
                continue;
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, revision, "cannot load the config another replica stored");
            }
        }
    }
}

/// Times an apply is planned again after another replica's commit.
const CONFLICT_RETRIES: u32 = 3;

/// The config after applying `incoming` to `current`, and what happened to
/// each object.
fn plan_apply(
    current: &ConfigSet,
    incoming: &[config::Located],
) -> Result<(ConfigSet, Vec<Outcome>), ApplyError> {
    let mut next = current.clone();
    let mut origin = BTreeMap::new();
    let mut outcomes = Vec::new();
    for l in incoming {
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
    Ok((next, outcomes))
}

/// The config without the objects `named`, and their keys.
fn plan_delete(
    current: &ConfigSet,
    named: &[config::Located],
) -> Result<(ConfigSet, Vec<ObjectKey>), ApplyError> {
    let mut next = current.clone();
    let mut keys = Vec::new();
    for l in named {
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
    Ok((next, keys))
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
    use crate::store::EmbeddedStore;

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
        .await
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
        .await
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
        .await
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
        .await
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
        .await
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
