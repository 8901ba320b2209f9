//! The control-plane replicas sharing one store, and which of them leads.
//!
//! With the etcd store every replica keeps an etcd lease alive (TTL
//! `LEASE_TTL`) and, on it, `replicas/<id>` (its address, version and
//! connected proxies, refreshed every second). The leader is whoever holds
//! `leader` (created on its lease when absent): it goes away with the
//! leader's lease, within `LEASE_TTL` of the leader's death, and the next
//! replica to try takes it. A replica counts itself leader only while its
//! last lease renewal is younger than the TTL less a margin, so a stale
//! leader (cut off from etcd) stops before another can start: work that
//! must happen once checks `is_leader` right before acting.
//! With the embedded store there is one replica and it leads.

use crate::proxy_status::ProxyRegistry;
use crate::store::EtcdStore;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use xds_proto::v1 as pb;

/// Whether this replica leads now (`Replicas::is_leader`), for the duties
/// only the leader runs.
pub type IsLeader = Arc<dyn Fn() -> bool + Send + Sync>;

const LEASE_TTL: Duration = Duration::from_secs(5);
/// A leader stops acting this long before its lease could have run out.
const FENCE_MARGIN: Duration = Duration::from_millis(1500);
const LEADER: &str = "leader";
const PREFIX: &str = "replicas/";
/// Each replica's proxies' sync status, on its lease.
const PROXIES: &str = "proxies/";

pub struct Replicas {
    me: pb::ControlPlaneInfo,
    proxies: Arc<ProxyRegistry>,
    etcd: Option<EtcdStore>,
    /// Until when this replica may act as leader.
    leader_until: Mutex<Option<Instant>>,
}

fn now_ms() -> i64 {
    xds_proto::units::unix_ms(SystemTime::now()) as i64
}

impl Replicas {
    /// `etcd`: the shared store (None: embedded, a single replica).
    pub fn start(
        id: String,
        address: String,
        proxies: Arc<ProxyRegistry>,
        etcd: Option<EtcdStore>,
    ) -> Arc<Replicas> {
        let r = Arc::new(Replicas {
            me: pb::ControlPlaneInfo {
                id,
                address,
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_unix_ms: now_ms(),
                ..Default::default()
            },
            proxies,
            leader_until: Mutex::new(None),
            etcd,
        });
        if r.etcd.is_some() {
            tokio::spawn(r.clone().run());
        }
        r
    }

    /// This replica's id among those sharing the store.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// Whether this replica may do the work only one replica does, now.
    pub fn is_leader(&self) -> bool {
        if self.etcd.is_none() {
            return true;
        }
        self.leader_until
            .lock()
            .map(|u| u.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    fn info(&self) -> pb::ControlPlaneInfo {
        let mut me = self.me.clone();
        me.connected_proxies = self.proxies.connected() as u32;
        me.leader = self.is_leader();
        me.seen_unix_ms = now_ms();
        me
    }

    /// Every replica that is alive (this one alone with the embedded store).
    pub async fn list(&self) -> Vec<pb::ControlPlaneInfo> {
        let Some(etcd) = &self.etcd else {
            return vec![self.info()];
        };
        let leader = etcd
            .get(LEADER)
            .await
            .ok()
            .flatten()
            .map(|kv| String::from_utf8_lossy(&kv.value).to_string());
        let mut out: Vec<pb::ControlPlaneInfo> = etcd
            .list(PREFIX)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok())
            .map(|mut i: pb::ControlPlaneInfo| {
                i.leader = leader.as_deref() == Some(i.id.as_str());
                i
            })
            .collect();
        if !out.iter().any(|i| i.id == self.me.id) {
            out.push(self.info());
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every proxy's sync status: this replica's own, live, and what every
    /// other replica published in the last second (a proxy seen by several,
    /// e.g. after it moved, counts where it is connected).
    pub async fn proxy_status(&self) -> Vec<pb::ProxyStatus> {
        let mut by_node: std::collections::BTreeMap<String, pb::ProxyStatus> = Default::default();
        let mut add = |p: pb::ProxyStatus| {
            let node = p.node.clone().unwrap_or_default();
            let key = format!("{}/{}", node.namespace, node.name);
            let keep = match by_node.get(&key) {
                None => true,
                Some(old) => {
                    (p.connected, p.last_seen_unix_ms) > (old.connected, old.last_seen_unix_ms)
                }
            };
            if keep {
                by_node.insert(key, p);
            }
        };
        if let Some(etcd) = &self.etcd {
            for (key, value) in etcd.list(PROXIES).await.unwrap_or_default() {
                if key == format!("{PROXIES}{}", self.me.id) {
                    continue;
                }
                if let Ok(r) = <pb::ProxyStatusResponse as prost::Message>::decode(value.as_slice())
                {
                    r.proxies.into_iter().for_each(&mut add);
                }
            }
        }
        self.proxies
            .snapshot()
            .iter()
            .map(|r| r.to_status())
            .for_each(add);
        by_node.into_values().collect()
    }

    /// Keeps this replica's lease, presence and (when it can) leadership.
    async fn run(self: Arc<Self>) {
        let Some(etcd) = self.etcd.clone() else {
            return;
        };
        loop {
            let lease = match etcd.grant_lease(LEASE_TTL.as_secs() as i64).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a replica lease; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(replica = %self.me.id, lease, "replica lease taken");
            let mut renewer = etcd.lease_renewer(lease);
            loop {
                let renewed_at = Instant::now();
                match renewer.renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(replica = %self.me.id, "replica lease lost; taking a new one");
                        self.step_down();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the replica lease");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
                let key = format!("{PREFIX}{}", self.me.id);
                let _ = etcd
                    .put(&key, prost::Message::encode_to_vec(&self.info()), lease)
                    .await;
                let mine = pb::ProxyStatusResponse {
                    proxies: self
                        .proxies
                        .snapshot()
                        .iter()
                        .map(|r| r.to_status())
                        .collect(),
                    ..Default::default()
                };
                let _ = etcd
                    .put(
                        &format!("{PROXIES}{}", self.me.id),
                        prost::Message::encode_to_vec(&mine),
                        lease,
                    )
                    .await;
                match etcd
                    .create(LEADER, self.me.id.clone().into_bytes(), lease)
                    .await
                {
                    Ok(holder) if holder == self.me.id.as_bytes() => {
                        let was = self.is_leader();
                        if let Ok(mut u) = self.leader_until.lock() {
                            *u = Some(renewed_at + LEASE_TTL - FENCE_MARGIN);
                        }
                        if !was {
                            tracing::info!(replica = %self.me.id, "this replica leads");
                            metrics::counter!("weft_control_leader_changes_total").increment(1);
                        }
                        metrics::gauge!("weft_control_leader").set(1.0);
                    }
                    Ok(_) => self.step_down(),
                    Err(e) => tracing::debug!(error = %e, "leader check failed"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn step_down(&self) {
        if let Ok(mut u) = self.leader_until.lock() {
            if u.take().is_some() {
                tracing::info!(replica = %self.me.id, "this replica no longer leads");
            }
        }
        metrics::gauge!("weft_control_leader").set(0.0);
    }
}
