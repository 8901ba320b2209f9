//! The control plane: config push latency (apply → every simulated proxy's
//! ACK, at 1, 100 and 1,000 proxies), its RSS with many discovery streams,
//! and CSR signings per second. A fresh control plane, so the contenders'
//! proxies do not count.

use crate::contenders::Contenders;
use crate::harness::{ip, PROXY_CORE};
use crate::report::Results;
use crate::scenarios::Plan;
use crate::{push, rss_bytes};
use std::net::SocketAddr;
use std::time::Duration;
use weft_mesh_tls::admin_client::AdminAuth;
use weft_testbed::localmesh;

pub fn run(c: &mut Contenders, plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    let want = |s: &str| plan.want(s);
    if !(want("push_apply_to_ack") || want("control_plane_rss") || want("csr_signings")) {
        return Ok(());
    }
    let (smoke, rounds, seconds) = (plan.smoke, plan.rounds, plan.seconds);
    let dir = c.env.dir.clone();
    let control = c.env.bins.path(localmesh::CONTROL);
    let env = &mut c.env;
    // A fresh control plane so the proxies above don't count.
    let cp2 = SocketAddr::new(ip(7), 15012);
    let cp2_url = format!("https://{cp2}");
    let cp2_pid = env.spawn_pinned(
        "weft-control-push",
        PROXY_CORE,
        &control,
        localmesh::control_args(&dir.join("data-push"), cp2, SocketAddr::new(ip(7), 15014)),
    )?;
    localmesh::wait_listening(cp2, Duration::from_secs(10))?;
    let pki2 = localmesh::Pki::of(&dir.join("data-push"));
    pki2.wait(Duration::from_secs(10))?;
    let admin2 = AdminAuth::Certs(pki2.admin_certs.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let sizes: Vec<usize> = if smoke {
        vec![1, 10]
    } else {
        vec![1, 100, plan.push_proxies]
    };
    rt.block_on(async {
        if want("csr_signings") {
            // The control plane (pinned to the proxy core) signing CSRs
            // from 64 concurrent callers on the load core.
            for _ in 0..rounds {
                let per_s = push::csr_rate(
                    &cp2_url,
                    &admin2,
                    &pki2.ca_bundle,
                    Duration::from_secs_f64(seconds.min(5.0)),
                    64,
                )
                .await?;
                results.add("csr_signings", "weft", "signings_per_s", "1/s", per_s);
            }
            eprintln!("  csr_signings done");
        }
        if !(want("push_apply_to_ack") || want("control_plane_rss")) {
            return anyhow::Ok(());
        }
        let mut sims = push::Sims::default();
        let sim_cp = push::sim_identity(&cp2_url, &admin2, &pki2.ca_bundle).await?;
        let mut round_no = 0;
        for n in sizes {
            let more = n - sims.count;
            sims.add(&sim_cp, &cp2_url, more).await?;
            for _ in 0..rounds.max(3) {
                round_no += 1;
                let mut all = push::apply_and_wait(&cp2_url, &admin2, &mut sims, round_no).await?;
                all.sort();
                let p = |q: f64| {
                    all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
                };
                results.add(
                    "push_apply_to_ack",
                    &format!("weft-{n}"),
                    "p50_ms",
                    "ms",
                    p(0.5),
                );
                results.add(
                    "push_apply_to_ack",
                    &format!("weft-{n}"),
                    "p99_ms",
                    "ms",
                    p(0.99),
                );
                results.add(
                    "push_apply_to_ack",
                    &format!("weft-{n}"),
                    "max_ms",
                    "ms",
                    p(1.0),
                );
            }
            eprintln!("  push_apply_to_ack {n} proxies done");
        }
        if want("control_plane_rss") {
            let target = if smoke { 100 } else { plan.cp_streams };
            results.add(
                "control_plane_rss",
                &format!("weft-{}-streams", sims.count),
                "rss_bytes",
                "bytes",
                rss_bytes(cp2_pid)?,
            );
            if target > sims.count {
                let more = target - sims.count;
                sims.add(&sim_cp, &cp2_url, more).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                results.add(
                    "control_plane_rss",
                    &format!("weft-{target}-streams"),
                    "rss_bytes",
                    "bytes",
                    rss_bytes(cp2_pid)?,
                );
            }
        }
        anyhow::Ok(())
    })?;
    drop(rt);
    Ok(())
}
