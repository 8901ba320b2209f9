//! `weft.v1.Queue` on the control plane's gRPC port: Publish, Consume
//! (`consume`), Describe, and the admin calls Peek, Purge and Redrive over
//! the embedded store, each call checked against the QueuePolicies
//! (`access`); refusals and admin actions go to the audit log (`audit`).
//! Bad input is refused with the field and changes nothing: a publish is
//! checked whole before any message of it is enqueued.

use super::access::Access;
use super::audit::Audit;
use super::backend::Backend;
use super::metrics::{PUBLISHED_TOTAL, PUBLISH_DURATION};
use super::state::{NewMessage, Published, NORMAL};
use super::store::{Fanout, Queue, StoreError};
use crate::caller;
use crate::config::kinds::QueuePermission;
use arc_swap::ArcSwap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1 as pb;

const DEFAULT_PEEK: u32 = 20;
const MAX_PEEK: u32 = 1000;

pub(super) fn now_ms() -> u64 {
    xds_proto::units::unix_ms(SystemTime::now())
}

pub struct QueueService {
    pub(super) store: Arc<Backend>,
    access: Arc<ArcSwap<Access>>,
    audit: Arc<Audit>,
    pub(super) consumers: AtomicU64,
    follower: Option<Arc<super::Follower>>,
}

impl QueueService {
    pub fn new(
        store: Arc<Backend>,
        access: Arc<ArcSwap<Access>>,
        audit: Arc<Audit>,
    ) -> QueueService {
        QueueService {
            store,
            access,
            audit,
            consumers: AtomicU64::new(1),
            follower: None,
        }
    }

    /// Each call first catches up with the committed config through
    /// `follower` (see `Follower::catch_up`).
    pub fn following(mut self, follower: Arc<super::Follower>) -> QueueService {
        self.follower = Some(follower);
        self
    }

    fn catch_up(&self) {
        if let Some(f) = &self.follower {
            f.catch_up();
        }
    }

    /// Ok when `caller` may `perm` on the queue; a refusal is audited.
    pub(super) fn check(
        &self,
        caller: Option<&SpiffeId>,
        namespace: &str,
        queue: &str,
        perm: QueuePermission,
    ) -> Result<(), Status> {
        self.catch_up();
        self.access
            .load()
            .check(caller, namespace, queue, perm)
            .inspect_err(|e| {
                self.audit.refused(
                    caller,
                    super::access::permission_name(perm),
                    &format!("{namespace}/{queue}"),
                    e.message(),
                )
            })
    }

    /// The queue (or subscription) an admin call names, once the caller
    /// may administer it.
    fn admin_target(
        &self,
        caller: Option<&SpiffeId>,
        namespace: &str,
        queue: &str,
        subscription: &str,
    ) -> Result<Arc<Queue>, Status> {
        queue_name(namespace, queue)?;
        self.check(caller, namespace, queue, QueuePermission::Admin)?;
        self.target(namespace, queue, subscription)
    }

    /// The store queue a call names: the queue itself, or one subscription
    /// of a pubsub topic (required there, refused elsewhere).
    pub(super) fn target(
        &self,
        namespace: &str,
        queue: &str,
        subscription: &str,
    ) -> Result<Arc<Queue>, Status> {
        let topic = self
            .store
            .queue(&queue_name(namespace, queue)?)
            .map_err(status)?;
        match (topic.fanout(), subscription.is_empty()) {
            (Fanout::Topic(subs), true) => Err(Status::invalid_argument(format!(
                "subscription: {namespace}/{queue} is a pubsub topic; name one of its subscriptions ({})",
                subs.iter()
                    .filter_map(|s| s.rsplit('/').next())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            (Fanout::Topic(_), false) => self
                .store
                .queue(&super::store_name(namespace, queue, subscription))
                .map_err(|_| {
                    Status::not_found(format!(
                        "subscription: {namespace}/{queue} has no subscription \"{subscription}\""
                    ))
                }),
            (_, false) => Err(Status::invalid_argument(format!(
                "subscription: {namespace}/{queue} is not a pubsub topic"
            ))),
            (_, true) => Ok(topic),
        }
    }
}

pub(super) fn status(e: StoreError) -> Status {
    match e {
        StoreError::UnknownQueue(q) => Status::not_found(format!("queue {q} does not exist")),
        StoreError::Ack(a) => Status::failed_precondition(a.to_string()),
        StoreError::Log(l) => Status::unavailable(format!("queue storage: {l}")),
        StoreError::Backend(b) | StoreError::Unavailable(b) => {
            Status::unavailable(format!("queue storage: {b}"))
        }
        StoreError::Crypt(c) => Status::failed_precondition(c.to_string()),
        e @ StoreError::NoDeadLetter(_) => Status::failed_precondition(e.to_string()),
    }
}

fn queue_name(namespace: &str, queue: &str) -> Result<String, Status> {
    if namespace.is_empty() || queue.is_empty() {
        return Err(Status::invalid_argument("namespace and queue are required"));
    }
    Ok(format!("{namespace}/{queue}"))
}

pub(super) fn identity(peer: Option<&SpiffeId>) -> String {
    peer.map_or_else(|| "(insecure-dev)".to_string(), SpiffeId::to_string)
}

/// A request's messages as the store takes them, or the first bad field.
fn bodies(
    req: &mut pb::PublishRequest,
    queue: &Queue,
    peer: Option<&SpiffeId>,
) -> Result<Vec<NewMessage>, Status> {
    let (max, broadcast) = queue.publish_limits();
    if req.messages.is_empty() {
        return Err(Status::invalid_argument("messages: at least one"));
    }
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in std::mem::take(&mut req.messages).into_iter().enumerate() {
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
        if broadcast && m.deliver_at_unix_ms > 0 {
            return Err(Status::invalid_argument(format!(
                "messages[{i}].deliver_at_unix_ms: a broadcast queue delivers at once (nothing is kept to deliver later)"
            )));
        }
        let opt = |s: String| (!s.is_empty()).then_some(s);
        out.push(NewMessage {
            key: opt(m.key),
            kind: m.r#type,
            priority: u8::try_from(m.priority).unwrap_or(NORMAL),
            headers: m.headers,
            payload: m.payload,
            deliver_at_ms: (m.deliver_at_unix_ms > 0).then_some(m.deliver_at_unix_ms),
            ttl: (req.ttl_ms > 0).then(|| Duration::from_millis(req.ttl_ms)),
            traceparent: opt(m.traceparent),
            publisher: identity(peer),
        });
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::queue_server::Queue for QueueService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let started = std::time::Instant::now();
        let peer = caller::peer_of(&request);
        let mut req = request.into_inner();
        let name = queue_name(&req.namespace, &req.queue)?;
        self.check(
            peer.as_ref(),
            &req.namespace,
            &req.queue,
            QueuePermission::Publish,
        )?;
        let queue = self.store.queue(&name).map_err(status)?;
        let bodies = bodies(&mut req, &queue, peer.as_ref())?;
        let span = tracing::debug_span!(
            "queue_publish",
            queue = %name,
            messages = bodies.len(),
            traceparent = bodies.first().and_then(|b| b.traceparent.as_deref()).unwrap_or(""),
        );
        let outcomes = {
            let _e = span.enter();
            self.store.publish(&name, now_ms(), bodies)
        }
        .await
        .map_err(status)?;
        // Counted once per result kind per call, not per message.
        let mut counts = [0u64; 3];
        let outcomes = outcomes
            .into_iter()
            .map(|(o, receivers)| {
                let (result, id, reason) = match o {
                    Published::Enqueued(id) => {
                        (pb::publish_outcome::Result::Enqueued, id, String::new())
                    }
                    Published::Deduplicated(id) => {
                        (pb::publish_outcome::Result::Deduplicated, id, String::new())
                    }
                    Published::Refused(why) => (pb::publish_outcome::Result::Refused, 0, why),
                };
                counts[result as usize] += 1;
                pb::PublishOutcome {
                    result: result as i32,
                    id,
                    reason,
                    receivers: if result == pb::publish_outcome::Result::Enqueued {
                        receivers
                    } else {
                        0
                    },
                }
            })
            .collect();
        for (n, result) in counts.iter().zip(["enqueued", "deduplicated", "refused"]) {
            if *n > 0 {
                metrics::counter!(PUBLISHED_TOTAL, "queue" => name.clone(), "result" => result)
                    .increment(*n);
            }
        }
        metrics::histogram!(PUBLISH_DURATION, "queue" => name)
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::PublishResponse { outcomes }))
    }

    type ConsumeStream = ReceiverStream<Result<pb::ConsumeResponse, Status>>;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        super::consume::start(self, request).await
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
        self.catch_up();
        let access = self.access.load();
        let queues = if req.name.is_empty() {
            self.store
                .queues()
                .into_iter()
                .filter(|q| {
                    // Subscriptions are listed under their topic.
                    let mut parts = q.name.split('/');
                    let (Some(ns), Some(n), None) = (parts.next(), parts.next(), parts.next())
                    else {
                        return false;
                    };
                    ns == req.namespace
                        && access
                            .check(peer.as_ref(), ns, n, QueuePermission::Admin)
                            .is_ok()
                })
                .collect()
        } else {
            self.check(
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
        let mut out = Vec::new();
        let now = now_ms();
        for q in queues {
            match q.fanout() {
                Fanout::Topic(subs) => {
                    for s in subs {
                        if let Ok(sub) = self.store.queue(&s) {
                            let stats = self.store.stats(&sub, now).await.map_err(status)?;
                            out.push(queue_status(&sub, &q, stats));
                        }
                    }
                }
                _ => {
                    let stats = self.store.stats(&q, now).await.map_err(status)?;
                    out.push(queue_status(&q, &q, stats));
                }
            }
        }
        Ok(Response::new(pb::DescribeQueueResponse { queues: out }))
    }

    async fn peek(
        &self,
        request: Request<pb::PeekRequest>,
    ) -> Result<Response<pb::PeekResponse>, Status> {
        let peer = caller::peer_of(&request);
        let req = request.into_inner();
        let q = self.admin_target(peer.as_ref(), &req.namespace, &req.queue, &req.subscription)?;
        if req.limit > MAX_PEEK {
            return Err(Status::invalid_argument(format!(
                "limit: {} is over {MAX_PEEK}",
                req.limit
            )));
        }
        let limit = if req.limit == 0 {
            DEFAULT_PEEK
        } else {
            req.limit
        };
        let found = self
            .store
            .peek(&q.name, limit as usize, req.dead_letter)
            .await
            .map_err(status)?;
        let messages = found
            .into_iter()
            .map(|(m, place)| pb::PeekedMessage {
                message: Some(super::wire::to_wire(&m)),
                state: place.as_str().to_string(),
            })
            .collect();
        Ok(Response::new(pb::PeekResponse { messages }))
    }

    async fn purge(
        &self,
        request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeResponse>, Status> {
        let peer = caller::peer_of(&request);
        let req = request.into_inner();
        let q = self.admin_target(peer.as_ref(), &req.namespace, &req.queue, &req.subscription)?;
        let purged = self.store.purge(&q.name, now_ms()).await.map_err(status)?;
        self.audit.admin(
            peer.as_ref(),
            "purge",
            &q.name,
            &format!("{purged} messages removed"),
        );
        Ok(Response::new(pb::PurgeResponse { purged }))
    }

    async fn redrive(
        &self,
        request: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::RedriveResponse>, Status> {
        let peer = caller::peer_of(&request);
        let req = request.into_inner();
        let q = self.admin_target(peer.as_ref(), &req.namespace, &req.queue, &req.subscription)?;
        let done = self
            .store
            .redrive(&q.name, &req.ids, now_ms())
            .await
            .map_err(status)?;
        self.audit.admin(
            peer.as_ref(),
            "redrive",
            &q.name,
            &format!(
                "{} dead letters moved back{}",
                done.ids.len(),
                done.stopped
                    .as_deref()
                    .map(|s| format!("; stopped: {s}"))
                    .unwrap_or_default()
            ),
        );
        if let Some(why) = done.stopped {
            if done.ids.is_empty() {
                return Err(Status::resource_exhausted(why));
            }
        }
        Ok(Response::new(pb::RedriveResponse { ids: done.ids }))
    }
}

/// Describe's entry for `q` (a subscription of `topic`, or `topic` itself).
fn queue_status(q: &Queue, topic: &Queue, stats: super::backend::Stats) -> pb::QueueStatus {
    let super::backend::Stats {
        depth,
        oldest_ms: oldest,
        consumers,
    } = stats;
    let config = q.config();
    let mut parts = topic.name.splitn(2, '/');
    let namespace = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    let subscription = if std::ptr::eq(q, topic) {
        String::new()
    } else {
        q.name.rsplit('/').next().unwrap_or_default().to_string()
    };
    pb::QueueStatus {
        namespace: namespace.to_string(),
        name: name.to_string(),
        r#type: config.kind,
        ready_by_priority: depth.ready_by_priority.to_vec(),
        waiting: depth.waiting,
        in_flight: depth.in_flight,
        bytes: depth.bytes,
        oldest_unix_ms: oldest.unwrap_or(0),
        dead_letter: config.dead_letter.unwrap_or_default(),
        subscription,
        consumers: u32::try_from(consumers).unwrap_or(u32::MAX),
    }
}

/// Runs every queue's clock: due messages, ack timeouts, expiry and log
/// compaction, at the earliest queue deadline (checked at least every
/// second), and refreshes the queue gauges.
pub async fn tick_loop(store: Arc<Backend>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut gauges_at = 0;
    loop {
        let now = now_ms();
        if let Err(e) = store.tick(now).await {
            tracing::warn!(error = %e, "queue tick failed");
        }
        if now >= gauges_at {
            super::metrics::refresh(&store, now).await;
            gauges_at = now + 1_000;
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
