//! Sidecar-to-sidecar mTLS. Outbound, a connection to an endpoint that has a
//! sidecar is TLS 1.3 with this workload's certificate, and the peer must
//! present exactly the SPIFFE ID the control plane gave for that endpoint.
//! Inbound, every connection must present a certificate chaining to the
//! current trust bundle; ALPN says what follows (h2 for HTTP, `http/1.1` for
//! an HTTP/1.1 upgrade such as a WebSocket, `weft-tcp` for opaque bytes), so
//! the inbound side never sniffs.
//!
//! TLS is terminated with tokio-rustls directly (not through an L7 engine's
//! TLS support) so the certificate can be swapped per handshake and the peer
//! identity checked before a byte of the request is sent.

use crate::identity::WorkloadIdentity;
use crate::policy::authz::Peer;
use rustls::{ClientConfig, ServerConfig};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use weft_mesh_tls::tls::{self, ALPN_H2, ALPN_HTTP1, ALPN_TCP};

pub const HANDSHAKES: &str = "weft_mtls_handshakes_total";
/// The header carrying the caller's verified identity to the app. Any copy a
/// client sends is removed first, so it cannot be forged.
pub const PEER_IDENTITY_HEADER: &str = "x-weft-peer-identity";

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a peer speaks after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    /// HTTP/1.1 on a connection of its own: upgrades (WebSocket), which
    /// HTTP/2 cannot carry as they are.
    Http1,
    Tcp,
}

pub struct MeshTls {
    identity: Arc<WorkloadIdentity>,
    client_h2: Arc<ClientConfig>,
    client_http1: Arc<ClientConfig>,
    client_tcp: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn counted(direction: &'static str, result: &'static str) {
    metrics::counter!(HANDSHAKES, "direction" => direction, "result" => result).increment(1);
}

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

impl MeshTls {
    pub fn new(identity: Arc<WorkloadIdentity>) -> Result<Self, tls::TlsError> {
        let cert = identity.cert.clone();
        let bundle = identity.bundle.clone();
        Ok(MeshTls {
            client_h2: tls::client_config(Some(cert.clone()), bundle.clone(), &[ALPN_H2])?,
            client_http1: tls::client_config(Some(cert.clone()), bundle.clone(), &[ALPN_HTTP1])?,
            client_tcp: tls::client_config(Some(cert.clone()), bundle.clone(), &[ALPN_TCP])?,
            server: tls::server_config(cert, bundle, true, &[ALPN_H2, ALPN_HTTP1, ALPN_TCP])?,
            identity,
        })
    }

    /// Connects to the sidecar at `addr`, which must present `expected`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: &str,
        alpn: Alpn,
        connect_timeout: Duration,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        if !self.identity.has_certificate() {
            counted("outbound", "no_certificate");
            return Err(err(
                io::ErrorKind::NotConnected,
                "no workload certificate yet".into(),
            ));
        }
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                err(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out"),
                )
            })??;
        let _ = tcp.set_nodelay(true);
        let config = match alpn {
            Alpn::H2 => self.client_h2.clone(),
            Alpn::Http1 => self.client_http1.clone(),
            Alpn::Tcp => self.client_tcp.clone(),
        };
        let tls = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(config).connect(tls::mesh_server_name(), tcp),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                counted("outbound", "refused");
                tracing::warn!(%addr, error = %e, "mTLS handshake with peer failed");
                return Err(e);
            }
            Err(_) => {
                counted("outbound", "timeout");
                return Err(err(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake with {addr} timed out"),
                ));
            }
        };
        let presented = tls::peer_identity(tls.get_ref().1.peer_certificates());
        match presented {
            Some(id) if id.to_string() == expected => {
                counted("outbound", "ok");
                Ok(tls)
            }
            other => {
                counted("outbound", "identity_mismatch");
                let got = other
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "no identity".into());
                tracing::warn!(%addr, %expected, presented = %got, "peer is not allowed to serve this destination");
                Err(err(
                    io::ErrorKind::PermissionDenied,
                    format!("{addr} presented {got}, expected {expected}"),
                ))
            }
        }
    }

    /// Completes an inbound handshake; returns the stream, the verified peer
    /// identity and what it will speak.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Arc<Peer>, Alpn)> {
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(self.server.clone()).accept(tcp),
        )
        .await;
        let tls = match accepted {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                // Plaintext, a certificate from another CA, an expired one:
                // each ends here, with rustls' reason.
                counted("inbound", "refused");
                tracing::warn!(%peer, error = %e, "inbound mTLS handshake refused");
                return None;
            }
            Err(_) => {
                counted("inbound", "timeout");
                tracing::warn!(%peer, "inbound mTLS handshake timed out");
                return None;
            }
        };
        let conn = tls.get_ref().1;
        let identity = tls::peer_identity(conn.peer_certificates())?;
        if weft_mesh_tls::identities::is_reserved(&identity) {
            // The admin (or control-plane) credential is not a workload.
            counted("inbound", "reserved_identity");
            tracing::warn!(%peer, %identity, "inbound mTLS caller holds a reserved mesh identity; closing");
            return None;
        }
        let alpn = match conn.alpn_protocol() {
            Some(p) if p == ALPN_H2 => Alpn::H2,
            Some(p) if p == ALPN_HTTP1 => Alpn::Http1,
            Some(p) if p == ALPN_TCP => Alpn::Tcp,
            _ => {
                counted("inbound", "no_alpn");
                tracing::warn!(%peer, %identity, "inbound mTLS connection without a mesh ALPN; closing");
                return None;
            }
        };
        counted("inbound", "ok");
        Some((tls, Arc::new(Peer::new(identity)), alpn))
    }
}
