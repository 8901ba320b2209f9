//! The queue stores side by side for the behavioural tests: the embedded
//! one in a temporary directory, and the Redis one on a real redis-server
//! (Debian's, AOF with `appendfsync always`) on 127.0.0.1 and a free port,
//! twice: a plain server, and a one-node Redis Cluster owning every slot
//! (cluster mode refuses a script whose declared keys are not all in one
//! slot, CROSSSLOT; every other key a script touches is a declared key
//! plus a suffix, in the same slot by construction). Servers are killed
//! when the harness is dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_control::queue::backend::Backend;
use weft_control::queue::crypt::Keys;
use weft_control::queue::redis_store::RedisStore;
use weft_control::queue::state::{NewMessage, Settings};
use weft_control::queue::store::{Fanout, QueueConfig, Store};

pub struct Harness {
    pub name: &'static str,
    pub store: Backend,
    /// Where the store's bytes land on disk (log segments or Redis's AOF).
    pub disk: PathBuf,
    /// The Redis server's URL (Redis stores only): for a second replica.
    pub url: Option<String>,
    _dir: tempfile::TempDir,
    _redis: Option<RedisProc>,
}

struct RedisProc(Child);

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server on a free port; tried again on another port when it
/// exits before answering (a port taken between the probe and its bind).
fn start_redis(dir: &Path, cluster: bool) -> (RedisProc, String) {
    for _ in 0..3 {
        if let Some(started) = try_start_redis(dir, cluster) {
            return started;
        }
    }
    panic!("redis-server did not start (three ports tried)");
}

fn try_start_redis(dir: &Path, cluster: bool) -> Option<(RedisProc, String)> {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--dir", &dir.display().to_string()])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""]);
    if cluster {
        cmd.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let mut proc = RedisProc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if proc.0.try_wait().ok().flatten().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    if cluster {
        own_every_slot(&url);
    }
    Some((proc, url))
}

/// Makes a fresh cluster node own all 16384 slots and waits for the
/// cluster to say it is ok.
fn own_every_slot(url: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_connection()
        .expect("connect to the cluster node");
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut c)
        .expect("CLUSTER ADDSLOTSRANGE");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut c)
            .expect("CLUSTER INFO");
        if info.contains("cluster_state:ok") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not become ok: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Harness {
    /// Kills the Redis server under a Redis store (SIGKILL).
    pub fn kill_redis(&mut self) {
        if let Some(RedisProc(child)) = &mut self._redis {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The embedded store, the Redis store on a plain server and on a
/// one-node cluster, each serving `queues`, with one queue key.
pub async fn stores(queues: &[QueueConfig]) -> Vec<Harness> {
    let keys = || Keys::from_raw(&[[7u8; 32]]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let (store, _) = Store::open(
        weft_control::queue::log::Config::new(&log),
        queues,
        now_ms(),
        keys(),
    )
    .expect("embedded store");
    let embedded = Harness {
        name: "embedded",
        store: Backend::Embedded(Box::new(store)),
        disk: log,
        url: None,
        _dir: dir,
        _redis: None,
    };
    let mut out = vec![embedded];
    for (name, cluster) in [("redis", false), ("redis-cluster", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (proc, url) = start_redis(dir.path(), cluster);
        let redis: Arc<RedisStore> = RedisStore::open(&url, queues, keys(), "0123456789abcdef")
            .await
            .unwrap_or_else(|e| panic!("{name} store: {e}"));
        out.push(Harness {
            name,
            store: Backend::Redis(redis),
            disk: dir.path().to_path_buf(),
            url: Some(url),
            _dir: dir,
            _redis: Some(proc),
        });
    }
    out
}

/// A queue named "t/<name>" with default settings changed by `f`.
pub fn queue(name: &str, f: impl FnOnce(&mut QueueConfig)) -> QueueConfig {
    let mut q = QueueConfig {
        name: format!("t/{name}"),
        settings: Settings::default(),
        dead_letter: None,
        kind: "fifo".into(),
        max_message_bytes: 1 << 20,
        encrypted: false,
        fanout: Fanout::None,
    };
    f(&mut q);
    q
}

/// Sends this queue's dead letters to "t/dlq".
pub fn with_dlq(q: &mut QueueConfig) {
    q.dead_letter = Some("t/dlq".into());
    q.settings.has_dead_letter = true;
}

pub fn msg(payload: &str, priority: u8) -> NewMessage {
    NewMessage {
        kind: "test".into(),
        priority,
        payload: payload.as_bytes().to_vec().into(),
        publisher: "spiffe://cluster.local/ns/t/sa/p".into(),
        ..NewMessage::default()
    }
}

/// Every byte under `dir`.
pub fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
