//! The mirror of the registry's etcd keys that each replica keeps (the
//! shared store, `shared`): stored instances and liveness keys taken into
//! the registry's in-memory maps, the events they make, the log of events
//! for watchers that resume, and when the leader's sweep takes a quiet
//! instance to have been heard from last.

use super::{key_of, now_ms, Entry, Inner, Lease};
use crate::store::etcd_registry::SharedRegistry;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use xds_proto::v1 as pb;

/// What the mirror knows of an entry's stored key.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryState {
    /// The key's mod revision: writes to it are guarded by it.
    pub(super) mod_revision: i64,
    pub(super) etcd_lease: i64,
    /// Since when its liveness key is gone (None: it exists).
    pub(super) vanished: Option<Instant>,
    /// When this replica last renewed the etcd lease.
    pub(super) renewed: Option<Instant>,
}

/// The events this replica saw, for watchers that resume.
pub(super) struct EventLog {
    pub(super) events: VecDeque<pb::InstanceEvent>,
    /// Events at or below this revision may be missing.
    pub(super) floor: u64,
}

impl EventLog {
    /// The events after `after` (at least `limit` unless there are fewer),
    /// and false when some of them are no longer kept.
    pub(super) fn after(&self, after: u64, limit: usize) -> (Vec<pb::InstanceEvent>, bool) {
        if after < self.floor {
            return (vec![], false);
        }
        let start = self.events.partition_point(|e| e.revision <= after);
        let mut out: Vec<pb::InstanceEvent> = Vec::new();
        for e in self.events.range(start..) {
            // Never split one revision's events between two reads.
            if out.len() >= limit && out.last().is_some_and(|l| l.revision != e.revision) {
                break;
            }
            out.push(e.clone());
        }
        (out, true)
    }
}

fn instant_of(unix_ms: i64, now: Instant) -> Instant {
    let ago = (now_ms() - unix_ms).max(0) as u64;
    now.checked_sub(Duration::from_millis(ago)).unwrap_or(now)
}

fn lease_of(s: &pb::StoredInstance, now: Instant) -> Lease {
    let since = instant_of(s.lease_since_unix_ms, now);
    match s.lease_state() {
        pb::LeaseState::LeaseLive => Lease::Live,
        pb::LeaseState::LeaseExpired => Lease::Expired { since },
        pb::LeaseState::LeasePreserved => Lease::Preserved {
            since,
            silent: s.silent as usize,
            total: s.total as usize,
        },
    }
}

impl Inner {
    /// Takes in a stored instance at `mod_revision`; its event, if any.
    pub(super) fn learn(
        &mut self,
        mod_revision: i64,
        mut s: pb::StoredInstance,
        now: Instant,
    ) -> Option<pb::InstanceEvent> {
        let ty = s.event();
        let lease = lease_of(&s, now);
        let etcd_lease = s.etcd_lease;
        let instance = s.instance.as_mut()?;
        instance.revision = mod_revision as u64;
        let key = key_of(instance);
        let lease_id = instance.lease_id.clone();
        let before = self
            .entries
            .get(&key)
            .map(|e| (e.last_beat, e.shared.clone()));
        let key = self.put(s, now)?;
        let alive = self.alive.contains(&lease_id);
        let e = self.entries.get_mut(&key)?;
        e.lease = lease;
        if let Some((beat, state)) = before {
            e.last_beat = beat;
            e.shared = state;
        }
        e.shared.mod_revision = mod_revision;
        if e.shared.etcd_lease != etcd_lease {
            e.shared.renewed = None;
        }
        e.shared.etcd_lease = etcd_lease;
        e.shared.vanished = if alive {
            None
        } else {
            e.shared.vanished.or(Some(now))
        };
        (ty != pb::EventType::Unspecified).then(|| pb::InstanceEvent {
            revision: mod_revision as u64,
            r#type: ty as i32,
            instance: Some((*e.instance).clone()),
        })
    }

    /// Forgets a removed instance; its event.
    pub(super) fn unlearn(
        &mut self,
        mod_revision: i64,
        prev: Option<pb::StoredInstance>,
    ) -> Option<pb::InstanceEvent> {
        let key = key_of(prev.as_ref()?.instance.as_ref()?);
        let e = self.entries.remove(&key)?;
        self.leases.remove(&e.instance.lease_id);
        self.dirty.insert((key.0, key.1));
        let mut instance = (*e.instance).clone();
        instance.revision = mod_revision as u64;
        Some(pb::InstanceEvent {
            revision: mod_revision as u64,
            r#type: pb::EventType::Removed as i32,
            instance: Some(instance),
        })
    }

    pub(super) fn liveness(&mut self, lease_id: String, alive: bool, now: Instant) {
        if let Some(e) = self
            .leases
            .get(&lease_id)
            .and_then(|k| self.entries.get_mut(k))
        {
            if alive {
                e.shared.vanished = None;
                e.last_beat = e.last_beat.max(now);
            } else {
                e.shared.vanished = Some(now);
            }
        }
        if alive {
            self.alive.insert(lease_id);
        } else {
            self.alive.remove(&lease_id);
        }
    }

    /// Replaces everything with `all`; the events that bring a watcher of
    /// the old state to the new one.
    pub(super) fn reload(&mut self, all: SharedRegistry, now: Instant) -> Vec<pb::InstanceEvent> {
        let old = std::mem::take(&mut self.entries);
        self.leases.clear();
        self.alive = all.alive.into_iter().collect();
        let revision = all.revision as u64;
        let mut events = Vec::new();
        for (rev, s) in all.instances {
            let Some(key) = s.instance.as_ref().map(key_of) else {
                continue;
            };
            self.learn(rev, s, now);
            let (Some(e), was) = (self.entries.get(&key), old.get(&key)) else {
                continue;
            };
            if was.is_some_and(|w| w.instance == e.instance) {
                continue;
            }
            let ty = if was.is_some() {
                pb::EventType::Modified
            } else {
                pb::EventType::Added
            };
            events.push(pb::InstanceEvent {
                revision,
                r#type: ty as i32,
                instance: Some((*e.instance).clone()),
            });
        }
        for (k, e) in old {
            self.dirty.insert((k.0.clone(), k.1.clone()));
            if !self.entries.contains_key(&k) {
                let mut instance = (*e.instance).clone();
                instance.revision = revision;
                events.push(pb::InstanceEvent {
                    revision,
                    r#type: pb::EventType::Removed as i32,
                    instance: Some(instance),
                });
            }
        }
        self.revision = self.revision.max(revision);
        events
    }
}

/// When the sweep takes `e` to have been heard from last: now while its
/// liveness key exists (etcd keeps the time), else half a TTL before the
/// key went, so an instance is expired half a TTL after its etcd lease ran
/// out, and those of a service that stopped together (within a heartbeat
/// interval) are all seen silent by then.
pub(super) fn heard_at(e: &Entry, now: Instant) -> Instant {
    match e.shared.vanished {
        None => now,
        Some(t) => t.checked_sub(e.ttl() / 2).unwrap_or(t),
    }
}

#[cfg(test)]
mod tests {
    use super::super::expiry::{sweep_service, Action, LeaseView};
    use super::super::{Key, Settings};
    use super::*;

    fn stored(id: &str, lease: &str, event: pb::EventType) -> pb::StoredInstance {
        pb::StoredInstance {
            instance: Some(pb::Instance {
                namespace: "shop".into(),
                service: "cart".into(),
                instance_id: id.into(),
                lease_id: lease.into(),
                ttl_ms: 3000,
                ..Default::default()
            }),
            event: event as i32,
            ..Default::default()
        }
    }

    /// Instances c0..c3 of one service (3 s TTL) learned at `t0`, with
    /// their liveness keys where `alive` says.
    fn four_instances(t0: Instant, alive: impl Fn(i64) -> bool) -> Inner {
        let mut inner = Inner::default();
        for i in 0..4 {
            let lease = format!("l{i}");
            inner.learn(
                i + 1,
                stored(&format!("c{i}"), &lease, pb::EventType::Added),
                t0,
            );
            inner.liveness(lease, alive(i), t0);
        }
        inner
    }

    /// The leader's sweep decisions at `now`.
    fn sweep(inner: &Inner, now: Instant) -> Vec<(Key, Action)> {
        let views: Vec<LeaseView<'_>> = inner
            .entries
            .iter()
            .map(|(k, e)| LeaseView {
                key: k,
                lease: &e.lease,
                last_beat: heard_at(e, now),
                ttl: e.ttl(),
            })
            .collect();
        sweep_service(&views, now, &Settings::default())
    }

    fn event(revision: u64) -> pb::InstanceEvent {
        pb::InstanceEvent {
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn a_liveness_key_written_after_its_instance_in_one_batch_leaves_it_live_and_its_loss_is_timed()
    {
        let now = Instant::now();
        let mut inner = Inner::default();
        let added = inner.learn(7, stored("a", "l1", pb::EventType::Added), now);
        assert_eq!(
            added.map(|e| (e.revision, e.r#type)),
            Some((7, pb::EventType::Added as i32))
        );
        inner.liveness("l1".into(), true, now);
        let key = ("shop".to_string(), "cart".to_string(), "a".to_string());
        assert!(inner.entries[&key].shared.vanished.is_none());
        // A lease-only rewrite is stored but is no event, and keeps liveness.
        assert!(inner
            .learn(8, stored("a", "l1", pb::EventType::Unspecified), now)
            .is_none());
        assert!(inner.entries[&key].shared.vanished.is_none());
        assert_eq!(inner.entries[&key].instance.revision, 8);
        let later = now + Duration::from_secs(1);
        inner.liveness("l1".into(), false, later);
        assert_eq!(inner.entries[&key].shared.vanished, Some(later));
        let removed = inner.unlearn(9, Some(stored("a", "l1", pb::EventType::Added)));
        assert_eq!(
            removed.map(|e| e.r#type),
            Some(pb::EventType::Removed as i32)
        );
        assert!(inner.entries.is_empty() && inner.leases.is_empty());
    }

    #[test]
    fn three_of_four_etcd_leases_running_out_together_are_self_preserved_not_expired() {
        let t0 = Instant::now();
        let mut inner = four_instances(t0, |_| true);
        // Three stop within a heartbeat interval (1 s of a 3 s TTL).
        for (i, at) in [(0, 0), (1, 400), (2, 900)] {
            inner.liveness(format!("l{i}"), false, t0 + Duration::from_millis(at));
        }
        // Not before half a TTL after the first key went.
        assert!(sweep(&inner, t0 + Duration::from_millis(1400)).is_empty());
        let actions = sweep(&inner, t0 + Duration::from_millis(1600));
        assert_eq!(actions.len(), 1);
        assert_eq!(
            actions[0].1,
            Action::Preserve {
                silent: 3,
                total: 4
            }
        );
    }

    #[test]
    fn one_of_four_etcd_leases_running_out_expires_half_a_ttl_later() {
        let t0 = Instant::now();
        let inner = four_instances(t0, |i| i != 0);
        assert!(sweep(&inner, t0 + Duration::from_millis(1400)).is_empty());
        let key = ("shop".to_string(), "cart".to_string(), "c0".to_string());
        assert_eq!(
            sweep(&inner, t0 + Duration::from_millis(1600)),
            vec![(key, Action::Expire)]
        );
    }

    #[test]
    fn the_event_log_never_splits_a_revision_and_says_when_history_is_gone() {
        let log = EventLog {
            events: [5, 6, 6, 6, 9].into_iter().map(event).collect(),
            floor: 4,
        };
        let revisions = |(events, _): (Vec<pb::InstanceEvent>, bool)| {
            events.iter().map(|e| e.revision).collect::<Vec<_>>()
        };
        assert_eq!(revisions(log.after(4, 2)), vec![5, 6, 6, 6]);
        assert_eq!(revisions(log.after(6, 2)), vec![9]);
        assert!(log.after(4, 2).1);
        assert_eq!(log.after(3, 10), (vec![], false));
    }
}
