//! Publishing to the discovery streams: the live configuration and the
//! registry's view of live instances, each swapped in whole, and a
//! debouncer that folds a burst of changes (config applies, instances
//! coming and going) into one publication, bounded so the first change of a
//! burst is never held longer than the debounce window.

use crate::compile::Shared;
use crate::config::ConfigSet;
use crate::registry_view::RegistryView;
use arc_swap::ArcSwap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What discovery streams compile from: one config revision and one
/// registry revision.
#[derive(Debug)]
pub struct Published {
    pub config: Arc<ConfigSet>,
    pub registry: Arc<RegistryView>,
    /// When the first change folded into this publication was committed; the
    /// push-duration histogram measures from here to each proxy's ACK.
    pub changed_at: Instant,
    /// Clusters and endpoints built for this publication, shared by every
    /// proxy's compilation.
    pub shared: Shared,
}

impl Published {
    /// The version a push of this publication carries: `r<config>.<registry>`.
    pub fn version(&self) -> String {
        format!("r{}.{}", self.config.revision, self.registry.revision)
    }
}

/// The current config and registry view, and the change signal.
pub struct Publisher {
    config: ArcSwap<ConfigSet>,
    registry: ArcSwap<RegistryView>,
    changes: mpsc::UnboundedSender<Instant>,
}

impl Publisher {
    /// Starts the debouncer, which publishes on the returned watch channel
    /// at most `debounce` after a change.
    pub fn start(
        config: Arc<ConfigSet>,
        debounce: Duration,
    ) -> (Arc<Self>, watch::Receiver<Arc<Published>>) {
        let registry = Arc::new(RegistryView::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (pub_tx, pub_rx) = watch::channel(Arc::new(Published {
            config: config.clone(),
            registry: registry.clone(),
            changed_at: Instant::now(),
            shared: Shared::default(),
        }));
        let publisher = Arc::new(Publisher {
            config: ArcSwap::new(config),
            registry: ArcSwap::new(registry),
            changes: tx,
        });
        tokio::spawn(debounce_loop(
            Arc::downgrade(&publisher),
            rx,
            pub_tx,
            debounce,
        ));
        (publisher, pub_rx)
    }

    pub fn config(&self) -> Arc<ConfigSet> {
        self.config.load_full()
    }

    pub fn registry(&self) -> Arc<RegistryView> {
        self.registry.load_full()
    }

    pub fn set_config(&self, config: Arc<ConfigSet>) {
        self.config.store(config);
        let _ = self.changes.send(Instant::now());
    }

    pub fn set_registry(&self, view: Arc<RegistryView>) {
        self.registry.store(view);
        let _ = self.changes.send(Instant::now());
    }
}

/// Publishes on `tx` once changes (their commit times arriving on `rx`) go
/// quiet for a fifth of `debounce`, and at most `debounce` after the first
/// of them.
async fn debounce_loop(
    publisher: Weak<Publisher>,
    mut rx: mpsc::UnboundedReceiver<Instant>,
    tx: watch::Sender<Arc<Published>>,
    debounce: Duration,
) {
    let quiet = (debounce / 5).max(Duration::from_millis(1));
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::from_std(first) + debounce;
        loop {
            let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if wait.is_zero() {
                break;
            }
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let Some(publisher) = publisher.upgrade() else {
            return;
        };
        let shared = Shared::following(&tx.borrow().shared);
        let published = Arc::new(Published {
            config: publisher.config(),
            registry: publisher.registry(),
            changed_at: first,
            shared,
        });
        tracing::debug!(version = %published.version(), "publishing");
        metrics::histogram!("weft_control_debounce_seconds").record(first.elapsed().as_secs_f64());
        if tx.send(published).is_err() {
            return;
        }
    }
}
