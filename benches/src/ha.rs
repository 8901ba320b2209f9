//! `weft-benches ha`: config push with the control plane on etcd, three
//! replicas, against one replica on the embedded store, in the same run.
//!
//! N simulated proxies (real discovery streams with a real workload
//! certificate, as in the push benchmark) are spread evenly over the
//! replicas; a change is applied through the first replica and each
//! proxy's ACK is timed from the apply call, so proxies on the other
//! replicas measure the etcd watch path. Then the streams are raised to
//! `--streams` and each replica's RSS is read.

use crate::push::{self, Sims};
use clap::Args;
use std::time::Duration;
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
}

struct Layout {
    name: &'static str,
    mesh: Mesh,
    _etcd: Option<EtcdCluster>,
    urls: Vec<String>,
    pids: Vec<u32>,
}

fn embedded() -> anyhow::Result<Layout> {
    let mesh = Mesh::start("ha-bench-embedded");
    let pid = mesh.control.as_ref().and_then(|p| p.pid()).unwrap_or(0);
    Ok(Layout {
        name: "1 replica, embedded store",
        urls: vec![mesh.cp_url()],
        pids: vec![pid],
        mesh,
        _etcd: None,
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
    let (b, _) = mesh.start_replica(5);
    let (c, _) = mesh.start_replica(6);
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
        pids,
        mesh,
        _etcd: Some(etcd),
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
        anyhow::Ok(())
    })
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}
