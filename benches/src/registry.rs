//! `weft-benches registry`: the service registry of one control plane
//! (embedded store), pinned to core 0 while this process drives it from
//! core 1, over the real mTLS gRPC API.
//!
//! 1. change → ACK: N simulated proxies (real discovery streams, as in the
//!    push benchmark) route to service `reg-target`; an instance of it is
//!    registered or deregistered, and each proxy's ACK of the push that
//!    carries the change is timed from the call.
//! 2. burst: B instances register within one second; the time until every
//!    simulated proxy has ACKed a push with all of them, and how many pushes
//!    that took.
//! 3. heartbeats: I instances of service `hb` (no proxy routes to it) are
//!    registered, then renewed as fast as 32 heartbeat streams go; the rate
//!    and the control plane's RSS.
//!
//! Every address registered is on loopback and is never connected to.

use crate::push::{self, Sims};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_mesh_tls::admin_client::AdminAuth;
use weft_testbed::Mesh;
use xds_proto::v1::{self as pb, registry_client::RegistryClient};

pub(crate) type Client = RegistryClient<tonic::transport::Channel>;

#[derive(Args)]
pub struct RegistryArgs {
    /// Simulated proxies subscribed to the changed service.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Changes timed in the change → ACK phase (half registrations, half
    /// deregistrations).
    #[arg(long, default_value_t = 40)]
    changes: usize,
    /// Instances in the registration burst.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Instances renewed in the heartbeat phase.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Length of the heartbeat phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

const NS: &str = "sim";
pub(crate) const HEARTBEAT_STREAMS: usize = 32;

pub fn run(args: RegistryArgs) -> anyhow::Result<()> {
    let mesh = Mesh::start("registry-bench");
    let cp_pid = mesh
        .control
        .as_ref()
        .and_then(|p| p.pid())
        .context("weft-control is not running")?;
    pin(cp_pid, "0")?;
    pin(std::process::id(), "1")?;
    let auth = AdminAuth::Certs(mesh.pki().admin_certs);
    let url = mesh.cp_url();
    let ca_bundle = mesh.pki().ca_bundle;
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: sim-client, namespace: {NS}}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: reg-target, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: 8080, protocol: http}}]\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: reg-target, namespace: {NS}}}\nspec:\n  sources: [sim-client]\n  hosts: [reg-target]\n  http: [{{destination: {{service: reg-target, port: 8080}}}}]\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: hb, namespace: {NS}}}\nspec:\n  ports: [{{name: tcp, port: 9000, protocol: tcp}}]\n"
    );
    mesh.apply("registry-bench.yaml", &yaml)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = weft_mesh_tls::admin_client::channel(&url, &auth).await?;
        let client = RegistryClient::new(channel);
        let mut sims = Sims::default();
        let sim_cp = push::sim_identity(&url, &auth, &ca_bundle).await?;
        sims.add(&sim_cp, &url, args.proxies).await?;
        println!(
            "registry benchmark: weft-control pinned to core 0, clients on core 1; {} simulated proxies",
            args.proxies
        );
        change_to_ack(&client, &mut sims, args.changes).await?;
        burst(&client, &mut sims, args.burst).await?;
        heartbeats(&client, &mesh, cp_pid, args.instances, args.seconds).await?;
        anyhow::Ok(())
    })
}

/// `taskset -a -p -c CORE PID`: every thread of `pid` on `core`.
pub(crate) fn pin(pid: u32, core: &str) -> anyhow::Result<()> {
    crate::run_cmd(
        "taskset",
        &[
            "-a".into(),
            "-p".into(),
            "-c".into(),
            core.into(),
            pid.to_string(),
        ],
    )
    .map(drop)
}

pub(crate) fn instance(service: &str, id: &str, n: usize) -> pb::Instance {
    pb::Instance {
        namespace: NS.into(),
        service: service.into(),
        instance_id: id.into(),
        // 127.1.0.0/16 and up: loopback, never connected to.
        address: format!("127.{}.{}.{}", 1 + n / 65_536, (n / 256) % 256, n % 256),
        sidecar_port: 15006,
        ports: vec![pb::InstancePort {
            name: "http".into(),
            port: 8080,
            protocol: pb::Protocol::Http as i32,
        }],
        ..Default::default()
    }
}

fn registry_revision(version: &str) -> u64 {
    version
        .rsplit_once('.')
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or(0)
}

/// Waits until every simulated proxy has ACKed registry revision `rev`;
/// per proxy, the time from `from` to that ACK, and the pushes each ACKed
/// on the way.
async fn wait_all(
    sims: &mut Sims,
    rev: u64,
    from: Instant,
) -> anyhow::Result<(Vec<Duration>, Vec<usize>)> {
    let mut at: Vec<Option<Duration>> = vec![None; sims.count];
    let mut pushes = vec![0usize; sims.count];
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done < sims.count {
        let (i, version, when) = sims.next_ack(deadline).await.ok_or_else(|| {
            anyhow!(
                "{done}/{} proxies ACKed revision {rev} within 60 s",
                sims.count
            )
        })?;
        if at[i].is_some() {
            continue;
        }
        pushes[i] += 1;
        if registry_revision(&version) >= rev {
            at[i] = Some(when.saturating_duration_since(from));
            done += 1;
        }
    }
    Ok((at.into_iter().flatten().collect(), pushes))
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

async fn change_to_ack(client: &Client, sims: &mut Sims, changes: usize) -> anyhow::Result<()> {
    let mut c = client.clone();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut all = Vec::new();
    let mut lease = None;
    for k in 0..changes {
        sims.clear_acks();
        let started = Instant::now();
        let rev = match lease.take() {
            None => {
                let r = c
                    .register(pb::RegisterRequest {
                        instance: Some(instance("reg-target", &format!("chg-{k}"), k)),
                        ttl_ms: 60_000,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("register: {}", e.message()))?
                    .into_inner();
                lease = Some(r.lease_id);
                r.revision
            }
            Some(l) => {
                c.deregister(pb::DeregisterRequest { lease_id: l })
                    .await
                    .map_err(|e| anyhow!("deregister: {}", e.message()))?
                    .into_inner()
                    .revision
            }
        };
        let (mut times, _) = wait_all(sims, rev, started).await?;
        times.sort();
        p50s.push(percentile(&times, 0.5));
        p99s.push(percentile(&times, 0.99));
        all.extend(times);
    }
    all.sort();
    p50s.sort_by(f64::total_cmp);
    p99s.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    println!(
        "change → ACK ({} changes × {} proxies): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over all; per change median p50 {:.1} ms, median p99 {:.1} ms",
        changes,
        sims.count,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        median(&p50s),
        median(&p99s)
    );
    Ok(())
}

async fn burst(client: &Client, sims: &mut Sims, n: usize) -> anyhow::Result<()> {
    sims.clear_acks();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..n {
        let mut c = client.clone();
        let at = started + Duration::from_secs_f64(k as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            c.register(pb::RegisterRequest {
                instance: Some(instance("reg-target", &format!("burst-{k}"), 10_000 + k)),
                ttl_ms: 60_000,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().revision)
            .map_err(|e| anyhow!("register burst-{k}: {}", e.message()))
        }));
    }
    let mut max_rev = 0;
    for t in tasks {
        max_rev = max_rev.max(t.await??);
    }
    let registered = started.elapsed();
    let (times, pushes) = wait_all(sims, max_rev, started).await?;
    let last = times.iter().max().copied().unwrap_or_default();
    let mut pushes = pushes;
    pushes.sort();
    println!(
        "burst: {n} registrations in {:.0} ms; every proxy had all of them {:.0} ms after the first; pushes per proxy median {}, max {}",
        registered.as_secs_f64() * 1000.0,
        last.as_secs_f64() * 1000.0,
        pushes[pushes.len() / 2],
        pushes[pushes.len() - 1]
    );
    Ok(())
}

/// The control plane's own count of heartbeats.
fn served_heartbeats(mesh: &Mesh) -> f64 {
    weft_testbed::metric(
        &mesh.control_metrics(),
        "weft_control_registry_heartbeats_total",
        "",
    )
    .unwrap_or(0.0)
}

async fn heartbeats(
    client: &Client,
    mesh: &Mesh,
    cp_pid: u32,
    n: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let leases = register_many(std::slice::from_ref(client), "hb", n).await?;
    let took = started.elapsed();
    let rss_registered = crate::rss_bytes(cp_pid)?;
    println!(
        "registered {n} instances in {:.1} s ({:.0}/s, 256 concurrent callers); weft-control RSS {:.1} MB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        rss_registered / 1e6
    );
    let mut rss_max: f64 = 0.0;
    let run = drive_heartbeats(
        std::slice::from_ref(client),
        &leases,
        seconds,
        || vec![served_heartbeats(mesh)],
        || {
            if let Ok(r) = crate::rss_bytes(cp_pid) {
                rss_max = rss_max.max(r);
            }
        },
    )
    .await?;
    println!(
        "heartbeats: {:.0}/s answered ({:.0}/s counted by weft-control) over {:.0} s with {n} instances on {HEARTBEAT_STREAMS} streams; weft-control RSS max {:.1} MB; refused {}",
        run.rate,
        run.counters[0],
        run.seconds,
        rss_max / 1e6,
        run.refused
    );
    if run.refused > 0 {
        bail!("{} heartbeats were refused", run.refused);
    }
    Ok(())
}

/// Registers `n` instances of `service` (1 h leases) with 256 concurrent
/// callers spread over `clients`; their lease ids.
pub(crate) async fn register_many(
    clients: &[Client],
    service: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let leases = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..256 {
        let mut c = clients[t % clients.len()].clone();
        let (leases, next, service) = (leases.clone(), next.clone(), service.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                if k >= n {
                    return anyhow::Ok(());
                }
                let r = c
                    .register(pb::RegisterRequest {
                        instance: Some(instance(&service, &format!("{service}-{k}"), 20_000 + k)),
                        ttl_ms: 3_600_000,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("register {service}-{k}: {}", e.message()))?;
                leases.lock().await.push(r.into_inner().lease_id);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let leases = std::mem::take(&mut *leases.lock().await);
    Ok(leases)
}

/// What a heartbeat run measured.
pub(crate) struct HeartbeatRun {
    /// Heartbeats answered per second.
    pub rate: f64,
    /// Each of the counters' increase per second over the same window.
    pub counters: Vec<f64>,
    pub refused: u64,
    pub seconds: f64,
}

/// Renews `leases` as fast as `HEARTBEAT_STREAMS` streams (spread over
/// `clients`) go: one second of warm-up, then `seconds` measured, reading
/// `counters` at both ends and calling `sample` every 500 ms.
pub(crate) async fn drive_heartbeats(
    clients: &[Client],
    leases: &[String],
    seconds: f64,
    counters: impl Fn() -> Vec<f64>,
    mut sample: impl FnMut(),
) -> anyhow::Result<HeartbeatRun> {
    let per_stream = leases.len().div_ceil(HEARTBEAT_STREAMS);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, chunk) in leases.chunks(per_stream.max(1)).enumerate() {
        let chunk = chunk.to_vec();
        let (mut c, stop, answered, refused) = (
            clients[i % clients.len()].clone(),
            stop.clone(),
            answered.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(256);
            let mut replies = c
                .heartbeat(ReceiverStream::new(rx))
                .await
                .map_err(|e| anyhow!("heartbeat stream: {}", e.message()))?
                .into_inner();
            let sender = tokio::spawn(async move {
                for lease in chunk.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let hb = pb::HeartbeatRequest {
                        lease_id: lease.clone(),
                        ..Default::default()
                    };
                    if tx.send(hb).await.is_err() {
                        return;
                    }
                }
            });
            while let Ok(Some(r)) = replies.message().await {
                if r.known && r.error.is_empty() {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                if sender.is_finished() {
                    break;
                }
            }
            anyhow::Ok(())
        }));
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a0, t0) = (answered.load(Ordering::Relaxed), Instant::now());
    let c0 = counters();
    let until = t0 + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample();
    }
    let (a1, t1) = (answered.load(Ordering::Relaxed), Instant::now());
    let c1 = counters();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let secs = (t1 - t0).as_secs_f64();
    Ok(HeartbeatRun {
        rate: (a1 - a0) as f64 / secs,
        counters: c0.iter().zip(&c1).map(|(a, b)| (b - a) / secs).collect(),
        refused: refused.load(Ordering::Relaxed),
        seconds: secs,
    })
}
