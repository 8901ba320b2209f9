//! Opaque TCP forwarding: connect to the chosen endpoint (over mTLS with the
//! `weft-tcp` ALPN when a sidecar fronts it) and move bytes both ways until
//! both sides close, counting them: spliced in the kernel between two
//! plaintext sockets on Linux, copied through user space when TLS is on
//! either side.

#[cfg(target_os = "linux")]
mod splice;

use crate::metrics::TcpMetrics;
use crate::mtls::{Alpn, MeshTls};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-direction copy buffer. tokio's default (8 KiB) made bulk transfers
/// syscall-bound: iperf3 through the proxy reached 0.27× direct (see
/// benches/RESULTS.md). 64 KiB per direction matches the socket's typical
/// receive window step on loopback and costs 128 KiB per busy connection.
pub const COPY_BUFFER: usize = 64 * 1024;

async fn connect_plain(target: SocketAddr) -> std::io::Result<TcpStream> {
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {target} timed out"),
            ))
        }
    };
    let _ = upstream.set_nodelay(true);
    Ok(upstream)
}

/// Forwards `client` to a plaintext `target`.
pub async fn forward(
    client: TcpStream,
    target: SocketAddr,
    metrics: &TcpMetrics,
) -> std::io::Result<()> {
    let upstream = connect_plain(target).await?;
    let _ = client.set_nodelay(true);
    relay_plain(client, upstream, metrics).await
}

/// Relays two plaintext sockets: spliced (no copy through user space) on
/// Linux, copied where pipes are not available.
async fn relay_plain(a: TcpStream, b: TcpStream, metrics: &TcpMetrics) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    match splice::Pipes::new() {
        Ok(pipes) => return counted(metrics, splice::relay(&a, &b, pipes)).await,
        Err(e) => tracing::debug!(error = %e, "no pipe for splice; copying instead"),
    }
    relay(a, b, metrics).await
}

/// Forwards `client` to `target`: over mTLS when `identity` names the
/// sidecar there (and this proxy has mTLS), in plaintext otherwise.
pub async fn forward_to_endpoint(
    client: TcpStream,
    target: SocketAddr,
    identity: Option<&str>,
    mtls: Option<&MeshTls>,
    metrics: &TcpMetrics,
) -> std::io::Result<()> {
    let secured = identity.is_some() && mtls.is_some();
    metrics.security.record(secured);
    match (identity, mtls) {
        (Some(expected), Some(tls)) => {
            let upstream = tls
                .connect(target, expected, Alpn::Tcp, CONNECT_TIMEOUT)
                .await?;
            let _ = client.set_nodelay(true);
            relay(client, upstream, metrics).await
        }
        _ => forward(client, target, metrics).await,
    }
}

/// Copies both ways until both sides close.
pub async fn relay<A, B>(mut a: A, mut b: B, metrics: &TcpMetrics) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER);
    counted(metrics, copy).await
}

/// Runs one relay, counting it open while it runs and its bytes (both
/// directions) when it ends.
async fn counted(
    metrics: &TcpMetrics,
    relay: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
) -> std::io::Result<()> {
    metrics.opened.increment(1);
    metrics.active.increment(1.0);
    let result = relay.await;
    metrics.active.decrement(1.0);
    let (up, down) = result?;
    metrics.bytes.increment(up + down);
    Ok(())
}
