//! The registry's upkeep: the writer that stores pending changes in group
//! commits (then sends their events, publishes the view and releases
//! waiters), and the lease sweep (expiry, eviction, self-preservation,
//! renewal after a gap).

use super::expiry::{self, Action, LeaseView};
use super::{now_ms, Backend, Entry, Inner, Key, Lease, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xds_proto::v1 as pb;

impl Registry {
    /// Rebuilds the view of the services changed since the last build and
    /// publishes it.
    pub(super) fn publish_view(&self) {
        let mut view = (*self.publisher.registry()).clone();
        {
            let mut inner = self.lock();
            let dirty = std::mem::take(&mut inner.dirty);
            for (ns, svc) in dirty {
                let lo = (ns.clone(), svc.clone(), String::new());
                let list: Vec<Arc<pb::Instance>> = inner
                    .entries
                    .range(lo..)
                    .take_while(|(k, _)| k.0 == ns && k.1 == svc)
                    .map(|(_, e)| e.instance.clone())
                    .collect();
                view.set(&ns, &svc, list.into());
            }
            let mut by_health = [0usize; 4];
            for e in inner.entries.values() {
                by_health[e.instance.health.clamp(0, 3) as usize] += 1;
            }
            for (h, name) in [(1, "passing"), (2, "warning"), (3, "critical")] {
                metrics::gauge!("weft_control_registry_instances", "health" => name)
                    .set(by_health[h] as f64);
            }
        }
        view.revision = self.committed_revision();
        self.publisher.set_registry(Arc::new(view));
    }

    /// What the lease sweep at `now` does, service by service; `last_beat`
    /// says when an entry was last heard of.
    pub(super) fn sweep_actions(
        &self,
        inner: &Inner,
        now: Instant,
        last_beat: impl Fn(&Entry) -> Instant,
    ) -> Vec<(Key, Action)> {
        let mut actions = Vec::new();
        let mut group: Vec<LeaseView<'_>> = Vec::new();
        let mut flush_group = |group: &mut Vec<LeaseView<'_>>| {
            actions.extend(expiry::sweep_service(group, now, &self.settings));
            group.clear();
        };
        for (k, e) in &inner.entries {
            if let Some(first) = group.first() {
                if first.key.0 != k.0 || first.key.1 != k.1 {
                    flush_group(&mut group);
                }
            }
            group.push(LeaseView {
                key: k,
                lease: &e.lease,
                last_beat: last_beat(e),
                ttl: e.ttl(),
            });
        }
        flush_group(&mut group);
        actions
    }

    /// One expiry sweep at `now`.
    fn sweep(&self, now: Instant) {
        let mut inner = self.lock();
        let actions = self.sweep_actions(&inner, now, |e| e.last_beat);
        if actions.is_empty() {
            return;
        }
        let ms = now_ms();
        for (key, action) in actions {
            match action {
                Action::Evict => {
                    tracing::info!(instance = ?key, "registry: evicted after the grace period");
                    metrics::counter!("weft_control_registry_evictions_total").increment(1);
                    inner.remove(&key);
                }
                Action::Expire => {
                    if let Some(e) = inner.entries.get_mut(&key) {
                        tracing::info!(instance = ?key, address = %e.instance.address, "registry: lease expired, instance critical");
                        e.lease = Lease::Expired { since: now };
                    }
                    metrics::counter!("weft_control_registry_expirations_total").increment(1);
                    inner.refresh_health(&key, ms);
                }
                Action::Preserve { silent, total } => {
                    if let Some(e) = inner.entries.get_mut(&key) {
                        tracing::warn!(instance = ?key, silent, total, "registry: self-preservation keeps an instance whose lease ran out");
                        e.lease = Lease::Preserved {
                            since: now,
                            silent,
                            total,
                        };
                    }
                    metrics::counter!("weft_control_registry_self_preservation_total").increment(1);
                    inner.refresh_health(&key, ms);
                }
            }
        }
        drop(inner);
        self.flush.notify_one();
    }

    /// Gives every lease that is not expired a fresh TTL: the control plane
    /// could not hear heartbeats for a while (`why`).
    fn renew_all(&self, why: &str) {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut n = 0;
        for e in inner.entries.values_mut() {
            if !matches!(e.lease, Lease::Expired { .. }) {
                e.last_beat = now;
                n += 1;
            }
        }
        tracing::warn!(leases = n, reason = why, "registry: leases renewed");
        metrics::counter!("weft_control_registry_lease_renewals_total").increment(1);
    }

    /// Stores pending changes; after each stored batch: events out, the
    /// view published, waiters released.
    async fn write_pending(self: &Arc<Self>) -> bool {
        let (batch, revision) = {
            let mut inner = self.lock();
            (std::mem::take(&mut inner.pending), inner.revision)
        };
        if batch.is_empty() {
            return true;
        }
        let started = Instant::now();
        let Backend::Embedded(store) = &self.backend else {
            return true;
        };
        let store = store.clone();
        let to_store = batch.clone();
        let result =
            tokio::task::spawn_blocking(move || store.commit_registry(revision, &to_store)).await;
        let failed = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("writer task failed: {e}")),
        };
        if let Some(e) = failed {
            tracing::error!(error = %e, changes = batch.len(), "registry: store write failed; retrying");
            metrics::counter!("weft_control_registry_store_errors_total").increment(1);
            let mut inner = self.lock();
            inner.store_down = true;
            let newer = std::mem::take(&mut inner.pending);
            inner.pending = batch;
            inner.pending.extend(newer);
            return false;
        }
        metrics::histogram!("weft_control_registry_write_seconds")
            .record(started.elapsed().as_secs_f64());
        let recovered = std::mem::take(&mut self.lock().store_down);
        if recovered {
            self.renew_all("the store is back after failed writes");
        }
        self.committed.send_replace(revision);
        let events: Vec<pb::InstanceEvent> = batch.into_iter().filter_map(|w| w.event).collect();
        if !events.is_empty() {
            let _ = self.events.send(Arc::new(events));
        }
        self.publish_view();
        true
    }
}

pub(super) async fn writer(registry: Arc<Registry>) {
    loop {
        let notified = registry.flush.notified();
        if !registry.write_pending().await {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        notified.await;
    }
}

/// The sweep runs every `TICK`; a gap much longer than that means the
/// control plane itself was not running (suspended, starved), so it renews
/// every lease instead of expiring instances that could not be heard.
pub(super) async fn sweeper(registry: std::sync::Weak<Registry>) {
    const TICK: Duration = Duration::from_millis(100);
    const GAP: Duration = Duration::from_secs(1);
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = registry.upgrade() else { return };
        let now = Instant::now();
        if now.duration_since(last) > GAP.max(r.settings.min_ttl / 2) {
            r.renew_all("the control plane could not run its lease sweep");
        }
        last = now;
        r.sweep(now);
    }
}
