//! Observability plumbing shared by Weft's binaries: log setup, the
//! Prometheus recorder, and the small HTTP server behind /metrics, /ready and
//! the proxy admin endpoints.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = Full<Bytes>;

/// Latency buckets (seconds) for every `_seconds` histogram: fine-grained
/// below a millisecond, where a sidecar's added latency lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Logs to stderr; `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the global Prometheus recorder. Must run inside a tokio runtime
/// (it spawns the histogram upkeep task).
pub fn install_metrics() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = text(status, body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A request with its body read (admin bodies are small).
pub struct AdminRequest {
    pub method: hyper::Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Bytes,
}

/// Bounds of the admin and metrics servers: they answer operators and
/// Prometheus, take tiny bodies, and must never let a side port hold the
/// memory or the file descriptors the data plane needs.
pub mod limits {
    use std::time::Duration;

    /// Connections served at once; more are closed as soon as accepted.
    pub const MAX_CONNECTIONS: usize = 64;
    /// Largest request body (admin bodies are tiny); more gets 413.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    /// Largest request head; more gets 431.
    pub const MAX_HEAD_BYTES: usize = 16 * 1024;
    /// A request head (and the wait for the next one on a kept-alive
    /// connection) must arrive within this.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
    /// A request body must arrive within this; else 408.
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
    /// No connection lives longer than this.
    pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
}

/// Admin/metrics connections closed on accept because `MAX_CONNECTIONS`
/// were open.
pub const ADMIN_CONNECTIONS_REFUSED: &str = "weft_admin_connections_refused_total";

/// Serves HTTP/1.1 on `addr` until `stop` turns true, calling `handler` per
/// request, within `limits`. Binds before returning so callers know the
/// port is ready.
pub async fn serve<F, Fut>(
    addr: SocketAddr,
    handler: F,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, TelemetryError>
where
    F: Fn(AdminRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let handler = Arc::new(handler);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONNECTIONS));
    let refused = metrics::counter!(ADMIN_CONNECTIONS_REFUSED, "port" => local.port().to_string());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closing at once returns the descriptor right away.
                refused.increment(1);
                drop(stream);
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _slot = slot;
                serve_connection(stream, handler).await;
            });
        }
    });
    Ok(local)
}

async fn serve_connection<F, Fut>(stream: tokio::net::TcpStream, handler: Arc<F>)
where
    F: Fn(AdminRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().map(str::to_string);
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(refused) => return Ok::<_, hyper::Error>(refused),
            };
            Ok(handler(AdminRequest {
                method,
                path,
                query,
                body,
            })
            .await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT)
        .max_buf_size(limits::MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(limits::MAX_CONNECTION_AGE, conn).await;
}

/// The body, if it is small enough and arrives in time; else the answer.
async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    let limited = http_body_util::Limited::new(body, limits::MAX_BODY_BYTES);
    match tokio::time::timeout(limits::BODY_READ_TIMEOUT, limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {} bytes\n", limits::MAX_BODY_BYTES),
        )),
        Ok(Err(e)) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("cannot read body: {e}\n"),
        )),
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "request body did not arrive in time\n",
        )),
    }
}
