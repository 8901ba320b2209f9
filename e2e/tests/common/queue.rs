//! Helpers of the queue service e2e tests: admin and workload clients,
//! messages, publish into namespace `intel`, and a consumer stream.
#![allow(dead_code)]

use super::workload::workload_channel;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_testbed::Mesh;
use xds_proto::v1::{
    self as pb, consume_request::Kind as In, consume_response::Kind as Out,
    queue_client::QueueClient,
};

pub type Client = QueueClient<tonic::transport::Channel>;

/// A mesh named `<name>-<store>` on `store` with `config` applied, and a
/// runtime for the clients.
pub fn queue_mesh(
    name: &str,
    store: weft_testbed::redis::QueueStore,
    config: &str,
) -> (
    Mesh,
    Option<weft_testbed::redis::RedisServer>,
    tokio::runtime::Runtime,
) {
    let (mesh, redis) = Mesh::start_with_queue_store(&format!("{name}-{store:?}"), store, &[]);
    mesh.apply("queues.yaml", config).expect("apply");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    (mesh, redis, rt)
}

pub async fn admin(mesh: &Mesh) -> Client {
    let auth = weft_mesh_tls::admin_client::AdminAuth::Certs(mesh.pki().admin_certs);
    QueueClient::new(
        weft_mesh_tls::admin_client::channel(&mesh.cp_url(), &auth)
            .await
            .expect("admin channel"),
    )
}

pub async fn workload(mesh: &Mesh, ns: &str, sa: &str) -> Client {
    QueueClient::new(workload_channel(mesh, ns, sa).await)
}

pub fn message(kind: &str, priority: u32, payload: &str) -> pb::QueueMessage {
    pb::QueueMessage {
        r#type: kind.into(),
        priority,
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub async fn publish(
    c: &mut Client,
    queue: &str,
    messages: Vec<pb::QueueMessage>,
) -> Result<Vec<pb::PublishOutcome>, tonic::Status> {
    c.publish(pb::PublishRequest {
        namespace: "intel".into(),
        queue: queue.into(),
        messages,
        ttl_ms: 0,
    })
    .await
    .map(|r| r.into_inner().outcomes)
}

/// A consumer stream: requests go in through the sender.
pub struct Consumer {
    pub tx: mpsc::Sender<pb::ConsumeRequest>,
    pub rx: tonic::Streaming<pb::ConsumeResponse>,
}

impl Consumer {
    pub async fn open(
        c: &mut Client,
        queue: &str,
        prefetch: u32,
    ) -> Result<Consumer, tonic::Status> {
        Self::subscribe(
            c,
            pb::Subscribe {
                namespace: "intel".into(),
                queue: queue.into(),
                prefetch,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn subscribe(c: &mut Client, sub: pb::Subscribe) -> Result<Consumer, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ConsumeRequest {
            kind: Some(In::Subscribe(sub)),
        })
        .await
        .expect("subscribe");
        let rx = c.consume(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Consumer { tx, rx })
    }

    /// The next delivery, or None when none comes within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<pb::QueueMessage> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(pb::ConsumeResponse {
                kind: Some(Out::Delivery(d)),
            }))) => d.message,
            Ok(Ok(Some(other))) => panic!("unexpected {other:?}"),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => panic!("consume stream failed: {e}"),
            Err(_) => None,
        }
    }

    pub async fn send(&self, kind: In) {
        self.tx
            .send(pb::ConsumeRequest { kind: Some(kind) })
            .await
            .expect("send");
    }
}
