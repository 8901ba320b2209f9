//! weft-sample-app: the small workloads the demo, the e2e tests and the
//! benches put behind sidecars. HTTP/1.1 + h2c, gRPC (unary and server
//! streaming), a TCP echo and a server-first protocol (speaks before the
//! client, like MySQL or SMTP).
#![forbid(unsafe_code)]

mod fault;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use fault::{Fault, FaultState};
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use xds_proto::health::v1::{
    health_check_response::ServingStatus,
    health_server::{Health as HealthSvc, HealthServer},
    HealthCheckRequest, HealthCheckResponse,
};
use xds_proto::sample::v1::{
    echo_server::{Echo, EchoServer},
    EchoReply, EchoRequest,
};

#[derive(Parser)]
#[command(
    name = "weft-sample-app",
    about = "Sample workloads for Weft demos and tests"
)]
struct Args {
    #[command(subcommand)]
    app: App,
}

#[derive(Subcommand)]
enum App {
    /// HTTP/1.1 and h2c server. GET / → greeting; POST /echo → body back; GET /headers → request headers;
    /// GET /bytes?n=N[&chunked=1] → N bytes; GET /slow?ms=N → delayed reply; GET /status?code=N.
    /// Faults: x-fault-* request headers, or POST /fault?status=503&percent=30 (see fault.rs);
    /// GET /stats counts requests; GET /healthz for health checks.
    Http {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "http-app")]
        name: String,
    },
    /// gRPC weft.sample.v1.Echo (unary + server streaming) and
    /// grpc.health.v1.Health over h2c. A call fails with the status in its
    /// `x-fault-grpc-status` metadata, or with --fail-status for
    /// --fail-percent of calls.
    Grpc {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "grpc-app")]
        name: String,
        #[arg(long)]
        fail_status: Option<i32>,
        #[arg(long, default_value_t = 100.0)]
        fail_percent: f64,
        /// Answer health checks NOT_SERVING.
        #[arg(long)]
        not_serving: bool,
    },
    /// Echoes every byte back.
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Sends BANNER as soon as a client connects, then echoes.
    ServerFirst {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "220 weft-sample ready\r\n")]
        banner: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.app {
        App::Http { listen, name } => http(listen, name).await,
        App::Grpc {
            listen,
            name,
            fail_status,
            fail_percent,
            not_serving,
        } => {
            let svc = EchoService {
                name,
                fail: fail_status.map(|s| (s, fail_percent)),
            };
            grpc(listen, svc, not_serving).await
        }
        App::TcpEcho { listen } => tcp(listen, None).await,
        App::ServerFirst { listen, banner } => tcp(listen, Some(banner)).await,
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("listening on {addr}");
    Ok(l)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// Admin calls: set or clear the app-wide fault, read or reset counters,
/// set the health-check answer. None: not an admin path.
fn admin(state: &FaultState, req: &Request<Incoming>) -> Option<Response<Body>> {
    let pairs = || {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
    };
    Some(match (req.method().as_str(), req.uri().path()) {
        ("POST", "/fault") => match Fault::from_pairs(pairs()) {
            Ok(f) => {
                state.set(f.clone());
                text(StatusCode::OK, format!("fault set: {f:?}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        ("DELETE", "/fault") => {
            state.set(Fault::default());
            text(StatusCode::OK, "fault cleared\n".into())
        }
        ("GET", "/stats") => text(StatusCode::OK, format!("requests {}\n", state.requests())),
        ("POST", "/stats/reset") => {
            state.reset_requests();
            text(StatusCode::OK, "requests 0\n".into())
        }
        ("POST", "/health") => {
            match pairs()
                .find(|(k, _)| *k == "status")
                .and_then(|(_, v)| v.parse::<u16>().ok())
                .filter(|s| (100..=599).contains(s))
            {
                Some(s) => {
                    state.set_health(s);
                    text(StatusCode::OK, format!("health {s}\n"))
                }
                None => text(StatusCode::BAD_REQUEST, "need status=100..599\n".into()),
            }
        }
        ("GET", "/healthz") => text(
            StatusCode::from_u16(state.health()).unwrap_or(StatusCode::OK),
            "health\n".into(),
        ),
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("fault injected: {0}")]
struct Injected(&'static str);

/// Applies a fault to a request: Some(response) replaces the normal answer;
/// Err aborts the connection.
async fn inject(fault: &Fault) -> Result<Option<Response<Body>>, BoxError> {
    if !fault.fires() {
        return Ok(None);
    }
    if let Some(d) = fault.delay {
        tokio::time::sleep(d).await;
    }
    if fault.abort {
        return Err(Box::new(Injected("abort")));
    }
    if fault.reset {
        // Headers and a first chunk go out; the connection breaks after.
        let frames = futures::stream::iter(0..2).then(|i| async move {
            if i == 0 {
                Ok(Frame::data(Bytes::from_static(b"partial response")))
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Frame<Bytes>, BoxError>(Box::new(Injected("reset")))
            }
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("1000"));
        return Ok(Some(r));
    }
    if let Some(gap) = fault.slow_body {
        let frames = futures::stream::iter(0..4).then(move |i| async move {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            Ok::<_, BoxError>(Frame::data(Bytes::from(format!("chunk {i}\n"))))
        });
        return Ok(Some(Response::new(BodyExt::boxed(StreamBody::new(frames)))));
    }
    if let Some(status) = fault.status {
        let mut r = text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("fault status {status}\n"),
        );
        if let Some(secs) = fault.retry_after {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        return Ok(Some(r));
    }
    Ok(None)
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn handle(
    name: Arc<String>,
    state: Arc<FaultState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    if let Some(resp) = admin(&state, &req) {
        return Ok(resp);
    }
    state.count();
    let fault = match Fault::from_headers(req.headers()) {
        Ok(f) if f.is_empty() => state.current(),
        Ok(f) => f,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
    };
    if !fault.is_empty() {
        if let Some(mut resp) = inject(&fault).await? {
            if let Ok(v) = name.parse() {
                resp.headers_mut().insert("x-served-by", v);
            }
            return Ok(resp);
        }
    }
    let version = format!("{:?}", req.version());
    let mut resp = match req.uri().path() {
        "/echo" => Response::new(req.into_body().map_err(Into::into).boxed()),
        // The request headers as the app received them, one "name: value" per line.
        "/headers" => {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            lines.sort();
            Response::new(full(lines.join("\n") + "\n"))
        }
        "/bytes" => {
            let n: usize = query(&req, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
            if query(&req, "chunked").as_deref() == Some("1") {
                let chunks = (0..n).step_by(16 * 1024).map(move |off| {
                    let len = (n - off).min(16 * 1024);
                    Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'w'; len])))
                });
                Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                    chunks,
                ))))
            } else {
                Response::new(full(vec![b'w'; n]))
            }
        }
        "/slow" => {
            let ms: u64 = query(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("slow reply from {name} after {ms}ms\n")))
        }
        "/status" => {
            let code: u16 = query(&req, "code")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            let mut r = Response::new(full(format!("status {code} from {name}\n")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
            r
        }
        path => Response::new(full(format!(
            "hello from {name} path={path} version={version}\n"
        ))),
    };
    if let Ok(v) = name.parse() {
        resp.headers_mut().insert("x-served-by", v);
    }
    Ok(resp)
}

async fn http(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    let name = Arc::new(name);
    let state = Arc::new(FaultState::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(name.clone(), state.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

struct EchoService {
    name: String,
    /// (gRPC status code, percent of calls) to fail.
    fail: Option<(i32, f64)>,
}

impl EchoService {
    /// The injected failure for this call, if any.
    fn fault<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let from_meta = req
            .metadata()
            .get("x-fault-grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        let code = match (from_meta, self.fail) {
            (Some(c), _) => Some(c),
            (None, Some((c, pct))) if rand::random::<f64>() * 100.0 < pct => Some(c),
            _ => None,
        };
        match code {
            Some(c) if c != 0 => Err(tonic::Status::new(
                tonic::Code::from_i32(c),
                format!("fault injected by {}", self.name),
            )),
            _ => Ok(()),
        }
    }
}

type ReplyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        self.fault(&req)?;
        Ok(tonic::Response::new(EchoReply {
            message: req.into_inner().message,
            served_by: self.name.clone(),
            index: 0,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
        let req = req.into_inner();
        if req.count > 10_000 {
            return Err(tonic::Status::invalid_argument(
                "count must be at most 10000",
            ));
        }
        let name = self.name.clone();
        let stream = futures::stream::iter(0..req.count).map(move |i| {
            Ok(EchoReply {
                message: req.message.clone(),
                served_by: name.clone(),
                index: i,
            })
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// grpc.health.v1: SERVING unless started with --not-serving.
struct Health {
    serving: bool,
}

#[tonic::async_trait]
impl HealthSvc for Health {
    async fn check(
        &self,
        _req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let status = if self.serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}

async fn grpc(listen: SocketAddr, svc: EchoService, not_serving: bool) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(svc))
        .add_service(HealthServer::new(Health {
            serving: !not_serving,
        }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

async fn tcp(listen: SocketAddr, banner: Option<String>) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let banner = banner.clone();
        tokio::spawn(async move {
            if let Some(b) = banner {
                if stream.write_all(b.as_bytes()).await.is_err() {
                    return;
                }
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
