//! The client side of global rate limits: every `LEASE_EVERY` this proxy
//! reports its demand for each global limit to the control plane and sets
//! the leased share as its local bucket's rate. Without a lease for
//! `LEASE_STALE` it falls back to an even share by the last peer count, so
//! no request ever waits on the network.

use crate::clock::clock_ms;
use crate::snapshot::SnapshotHolder;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xds_proto::v1 as pb;

/// How often leases are renewed.
pub const LEASE_EVERY: Duration = Duration::from_millis(200);
/// Without a lease for this long, a proxy falls back to limit / peers.
const LEASE_STALE: Duration = Duration::from_secs(5);

/// Reports demand for this proxy's global limits and applies the shares the
/// control plane leases back. Runs until the process exits.
pub async fn lease_loop(
    snapshot: SnapshotHolder,
    control_plane: weft_mesh_tls::channel::ControlPlane,
    url: String,
    node: pb::Node,
) {
    use xds_proto::v1::rate_limit_quota_client::RateLimitQuotaClient;
    let mut client: Option<RateLimitQuotaClient<tonic::transport::Channel>> = None;
    let mut last = Instant::now();
    let mut last_ok = clock_ms();
    let mut peers: std::collections::HashMap<Arc<str>, u32> = Default::default();
    loop {
        tokio::time::sleep(LEASE_EVERY).await;
        let snap = snapshot.load_full();
        let elapsed = last.elapsed();
        last = Instant::now();
        let demands = snap.rate_limits.take_demands(elapsed);
        if demands.is_empty() {
            continue;
        }
        if client.is_none() {
            client = control_plane
                .connect(&url, Duration::from_secs(2))
                .await
                .ok()
                .map(RateLimitQuotaClient::new);
        }
        let req = pb::LeaseRequest {
            node: Some(node.clone()),
            demands: demands
                .iter()
                .map(|(l, rps)| pb::Demand {
                    limit: l.name.to_string(),
                    requests_per_second: *rps,
                })
                .collect(),
        };
        let reply = match client.as_mut() {
            Some(c) => tokio::time::timeout(Duration::from_secs(1), c.lease(req)).await,
            None => continue,
        };
        match reply {
            Ok(Ok(resp)) => {
                last_ok = clock_ms();
                for lease in resp.into_inner().leases {
                    if let Some((l, _)) = demands.iter().find(|(l, _)| *l.name == *lease.limit) {
                        if let Some(g) = l.leased() {
                            g.set_rate(lease.requests_per_second);
                        }
                        peers.insert(l.name.clone(), lease.peers.max(1));
                    }
                }
            }
            Ok(Err(status)) => {
                tracing::debug!(error = %status, "rate-limit lease refused");
                client = None;
            }
            Err(_) => client = None,
        }
        if clock_ms().saturating_sub(last_ok) > LEASE_STALE.as_millis() as u64 {
            // Control plane out of reach: an even share by the last count.
            for (l, _) in &demands {
                if let Some(g) = l.leased() {
                    let n = peers.get(&l.name).copied().unwrap_or(1);
                    g.set_rate(l.rate / f64::from(n));
                }
            }
        }
    }
}
