//! `Consume`: one bidirectional stream per consumer. The first request
//! subscribes (queue, or a pubsub topic's subscription; filters; prefetch);
//! then the server sends deliveries while the consumer has credit and
//! applies its credit, ack, nack and extend requests. A competing queue's
//! deliveries are in flight until acked (redelivered after the ack timeout
//! or when the stream ends); a broadcast queue's consumer gets every
//! message published while it is connected (acks are accepted and change
//! nothing; one that falls more than `BROADCAST_BUFFER` behind is told how
//! many it missed).

use super::metrics::{
    ACKED_TOTAL, BROADCAST_MISSED_TOTAL, DELIVERED_TOTAL, DELIVERY_LATENCY, NACKED_TOTAL,
    REDELIVERED_TOTAL,
};
use super::service::{identity, now_ms, status, QueueService};
use super::state::{Filter, Message};
use super::store::{Fanout, Queue, Store};
use crate::caller;
use crate::config::kinds::QueuePermission;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::v1::{self as pb, consume_request::Kind as In, consume_response::Kind as Out};

const DEFAULT_PREFETCH: u32 = 16;
const MAX_PREFETCH: u32 = 10_000;

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
    let stream = Stream {
        store,
        queue,
        consumer,
        filter,
        credit,
        tx,
    };
    tokio::spawn(stream.run(inbound));
    Ok(Response::new(ReceiverStream::new(rx)))
}

struct Stream {
    store: Arc<Store>,
    queue: Arc<Queue>,
    consumer: u64,
    filter: Filter,
    credit: u32,
    tx: Tx,
}

/// Counts a delivery and sends it; false when the consumer is gone.
async fn send(tx: &Tx, queue: &str, message: &Message, deadline_ms: u64) -> bool {
    metrics::counter!(DELIVERED_TOTAL, "queue" => queue.to_string()).increment(1);
    if message.deliveries > 1 {
        metrics::counter!(REDELIVERED_TOTAL, "queue" => queue.to_string()).increment(1);
    } else {
        let waited = now_ms().saturating_sub(message.published_ms);
        metrics::histogram!(DELIVERY_LATENCY, "queue" => queue.to_string())
            .record(waited as f64 / 1000.0);
    }
    let span = tracing::debug_span!(
        "queue_deliver",
        queue,
        id = message.id,
        deliveries = message.deliveries,
        traceparent = message.body.traceparent.as_deref().unwrap_or(""),
    );
    let _e = span.enter();
    let msg = pb::ConsumeResponse {
        kind: Some(Out::Delivery(pb::Delivery {
            message: Some(super::store::to_wire(message)),
            deadline_unix_ms: deadline_ms,
        })),
    };
    tx.send(Ok(msg)).await.is_ok()
}

impl Stream {
    async fn run(mut self, inbound: Streaming<pb::ConsumeRequest>) {
        self.queue.consumers.fetch_add(1, Ordering::Relaxed);
        if self.queue.fanout() == Fanout::Broadcast {
            self.broadcast(inbound).await;
        } else {
            self.compete(inbound).await;
            if let Err(e) = self
                .store
                .release(&self.queue.name, now_ms(), self.consumer)
                .await
            {
                tracing::warn!(queue = %self.queue.name, consumer = self.consumer, error = %e, "could not give back a departed consumer's deliveries");
            }
        }
        self.queue.consumers.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(queue = %self.queue.name, consumer = self.consumer, "consumer left");
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
            while self.credit > 0 {
                match self
                    .store
                    .next(&name, now_ms(), self.consumer, &self.filter)
                {
                    Ok(Some(d)) => {
                        self.credit -= 1;
                        if !send(&self.tx, &name, &d.message, d.deadline_ms).await {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = self.tx.send(Err(status(e))).await;
                        return;
                    }
                }
            }
            let credit = self.credit;
            tokio::select! {
                _ = &mut notified, if credit > 0 => {}
                _ = tokio::time::sleep(Duration::from_millis(500)), if credit > 0 => {}
                _ = self.tx.closed() => return,
                m = inbound.message() => match m {
                    Ok(Some(req)) => {
                        if !self.answer(req).await {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
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
                        if !send(&self.tx, &name, &m, 0).await {
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
                m = inbound.message() => match m {
                    Ok(Some(req)) => {
                        if !self.answer(req).await {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
            }
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
        let queue = self.queue.name.as_str();
        let broadcast = self.queue.fanout() == Fanout::Broadcast;
        let settled = |credit: &mut u32| *credit = credit.saturating_add(1).min(MAX_PREFETCH);
        let result = match req.kind {
            Some(In::Credit(n)) => {
                self.credit = self.credit.saturating_add(n).min(MAX_PREFETCH);
                Ok(())
            }
            // Nothing is kept for a broadcast consumer: settling only
            // returns credit.
            Some(In::Ack(_) | In::Nack(_)) if broadcast => {
                settled(&mut self.credit);
                Ok(())
            }
            Some(In::Ack(id)) => {
                let r = self.store.ack(queue, id, self.consumer).await;
                if r.is_ok() {
                    metrics::counter!(ACKED_TOTAL, "queue" => queue.to_string()).increment(1);
                    tracing::debug!(queue, id, "acked");
                    settled(&mut self.credit);
                }
                r
            }
            Some(In::Nack(n)) => {
                let r = self
                    .store
                    .nack(queue, now_ms(), n.id, self.consumer, n.requeue, &n.error)
                    .await;
                if r.is_ok() {
                    metrics::counter!(NACKED_TOTAL, "queue" => queue.to_string(), "requeue" => if n.requeue { "true" } else { "false" }).increment(1);
                    settled(&mut self.credit);
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
                .map(drop),
            Some(In::Subscribe(_)) => {
                return Some("already subscribed: one queue per stream".into())
            }
            None => return Some("empty request".into()),
        };
        result.err().map(|e| e.to_string())
    }
}
