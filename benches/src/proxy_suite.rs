//! `weft-benches proxy`: start the contenders, run the scenarios against
//! them round by round, write `results/latest.{json,md}`.

use crate::contenders::Contenders;
use crate::harness::{ensure_envoy, ensure_tools, Env, LOAD_CORE, PROXY_CORE};
use crate::report::Results;
use crate::scenarios::{self, Plan};
use crate::{run_cmd, workspace_root};
use anyhow::bail;
use clap::Args;
use std::path::PathBuf;
use weft_testbed::localmesh::Binaries;

#[derive(Args)]
pub struct ProxyArgs {
    /// One short round per scenario: proves the harness works, measures nothing worth citing.
    #[arg(long)]
    smoke: bool,
    /// Rounds per scenario (median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Where latest.json and latest.md go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated scenario names to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Largest simulated-proxy count for the push scenario.
    #[arg(long, default_value_t = 1000)]
    push_proxies: usize,
    /// Streams for the control-plane memory scenario.
    #[arg(long, default_value_t = 10_000)]
    cp_streams: usize,
}

fn plan_of(args: &ProxyArgs) -> Plan {
    Plan {
        smoke: args.smoke,
        rounds: if args.smoke { 1 } else { args.rounds.max(1) },
        seconds: if args.smoke { 1.0 } else { args.seconds },
        only: args.only.clone(),
        push_proxies: args.push_proxies,
        cp_streams: args.cp_streams,
    }
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let plan = plan_of(&args);
    ensure_tools()?;
    let envoy = ensure_envoy(plan.smoke)?;
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        bins: Binaries::from_current_exe()?,
        me: std::env::current_exe()?,
        dir,
        procs: vec![],
        envoy,
        seconds: plan.seconds,
    };
    let mut c = Contenders::start(env)?;
    let mut results = Results::default();
    scenarios::memory::rss_idle(&c, &plan, &mut results)?;
    for round in 0..plan.rounds {
        eprintln!("round {}/{}", round + 1, plan.rounds);
        scenarios::throughput::round(&c, &plan, &mut results)?;
    }
    scenarios::workers::run(&mut c, &plan, &mut results)?;
    scenarios::memory::rss_10k_endpoints(&c, &plan, &mut results)?;
    scenarios::control_plane::run(&mut c, &plan, &mut results)?;
    write_results(args.out, &plan, &c, &results)
}

/// `latest.json` and `latest.md` (or `smoke.*`) in `out` (default
/// benches/results), and the Markdown on stdout.
fn write_results(
    out: Option<PathBuf>,
    plan: &Plan,
    c: &Contenders,
    results: &Results,
) -> anyhow::Result<()> {
    let (smoke, rounds, seconds) = (plan.smoke, plan.rounds, plan.seconds);
    let envoy_pid = c.envoy.as_ref().map(|e| e.pid);
    let out_dir = out.unwrap_or_else(|| workspace_root().join("benches/results"));
    std::fs::create_dir_all(&out_dir)?;
    let json_name = if smoke { "smoke.json" } else { "latest.json" };
    std::fs::write(
        out_dir.join(json_name),
        serde_json::to_string_pretty(&results.records())?,
    )?;
    let header = format!(
        "## weft-benches proxy{}\n\nMachine: {} cores, {}. Proxy pinned to core {PROXY_CORE}; load generator, upstream and control plane on core {LOAD_CORE}. {rounds} round(s) of {seconds}s. Contenders: direct, weft-proxy (1 worker), {}HAProxy ({}, nbthread 1).\nLoad: wrk -t1 -c64 (max rps); fixed-rate open-loop generator with coordinated-omission correction (latency); h2load -c16 -m10 -t1; unary gRPC with 32 in flight (tonic); iperf3.\n",
        if smoke { " --smoke" } else { "" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        run_cmd("uname", &["-srm".into()]).unwrap_or_default().trim(),
        if envoy_pid.is_some() { "Envoy 1.40.0 (--concurrency 1), " } else { "" },
        run_cmd("haproxy", &["-v".into()]).unwrap_or_default().lines().next().unwrap_or("").trim(),
    );
    let md = results.markdown(&header);
    std::fs::write(
        out_dir.join(if smoke { "smoke.md" } else { "latest.md" }),
        &md,
    )?;
    println!("{md}");
    if results.records().is_empty() {
        bail!("no results produced");
    }
    if results
        .records()
        .iter()
        .any(|r| !r.median.is_finite() || r.median < 0.0 && !r.metric.contains("added"))
    {
        bail!(
            "a scenario produced an invalid number; see {}",
            out_dir.display()
        );
    }
    Ok(())
}
