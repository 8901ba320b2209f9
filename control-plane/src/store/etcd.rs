//! The etcd store (`--store etcd://host:2379,host:2379`): applied config
//! and the CA's files in an etcd cluster, so several control-plane replicas
//! share them. Keys under `<prefix>` (default `weft/`):
//!
//! - `config/objects/<Kind/namespace/name>` → the object (JSON, as in the
//!   embedded store),
//! - `config/revision` → the config revision (decimal),
//! - `ca/files` → the CA directory's files (JSON map of name → base64),
//!   created once by whichever replica starts first.
//!
//! A config commit is one etcd transaction guarded by the stored revision
//! (compare-and-swap): two replicas applying at once cannot both win.
//! Every replica watches `config/revision` and reloads on a change.

use super::etcd_auth::EtcdAuth;
use super::etcd_tls::tls_config;
use super::StoreError;
use crate::config::{ConfigSet, Object, ObjectKey};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use weft_mesh_tls::channel::{tls_connector, ServerNameFrom};
use xds_proto::etcd::{
    self as pb, compare, kv_client::KvClient, request_op, watch_client::WatchClient, watch_request,
};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// host:port of each member.
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. "weft/".
    pub prefix: String,
    /// CA bundle (PEM) to verify the members with; None: plaintext.
    pub ca_pem: Option<String>,
    /// Client certificate and key (PEM) for etcd's client-cert auth.
    pub client_cert: Option<(String, String)>,
    /// etcd user and password (etcd's auth).
    pub user: Option<(String, String)>,
}

impl EtcdOptions {
    /// Parses `etcd://host:port,host:port[/prefix]`.
    pub fn parse(url: &str) -> Result<EtcdOptions, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("\"{url}\" is not etcd://host:port[,host:port...]"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) if !p.is_empty() => (h, format!("{}/", p.trim_end_matches('/'))),
            Some((h, _)) => (h, "weft/".to_string()),
            None => (rest, "weft/".to_string()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(format!("\"{url}\" names no etcd member"));
        }
        for e in &endpoints {
            if !e.contains(':') {
                return Err(format!("etcd member \"{e}\" has no port (host:2379)"));
            }
        }
        Ok(EtcdOptions {
            endpoints,
            prefix,
            ..Default::default()
        })
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    /// One lazily connected channel per member; calls go to `current` and
    /// move on to the next member when it is unreachable.
    pub(super) members: Arc<[Channel]>,
    pub(super) current: Arc<AtomicUsize>,
    pub(super) prefix: String,
    pub(super) auth: Arc<EtcdAuth>,
    /// For error messages.
    pub(super) describe: String,
    /// Why no member answered the last call (None: the last call was
    /// answered).
    down: Arc<std::sync::Mutex<Option<String>>>,
}

const OBJECTS: &str = "config/objects/";
const REVISION: &str = "config/revision";
const CA_FILES: &str = "ca/files";

/// `key` .. the first key after every key starting with `key`.
pub(super) fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether a failed call may succeed on another member.
fn member_down(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

impl EtcdStore {
    /// Connects to the members (a dead member is skipped) and
    /// authenticates if a user is given.
    pub async fn connect(o: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let describe = format!("etcd://{}", o.endpoints.join(","));
        let err = |m: String| StoreError::Backend {
            path: describe.clone(),
            message: m,
        };
        let tls = match &o.ca_pem {
            Some(ca) => Some(tls_config(ca, o.client_cert.as_ref()).map_err(err)?),
            None => None,
        };
        let mut members = Vec::new();
        for e in &o.endpoints {
            let ep = Endpoint::from_shared(format!("http://{e}"))
                .map_err(|x| err(format!("bad etcd endpoint {e}: {x}")))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true);
            members.push(match &tls {
                Some(config) => ep.connect_with_connector_lazy(tls_connector(
                    config.clone(),
                    ServerNameFrom::UriHost,
                    2379,
                )),
                None => ep.connect_lazy(),
            });
        }
        let store = EtcdStore {
            members: members.into(),
            current: Arc::default(),
            prefix: o.prefix.clone(),
            auth: EtcdAuth::new(o.user.clone()),
            describe: describe.clone(),
            down: Arc::default(),
        };
        store.authenticate().await?;
        // Fail fast when no member answers.
        store.get(REVISION).await?;
        Ok(store)
    }

    /// Runs `f` on the current member, then on each other member while
    /// they are unreachable; with a new token once if etcd refused the one
    /// it had.
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.auth.stale() {
            let _ = self.authenticate().await;
        }
        match self.call_once(&f).await {
            Err(StoreError::Backend { .. }) if self.auth.stale() => {
                self.authenticate().await?;
                self.call_once(&f).await
            }
            r => r,
        }
    }

    /// `call` without taking a new token.
    pub(super) async fn call_once<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.members.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match f(self.members[at].clone()).await {
                Ok(r) => {
                    if i > 0 {
                        self.current.store(at, Ordering::Relaxed);
                    }
                    self.set_down(None);
                    return Ok(r.into_inner());
                }
                Err(s) if member_down(&s) => last = Some(s),
                Err(s) => return Err(self.status(s)),
            }
        }
        metrics::counter!("weft_control_store_errors_total").increment(1);
        let reason = last
            .map(|s| format!("{}: {}", code_name(s.code()), s.message()))
            .unwrap_or_else(|| "no etcd member".into());
        self.set_down(Some(reason.clone()));
        Err(StoreError::Unavailable {
            store: self.describe.clone(),
            reason,
        })
    }

    fn set_down(&self, why: Option<String>) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_some() != why.is_some() {
            match &why {
                Some(w) => {
                    tracing::error!(store = %self.describe, reason = %w, "etcd unavailable: refusing writes, serving the last config")
                }
                None => tracing::info!(store = %self.describe, "etcd reachable again"),
            }
            metrics::gauge!("weft_control_store_up").set(if why.is_some() { 0.0 } else { 1.0 });
        }
        *down = why;
    }

    /// Ok while the last call was answered; else why not.
    pub fn health(&self) -> Result<(), String> {
        match &*self.down.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(format!("{}: {why}", self.describe)),
        }
    }

    /// Checks every second that etcd answers (so `/ready` knows without
    /// waiting for a write), until the store is dropped.
    pub fn probe_forever(&self) {
        let store = self.clone();
        metrics::gauge!("weft_control_store_up").set(1.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if Arc::strong_count(&store.down) <= 1 {
                    return;
                }
                let _ = store.get(REVISION).await;
            }
        });
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub(super) fn status(&self, s: tonic::Status) -> StoreError {
        self.auth.refused(&s);
        StoreError::Backend {
            path: self.describe.clone(),
            message: format!("{}: {}", code_name(s.code()), s.message()),
        }
    }

    pub(super) fn range(
        &self,
        ch: Channel,
        req: pb::RangeRequest,
    ) -> impl std::future::Future<Output = Result<tonic::Response<pb::RangeResponse>, tonic::Status>>
    {
        let req = self.request(req);
        async move { KvClient::new(ch).range(req).await }
    }

    pub(super) fn txn(
        &self,
        ch: Channel,
        req: pb::TxnRequest,
    ) -> impl std::future::Future<Output = Result<tonic::Response<pb::TxnResponse>, tonic::Status>>
    {
        let req = self.request(req);
        async move { KvClient::new(ch).txn(req).await }
    }

    pub(super) fn key(&self, k: &str) -> Vec<u8> {
        format!("{}{k}", self.prefix).into_bytes()
    }

    pub(super) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        self.auth.sign(&mut r);
        r
    }

    /// The value of one key, if it exists.
    pub async fn get(&self, k: &str) -> Result<Option<pb::KeyValue>, StoreError> {
        let req = pb::RangeRequest {
            key: self.key(k),
            ..Default::default()
        };
        let r = self.call(|ch| self.range(ch, req.clone())).await?;
        Ok(r.kvs.into_iter().next())
    }

    /// The config revision stored now.
    pub async fn config_revision(&self) -> Result<u64, StoreError> {
        Ok(match self.get(REVISION).await? {
            Some(kv) => parse_revision(&kv.value).ok_or_else(|| StoreError::Corrupt {
                key: format!("{}{REVISION}", self.prefix),
                message: "not a number".into(),
            })?,
            None => 0,
        })
    }

    /// The whole configuration, read at one etcd revision.
    pub async fn load(&self) -> Result<ConfigSet, StoreError> {
        let key = self.key(OBJECTS);
        let rev_key = self.key(REVISION);
        // One transaction: the objects and the revision at the same point.
        let txn = pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                        range_end: prefix_end(&key),
                        key,
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                        key: rev_key,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let r = self.call(|ch| self.txn(ch, txn.clone())).await?;
        let mut ranges = r.responses.into_iter().filter_map(|op| match op.response {
            Some(pb::response_op::Response::ResponseRange(r)) => Some(r),
            _ => None,
        });
        let (objects, revision) = (ranges.next(), ranges.next());
        let mut set = ConfigSet {
            revision: revision
                .and_then(|r| r.kvs.into_iter().next())
                .and_then(|kv| parse_revision(&kv.value))
                .unwrap_or(0),
            ..Default::default()
        };
        for kv in objects.map(|r| r.kvs).unwrap_or_default() {
            let object: Object =
                serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&kv.key).to_string(),
                    message: e.to_string(),
                })?;
            set.objects.insert(object.key(), object);
        }
        Ok(set)
    }

    /// Writes `upserts`, removes `deletes` and sets the revision to
    /// `revision`, if the stored revision is still `expected`.
    pub async fn commit(
        &self,
        expected: u64,
        revision: u64,
        upserts: &[&Object],
        deletes: &[ObjectKey],
    ) -> Result<(), StoreError> {
        let rev_key = self.key(REVISION);
        let guard = if expected == 0 {
            // Nothing stored yet: the key must not exist.
            pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: rev_key.clone(),
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }
        } else {
            pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: rev_key.clone(),
                target_union: Some(compare::TargetUnion::Value(
                    expected.to_string().into_bytes(),
                )),
                ..Default::default()
            }
        };
        let mut ops = Vec::with_capacity(upserts.len() + deletes.len() + 1);
        for o in upserts {
            let value = serde_json::to_vec(o).map_err(|e| StoreError::Backend {
                path: self.describe.clone(),
                message: e.to_string(),
            })?;
            ops.push(pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: self.key(&format!("{OBJECTS}{}", o.key().storage_key())),
                    value,
                    ..Default::default()
                })),
            });
        }
        for k in deletes {
            ops.push(pb::RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: self.key(&format!("{OBJECTS}{}", k.storage_key())),
                        ..Default::default()
                    },
                )),
            });
        }
        ops.push(pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: rev_key,
                value: revision.to_string().into_bytes(),
                ..Default::default()
            })),
        });
        let txn = pb::TxnRequest {
            compare: vec![guard],
            success: ops,
            failure: vec![],
        };
        let r = self.call(|ch| self.txn(ch, txn.clone())).await?;
        if r.succeeded {
            Ok(())
        } else {
            let now = self.config_revision().await.unwrap_or(0);
            Err(StoreError::Conflict {
                expected,
                found: now,
            })
        }
    }

    /// Sends the config revision each time another writer changes it, until
    /// the receiver is dropped; re-watches after errors.
    pub fn watch_config(&self) -> mpsc::Receiver<u64> {
        let (tx, rx) = mpsc::channel(16);
        let store = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match store.watch_once(&tx).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(store = %store.describe, error = %e, "etcd watch broke; re-watching");
                        metrics::counter!("weft_control_store_watch_errors_total").increment(1);
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Whatever changed while the watch was down.
                if let Ok(rev) = store.config_revision().await {
                    if tx.send(rev).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// One watch stream; Ok when the receiver went away.
    async fn watch_once(&self, tx: &mpsc::Sender<u64>) -> Result<(), StoreError> {
        let (req_tx, req_rx) = mpsc::channel(1);
        let _ = req_tx
            .send(pb::WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: self.key(REVISION),
                        ..Default::default()
                    },
                )),
            })
            .await;
        let member =
            self.members[self.current.load(Ordering::Relaxed) % self.members.len()].clone();
        let mut stream = match WatchClient::new(member)
            .watch(self.request(tokio_stream::wrappers::ReceiverStream::new(req_rx)))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => {
                // Try the next member next time.
                self.current.fetch_add(1, Ordering::Relaxed);
                return Err(self.status(s));
            }
        };
        loop {
            let msg = match stream.message().await {
                Ok(m) => m,
                Err(s) => {
                    self.current.fetch_add(1, Ordering::Relaxed);
                    return Err(self.status(s));
                }
            };
            let Some(m) = msg else {
                return Err(StoreError::Backend {
                    path: self.describe.clone(),
                    message: "the watch stream ended".into(),
                });
            };
            if m.canceled {
                return Err(StoreError::Backend {
                    path: self.describe.clone(),
                    message: format!("watch canceled: {}", m.cancel_reason),
                });
            }
            if m.created {
                // Whatever was committed before the watch existed.
                if let Ok(rev) = self.config_revision().await {
                    if tx.send(rev).await.is_err() {
                        return Ok(());
                    }
                }
            }
            for e in m.events {
                if let Some(rev) = e.kv.and_then(|kv| parse_revision(&kv.value)) {
                    if tx.send(rev).await.is_err() {
                        drop(req_tx);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Puts `key` = `value`, attached to `lease` (0: none).
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        let req = pb::PutRequest {
            key: self.key(key),
            value,
            lease,
            ..Default::default()
        };
        self.call(|ch| {
            let req = self.request(req.clone());
            async move { KvClient::new(ch).put(req).await }
        })
        .await
        .map(drop)
    }

    /// Creates `key` = `value` on `lease` unless it exists; the value
    /// stored afterwards.
    pub async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Vec<u8>, StoreError> {
        let k = self.key(key);
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: k.clone(),
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: k.clone(),
                    value: value.clone(),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            }],
        };
        let r = self.call(|ch| self.txn(ch, txn.clone())).await?;
        if r.succeeded {
            return Ok(value);
        }
        Ok(r.responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(r)) => {
                    r.kvs.into_iter().next().map(|kv| kv.value)
                }
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Every key under `prefix` (below the store's prefix) and its value.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let key = self.key(prefix);
        let req = pb::RangeRequest {
            range_end: prefix_end(&key),
            key,
            ..Default::default()
        };
        let r = self.call(|ch| self.range(ch, req.clone())).await?;
        let strip = self.prefix.len();
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(&kv.key);
                (k.get(strip..).unwrap_or("").to_string(), kv.value)
            })
            .collect())
    }

    /// The CA directory's files as the first replica stored them, or None.
    pub async fn ca_files(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(CA_FILES).await?.map(|kv| kv.value))
    }

    /// Stores the CA files unless another replica already did; returns
    /// what is stored afterwards.
    pub async fn create_ca_files(&self, files: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let key = self.key(CA_FILES);
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value: files.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
        };
        let r = self.call(|ch| self.txn(ch, txn.clone())).await?;
        if r.succeeded {
            return Ok(files);
        }
        r.responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(r)) => {
                    r.kvs.into_iter().next().map(|kv| kv.value)
                }
                _ => None,
            })
            .ok_or_else(|| StoreError::Backend {
                path: self.describe.clone(),
                message: "the CA files vanished while being created".into(),
            })
    }
}

fn parse_revision(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::InvalidArgument => "rejected",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_members_and_an_optional_prefix() {
        let o = EtcdOptions::parse("etcd://127.0.0.1:2379,127.0.0.2:2379").unwrap();
        assert_eq!(o.endpoints, vec!["127.0.0.1:2379", "127.0.0.2:2379"]);
        assert_eq!(o.prefix, "weft/");
        let o = EtcdOptions::parse("etcd://h:1/mesh-a").unwrap();
        assert_eq!(o.prefix, "mesh-a/");
        assert!(EtcdOptions::parse("http://h:1").is_err());
        assert!(EtcdOptions::parse("etcd://").is_err());
        assert!(EtcdOptions::parse("etcd://h")
            .unwrap_err()
            .contains("no port"));
    }

    #[test]
    fn a_prefix_range_ends_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"weft/a"), b"weft/b".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), vec![b'b']);
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
