//! CA rotation with several replicas on a shared (etcd) store.
//!
//! The rotation is one etcd key, `ca/rotation` (JSON): its id, phase, the
//! new CA's files (sealed like `ca/files` when replicas have a seal key),
//! the old roots, the new root and the switch time. Any replica may start a
//! rotation (compare-and-swap: one at a time). Every replica follows the key
//! and applies its phase to its own proxies as a single control plane does
//! (`super`): both roots in the bundle; the new CA issues and every proxy
//! renews; the old roots leave. Each replica reports in
//! `ca/rotation-acks/<replica>` which of its proxies have not followed yet.
//! The leader moves the rotation to the next phase once every live replica
//! reports that all of its proxies followed, so a leader that dies leaves
//! the phase in etcd and the next leader carries on from it. At the switch
//! the new CA also replaces `ca/files`, so replicas started later load it.

use super::{pending, Trust, EXTRA_ROOTS, PHASE_TIMEOUT};
use crate::ca_store::{self, Seal};
use crate::proxy_status::{ProxyRecord, ProxyRegistry};
use crate::replicas::IsLeader;
use crate::store::etcd_txn::TxnOp;
use crate::store::EtcdStore;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_certs::ca::{write_private, CertificateAuthority};
use xds_proto::units::unix_now;

const STATE: &str = "ca/rotation";
const ACKS: &str = "ca/rotation-acks/";
const CA_FILES: &str = "ca/files";
const REPLICAS: &str = "replicas/";
const TICK: Duration = Duration::from_millis(250);
/// Ticks between looks while no rotation runs.
const IDLE_EVERY: u64 = 4;
/// The switch time is this far after the leader decides it: every replica
/// has switched its CA by then, so a certificate issued after it is from
/// the new CA.
const SWITCH_MARGIN_SECS: i64 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Rotation {
    id: String,
    /// distributing, reissuing, retiring, done, failed.
    phase: String,
    started_unix: i64,
    phase_since_unix: i64,
    /// base64 of the new CA's packed (maybe sealed) files.
    next_ca: String,
    old_roots: Vec<String>,
    new_root: String,
    switch_at: i64,
    message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Ack {
    id: String,
    phase: String,
    pending: Vec<String>,
}

/// What this replica last applied.
#[derive(Default)]
struct Applied {
    id: String,
    phase: String,
    epoch: u64,
    reported: Option<(Ack, i64)>,
}

pub struct SharedRotation {
    etcd: EtcdStore,
    trust: Arc<Trust>,
    proxies: Arc<ProxyRegistry>,
    seal: Option<Arc<Seal>>,
    replica: String,
    is_leader: IsLeader,
    applied: Mutex<Applied>,
}

impl Rotation {
    /// The old roots and the new one: trusted until the old ones retire.
    fn both_roots(&self) -> Vec<String> {
        let mut roots = self.old_roots.clone();
        if !roots.contains(&self.new_root) {
            roots.push(self.new_root.clone());
        }
        roots
    }
}

fn running(phase: &str) -> bool {
    matches!(phase, "distributing" | "reissuing" | "retiring")
}

impl SharedRotation {
    /// Follows (and, while leading, drives) rotations stored in etcd.
    pub fn start(
        etcd: EtcdStore,
        trust: Arc<Trust>,
        proxies: Arc<ProxyRegistry>,
        seal: Option<Arc<Seal>>,
        replica: String,
        is_leader: IsLeader,
    ) -> Arc<SharedRotation> {
        let r = Arc::new(SharedRotation {
            etcd,
            trust,
            proxies,
            seal,
            replica,
            is_leader,
            applied: Mutex::default(),
        });
        tokio::spawn(r.clone().run());
        r
    }

    async fn state(&self) -> Result<(i64, Option<Rotation>), String> {
        let kv = self.etcd.get(STATE).await.map_err(|e| e.to_string())?;
        Ok(match kv {
            None => (0, None),
            Some(kv) => (
                kv.mod_revision,
                Some(
                    serde_json::from_slice(&kv.value)
                        .map_err(|e| format!("the stored CA rotation is not readable: {e}"))?,
                ),
            ),
        })
    }

    /// Starts a rotation: a new CA, its root distributed first.
    pub async fn begin(&self) -> Result<(), String> {
        if self.trust.operator_ca {
            return Err("the CA was supplied with --ca-cert/--ca-key: rotate it by restarting every replica with the new issuing CA (its root must already be trusted)".into());
        }
        let (base, current) = self.state().await?;
        if let Some(r) = current.filter(|r| running(&r.phase)) {
            return Err(format!("a rotation is already running (phase {})", r.phase));
        }
        let id = format!("{:016x}", rand::random::<u64>());
        let dir = self.trust.ca_dir.join(format!("next-{id}"));
        let td = self.trust.ca.load().trust_domain().to_string();
        let next = CertificateAuthority::load_or_create(&dir, &td).map_err(|e| e.to_string())?;
        let packed = ca_store::pack(&dir).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let stored =
            ca_store::seal_with(self.seal.as_deref(), &packed?).map_err(|e| e.to_string())?;
        let now = unix_now();
        let rotation = Rotation {
            id,
            phase: "distributing".into(),
            started_unix: now,
            phase_since_unix: now,
            next_ca: base64::engine::general_purpose::STANDARD.encode(stored),
            old_roots: self.trust.current().roots_pem.clone(),
            new_root: next.roots_pem()[0].clone(),
            switch_at: 0,
            message: String::new(),
        };
        let put = TxnOp::Put {
            key: STATE.into(),
            value: serde_json::to_vec(&rotation).map_err(|e| e.to_string())?,
            lease: 0,
        };
        match self
            .etcd
            .guarded_txn(&[(STATE.into(), base)], &[put])
            .await
            .map_err(|e| e.to_string())?
        {
            Some(_) => {
                self.set_status(&rotation, vec![]);
                tracing::info!(rotation = %rotation.id, "CA rotation started; every replica follows");
                Ok(())
            }
            None => Err("another replica started a CA rotation meanwhile".into()),
        }
    }

    fn set_status(&self, r: &Rotation, pending: Vec<String>) {
        if let Ok(mut s) = self.trust.status.lock() {
            s.phase = r.phase.clone();
            s.started_unix = r.started_unix;
            s.message = match (r.phase.as_str(), pending.len()) {
                ("done", _) => "the old root is gone from every proxy's bundle".into(),
                (_, 0) => r.message.clone(),
                (_, n) => format!("waiting for {n} proxies"),
            };
            s.pending = pending;
        }
    }

    async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut idle = false;
        loop {
            tick.tick().await;
            ticks += 1;
            // Without a rotation running, look once a second.
            if idle && !ticks.is_multiple_of(IDLE_EVERY) {
                continue;
            }
            let (rev, r) = match self.state().await {
                Ok((rev, Some(r))) => (rev, r),
                Ok((_, None)) => {
                    idle = true;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "CA rotation state not read");
                    continue;
                }
            };
            idle = !running(&r.phase);
            if let Err(e) = self.apply(&r).await {
                tracing::error!(rotation = %r.id, phase = %r.phase, error = %e, "cannot apply the CA rotation's phase; retrying");
                continue;
            }
            let mine = self.local_pending(&r);
            self.report(&r, mine.clone()).await;
            let waiting = if (self.is_leader)() && running(&r.phase) {
                match self.drive(rev, &r).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(rotation = %r.id, error = %e, "CA rotation not advanced");
                        mine
                    }
                }
            } else {
                mine
            };
            self.set_status(&r, waiting);
        }
    }

    /// Brings this replica to the rotation's phase (once per phase).
    async fn apply(&self, r: &Rotation) -> Result<(), String> {
        {
            let a = self.applied.lock().map_err(|_| "lock poisoned")?;
            if a.id == r.id && a.phase == r.phase {
                return Ok(());
            }
        }
        let epoch = match r.phase.as_str() {
            "distributing" => self.trust.publish(r.both_roots(), 0),
            "reissuing" => {
                self.switch_ca(r)?;
                // Renewals must land after the switch time to count.
                while unix_now() <= r.switch_at {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.trust.publish(r.both_roots(), r.switch_at + 1)
            }
            "retiring" | "done" => {
                self.switch_ca(r)?;
                let _ = std::fs::remove_file(self.trust.ca_dir.join(EXTRA_ROOTS));
                if self.trust.current().roots_pem == [r.new_root.clone()] {
                    0
                } else {
                    self.trust.publish(vec![r.new_root.clone()], 0)
                }
            }
            // A failed rotation keeps whatever this replica has.
            _ => 0,
        };
        tracing::info!(rotation = %r.id, phase = %r.phase, epoch, "CA rotation: phase applied");
        let mut a = self.applied.lock().map_err(|_| "lock poisoned")?;
        a.id = r.id.clone();
        a.phase = r.phase.clone();
        a.epoch = epoch;
        Ok(())
    }

    /// Makes the rotation's new CA this replica's issuer (its files in the
    /// CA directory, the old roots kept trusted across a restart).
    fn switch_ca(&self, r: &Rotation) -> Result<(), String> {
        if self.trust.ca.load().roots_pem().first() == Some(&r.new_root) {
            return Ok(());
        }
        let stored = base64::engine::general_purpose::STANDARD
            .decode(&r.next_ca)
            .map_err(|e| format!("the new CA in the rotation is not base64: {e}"))?;
        let plain = ca_store::open_with(self.seal.as_deref(), stored).map_err(|e| e.to_string())?;
        write_private(&self.trust.ca_dir.join(EXTRA_ROOTS), &r.old_roots.concat())
            .map_err(|e| e.to_string())?;
        ca_store::unpack(&plain, &self.trust.ca_dir).map_err(|e| e.to_string())?;
        let td = self.trust.ca.load().trust_domain().to_string();
        let ca = CertificateAuthority::load_existing(&self.trust.ca_dir, &td)
            .map_err(|e| e.to_string())?;
        self.trust.ca.store(Arc::new(ca));
        tracing::info!(rotation = %r.id, "CA rotation: this replica now issues from the new CA");
        Ok(())
    }

    /// This replica's connected proxies that have not followed the phase.
    fn local_pending(&self, r: &Rotation) -> Vec<String> {
        let epoch = self.applied.lock().map(|a| a.epoch).unwrap_or(u64::MAX);
        let acked = |p: &ProxyRecord| p.trust_epoch_acked >= epoch;
        match r.phase.as_str() {
            "distributing" | "retiring" => pending(&self.proxies, acked),
            "reissuing" => pending(&self.proxies, |p| {
                acked(p) && p.cert_issued_unix > r.switch_at
            }),
            _ => vec![],
        }
    }

    /// Publishes this replica's progress (on change, else every 2 s).
    async fn report(&self, r: &Rotation, pending: Vec<String>) {
        let ack = Ack {
            id: r.id.clone(),
            phase: r.phase.clone(),
            pending,
        };
        let now = unix_now();
        let fresh = self
            .applied
            .lock()
            .map(|a| {
                a.reported
                    .as_ref()
                    .is_some_and(|(last, at)| *last == ack && now - at < 2)
            })
            .unwrap_or(false);
        if fresh {
            return;
        }
        let Ok(value) = serde_json::to_vec(&ack) else {
            return;
        };
        if self
            .etcd
            .put(&format!("{ACKS}{}", self.replica), value, 0)
            .await
            .is_ok()
        {
            if let Ok(mut a) = self.applied.lock() {
                a.reported = Some((ack, now));
            }
        }
    }

    /// The leader's step: the next phase once every live replica's proxies
    /// followed, or failure after the phase timeout. What it waits for.
    async fn drive(&self, rev: i64, r: &Rotation) -> Result<Vec<String>, String> {
        let err = |e: crate::store::StoreError| e.to_string();
        let live: Vec<String> = self
            .etcd
            .list(REPLICAS)
            .await
            .map_err(err)?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(REPLICAS).map(str::to_string))
            .collect();
        let acks: std::collections::HashMap<String, Ack> = self
            .etcd
            .list(ACKS)
            .await
            .map_err(err)?
            .into_iter()
            .filter_map(|(k, v)| {
                let id = k.strip_prefix(ACKS)?.to_string();
                Some((id, serde_json::from_slice(&v).ok()?))
            })
            .collect();
        let mut waiting = Vec::new();
        for replica in &live {
            match acks.get(replica) {
                Some(a) if a.id == r.id && a.phase == r.phase => {
                    waiting.extend(a.pending.iter().cloned())
                }
                _ => waiting.push(format!("replica {replica}")),
            }
        }
        let now = unix_now();
        let mut next = r.clone();
        next.phase_since_unix = now;
        let mut ops = Vec::new();
        if waiting.is_empty() {
            next.phase = match r.phase.as_str() {
                "distributing" => "reissuing",
                "reissuing" => "retiring",
                _ => "done",
            }
            .into();
            if next.phase == "reissuing" {
                next.switch_at = now + SWITCH_MARGIN_SECS;
                ops.push(self.new_ca_files(r).await?);
            }
        } else if now - r.phase_since_unix > PHASE_TIMEOUT.as_secs() as i64 {
            next.phase = "failed".into();
            next.message = format!(
                "phase {}: {} did not follow within {}s: {}",
                r.phase,
                waiting.len(),
                PHASE_TIMEOUT.as_secs(),
                waiting.join(", ")
            );
        } else {
            return Ok(waiting);
        }
        ops.push(TxnOp::Put {
            key: STATE.into(),
            value: serde_json::to_vec(&next).map_err(|e| e.to_string())?,
            lease: 0,
        });
        // Fenced: only if nobody moved the rotation since it was read.
        if self
            .etcd
            .guarded_txn(&[(STATE.into(), rev)], &ops)
            .await
            .map_err(err)?
            .is_some()
        {
            tracing::info!(rotation = %r.id, from = %r.phase, to = %next.phase, "CA rotation: next phase");
            metrics::counter!("weft_control_ca_rotation_phases_total", "phase" => next.phase.clone())
                .increment(1);
            if matches!(next.phase.as_str(), "done" | "failed") {
                let result = if next.phase == "done" {
                    "done"
                } else {
                    "failed"
                };
                metrics::counter!("weft_control_ca_rotations_total", "result" => result)
                    .increment(1);
            }
        }
        Ok(waiting)
    }

    /// `ca/files` with the rotation's new CA in place of the old one (the
    /// join-token key kept).
    async fn new_ca_files(&self, r: &Rotation) -> Result<TxnOp, String> {
        let current = self
            .etcd
            .ca_files()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the CA files are missing from the store")?;
        let seal = self.seal.as_deref();
        let current = ca_store::open_with(seal, current).map_err(|e| e.to_string())?;
        let next = base64::engine::general_purpose::STANDARD
            .decode(&r.next_ca)
            .map_err(|e| e.to_string())?;
        let next = ca_store::open_with(seal, next).map_err(|e| e.to_string())?;
        let merged = ca_store::merge(&current, &next).map_err(|e| e.to_string())?;
        Ok(TxnOp::Put {
            key: CA_FILES.into(),
            value: ca_store::seal_with(seal, &merged).map_err(|e| e.to_string())?,
            lease: 0,
        })
    }
}
