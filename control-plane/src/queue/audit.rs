//! The queue service's audit log: every admin action and every refused
//! call as one JSON line (time, event, identity, permission or action,
//! queue, detail), appended to `weft-control --audit-log FILE` and also
//! logged (tracing target `weft_audit`) and counted.

use serde::Serialize;
use std::io::Write;
use std::sync::Mutex;
use xds_proto::spiffe::SpiffeId;

/// Admin actions that changed something (purge, redrive), by action.
pub const ADMIN_ACTIONS_TOTAL: &str = "weft_queue_admin_actions_total";

#[derive(Default)]
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
}

#[derive(Serialize)]
struct Line<'a> {
    time_unix_ms: u64,
    event: &'a str,
    identity: String,
    action: &'a str,
    queue: &'a str,
    detail: &'a str,
}

impl Audit {
    /// Appends to `path` (created if missing).
    pub fn to_file(path: &std::path::Path) -> std::io::Result<Audit> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
        })
    }

    /// A refused call (`action` is the permission asked for).
    pub fn refused(&self, caller: Option<&SpiffeId>, action: &str, queue: &str, why: &str) {
        self.write("queue_access_denied", caller, action, queue, why);
    }

    /// An admin action that was carried out.
    pub fn admin(
        &self,
        caller: Option<&SpiffeId>,
        action: &'static str,
        queue: &str,
        detail: &str,
    ) {
        metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => action).increment(1);
        self.write("queue_admin", caller, action, queue, detail);
    }

    fn write(
        &self,
        event: &str,
        caller: Option<&SpiffeId>,
        action: &str,
        queue: &str,
        detail: &str,
    ) {
        let identity = caller.map_or_else(|| "(insecure-dev)".to_string(), SpiffeId::to_string);
        tracing::info!(target: "weft_audit", event, identity = %identity, action, queue, detail);
        let Some(file) = &self.file else { return };
        let line = Line {
            time_unix_ms: xds_proto::units::unix_ms(std::time::SystemTime::now()),
            event,
            identity,
            action,
            queue,
            detail,
        };
        let Ok(mut json) = serde_json::to_vec(&line) else {
            return;
        };
        json.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&json) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
}
