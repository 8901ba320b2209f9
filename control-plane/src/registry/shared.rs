//! The registry on a shared (etcd) store, where every replica serves the
//! whole registry (keys in `store::etcd_registry`).
//!
//! - Each replica mirrors the stored instances (a range, then a watch) into
//!   the same in-memory maps the embedded registry uses, so listing,
//!   watching and discovery read memory; events and the registry revision
//!   are etcd's (an instance's revision is its key's mod revision).
//! - Register and deregister are transactions guarded by the key's mod
//!   revision (another replica's change in between makes this one re-check
//!   and retry); they answer once this replica's mirror has the change.
//! - Each registry lease has an etcd lease with its TTL, holding the
//!   instance's liveness key. A heartbeat to any replica renews that etcd
//!   lease over one long-lived keep-alive stream per replica, so the TTL does
//!   not depend on which replica a workload talks to, and a replica's death
//!   expires nothing.
//! - The leader alone sweeps: an instance whose liveness key is gone goes
//!   critical (or is self-preserved) half a TTL later, which leaves time to
//!   see others of its service go quiet too, and is evicted after the grace.
//!   The next heartbeat to any replica brings it back with a new etcd lease.

use super::expiry::Action;
use super::mirror::{heard_at, EventLog};
use super::{
    check_owner, key_of, new_lease_id, now_ms, Backend, Entry, Inner, Key, Lease, Registered,
    Registry, RegistryError, Settings,
};
use crate::publish::Publisher;
use crate::replicas::IsLeader;
use crate::store::etcd_registry::{RegistryChange, RegistryFeed, RegistryOp, INSTANCES};
use crate::store::registry::{instance_key, EVENT_RETENTION};
use crate::store::{EtcdStore, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use xds_proto::v1 as pb;

pub(super) struct Shared {
    etcd: EtcdStore,
    keeper: mpsc::Sender<i64>,
    is_leader: IsLeader,
    log: Mutex<EventLog>,
    writes: mpsc::UnboundedSender<(Key, i64, Change)>,
    /// Keys with a write under way, and the mod revision it is based on.
    busy: Mutex<HashMap<Key, i64>>,
}

/// A change of an instance's lease state, written in the background.
#[derive(Debug, Clone)]
enum Change {
    /// Heard from again (and/or a new reported health); `revive`: its etcd
    /// lease ran out, grant a new one.
    Live {
        health: Option<(pb::Health, String)>,
        revive: bool,
    },
    Sweep(Action),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(super) fn events_after(&self, after: u64, limit: usize) -> (Vec<pb::InstanceEvent>, bool) {
        lock(&self.log).after(after, limit)
    }
}

/// An etcd lease's TTL for a registry TTL (whole seconds, rounded up; etcd
/// raises it to its own minimum, about 2 s).
fn etcd_ttl(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000) as i64).max(1)
}

fn unavailable(e: StoreError) -> RegistryError {
    RegistryError::Store(e.to_string())
}

impl Registry {
    /// The registry on etcd: loads what is stored, then follows etcd's
    /// changes; `is_leader` says when this replica runs the lease sweep.
    pub async fn start_shared(
        etcd: EtcdStore,
        is_leader: IsLeader,
        publisher: Arc<Publisher>,
        settings: Settings,
    ) -> Result<Arc<Self>, StoreError> {
        let all = etcd.load_shared_registry().await?;
        let revision = all.revision;
        let now = Instant::now();
        let mut inner = Inner::default();
        inner.reload(all, now);
        inner.revision = revision as u64;
        tracing::info!(
            instances = inner.entries.len(),
            revision,
            "registry loaded from etcd"
        );
        let (writes, queue) = mpsc::unbounded_channel();
        let shared = Shared {
            keeper: etcd.lease_keeper(),
            is_leader,
            log: Mutex::new(EventLog {
                events: VecDeque::new(),
                floor: revision as u64,
            }),
            writes,
            busy: Mutex::default(),
            etcd: etcd.clone(),
        };
        let registry = Registry::new(
            inner,
            Backend::Shared(Box::new(shared)),
            publisher,
            settings,
        );
        registry.publish_view();
        tokio::spawn(follow(
            Arc::downgrade(&registry),
            etcd.watch_registry(revision),
        ));
        tokio::spawn(write_changes(Arc::downgrade(&registry), queue));
        tokio::spawn(sweeper(Arc::downgrade(&registry)));
        Ok(registry)
    }

    fn shared(&self) -> Option<&Shared> {
        match &self.backend {
            Backend::Shared(s) => Some(s),
            Backend::Embedded(_) => None,
        }
    }

    /// Takes in one batch from the watch: the mirror, the event log, the
    /// watchers, the published view and waiters all move on.
    fn apply(&self, shared: &Shared, feed: RegistryFeed) {
        let now = Instant::now();
        let (events, revision, reload) = {
            let mut inner = self.lock();
            match feed {
                RegistryFeed::Reload(all) => {
                    let revision = all.revision as u64;
                    (inner.reload(all, now), revision, true)
                }
                RegistryFeed::Changes { revision, changes } => {
                    let mut events = Vec::new();
                    for c in changes {
                        match c {
                            RegistryChange::Put {
                                mod_revision,
                                stored,
                            } => events.extend(inner.learn(mod_revision, stored, now)),
                            RegistryChange::Deleted { mod_revision, prev } => {
                                events.extend(inner.unlearn(mod_revision, prev))
                            }
                            RegistryChange::Alive(l) => inner.liveness(l, true, now),
                            RegistryChange::Gone(l) => inner.liveness(l, false, now),
                        }
                    }
                    inner.revision = inner.revision.max(revision as u64);
                    (events, revision as u64, false)
                }
            }
        };
        {
            let mut log = lock(&shared.log);
            if reload {
                log.floor = revision;
            }
            log.events.extend(events.iter().cloned());
            while log.events.len() as u64 > EVENT_RETENTION {
                if let Some(e) = log.events.pop_front() {
                    log.floor = log.floor.max(e.revision);
                }
            }
        }
        self.committed.send_modify(|c| *c = (*c).max(revision));
        if !events.is_empty() {
            let _ = self.events.send(Arc::new(events));
        }
        self.publish_view();
    }

    /// Waits (up to a second) until the mirror's copy of `key` is no longer
    /// at `base`: another replica's change is on its way.
    async fn caught_up(&self, key: &Key, base: i64) {
        let mut rx = self.committed.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let now = self
                    .lock()
                    .entries
                    .get(key)
                    .map(|e| e.shared.mod_revision)
                    .unwrap_or(0);
                if now != base || rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    pub(super) async fn register_shared(
        &self,
        shared: &Shared,
        mut instance: pb::Instance,
        ttl: Duration,
        health: (pb::Health, String),
        owner: &str,
    ) -> Result<Registered, RegistryError> {
        let key = key_of(&instance);
        let skey = format!("{INSTANCES}{}", instance_key(&key.0, &key.1, &key.2));
        for _ in 0..3 {
            let lease_id = new_lease_id();
            let (ty, action, base, old) = {
                let inner = self.lock();
                let (ty, action) =
                    self.admit(&inner, &mut instance, ttl, &health, owner, &lease_id)?;
                let prev = inner.entries.get(&key);
                (
                    ty,
                    action,
                    prev.map(|p| p.shared.mod_revision).unwrap_or(0),
                    prev.map(|p| (p.instance.lease_id.clone(), p.shared.etcd_lease)),
                )
            };
            let etcd_lease = shared
                .etcd
                .grant_lease(etcd_ttl(ttl))
                .await
                .map_err(unavailable)?;
            let stored = pb::StoredInstance {
                instance: Some(instance.clone()),
                reported_health: health.0 as i32,
                reported_reason: health.1.clone(),
                event: ty as i32,
                etcd_lease,
                ..Default::default()
            };
            let mut ops = vec![
                RegistryOp::Put {
                    key: skey.clone(),
                    stored: Box::new(stored),
                },
                RegistryOp::Alive {
                    lease_id: lease_id.clone(),
                    etcd_lease,
                },
            ];
            if let Some((old_id, _)) = &old {
                ops.push(RegistryOp::Gone {
                    lease_id: old_id.clone(),
                });
            }
            let written = shared
                .etcd
                .registry_txn(&[(skey.clone(), base)], &ops)
                .await;
            let revoke = match (&written, &old) {
                (Ok(Some(_)), Some((_, l))) => *l,
                (Ok(Some(_)), None) => 0,
                _ => etcd_lease,
            };
            if revoke != 0 {
                let etcd = shared.etcd.clone();
                tokio::spawn(async move { etcd.revoke_lease(revoke).await });
            }
            match written.map_err(unavailable)? {
                Some(revision) => {
                    metrics::counter!("weft_control_registry_registrations_total", "action" => action).increment(1);
                    self.stored(revision as u64).await?;
                    return Ok(Registered {
                        lease_id,
                        ttl,
                        revision: revision as u64,
                        action,
                    });
                }
                None => self.caught_up(&key, base).await,
            }
        }
        Err(RegistryError::Contended(skey))
    }

    pub(super) async fn deregister_shared(
        &self,
        shared: &Shared,
        lease_id: &str,
        caller: Option<&str>,
    ) -> Result<u64, RegistryError> {
        for _ in 0..3 {
            let (key, base, etcd_lease) = {
                let inner = self.lock();
                let unknown = || RegistryError::UnknownLease(lease_id.to_string());
                let key = inner.leases.get(lease_id).cloned().ok_or_else(unknown)?;
                let e = inner.entries.get(&key).ok_or_else(unknown)?;
                check_owner(lease_id, &e.instance, caller)?;
                (key, e.shared.mod_revision, e.shared.etcd_lease)
            };
            let skey = format!("{INSTANCES}{}", instance_key(&key.0, &key.1, &key.2));
            let ops = [
                RegistryOp::Delete { key: skey.clone() },
                RegistryOp::Gone {
                    lease_id: lease_id.to_string(),
                },
            ];
            match shared
                .etcd
                .registry_txn(&[(skey, base)], &ops)
                .await
                .map_err(unavailable)?
            {
                Some(revision) => {
                    let etcd = shared.etcd.clone();
                    tokio::spawn(async move { etcd.revoke_lease(etcd_lease).await });
                    metrics::counter!("weft_control_registry_deregistrations_total").increment(1);
                    self.stored(revision as u64).await?;
                    return Ok(revision as u64);
                }
                None => self.caught_up(&key, base).await,
            }
        }
        Err(RegistryError::Contended(lease_id.to_string()))
    }

    /// A heartbeat: renews the etcd lease (at most every `RENEW_EVERY`);
    /// a health change or a lease that ran out is written in the
    /// background. Answers at once.
    pub(super) fn heartbeat_shared(
        &self,
        shared: &Shared,
        lease_id: &str,
        health: Option<(pb::Health, String)>,
        caller: Option<&str>,
    ) -> Result<(Duration, u64), RegistryError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let unknown = || RegistryError::UnknownLease(lease_id.to_string());
        let key = inner.leases.get(lease_id).cloned().ok_or_else(unknown)?;
        let revision = inner.revision;
        let e = inner.entries.get_mut(&key).ok_or_else(unknown)?;
        check_owner(lease_id, &e.instance, caller)?;
        e.last_beat = now;
        let ttl = e.ttl();
        let reported_changed = health.as_ref().is_some_and(|h| *h != e.reported);
        let revive = e.shared.vanished.is_some();
        if reported_changed || revive || e.lease != Lease::Live {
            let base = e.shared.mod_revision;
            drop(inner);
            self.queue(shared, key, base, Change::Live { health, revive });
        } else {
            let every = (ttl / 4).min(Duration::from_millis(500));
            if e.shared
                .renewed
                .is_none_or(|r| now.duration_since(r) >= every)
            {
                e.shared.renewed = Some(now);
                if shared.keeper.try_send(e.shared.etcd_lease).is_err() {
                    metrics::counter!("weft_control_registry_keepalives_dropped_total")
                        .increment(1);
                }
            }
        }
        metrics::counter!("weft_control_registry_heartbeats_total").increment(1);
        Ok((ttl, revision))
    }

    /// Queues a background write of `key` based on mod revision `base`,
    /// unless one based on it is already under way.
    fn queue(&self, shared: &Shared, key: Key, base: i64, change: Change) {
        {
            let mut busy = lock(&shared.busy);
            if busy.get(&key) == Some(&base) {
                return;
            }
            busy.insert(key.clone(), base);
        }
        let _ = shared.writes.send((key, base, change));
    }

    /// Writes one lease-state change, if `key` is still at `base`.
    async fn write_change(&self, shared: &Shared, key: &Key, base: i64, change: Change) {
        let skey = format!("{INSTANCES}{}", instance_key(&key.0, &key.1, &key.2));
        let (entry, lease_id, old_lease) = {
            let inner = self.lock();
            let Some(e) = inner.entries.get(key) else {
                return;
            };
            if e.shared.mod_revision != base {
                return;
            }
            let entry = Entry {
                instance: e.instance.clone(),
                reported: e.reported.clone(),
                lease: e.lease.clone(),
                last_beat: e.last_beat,
                shared: e.shared.clone(),
            };
            (entry, e.instance.lease_id.clone(), e.shared.etcd_lease)
        };
        let now = Instant::now();
        let ms = now_ms();
        let mut ops = Vec::new();
        let mut next = entry;
        let mut etcd_lease = old_lease;
        let (state, silent, total) = match change {
            Change::Sweep(Action::Evict) => {
                tracing::info!(instance = ?key, "registry: evicted after the grace period");
                metrics::counter!("weft_control_registry_evictions_total").increment(1);
                ops.push(RegistryOp::Delete { key: skey.clone() });
                ops.push(RegistryOp::Gone { lease_id });
                (pb::LeaseState::LeaseLive, 0, 0)
            }
            Change::Sweep(Action::Expire) => {
                tracing::info!(instance = ?key, address = %next.instance.address, "registry: lease expired, instance critical");
                metrics::counter!("weft_control_registry_expirations_total").increment(1);
                next.lease = Lease::Expired { since: now };
                (pb::LeaseState::LeaseExpired, 0, 0)
            }
            Change::Sweep(Action::Preserve { silent, total }) => {
                tracing::warn!(instance = ?key, silent, total, "registry: self-preservation keeps an instance whose lease ran out");
                metrics::counter!("weft_control_registry_self_preservation_total").increment(1);
                next.lease = Lease::Preserved {
                    since: now,
                    silent,
                    total,
                };
                (pb::LeaseState::LeasePreserved, silent as u32, total as u32)
            }
            Change::Live { health, revive } => {
                if let Some(h) = health {
                    next.reported = h;
                }
                next.lease = Lease::Live;
                if revive {
                    match shared.etcd.grant_lease(etcd_ttl(next.ttl())).await {
                        Ok(l) => etcd_lease = l,
                        Err(e) => {
                            tracing::warn!(instance = ?key, error = %e, "registry: cannot renew a lease that ran out");
                            return;
                        }
                    }
                    ops.push(RegistryOp::Alive {
                        lease_id,
                        etcd_lease,
                    });
                }
                (pb::LeaseState::LeaseLive, 0, 0)
            }
        };
        if ops
            .first()
            .is_none_or(|op| !matches!(op, RegistryOp::Delete { .. }))
        {
            let (health, reason) = next.effective();
            let mut instance = (*next.instance).clone();
            let ty = if instance.health != health as i32 || instance.health_reason != reason {
                instance.health = health as i32;
                instance.health_reason = reason;
                instance.health_changed_unix_ms = ms;
                pb::EventType::Health
            } else {
                pb::EventType::Unspecified
            };
            ops.insert(
                0,
                RegistryOp::Put {
                    key: skey.clone(),
                    stored: Box::new(pb::StoredInstance {
                        instance: Some(instance),
                        reported_health: next.reported.0 as i32,
                        reported_reason: next.reported.1.clone(),
                        event: ty as i32,
                        etcd_lease,
                        lease_state: state as i32,
                        lease_since_unix_ms: ms,
                        silent,
                        total,
                    }),
                },
            );
        }
        match shared.etcd.registry_txn(&[(skey, base)], &ops).await {
            Ok(Some(_)) => {
                let evicted = matches!(ops.first(), Some(RegistryOp::Delete { .. }));
                if (evicted || etcd_lease != old_lease) && old_lease != 0 {
                    let _ = shared.etcd.revoke_lease(old_lease).await;
                }
            }
            Ok(None) => {
                // Another replica changed it first; the next heartbeat or
                // sweep looks again.
                if etcd_lease != old_lease {
                    let _ = shared.etcd.revoke_lease(etcd_lease).await;
                }
            }
            Err(e) => {
                tracing::warn!(instance = ?key, error = %e, "registry: lease state not stored");
                metrics::counter!("weft_control_registry_store_errors_total").increment(1);
            }
        }
    }

    /// The leader's sweep: an instance whose liveness key is gone is
    /// treated as last heard of half a TTL before that.
    fn sweep_shared(&self, shared: &Shared, now: Instant) {
        let (actions, bases) = {
            let inner = self.lock();
            let actions = self.sweep_actions(&inner, now, |e| heard_at(e, now));
            let bases: Vec<i64> = actions
                .iter()
                .map(|(k, _)| inner.entries.get(k).map_or(0, |e| e.shared.mod_revision))
                .collect();
            (actions, bases)
        };
        for ((key, action), base) in actions.into_iter().zip(bases) {
            self.queue(shared, key, base, Change::Sweep(action));
        }
    }
}

/// Applies etcd's registry changes as they come.
async fn follow(registry: Weak<Registry>, mut feed: mpsc::Receiver<RegistryFeed>) {
    while let Some(batch) = feed.recv().await {
        let Some(r) = registry.upgrade() else { return };
        if let Some(shared) = r.shared() {
            r.apply(shared, batch);
        }
    }
}

/// Runs queued lease-state writes, each on its own task.
async fn write_changes(
    registry: Weak<Registry>,
    mut queue: mpsc::UnboundedReceiver<(Key, i64, Change)>,
) {
    while let Some((key, base, change)) = queue.recv().await {
        let Some(r) = registry.upgrade() else { return };
        tokio::spawn(async move {
            if let Some(shared) = r.shared() {
                r.write_change(shared, &key, base, change).await;
                let mut busy = lock(&shared.busy);
                if busy.get(&key) == Some(&base) {
                    busy.remove(&key);
                }
            }
        });
    }
}

async fn sweeper(registry: Weak<Registry>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = registry.upgrade() else { return };
        if let Some(shared) = r.shared() {
            if (shared.is_leader)() {
                r.sweep_shared(shared, Instant::now());
            }
        }
    }
}
