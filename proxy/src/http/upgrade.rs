//! HTTP/1.1 upgrades (WebSocket and friends): the client's side is taken
//! before the request is forwarded; when the upstream answers 101 the two
//! upgraded connections are spliced byte for byte.

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The client's half of an upgrade, taken before the request is consumed.
pub fn client_side(req: &mut http::Request<Incoming>, upgrade: bool) -> Option<OnUpgrade> {
    upgrade.then(|| hyper::upgrade::on(req))
}

/// If the upstream switched protocols, splices it with the client (in the
/// background) and returns true; the 101 response is then passed on as is.
pub fn splice_if_switched(client: Option<OnUpgrade>, resp: &mut http::Response<Incoming>) -> bool {
    match client {
        Some(client) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            let upstream = hyper::upgrade::on(resp);
            tokio::spawn(splice(client, upstream));
            true
        }
        _ => false,
    }
}

async fn splice(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with error");
    }
}
