//! etcd leases: granting, renewing one (the replica's own lease), keeping
//! many alive over one long-lived stream (the registry's instances), and
//! revoking.

use super::etcd::EtcdStore;
use super::StoreError;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Streaming;
use xds_proto::etcd::{self as pb, lease_client::LeaseClient};

impl EtcdStore {
    /// A lease of `ttl_secs`; its id.
    pub async fn grant_lease(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let req = pb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        };
        let r = self
            .call(|ch| {
                let req = self.request(req);
                async move { LeaseClient::new(ch).lease_grant(req).await }
            })
            .await?;
        if !r.error.is_empty() {
            return Err(StoreError::Backend {
                path: self.describe.clone(),
                message: format!("lease grant: {}", r.error),
            });
        }
        Ok(r.id)
    }

    /// Renews `lease` over one long-lived keep-alive stream.
    pub fn lease_renewer(&self, lease: i64) -> LeaseRenewer {
        LeaseRenewer {
            store: self.clone(),
            lease,
            stream: None,
        }
    }

    /// Revokes `lease` (its keys go with it); a lease already gone is fine.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        let req = pb::LeaseRevokeRequest { id: lease };
        match self
            .call(|ch| {
                let req = self.request(req);
                async move { LeaseClient::new(ch).lease_revoke(req).await }
            })
            .await
        {
            Err(StoreError::Backend { message, .. }) if message.contains("not found") => Ok(()),
            r => r.map(drop),
        }
    }

    /// Keeps etcd leases alive over one long-lived stream: send a lease id
    /// for each renewal. Re-opens the stream (on the next member) when it
    /// breaks; renewals sent meanwhile are dropped (the next heartbeat
    /// renews again, well within the TTL).
    pub fn lease_keeper(&self) -> mpsc::Sender<i64> {
        let (tx, mut rx) = mpsc::channel::<i64>(65_536);
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(first) = rx.recv().await else { return };
                let member = store.members
                    [store.current.load(Ordering::Relaxed) % store.members.len()]
                .clone();
                let (req_tx, req_rx) = mpsc::channel(1024);
                let _ = req_tx.send(pb::LeaseKeepAliveRequest { id: first }).await;
                let opened = LeaseClient::new(member)
                    .lease_keep_alive(
                        store.request(tokio_stream::wrappers::ReceiverStream::new(req_rx)),
                    )
                    .await;
                let mut replies = match opened {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        tracing::warn!(store = %store.describe, error = %s, "etcd lease keep-alive stream refused; retrying");
                        store.current.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        id = rx.recv() => {
                            let Some(id) = id else { return };
                            if req_tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                                break;
                            }
                            metrics::counter!("weft_control_registry_keepalives_total").increment(1);
                        }
                        reply = replies.message() => match reply {
                            Ok(Some(r)) if r.ttl <= 0 => {
                                metrics::counter!("weft_control_registry_keepalive_expired_total").increment(1);
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => {
                                store.current.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }
        });
        tx
    }
}

/// One lease renewed over one keep-alive stream, reopened (on the next
/// member) when it breaks.
pub struct LeaseRenewer {
    store: EtcdStore,
    lease: i64,
    stream: Option<(
        mpsc::Sender<pb::LeaseKeepAliveRequest>,
        Streaming<pb::LeaseKeepAliveResponse>,
    )>,
}

impl LeaseRenewer {
    /// Renews the lease once; false if etcd no longer has it.
    pub async fn renew(&mut self) -> Result<bool, StoreError> {
        let renewed = tokio::time::timeout(Duration::from_secs(3), self.renew_once()).await;
        let failed = match renewed {
            Ok(Ok(Some(r))) => return Ok(r.ttl > 0),
            Ok(Ok(None)) => StoreError::Unavailable {
                store: self.store.describe.clone(),
                reason: "the lease keep-alive stream ended".into(),
            },
            Ok(Err(s)) => self.store.status(s),
            Err(_) => StoreError::Unavailable {
                store: self.store.describe.clone(),
                reason: "lease keep-alive timed out".into(),
            },
        };
        self.stream = None;
        self.store.current.fetch_add(1, Ordering::Relaxed);
        Err(failed)
    }

    async fn renew_once(&mut self) -> Result<Option<pb::LeaseKeepAliveResponse>, tonic::Status> {
        let request = pb::LeaseKeepAliveRequest { id: self.lease };
        if let Some((tx, replies)) = &mut self.stream {
            if tx.send(request).await.is_ok() {
                return replies.message().await;
            }
        }
        let s = &self.store;
        let member = s.members[s.current.load(Ordering::Relaxed) % s.members.len()].clone();
        // etcd sends the call's headers with its first reply: queue the
        // request before waiting for them.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(request).await;
        let mut replies = LeaseClient::new(member)
            .lease_keep_alive(s.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await?
            .into_inner();
        let first = replies.message().await;
        self.stream = Some((tx, replies));
        first
    }
}
