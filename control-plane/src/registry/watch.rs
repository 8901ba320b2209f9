//! Watch streams: a snapshot or the logged changes after the watcher's
//! revision, then live changes, each event exactly once and in revision
//! order. A watcher that falls behind the live broadcast catches up from the
//! stored log; one whose revision is older than the log gets a snapshot.

use super::Registry;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use xds_proto::v1 as pb;

type Tx = mpsc::Sender<Result<pb::WatchInstancesResponse, Status>>;

/// Events read from the log per message while catching up.
const CATCH_UP_BATCH: usize = 1000;

struct Watcher {
    registry: Arc<Registry>,
    namespace: String,
    service: String,
    tx: Tx,
    /// The revision the watcher has been brought to.
    last: u64,
}

/// Streams changes matching `namespace` / `service` (empty: any) after
/// `from_revision` (0: a snapshot first) on `tx` until the watcher goes away.
pub(super) async fn run(
    registry: Arc<Registry>,
    namespace: String,
    service: String,
    from_revision: u64,
    tx: Tx,
) {
    // Subscribe before reading the log, so nothing falls between the two.
    let mut live = registry.subscribe();
    let mut w = Watcher {
        registry,
        namespace,
        service,
        tx,
        last: from_revision,
    };
    metrics::gauge!("weft_control_registry_watchers").increment(1.0);
    let _ = w.serve(&mut live).await;
    metrics::gauge!("weft_control_registry_watchers").decrement(1.0);
}

impl Watcher {
    async fn serve(
        &mut self,
        live: &mut broadcast::Receiver<Arc<Vec<pb::InstanceEvent>>>,
    ) -> Result<(), ()> {
        if self.last == 0 || self.last > self.registry.revision() {
            self.snapshot().await?;
        } else {
            self.catch_up().await?;
        }
        loop {
            match live.recv().await {
                Ok(batch) => {
                    let top = batch.last().map(|e| e.revision).unwrap_or(0);
                    if top <= self.last {
                        continue;
                    }
                    let events: Vec<_> = batch
                        .iter()
                        .filter(|e| e.revision > self.last && self.matches(e))
                        .cloned()
                        .collect();
                    self.last = top;
                    if !events.is_empty() {
                        self.send(events, false).await?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(
                        skipped = n,
                        "registry watcher lagged; catching up from the log"
                    );
                    self.catch_up().await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(()),
            }
        }
    }

    fn matches(&self, e: &pb::InstanceEvent) -> bool {
        let Some(i) = &e.instance else { return false };
        (self.namespace.is_empty() || i.namespace == self.namespace)
            && (self.service.is_empty() || i.service == self.service)
    }

    async fn send(&mut self, events: Vec<pb::InstanceEvent>, snapshot: bool) -> Result<(), ()> {
        self.tx
            .send(Ok(pb::WatchInstancesResponse {
                events,
                revision: self.last,
                snapshot,
            }))
            .await
            .map_err(|_| ())
    }

    async fn snapshot(&mut self) -> Result<(), ()> {
        let (instances, revision) =
            self.registry
                .list(&self.namespace, &self.service, &Default::default());
        self.last = revision;
        let events = instances
            .into_iter()
            .map(|i| pb::InstanceEvent {
                revision: i.revision,
                r#type: pb::EventType::Added as i32,
                instance: Some(i),
            })
            .collect();
        self.send(events, true).await
    }

    /// Sends the logged events after `last`, in batches.
    async fn catch_up(&mut self) -> Result<(), ()> {
        loop {
            let read = self.registry.events_after(self.last, CATCH_UP_BATCH).await;
            let (events, complete) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable(format!(
                            "cannot read the registry log: {e}"
                        ))))
                        .await;
                    return Err(());
                }
            };
            if !complete {
                // The history the watcher needs was pruned.
                return self.snapshot().await;
            }
            let full = events.len() >= CATCH_UP_BATCH;
            let Some(top) = events.last().map(|e| e.revision) else {
                return Ok(());
            };
            let matching: Vec<_> = events.into_iter().filter(|e| self.matches(e)).collect();
            self.last = top;
            if !matching.is_empty() {
                self.send(matching, false).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }
}
