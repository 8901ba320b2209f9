//! weft-proxy: the sidecar. Flags, runtimes and lifecycle. The data plane
//! (listeners, HTTP, TCP) runs on one current-thread runtime per worker
//! (`listener::workers`); the xDS client, admin and metrics run on their
//! own single-thread runtime so control work never competes with requests.
#![forbid(unsafe_code)]

use weft_proxy::{
    admin, app_probe, drain, health, http, identity, lifecycle, listener, metrics, mtls,
    rate_limit_lease, registration, snapshot, xds_client,
};

use anyhow::Context as _;
use clap::Parser;
use listener::connection_cap::{self, ConnectionCap};
use listener::explicit::ExplicitListeners;
use listener::Context;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use weft_telemetry as telemetry;
use xds_proto::v1 as pb;

#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about = "Weft sidecar proxy")]
struct Args {
    /// Control plane gRPC URL.
    #[arg(
        long,
        env = "WEFT_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15012"
    )]
    control_plane: String,
    /// This proxy's node name (unique per namespace), e.g. the pod name.
    #[arg(long, env = "WEFT_NODE", default_value = "weft-proxy")]
    node: String,
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The service this sidecar's workload belongs to.
    #[arg(long, env = "WEFT_SERVICE")]
    service: String,
    /// Node labels, repeatable: --label version=v2
    #[arg(long = "label", env = "WEFT_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The local app's port: inbound traffic goes to 127.0.0.1:PORT, or,
    /// when intercepted, to the port the caller dialled.
    #[arg(long, env = "WEFT_APP_PORT")]
    app_port: u16,
    #[arg(long, env = "WEFT_OUTBOUND", default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    #[arg(long, env = "WEFT_INBOUND", default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Prometheus `/metrics`. Loopback by default; a pod that is scraped on
    /// its IP sets `--metrics 0.0.0.0:15090` (the port is bounded, see
    /// README "Ports").
    #[arg(long, env = "WEFT_METRICS", default_value = "127.0.0.1:15090")]
    metrics: SocketAddr,
    /// How long to wait for a client's first bytes before treating the
    /// connection as opaque TCP.
    #[arg(long, env = "WEFT_DETECT_TIMEOUT_MS", default_value_t = 1000)]
    detect_timeout_ms: u64,
    /// Longest an HTTP/1.1 client may take to send a request head, and any
    /// new connection (HTTP/1.1 or HTTP/2) its first request, before the
    /// connection is closed (slow or stalled clients).
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// Longest a request body may stall (no bytes from the client while the
    /// proxy waits for them) before the request ends with 408.
    #[arg(long, env = "WEFT_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    body_read_timeout_ms: u64,
    /// A client connection with no request in flight for this long is
    /// closed (HTTP/2: GOAWAY first).
    #[arg(long, env = "WEFT_IDLE_TIMEOUT_MS", default_value_t = 120_000)]
    idle_timeout_ms: u64,
    /// HTTP/2 client connections get a keep-alive PING after this long
    /// without a frame; one unanswered for 10 s closes the connection.
    #[arg(long, env = "WEFT_HTTP2_KEEPALIVE_MS", default_value_t = 30_000)]
    http2_keepalive_ms: u64,
    /// Connections the outbound listener (and the explicit TCP listeners)
    /// hold at once; 0: a quarter of the open-file limit after a reserve.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_OUTBOUND", default_value_t = 0)]
    max_connections_outbound: usize,
    /// Connections the inbound listener holds at once; 0: as outbound.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_INBOUND", default_value_t = 0)]
    max_connections_inbound: usize,
    /// Longest a drain waits for in-flight connections before exiting.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,
    /// SPIFFE trust domain (must match the control plane's).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Service account of the workload (the identity's `sa`); defaults to
    /// the service name.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Bootstrap join token (`weftctl token create`). Prefer the env var: a
    /// flag shows in `ps`.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bootstrap credential, read at each use: in
    /// Kubernetes the pod's projected service-account token (audience
    /// weft), which the control plane verifies against the cluster's keys.
    #[arg(long, env = "WEFT_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Roots to trust the control plane with on the first connection
    /// (<data-dir>/ca-bundle.pem of the control plane).
    #[arg(long, env = "WEFT_CA_BUNDLE")]
    ca_bundle: Option<std::path::PathBuf>,
    /// The same roots as PEM text (the injector sets it in pods).
    #[arg(
        long,
        env = "WEFT_CA_BUNDLE_PEM",
        conflicts_with = "ca_bundle",
        hide_env_values = true
    )]
    ca_bundle_pem: Option<String>,
    /// Outbound destination ports whose connections are forwarded without
    /// protocol detection (server-first protocols outside the mesh):
    /// "3306,6379,9000-9010".
    #[arg(long, env = "WEFT_OPAQUE_PORTS", value_delimiter = ',')]
    opaque_ports: Vec<xds_proto::ports::PortRange>,
    /// The app's kubelet probes the sidecar runs on its metrics port at
    /// /app-health/<container>/<kind> (JSON, set by the injector).
    #[arg(long, env = "WEFT_APP_PROBES", value_parser = parse_app_probes, default_value = "{}")]
    app_probes: xds_proto::app_probe::AppProbes,
    /// Talk to a control plane started with --insecure-dev: plaintext, no
    /// workload certificate.
    #[arg(long, env = "WEFT_INSECURE_DEV")]
    insecure_dev: bool,
    /// Data-plane worker threads, each a current-thread runtime with its
    /// own listening sockets (SO_REUSEPORT) and upstream pools.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Forward plain outbound HTTP/1.1 requests to plaintext HTTP/1.1
    /// endpoints on the purpose-built loop (`http::fast_h1`); everything
    /// else, and everything with `--fast-h1 false`, goes through hyper.
    #[arg(long, env = "WEFT_FAST_H1", default_value_t = true, action = clap::ArgAction::Set)]
    fast_h1: bool,
    /// Register the workload in the mesh's service registry (lease,
    /// heartbeats, readiness, deregistration before the drain).
    /// `--register false` turns it off.
    #[arg(long, env = "WEFT_REGISTER", default_value_t = true, action = clap::ArgAction::Set)]
    register: bool,
    /// The address callers reach this sidecar's inbound listener on (the
    /// pod IP). Defaults to the --inbound address unless that is 0.0.0.0 or
    /// ::, in which case the workload is not registered without it.
    #[arg(long, env = "WEFT_ADVERTISE_ADDRESS")]
    advertise_address: Option<IpAddr>,
    /// The pod's TCP is redirected into this sidecar (weft-init): callers
    /// are told to dial the workload's own ports on the advertised address
    /// (the redirect brings them to the inbound listener) rather than the
    /// inbound port.
    #[arg(long, env = "WEFT_INTERCEPTED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    intercepted: bool,
    /// The registered instance id (unique within the service); defaults to
    /// --node.
    #[arg(long, env = "WEFT_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Lease TTL to ask the registry for, e.g. 10s (default: the control
    /// plane's).
    #[arg(long, env = "WEFT_REGISTRY_TTL", value_parser = xds_proto::units::parse_duration)]
    registry_ttl: Option<Duration>,
    /// The instance's load share, 1..=10000 (default 1).
    #[arg(long, env = "WEFT_WEIGHT")]
    weight: Option<u32>,
    /// Readiness probe: HTTP GET of this path on the app port (2xx/3xx is
    /// ready). Without it, a TCP connect to the app port.
    #[arg(long, env = "WEFT_APP_HEALTH_PATH")]
    app_health_path: Option<String>,
    /// How often the app's readiness is probed.
    #[arg(long, env = "WEFT_APP_PROBE_INTERVAL", default_value = "1s", value_parser = xds_proto::units::parse_duration)]
    app_probe_interval: Duration,
}

/// What the sidecar registers, or None (registration off, or no address
/// callers could use).
fn registration(
    args: &Args,
    control_plane: weft_mesh_tls::channel::ControlPlane,
    snapshot: snapshot::SnapshotHolder,
) -> Option<(registration::Registration, app_probe::AppProbe)> {
    if !args.register {
        return None;
    }
    let address = match args.advertise_address {
        Some(a) => a,
        None if !args.inbound.ip().is_unspecified() => args.inbound.ip(),
        None => {
            tracing::warn!(inbound = %args.inbound, "not registering the workload: the inbound listener binds every address; set --advertise-address (WEFT_ADVERTISE_ADDRESS, e.g. the pod IP)");
            return None;
        }
    };
    let instance = pb::Instance {
        namespace: args.namespace.clone(),
        service: args.service.clone(),
        instance_id: args
            .instance_id
            .clone()
            .unwrap_or_else(|| args.node.clone()),
        address: address.to_string(),
        sidecar_port: u32::from(args.inbound.port()),
        intercepted: args.intercepted,
        labels: args.labels.iter().cloned().collect(),
        weight: args.weight.unwrap_or(0),
        ..Default::default()
    };
    let probe = app_probe::AppProbe {
        app: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, args.app_port)),
        http_path: args.app_health_path.clone(),
        interval: args.app_probe_interval,
        timeout: args
            .app_probe_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(2)),
    };
    Some((
        registration::Registration {
            url: args.control_plane.clone(),
            control_plane,
            instance,
            ttl_ms: args
                .registry_ttl
                .map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32)
                .unwrap_or(0),
            snapshot,
        },
        probe,
    ))
}

fn parse_app_probes(s: &str) -> Result<xds_proto::app_probe::AppProbes, String> {
    serde_json::from_str(s).map_err(|e| format!("not the injector's probe JSON: {e}"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label \"{s}\" is not key=value"))
}

/// What the data plane and the control thread share.
struct DataPlane {
    snapshot: snapshot::SnapshotHolder,
    drain: drain::Drain,
    explicit: Arc<ExplicitListeners>,
    identity: Option<Arc<identity::WorkloadIdentity>>,
}

fn main() -> anyhow::Result<()> {
    // Pod lifecycle hooks of a legacy (non-native) sidecar, run beside
    // the proxy: `weft-proxy wait` (postStart) and `weft-proxy drain`
    // (preStop).
    match std::env::args().nth(1).as_deref() {
        Some("drain") => return lifecycle::drain(),
        Some("wait") => return lifecycle::wait(),
        _ => {}
    }
    let args = Args::parse();
    telemetry::init_tracing("info");
    let (data_rt, control_rt) = runtimes()?;
    // The recorder must exist before any metric handle is created.
    let prometheus = control_rt.block_on(async { telemetry::install_metrics() })?;
    let node = pb::Node {
        name: args.node.clone(),
        namespace: args.namespace.clone(),
        service: args.service.clone(),
        labels: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        build_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let identity = workload_identity(&args)?;
    let mesh_tls = identity
        .as_ref()
        .map(|id| mtls::MeshTls::new(id.clone()).map(Arc::new))
        .transpose()?;
    let data = DataPlane {
        snapshot: snapshot::new_holder(),
        drain: drain::Drain::new(),
        explicit: Arc::new(ExplicitListeners::new(
            args.outbound.ip(),
            data_rt.handle().clone(),
        )),
        identity,
    };
    let (mut workers, mut outbound_ls, mut inbound_ls) =
        bind_data_plane(&args, data.snapshot.clone(), data.drain.clone(), mesh_tls)?;
    let ctx = workers.remove(0);
    let (outbound_l, inbound_l) = (outbound_ls.remove(0), inbound_ls.remove(0));
    data.explicit.set_context(ctx.clone());
    start_control_thread(control_rt, &args, node, &data, prometheus)?;
    for (i, ((w, o), l)) in workers
        .into_iter()
        .zip(outbound_ls)
        .zip(inbound_ls)
        .enumerate()
    {
        listener::workers::spawn(i + 1, w, o, l).context("cannot start a data-plane worker")?;
    }
    tracing::info!(outbound = %args.outbound, inbound = %args.inbound, admin = %args.admin, metrics = %args.metrics, service = %args.service, "weft-proxy started");
    let drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    data_rt.block_on(serve_until_drained(
        ctx,
        outbound_l,
        inbound_l,
        drain_timeout,
    ))
}

/// The first data-plane worker's runtime (current-thread: no
/// work-stealing bookkeeping, wakeups stay local; more workers get their
/// own, `listener::workers`) and the control runtime (xDS, admin, metrics).
fn runtimes() -> anyhow::Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let data_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start data-plane runtime")?;
    let control_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start control runtime")?;
    Ok((data_rt, control_rt))
}

/// The workload identity (None with --insecure-dev): its SPIFFE ID, the join
/// token for the first certificate and the bootstrap CA bundle.
fn workload_identity(args: &Args) -> anyhow::Result<Option<Arc<identity::WorkloadIdentity>>> {
    Ok(if args.insecure_dev {
        tracing::warn!(
            "--insecure-dev: no workload certificate; control-plane traffic is plaintext"
        );
        None
    } else {
        let bundle = match (&args.ca_bundle_pem, &args.ca_bundle) {
            (Some(pem), _) => pem.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ca-bundle {}", path.display()))?,
            (None, None) => anyhow::bail!(
                "--ca-bundle (WEFT_CA_BUNDLE) or --ca-bundle-pem (WEFT_CA_BUNDLE_PEM) is required: the control plane writes it to <data-dir>/ca-bundle.pem"
            ),
        };
        let sa = args
            .service_account
            .clone()
            .unwrap_or_else(|| args.service.clone());
        let id = weft_mesh_tls::SpiffeId::new(&args.trust_domain, &args.namespace, &sa)
            .context("invalid workload identity")?;
        let credential = match (&args.token, &args.token_file) {
            (Some(t), _) => identity::Credential::Token(t.clone()),
            (None, Some(f)) => identity::Credential::File(f.clone()),
            (None, None) => anyhow::bail!(
                "--token (WEFT_TOKEN) or --token-file (WEFT_TOKEN_FILE) is required for the first certificate: weftctl token create --namespace {} --service-account {sa}, or the pod's projected service-account token",
                args.namespace
            ),
        };
        Some(identity::WorkloadIdentity::new(
            id,
            args.node.clone(),
            args.control_plane.clone(),
            credential,
            &bundle,
        )?)
    })
}

/// The listening sockets a worker gets: outbound, inbound.
type Sockets = Vec<std::net::TcpListener>;

/// Binds the outbound and inbound listeners, one socket of each per worker
/// (so a bad address fails fast and loudly), and builds each worker's
/// per-connection context: its own HTTP servers (upstream pools), the
/// snapshot, drain, caps and metrics shared.
fn bind_data_plane(
    args: &Args,
    snapshot: snapshot::SnapshotHolder,
    drain: drain::Drain,
    mesh_tls: Option<Arc<mtls::MeshTls>>,
) -> anyhow::Result<(Vec<Arc<Context>>, Sockets, Sockets)> {
    let workers = args.workers.max(1);
    let outbound_ls = listener::workers::bind(args.outbound, workers)
        .with_context(|| format!("cannot bind outbound listener {}", args.outbound))?;
    let inbound_ls = listener::workers::bind(args.inbound, workers)
        .with_context(|| format!("cannot bind inbound listener {}", args.inbound))?;
    let ms = |v: u64| Duration::from_millis(v.max(1));
    let timeouts = http::limits::ClientTimeouts {
        header_read: ms(args.header_read_timeout_ms),
        body_read: ms(args.body_read_timeout_ms),
        idle: ms(args.idle_timeout_ms),
        keepalive: ms(args.http2_keepalive_ms),
    };
    let fd_limit = connection_cap::raise_fd_limit();
    let default = connection_cap::default_cap(fd_limit);
    let pick = |flag: usize| if flag == 0 { default } else { flag };
    let caps = (
        pick(args.max_connections_outbound),
        pick(args.max_connections_inbound),
    );
    tracing::info!(
        open_files = ?fd_limit,
        outbound = caps.0,
        inbound = caps.1,
        workers,
        "connection caps"
    );
    let (outbound_cap, inbound_cap) = (
        ConnectionCap::new("outbound", caps.0),
        ConnectionCap::new("inbound", caps.1),
    );
    let contexts = (0..workers)
        .map(|_| {
            Arc::new(Context {
                snapshot: snapshot.clone(),
                drain: drain.clone(),
                outbound_http: Arc::new(
                    http::HttpServer::outbound(snapshot.clone(), mesh_tls.clone())
                        .with_timeouts(timeouts)
                        .with_fast_h1(args.fast_h1),
                ),
                inbound_http: Arc::new(
                    http::HttpServer::inbound(snapshot.clone(), &args.service, args.app_port)
                        .with_timeouts(timeouts),
                ),
                mtls: mesh_tls.clone(),
                detect_timeout: Duration::from_millis(args.detect_timeout_ms),
                opaque_ports: args.opaque_ports.clone(),
                app_port: args.app_port,
                tcp_outbound: metrics::TcpMetrics::new("outbound"),
                tcp_inbound: metrics::TcpMetrics::new("inbound"),
                outbound_cap: outbound_cap.clone(),
                inbound_cap: inbound_cap.clone(),
            })
        })
        .collect();
    Ok((contexts, outbound_ls, inbound_ls))
}

/// Admin, metrics, xDS, certificate renewal and rate-limit leases, on their
/// own thread and runtime so control work never competes with requests.
/// Returns once the admin and metrics ports are bound.
fn start_control_thread(
    control_rt: tokio::runtime::Runtime,
    args: &Args,
    node: pb::Node,
    data: &DataPlane,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let (snapshot, identity) = (data.snapshot.clone(), data.identity.clone());
    let xds_status = Arc::new(xds_client::XdsStatus::default());
    let admin = Arc::new(admin::Admin {
        snapshot: snapshot.clone(),
        drain: data.drain.clone(),
        xds: xds_status.clone(),
        node: node.clone(),
        identity: identity.clone(),
    });
    let control_plane = match &identity {
        Some(id) => id.control_plane(),
        None => weft_mesh_tls::channel::ControlPlane::Insecure,
    };
    let registration = registration(args, control_plane.clone(), snapshot.clone());
    let drain = data.drain.clone();
    let leases = rate_limit_lease::lease_loop(
        snapshot.clone(),
        control_plane.clone(),
        args.control_plane.clone(),
        node.clone(),
    );
    let xds = xds_client::XdsClient {
        url: args.control_plane.clone(),
        control_plane,
        node,
        snapshot,
        listeners: data.explicit.clone(),
        status: xds_status,
        identity: identity.clone(),
    };
    let metrics_port = Arc::new(admin::MetricsPort {
        admin: admin.clone(),
        prometheus,
        app_probes: Arc::new(args.app_probes.clone()),
    });
    let (admin_addr, metrics_addr) = (args.admin, args.metrics);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("weft-control".into())
        .spawn(move || {
            control_rt.block_on(async move {
                let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let a = admin.clone();
                let served = async {
                    telemetry::serve(
                        admin_addr,
                        move |req| std::future::ready(a.handle(req)),
                        stop_rx.clone(),
                    )
                    .await?;
                    let port = metrics_port.clone();
                    telemetry::serve(
                        metrics_addr,
                        move |req| port.clone().handle(req),
                        stop_rx.clone(),
                    )
                    .await?;
                    anyhow::Ok(())
                }
                .await;
                let failed = served.is_err();
                let _ = ready_tx.send(served);
                if failed {
                    return;
                }
                // A requested shutdown deregisters the workload (once it
                // is registered), then starts the drain.
                tokio::spawn(async move {
                    let requested = drain.requested();
                    match registration {
                        Some((r, probe)) => r.run(probe.start(), requested).await,
                        None => {
                            let mut requested = requested;
                            let _ = requested.wait_for(|r| *r).await;
                        }
                    }
                    drain.start();
                });
                if let Some(id) = identity {
                    // Discovery needs the certificate; the data plane is
                    // already bound and refuses mTLS until it exists.
                    id.bootstrap().await;
                    tokio::spawn(id.clone().renew_forever());
                }
                tokio::spawn(leases);
                xds.run().await;
            })
        })
        .context("cannot start control thread")?;
    ready_rx.recv().context("control thread died")??;
    Ok(())
}

/// The longest a requested shutdown waits for deregistration.
const SHUTDOWN_BEFORE_DRAIN: Duration = Duration::from_secs(15);

/// Accepts on both listeners and runs health checks until a drain
/// (SIGTERM, Ctrl-C or POST /drain) has finished or timed out.
async fn serve_until_drained(
    ctx: Arc<Context>,
    outbound_l: std::net::TcpListener,
    inbound_l: std::net::TcpListener,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let outbound_l = tokio::net::TcpListener::from_std(outbound_l)?;
    let inbound_l = tokio::net::TcpListener::from_std(inbound_l)?;
    tokio::spawn(health::run(ctx.snapshot.clone(), ctx.mtls.clone()));
    listener::workers::accept(&ctx, outbound_l, inbound_l);
    let d = ctx.drain.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            }
            d.request();
        }
    });
    // Deregistration comes first (the control thread starts the drain when
    // it is confirmed); bounded, in case that thread cannot.
    let mut requested = ctx.drain.requested();
    let _ = requested.wait_for(|r| *r).await;
    if tokio::time::timeout(SHUTDOWN_BEFORE_DRAIN, ctx.drain.started())
        .await
        .is_err()
    {
        tracing::warn!("deregistration did not finish in {SHUTDOWN_BEFORE_DRAIN:?}; draining");
        ctx.drain.start();
    }
    let active = ctx.drain.active();
    tracing::info!(active, "draining: waiting for in-flight connections");
    if ctx.drain.wait_idle(drain_timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            remaining = ctx.drain.active(),
            "drain deadline passed; exiting"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_and_metrics_endpoints_listen_on_loopback_unless_told_otherwise() {
        let args = Args::try_parse_from(["weft-proxy", "--service", "s", "--app-port", "1"])
            .expect("defaults parse");
        assert!(args.admin.ip().is_loopback(), "{}", args.admin);
        assert_eq!(args.admin.port(), 15000);
        assert!(args.metrics.ip().is_loopback(), "{}", args.metrics);
        assert_eq!(args.metrics.port(), 15090);
        assert!(!args.insecure_dev, "mTLS is the default");
    }
}
