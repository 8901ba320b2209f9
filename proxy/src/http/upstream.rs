//! Upstream connections: the pools requests go out on (hyper's HTTP/1.1
//! keep-alive to plaintext endpoints and HTTP/1.1 over mTLS for upgrades to
//! sidecars; HTTP/2, h2c or h2 over mTLS, on `h2_client`) and the
//! connectors behind them. A request is sent with the
//! `ConnectTarget` it already chose (cluster and host, from the snapshot it
//! read); a connector opening a connection for it applies that cluster's
//! connect timeout and `max_connections` limit and checks that host's
//! identity. A connection holds its cluster's connection slot until it
//! closes.

use crate::cluster::Cluster;
use crate::host::Host;
use crate::http::body::{RecvBody, RequestBody};
use crate::http::h2_client::{H2Client, H2Error};
use crate::http::limits::MAX_HEAD_BYTES;
use crate::mtls::{Alpn, MeshTls};
use crate::policy::circuit_breaker::{ConnectionSlot, Limit};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle upstream connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Where a request's new connection goes, as the request chose it.
#[derive(Clone)]
pub struct ConnectTarget {
    pub addr: SocketAddr,
    /// The SPIFFE ID the sidecar there must present (mTLS hops).
    pub identity: Option<Arc<str>>,
    /// The chosen cluster: its connect timeout and `max_connections`.
    /// None: the local app.
    pub cluster: Option<Arc<Cluster>>,
}

impl ConnectTarget {
    /// `host` of `cluster`.
    pub fn endpoint(cluster: &Arc<Cluster>, host: &Host) -> Self {
        ConnectTarget {
            addr: host.addr,
            identity: host.identity.clone(),
            cluster: Some(cluster.clone()),
        }
    }

    /// A local address outside any cluster (the app behind the sidecar).
    pub fn local(addr: SocketAddr) -> Self {
        ConnectTarget {
            addr,
            identity: None,
            cluster: None,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.cluster
            .as_ref()
            .and_then(|c| c.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// A connection slot under the cluster's `max_connections`.
    pub(crate) fn admit(&self) -> io::Result<Option<ConnectionSlot>> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        cluster
            .runtime
            .load
            .try_connect(&cluster.limits)
            .map(Some)
            .map_err(|l| io::Error::other(OverLimit(l)))
    }
}

tokio::task_local! {
    /// The target of the request being sent: hyper's pool calls a connector
    /// with the URI only, from within the request's future, so the request
    /// lends its target to the connector through this task-local.
    static TARGET: ConnectTarget;
}

fn current_target() -> io::Result<ConnectTarget> {
    TARGET.try_with(ConnectTarget::clone).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "connection requested without a connect target",
        )
    })
}

/// `http(s)://<endpoint><path?query>`: the pool is keyed by the endpoint.
pub fn upstream_uri(
    authority: Authority,
    original: &Uri,
    meshed: bool,
) -> Result<Uri, http::uri::InvalidUriParts> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if meshed { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
}

/// A connection holding its cluster's connection slot.
pub struct Tracked<T> {
    io: T,
    _slot: Option<ConnectionSlot>,
}

impl<T> Connection for Tracked<T> {
    fn connected(&self) -> Connected {
        Connected::new()
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

/// A connection to an upstream, plain TCP or mTLS, behind one type: each
/// HTTP client is compiled once for both (the binary's size is most of an
/// idle sidecar's RSS).
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpstreamIo for T {}
pub type BoxedIo = Box<dyn UpstreamIo>;

type Connecting = Pin<Box<dyn Future<Output = io::Result<Tracked<TokioIo<BoxedIo>>>> + Send>>;

/// hyper's connector: plain TCP to an endpoint without a sidecar (or to
/// the local app); with `tls`, HTTP/1.1 over mTLS to a peer sidecar
/// (upgrades).
#[derive(Clone, Default)]
pub struct Connector {
    pub tls: Option<Arc<MeshTls>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = Tracked<TokioIo<BoxedIo>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let target = current_target();
        Box::pin(async move {
            let tls = tls.as_deref().map(|t| (t, Alpn::Http1));
            let (io, slot) = connect(&target?, tls).await?;
            Ok(Tracked {
                io: TokioIo::new(io),
                _slot: slot,
            })
        })
    }
}

/// A connection to `target` under its cluster's connect timeout and
/// `max_connections` (the slot is held as long as the connection): with
/// `tls`, mTLS speaking that ALPN to the sidecar there, which must present
/// the identity the target names; else plain TCP.
pub(crate) async fn connect(
    target: &ConnectTarget,
    tls: Option<(&MeshTls, Alpn)>,
) -> io::Result<(BoxedIo, Option<ConnectionSlot>)> {
    let addr = target.addr;
    let Some((tls, alpn)) = tls else {
        let (tcp, slot) = connect_plain(target).await?;
        return Ok((Box::new(tcp), slot));
    };
    let expected = target.identity.clone().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no identity known for {addr}"),
        )
    })?;
    let slot = target.admit()?;
    let stream = tls.connect(addr, &expected, alpn, target.timeout()).await?;
    Ok((Box::new(stream), slot))
}

/// A plain TCP connection to `target` under its cluster's connect timeout
/// and `max_connections` (the slot is held as long as the connection).
pub(crate) async fn connect_plain(
    target: &ConnectTarget,
) -> io::Result<(TcpStream, Option<ConnectionSlot>)> {
    let addr = target.addr;
    let timeout = target.timeout();
    let slot = target.admit()?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            )
        })??;
    let _ = tcp.set_nodelay(true);
    Ok((tcp, slot))
}

/// The pools: HTTP/1.1 keep-alive to plaintext endpoints and HTTP/1.1
/// over mTLS to endpoints with a sidecar for upgrades (a WebSocket takes
/// its connection with it), both hyper's; HTTP/2 (h2c to plaintext
/// endpoints, h2 over mTLS between sidecars) on `h2_client`.
#[derive(Clone)]
pub struct Upstreams {
    pub h1: Client<Connector, RequestBody>,
    pub mesh_h1: Option<Client<Connector, RequestBody>>,
    pub h2: H2Client,
    mesh: bool,
}

/// Why a request got no response from upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    H1(#[source] hyper_util::client::legacy::Error),
    #[error("{0}")]
    H2(#[source] H2Error),
}

impl SendError {
    /// Whether no connection could be had (the request was not sent).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::H1(e) => e.is_connect(),
            SendError::H2(e) => e.is_connect(),
        }
    }
}

impl Upstreams {
    pub fn new(tls: Option<Arc<MeshTls>>) -> Self {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .http1_max_buf_size(MAX_HEAD_BYTES);
        let h1 = b.build(Connector::default());
        let mesh_h1 = tls.clone().map(|tls| b.build(Connector { tls: Some(tls) }));
        // Between sidecars HTTP rides one multiplexed h2 connection.
        Upstreams {
            h1,
            mesh_h1,
            mesh: tls.is_some(),
            h2: H2Client::new(tls),
        }
    }

    /// Whether endpoints with a sidecar are reached over mTLS.
    pub fn has_mesh(&self) -> bool {
        self.mesh
    }

    /// Sends on the pool for this hop (mTLS to a sidecar: h2, or HTTP/1.1
    /// for an upgrade; else h2c or h1); a new connection it needs goes to
    /// `target`.
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
        target: ConnectTarget,
        meshed: bool,
        h2: bool,
    ) -> Result<http::Response<RecvBody>, SendError> {
        if h2 {
            let resp = self
                .h2
                .send(req, &target, meshed && self.mesh)
                .await
                .map_err(SendError::H2)?;
            return Ok(resp.map(RecvBody::H2));
        }
        let sent = match (&self.mesh_h1, meshed) {
            (Some(mesh_h1), true) => mesh_h1.request(req),
            _ => self.h1.request(req),
        };
        let resp = TARGET.scope(target, sent).await.map_err(SendError::H1)?;
        Ok(resp.map(RecvBody::H1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query_and_targets_the_endpoint() {
        let u = upstream_uri(
            crate::host::authority_of(&"10.0.0.7:8080".parse().unwrap()),
            &"/a/b?x=1".parse().unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(u.to_string(), "http://10.0.0.7:8080/a/b?x=1");
    }

    #[tokio::test]
    async fn a_connector_outside_a_request_refuses_instead_of_guessing() {
        use tower::Service;
        let err = Connector::default()
            .call("http://127.0.0.1:1/".parse().unwrap())
            .await
            .err()
            .expect("no target");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn the_request_target_decides_where_a_connection_goes() {
        use tower::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The URI names another port: the connector must use the target.
        let conn = TARGET
            .scope(ConnectTarget::local(addr), async {
                Connector::default()
                    .call("http://127.0.0.1:1/".parse().unwrap())
                    .await
            })
            .await;
        assert!(conn.is_ok(), "{:?}", conn.err());
        assert!(listener.accept().await.is_ok());
    }
}
