//! `weft.v1.Queue` on the control plane's gRPC port: Publish, Consume and
//! Describe over the embedded store, each call checked against the
//! QueuePolicies (`access`). Bad input is refused with the field and
//! changes nothing: a publish is checked whole before any message of it is
//! enqueued.

use super::access::Access;
use super::state::{Filter, NewMessage, Published, NORMAL};
use super::store::{Store, StoreError};
use crate::caller;
use crate::config::kinds::QueuePermission;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1::{self as pb, consume_request::Kind as In, consume_response::Kind as Out};

pub const PUBLISHED_TOTAL: &str = "weft_queue_published_total";
pub const DELIVERED_TOTAL: &str = "weft_queue_delivered_total";
pub const ACKED_TOTAL: &str = "weft_queue_acked_total";
pub const PUBLISH_DURATION: &str = "weft_queue_publish_duration_seconds";
const DEFAULT_PREFETCH: u32 = 16;
const MAX_PREFETCH: u32 = 10_000;

fn now_ms() -> u64 {
    xds_proto::units::unix_ms(SystemTime::now())
}

pub struct QueueService {
    store: Arc<Store>,
    access: Arc<ArcSwap<Access>>,
    consumers: AtomicU64,
}

impl QueueService {
    pub fn new(store: Arc<Store>, access: Arc<ArcSwap<Access>>) -> QueueService {
        QueueService {
            store,
            access,
            consumers: AtomicU64::new(1),
        }
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::UnknownQueue(q) => Status::not_found(format!("queue {q} does not exist")),
        StoreError::Ack(a) => Status::failed_precondition(a.to_string()),
        StoreError::Log(l) => Status::unavailable(format!("queue storage: {l}")),
        StoreError::Crypt(c) => Status::failed_precondition(c.to_string()),
    }
}

fn queue_name(namespace: &str, queue: &str) -> Result<String, Status> {
    if namespace.is_empty() || queue.is_empty() {
        return Err(Status::invalid_argument("namespace and queue are required"));
    }
    Ok(format!("{namespace}/{queue}"))
}

fn publisher(peer: Option<&SpiffeId>) -> String {
    peer.map_or_else(|| "(insecure-dev)".to_string(), SpiffeId::to_string)
}

#[tonic::async_trait]
impl pb::queue_server::Queue for QueueService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let started = std::time::Instant::now();
        let peer = caller::peer_of(&request);
        let req = request.into_inner();
        let name = queue_name(&req.namespace, &req.queue)?;
        self.access.load().check(
            peer.as_ref(),
            &req.namespace,
            &req.queue,
            QueuePermission::Publish,
        )?;
        let queue = self.store.queue(&name).map_err(status)?;
        let max = queue.config().max_message_bytes;
        if req.messages.is_empty() {
            return Err(Status::invalid_argument("messages: at least one"));
        }
        let mut bodies = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.into_iter().enumerate() {
            if m.payload.len() as u64 > max {
                return Err(Status::invalid_argument(format!(
                    "messages[{i}].payload: {} bytes is over the queue's maxMessageBytes {max}",
                    m.payload.len()
                )));
            }
            if m.priority > 9 {
                return Err(Status::invalid_argument(format!(
                    "messages[{i}].priority: {} is not 0..=9",
                    m.priority
                )));
            }
            let opt = |s: String| (!s.is_empty()).then_some(s);
            bodies.push(NewMessage {
                key: opt(m.key),
                kind: m.r#type,
                priority: u8::try_from(m.priority).unwrap_or(NORMAL),
                headers: m.headers,
                payload: m.payload,
                deliver_at_ms: (m.deliver_at_unix_ms > 0).then_some(m.deliver_at_unix_ms),
                ttl: (req.ttl_ms > 0).then(|| Duration::from_millis(req.ttl_ms)),
                traceparent: opt(m.traceparent),
                publisher: publisher(peer.as_ref()),
            });
        }
        let outcomes = self
            .store
            .publish(&name, now_ms(), bodies)
            .await
            .map_err(status)?;
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                let (result, id, reason) = match o {
                    Published::Enqueued(id) => (pb::publish_outcome::Result::Enqueued, id, String::new()),
                    Published::Deduplicated(id) => {
                        (pb::publish_outcome::Result::Deduplicated, id, String::new())
                    }
                    Published::Refused(why) => (pb::publish_outcome::Result::Refused, 0, why),
                };
                metrics::counter!(PUBLISHED_TOTAL, "queue" => name.clone(), "result" => result.as_str_name().to_ascii_lowercase()).increment(1);
                pb::PublishOutcome {
                    result: result as i32,
                    id,
                    reason,
                }
            })
            .collect();
        metrics::histogram!(PUBLISH_DURATION, "queue" => name)
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::PublishResponse { outcomes }))
    }

    type ConsumeStream = ReceiverStream<Result<pb::ConsumeResponse, Status>>;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
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
        let name = queue_name(&sub.namespace, &sub.queue)?;
        self.access.load().check(
            peer.as_ref(),
            &sub.namespace,
            &sub.queue,
            QueuePermission::Consume,
        )?;
        let queue = self.store.queue(&name).map_err(status)?;
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
        let consumer = self.consumers.fetch_add(1, Ordering::Relaxed);
        let mut credit = if sub.prefetch == 0 {
            DEFAULT_PREFETCH
        } else {
            sub.prefetch.min(MAX_PREFETCH)
        };
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        tracing::info!(queue = %name, consumer, identity = %publisher(peer.as_ref()), "consumer subscribed");
        tokio::spawn(async move {
            loop {
                // Register for wake-ups before looking, so a publish between
                // the look and the wait is not missed.
                let notified = queue.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                while credit > 0 {
                    match store.next(&name, now_ms(), consumer, &filter) {
                        Ok(Some(d)) => {
                            credit -= 1;
                            metrics::counter!(DELIVERED_TOTAL, "queue" => name.clone())
                                .increment(1);
                            let msg = pb::ConsumeResponse {
                                kind: Some(Out::Delivery(pb::Delivery {
                                    message: Some(super::store::to_wire(&d.message)),
                                    deadline_unix_ms: d.deadline_ms,
                                })),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                let _ = store.release(&name, now_ms(), consumer).await;
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(status(e))).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = &mut notified, if credit > 0 => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)), if credit > 0 => {}
                    _ = tx.closed() => break,
                    m = inbound.message() => match m {
                        Ok(Some(req)) => {
                            if let Some(err) = handle(&store, &name, consumer, &mut credit, req).await {
                                let resp = pb::ConsumeResponse { kind: Some(Out::Error(err)) };
                                if tx.send(Ok(resp)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            if let Err(e) = store.release(&name, now_ms(), consumer).await {
                tracing::warn!(queue = %name, consumer, error = %e, "could not give back a departed consumer's deliveries");
            }
            tracing::info!(queue = %name, consumer, "consumer left");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeQueueRequest>,
    ) -> Result<Response<pb::DescribeQueueResponse>, Status> {
        let peer = caller::peer_of(&request);
        let req = request.into_inner();
        if req.namespace.is_empty() {
            return Err(Status::invalid_argument("namespace is required"));
        }
        let access = self.access.load();
        let queues = if req.name.is_empty() {
            self.store
                .queues()
                .into_iter()
                .filter(|q| {
                    q.name.split_once('/').is_some_and(|(ns, n)| {
                        ns == req.namespace
                            && access
                                .check(peer.as_ref(), ns, n, QueuePermission::Admin)
                                .is_ok()
                    })
                })
                .collect()
        } else {
            access.check(
                peer.as_ref(),
                &req.namespace,
                &req.name,
                QueuePermission::Admin,
            )?;
            vec![self
                .store
                .queue(&queue_name(&req.namespace, &req.name)?)
                .map_err(status)?]
        };
        let queues = queues
            .into_iter()
            .map(|q| {
                let depth = q.depth();
                let config = q.config();
                let (namespace, name) = q.name.split_once('/').unwrap_or(("", &q.name));
                pb::QueueStatus {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    r#type: config.kind,
                    ready_by_priority: depth.ready_by_priority.to_vec(),
                    waiting: depth.waiting,
                    in_flight: depth.in_flight,
                    bytes: depth.bytes,
                    oldest_unix_ms: q.oldest_ms().unwrap_or(0),
                    dead_letter: config.dead_letter.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::DescribeQueueResponse { queues }))
    }
}

/// One request after the subscription; Some(error) to tell the consumer.
async fn handle(
    store: &Store,
    queue: &str,
    consumer: u64,
    credit: &mut u32,
    req: pb::ConsumeRequest,
) -> Option<String> {
    let result = match req.kind {
        Some(In::Credit(n)) => {
            *credit = credit.saturating_add(n).min(MAX_PREFETCH);
            Ok(())
        }
        Some(In::Ack(id)) => {
            let r = store.ack(queue, id, consumer).await;
            if r.is_ok() {
                metrics::counter!(ACKED_TOTAL, "queue" => queue.to_string()).increment(1);
                *credit = credit.saturating_add(1).min(MAX_PREFETCH);
            }
            r
        }
        Some(In::Nack(n)) => {
            let r = store
                .nack(queue, now_ms(), n.id, consumer, n.requeue, &n.error)
                .await;
            if r.is_ok() {
                *credit = credit.saturating_add(1).min(MAX_PREFETCH);
            }
            r
        }
        Some(In::Extend(e)) => store
            .extend(
                queue,
                now_ms(),
                e.id,
                consumer,
                Duration::from_millis(e.by_ms),
            )
            .map(drop),
        Some(In::Subscribe(_)) => return Some("already subscribed: one queue per stream".into()),
        None => return Some("empty request".into()),
    };
    result.err().map(|e| e.to_string())
}

/// Runs every queue's clock: due messages, ack timeouts, expiry and log
/// compaction, at the earliest queue deadline (checked at least every
/// second).
pub async fn tick_loop(store: Arc<Store>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = now_ms();
        if let Err(e) = store.tick(now).await {
            tracing::warn!(error = %e, "queue tick failed");
        }
        let wait = store
            .next_wakeup()
            .map_or(1_000, |t| t.saturating_sub(now_ms()).clamp(1, 1_000));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait.max(10))) => {}
            _ = stop.changed() => return,
        }
    }
}
