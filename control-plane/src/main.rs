//! weft-control binary: flags, runtime, servers, shutdown.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use hyper::StatusCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_control::admin::AdminService;
use weft_control::discovery::{DiscoveryService, ProxyRegistry};
use weft_control::state::ConfigState;
use weft_control::store::EmbeddedStore;
use weft_telemetry as telemetry;
use xds_proto::v1::{admin_server::AdminServer, discovery_server::DiscoveryServer};

#[derive(Debug, Parser)]
#[command(
    name = "weft-control",
    version,
    about = "Weft control plane: config store, discovery, admin API"
)]
struct Args {
    /// Directory of the embedded config store (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    data_dir: PathBuf,
    /// gRPC address: discovery and admin.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// HTTP address for /metrics and /ready.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "127.0.0.1:15014")]
    admin_listen: SocketAddr,
    /// Upper bound on how long a config change waits before it is pushed
    /// (changes arriving within the window are folded into one push).
    #[arg(long, env = "WEFT_PUSH_DEBOUNCE_MS", default_value_t = 50)]
    push_debounce_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_tracing("info");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weft-control")
        .build()
        .context("cannot start tokio runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics()?;
    let store = EmbeddedStore::open(&args.data_dir)?;
    let (state, published) =
        ConfigState::start(store, Duration::from_millis(args.push_debounce_ms))?;
    tracing::info!(revision = state.current().revision, objects = state.current().objects.len(), data_dir = %args.data_dir.display(), "config loaded");
    let registry = Arc::new(ProxyRegistry::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let admin_addr = telemetry::serve(
        args.admin_listen,
        move |req| {
            let metrics = metrics.clone();
            async move {
                match req.path.as_str() {
                    "/metrics" => telemetry::text(StatusCode::OK, metrics.render()),
                    "/ready" | "/live" => telemetry::text(StatusCode::OK, "ready\n"),
                    _ => telemetry::text(
                        StatusCode::NOT_FOUND,
                        "not found: try /metrics or /ready\n",
                    ),
                }
            }
        },
        stop_rx.clone(),
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(grpc = %args.listen, admin = %admin_addr, "weft-control serving");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut shutdown = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(DiscoveryServer::new(DiscoveryService::new(
            published,
            registry.clone(),
        )))
        .add_service(AdminServer::new(AdminService::new(state, registry)))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.changed().await;
        });
    let server = tokio::spawn(server);
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Streams are long-lived; give them a moment, then go.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
