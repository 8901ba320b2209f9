//! weftctl: the Weft admin CLI. Talks gRPC to the control plane and HTTP to a
//! proxy's admin port. Every failure exits non-zero with one line saying why.
#![forbid(unsafe_code)]

mod demo;
mod output;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use output::Format;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xds_proto::v1::{self as pb, admin_client::AdminClient};

#[derive(Parser)]
#[command(name = "weftctl", version, about = "Weft service mesh admin CLI")]
struct Cli {
    /// Control plane gRPC URL.
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15012"
    )]
    control_plane: String,
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
    /// List stored objects or connected proxies.
    Get {
        what: GetWhat,
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Per-proxy sync state: SYNCED, STALE, NACKED (with reason) or DISCONNECTED.
    ProxyStatus,
    /// Fetch and print a proxy's /config_dump from its admin address (host:port).
    ProxyConfig { admin: String },
    /// Run a demo mesh on loopback: control plane, two workloads with sidecars, live traffic.
    Demo(demo::DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum GetWhat {
    Services,
    Routes,
    Proxies,
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
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

async fn admin_client(url: &str) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow!("bad control-plane URL \"{url}\": {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach control plane at {url}: {e} (is weft-control running? set --control-plane or WEFT_CONTROL_PLANE)"))?;
    Ok(AdminClient::new(channel))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow!("{}", e.message())
}

/// Reads FILE, or every .yaml/.yml file in DIR (sorted), as documents.
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
    let yaml =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(pb::Document {
        source: p.display().to_string(),
        yaml,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apply { files, dry_run } => {
            let documents = read_documents(&files)?;
            let mut client = admin_client(&cli.control_plane).await?;
            let resp = client
                .apply(pb::ApplyRequest { documents, dry_run })
                .await
                .map_err(status_error)?
                .into_inner();
            output::results(cli.output, &resp.results, resp.revision, dry_run)
        }
        Command::Delete { files } => {
            let documents = read_documents(&files)?;
            let mut client = admin_client(&cli.control_plane).await?;
            let resp = client
                .delete(pb::DeleteRequest { documents })
                .await
                .map_err(status_error)?
                .into_inner();
            output::results(cli.output, &resp.results, resp.revision, false)
        }
        Command::Get { what, namespace } => {
            let mut client = admin_client(&cli.control_plane).await?;
            let kind = match what {
                GetWhat::Services => "Service",
                GetWhat::Routes => "Route",
                GetWhat::Proxies => return proxy_status(&mut client, cli.output).await,
            };
            let resp = client
                .get(pb::GetRequest {
                    kind: kind.into(),
                    namespace: namespace.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::objects(cli.output, kind, &resp.objects)
        }
        Command::ProxyStatus => {
            let mut client = admin_client(&cli.control_plane).await?;
            proxy_status(&mut client, cli.output).await
        }
        Command::ProxyConfig { admin } => {
            let body = http_get(&admin, "/config_dump").await?;
            let value: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{admin}/config_dump did not return JSON"))?;
            output::value(cli.output, &value)
        }
        Command::Demo(args) => demo::run(args).await,
    }
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
