//! `weftctl demo`: a working mesh on loopback from nothing but cargo. Starts
//! weft-control (embedded store in a temp dir), an HTTP service `web` of
//! three instances (v1 twice, a v2 canary) and a gRPC workload `greeter`,
//! each behind its own weft-proxy on its own loopback IP, applies the sample
//! config, and drives traffic app → sidecar → sidecar → app both ways while
//! printing a live per-route table. Traffic policy on show: web's route
//! splits 90/10 between v1 and the v2 canary with retries; a few seconds in,
//! the demo makes one v1 instance fail and its circuit breaker (outlier
//! detection) opens, then closes again once the instance recovers. Beside
//! it runs a queue flow (`demo_queue`): threat-intel enrichment requests
//! through the queue service, one poison message ending in the DLQ.

use anyhow::{anyhow, bail};
use clap::Args;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_mesh_tls::admin_client::{self, AdminAuth};
use weft_testbed::localmesh::{self, Binaries, Proc, ProxyAddrs, ProxyAuth, ProxySpec};
use xds_proto::sample::v1::{echo_client::EchoClient, EchoRequest};
use xds_proto::v1::{
    self as pb, admin_client::AdminClient, queue_client::QueueClient,
    registry_client::RegistryClient,
};

#[derive(Args)]
pub struct DemoArgs {
    /// Run this many seconds, then exit 0 only if traffic flowed without errors.
    #[arg(long = "for")]
    duration: Option<u64>,
    /// Requests per second per route.
    #[arg(long, default_value_t = 50)]
    rps: u32,
}

#[derive(Default)]
struct RouteStats {
    /// Replies by the instance that served them (x-served-by), this window.
    served_by: std::collections::BTreeMap<String, u64>,
    ok: u64,
    failed: u64,
    last_error: Option<String>,
    /// Latencies of the current window.
    window: Vec<Duration>,
    total_ok: u64,
    total_failed: u64,
}

type Stats = Arc<Mutex<RouteStats>>;

fn demo_ip(last: u8) -> IpAddr {
    // Own /24 per demo process so a second demo (or a test run) doesn't collide.
    let third = 100 + (std::process::id() % 100) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, third, last))
}

/// One web instance: (node name, app name, version label).
const WEB: [(&str, &str, &str); 3] = [
    ("web-0", "web-v1a", "v1"),
    ("web-1", "web-v1b", "v1"),
    ("web-2", "web-v2", "v2"),
];
/// The instance the demo breaks, and when (seconds into the traffic).
const FAULTY: usize = 1;
const FAULT_AT: u64 = 4;
const RECOVER_AT: u64 = 12;

/// The demo's Services carry ports and policies only: their endpoints come
/// from the registry, where each sidecar registers its workload.
fn config(web_port: u16, greeter_port: u16) -> String {
    format!(
        r#"apiVersion: weft.dev/v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  ports: [{{name: http, port: {web_port}, protocol: http}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: greeter, namespace: demo}}
spec:
  ports: [{{name: grpc, port: {greeter_port}, protocol: grpc}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: greeter, namespace: demo}}
spec:
  sources: [web]
  hosts: [greeter, greeter.demo]
  http: [{{destination: {{service: greeter, port: {greeter_port}}}}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: web, namespace: demo}}
spec:
  sources: [greeter]
  hosts: [web, web.demo]
  http:
  - match: {{path: {{prefix: /}}}}
    backends:
    - {{service: web, port: {web_port}, subset: {{version: v1}}, weight: 90}}
    - {{service: web, port: {web_port}, subset: {{version: v2}}, weight: 10}}
    retries: {{attempts: 3, on: [5xx, connect-failure], backoff: {{base: 5ms, max: 50ms}}}}
    timeout: 2s
---
apiVersion: weft.dev/v1
kind: Policy
metadata: {{name: web, namespace: demo}}
spec:
  target: {{service: web}}
  outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 2s, maxEjectionTime: 4s, maxEjectionPercent: 50}}
  retryBudget: {{percent: 50, minRetriesPerSecond: 20}}
"#
    )
}

/// Where everything of the demo mesh lives.
struct Layout {
    work: std::path::PathBuf,
    logs: std::path::PathBuf,
    grpc_addr: SocketAddr,
    cp_url: String,
    /// One app port per web instance (`WEB`); the service port in config
    /// is the first.
    web_ports: Vec<u16>,
    greeter_port: u16,
    web: Vec<ProxyAddrs>,
    greeter: ProxyAddrs,
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl Layout {
    fn new() -> anyhow::Result<Layout> {
        let work = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
        let grpc_addr = SocketAddr::new(demo_ip(1), 15012);
        // The web instances share the service port in config; each app
        // listens on its own loopback port behind its sidecar.
        let web_ports: Vec<u16> = (0..WEB.len())
            .map(|_| localmesh::free_port(LOOPBACK))
            .collect::<Result<_, _>>()?;
        Ok(Layout {
            logs: work.join("logs"),
            work,
            grpc_addr,
            cp_url: format!("https://{grpc_addr}"),
            web_ports,
            greeter_port: localmesh::free_port(LOOPBACK)?,
            web: (0..WEB.len())
                .map(|i| ProxyAddrs::on(demo_ip(2 + i as u8)))
                .collect(),
            greeter: ProxyAddrs::on(demo_ip(10)),
        })
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bins = Binaries::from_current_exe()?;
    let l = Layout::new()?;
    println!("weft demo: logs and data in {}", l.work.display());
    let mut procs = start_control_and_apps(&bins, &l)?;
    // The control plane writes weftctl's admin certificate and the CA bundle
    // on first start; each sidecar then trades a join token for its own
    // certificate (mTLS everywhere, as in production).
    let pki = localmesh::Pki::of(&l.work.join("data"));
    let mut client = admin_when_ready(&l).await?;
    start_sidecars(&bins, &l, &pki, &mut client, &mut procs).await?;
    if let Err(e) = apply_and_wait_synced(&l, &mut client).await {
        for p in &procs {
            eprintln!("--- {} ({}):\n{}", p.name, p.log.display(), p.log_tail(5));
        }
        return Err(e);
    }
    print_intro(&l, &pki);
    let bundle = std::fs::read_to_string(&pki.ca_bundle)?;
    let flow = crate::demo_queue::start(&mut client, &l.cp_url, &bundle).await?;
    let queues = QueueClient::new(
        admin_client::channel(&l.cp_url, &AdminAuth::Certs(pki.admin_certs.clone())).await?,
    );
    let (stats, queue) = run_traffic(&args, &l, &flow, queues).await?;
    drop(flow);
    drop(procs);
    report(&args, &l, &stats, queue)
}

/// The control plane and the apps (three web instances, the gRPC greeter).
fn start_control_and_apps(bins: &Binaries, l: &Layout) -> anyhow::Result<Vec<Proc>> {
    let (web_ports, greeter_port, logs) = (&l.web_ports, l.greeter_port, &l.logs);
    let mut procs: Vec<Proc> = Vec::new();
    procs.push(Proc::spawn(
        "weft-control",
        &bins.path(localmesh::CONTROL),
        &localmesh::control_args(
            &l.work.join("data"),
            l.grpc_addr,
            SocketAddr::new(l.grpc_addr.ip(), 15014),
        ),
        logs,
    )?);
    for ((_, app, _), port) in WEB.iter().zip(web_ports) {
        procs.push(Proc::spawn(
            &format!("app-{app}"),
            &bins.path(localmesh::SAMPLE_APP),
            &[
                "http".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--name".into(),
                (*app).into(),
            ],
            logs,
        )?);
    }
    procs.push(Proc::spawn(
        "app-greeter",
        &bins.path(localmesh::SAMPLE_APP),
        &[
            "grpc".into(),
            "--listen".into(),
            format!("127.0.0.1:{greeter_port}"),
            "--name".into(),
            "greeter".into(),
        ],
        logs,
    )?);
    Ok(procs)
}

/// An Admin API client, once the control plane has written the admin
/// certificate and answers.
async fn admin_when_ready(l: &Layout) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let pki_wait = localmesh::Pki::of(&l.work.join("data"));
    tokio::task::spawn_blocking(move || pki_wait.wait(Duration::from_secs(20))).await??;
    let auth = AdminAuth::Certs(localmesh::Pki::of(&l.work.join("data")).admin_certs);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin_client::admin_client(&l.cp_url, &auth).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One sidecar per instance, each with a join token of its own.
async fn start_sidecars(
    bins: &Binaries,
    l: &Layout,
    pki: &localmesh::Pki,
    client: &mut AdminClient<tonic::transport::Channel>,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let (cp_url, logs) = (&l.cp_url, &l.logs);
    // Each sidecar registers its workload (with its version label).
    let sidecars: Vec<(&str, &str, u16, ProxyAddrs, Vec<String>)> = WEB
        .iter()
        .zip(&l.web_ports)
        .zip(&l.web)
        .map(|(((node, _, version), port), addrs)| {
            let label = vec!["--label".to_string(), format!("version={version}")];
            (*node, "web", *port, *addrs, label)
        })
        .chain([("greeter-0", "greeter", l.greeter_port, l.greeter, vec![])])
        .collect();
    for (name, svc, port, addrs, extra_args) in sidecars {
        let token = client
            .create_token(pb::CreateTokenRequest {
                namespace: "demo".into(),
                service_account: svc.into(),
                ttl_seconds: 3600,
            })
            .await
            .map_err(|e| anyhow!("create token: {}", e.message()))?
            .into_inner()
            .token;
        let spec = ProxySpec {
            node: name.into(),
            namespace: "demo".into(),
            service: svc.into(),
            app_port: port,
            addrs,
            auth: ProxyAuth::Token {
                token,
                ca_bundle: pki.ca_bundle.clone(),
            },
            extra_args,
        };
        procs.push(Proc::spawn_env(
            &format!("proxy-{name}"),
            &bins.path(localmesh::PROXY),
            &spec.args(cp_url),
            &spec.env(),
            logs,
        )?);
    }
    Ok(())
}

/// Waits for every process to listen, applies the demo config and waits
/// until every proxy has ACKed it.
async fn apply_and_wait_synced(
    l: &Layout,
    client: &mut AdminClient<tonic::transport::Channel>,
) -> anyhow::Result<()> {
    let (web, greeter, web_ports, greeter_port) =
        (&l.web, &l.greeter, &l.web_ports, l.greeter_port);
    let loopback = LOOPBACK;
    let grpc_addr = l.grpc_addr;
    let addrs = [
        grpc_addr,
        greeter.admin,
        SocketAddr::new(loopback, greeter_port),
    ]
    .into_iter()
    .chain(web.iter().map(|w| w.admin))
    .chain(web_ports.iter().map(|p| SocketAddr::new(loopback, *p)));
    for addr in addrs {
        tokio::task::spawn_blocking(move || {
            localmesh::wait_listening(addr, Duration::from_secs(20))
        })
        .await??;
    }
    let yaml = format!(
        "{}---\n{}",
        config(web_ports[0], greeter_port),
        crate::demo_queue::CONFIG
    );
    let applied = client
        .apply(pb::ApplyRequest {
            documents: vec![pb::Document {
                source: "demo.yaml".into(),
                yaml,
            }],
            dry_run: false,
        })
        .await
        .map_err(|e| anyhow!("apply: {}", e.message()))?
        .into_inner();
    println!(
        "applied {} objects (revision r{})",
        applied.results.len(),
        applied.revision
    );
    // Ready means the proxies have ACKed the applied revision, not just
    // the empty config they got on connect.
    let want = applied.revision;
    let all = web.len() + 1;
    wait_proxies(
        client,
        all,
        Duration::from_secs(10),
        &format!("revision r{want}"),
        |p| p.acked_revision == want,
    )
    .await?;
    wait_registered(l, client, web.len() + 1).await
}

/// Waits until `count` instances are registered and passing, and every
/// proxy has the registry revision that lists them.
async fn wait_registered(
    l: &Layout,
    admin: &mut AdminClient<tonic::transport::Channel>,
    count: usize,
) -> anyhow::Result<()> {
    let auth = AdminAuth::Certs(localmesh::Pki::of(&l.work.join("data")).admin_certs);
    let mut registry = RegistryClient::new(admin_client::channel(&l.cp_url, &auth).await?);
    let deadline = Instant::now() + Duration::from_secs(15);
    let revision = loop {
        let list = registry
            .list(pb::ListInstancesRequest::default())
            .await
            .map_err(|e| anyhow!("registry list: {}", e.message()))?
            .into_inner();
        let passing = list
            .instances
            .iter()
            .filter(|i| i.health == pb::Health::Passing as i32)
            .count();
        if passing == count {
            break list.revision;
        }
        if Instant::now() > deadline {
            bail!("{passing}/{count} workloads registered and passing within 15s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_proxies(
        admin,
        count,
        deadline.saturating_duration_since(Instant::now()),
        &format!("registry revision {revision}"),
        |p| p.acked_registry_revision >= revision,
    )
    .await?;
    println!("{count} workloads registered (registry revision {revision})");
    Ok(())
}

/// Waits until `count` proxies satisfy `acked` (have ACKed `what`).
async fn wait_proxies(
    admin: &mut AdminClient<tonic::transport::Channel>,
    count: usize,
    within: Duration,
    what: &str,
    acked: impl Fn(&pb::ProxyStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = admin
            .proxy_status(pb::ProxyStatusRequest {})
            .await
            .map_err(|e| anyhow!("proxy status: {}", e.message()))?
            .into_inner();
        let synced = status.proxies.iter().filter(|p| acked(p)).count();
        if synced == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("proxies did not ACK {what} within {within:?} ({synced}/{count} synced)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_intro(l: &Layout, pki: &localmesh::Pki) {
    let (web, greeter, cp_url) = (&l.web, &l.greeter, &l.cp_url);
    println!(
        "mesh up: web (HTTP) at {}, greeter (gRPC) at {}; control plane {cp_url}",
        web[0].inbound, greeter.inbound
    );
    println!(
        "web routes 90/10 to v1 (web-v1a, web-v1b) and the v2 canary; at {FAULT_AT}s the demo \
         makes web-v1b fail, at {RECOVER_AT}s it recovers: watch its breaker open and close"
    );
    println!(
        "queue: workload feed publishes ioc.enrichment.request to ioc-enrichment, workload \
         enricher turns each into a result in ioc-results; one poison request ends in ioc-enrichment-dlq"
    );
    println!(
        "try: curl -H 'Host: web' http://{}/hello     (greeter's sidecar → web)",
        greeter.outbound
    );
    println!(
        "     weftctl --control-plane {cp_url} --certs {} proxy-status",
        pki.admin_certs.display()
    );
    println!(
        "     weftctl --control-plane {cp_url} --certs {} registry list",
        pki.admin_certs.display()
    );
    println!(
        "     weftctl --control-plane {cp_url} --certs {} queue describe -n demo",
        pki.admin_certs.display()
    );
    println!(
        "     weftctl --control-plane {cp_url} --certs {} queue dlq ioc-enrichment -n demo",
        pki.admin_certs.display()
    );
    println!("     weftctl proxy-config {}", greeter.admin);
    println!("     weftctl certs inspect --proxy {}\n", web[0].admin);
}

/// Sends HTTP and gRPC traffic both ways, makes web-v1b fail and recover on
/// schedule, and prints the table every 2 s until Ctrl-C, SIGTERM or
/// `--for`.
async fn run_traffic(
    args: &DemoArgs,
    l: &Layout,
    flow: &crate::demo_queue::Flow,
    mut queues: QueueClient<tonic::transport::Channel>,
) -> anyhow::Result<([(&'static str, Stats); 2], Option<(u64, u64)>)> {
    let (web, greeter, loopback) = (&l.web, &l.greeter, LOOPBACK);
    let http_stats: Stats = Arc::default();
    let grpc_stats: Stats = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / args.rps.max(1) as f64);
    let h = tokio::spawn(http_load(greeter.outbound, interval, http_stats.clone()));
    let g = tokio::spawn(grpc_load(web[0].outbound, interval, grpc_stats.clone()));
    let started = Instant::now();
    let faulty_app = SocketAddr::new(loopback, l.web_ports[FAULTY]);
    let (mut faulted, mut recovered) = (false, false);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    // (results, dead letters) at the last look.
    let mut queue = None;
    let mut last = Instant::now();
    // SIGTERM stops the demo like Ctrl-C: every process it started is
    // stopped on the way out.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                println!("\nstopping");
                break;
            }
            _ = term.recv() => {
                println!("\nSIGTERM: stopping");
                break;
            }
        }
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let t = started.elapsed().as_secs();
        if !faulted && t >= FAULT_AT {
            faulted = true;
            fault(faulty_app, "POST", "/fault?status=503").await;
            println!("-> web-v1b now answers 503 to everything");
        }
        if faulted && !recovered && t >= RECOVER_AT {
            recovered = true;
            fault(faulty_app, "DELETE", "/fault").await;
            println!("-> web-v1b recovered");
        }
        print_table(
            secs,
            &[
                ("demo/web  (greeter → web, HTTP)", &http_stats),
                ("demo/greeter  (web → greeter, gRPC)", &grpc_stats),
            ],
        );
        print_split_and_breakers(&http_stats, greeter.metrics, web).await;
        match crate::demo_queue::summary(&mut queues, &flow.stats).await {
            Ok((line, results, dead)) => {
                println!("{line}");
                queue = Some((results, dead));
            }
            Err(e) => println!("queue: describe failed: {}", e.message()),
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
    }
    h.abort();
    g.abort();
    Ok((
        [("demo/web", http_stats), ("demo/greeter", grpc_stats)],
        queue,
    ))
}

/// Totals per route; with `--for`, an error unless traffic flowed without
/// failures.
fn report(
    args: &DemoArgs,
    l: &Layout,
    stats: &[(&'static str, Stats); 2],
    queue: Option<(u64, u64)>,
) -> anyhow::Result<()> {
    // The queue flow works when results came out and exactly the poison
    // request is in the dead-letter queue.
    let mut healthy = queue.is_some_and(|(results, dead)| results > 0 && dead == 1);
    if let Some((results, dead)) = queue {
        println!("queue flow: {results} results, {dead} dead letters");
    }
    for (name, s) in stats {
        let s = s.lock().map_err(|_| anyhow!("stats poisoned"))?;
        let total_ok = s.total_ok + s.ok;
        let total_failed = s.total_failed + s.failed;
        println!(
            "{name}: {total_ok} ok, {total_failed} failed{}",
            s.last_error
                .as_ref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
        if total_ok == 0 || total_failed > 0 {
            healthy = false;
        }
    }
    if args.duration.is_some() && !healthy {
        bail!(
            "demo traffic had errors or did not flow; logs in {}",
            l.logs.display()
        );
    }
    Ok(())
}
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn print_table(secs: f64, routes: &[(&str, &Stats)]) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["ROUTE", "RPS", "SUCCESS", "P50", "P99", "TOTAL"]);
    for (name, stats) in routes {
        let Ok(mut s) = stats.lock() else { continue };
        let mut w = std::mem::take(&mut s.window);
        w.sort();
        let n = s.ok + s.failed;
        let success = if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * s.ok as f64 / n as f64)
        };
        s.total_ok += s.ok;
        s.total_failed += s.failed;
        t.add_row(vec![
            name.to_string(),
            format!("{:.1}", n as f64 / secs),
            success,
            format!("{:.2?}", percentile(&w, 0.5)),
            format!("{:.2?}", percentile(&w, 0.99)),
            (s.total_ok + s.total_failed).to_string(),
        ]);
        s.ok = 0;
        s.failed = 0;
    }
    println!("{t}");
}

/// Sets or clears a fault on a sample app (its admin path, not through the
/// mesh).
async fn fault(app: SocketAddr, method: &str, path: &str) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{app}{path}"))
        .body(http_body_util::Empty::new());
    if let Ok(req) = req {
        if let Err(e) = client.request(req).await {
            eprintln!("could not reach {app} to change its fault: {e}");
        }
    }
}

/// The canary split of the last window and each web instance's breaker, as
/// the calling sidecar's metrics show them.
async fn print_split_and_breakers(stats: &Stats, metrics: SocketAddr, web: &[ProxyAddrs]) {
    let split = match stats.lock() {
        Ok(mut s) => std::mem::take(&mut s.served_by),
        Err(_) => return,
    };
    let total: u64 = split.values().sum();
    let shares: Vec<String> = split
        .iter()
        .map(|(k, v)| format!("{k} {:.0}%", 100.0 * *v as f64 / total.max(1) as f64))
        .collect();
    let text = scrape(metrics).await.unwrap_or_default();
    let breakers: Vec<String> = web
        .iter()
        .zip(WEB)
        .map(|(a, (_, app, _))| {
            let host = format!("host=\"{}\"", a.inbound);
            let state = text
                .lines()
                .find(|l| l.starts_with("weft_circuit_breaker_state") && l.contains(&host))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            let state = match state.map(|v| v as u8) {
                Some(1) => "OPEN",
                Some(2) => "HALF-OPEN",
                _ => "closed",
            };
            format!("{app} {state}")
        })
        .collect();
    println!(
        "  web split: {}   breakers: {}\n",
        shares.join(", "),
        breakers.join(", ")
    );
}

async fn scrape(addr: SocketAddr) -> Option<String> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = hyper::Request::get(format!("http://{addr}/metrics"))
        .body(http_body_util::Empty::new())
        .ok()?;
    let resp = client.request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

fn record(stats: &Stats, started: Instant, result: Result<(), String>) {
    if let Ok(mut s) = stats.lock() {
        match result {
            Ok(()) => {
                s.ok += 1;
                s.window.push(started.elapsed());
            }
            Err(e) => {
                s.failed += 1;
                s.last_error = Some(e);
            }
        }
    }
}

/// The greeter workload calling web over HTTP/1.1 through its sidecar.
async fn http_load(outbound: SocketAddr, interval: Duration, stats: Stats) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let client = client.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let req = hyper::Request::get(format!("http://{outbound}/hello"))
                .header("host", "web")
                .body(http_body_util::Empty::new());
            let result = async {
                let req = req.map_err(|e| e.to_string())?;
                let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
                    .await
                    .map_err(|_| "timeout".to_string())?
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                let served_by = resp
                    .headers()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                if status.is_success() {
                    if let Ok(mut s) = stats.lock() {
                        *s.served_by.entry(served_by).or_default() += 1;
                    }
                    Ok(())
                } else {
                    Err(format!("HTTP {status}"))
                }
            }
            .await;
            record(&stats, started, result);
        });
    }
}

/// The web workload calling greeter over gRPC through its sidecar.
async fn grpc_load(outbound: SocketAddr, interval: Duration, stats: Stats) {
    let channel = loop {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
            .map(|e| e.origin("http://greeter".parse().expect("static URI")));
        match ep {
            Ok(ep) => match ep.connect().await {
                Ok(c) => break c,
                Err(e) => record(&stats, Instant::now(), Err(format!("connect: {e}"))),
            },
            Err(e) => record(&stats, Instant::now(), Err(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let mut client = EchoClient::new(channel.clone());
        let stats = stats.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(5),
                client.unary(EchoRequest {
                    message: "hello".into(),
                    count: 1,
                }),
            )
            .await
            .map_err(|_| "timeout".to_string())
            .and_then(|r| {
                r.map(|_| ())
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            });
            record(&stats, started, result);
        });
    }
}
