//! The local app's readiness, as the sidecar reports it to the registry: an
//! HTTP GET of `--app-health-path` (2xx and 3xx are ready), or a TCP connect
//! to the app port without one. Probed every interval; the latest result is
//! on a watch channel.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use xds_proto::app_probe::AppProbe as KubeletProbe;
use xds_proto::v1 as pb;

/// A probe result: health and, when not passing, why.
pub type Readiness = (pb::Health, String);

#[derive(Debug, Clone)]
pub struct AppProbe {
    pub app: SocketAddr,
    /// HTTP path to GET; None: TCP connect.
    pub http_path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl AppProbe {
    /// Probes once now, then every interval, until the receiver is gone.
    pub fn start(self) -> watch::Receiver<Readiness> {
        let (tx, rx) = watch::channel((pb::Health::Passing, String::new()));
        tokio::spawn(async move {
            loop {
                let result = self.probe().await;
                let health = match result {
                    Ok(()) => (pb::Health::Passing, String::new()),
                    Err(e) => (pb::Health::Critical, e),
                };
                let changed = *tx.borrow() != health;
                if changed {
                    tracing::info!(health = ?health.0, reason = %health.1, "app readiness changed");
                    metrics::counter!("weft_app_readiness_changes_total").increment(1);
                    if tx.send(health).is_err() {
                        return;
                    }
                } else if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(self.interval).await;
            }
        });
        rx
    }

    pub async fn probe(&self) -> Result<(), String> {
        let what = match &self.http_path {
            Some(p) => format!("readiness probe GET {p}"),
            None => format!("readiness probe TCP {}", self.app),
        };
        match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.timeout)),
        }
    }

    async fn attempt(&self) -> Result<(), String> {
        match &self.http_path {
            Some(path) => http_get(self.app, path, None, &[]).await,
            None => tokio::net::TcpStream::connect(self.app)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Runs, against the app on loopback, a probe the kubelet would have run
/// (the injector points the kubelet at `/app-health/...` on the metrics
/// port instead, see `xds_proto::app_probe`).
pub async fn kubelet_probe(probe: &KubeletProbe, timeout: Duration) -> Result<(), String> {
    let app = |port: u16| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let attempt = async {
        match probe {
            KubeletProbe::Http {
                port,
                path,
                https,
                host,
                headers,
            } => {
                if *https {
                    https_get(app(*port), path, host.as_deref(), headers).await
                } else {
                    http_get(app(*port), path, host.as_deref(), headers).await
                }
            }
            KubeletProbe::Tcp { port } => tokio::net::TcpStream::connect(app(*port))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            KubeletProbe::Grpc { port, service } => {
                grpc_check(app(*port), service.as_deref().unwrap_or_default()).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// GET `path` on the app over HTTP/1.1: 2xx and 3xx pass, as the kubelet
/// judges.
async fn http_get(
    app: SocketAddr,
    path: &str,
    host: Option<&str>,
    headers: &[(String, String)],
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(app)
        .await
        .map_err(|e| e.to_string())?;
    get(
        hyper_util::rt::TokioIo::new(stream),
        app,
        path,
        host,
        headers,
    )
    .await
}

/// `http_get` over TLS, accepting whatever certificate the app presents,
/// as the kubelet's HTTPS probes do.
async fn https_get(
    app: SocketAddr,
    path: &str,
    host: Option<&str>,
    headers: &[(String, String)],
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(app)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(app.ip().into());
    let tls = tokio_rustls::TlsConnector::from(probe_tls()?)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    get(hyper_util::rt::TokioIo::new(tls), app, path, host, headers).await
}

async fn get<I>(
    io: I,
    app: SocketAddr,
    path: &str,
    host: Option<&str>,
    headers: &[(String, String)],
) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header(
            hyper::header::HOST,
            host.map_or_else(|| app.to_string(), str::to_string),
        )
        .header(hyper::header::USER_AGENT, "weft-proxy-probe");
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Drain a little of the body so the app sees a clean exchange.
    let _ = tokio::time::timeout(Duration::from_millis(100), resp.into_body().collect()).await;
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// The TLS client for HTTPS app probes: the kubelet does not verify the
/// app's certificate, so neither does its stand-in (handshake signatures
/// are still checked). Used for nothing else.
fn probe_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = weft_mesh_tls::tls::provider();
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(c))
        })
        .clone()
}

/// Accepts any server certificate; verifies handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// grpc.health.v1 Check over h2c.
async fn grpc_check(app: SocketAddr, service: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(app)
        .await
        .map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{app}{}", crate::health::GRPC_CHECK_PATH))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(hyper::header::USER_AGENT, "weft-proxy-probe")
        .body(http_body_util::Full::new(crate::health::grpc_check_body(
            service,
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    crate::health::grpc_check_verdict(resp).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn app(status: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr
    }

    fn probe(app: SocketAddr, path: Option<&str>) -> AppProbe {
        AppProbe {
            app,
            http_path: path.map(str::to_string),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_2xx_and_names_the_status_otherwise() {
        assert!(probe(app("200 OK").await, Some("/ready"))
            .probe()
            .await
            .is_ok());
        let e = probe(app("503 Service Unavailable").await, Some("/ready"))
            .probe()
            .await
            .unwrap_err();
        assert_eq!(e, "readiness probe GET /ready: status 503");
    }

    #[tokio::test]
    async fn a_tcp_probe_fails_when_nothing_listens() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(probe(addr, None).probe().await.is_ok());
        drop(l);
        let e = probe(addr, None).probe().await.unwrap_err();
        assert!(e.starts_with("readiness probe TCP"), "{e}");
    }

    /// An app that answers 302 only when the probe's Host and header
    /// arrive as the kubelet would have sent them.
    async fn picky_app() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let ok = req.starts_with("get /healthz?full=1 ")
                    && req.contains("host: web.local\r\n")
                    && req.contains("x-probe: kubelet\r\n");
                let status = if ok { "302 Found" } else { "400 Bad Request" };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr
    }

    struct Health;

    #[tonic::async_trait]
    impl xds_proto::health::v1::health_server::Health for Health {
        async fn check(
            &self,
            req: tonic::Request<xds_proto::health::v1::HealthCheckRequest>,
        ) -> Result<tonic::Response<xds_proto::health::v1::HealthCheckResponse>, tonic::Status>
        {
            use xds_proto::health::v1::health_check_response::ServingStatus;
            let status = match req.into_inner().service.as_str() {
                "down" => ServingStatus::NotServing,
                "" | "web" => ServingStatus::Serving,
                _ => return Err(tonic::Status::not_found("unknown service")),
            };
            Ok(tonic::Response::new(
                xds_proto::health::v1::HealthCheckResponse {
                    status: status as i32,
                },
            ))
        }
    }

    #[tokio::test]
    async fn kubelet_probes_run_against_the_app_as_the_kubelet_would() {
        let web = picky_app().await;
        let http = |path: &str, host: Option<&str>| KubeletProbe::Http {
            port: web.port(),
            path: path.into(),
            https: false,
            host: host.map(str::to_string),
            headers: vec![("X-Probe".into(), "kubelet".into())],
        };
        let t = Duration::from_secs(2);
        kubelet_probe(&http("/healthz?full=1", Some("web.local")), t)
            .await
            .expect("3xx passes with the probe's host and headers");
        let e = kubelet_probe(&http("/healthz?full=1", None), t)
            .await
            .unwrap_err();
        assert_eq!(e, "status 400");

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(xds_proto::health::v1::health_server::HealthServer::new(
                    Health,
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        let grpc = |service: Option<&str>| KubeletProbe::Grpc {
            port,
            service: service.map(str::to_string),
        };
        kubelet_probe(&grpc(None), t).await.expect("SERVING");
        kubelet_probe(&grpc(Some("web")), t).await.expect("SERVING");
        let e = kubelet_probe(&grpc(Some("down")), t).await.unwrap_err();
        assert!(e.contains("serving status 2"), "{e}");
        let e = kubelet_probe(&grpc(Some("other")), t).await.unwrap_err();
        assert!(e.contains("grpc-status Some(\"5\")"), "{e}");
        kubelet_probe(&KubeletProbe::Tcp { port }, t)
            .await
            .expect("listening");
    }

    /// An HTTPS app with a self-signed certificate nobody trusts, as apps
    /// that terminate their own TLS often have.
    async fn tls_app() -> SocketAddr {
        let ck = rcgen::generate_simple_self_signed(vec!["app.local".to_string()]).unwrap();
        let slot = Arc::new(weft_mesh_tls::tls::CertSlot::new());
        slot.set_pem(&ck.cert.pem(), &ck.signing_key.serialize_pem())
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(weft_mesh_tls::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(slot);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let Ok(mut s) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /tls-ready ");
                let status = if ok {
                    "204 No Content"
                } else {
                    "404 Not Found"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_https_probe_talks_tls_to_the_app_without_trusting_its_certificate() {
        let app = tls_app().await;
        let https = |path: &str, https: bool| KubeletProbe::Http {
            port: app.port(),
            path: path.into(),
            https,
            host: None,
            headers: vec![],
        };
        let t = Duration::from_secs(2);
        kubelet_probe(&https("/tls-ready", true), t)
            .await
            .expect("TLS probe passes");
        assert_eq!(
            kubelet_probe(&https("/other", true), t).await.unwrap_err(),
            "status 404"
        );
        assert!(
            kubelet_probe(&https("/tls-ready", false), t).await.is_err(),
            "plaintext to a TLS port fails"
        );
    }
}
