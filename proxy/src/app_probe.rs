//! The local app's readiness, as the sidecar reports it to the registry: an
//! HTTP GET of `--app-health-path` (2xx and 3xx are ready), or a TCP connect
//! to the app port without one. Probed every interval; the latest result is
//! on a watch channel.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
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
        let stream = tokio::net::TcpStream::connect(self.app)
            .await
            .map_err(|e| e.to_string())?;
        let Some(path) = &self.http_path else {
            return Ok(());
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, self.app.to_string())
            .header(hyper::header::USER_AGENT, "weft-proxy-readiness")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
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
}
