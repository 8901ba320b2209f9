//! The mesh's trust bundle and CA rotation.
//!
//! The bundle is the current CA's root plus any root still being phased in
//! or out (`<ca-dir>/extra-roots.pem`, `<ca-dir>/next/`). It is pushed to
//! every proxy as a `TrustBundle` resource and used by the control plane's
//! own listener.
//!
//! `rotate-ca` runs three phases so no handshake ever meets a root its peer
//! does not trust yet:
//! 1. a new root + issuing CA is generated (`next/`) and its root added to
//!    the bundle; wait until every connected proxy has ACKed that bundle;
//! 2. the new CA becomes the issuer and a `CertificateRotation` asks every
//!    proxy to renew now; wait until every connected proxy holds a
//!    certificate issued after that point;
//! 3. the old root leaves the bundle; wait for the ACKs. Done.

mod shared;

pub use shared::SharedRotation;

use crate::proxy_status::ProxyRegistry;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use weft_certs::ca::{write_private, CaError, CertificateAuthority};

const EXTRA_ROOTS: &str = "extra-roots.pem";
const NEXT: &str = "next";
/// How long a phase may wait for proxies before the rotation gives up (and
/// says which proxies it was waiting for).
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

/// What every proxy is told about trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTrust {
    pub trust_domain: String,
    pub roots_pem: Vec<String>,
    /// Certificates issued before this (unix seconds) must be renewed now; 0: none.
    pub rotate_before_unix: i64,
    /// Bumped on every change; proxies' ACKs of it are tracked.
    pub epoch: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotationStatus {
    pub phase: String,
    pub started_unix: i64,
    /// Proxies the current phase waits for ("ns/name").
    pub pending: Vec<String>,
    pub message: String,
}

pub struct Trust {
    ca_dir: PathBuf,
    ca: Arc<ArcSwap<CertificateAuthority>>,
    operator_ca: bool,
    tx: watch::Sender<Arc<MeshTrust>>,
    status: Mutex<RotationStatus>,
}

use xds_proto::units::unix_now;

fn read_roots(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|pem| weft_certs::ca::split_pem(&pem).ok())
        .map(|ders| {
            ders.iter()
                .map(|d| weft_certs::ca::to_pem("CERTIFICATE", d))
                .collect()
        })
        .unwrap_or_default()
}

impl Trust {
    /// The bundle as the files say (a rotation interrupted by a restart
    /// keeps its roots trusted).
    pub fn load(
        ca_dir: &Path,
        ca: Arc<ArcSwap<CertificateAuthority>>,
        operator_ca: bool,
    ) -> Arc<Trust> {
        let current = ca.load_full();
        let mut roots = current.roots_pem().to_vec();
        for extra in read_roots(&ca_dir.join(EXTRA_ROOTS))
            .into_iter()
            .chain(read_roots(&ca_dir.join(NEXT).join("root-cert.pem")))
        {
            if !roots.contains(&extra) {
                roots.push(extra);
            }
        }
        let (tx, _) = watch::channel(Arc::new(MeshTrust {
            trust_domain: current.trust_domain().to_string(),
            roots_pem: roots,
            rotate_before_unix: 0,
            epoch: 1,
        }));
        Arc::new(Trust {
            ca_dir: ca_dir.to_path_buf(),
            ca,
            operator_ca,
            tx,
            status: Mutex::new(RotationStatus {
                phase: "idle".into(),
                ..Default::default()
            }),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshTrust>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<MeshTrust> {
        self.tx.borrow().clone()
    }

    pub fn status(&self) -> RotationStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_status(&self, phase: &str, pending: Vec<String>, message: String) {
        if let Ok(mut s) = self.status.lock() {
            s.phase = phase.to_string();
            s.pending = pending;
            s.message = message;
        }
    }

    fn publish(&self, roots: Vec<String>, rotate_before_unix: i64) -> u64 {
        let mut epoch = 0;
        self.tx.send_modify(|t| {
            let mut next = (**t).clone();
            next.roots_pem = roots;
            next.rotate_before_unix = rotate_before_unix;
            next.epoch += 1;
            epoch = next.epoch;
            *t = Arc::new(next);
        });
        epoch
    }

    /// Starts a CA rotation in the background.
    pub fn start_rotation(self: &Arc<Self>, registry: Arc<ProxyRegistry>) -> Result<(), String> {
        if self.operator_ca {
            return Err("the CA was supplied with --ca-cert/--ca-key: rotate it by restarting with the new issuing CA (its root must already be trusted)".into());
        }
        {
            let mut s = self.status.lock().map_err(|_| "status lock poisoned")?;
            if !matches!(s.phase.as_str(), "idle" | "done" | "failed") {
                return Err(format!("a rotation is already running (phase {})", s.phase));
            }
            *s = RotationStatus {
                phase: "starting".into(),
                started_unix: unix_now(),
                ..Default::default()
            };
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.rotate(&registry).await {
                Ok(()) => {
                    this.set_status(
                        "done",
                        vec![],
                        "the old root is gone from every proxy's bundle".into(),
                    );
                    metrics::counter!("weft_control_ca_rotations_total", "result" => "done")
                        .increment(1);
                    tracing::info!("CA rotation finished");
                }
                Err(e) => {
                    this.set_status("failed", vec![], e.clone());
                    metrics::counter!("weft_control_ca_rotations_total", "result" => "failed")
                        .increment(1);
                    tracing::error!(error = %e, "CA rotation failed");
                }
            }
        });
        Ok(())
    }

    async fn rotate(&self, registry: &ProxyRegistry) -> Result<(), String> {
        let old = self.ca.load_full();
        let td = old.trust_domain().to_string();
        let next_dir = self.ca_dir.join(NEXT);
        let next =
            CertificateAuthority::load_or_create(&next_dir, &td).map_err(|e| e.to_string())?;
        let new_root = next.roots_pem()[0].clone();
        let old_roots = self.current().roots_pem.clone();

        // 1. Trust the new root everywhere before anything is issued from it.
        let mut both = old_roots.clone();
        if !both.contains(&new_root) {
            both.push(new_root.clone());
        }
        let epoch = self.publish(both.clone(), 0);
        tracing::info!(epoch, "CA rotation: new root distributed");
        self.wait(registry, "distributing", |r| r.trust_epoch_acked >= epoch)
            .await?;

        // 2. Issue from the new CA; every proxy renews.
        let switch_at = unix_now();
        self.persist_switch(&next_dir, &old_roots)
            .map_err(|e| e.to_string())?;
        self.ca.store(Arc::new(next));
        // Certificates issued up to and including this second may be from
        // either CA: all of them are renewed, and every renewal happens in a
        // later second, so "issued after switch_at" means "from the new CA".
        while unix_now() <= switch_at {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let epoch = self.publish(both, switch_at + 1);
        tracing::info!(epoch, "CA rotation: workloads re-issued from the new CA");
        self.wait(registry, "reissuing", |r| {
            r.trust_epoch_acked >= epoch && r.cert_issued_unix > switch_at
        })
        .await?;

        // 3. Drop the old roots.
        let _ = std::fs::remove_file(self.ca_dir.join(EXTRA_ROOTS));
        let epoch = self.publish(vec![new_root], 0);
        tracing::info!(epoch, "CA rotation: old root removed");
        self.wait(registry, "retiring", |r| r.trust_epoch_acked >= epoch)
            .await?;
        Ok(())
    }

    /// The new CA's files replace the current ones; the old roots stay
    /// trusted (extra-roots.pem) until phase 3.
    fn persist_switch(&self, next_dir: &Path, old_roots: &[String]) -> Result<(), CaError> {
        write_private(&self.ca_dir.join(EXTRA_ROOTS), &old_roots.concat())?;
        for f in [
            "root-cert.pem",
            "root-key.pem",
            "issuer-cert.pem",
            "issuer-key.pem",
        ] {
            let from = next_dir.join(f);
            let contents = std::fs::read_to_string(&from).map_err(|e| CaError::File {
                path: from.clone(),
                reason: e.to_string(),
            })?;
            write_private(&self.ca_dir.join(f), &contents)?;
        }
        let _ = std::fs::remove_dir_all(next_dir);
        Ok(())
    }

    /// Waits until every connected proxy satisfies `done`.
    async fn wait(
        &self,
        registry: &ProxyRegistry,
        phase: &str,
        done: impl Fn(&crate::proxy_status::ProxyRecord) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        loop {
            let pending = pending(registry, &done);
            let n = pending.len();
            self.set_status(phase, pending.clone(), format!("waiting for {n} proxies"));
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "phase {phase}: {n} proxies did not follow within {}s: {}",
                    PHASE_TIMEOUT.as_secs(),
                    pending.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The connected proxies ("ns/name") that do not satisfy `done` yet.
fn pending(
    registry: &ProxyRegistry,
    done: impl Fn(&crate::proxy_status::ProxyRecord) -> bool,
) -> Vec<String> {
    registry
        .snapshot()
        .iter()
        .filter(|r| r.connected && !done(r))
        .map(|r| format!("{}/{}", r.node.namespace, r.node.name))
        .collect()
}
