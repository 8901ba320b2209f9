//! The control plane's gRPC listener: TLS 1.3 with optional client
//! certificates. Every connection is tagged with the SPIFFE ID its client
//! certificate proves (if any); each service then decides who may call it
//! (`caller::require_*` interceptors). Handshakes run off the accept loop, so a
//! slow or hostile client cannot stall others.

use crate::caller::PeerIdentity;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_FAILURES: &str = "weft_control_tls_handshake_failures_total";

/// An accepted, handshaken connection.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and yields them once the TLS handshake is done.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control-plane accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let certs = tls.get_ref().1.peer_certificates();
                        let peer = PeerIdentity {
                            id: weft_mesh_tls::tls::peer_identity(certs),
                            cert_issued_unix: certs
                                .and_then(|c| c.first())
                                .and_then(|leaf| weft_mesh_tls::svid::inspect(leaf).ok())
                                .map_or(0, |i| {
                                    xds_proto::units::unix_secs(i.not_before)
                                        + weft_certs::ca::BACKDATE.as_secs() as i64
                                }),
                        };
                        let _ = tx.send(Ok(TlsConn { inner: tls, peer })).await;
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        // Closed before a handshake: a TCP probe, not a client.
                        metrics::counter!(HANDSHAKE_FAILURES, "reason" => "eof").increment(1);
                        tracing::debug!(%addr, "connection closed before the TLS handshake");
                    }
                    Ok(Err(e)) => {
                        metrics::counter!(HANDSHAKE_FAILURES, "reason" => "refused").increment(1);
                        tracing::warn!(%addr, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!(HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
                        tracing::warn!(%addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
