//! weft-benches: Weft side by side with the direct path, Envoy and HAProxy,
//! in one run, same upstream, same load generators, same CPU pinning (proxy
//! on core 0; load generator, upstream and control plane on core 1).
//!
//! `cargo run --release -p weft-benches -- proxy` runs everything;
//! `--smoke` runs each scenario for a second to prove the harness works.
#![forbid(unsafe_code)]

mod contenders;
mod envoy;
mod ha;
mod harness;
mod loadgen;
mod proxy_suite;
mod push;
mod queue;
mod registry;
mod report;
mod resp;
mod scenarios;
mod soak;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "weft-benches",
    about = "Weft benchmarks against the direct path, Envoy and HAProxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The full side-by-side proxy benchmark.
    Proxy(proxy_suite::ProxyArgs),
    /// Valid traffic plus rotating hostile clients against a two-sidecar
    /// mesh; prints RSS and descriptors (not part of `proxy`).
    Soak(soak::SoakArgs),
    /// The service registry: change → every proxy's ACK, a registration
    /// burst, heartbeats per second with many instances (not part of
    /// `proxy`).
    Registry(registry::RegistryArgs),
    /// Config push with three control-plane replicas on etcd against one on
    /// the embedded store (not part of `proxy`).
    Ha(ha::HaArgs),
    /// The queue service against Redis Streams: durable publish (batching
    /// off and on), consume + ack, priority latency over a backlog, RSS
    /// (not part of `proxy`).
    Queue(queue::QueueArgs),
    /// (internal) constant-rate HTTP/1.1 load with latency correction; prints JSON.
    FixedRate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/bytes?n=100")]
        path: String,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 16)]
        connections: u32,
    },
    /// (internal) closed-loop unary gRPC load; prints JSON.
    GrpcLoad {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        authority: String,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Proxy(args) => proxy_suite::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Registry(args) => registry::run(args),
        Cmd::Ha(args) => ha::run(args),
        Cmd::Queue(args) => queue::run(args),
        Cmd::FixedRate {
            addr,
            host,
            path,
            rate,
            seconds,
            connections,
        } => {
            let r = loadgen::fixed_rate(
                addr,
                &host,
                &path,
                rate,
                Duration::from_secs_f64(seconds),
                connections,
            )?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::GrpcLoad {
            addr,
            authority,
            seconds,
            concurrency,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(loadgen::grpc(
                addr,
                &authority,
                Duration::from_secs_f64(seconds),
                concurrency,
            ))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

/// Runs a command to completion, returning stdout; errors carry stderr.
pub fn run_cmd(program: &str, args: &[String]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Resident set size of a process, bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<f64> {
    let kb = status_kb(pid, "VmRSS:").ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb * 1024.0)
}

/// The number after `field` in `/proc/<pid>/status` (kB for the memory
/// fields).
pub fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) a process has used so far, seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    weft_testbed::procfs::cpu_seconds(pid).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
