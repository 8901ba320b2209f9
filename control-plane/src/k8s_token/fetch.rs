//! One HTTP/1.1 GET of a small document (the JWKS): plain http, or https
//! verified against a CA file (rustls, ring), with an optional bearer
//! token read from a file (the pod's own service-account token, which the
//! API server wants for `/openid/v1/jwks`). Bounded in time and size.

use http_body_util::{BodyExt, Empty, Limited};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BYTES: usize = 1 << 20;

pub async fn get(
    url: &str,
    ca: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Vec<u8>, String> {
    tokio::time::timeout(TIMEOUT, get_inner(url, ca, token_file))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

async fn get_inner(
    url: &str,
    ca: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must be http:// or https://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    let mut req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json");
    if let Some(f) = token_file {
        let token = tokio::fs::read_to_string(f)
            .await
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        req = req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let config = tls_config(ca).await?;
        let name =
            rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| format!("bad host name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(tls, req).await?
    } else {
        send(tcp, req).await?
    };
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(body.to_vec())
}

async fn send<S>(
    io: S,
    req: http::Request<Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

async fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let ca = ca.ok_or("an https JWKS URL needs --k8s-api-ca (the API server's CA)")?;
    let pem = tokio::fs::read(ca)
        .await
        .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
