//! Publishing configuration to the discovery streams: a burst of changes is
//! folded into one publication (debounce), bounded so the first change of a
//! burst is never held longer than the debounce window.

use crate::config::ConfigSet;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// A configuration revision as seen by discovery streams.
#[derive(Debug)]
pub struct Published {
    pub config: Arc<ConfigSet>,
    /// When the first change folded into this publication was committed; the
    /// push-duration histogram measures from here to each proxy's ACK.
    pub changed_at: Instant,
}

/// Publishes the configuration on `tx` once changes (their commit times
/// arriving on `rx`) go quiet for a fifth of `debounce`, and at most
/// `debounce` after the first of them.
pub async fn debounce_loop(
    current: Arc<ArcSwap<ConfigSet>>,
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
        let published = Arc::new(Published {
            config: current.load_full(),
            changed_at: first,
        });
        tracing::debug!(revision = published.config.revision, "publishing config");
        metrics::histogram!("weft_control_debounce_seconds").record(first.elapsed().as_secs_f64());
        if tx.send(published).is_err() {
            return;
        }
    }
}
