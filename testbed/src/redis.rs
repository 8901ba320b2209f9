//! A real Redis for the queue store tests: Debian's `redis-server` on one
//! of the test's loopback addresses, with the AOF fsynced before every
//! reply (`appendfsync always`) under the test's directory; killed when
//! dropped.

use crate::localmesh::{wait_listening, Proc};
use crate::mesh::Mesh;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct RedisServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    logs: PathBuf,
    proc: Option<Proc>,
}

impl RedisServer {
    pub fn start(addr: SocketAddr, dir: &Path, logs: &Path) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let mut r = RedisServer {
            addr,
            dir: dir.to_path_buf(),
            logs: logs.to_path_buf(),
            proc: None,
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// (Re)starts it on the same address and data (the AOF is replayed).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let args: Vec<String> = [
            "--bind",
            &self.addr.ip().to_string(),
            "--port",
            &self.addr.port().to_string(),
            "--dir",
            &self.dir.display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = Proc::spawn("redis-server", Path::new("redis-server"), &args, &self.logs)?;
        self.proc = Some(p);
        wait_listening(self.addr, Duration::from_secs(15))
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    /// SIGKILL: no shutdown, what is not in the AOF is lost.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Every byte Redis keeps on disk (AOF and RDB files), for greps.
    pub fn files(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.clone()];
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which store a queue test runs its control plane on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStore {
    Embedded,
    Redis,
}

impl Mesh {
    /// A mesh whose control plane keeps its queues in `store`: for Redis,
    /// a fresh redis-server on 127.A.B.250:6379 (returned: it lives as
    /// long as the test holds it).
    pub fn start_with_queue_store(
        name: &str,
        store: QueueStore,
        control_extra: &[&str],
    ) -> (Mesh, Option<RedisServer>) {
        let mut mesh = Mesh::prepare(name, control_extra);
        let redis = match store {
            QueueStore::Embedded => None,
            QueueStore::Redis => {
                let r = RedisServer::start(
                    SocketAddr::new(mesh.ip(250), 6379),
                    &mesh.dir.join("redis"),
                    &mesh.logs(),
                )
                .expect("redis-server (apt-get install redis-server)");
                mesh.control_extra
                    .extend(["--queue-store".to_string(), r.url()]);
                Some(r)
            }
        };
        mesh.start_control();
        (mesh, redis)
    }
}
