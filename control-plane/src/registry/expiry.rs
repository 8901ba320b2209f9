//! Lease expiry and self-preservation, decided per service on each sweep.
//!
//! An instance whose lease is overdue (no heartbeat for its TTL) goes
//! critical, and is removed once it has been critical for the grace period.
//! Unless many go quiet together: when an instance's lease runs out while
//! more than `preserve_share` of its service's instances (and at least two)
//! have missed heartbeats, the control plane is more likely cut off from them
//! than they are all dead, so they are kept as `warning` (self-preservation)
//! until heartbeats return, the share drops, or `preserve_max` passes.
//! Heartbeats come every TTL/3, so instances that stopped together have all
//! missed one (silent for TTL/2) by the time the first lease runs out.

use super::{Key, Lease, Settings};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Lease ran out: critical, out of rotation.
    Expire,
    /// Lease ran out with most of the service: warning, kept in rotation.
    Preserve { silent: usize, total: usize },
    /// Critical for the whole grace period: removed.
    Evict,
}

/// The lease view of one instance that the sweep needs.
pub(super) struct LeaseView<'a> {
    pub key: &'a Key,
    pub lease: &'a Lease,
    pub last_beat: Instant,
    pub ttl: Duration,
}

/// What to do with the instances of one service (all of them, live or
/// not), at `now`.
pub(super) fn sweep_service(
    instances: &[LeaseView<'_>],
    now: Instant,
    s: &Settings,
) -> Vec<(Key, Action)> {
    let quiet = |v: &LeaseView<'_>, d: Duration| now.saturating_duration_since(v.last_beat) > d;
    if !instances.iter().any(|v| quiet(v, v.ttl)) {
        return vec![];
    }
    let total = instances.len();
    // Missed at least one heartbeat, and not already given up on.
    let silent = instances
        .iter()
        .filter(|v| !matches!(v.lease, Lease::Expired { .. }) && quiet(v, v.ttl / 2))
        .count();
    let mass = silent >= 2 && silent as f64 > total as f64 * s.preserve_share;
    let mut out = Vec::new();
    for v in instances.iter().filter(|v| quiet(v, v.ttl)) {
        let action = match v.lease {
            Lease::Live if mass => Some(Action::Preserve { silent, total }),
            Lease::Live => Some(Action::Expire),
            Lease::Preserved { since, .. }
                if !mass || now.saturating_duration_since(*since) > s.preserve_max =>
            {
                Some(Action::Expire)
            }
            Lease::Preserved { .. } => None,
            Lease::Expired { since } if now.saturating_duration_since(*since) > s.grace => {
                Some(Action::Evict)
            }
            Lease::Expired { .. } => None,
        };
        if let Some(a) = action {
            out.push((v.key.clone(), a));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        ("shop".into(), "cart".into(), format!("cart-{i}"))
    }

    struct Fixture {
        keys: Vec<Key>,
        leases: Vec<Lease>,
        beats: Vec<Instant>,
    }

    impl Fixture {
        fn new(n: usize, t0: Instant) -> Self {
            Fixture {
                keys: (0..n).map(key).collect(),
                leases: (0..n).map(|_| Lease::Live).collect(),
                beats: vec![t0; n],
            }
        }
        fn sweep(&self, now: Instant) -> Vec<(Key, Action)> {
            let views: Vec<_> = (0..self.keys.len())
                .map(|i| LeaseView {
                    key: &self.keys[i],
                    lease: &self.leases[i],
                    last_beat: self.beats[i],
                    ttl: Duration::from_secs(3),
                })
                .collect();
            sweep_service(&views, now, &Settings::default())
        }
    }

    #[test]
    fn one_quiet_instance_of_four_expires_then_is_evicted_after_the_grace() {
        let t0 = Instant::now();
        let mut f = Fixture::new(4, t0);
        let later = t0 + Duration::from_secs(4);
        for b in &mut f.beats[1..] {
            *b = later;
        }
        assert_eq!(f.sweep(later), vec![(key(0), Action::Expire)]);
        f.leases[0] = Lease::Expired { since: later };
        for b in &mut f.beats[1..] {
            *b = later + Duration::from_secs(5);
        }
        let after_grace = later + Settings::default().grace + Duration::from_millis(1);
        for b in &mut f.beats[1..] {
            *b = after_grace;
        }
        assert_eq!(f.sweep(after_grace), vec![(key(0), Action::Evict)]);
    }

    #[test]
    fn three_of_four_going_quiet_together_are_preserved_not_expired() {
        let t0 = Instant::now();
        let mut f = Fixture::new(4, t0);
        // Stopped within one heartbeat interval of each other.
        f.beats[1] = t0 + Duration::from_millis(500);
        f.beats[2] = t0 + Duration::from_millis(900);
        let now = t0 + Duration::from_millis(3_100);
        f.beats[3] = now;
        assert_eq!(
            f.sweep(now),
            vec![(
                key(0),
                Action::Preserve {
                    silent: 3,
                    total: 4
                }
            )]
        );
    }

    #[test]
    fn a_single_instance_service_is_never_self_preserved() {
        let t0 = Instant::now();
        let f = Fixture::new(1, t0);
        assert_eq!(
            f.sweep(t0 + Duration::from_secs(4)),
            vec![(key(0), Action::Expire)]
        );
    }

    #[test]
    fn preservation_ends_when_the_share_drops_or_it_lasted_too_long() {
        let t0 = Instant::now();
        let mut f = Fixture::new(4, t0);
        let now = t0 + Duration::from_secs(10);
        f.leases = (0..4)
            .map(|_| Lease::Preserved {
                since: t0 + Duration::from_secs(3),
                silent: 3,
                total: 4,
            })
            .collect();
        // Two came back: one quiet instance of four is no longer a mass.
        f.beats[0] = now;
        f.beats[1] = now;
        f.beats[2] = now;
        f.leases[0] = Lease::Live;
        f.leases[1] = Lease::Live;
        f.leases[2] = Lease::Live;
        assert_eq!(f.sweep(now), vec![(key(3), Action::Expire)]);
        // All still quiet, but for longer than preserve_max.
        let f = Fixture {
            beats: vec![t0; 4],
            ..Fixture {
                keys: (0..4).map(key).collect(),
                leases: (0..4)
                    .map(|_| Lease::Preserved {
                        since: t0,
                        silent: 4,
                        total: 4,
                    })
                    .collect(),
                beats: vec![],
            }
        };
        let late = t0 + Settings::default().preserve_max + Duration::from_secs(1);
        assert_eq!(f.sweep(late).len(), 4);
        assert!(f.sweep(late).iter().all(|(_, a)| *a == Action::Expire));
    }
}
