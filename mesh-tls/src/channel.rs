//! gRPC channels to the control plane over mTLS: TCP, then a rustls
//! handshake verified with the mesh verifier, then tonic's HTTP/2.

use crate::tls::{client_config, CertSlot, TlsError, TrustBundle, ALPN_H2};
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("bad control plane address \"{0}\": expected host:port or https://host:port")]
    Address(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach the control plane at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// "https://h:p", "http://h:p" or "h:p" → the URI tonic is given (tonic
/// speaks HTTP/2 over the TLS stream this module makes, so the scheme it sees
/// is http).
fn endpoint(addr: &str) -> Result<Endpoint, ChannelError> {
    let bare = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    if bare.is_empty() || bare.contains('/') {
        return Err(ChannelError::Address(addr.to_string()));
    }
    Endpoint::from_shared(format!("http://{bare}"))
        .map_err(|_| ChannelError::Address(addr.to_string()))
}

fn connector(
    config: Arc<ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(15012);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(crate::tls::mesh_server_name(), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

/// How to reach the control plane.
#[derive(Clone)]
pub enum ControlPlane {
    /// Plaintext, unauthenticated (`--insecure-dev` only).
    Insecure,
    /// TLS verified against `bundle`, presenting `cert` when given.
    Tls {
        cert: Option<Arc<CertSlot>>,
        bundle: Arc<TrustBundle>,
    },
}

impl ControlPlane {
    pub fn mtls(cert: Arc<CertSlot>, bundle: Arc<TrustBundle>) -> Self {
        ControlPlane::Tls {
            cert: Some(cert),
            bundle,
        }
    }

    pub fn tls_no_client_cert(bundle: Arc<TrustBundle>) -> Self {
        ControlPlane::Tls { cert: None, bundle }
    }

    /// Connects now (fails fast when the control plane is unreachable or
    /// its certificate is not trusted). HTTP/2 keepalives detect a dead
    /// control plane within ~15 s.
    pub async fn connect(&self, addr: &str, timeout: Duration) -> Result<Channel, ChannelError> {
        let ep = endpoint(addr)?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let connected = match self {
            ControlPlane::Insecure => ep.connect().await,
            ControlPlane::Tls { cert, bundle } => {
                let config = client_config(cert.clone(), bundle.clone(), &[ALPN_H2])?;
                ep.connect_with_connector(connector(config)).await
            }
        };
        connected.map_err(|source| ChannelError::Connect {
            addr: addr.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_or_without_a_scheme_are_accepted() {
        for a in [
            "https://127.0.0.1:15012",
            "http://10.0.0.1:1",
            "cp.local:15012",
        ] {
            assert!(endpoint(a).is_ok(), "{a}");
        }
        assert!(endpoint("https://h:1/path").is_err());
        assert!(endpoint("").is_err());
    }
}
