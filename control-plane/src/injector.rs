//! The sidecar injector: a Kubernetes mutating admission webhook over HTTPS
//! (`--inject-listen`, :15017 in the chart). `POST /inject` answers reviews
//! for pods in namespaces labelled `weft.dev/inject: enabled` (inject
//! unless the pod opts out); `POST /inject/opt-in` answers the second
//! webhook, for pods elsewhere (inject only pods that opt in). The patch
//! itself comes from `weft-inject`, shared with `weftctl inject`. Every
//! answer allows the pod: the webhook must never block pod creation.
//!
//! The serving certificate and key are files (the chart's Secret); they
//! are re-read every 30 seconds, so a rotated Secret takes effect without
//! a restart, and a bad pair keeps the last good one.

use anyhow::Context as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_inject::admission::{self, Verdict};
use weft_inject::{Selection, Template};
use weft_mesh_tls::tls::{CertSlot, TrustBundle};

pub const REVIEWS_TOTAL: &str = "weft_injector_reviews_total";
pub const REVIEW_DURATION: &str = "weft_injector_review_duration_seconds";
/// An AdmissionReview carries one pod; etcd caps objects at 1.5 MiB.
const MAX_BODY: usize = 4 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed on accept (the API server
/// keeps a few; a flood from inside the cluster must not exhaust the
/// control plane's file descriptors).
const MAX_CONNECTIONS: usize = 256;
pub const CONNECTIONS_REFUSED: &str = "weft_injector_connections_refused_total";

pub struct Settings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// None: the defaults.
    pub template: Option<PathBuf>,
}

struct Injector {
    template: Template,
    /// The mesh roots, for templates that do not carry their own.
    bundle: Arc<TrustBundle>,
}

impl Injector {
    fn template(&self) -> Template {
        let mut t = self.template.clone();
        if t.ca_bundle.trim().is_empty() {
            t.ca_bundle = self.bundle.pems().concat();
        }
        t
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let selection = match req.uri().path() {
            "/inject" => Selection::Namespace,
            "/inject/opt-in" => Selection::OptIn,
            "/ready" => return Ok(text(StatusCode::OK, "ready\n")),
            other => {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "not found: {other}; the webhook paths are /inject and /inject/opt-in\n"
                    ),
                ))
            }
        };
        if req.method() != Method::POST {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"));
        }
        let started = Instant::now();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                metrics::counter!(REVIEWS_TOTAL, "result" => "malformed").increment(1);
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return Ok(text(status, &format!("cannot read the review: {e}\n")));
            }
        };
        let (answer, verdict, why) = admission::review(&body, &self.template(), selection);
        metrics::counter!(REVIEWS_TOTAL, "result" => verdict.label()).increment(1);
        metrics::histogram!(REVIEW_DURATION).record(started.elapsed().as_secs_f64());
        let uid = answer
            .response
            .as_ref()
            .map(|r| r.uid.as_str())
            .unwrap_or("");
        match verdict {
            Verdict::Injected | Verdict::Skipped => {
                tracing::info!(uid, result = verdict.label(), detail = %why, "admission review")
            }
            Verdict::Refused | Verdict::Malformed => {
                tracing::warn!(uid, result = verdict.label(), detail = %why, "admission review")
            }
        }
        let json = serde_json::to_vec(&answer).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(json)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

/// Loads the template and the serving certificate (errors name the file)
/// and serves until `stop`. Returns the bound address.
pub async fn serve(
    settings: Settings,
    bundle: Arc<TrustBundle>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let template = match &settings.template {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --inject-template {}", path.display()))?;
            Template::parse(&text)
                .with_context(|| format!("--inject-template {}", path.display()))?
        }
        None => Template::default(),
    };
    let slot = Arc::new(CertSlot::new());
    let loaded = load_pair(&slot, &settings.cert, &settings.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(weft_mesh_tls::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(slot.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on --inject-listen {}", settings.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, template = ?settings.template, "sidecar injector serving");
    let injector = Arc::new(Injector { template, bundle });
    tokio::spawn(reload(
        slot,
        settings.cert,
        settings.key,
        loaded,
        stop.clone(),
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "injector accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                drop(tcp);
                continue;
            };
            let (acceptor, injector) = (acceptor.clone(), injector.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "injector TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| injector.clone().handle(req));
                let mut builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                builder
                    .http1()
                    .header_read_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new());
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(local)
}

/// Installs the pair; returns what was read (to notice changes).
fn load_pair(slot: &CertSlot, cert: &PathBuf, key: &PathBuf) -> anyhow::Result<(String, String)> {
    let c = std::fs::read_to_string(cert)
        .with_context(|| format!("cannot read --inject-tls-cert {}", cert.display()))?;
    let k = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read --inject-tls-key {}", key.display()))?;
    slot.set_pem(&c, &k).with_context(|| {
        format!(
            "--inject-tls-cert {} / --inject-tls-key {}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((c, k))
}

async fn reload(
    slot: Arc<CertSlot>,
    cert: PathBuf,
    key: PathBuf,
    mut current: (String, String),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = stop.changed() => return,
        }
        let (c, k) = match (
            std::fs::read_to_string(&cert),
            std::fs::read_to_string(&key),
        ) {
            (Ok(c), Ok(k)) => (c, k),
            _ => continue,
        };
        if (c.as_str(), k.as_str()) == (current.0.as_str(), current.1.as_str()) {
            continue;
        }
        match slot.set_pem(&c, &k) {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "injector serving certificate reloaded");
                current = (c, k);
            }
            // A Secret update lands file by file: the next pass sees both.
            Err(e) => {
                tracing::warn!(error = %e, "injector certificate not reloaded; keeping the last good one")
            }
        }
    }
}
