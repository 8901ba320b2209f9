//! HTTP/1.1 upgrades (WebSocket and friends): the client's side is taken
//! before the request is forwarded; when the upstream answers 101 the two
//! upgraded connections are spliced byte for byte.

use crate::http::body::RecvBody;
use crate::metrics::{UPGRADES, UPGRADE_BYTES};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The client's half of an upgrade, taken before the request is consumed.
pub fn client_side(req: &mut http::Request<RecvBody>, upgrade: bool) -> Option<OnUpgrade> {
    upgrade.then(|| hyper::upgrade::on(req))
}

/// If the upstream switched protocols, splices it with the client (in the
/// background) and returns true; the 101 response is then passed on as is.
/// `direction`: the listener ("inbound"/"outbound"), for the metrics.
pub fn splice_if_switched<B>(
    client: Option<OnUpgrade>,
    resp: &mut http::Response<B>,
    direction: &'static str,
) -> bool {
    match client {
        Some(client) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            let upstream = hyper::upgrade::on(resp);
            tokio::spawn(splice(client, upstream, direction));
            true
        }
        _ => false,
    }
}

async fn splice(client: OnUpgrade, upstream: OnUpgrade, direction: &'static str) {
    let ended = |result: &'static str| {
        metrics::counter!(UPGRADES, "direction" => direction, "result" => result).increment(1);
    };
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(direction, error = %e, "upgrade failed");
            ended("failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((from_client, to_client)) => {
            metrics::counter!(UPGRADE_BYTES, "direction" => direction, "flow" => "from_client")
                .increment(from_client);
            metrics::counter!(UPGRADE_BYTES, "direction" => direction, "flow" => "to_client")
                .increment(to_client);
            ended("closed");
        }
        Err(e) => {
            tracing::debug!(direction, error = %e, "upgraded connection ended with error");
            ended("error");
        }
    }
}
