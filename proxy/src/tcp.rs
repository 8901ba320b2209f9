//! Opaque TCP forwarding: connect to the chosen endpoint and copy bytes both
//! ways until either side closes, counting them.

use crate::metrics::TcpMetrics;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-direction copy buffer. tokio's default (8 KiB) made bulk transfers
/// syscall-bound: iperf3 through the proxy reached 0.27× direct (see
/// benches/RESULTS.md). 64 KiB per direction matches the socket's typical
/// receive window step on loopback and costs 128 KiB per busy connection.
pub const COPY_BUFFER: usize = 64 * 1024;

pub async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    metrics: &TcpMetrics,
) -> std::io::Result<()> {
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {target} timed out"),
            ))
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    metrics.opened.increment(1);
    metrics.active.increment(1.0);
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await;
    metrics.active.decrement(1.0);
    let (up, down) = result?;
    metrics.bytes.increment(up + down);
    Ok(())
}
