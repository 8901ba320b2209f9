//! weftctl: the Weft admin CLI. Talks gRPC to the control plane and HTTP to a
//! proxy's admin port. Every failure exits non-zero with one line saying why.
#![forbid(unsafe_code)]

mod check_pre;
mod demo;
mod demo_queue;
mod inject;
mod output;
mod queue;
mod registry;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use output::Format;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_mesh_tls::admin_client::AdminAuth;
use xds_proto::v1::{self as pb, admin_client::AdminClient};

#[derive(Parser)]
#[command(name = "weftctl", version, about = "Weft service mesh admin CLI")]
struct Cli {
    /// Control plane gRPC URL.
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROL_PLANE",
        default_value = "https://127.0.0.1:15012"
    )]
    control_plane: String,
    /// Directory with the admin client certificate (cert.pem, key.pem,
    /// ca.pem); weft-control writes one to <data-dir>/admin.
    #[arg(
        long,
        global = true,
        env = "WEFT_CERTS",
        default_value = "weft-data/admin"
    )]
    certs: PathBuf,
    /// Plaintext to a control plane started with --insecure-dev.
    #[arg(long, global = true, env = "WEFT_INSECURE_DEV")]
    insecure_dev: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply config files (YAML, multi-document) or every .yaml/.yml in a directory.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate only; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete the objects named in config files.
    Delete {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List stored objects or connected proxies, or a service's endpoints
    /// (`get endpoints SERVICE`: static and registered, with health).
    Get {
        what: GetWhat,
        /// The service, for `get endpoints`.
        name: Option<String>,
        /// Only this namespace (`get endpoints`: the service's, default
        /// "default").
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// The service registry: registered instances, their changes, and
    /// registering instances without a sidecar.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// The queue service: list, describe, publish, consume, peek, purge,
    /// dead letters and redrive.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Per-proxy sync state: SYNCED, STALE, NACKED (with reason) or DISCONNECTED.
    ProxyStatus,
    /// Fetch and print a proxy's /config_dump from its admin address (host:port).
    ProxyConfig { admin: String },
    /// Join tokens: the bootstrap credential a proxy trades for its first certificate.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Certificates: the admin client certificate, inspection.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Health of the mesh: control plane reachable with the admin
    /// certificate, CA expiry (warns under 30 days), every proxy SYNCED
    /// with an unexpired certificate. Exits 1 when something is wrong.
    /// With --pre: a Kubernetes cluster's prerequisites before installing.
    Check {
        /// Check a cluster before installing: kubectl, the API server's
        /// version, admission webhooks, RBAC, the service-account issuer's
        /// keys (skipped, and listed, when no API server answers), and that
        /// the chart renders.
        #[arg(long)]
        pre: bool,
        /// The chart for --pre (default: charts/weft).
        #[arg(long, requires = "pre")]
        chart: Option<PathBuf>,
        /// The kubectl to use for --pre.
        #[arg(long, default_value = "kubectl", requires = "pre")]
        kubectl: String,
    },
    /// Run a demo mesh on loopback: control plane, two workloads with sidecars, live traffic.
    Demo(demo::DemoArgs),
    /// Add the Weft sidecar to Kubernetes manifests (Pods, Deployments,
    /// StatefulSets, DaemonSets, Jobs, CronJobs; multi-document), exactly
    /// as the injector webhook would; YAML on stdout.
    Inject(inject::InjectArgs),
    /// Remove what `inject` added, restoring the app's probes.
    Uninject(inject::UninjectArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for one namespace + service account.
    Create {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// Lifetime, e.g. 1h, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = xds_proto::units::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write an admin client certificate (cert.pem, key.pem, ca.pem), signed
    /// with the CA in the control plane's data dir. Run where that dir is.
    AdminCert {
        /// The control plane's --data-dir.
        #[arg(long, default_value = "weft-data")]
        data_dir: PathBuf,
        /// Where to write; defaults to <data-dir>/admin.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long, default_value = "30d", value_parser = xds_proto::units::parse_duration)]
        ttl: Duration,
    },
    /// Create an offline root CA (ECDSA P-256): root-cert.pem and
    /// root-key.pem in --out. Keep the key off the cluster.
    CreateRoot {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "Weft offline root")]
        common_name: String,
        #[arg(long, default_value = "3650d", value_parser = xds_proto::units::parse_duration)]
        ttl: Duration,
    },
    /// Create an issuing CA signed by a root: chain.pem (issuer, then root)
    /// and issuer-key.pem in --out, for weft-control --ca-cert/--ca-key.
    CreateIssuer {
        #[arg(long)]
        root_cert: PathBuf,
        #[arg(long)]
        root_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "Weft issuing CA")]
        common_name: String,
        #[arg(long, default_value = "365d", value_parser = xds_proto::units::parse_duration)]
        ttl: Duration,
    },
    /// Start a CA rotation: a new root is trusted everywhere, every workload
    /// is re-issued from the new CA, then the old root is removed.
    RotateCa {
        /// Wait until the rotation finishes, printing its progress.
        #[arg(long)]
        wait: bool,
        /// Only show the rotation's status.
        #[arg(long)]
        status: bool,
    },
    /// Show a certificate chain: subject, SPIFFE ID, validity. FILE is PEM;
    /// --proxy reads a running sidecar's /certs from its admin address.
    Inspect {
        file: Option<PathBuf>,
        #[arg(long, conflicts_with = "file")]
        proxy: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GetWhat {
    Services,
    Routes,
    /// Queue objects (their config; `weftctl queue` comes with the service).
    Queues,
    /// Who may publish, consume and administer which queues.
    QueuePolicies,
    Proxies,
    Endpoints,
    /// The control-plane replicas sharing one store, and the leader.
    ControlPlanes,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        let closed_pipe = e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
        if closed_pipe {
            std::process::exit(0);
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Where and as whom weftctl talks to the control plane.
struct Conn {
    pub(crate) url: String,
    pub(crate) auth: AdminAuth,
}

impl Conn {
    async fn admin(&self) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
        Ok(weft_mesh_tls::admin_client::admin_client(&self.url, &self.auth).await?)
    }
}

pub(crate) fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow!("{}", e.message())
}

/// Reads FILE, every .yaml/.yml file in DIR (sorted), or `-` (stdin), as
/// documents.
pub fn read_documents(paths: &[PathBuf]) -> anyhow::Result<Vec<pb::Document>> {
    let mut docs = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{}: no .yaml or .yml files", p.display());
            }
            for f in files {
                docs.push(read_one(&f)?);
            }
        } else {
            docs.push(read_one(p)?);
        }
    }
    Ok(docs)
}

fn read_one(p: &Path) -> anyhow::Result<pb::Document> {
    if p == Path::new("-") {
        let mut yaml = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut yaml)
            .context("cannot read standard input")?;
        return Ok(pb::Document {
            source: "<stdin>".into(),
            yaml,
        });
    }
    let yaml =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(pb::Document {
        source: p.display().to_string(),
        yaml,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = Conn {
        url: cli.control_plane.clone(),
        auth: if cli.insecure_dev {
            AdminAuth::Insecure
        } else {
            AdminAuth::Certs(cli.certs.clone())
        },
    };
    match cli.command {
        Command::Apply { files, dry_run } => {
            let documents = read_documents(&files)?;
            let mut client = conn.admin().await?;
            let resp = client
                .apply(pb::ApplyRequest { documents, dry_run })
                .await
                .map_err(status_error)?
                .into_inner();
            output::results(cli.output, &resp.results, resp.revision, dry_run)
        }
        Command::Delete { files } => {
            let documents = read_documents(&files)?;
            let mut client = conn.admin().await?;
            let resp = client
                .delete(pb::DeleteRequest { documents })
                .await
                .map_err(status_error)?
                .into_inner();
            output::results(cli.output, &resp.results, resp.revision, false)
        }
        Command::Get {
            what,
            name,
            namespace,
        } => {
            let kind = match what {
                GetWhat::Endpoints => {
                    let Some(service) = name else {
                        bail!("which service? weftctl get endpoints SERVICE [-n NAMESPACE]");
                    };
                    let namespace = namespace.unwrap_or_else(|| "default".into());
                    return registry::endpoints(&conn, cli.output, namespace, service).await;
                }
                GetWhat::Proxies => {
                    return proxy_status(&mut conn.admin().await?, cli.output).await
                }
                GetWhat::ControlPlanes => {
                    let resp = conn
                        .admin()
                        .await?
                        .list_control_planes(pb::ListControlPlanesRequest {})
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    return output::control_planes(cli.output, &resp);
                }
                GetWhat::Services => "Service",
                GetWhat::Routes => "Route",
                GetWhat::Queues => "Queue",
                GetWhat::QueuePolicies => "QueuePolicy",
            };
            let mut client = conn.admin().await?;
            let objects = get_all(&mut client, kind, &namespace.unwrap_or_default()).await?;
            output::objects(cli.output, kind, &objects)
        }
        Command::ProxyStatus => {
            let mut client = conn.admin().await?;
            proxy_status(&mut client, cli.output).await
        }
        Command::ProxyConfig { admin } => {
            let body = http_get(&admin, "/config_dump").await?;
            let value: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{admin}/config_dump did not return JSON"))?;
            output::value(cli.output, &value)
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Inject(args) => inject::inject(args),
        Command::Uninject(args) => inject::uninject(args),
        Command::Check {
            pre: true,
            chart,
            kubectl,
        } => check_pre::run(&kubectl, chart),
        Command::Check { .. } => check(&conn).await,
        Command::Token {
            command:
                TokenCommand::Create {
                    namespace,
                    service_account,
                    ttl,
                },
        } => token_create(&conn, cli.output, namespace, service_account, ttl).await,
        Command::Certs { command } => certs(&conn, cli.output, command).await,
        Command::Registry { command } => registry::run(&conn, cli.output, command).await,
        Command::Queue { command } => queue::run(&conn, cli.output, command).await,
    }
}

/// Every `kind` object, read page by page; if the config changes between
/// pages, the listing starts over (a few times) so it is one revision.
async fn get_all(
    client: &mut AdminClient<tonic::transport::Channel>,
    kind: &str,
    namespace: &str,
) -> anyhow::Result<Vec<pb::ConfigObject>> {
    for _ in 0..5 {
        let (mut objects, mut token, mut revision) = (Vec::new(), String::new(), None);
        loop {
            let page = client
                .get(pb::GetRequest {
                    kind: kind.into(),
                    namespace: namespace.into(),
                    page_size: 0,
                    page_token: token,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if revision.is_some_and(|r| r != page.revision) {
                break;
            }
            revision = Some(page.revision);
            objects.extend(page.objects);
            if page.next_page_token.is_empty() {
                return Ok(objects);
            }
            token = page.next_page_token;
        }
    }
    anyhow::bail!("the configuration kept changing while it was being listed; try again")
}

const EXPIRY_WARNING: i64 = 30 * 24 * 3600;

async fn check(conn: &Conn) -> anyhow::Result<()> {
    let now = xds_proto::units::unix_now();
    let days = |t: i64| (t - now) as f64 / 86400.0;
    let mut problems = 0;
    let mut client = conn.admin().await?;
    let ca = client
        .get_ca_status(pb::CaStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "ok    control plane {} accepts the admin certificate",
        conn.url
    );
    let mut expiry = |what: String, at: i64| {
        if at <= now {
            problems += 1;
            println!("ERROR {what} expired {:.1} days ago", -days(at));
        } else if at - now < EXPIRY_WARNING {
            println!("WARN  {what} expires in {:.1} days", days(at));
        } else {
            println!("ok    {what} valid for {:.0} more days", days(at));
        }
    };
    expiry("issuing CA".into(), ca.issuer_not_after_unix);
    for (fp, at) in ca.roots_sha256.iter().zip(&ca.roots_not_after_unix) {
        expiry(format!("root {}", &fp[..16.min(fp.len())]), *at);
    }
    if !matches!(ca.phase.as_str(), "idle" | "done") {
        println!("note  CA rotation: {} {}", ca.phase, ca.message);
    }
    let proxies = client
        .proxy_status(pb::ProxyStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .proxies;
    let mut healthy = 0;
    for p in &proxies {
        if !p.connected {
            continue;
        }
        let name = p
            .node
            .as_ref()
            .map(|n| format!("{}/{}", n.namespace, n.name))
            .unwrap_or_default();
        let state = pb::SyncState::try_from(p.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_default();
        let mut wrong = Vec::new();
        if p.state != pb::SyncState::Synced as i32 {
            wrong.push(format!(
                "state {state}{}",
                if p.nack_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.nack_reason)
                }
            ));
        }
        if p.cert_not_after_unix == 0 {
            wrong.push(
                "no certificate known (insecure or issued before this control plane started)"
                    .into(),
            );
        } else if p.cert_not_after_unix <= now {
            wrong.push("certificate expired".into());
        }
        if wrong.is_empty() {
            healthy += 1;
        } else {
            problems += 1;
            println!("ERROR proxy {name}: {}", wrong.join("; "));
        }
    }
    println!("ok    {healthy} connected proxies SYNCED with a valid certificate");
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    Ok(())
}

/// Starts (or, with `status_only`, reads) a CA rotation; with `wait`, follows
/// it to the end, printing each change of phase on stderr.
async fn rotate_ca(
    conn: &Conn,
    format: Format,
    wait: bool,
    status_only: bool,
) -> anyhow::Result<()> {
    let mut client = conn.admin().await?;
    let mut st = if status_only {
        client.get_ca_status(pb::CaStatusRequest {}).await
    } else {
        client.rotate_ca(pb::RotateCaRequest {}).await
    }
    .map_err(status_error)?
    .into_inner();
    let mut last_line = String::new();
    loop {
        let pending = if st.pending_proxies.is_empty() {
            String::new()
        } else {
            format!(": {}", st.pending_proxies.join(", "))
        };
        let line = format!("CA rotation: {} {}{pending}", st.phase, st.message);
        if line != last_line {
            eprintln!("{}", line.trim_end());
            last_line = line;
        }
        let finished = matches!(st.phase.as_str(), "done" | "failed" | "idle");
        if !wait || finished {
            if st.phase == "failed" {
                bail!("CA rotation failed: {}", st.message);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        st = client
            .get_ca_status(pb::CaStatusRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
    }
    output::value(
        format,
        &serde_json::json!({
            "phase": st.phase,
            "message": st.message,
            "pending_proxies": st.pending_proxies,
            "roots_sha256": st.roots_sha256,
            "issuer_not_after_unix": st.issuer_not_after_unix,
        }),
    )
}

async fn certs_inspect(
    format: Format,
    file: Option<&Path>,
    proxy: Option<&str>,
) -> anyhow::Result<()> {
    let value = match (file, proxy) {
        (Some(f), _) => {
            let pem = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let certs = weft_mesh_tls::svid::certs_from_pem(&pem)
                .with_context(|| format!("{}", f.display()))?;
            let unix = xds_proto::units::unix_secs;
            let mut chain = Vec::new();
            for (i, c) in certs.iter().enumerate() {
                let info = weft_mesh_tls::svid::inspect(c)
                    .with_context(|| format!("{}: certificate {}", f.display(), i + 1))?;
                chain.push(serde_json::json!({
                    "subject": info.subject,
                    "issuer": info.issuer,
                    "spiffe_id": info.spiffe_id,
                    "serial": info.serial,
                    "not_before_unix": unix(info.not_before),
                    "not_after_unix": unix(info.not_after),
                    "is_ca": info.is_ca,
                    "sha256": info.fingerprint_sha256,
                }));
            }
            serde_json::json!({ "file": f.display().to_string(), "chain": chain })
        }
        (None, Some(admin)) => {
            let body = http_get(admin, "/certs").await?;
            serde_json::from_str(&body)
                .with_context(|| format!("{admin}/certs did not return JSON"))?
        }
        (None, None) => bail!("give a PEM file or --proxy ADMIN_ADDR"),
    };
    output::value(format, &value)
}

async fn proxy_status(
    client: &mut AdminClient<tonic::transport::Channel>,
    format: Format,
) -> anyhow::Result<()> {
    let resp = client
        .proxy_status(pb::ProxyStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    output::proxies(format, &resp)
}

/// GET http://ADDR/PATH with a 5 s timeout; non-2xx is an error.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let uri: hyper::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| anyhow!("bad admin address \"{addr}\": {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| anyhow!("{addr}{path}: timed out"))?
        .map_err(|e| anyhow!("cannot reach proxy admin at {addr}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("{addr}{path}: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).to_string();
    if !status.is_success() {
        bail!("{addr}{path}: HTTP {status}: {}", body.trim());
    }
    Ok(body)
}

/// `weftctl token create`: a join token for a workload's first certificate.
async fn token_create(
    conn: &Conn,
    format: Format,
    namespace: String,
    service_account: String,
    ttl: Duration,
) -> anyhow::Result<()> {
    let mut client = conn.admin().await?;
    let resp = client
        .create_token(pb::CreateTokenRequest {
            namespace,
            service_account,
            ttl_seconds: ttl.as_secs(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match format {
        Format::Table => output::outln!("{}", resp.token),
        _ => output::value(
            format,
            &serde_json::json!({
                "token": resp.token,
                "spiffe_id": resp.spiffe_id,
                "expires_unix": resp.expires_unix,
            }),
        )?,
    }
    Ok(())
}

/// `weftctl certs ...`: CA and certificate files, inspection, CA rotation.
async fn certs(conn: &Conn, format: Format, command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::AdminCert {
            ref data_dir,
            ref out,
            ref trust_domain,
            ttl,
        } => {
            let ca = weft_certs::ca::CertificateAuthority::load_existing(
                &data_dir.join("ca"),
                trust_domain,
            )?;
            let out = out
                .clone()
                .unwrap_or_else(|| weft_mesh_tls::admin_client::admin_dir(data_dir));
            let not_after =
                weft_certs::admin_cert::write_admin_cert(&out, &ca, ca.roots_pem(), ttl)?;
            let secs = not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            output::outln!(
                "wrote {}/cert.pem, key.pem, ca.pem (spiffe://{trust_domain}/ns/weft-system/sa/admin, valid {}h)",
                out.display(),
                secs / 3600
            );
            Ok(())
        }
        CertsCommand::Inspect {
            ref file,
            ref proxy,
        } => certs_inspect(format, file.as_deref(), proxy.as_deref()).await,
        CertsCommand::RotateCa { wait, status } => rotate_ca(conn, format, wait, status).await,
        CertsCommand::CreateRoot {
            ref out,
            ref common_name,
            ttl,
        } => {
            weft_certs::ca::create_root(out, common_name, ttl)?;
            output::outln!(
                "wrote {0}/root-cert.pem and {0}/root-key.pem (0600); keep the key offline",
                out.display()
            );
            Ok(())
        }
        CertsCommand::CreateIssuer {
            ref root_cert,
            ref root_key,
            ref out,
            ref common_name,
            ttl,
        } => {
            weft_certs::ca::create_issuer(root_cert, root_key, out, common_name, ttl)?;
            output::outln!(
                "wrote {0}/chain.pem and {0}/issuer-key.pem: weft-control --ca-cert {0}/chain.pem --ca-key {0}/issuer-key.pem",
                out.display()
            );
            Ok(())
        }
    }
}
