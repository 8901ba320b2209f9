//! Graceful drain (POST /drain, SIGTERM): stop accepting, let in-flight
//! connections finish, then exit. Connections hold a `ConnGuard`; the drain
//! waits for the count to reach zero or for its deadline. A shutdown is
//! first *requested* (`request`): the sidecar deregisters its workload so
//! callers stop sending, then `start`s the drain.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shutdown requested (the drain starts once the workload is
    /// deregistered).
    requested: watch::Sender<bool>,
    tx: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        let (requested, _) = watch::channel(false);
        Drain {
            inner: Arc::new(Inner {
                requested,
                tx,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Asks for a shutdown: deregistration first, then the drain.
    pub fn request(&self) {
        self.inner.requested.send_replace(true);
    }

    /// Turns true when a shutdown is requested.
    pub fn requested(&self) -> watch::Receiver<bool> {
        self.inner.requested.subscribe()
    }

    pub fn is_requested(&self) -> bool {
        *self.inner.requested.borrow()
    }

    pub fn start(&self) {
        self.inner.requested.send_replace(true);
        self.inner.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.tx.borrow()
    }

    /// Turns true when the drain starts; HTTP connections then finish their in-flight requests and close.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.inner.tx.subscribe()
    }

    pub async fn started(&self) {
        let mut rx = self.watch();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn track(&self) -> ConnGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is active; false if `deadline` passed first.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_connection_ends() {
        let d = Drain::new();
        let g = d.track();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.wait_idle(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(g);
        assert!(waiter.await.unwrap());
        let _g = d.track();
        assert!(
            !d.wait_idle(Duration::from_millis(20)).await,
            "deadline passes while busy"
        );
    }
}
