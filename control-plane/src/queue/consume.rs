//! `Consume`: one bidirectional stream per consumer. The first request
//! subscribes (queue, or a pubsub topic's subscription; filters; prefetch);
//! then the server sends deliveries while the consumer has credit and
//! applies its credit, ack, nack and extend requests. A competing queue's
//! deliveries are in flight until acked (redelivered after the ack timeout
//! or when the stream ends); a broadcast queue's consumer gets every
//! message published while it is connected (acks are accepted and change
//! nothing; one that falls more than `BROADCAST_BUFFER` behind is told how
//! many it missed).

use super::backend::Backend;
use super::metrics::{
    ACKED_TOTAL, BROADCAST_MISSED_TOTAL, DELIVERED_TOTAL, DELIVERY_LATENCY, NACKED_TOTAL,
    REDELIVERED_TOTAL, STORE_RETRIES_TOTAL,
};
use super::service::{identity, now_ms, status, QueueService};
use super::state::{Delivery, Filter, Message};
use super::store::{Fanout, Queue};
use crate::caller;
use crate::config::kinds::QueuePermission;
use futures::FutureExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::v1::{self as pb, consume_request::Kind as In, consume_response::Kind as Out};

const DEFAULT_PREFETCH: u32 = 16;
const MAX_PREFETCH: u32 = 10_000;
const MAX_BATCH: u32 = 1_000;
/// Deliveries taken from the store at once for a consumer that gets them
/// one per response (each take is a round trip, and a write, on Redis).
const TAKE_AT_ONCE: u32 = 64;
/// Acks that arrived together and are settled in one store call, at most.
const ACKS_AT_ONCE: usize = 1_000;
/// Waits between tries of a take while the store is unreachable.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

type Tx = mpsc::Sender<Result<pb::ConsumeResponse, Status>>;

pub(super) async fn start(
    service: &QueueService,
    request: Request<Streaming<pb::ConsumeRequest>>,
) -> Result<Response<ReceiverStream<Result<pb::ConsumeResponse, Status>>>, Status> {
    let peer = caller::peer_of(&request);
    let mut inbound = request.into_inner();
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before subscribing"))?;
    let Some(In::Subscribe(sub)) = first.kind else {
        return Err(Status::invalid_argument(
            "the first request must be `subscribe`",
        ));
    };
    if sub.namespace.is_empty() || sub.queue.is_empty() {
        return Err(Status::invalid_argument("namespace and queue are required"));
    }
    service.check(
        peer.as_ref(),
        &sub.namespace,
        &sub.queue,
        QueuePermission::Consume,
    )?;
    let queue = service.target(&sub.namespace, &sub.queue, &sub.subscription)?;
    if sub.min_priority > 9 {
        return Err(Status::invalid_argument(format!(
            "subscribe.min_priority: {} is not 0..=9",
            sub.min_priority
        )));
    }
    let filter = Filter {
        kinds: sub.types,
        min_priority: u8::try_from(sub.min_priority).unwrap_or(0),
    };
    let consumer = service.consumers.fetch_add(1, Ordering::Relaxed);
    let credit = if sub.prefetch == 0 {
        DEFAULT_PREFETCH
    } else {
        sub.prefetch.min(MAX_PREFETCH)
    };
    let (tx, rx) = mpsc::channel(64);
    let store = service.store.clone();
    tracing::info!(queue = %queue.name, consumer, identity = %identity(peer.as_ref()), "consumer subscribed");
    let meters = Meters::new(&queue.name);
    let stream = Stream {
        store,
        queue,
        consumer,
        filter,
        credit,
        max_batch: sub.max_batch.clamp(1, MAX_BATCH),
        takes: 0,
        tx,
        meters,
    };
    tokio::spawn(stream.run(inbound));
    Ok(Response::new(ReceiverStream::new(rx)))
}

struct Stream {
    store: Arc<Backend>,
    queue: Arc<Queue>,
    consumer: u64,
    filter: Filter,
    credit: u32,
    /// Deliveries per response.
    max_batch: u32,
    /// Takes made so far (the store's retry key).
    takes: u64,
    tx: Tx,
    meters: Meters,
}

/// The stream's metric handles, looked up once.
struct Meters {
    delivered: metrics::Counter,
    redelivered: metrics::Counter,
    acked: metrics::Counter,
    latency: metrics::Histogram,
}

impl Meters {
    fn new(queue: &str) -> Meters {
        let q = || metrics::Label::new("queue", queue.to_string());
        Meters {
            delivered: metrics::counter!(DELIVERED_TOTAL, vec![q()]),
            redelivered: metrics::counter!(REDELIVERED_TOTAL, vec![q()]),
            acked: metrics::counter!(ACKED_TOTAL, vec![q()]),
            latency: metrics::histogram!(DELIVERY_LATENCY, vec![q()]),
        }
    }

    /// Counts a delivery; its wire form.
    fn deliver(&self, queue: &str, message: &Message, deadline_ms: u64) -> pb::Delivery {
        self.delivered.increment(1);
        if message.deliveries > 1 {
            self.redelivered.increment(1);
        } else {
            let waited = now_ms().saturating_sub(message.published_ms);
            self.latency.record(waited as f64 / 1000.0);
        }
        tracing::debug!(
            queue,
            id = message.id,
            deliveries = message.deliveries,
            traceparent = message.body.traceparent.as_deref().unwrap_or(""),
            "queue_deliver"
        );
        pb::Delivery {
            message: Some(super::wire::to_wire(message)),
            deadline_unix_ms: deadline_ms,
        }
    }
}

/// Sends deliveries, one per response or batched; false when the
/// consumer is gone.
async fn send(tx: &Tx, mut batch: Vec<pb::Delivery>, batched: bool) -> bool {
    let kind = if batched {
        Out::Deliveries(pb::Deliveries { items: batch })
    } else {
        match batch.pop() {
            Some(d) => Out::Delivery(d),
            None => return true,
        }
    };
    tx.send(Ok(pb::ConsumeResponse { kind: Some(kind) }))
        .await
        .is_ok()
}

impl Stream {
    async fn run(mut self, inbound: Streaming<pb::ConsumeRequest>) {
        self.queue.consumers.fetch_add(1, Ordering::Relaxed);
        self.counted().await;
        if self.queue.fanout() == Fanout::Broadcast {
            self.broadcast(inbound).await;
        } else {
            self.compete(inbound).await;
            self.release().await;
        }
        self.queue.consumers.fetch_sub(1, Ordering::Relaxed);
        self.counted().await;
        tracing::info!(queue = %self.queue.name, consumer = self.consumer, "consumer left");
    }

    /// The departed consumer's deliveries go back to the queue now. While
    /// the store is unreachable that is tried again in the background
    /// until the ack timeout, after which they come back anyway.
    async fn release(&self) {
        let Err(e) = self
            .store
            .release(&self.queue.name, now_ms(), self.consumer)
            .await
        else {
            return;
        };
        tracing::warn!(queue = %self.queue.name, consumer = self.consumer, error = %e, "could not give back a departed consumer's deliveries");
        if !e.is_transient() {
            return;
        }
        let (store, queue, consumer) = (self.store.clone(), self.queue.clone(), self.consumer);
        let until = tokio::time::Instant::now() + queue.config().settings.ack_timeout;
        tokio::spawn(async move {
            let mut pause = RETRY_FIRST;
            while tokio::time::Instant::now() + pause < until {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                match store.release(&queue.name, now_ms(), consumer).await {
                    Ok(()) => {
                        tracing::info!(queue = %queue.name, consumer, "gave back a departed consumer's deliveries");
                        return;
                    }
                    Err(e) if e.is_transient() => {}
                    Err(e) => {
                        tracing::warn!(queue = %queue.name, consumer, error = %e, "could not give back a departed consumer's deliveries");
                        return;
                    }
                }
            }
        });
    }

    /// Tells the store this queue's consumers here changed.
    async fn counted(&self) {
        if let Err(e) = self.store.consumers_changed(&self.queue, now_ms()).await {
            tracing::warn!(queue = %self.queue.name, error = %e, "could not record the broadcast consumers");
        }
    }

    /// Competing consumers: deliveries in flight until acked.
    async fn compete(&mut self, mut inbound: Streaming<pb::ConsumeRequest>) {
        let name = self.queue.name.clone();
        loop {
            // Register for wake-ups before looking, so a publish between
            // the look and the wait is not missed.
            let queue = self.queue.clone();
            let notified = queue.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batched = self.max_batch > 1;
            while self.credit > 0 {
                let want = self.credit.min(self.max_batch.max(TAKE_AT_ONCE));
                let Some(taken) = self.take(&name, want).await else {
                    return;
                };
                if taken.is_empty() {
                    break;
                }
                self.credit -= taken.len() as u32;
                for chunk in taken.chunks(self.max_batch as usize) {
                    let batch: Vec<_> = chunk
                        .iter()
                        .map(|d| self.meters.deliver(&name, &d.message, d.deadline_ms))
                        .collect();
                    if !send(&self.tx, batch, batched).await {
                        return;
                    }
                }
            }
            let credit = self.credit;
            tokio::select! {
                _ = &mut notified, if credit > 0 => {}
                _ = tokio::time::sleep(Duration::from_millis(500)), if credit > 0 => {}
                _ = self.tx.closed() => return,
                m = inbound.message() => {
                    if !self.inbound_acks_together(m, &mut inbound).await {
                        return;
                    }
                }
            }
        }
    }

    /// Like `inbound`, with the acks the consumer sent together (already
    /// received, not waited for) settled in one store call.
    async fn inbound_acks_together(
        &mut self,
        m: Result<Option<pb::ConsumeRequest>, Status>,
        inbound: &mut Streaming<pb::ConsumeRequest>,
    ) -> bool {
        let mut ids = match m {
            Ok(Some(pb::ConsumeRequest {
                kind: Some(In::Ack(id)),
            })) => vec![id],
            Ok(Some(pb::ConsumeRequest {
                kind: Some(In::Acks(a)),
            })) => a.ids,
            other => return self.inbound(other).await,
        };
        let mut after = None;
        while ids.len() < ACKS_AT_ONCE {
            match inbound.message().now_or_never() {
                Some(Ok(Some(pb::ConsumeRequest {
                    kind: Some(In::Ack(id)),
                }))) => ids.push(id),
                Some(Ok(Some(pb::ConsumeRequest {
                    kind: Some(In::Acks(a)),
                }))) => ids.extend(a.ids),
                Some(next) => {
                    after = Some(next);
                    break;
                }
                None => break,
            }
        }
        if !self
            .answer(pb::ConsumeRequest {
                kind: Some(In::Acks(pb::Acks { ids })),
            })
            .await
        {
            return false;
        }
        match after {
            Some(next) => self.inbound(next).await,
            None => true,
        }
    }

    /// Up to `want` deliveries. While the store is unreachable (Redis
    /// restarting) the consumer is told once and the same take is tried
    /// again, so a take whose reply was lost is answered from what it
    /// took. None when the consumer is gone or the store refused.
    async fn take(&mut self, name: &str, want: u32) -> Option<Vec<Delivery>> {
        self.takes += 1;
        let mut pause = RETRY_FIRST;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let who = (self.consumer, self.takes);
            match self
                .store
                .take(name, now_ms(), who, &self.filter, want)
                .await
            {
                Ok(t) => {
                    if let Some(since) = down_since {
                        let down_ms = since.elapsed().as_millis() as u64;
                        tracing::info!(
                            queue = name,
                            consumer = self.consumer,
                            down_ms,
                            "queue store reachable again; delivering"
                        );
                    }
                    return Some(t);
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!(STORE_RETRIES_TOTAL, "queue" => name.to_string())
                        .increment(1);
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(queue = name, consumer = self.consumer, error = %e, "queue store unreachable; the consumer waits");
                        let why = format!(
                            "queue storage unreachable ({e}); deliveries resume when it is back"
                        );
                        let resp = pb::ConsumeResponse {
                            kind: Some(Out::Error(why)),
                        };
                        if self.tx.send(Ok(resp)).await.is_err() {
                            return None;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.tx.closed() => return None,
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    let _ = self.tx.send(Err(status(e))).await;
                    return None;
                }
            }
        }
    }

    /// Broadcast: every message published while connected, as credit
    /// allows; falling too far behind loses the oldest (and says so).
    async fn broadcast(&mut self, mut inbound: Streaming<pb::ConsumeRequest>) {
        let name = self.queue.name.clone();
        let mut feed = self.queue.feed.subscribe();
        loop {
            let credit = self.credit;
            tokio::select! {
                m = feed.recv(), if credit > 0 => match m {
                    Ok(m) => {
                        if !self.filter.accepts(&m) {
                            continue;
                        }
                        self.credit -= 1;
                        let mut m = (*m).clone();
                        m.deliveries = 1;
                        let d = self.meters.deliver(&name, &m, 0);
                        if !send(&self.tx, vec![d], false).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!(BROADCAST_MISSED_TOTAL, "queue" => name.clone()).increment(n);
                        let why = format!("missed {n} broadcast messages: this consumer fell more than {} behind", super::store::BROADCAST_BUFFER);
                        if self.tx.send(Ok(pb::ConsumeResponse { kind: Some(Out::Error(why)) })).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = self.tx.closed() => return,
                m = inbound.message() => {
                    if !self.inbound(m).await {
                        return;
                    }
                }
            }
        }
    }

    /// The consumer settled `n` deliveries (acked or nacked them): it no
    /// longer holds them, so their credit comes back whatever the store
    /// answered. (A settle the store could not apply, Redis being down,
    /// leaves the delivery to its ack timeout; keeping its credit would
    /// starve a stream that outlives the outage.)
    fn settled(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.credit = self.credit.saturating_add(n).min(MAX_PREFETCH);
    }

    /// What the consumer sent: false when its stream ended or broke, or
    /// it is gone.
    async fn inbound(&mut self, m: Result<Option<pb::ConsumeRequest>, Status>) -> bool {
        match m {
            Ok(Some(req)) => self.answer(req).await,
            Ok(None) | Err(_) => false,
        }
    }

    /// Applies one request after the subscription and tells the consumer
    /// when it could not; false when the consumer is gone.
    async fn answer(&mut self, req: pb::ConsumeRequest) -> bool {
        let Some(err) = self.handle(req).await else {
            return true;
        };
        let resp = pb::ConsumeResponse {
            kind: Some(Out::Error(err)),
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }

    /// One request after the subscription; Some(error) to tell the consumer.
    async fn handle(&mut self, req: pb::ConsumeRequest) -> Option<String> {
        let q = self.queue.clone();
        let queue = q.name.as_str();
        let broadcast = q.fanout() == Fanout::Broadcast;
        let result = match req.kind {
            Some(In::Credit(n)) => {
                self.credit = self.credit.saturating_add(n).min(MAX_PREFETCH);
                Ok(())
            }
            // Nothing is kept for a broadcast consumer: settling only
            // returns credit.
            Some(In::Ack(_) | In::Nack(_)) if broadcast => {
                self.settled(1);
                Ok(())
            }
            Some(In::Acks(a)) if broadcast => {
                self.settled(a.ids.len());
                Ok(())
            }
            Some(In::Ack(id)) => {
                self.settled(1);
                match self.store.ack(queue, &[id], self.consumer).await {
                    Ok(mut failed) => {
                        if failed.is_empty() {
                            self.meters.acked.increment(1);
                            Ok(())
                        } else {
                            Err(failed.remove(0).1.into())
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Some(In::Acks(a)) => {
                self.settled(a.ids.len());
                match self.store.ack(queue, &a.ids, self.consumer).await {
                    Ok(failed) => {
                        let done = a.ids.len() - failed.len();
                        self.meters.acked.increment(done as u64);
                        if !failed.is_empty() {
                            let why: Vec<String> =
                                failed.iter().map(|(_, e)| e.to_string()).collect();
                            return Some(why.join("; "));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Some(In::Nack(n)) => {
                self.settled(1);
                let r = self
                    .store
                    .nack(queue, now_ms(), n.id, self.consumer, n.requeue, &n.error)
                    .await;
                if r.is_ok() {
                    metrics::counter!(NACKED_TOTAL, "queue" => queue.to_string(), "requeue" => if n.requeue { "true" } else { "false" }).increment(1);
                }
                r
            }
            Some(In::Extend(_)) if broadcast => {
                return Some("extend: broadcast deliveries have no ack deadline".into())
            }
            Some(In::Extend(e)) => self
                .store
                .extend(
                    queue,
                    now_ms(),
                    e.id,
                    self.consumer,
                    Duration::from_millis(e.by_ms),
                )
                .await
                .map(drop),
            Some(In::Subscribe(_)) => {
                return Some("already subscribed: one queue per stream".into())
            }
            None => return Some("empty request".into()),
        };
        result.err().map(|e| e.to_string())
    }
}
