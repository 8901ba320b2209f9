//! `weft-benches ha`: config push with the control plane on etcd, three
//! replicas, against one replica on the embedded store, in the same run.
//!
//! N simulated proxies (real discovery streams with a real workload
//! certificate, as in the push benchmark) are spread evenly over the
//! replicas; a change is applied through the first replica and each
//! proxy's ACK is timed from the apply call, so proxies on the other
//! replicas measure the etcd watch path. Then the streams are raised to
//! `--streams` and each replica's RSS is read.
//!
//! Heartbeats: `--instances` instances are registered (spread over the
//! replicas) and renewed as fast as 32 heartbeat streams go, spread over
//! the replicas too; on etcd, the same client then renews as many raw etcd
//! leases over 32 LeaseKeepAlive streams straight to the etcd members: the
//! ceiling of a registry whose leases are etcd leases.

use crate::push::{self, Sims};
use crate::registry::{self as reg, HEARTBEAT_STREAMS};
use anyhow::anyhow;
use clap::Args;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_mesh_tls::admin_client::AdminAuth;
use weft_testbed::etcd::EtcdCluster;
use weft_testbed::Mesh;

#[derive(Args)]
pub struct HaArgs {
    /// Simulated proxies for the apply → ACK rounds.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Applies timed per layout.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Streams in total for the RSS reading (spread over the replicas).
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Instances (and raw etcd leases) renewed in the heartbeat phase.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Length of each heartbeat measurement.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

struct Layout {
    name: &'static str,
    mesh: Mesh,
    etcd: Option<EtcdCluster>,
    urls: Vec<String>,
    /// Each replica's admin (metrics) address.
    admins: Vec<SocketAddr>,
    pids: Vec<u32>,
}

fn embedded() -> anyhow::Result<Layout> {
    let mesh = Mesh::start("ha-bench-embedded");
    let pid = mesh.control.as_ref().and_then(|p| p.pid()).unwrap_or(0);
    Ok(Layout {
        name: "1 replica, embedded store",
        urls: vec![mesh.cp_url()],
        admins: vec![mesh.control_admin],
        pids: vec![pid],
        mesh,
        etcd: None,
    })
}

fn on_etcd() -> anyhow::Result<Layout> {
    let mut mesh = Mesh::prepare("ha-bench-etcd", &[]);
    std::fs::create_dir_all(mesh.logs())?;
    let etcd = EtcdCluster::start(
        &[mesh.ip(211), mesh.ip(212), mesh.ip(213)],
        &mesh.dir,
        &mesh.logs(),
    )?;
    mesh.control_extra = vec!["--store".into(), etcd.url()];
    mesh.start_control();
    let (b, b_admin) = mesh.start_replica(5);
    let (c, c_admin) = mesh.start_replica(6);
    let mut pids = vec![mesh.control.as_ref().and_then(|p| p.pid()).unwrap_or(0)];
    for name in ["weft-control-5", "weft-control-6"] {
        pids.push(mesh.proc_mut(name).pid().unwrap_or(0));
    }
    Ok(Layout {
        name: "3 replicas, etcd store (3 members)",
        urls: vec![
            format!("https://{}", mesh.control_grpc),
            format!("https://{b}"),
            format!("https://{c}"),
        ],
        admins: vec![mesh.control_admin, b_admin, c_admin],
        pids,
        mesh,
        etcd: Some(etcd),
    })
}

pub fn run(args: HaArgs) -> anyhow::Result<()> {
    println!(
        "apply → every proxy's ACK, {} simulated proxies spread over the replicas, {} applies through the first replica",
        args.proxies, args.rounds
    );
    for make in [embedded as fn() -> anyhow::Result<Layout>, on_etcd] {
        let layout = make()?;
        measure(&layout, &args)?;
    }
    Ok(())
}

fn measure(l: &Layout, args: &HaArgs) -> anyhow::Result<()> {
    let auth = AdminAuth::Certs(l.mesh.pki().admin_certs);
    let ca_bundle = l.mesh.pki().ca_bundle;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sim_cp = push::sim_identity(&l.urls[0], &auth, &ca_bundle).await?;
        let mut sims = Sims::default();
        let per = args.proxies.div_ceil(l.urls.len());
        for url in &l.urls {
            sims.add(&sim_cp, url, per.min(args.proxies - sims.count))
                .await?;
        }
        let mut all = Vec::new();
        let mut p99s = Vec::new();
        for round in 1..=args.rounds {
            let mut t = push::apply_and_wait(&l.urls[0], &auth, &mut sims, round).await?;
            t.sort();
            p99s.push(pct(&t, 0.99));
            all.extend(t);
        }
        all.sort();
        p99s.sort_by(f64::total_cmp);
        println!(
            "{}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over all ACKs; median per-apply p99 {:.1} ms",
            l.name,
            pct(&all, 0.5),
            pct(&all, 0.99),
            pct(&all, 1.0),
            p99s[p99s.len() / 2]
        );
        if args.streams > sims.count {
            let per = (args.streams - sims.count).div_ceil(l.urls.len());
            for url in &l.urls {
                let n = per.min(args.streams - sims.count);
                sims.add(&sim_cp, url, n).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rss: Vec<String> = l
            .pids
            .iter()
            .map(|p| {
                crate::rss_bytes(*p)
                    .map(|b| format!("{:.0} MB", b / 1e6))
                    .unwrap_or_else(|_| "?".into())
            })
            .collect();
        println!(
            "{}: {} streams, RSS per replica {}",
            l.name,
            sims.count,
            rss.join(", ")
        );
        drop(sims);
        heartbeats(l, &auth, args).await?;
        if let Some(etcd) = &l.etcd {
            raw_keepalives(etcd, args).await?;
        }
        anyhow::Ok(())
    })
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

/// Sums one counter over the layout's replicas.
fn counter(l: &Layout, name: &str) -> f64 {
    l.admins
        .iter()
        .map(|a| {
            weft_testbed::http_request(*a, "GET", "/metrics", "localhost", &[], b"")
                .ok()
                .and_then(|(_, m)| weft_testbed::metric(&m, name, ""))
                .unwrap_or(0.0)
        })
        .sum()
}

async fn heartbeats(l: &Layout, auth: &AdminAuth, args: &HaArgs) -> anyhow::Result<()> {
    l.mesh.apply(
        "hb.yaml",
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: hb, namespace: sim}\nspec:\n  ports: [{name: tcp, port: 9000, protocol: tcp}]\n",
    )?;
    let mut clients = Vec::new();
    for url in &l.urls {
        let ch = weft_mesh_tls::admin_client::channel(url, auth).await?;
        clients.push(reg::Client::new(ch));
    }
    // Every replica must know the Service before registering to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let leases = reg::register_many(&clients, "hb", args.instances).await?;
    let took = started.elapsed();
    let run = reg::drive_heartbeats(
        &clients,
        &leases,
        args.seconds,
        || {
            vec![
                counter(l, "weft_control_registry_heartbeats_total"),
                counter(l, "weft_control_registry_keepalives_total"),
            ]
        },
        || {},
    )
    .await?;
    println!(
        "{}: registered {} instances in {:.1} s ({:.0}/s); heartbeats {:.0}/s answered ({:.0}/s counted by the replicas), {:.0} etcd lease keep-alives/s sent for them; {HEARTBEAT_STREAMS} streams; refused {}",
        l.name,
        args.instances,
        took.as_secs_f64(),
        args.instances as f64 / took.as_secs_f64(),
        run.rate,
        run.counters[0],
        run.counters[1],
        run.refused
    );
    Ok(())
}

/// The same client renewing raw etcd leases as fast as 32 LeaseKeepAlive
/// streams (spread over the members) go.
async fn raw_keepalives(etcd: &EtcdCluster, args: &HaArgs) -> anyhow::Result<()> {
    use xds_proto::etcd::{lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest};
    let members: Vec<String> = etcd
        .url()
        .trim_start_matches("etcd://")
        .split(',')
        .map(|m| format!("http://{m}"))
        .collect();
    let mut channels = Vec::new();
    for m in &members {
        channels.push(
            tonic::transport::Endpoint::from_shared(m.clone())?
                .connect()
                .await?,
        );
    }
    let mut leases = Vec::with_capacity(args.instances);
    let mut c = LeaseClient::new(channels[0].clone());
    for _ in 0..args.instances {
        let r = c
            .lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 })
            .await
            .map_err(|e| anyhow!("lease grant: {}", e.message()))?;
        leases.push(r.into_inner().id);
    }
    let per_stream = leases.len().div_ceil(HEARTBEAT_STREAMS);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, chunk) in leases.chunks(per_stream.max(1)).enumerate() {
        let chunk = chunk.to_vec();
        let mut c = LeaseClient::new(channels[i % channels.len()].clone());
        let (stop, answered) = (stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(256);
            // etcd answers the call's headers with its first reply: send
            // before waiting for them.
            let sender = tokio::spawn(async move {
                for id in chunk.iter().cycle() {
                    if stop.load(Ordering::Relaxed)
                        || tx.send(LeaseKeepAliveRequest { id: *id }).await.is_err()
                    {
                        return;
                    }
                }
            });
            let mut replies = c
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .map_err(|e| anyhow!("keep-alive stream: {}", e.message()))?
                .into_inner();
            while let Ok(Some(r)) = replies.message().await {
                if r.ttl > 0 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                if sender.is_finished() {
                    break;
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a0, t0) = (answered.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let (a1, t1) = (answered.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    println!(
        "raw etcd lease keep-alives (the ceiling), same client: {:.0}/s over {:.0} s, {} leases on {HEARTBEAT_STREAMS} streams",
        (a1 - a0) as f64 / (t1 - t0).as_secs_f64(),
        (t1 - t0).as_secs_f64(),
        leases.len()
    );
    Ok(())
}
