//! weft-control binary: flags, runtime, servers, shutdown.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use hyper::StatusCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_certs::ca::CertificateAuthority;
use weft_control::admin::AdminService;
use weft_control::discovery::DiscoveryService;
use weft_control::identity::IdentityService;
use weft_control::join_token::JoinTokens;
use weft_control::k8s_token;
use weft_control::proxy_status::ProxyRegistry;
use weft_control::queue::service::QueueService;
use weft_control::rate_limit_quota::QuotaService;
use weft_control::registry::{Registry, RegistryService, Settings as RegistrySettings};
use weft_control::replicas::Replicas;
use weft_control::state::ConfigState;
use weft_control::store::{ConfigStore, EmbeddedStore, EtcdOptions, EtcdStore};
use weft_control::trust::{SharedRotation, Trust};
use weft_control::{ca_store, caller, local_certs, transport};
use weft_telemetry as telemetry;

/// mimalloc: glibc malloc spent most of its time in `_int_malloc` once the
/// queue store held a few hundred thousand 1 KiB messages freed out of
/// order (benches/RESULTS.md, "Queue service").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use xds_proto::v1::{
    admin_server::AdminServer, discovery_server::DiscoveryServer, identity_server::IdentityServer,
    queue_server::QueueServer, rate_limit_quota_server::RateLimitQuotaServer,
    registry_server::RegistryServer,
};

#[derive(Debug, Parser)]
#[command(
    name = "weft-control",
    version,
    about = "Weft control plane: config store, discovery, service registry, queue service, admin API"
)]
struct Args {
    /// The cluster's service-account signing keys (a JWKS file, or its URL,
    /// e.g. https://kubernetes.default.svc/openid/v1/jwks): sidecars may
    /// then bootstrap with their pod's projected service-account token
    /// instead of a join token. Needs --k8s-issuer.
    #[arg(long, env = "WEFT_K8S_JWKS")]
    k8s_jwks: Option<String>,
    /// The service-account token issuer to require (the API server's
    /// --service-account-issuer).
    #[arg(long, env = "WEFT_K8S_ISSUER")]
    k8s_issuer: Option<String>,
    /// The audience the projected tokens must carry.
    #[arg(long, env = "WEFT_K8S_AUDIENCE", default_value = "weft")]
    k8s_audience: String,
    /// CA file that verifies an https --k8s-jwks URL (in a pod:
    /// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt).
    #[arg(long, env = "WEFT_K8S_API_CA")]
    k8s_api_ca: Option<PathBuf>,
    /// Bearer token file sent with the --k8s-jwks URL (in a pod:
    /// /var/run/secrets/kubernetes.io/serviceaccount/token).
    #[arg(long, env = "WEFT_K8S_API_TOKEN_FILE")]
    k8s_api_token_file: Option<PathBuf>,
    /// Directory of the embedded store, the CA and the files the control
    /// plane writes (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    data_dir: PathBuf,
    /// Where applied config lives: `embedded` (a redb file in --data-dir) or
    /// `etcd://host:2379,host:2379[/prefix]`, shared by several replicas
    /// (see README "High availability").
    #[arg(long, env = "WEFT_STORE", default_value = "embedded", value_parser = parse_store)]
    store: StoreKind,
    /// etcd: CA bundle (PEM) to verify the members with; without it etcd is
    /// spoken in plaintext (loopback only).
    #[arg(long, env = "WEFT_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// etcd: client certificate (PEM) for etcd's client-certificate auth.
    #[arg(long, env = "WEFT_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    #[arg(long, env = "WEFT_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// etcd: user for etcd's authentication; the password comes from
    /// WEFT_ETCD_PASSWORD or --etcd-password-file.
    #[arg(long, env = "WEFT_ETCD_USER")]
    etcd_user: Option<String>,
    #[arg(long, env = "WEFT_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
    /// etcd: seal the CA's private keys stored in etcd with this key (32
    /// bytes, raw or hex; the same file on every replica).
    #[arg(long, env = "WEFT_CA_KEY_ENCRYPTION_KEY_FILE")]
    ca_key_encryption_key_file: Option<PathBuf>,
    /// This replica's name among those sharing the store (default: its
    /// --listen address).
    #[arg(long, env = "WEFT_REPLICA_ID")]
    replica_id: Option<String>,
    /// The address other components reach this replica's gRPC port on, as
    /// `weftctl get control-planes` shows it (default https://<--listen>).
    #[arg(long, env = "WEFT_ADVERTISE")]
    advertise: Option<String>,
    /// gRPC address: discovery and admin.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// HTTP address for /metrics and /ready.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "127.0.0.1:15014")]
    admin_listen: SocketAddr,
    /// HTTPS address of the sidecar injector (Kubernetes admission webhook,
    /// POST /inject and /inject/opt-in); off unless set.
    #[arg(long, env = "WEFT_INJECT_LISTEN", requires_all = ["inject_tls_cert", "inject_tls_key"])]
    inject_listen: Option<SocketAddr>,
    /// The injector's serving certificate chain (PEM; re-read every 30s).
    #[arg(long, env = "WEFT_INJECT_TLS_CERT")]
    inject_tls_cert: Option<PathBuf>,
    #[arg(long, env = "WEFT_INJECT_TLS_KEY")]
    inject_tls_key: Option<PathBuf>,
    /// Keys for queues with `encrypted: true` (32 raw bytes or 64 hex
    /// characters per file; the first encrypts, all decrypt: put a new key
    /// first to rotate). Repeatable.
    #[arg(long, env = "WEFT_QUEUE_KEY_FILE", value_delimiter = ',')]
    queue_key_file: Vec<PathBuf>,
    /// Append the queue service's audit log here (one JSON object per
    /// line: every admin action and every refused call). Default: the
    /// `weft_audit` log target only.
    #[arg(long, env = "WEFT_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Where queue messages live: `embedded` (a segment log under
    /// <data-dir>/queue) or a Redis URL (`redis://[:password@]host:port[/db]`)
    /// shared by every replica that names it. Run Redis with
    /// `appendonly yes` and `appendfsync always` for the embedded store's
    /// durability (see README "Queue").
    #[arg(long, env = "WEFT_QUEUE_STORE", default_value = "embedded")]
    queue_store: String,
    /// The injection template (YAML: images, control-plane URL, resources;
    /// see weft-inject's Template). Default: the built-in one, with this
    /// control plane's roots as the sidecars' CA bundle.
    #[arg(long, env = "WEFT_INJECT_TEMPLATE")]
    inject_template: Option<PathBuf>,
    /// Upper bound on how long a config change waits before it is pushed
    /// (changes arriving within the window are folded into one push).
    #[arg(long, env = "WEFT_PUSH_DEBOUNCE_MS", default_value_t = 50)]
    push_debounce_ms: u64,
    /// SPIFFE trust domain of every workload identity.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Operator-supplied issuing CA: the certificate followed by its chain up
    /// to the root (PEM). Without it a CA is generated in <data-dir>/ca.
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The issuing CA's private key (PEM).
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Workload certificate lifetime, e.g. 24h, 30m, 90s.
    #[arg(long, env = "WEFT_CERT_TTL", default_value = "24h", value_parser = xds_proto::units::parse_duration)]
    cert_ttl: Duration,
    /// Serve gRPC in plaintext with no authentication. For local experiments
    /// only; never the default.
    #[arg(long, env = "WEFT_INSECURE_DEV")]
    insecure_dev: bool,
    /// Registry: the lease TTL of a registration that does not ask for one.
    #[arg(long, env = "WEFT_REGISTRY_TTL", default_value = "10s", value_parser = xds_proto::units::parse_duration)]
    registry_ttl: Duration,
    /// Registry: the longest lease TTL a registration may ask for.
    #[arg(long, env = "WEFT_REGISTRY_MAX_TTL", default_value = "1h", value_parser = xds_proto::units::parse_duration)]
    registry_max_ttl: Duration,
    /// Registry: how long an instance whose lease expired stays (critical)
    /// before it is removed.
    #[arg(long, env = "WEFT_REGISTRY_GRACE", default_value = "30s", value_parser = xds_proto::units::parse_duration)]
    registry_grace: Duration,
    /// Registry self-preservation: when more than this share of a service's
    /// instances stop heartbeating at once, they are kept (warning) instead
    /// of expired. 1.0 turns it off.
    #[arg(long, env = "WEFT_REGISTRY_PRESERVE_SHARE", default_value_t = 0.5, value_parser = parse_share)]
    registry_preserve_share: f64,
    /// Registry self-preservation: the longest an instance is kept that way.
    #[arg(long, env = "WEFT_REGISTRY_PRESERVE_MAX", default_value = "15m", value_parser = xds_proto::units::parse_duration)]
    registry_preserve_max: Duration,
    /// Registry: how long a Deregister waits for connected proxies to apply
    /// the removal before it answers.
    #[arg(long, env = "WEFT_REGISTRY_DEREGISTER_WAIT", default_value = "5s", value_parser = xds_proto::units::parse_duration)]
    registry_deregister_wait: Duration,
}

#[derive(Debug, Clone)]
enum StoreKind {
    Embedded,
    Etcd(EtcdOptions),
}

fn parse_store(s: &str) -> Result<StoreKind, String> {
    if s == "embedded" {
        Ok(StoreKind::Embedded)
    } else {
        EtcdOptions::parse(s).map(StoreKind::Etcd)
    }
}

/// Connects to etcd with the TLS and auth the flags give.
async fn etcd_store(options: &EtcdOptions, args: &Args) -> anyhow::Result<EtcdStore> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let mut o = options.clone();
    if let Some(ca) = &args.etcd_ca {
        o.ca_pem = Some(read(ca, "--etcd-ca")?);
    }
    if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
        o.client_cert = Some((read(cert, "--etcd-cert")?, read(key, "--etcd-key")?));
    }
    if let Some(user) = &args.etcd_user {
        let password = match (
            &args.etcd_password_file,
            std::env::var("WEFT_ETCD_PASSWORD"),
        ) {
            (Some(f), _) => read(f, "--etcd-password-file")?.trim_end().to_string(),
            (None, Ok(p)) => p,
            (None, Err(_)) => anyhow::bail!(
                "--etcd-user needs a password: WEFT_ETCD_PASSWORD or --etcd-password-file"
            ),
        };
        o.user = Some((user.clone(), password));
    }
    let store = EtcdStore::connect(&o)
        .await
        .with_context(|| format!("cannot use the etcd store {}", o.endpoints.join(",")))?;
    tracing::info!(store = %store.describe(), prefix = %o.prefix, "config store: etcd");
    Ok(store)
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("\"{s}\" is not a share between 0.0 and 1.0")),
    }
}

impl Args {
    fn registry_settings(&self) -> anyhow::Result<RegistrySettings> {
        let s = RegistrySettings {
            default_ttl: self.registry_ttl,
            max_ttl: self.registry_max_ttl,
            grace: self.registry_grace,
            preserve_share: self.registry_preserve_share,
            preserve_max: self.registry_preserve_max,
            deregister_wait: self.registry_deregister_wait,
            ..RegistrySettings::default()
        };
        if s.default_ttl < s.min_ttl || s.default_ttl > s.max_ttl {
            anyhow::bail!(
                "--registry-ttl {:?} must be between {:?} and --registry-max-ttl {:?}",
                s.default_ttl,
                s.min_ttl,
                s.max_ttl
            );
        }
        Ok(s)
    }
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
    let registry_settings = args.registry_settings()?;
    let store = Arc::new(EmbeddedStore::open(&args.data_dir)?);
    let ca_dir = args.data_dir.join("ca");
    let mut seal = None;
    let (config_store, etcd): (Arc<dyn ConfigStore>, Option<EtcdStore>) = match &args.store {
        StoreKind::Embedded => (store.clone(), None),
        StoreKind::Etcd(options) => {
            let etcd = etcd_store(options, &args).await?;
            // Every replica signs with, and trusts, the same CA.
            seal = args
                .ca_key_encryption_key_file
                .as_deref()
                .map(ca_store::Seal::from_file)
                .transpose()?
                .map(Arc::new);
            ca_store::share(
                &etcd,
                &ca_dir,
                &args.trust_domain,
                args.ca_cert.is_some(),
                seal.as_deref(),
            )
            .await?;
            etcd.probe_forever();
            (Arc::new(etcd.clone()), Some(etcd))
        }
    };
    let (state, published) = ConfigState::start(
        config_store.clone(),
        Duration::from_millis(args.push_debounce_ms),
    )
    .await?;
    tracing::info!(revision = state.current().revision, objects = state.current().objects.len(), data_dir = %args.data_dir.display(), "config loaded");
    let registry = Arc::new(ProxyRegistry::default());
    let replicas = Replicas::start(
        args.replica_id
            .clone()
            .unwrap_or_else(|| args.listen.to_string()),
        args.advertise
            .clone()
            .unwrap_or_else(|| format!("https://{}", args.listen)),
        registry.clone(),
        etcd.clone(),
    );
    let service_registry = match etcd.clone() {
        // The registry goes where the config goes: shared by the replicas.
        Some(etcd) => {
            let leader = replicas.clone();
            Registry::start_shared(
                etcd,
                Arc::new(move || leader.is_leader()),
                state.publisher(),
                registry_settings,
            )
            .await
            .context("cannot load the service registry from etcd")?
        }
        None => Registry::start(store, state.publisher(), registry_settings)?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let store_name = config_store.describe();
    let ready_store = config_store.clone();
    let admin_addr = telemetry::serve(
        args.admin_listen,
        move |req| {
            let metrics = metrics.clone();
            let store = ready_store.clone();
            async move {
                match req.path.as_str() {
                    "/metrics" => telemetry::text(StatusCode::OK, metrics.render()),
                    "/live" => telemetry::text(StatusCode::OK, "live\n"),
                    // Discovery keeps serving without the store; /ready
                    // says writes cannot be stored.
                    "/ready" => match store.available() {
                        Ok(()) => telemetry::text(StatusCode::OK, "ready\n"),
                        Err(why) => telemetry::text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready for writes: store unavailable: {why}\n"),
                        ),
                    },
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

    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => CertificateAuthority::from_files(cert, key, &args.trust_domain)?,
        _ => CertificateAuthority::load_or_create(&ca_dir, &args.trust_domain)?,
    };
    let tokens = Arc::new(JoinTokens::load_or_create(&ca_dir)?);
    let bootstrap = Arc::new(k8s_token::Bootstrap {
        join: tokens.clone(),
        k8s: service_account_tokens(&args).await?,
    });
    let ca = Arc::new(arc_swap::ArcSwap::from_pointee(ca));
    let trust = Trust::load(&ca_dir, ca.clone(), args.ca_cert.is_some());
    // The roots proxies need to bootstrap, and weftctl's admin certificate.
    let local = local_certs::LocalCerts::start(&args.data_dir, ca.clone(), trust.clone())?;

    if let (Some(listen), Some(cert), Some(key)) = (
        args.inject_listen,
        &args.inject_tls_cert,
        &args.inject_tls_key,
    ) {
        let settings = weft_control::injector::Settings {
            listen,
            cert: cert.clone(),
            key: key.clone(),
            template: args.inject_template.clone(),
        };
        weft_control::injector::serve(settings, local.bundle(), stop_rx.clone()).await?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(grpc = %args.listen, admin = %admin_addr, trust_domain = %args.trust_domain, mtls = !args.insecure_dev, "weft-control serving");
    let mut quota = QuotaService::new(published.clone());
    if let Some(etcd) = &etcd {
        quota = quota.with_peers(etcd.clone(), replicas.id().to_string());
    }
    // The queue service: its store under <data-dir>/queue, its queues and
    // access rules following the config.
    let queue_store = Arc::new(open_queue_store(&args, &state.current()).await?);
    let queue_access = Arc::new(arc_swap::ArcSwap::from_pointee(
        weft_control::queue::access::Access::compile(&state.current(), &args.trust_domain),
    ));
    let queue_follower = Arc::new(weft_control::queue::Follower::new(
        queue_store.clone(),
        queue_access.clone(),
        args.trust_domain.clone(),
        Some(state.publisher()),
    ));
    tokio::spawn(weft_control::queue::follow_config(
        queue_follower.clone(),
        published.clone(),
    ));
    tokio::spawn(weft_control::queue::service::tick_loop(
        queue_store.clone(),
        stop_rx.clone(),
    ));
    let audit = match &args.audit_log {
        Some(path) => weft_control::queue::audit::Audit::to_file(path)
            .with_context(|| format!("--audit-log {}", path.display()))?,
        None => weft_control::queue::audit::Audit::default(),
    };
    let queue_service =
        QueueService::new(queue_store, queue_access, Arc::new(audit)).following(queue_follower);
    let discovery = DiscoveryService::new(published, registry.clone(), trust.subscribe());
    let identity = IdentityService::new(
        ca.clone(),
        bootstrap,
        args.cert_ttl,
        trust.clone(),
        registry.clone(),
    );
    let registry_service = RegistryService::new(
        service_registry.clone(),
        state.clone(),
        registry.clone(),
        args.trust_domain.clone(),
    );
    let mut admin = AdminService::new(state, registry.clone(), tokens, trust.clone(), ca.clone());
    if let Some(etcd) = &etcd {
        let leader = replicas.clone();
        admin = admin.with_shared_rotation(SharedRotation::start(
            etcd.clone(),
            trust,
            registry,
            seal,
            replicas.id().to_string(),
            Arc::new(move || leader.is_leader()),
        ));
    }
    let admin = admin.with_replicas(replicas, store_name);
    let mut shutdown = stop_rx.clone();
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    let server = if args.insecure_dev {
        tracing::warn!("--insecure-dev: gRPC is plaintext and unauthenticated");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut b = builder;
        tokio::spawn(
            b.add_service(DiscoveryServer::new(discovery))
                .add_service(RateLimitQuotaServer::new(quota))
                .add_service(AdminServer::new(admin))
                .add_service(IdentityServer::new(identity))
                .add_service(RegistryServer::new(registry_service))
                .add_service(QueueServer::new(queue_service))
                .serve_with_incoming_shutdown(incoming, stop),
        )
    } else {
        let config = weft_mesh_tls::tls::server_config(
            local.server_cert(),
            local.bundle(),
            false,
            &[weft_mesh_tls::tls::ALPN_H2],
        )?;
        let incoming = transport::incoming(listener, config);
        let td = args.trust_domain.clone();
        let mut b = builder;
        tokio::spawn(
            b.add_service(DiscoveryServer::with_interceptor(
                discovery,
                caller::require_workload(td.clone()),
            ))
            .add_service(RateLimitQuotaServer::with_interceptor(
                quota,
                caller::require_workload(td.clone()),
            ))
            .add_service(RegistryServer::with_interceptor(
                registry_service,
                caller::require_workload(td.clone()),
            ))
            .add_service(QueueServer::with_interceptor(
                queue_service,
                caller::require_workload(td.clone()),
            ))
            .add_service(AdminServer::with_interceptor(
                admin,
                caller::require_admin(td),
            ))
            .add_service(IdentityServer::new(identity))
            .serve_with_incoming_shutdown(incoming, stop),
        )
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Streams are long-lived; give them a moment, then go.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(())
}

/// This replica's name among those sharing a Redis queue store: made once
/// and kept in <data-dir>/queue-replica, so that a restart takes back what
/// it had in flight.
fn queue_replica_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("queue-replica");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &id))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Opens the queue store: Redis when --queue-store names it, else the
/// embedded one under <data-dir>/queue (replaying its log).
async fn open_queue_store(
    args: &Args,
    config: &weft_control::config::ConfigSet,
) -> anyhow::Result<weft_control::queue::backend::Backend> {
    use weft_control::queue::backend::Backend;
    let keys = weft_control::queue::crypt::Keys::load(&args.queue_key_file)?;
    if args.queue_store.starts_with("redis://") || args.queue_store.starts_with("rediss://") {
        let replica = queue_replica_id(&args.data_dir)?;
        let store = weft_control::queue::redis_store::RedisStore::open(
            &args.queue_store,
            &weft_control::queue::configs(config),
            keys,
            &replica,
        )
        .await
        .context("cannot open the queue store")?;
        tracing::info!(store = %store.describe(), "queue store: redis");
        return Ok(Backend::Redis(store));
    }
    if args.queue_store != "embedded" {
        anyhow::bail!(
            "--queue-store {:?}: expected `embedded` or a redis:// URL",
            args.queue_store
        );
    }
    let dir = args.data_dir.join("queue");
    let now = xds_proto::units::unix_ms(std::time::SystemTime::now());
    let (store, opened) = weft_control::queue::store::Store::open(
        weft_control::queue::log::Config::new(&dir),
        &weft_control::queue::configs(config),
        now,
        keys,
    )
    .with_context(|| format!("cannot open the queue store in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), messages = opened.messages, records = opened.recovery.records, truncated = ?opened.recovery.truncated, "queue store opened");
    Ok(Backend::Embedded(Box::new(store)))
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

/// The service-account token verifier, when --k8s-jwks is given: the keys
/// are loaded now (a bad source stops the start with the reason), then
/// reloaded every minute and when an unknown key id arrives.
async fn service_account_tokens(
    args: &Args,
) -> anyhow::Result<Option<k8s_token::ServiceAccountTokens>> {
    let Some(jwks) = &args.k8s_jwks else {
        return Ok(None);
    };
    let issuer = args
        .k8s_issuer
        .clone()
        .context("--k8s-jwks needs --k8s-issuer (the API server's --service-account-issuer)")?;
    let source = k8s_token::jwks::Source::from_flag(
        jwks,
        args.k8s_api_ca.clone(),
        args.k8s_api_token_file.clone(),
    );
    let keys = source
        .load()
        .await
        .map_err(|e| anyhow::anyhow!("--k8s-jwks {jwks}: {e}"))?;
    tracing::info!(jwks = %jwks, keys = keys.len(), issuer = %issuer, audience = %args.k8s_audience, "service-account tokens accepted for bootstrap");
    let keys = k8s_token::jwks::KeySet::new(keys);
    tokio::spawn(
        keys.clone()
            .refresh(source, std::time::Duration::from_secs(60)),
    );
    Ok(Some(k8s_token::ServiceAccountTokens {
        issuer,
        audience: args.k8s_audience.clone(),
        keys,
    }))
}
