//! Mirroring: a copy of a request goes to a shadow backend in the
//! background; its response is read and dropped, and the primary request
//! never waits for it. At most `MAX_IN_FLIGHT` run at once (more are
//! dropped, never queued), each gives up after `TIMEOUT`.

use crate::host::HostGuard;
use crate::http::body::RequestBody;
use crate::http::upstream::{ConnectTarget, Upstreams};
use http::Request;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAX_IN_FLIGHT: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(5);
pub const MIRRORS_TOTAL: &str = "weft_mirror_requests_total";

/// The mirror copies of one listener.
#[derive(Default)]
pub struct Mirrors {
    in_flight: Arc<AtomicUsize>,
}

/// Where a mirror copy goes.
pub struct MirrorTarget {
    pub target: ConnectTarget,
    pub meshed: bool,
    pub h2: bool,
    /// The shadow host's in-flight count, held until the copy ends.
    pub guard: HostGuard,
}

impl Mirrors {
    /// Takes a slot for one more copy; None (counted as dropped) when
    /// `MAX_IN_FLIGHT` are running.
    pub fn admit(&self) -> Option<MirrorSlot> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            count("dropped");
            return None;
        }
        Some(MirrorSlot(self.in_flight.clone()))
    }
}

/// One mirror copy's place among the ones in flight, freed on drop.
pub struct MirrorSlot(Arc<AtomicUsize>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn count(result: &'static str) {
    metrics::counter!(MIRRORS_TOTAL, "result" => result).increment(1);
}

/// Sends `req` to `to` in the background.
pub fn send(upstreams: &Upstreams, slot: MirrorSlot, req: Request<RequestBody>, to: MirrorTarget) {
    let upstreams = upstreams.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let _guard = to.guard;
        let sent = tokio::time::timeout(TIMEOUT, async {
            let resp = upstreams.send(req, to.target, to.meshed, to.h2).await?;
            // Read the body so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            Ok::<_, crate::http::upstream::SendError>(())
        })
        .await;
        count(match sent {
            Ok(Ok(())) => "sent",
            Ok(Err(_)) => "failed",
            Err(_) => "timeout",
        });
    });
}
