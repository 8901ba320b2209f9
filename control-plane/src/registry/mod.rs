//! The mesh's service registry (`weft.v1.Registry`): instances registered
//! under leases, renewed by heartbeats, expired and evicted when their
//! workloads go away (`expiry`, with self-preservation), stored in the
//! control plane's store (group commit: a burst of registrations is one
//! write) and published to discovery as a `RegistryView` that `compile`
//! merges into each service's endpoints (`registry_view`). Watchers get every change with a
//! monotonic revision (`watch`). The gRPC surface is `service`, field rules
//! `validate`.

mod expiry;
mod mirror;
mod service;
mod shared;
mod upkeep;
mod validate;
mod watch;

pub use crate::registry_view::RegistryView;
pub use service::RegistryService;

use crate::publish::Publisher;
use crate::store::registry::{instance_key, RegistryWrite};
use crate::store::{EmbeddedStore, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, Notify};
use xds_proto::v1 as pb;

/// namespace, service, instance id.
pub(crate) type Key = (String, String, String);

/// Lease and eviction settings (`weft-control --registry-*` flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long an expired (critical) instance stays listed before removal.
    pub grace: Duration,
    /// Self-preservation: the share of a service's instances that may go
    /// quiet at once before the rest are kept instead of expired.
    pub preserve_share: f64,
    /// The longest self-preservation keeps an instance.
    pub preserve_max: Duration,
    /// The longest Deregister waits for proxies to apply the removal.
    pub deregister_wait: Duration,
    /// Most instances the registry holds.
    pub max_instances: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_ttl: Duration::from_secs(10),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
            preserve_share: 0.5,
            preserve_max: Duration::from_secs(900),
            deregister_wait: Duration::from_secs(5),
            max_instances: 100_000,
        }
    }
}

/// What keeps an instance's lease alive, as far as the control plane knows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lease {
    Live,
    /// No heartbeat for the TTL: critical since then.
    Expired {
        since: Instant,
    },
    /// No heartbeat for the TTL, with most of its service: kept as warning.
    Preserved {
        since: Instant,
        silent: usize,
        total: usize,
    },
}

struct Entry {
    /// As callers and watchers see it (health is the effective one).
    instance: Arc<pb::Instance>,
    /// The health its workload last reported.
    reported: (pb::Health, String),
    lease: Lease,
    last_beat: Instant,
    /// Shared (etcd) store only: what the mirror knows of the stored key.
    shared: mirror::EntryState,
}

impl Entry {
    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.instance.ttl_ms))
    }

    /// The health the lease state gives the reported one.
    fn effective(&self) -> (pb::Health, String) {
        match &self.lease {
            Lease::Live => self.reported.clone(),
            Lease::Expired { .. } => (
                pb::Health::Critical,
                format!(
                    "lease expired: no heartbeat for {} ms",
                    self.instance.ttl_ms
                ),
            ),
            Lease::Preserved { silent, total, .. } => (
                pb::Health::Warning,
                format!(
                    "self-preservation: {silent} of {total} instances of the service stopped heartbeating at once; kept"
                ),
            ),
        }
    }

    fn stored(&self) -> pb::StoredInstance {
        pb::StoredInstance {
            instance: Some((*self.instance).clone()),
            reported_health: self.reported.0 as i32,
            reported_reason: self.reported.1.clone(),
            ..Default::default()
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The revision of the latest change (committed or pending).
    revision: u64,
    entries: BTreeMap<Key, Entry>,
    leases: HashMap<String, Key>,
    pending: Vec<RegistryWrite>,
    /// Services changed since the view was last built.
    dirty: BTreeSet<(String, String)>,
    /// A write failed; renew every lease once the store is back.
    store_down: bool,
    /// Shared (etcd) store only: the lease ids whose liveness key exists.
    alive: std::collections::HashSet<String>,
}

impl Inner {
    /// Records a change of `key` (already applied to `entries`; None:
    /// removed) as the next revision.
    fn changed(&mut self, key: &Key, ty: pb::EventType, removed: Option<Entry>) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        self.dirty.insert((key.0.clone(), key.1.clone()));
        let skey = instance_key(&key.0, &key.1, &key.2);
        let write = match self.entries.get_mut(key) {
            Some(e) => {
                Arc::make_mut(&mut e.instance).revision = revision;
                RegistryWrite {
                    key: skey,
                    stored: Some(e.stored()),
                    event: (ty != pb::EventType::Unspecified).then(|| pb::InstanceEvent {
                        revision,
                        r#type: ty as i32,
                        instance: Some((*e.instance).clone()),
                    }),
                }
            }
            None => {
                let mut instance = removed.map(|e| (*e.instance).clone()).unwrap_or_default();
                instance.revision = revision;
                RegistryWrite {
                    key: skey,
                    stored: None,
                    event: Some(pb::InstanceEvent {
                        revision,
                        r#type: pb::EventType::Removed as i32,
                        instance: Some(instance),
                    }),
                }
            }
        };
        self.pending.push(write);
        revision
    }

    /// Sets the effective health from the lease state; records a HEALTH
    /// event if it changed. Returns whether it did.
    fn refresh_health(&mut self, key: &Key, now_ms: i64) -> bool {
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        let (health, reason) = e.effective();
        if e.instance.health == health as i32 && e.instance.health_reason == reason {
            return false;
        }
        let i = Arc::make_mut(&mut e.instance);
        i.health = health as i32;
        i.health_reason = reason;
        i.health_changed_unix_ms = now_ms;
        self.changed(key, pb::EventType::Health, None);
        true
    }

    fn remove(&mut self, key: &Key) -> Option<u64> {
        let e = self.entries.remove(key)?;
        self.leases.remove(&e.instance.lease_id);
        Some(self.changed(key, pb::EventType::Removed, Some(e)))
    }
}

/// Where the registry keeps its instances.
enum Backend {
    /// This replica's redb file: the registry in memory is the truth, and
    /// the writer stores its changes.
    Embedded(Arc<EmbeddedStore>),
    /// etcd, shared by the replicas: each mirrors the stored keys and
    /// writes through transactions (`shared`).
    Shared(Box<shared::Shared>),
}

pub struct Registry {
    inner: Mutex<Inner>,
    backend: Backend,
    publisher: Arc<Publisher>,
    settings: Settings,
    /// Batches of events, after they are stored.
    events: broadcast::Sender<Arc<Vec<pb::InstanceEvent>>>,
    /// The revision stored so far.
    committed: tokio::sync::watch::Sender<u64>,
    flush: Notify,
}

fn now_ms() -> i64 {
    xds_proto::units::unix_ms(SystemTime::now()) as i64
}

/// Why a registry call was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "lease {0} is not known (it expired and was removed, or was deregistered): register again"
    )]
    UnknownLease(String),
    #[error("lease {lease} belongs to {owner}, not to {caller}")]
    NotYours {
        lease: String,
        owner: String,
        caller: String,
    },
    #[error("instance.instance_id: \"{id}\" is already registered for {namespace}/{service} at {address} by {owner}; deregister it first or choose another instance id")]
    Duplicate {
        id: String,
        namespace: String,
        service: String,
        address: String,
        owner: String,
    },
    #[error("the registry holds its maximum of {0} instances")]
    Full(usize),
    #[error("the store did not confirm the change within {0:?}: {1}")]
    NotStored(Duration, String),
    #[error("{0}")]
    Store(String),
    #[error("{0} kept changing on other replicas while this one tried to write it; try again")]
    Contended(String),
}

/// What a registration did.
#[derive(Debug)]
pub struct Registered {
    pub lease_id: String,
    pub ttl: Duration,
    pub revision: u64,
    pub action: &'static str,
}

impl Registry {
    /// Loads the stored instances, gives every lease a fresh TTL (the
    /// control plane could not hear heartbeats while it was down), and
    /// starts the writer and the expiry sweep.
    pub fn start(
        store: Arc<EmbeddedStore>,
        publisher: Arc<Publisher>,
        settings: Settings,
    ) -> Result<Arc<Self>, StoreError> {
        let stored = store.load_registry()?;
        let now = Instant::now();
        let mut inner = Inner {
            revision: stored.revision,
            ..Default::default()
        };
        for s in stored.instances {
            inner.put(s, now);
        }
        // An instance shown critical for an expired lease is live again
        // (fresh TTL); tell watchers.
        let keys: Vec<Key> = inner.entries.keys().cloned().collect();
        let ms = now_ms();
        let renewed = keys.iter().filter(|k| inner.refresh_health(k, ms)).count();
        tracing::info!(
            instances = inner.entries.len(),
            revision = stored.revision,
            renewed,
            "registry loaded; every lease renewed"
        );
        let registry = Registry::new(inner, Backend::Embedded(store), publisher, settings);
        registry.publish_view();
        tokio::spawn(upkeep::writer(registry.clone()));
        tokio::spawn(upkeep::sweeper(Arc::downgrade(&registry)));
        registry.flush.notify_one();
        Ok(registry)
    }

    fn new(
        inner: Inner,
        backend: Backend,
        publisher: Arc<Publisher>,
        settings: Settings,
    ) -> Arc<Self> {
        let committed = inner.revision;
        Arc::new(Registry {
            inner: Mutex::new(inner),
            backend,
            publisher,
            settings,
            events: broadcast::channel(1024).0,
            committed: tokio::sync::watch::channel(committed).0,
            flush: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later calls could not cope with; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The latest revision (stored or about to be).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Registers `instance` (validated and authorized by the caller) for
    /// `owner`; answers once it is stored.
    pub async fn register(
        &self,
        mut instance: pb::Instance,
        ttl: Duration,
        health: (pb::Health, String),
        owner: &str,
    ) -> Result<Registered, RegistryError> {
        if let Backend::Shared(shared) = &self.backend {
            return self
                .register_shared(shared, instance, ttl, health, owner)
                .await;
        }
        let (revision, registered) = {
            let mut inner = self.lock();
            let key = key_of(&instance);
            let now = Instant::now();
            let lease_id = new_lease_id();
            let (ty, action) = self.admit(&inner, &mut instance, ttl, &health, owner, &lease_id)?;
            if let Some(old) = inner.entries.get(&key).map(|p| p.instance.lease_id.clone()) {
                inner.leases.remove(&old);
            }
            inner.leases.insert(lease_id.clone(), key.clone());
            inner.entries.insert(
                key.clone(),
                Entry {
                    instance: Arc::new(instance),
                    reported: health,
                    lease: Lease::Live,
                    last_beat: now,
                    shared: Default::default(),
                },
            );
            let revision = inner.changed(&key, ty, None);
            (
                revision,
                Registered {
                    lease_id,
                    ttl,
                    revision,
                    action,
                },
            )
        };
        metrics::counter!("weft_control_registry_registrations_total", "action" => registered.action).increment(1);
        self.flush.notify_one();
        self.stored(revision).await?;
        Ok(registered)
    }

    /// Checks a registration of `instance` against what is registered (a
    /// duplicate id, a full registry) and fills in the fields the control
    /// plane owns; the event it makes and what it did.
    fn admit(
        &self,
        inner: &Inner,
        instance: &mut pb::Instance,
        ttl: Duration,
        health: &(pb::Health, String),
        owner: &str,
        lease_id: &str,
    ) -> Result<(pb::EventType, &'static str), RegistryError> {
        let key = key_of(instance);
        let ms = now_ms();
        let previous = inner.entries.get(&key);
        if let Some(p) = previous {
            let same_workload =
                p.instance.registered_by == owner && p.instance.address == instance.address;
            // Another workload may take over the id only once the holder's
            // lease has run out.
            if !same_workload && !matches!(p.lease, Lease::Expired { .. }) {
                return Err(RegistryError::Duplicate {
                    id: key.2.clone(),
                    namespace: key.0.clone(),
                    service: key.1.clone(),
                    address: p.instance.address.clone(),
                    owner: p.instance.registered_by.clone(),
                });
            }
        } else if inner.entries.len() >= self.settings.max_instances {
            return Err(RegistryError::Full(self.settings.max_instances));
        }
        instance.lease_id = lease_id.to_string();
        instance.ttl_ms = ttl.as_millis().min(u128::from(u32::MAX)) as u32;
        instance.registered_by = owner.to_string();
        instance.last_heartbeat_unix_ms = ms;
        instance.health = health.0 as i32;
        instance.health_reason = health.1.clone();
        Ok(match previous {
            None => {
                instance.registered_unix_ms = ms;
                instance.health_changed_unix_ms = ms;
                (pb::EventType::Added, "created")
            }
            Some(p) => {
                instance.registered_unix_ms = p.instance.registered_unix_ms;
                instance.health_changed_unix_ms = if p.instance.health == instance.health {
                    p.instance.health_changed_unix_ms
                } else {
                    ms
                };
                let same = {
                    let mut a = (*p.instance).clone();
                    let mut b = instance.clone();
                    for i in [&mut a, &mut b] {
                        i.lease_id.clear();
                        i.last_heartbeat_unix_ms = 0;
                        i.revision = 0;
                    }
                    a == b
                };
                if same {
                    // Only the lease changed: stored, not an event.
                    (pb::EventType::Unspecified, "unchanged")
                } else {
                    (pb::EventType::Modified, "replaced")
                }
            }
        })
    }

    /// Renews a lease (and records a reported health change). `caller`:
    /// the SPIFFE ID of the caller, None for the admin identity (or an
    /// unauthenticated --insecure-dev caller), who may renew any lease.
    pub fn heartbeat(
        &self,
        lease_id: &str,
        health: Option<(pb::Health, String)>,
        caller: Option<&str>,
    ) -> Result<(Duration, u64), RegistryError> {
        if let Backend::Shared(shared) = &self.backend {
            return self.heartbeat_shared(shared, lease_id, health, caller);
        }
        let changed;
        let result = {
            let mut inner = self.lock();
            let key = inner
                .leases
                .get(lease_id)
                .cloned()
                .ok_or_else(|| RegistryError::UnknownLease(lease_id.to_string()))?;
            let Some(e) = inner.entries.get_mut(&key) else {
                return Err(RegistryError::UnknownLease(lease_id.to_string()));
            };
            check_owner(lease_id, &e.instance, caller)?;
            e.last_beat = Instant::now();
            let mut reported_changed = false;
            if let Some(h) = health {
                if h != e.reported {
                    e.reported = h;
                    reported_changed = true;
                }
            }
            let lease_changed = e.lease != Lease::Live;
            e.lease = Lease::Live;
            let ttl = e.ttl();
            let ms = now_ms();
            changed = if lease_changed || reported_changed {
                let health_event = inner.refresh_health(&key, ms);
                if reported_changed && !health_event {
                    // The reported health is stored even when the lease
                    // state hides it.
                    inner.changed(&key, pb::EventType::Unspecified, None);
                }
                true
            } else {
                false
            };
            (ttl, inner.revision)
        };
        metrics::counter!("weft_control_registry_heartbeats_total").increment(1);
        if changed {
            self.flush.notify_one();
        }
        Ok(result)
    }

    /// Removes the instance of `lease_id`; answers once it is stored.
    pub async fn deregister(
        &self,
        lease_id: &str,
        caller: Option<&str>,
    ) -> Result<u64, RegistryError> {
        if let Backend::Shared(shared) = &self.backend {
            return self.deregister_shared(shared, lease_id, caller).await;
        }
        let revision = {
            let mut inner = self.lock();
            let key = inner
                .leases
                .get(lease_id)
                .cloned()
                .ok_or_else(|| RegistryError::UnknownLease(lease_id.to_string()))?;
            if let Some(e) = inner.entries.get(&key) {
                check_owner(lease_id, &e.instance, caller)?;
            }
            inner
                .remove(&key)
                .ok_or_else(|| RegistryError::UnknownLease(lease_id.to_string()))?
        };
        metrics::counter!("weft_control_registry_deregistrations_total").increment(1);
        self.flush.notify_one();
        self.stored(revision).await?;
        Ok(revision)
    }

    /// The instances matching the filters (empty: any), and the revision.
    pub fn list(
        &self,
        namespace: &str,
        service: &str,
        labels: &BTreeMap<String, String>,
    ) -> (Vec<pb::Instance>, u64) {
        let now = now_ms();
        let inner = self.lock();
        let out = inner
            .entries
            .iter()
            .filter(|(k, _)| {
                (namespace.is_empty() || k.0 == namespace) && (service.is_empty() || k.1 == service)
            })
            .filter(|(_, e)| {
                labels
                    .iter()
                    .all(|(k, v)| e.instance.labels.get(k) == Some(v))
            })
            .map(|(_, e)| {
                let mut i = (*e.instance).clone();
                // Heartbeats renew the lease in memory only; the time of
                // the last one is filled in here.
                i.last_heartbeat_unix_ms = now - e.last_beat.elapsed().as_millis() as i64;
                i
            })
            .collect();
        (out, inner.revision)
    }

    /// Waits until `revision` is stored.
    async fn stored(&self, revision: u64) -> Result<(), RegistryError> {
        const WAIT: Duration = Duration::from_secs(10);
        let mut rx = self.committed.subscribe();
        let waited = tokio::time::timeout(WAIT, async {
            rx.wait_for(|c| *c >= revision).await.is_ok()
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(RegistryError::NotStored(WAIT, "shutting down".into())),
            Err(_) => Err(RegistryError::NotStored(
                WAIT,
                "the store is not answering".into(),
            )),
        }
    }

    /// Subscribes to stored event batches.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<pb::InstanceEvent>>> {
        self.events.subscribe()
    }

    pub(crate) fn committed_revision(&self) -> u64 {
        *self.committed.borrow()
    }

    /// The stored events after `after` (at most about `limit`), and
    /// whether they are all there is (false: that history is gone).
    pub(crate) async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<pb::InstanceEvent>, bool), StoreError> {
        match &self.backend {
            Backend::Embedded(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.registry_events_after(after, limit))
                    .await
                    .map_err(|e| StoreError::Backend {
                        path: "registry log".into(),
                        message: e.to_string(),
                    })?
            }
            Backend::Shared(shared) => Ok(shared.events_after(after, limit)),
        }
    }
}

fn key_of(i: &pb::Instance) -> Key {
    (
        i.namespace.clone(),
        i.service.clone(),
        i.instance_id.clone(),
    )
}

impl Inner {
    /// Holds a stored instance (loaded, or learned from the shared store)
    /// as live from `now`; the key it is under.
    fn put(&mut self, s: pb::StoredInstance, now: Instant) -> Option<Key> {
        let instance = s.instance?;
        let key = key_of(&instance);
        let lease_id = instance.lease_id.clone();
        if let Some(old) = self.entries.get(&key) {
            if old.instance.lease_id != lease_id {
                self.leases.remove(&old.instance.lease_id);
            }
        }
        self.leases.insert(lease_id, key.clone());
        self.dirty.insert((key.0.clone(), key.1.clone()));
        let entry = Entry {
            instance: Arc::new(instance),
            reported: (
                pb::Health::try_from(s.reported_health).unwrap_or(pb::Health::Passing),
                s.reported_reason,
            ),
            lease: Lease::Live,
            last_beat: now,
            shared: Default::default(),
        };
        self.entries.insert(key.clone(), entry);
        Some(key)
    }
}

fn check_owner(
    lease_id: &str,
    instance: &pb::Instance,
    caller: Option<&str>,
) -> Result<(), RegistryError> {
    match caller {
        Some(c) if c != instance.registered_by => {
            metrics::counter!("weft_control_registry_refused_total", "reason" => "not_owner")
                .increment(1);
            Err(RegistryError::NotYours {
                lease: lease_id.to_string(),
                owner: instance.registered_by.clone(),
                caller: c.to_string(),
            })
        }
        _ => Ok(()),
    }
}

fn new_lease_id() -> String {
    use rand::Rng;
    let v: u128 = rand::rng().random();
    format!("{v:032x}")
}

#[cfg(test)]
mod tests;
