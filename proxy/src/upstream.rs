//! Upstream connections: the pools requests go out on (HTTP/1.1 keep-alive
//! and h2c to plaintext endpoints, h2 over mTLS to endpoints with a
//! sidecar) and the connectors behind them, which apply the destination
//! cluster's connect timeout and `max_connections` limit. A connection holds
//! its cluster's connection slot until it closes.

use crate::body::RequestBody;
use crate::breaker::{ConnectionSlot, Limit};
use crate::mtls::{Alpn, MeshTls};
use crate::snapshot::SnapshotHolder;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection refused locally because its cluster is at `max_connections`.
#[derive(Debug, thiserror::Error)]
#[error("cluster is at its {0} limit")]
pub struct OverLimit(pub Limit);

/// The limit that refused a request's connection, if that is why it failed.
pub fn over_limit(e: &(dyn std::error::Error + 'static)) -> Option<Limit> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(o) = io.get_ref().and_then(|i| i.downcast_ref::<OverLimit>()) {
                return Some(o.0);
            }
        }
        if let Some(o) = err.downcast_ref::<OverLimit>() {
            return Some(o.0);
        }
        cur = err.source();
    }
    None
}

/// Whether the server refused the stream (HTTP/2 REFUSED_STREAM): it did
/// not process the request.
pub fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = err.source();
    }
    false
}

/// Looks up the endpoint's cluster for its connect timeout and takes a
/// connection slot under its limit.
fn admit(
    snapshot: &SnapshotHolder,
    addr: SocketAddr,
) -> io::Result<(Duration, Option<ConnectionSlot>)> {
    let snap = snapshot.load();
    let Some(cluster) = snap.cluster_for_address(addr) else {
        return Ok((DEFAULT_CONNECT_TIMEOUT, None));
    };
    let timeout = cluster.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let slot = cluster
        .runtime
        .load
        .try_connect(&cluster.limits)
        .map_err(|l| io::Error::other(OverLimit(l)))?;
    Ok((timeout, Some(slot)))
}

fn endpoint_of(uri: &http::Uri) -> io::Result<SocketAddr> {
    uri.authority()
        .and_then(|a| a.as_str().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{uri}: not an endpoint address"),
            )
        })
}

/// A connection holding its cluster's connection slot.
pub struct Tracked<T> {
    io: T,
    h2: bool,
    _slot: Option<ConnectionSlot>,
}

impl<T> Connection for Tracked<T> {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

pub type PlainIo = Tracked<TokioIo<TcpStream>>;
pub type MeshIo = Tracked<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>;

type Connecting<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// Plain TCP to an endpoint without a sidecar (or to the local app).
#[derive(Clone)]
pub struct PlainConnector {
    snapshot: SnapshotHolder,
}

impl tower::Service<http::Uri> for PlainConnector {
    type Response = PlainIo;
    type Error = io::Error;
    type Future = Connecting<PlainIo>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let snapshot = self.snapshot.clone();
        Box::pin(async move {
            let addr = endpoint_of(&uri)?;
            let (timeout, slot) = admit(&snapshot, addr)?;
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out after {timeout:?}"),
                    )
                })??;
            let _ = tcp.set_nodelay(true);
            Ok(Tracked {
                io: TokioIo::new(tcp),
                h2: false,
                _slot: slot,
            })
        })
    }
}

/// mTLS to a peer sidecar, which must present the identity the snapshot
/// gives for the endpoint.
#[derive(Clone)]
pub struct MeshConnector {
    pub tls: Arc<MeshTls>,
    pub snapshot: SnapshotHolder,
}

impl tower::Service<http::Uri> for MeshConnector {
    type Response = MeshIo;
    type Error = io::Error;
    type Future = Connecting<MeshIo>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let snapshot = self.snapshot.clone();
        Box::pin(async move {
            let addr = endpoint_of(&uri)?;
            let expected = snapshot
                .load()
                .endpoint_identity(addr)
                .cloned()
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no identity known for {addr}"),
                    )
                })?;
            let (timeout, slot) = admit(&snapshot, addr)?;
            let stream = tls.connect(addr, &expected, Alpn::H2, timeout).await?;
            Ok(Tracked {
                io: TokioIo::new(stream),
                h2: true,
                _slot: slot,
            })
        })
    }
}

/// The pools: HTTP/1.1 keep-alive and h2c (prior knowledge) to plaintext
/// endpoints; h2 over mTLS to endpoints with a sidecar.
#[derive(Clone)]
pub struct Upstreams {
    pub h1: Client<PlainConnector, RequestBody>,
    pub h2: Client<PlainConnector, RequestBody>,
    pub mesh: Option<Client<MeshConnector, RequestBody>>,
}

impl Upstreams {
    pub fn new(snapshot: SnapshotHolder, tls: Option<Arc<MeshTls>>) -> Self {
        let plain = PlainConnector {
            snapshot: snapshot.clone(),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new());
        let h1 = b.build(plain.clone());
        b.http2_only(true).timer(TokioTimer::new());
        let h2 = b.build(plain);
        // Between sidecars HTTP always rides one multiplexed h2 connection.
        let mesh = tls.map(|tls| b.build(MeshConnector { tls, snapshot }));
        Upstreams { h1, h2, mesh }
    }

    /// Sends on the pool for this hop: mTLS h2 to a sidecar, h2c, or h1.
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
        meshed: bool,
        h2: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match (&self.mesh, meshed, h2) {
            (Some(mesh), true, _) => mesh.request(req).await,
            (_, _, true) => self.h2.request(req).await,
            _ => self.h1.request(req).await,
        }
    }
}
