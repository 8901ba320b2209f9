//! Connection caps of the data-plane listeners, so that a flood of
//! connections cannot take the descriptors that upstream connections, the
//! admin and metrics ports and the control-plane stream need. At start the
//! soft `RLIMIT_NOFILE` is raised to the hard limit; unless told otherwise,
//! each listener may then hold a quarter of what is left after
//! `RESERVED_FDS` (a proxied connection can need two descriptors: the
//! client's and the upstream's). A connection over the cap is closed as soon
//! as it is accepted (its descriptor returns at once), counted, and logged
//! at most once a second.

use crate::clock::clock_ms;
use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept out of every listener's cap.
pub const RESERVED_FDS: u64 = 256;
/// The cap when the descriptor limit cannot be read.
const FALLBACK_CAP: usize = 1024;

pub const REFUSED_TOTAL: &str = "weft_listener_connections_refused_total";
pub const ACCEPT_ERRORS_TOTAL: &str = "weft_listener_accept_errors_total";

/// Raises the soft descriptor limit as far as the hard limit allows and
/// returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The default cap of one listener under `fd_limit` descriptors.
pub fn default_cap(fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS) / 4)
            .unwrap_or(usize::MAX)
            .max(16),
        None => FALLBACK_CAP,
    }
}

pub struct ConnectionCap {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    refused: Counter,
    last_log_ms: AtomicU64,
}

impl ConnectionCap {
    pub fn new(listener: &'static str, max: usize) -> Arc<ConnectionCap> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnectionCap {
            listener,
            max,
            slots: Arc::new(Semaphore::new(max)),
            refused: metrics::counter!(REFUSED_TOTAL, "listener" => listener),
            last_log_ms: AtomicU64::new(0),
        })
    }

    /// A slot for one more connection, held until it closes; None (counted,
    /// logged at most once a second) when the listener is full.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.refused.increment(1);
                if once_a_second(&self.last_log_ms) {
                    tracing::warn!(
                        listener = self.listener,
                        max = self.max,
                        "listener at its connection cap; closing new connections"
                    );
                }
                None
            }
        }
    }
}

/// True at most once a second per `last` (a rate-limited log line).
pub fn once_a_second(last: &AtomicU64) -> bool {
    let now = clock_ms().max(1);
    let prev = last.load(Ordering::Relaxed);
    (prev == 0 || now.saturating_sub(prev) >= 1000)
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_admits_up_to_max_and_frees_a_slot_when_a_connection_ends() {
        let cap = ConnectionCap::new("test", 2);
        let a = cap.admit().expect("first");
        let _b = cap.admit().expect("second");
        assert!(cap.admit().is_none(), "third is over the cap");
        drop(a);
        assert!(cap.admit().is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn default_caps_leave_the_reserve_and_split_the_rest() {
        assert_eq!(default_cap(Some(1024)), (1024 - 256) / 4);
        assert_eq!(default_cap(Some(100)), 16, "never below 16");
        assert_eq!(default_cap(None), FALLBACK_CAP);
    }

    #[test]
    fn the_log_gate_opens_once_a_second() {
        let last = AtomicU64::new(0);
        assert!(once_a_second(&last));
        assert!(!once_a_second(&last), "not again within the second");
    }
}
