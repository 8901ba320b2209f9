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

/// The name a TLS connection asks the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNameFrom {
    /// The mesh's fixed name: mesh peers are verified by SPIFFE ID.
    Mesh,
    /// The host in the URI (DNS name or IP), verified the WebPKI way: etcd
    /// members and other servers outside the mesh.
    UriHost,
}

/// A tonic connector: TCP to the URI's host and port (`default_port` when
/// it has none), then TLS with `config`, asking for the name `name` says.
pub fn tls_connector(
    config: Arc<ClientConfig>,
    name: ServerNameFrom,
    default_port: u16,
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
            let port = uri.port_u16().unwrap_or(default_port);
            let server_name = match name {
                ServerNameFrom::Mesh => crate::tls::mesh_server_name(),
                ServerNameFrom::UriHost => rustls_pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_string(),
                )
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            };
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
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

    /// Connects now to one of `addrs`: a comma-separated list of replicas,
    /// each `host:port` (a name resolving to several addresses counts as
    /// several), tried from the one this process last reached through the
    /// same list (so a sidecar's certificate renewal goes to the replica its
    /// discovery stream is on, which asked for it), else from a random one
    /// so clients spread over the replicas, and past those that do not
    /// answer. Fails fast when none is reachable or trusted. HTTP/2
    /// keepalives detect a dead control plane within ~15 s; the caller then
    /// connects again (to another replica).
    pub async fn connect(&self, addrs: &str, timeout: Duration) -> Result<Channel, ChannelError> {
        let candidates = candidates(addrs).await;
        if candidates.len() <= 1 {
            return self.connect_one(addrs.trim(), timeout).await;
        }
        let previous = last_reached()
            .lock()
            .ok()
            .and_then(|m| m.get(addrs).cloned());
        let start = match previous.and_then(|a| candidates.iter().position(|c| *c == a)) {
            Some(i) => i,
            None => {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish() as usize
            }
        };
        let mut last = None;
        for i in 0..candidates.len() {
            let a = &candidates[(start + i) % candidates.len()];
            match self.connect_one(a, timeout).await {
                Ok(ch) => {
                    if let Ok(mut m) = last_reached().lock() {
                        m.insert(addrs.to_string(), a.clone());
                    }
                    return Ok(ch);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ChannelError::Address(addrs.to_string())))
    }

    async fn connect_one(&self, addr: &str, timeout: Duration) -> Result<Channel, ChannelError> {
        let ep = endpoint(addr)?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let connected = match self {
            ControlPlane::Insecure => ep.connect().await,
            ControlPlane::Tls { cert, bundle } => {
                let config = client_config(cert.clone(), bundle.clone(), &[ALPN_H2])?;
                ep.connect_with_connector(tls_connector(config, ServerNameFrom::Mesh, 15012))
                    .await
            }
        };
        connected.map_err(|source| ChannelError::Connect {
            addr: addr.to_string(),
            source,
        })
    }
}

/// The replica each list of replicas was last reached at, in this process.
fn last_reached() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static LAST: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    LAST.get_or_init(Default::default)
}

/// The addresses `addrs` names: each comma-separated entry, and each
/// address a host name in it resolves to.
async fn candidates(addrs: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let bare = entry
            .strip_prefix("https://")
            .or_else(|| entry.strip_prefix("http://"))
            .unwrap_or(entry)
            .trim_end_matches('/');
        let is_ip = bare.rsplit_once(':').is_some_and(|(h, _)| {
            h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
        });
        if is_ip {
            out.push(entry.to_string());
            continue;
        }
        match tokio::net::lookup_host(bare).await {
            Ok(resolved) => {
                let before = out.len();
                out.extend(resolved.map(|a| a.to_string()));
                if out.len() == before {
                    out.push(entry.to_string());
                }
            }
            Err(_) => out.push(entry.to_string()),
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_list_of_replicas_and_names_expand_to_every_address() {
        assert_eq!(
            candidates("https://127.0.0.1:1, 127.0.0.2:2,").await,
            vec!["https://127.0.0.1:1", "127.0.0.2:2"]
        );
        let local = candidates("localhost:15012").await;
        assert!(
            local
                .iter()
                .any(|a| a == "127.0.0.1:15012" || a == "[::1]:15012"),
            "{local:?}"
        );
    }

    #[tokio::test]
    async fn connecting_skips_replicas_that_do_not_answer() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            // Accept and hold: enough for an HTTP/2 client to see a peer.
            let mut held = Vec::new();
            while let Ok((s, _)) = live.accept().await {
                held.push(s);
            }
        });
        let both = format!("{dead_addr},{live_addr}");
        // Whichever it starts at, it ends on the live one (or fails only
        // because the held socket never speaks HTTP/2; not because of the
        // dead one).
        for _ in 0..4 {
            match ControlPlane::Insecure
                .connect(&both, Duration::from_millis(500))
                .await
            {
                Ok(_) => {}
                Err(ChannelError::Connect { addr, .. }) => assert_ne!(addr, dead_addr.to_string()),
                Err(e) => panic!("{e}"),
            }
        }
    }

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
