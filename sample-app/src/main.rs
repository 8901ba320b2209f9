//! weft-sample-app: the small workloads the demo, the e2e tests and the
//! benches put behind sidecars. HTTP/1.1 + h2c, gRPC (unary and server
//! streaming), a TCP echo and a server-first protocol (speaks before the
//! client, like MySQL or SMTP).
#![forbid(unsafe_code)]

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
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
    /// GET /bytes?n=N[&chunked=1] → N bytes; GET /slow?ms=N → delayed reply.
    Http {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "http-app")]
        name: String,
    },
    /// gRPC weft.sample.v1.Echo (unary + server streaming) over h2c.
    Grpc {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "grpc-app")]
        name: String,
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
        App::Grpc { listen, name } => grpc(listen, name).await,
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

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn handle(name: Arc<String>, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let version = format!("{:?}", req.version());
    let mut resp = match req.uri().path() {
        "/echo" => Response::new(req.into_body().boxed()),
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
                    Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'w'; len])))
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
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(name.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

struct EchoService {
    name: String,
}

type ReplyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
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

async fn grpc(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService { name }))
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
