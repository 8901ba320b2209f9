//! End-to-end: sidecars with several data-plane workers (`--workers`):
//! every worker has its own runtime and listening sockets on the same
//! address, the kernel spreads connections over them, and every request
//! still reaches the app.

use std::time::Duration;
use weft_testbed::*;

/// CPU ticks (user + system) each thread of `pid` named `weft-data-*` has
/// used.
fn extra_worker_ticks(pid: u32) -> Vec<u64> {
    let mut ticks = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = t.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("weft-data-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        // Fields 14 and 15 (utime, stime); `fields` starts at field 3.
        let n = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        ticks.push(n(14).unwrap_or(0) + n(15).unwrap_or(0));
    }
    ticks
}

#[test]
fn requests_on_many_connections_reach_the_app_through_sidecars_with_three_workers_each() {
    let mut mesh = Mesh::start("workers");
    let workers = ["--workers", "3"];
    let (client, _server) = http_pair_with_flags(&mut mesh, "http", &workers, &workers);

    // Each request on a connection of its own, so the kernel picks a
    // worker's socket every time; several threads at once.
    let addr = client.outbound;
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..150 {
                    let path = format!("/hello?t={t}&i={i}");
                    match http_request(addr, "GET", &path, "server", &[], b"") {
                        Ok((200, body)) if body.contains("hello from server") => {}
                        other => failures.push(format!("{path}: {other:?}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The extra workers took their share: 600 connections spread by the
    // kernel leave CPU time on more than the first worker.
    let pid = mesh
        .proc_mut("proxy-client-2")
        .pid()
        .expect("client sidecar running");
    let ticks = extra_worker_ticks(pid);
    assert_eq!(ticks.len(), 2, "two extra data-plane threads: {ticks:?}");
    assert!(
        ticks.iter().any(|t| *t > 0),
        "no extra worker served anything: {ticks:?}"
    );

    // A request still flows after the load (no worker wedged).
    std::thread::sleep(Duration::from_millis(100));
    let (code, body) = http_request(addr, "GET", "/after", "server", &[], b"").expect("after");
    assert_eq!(code, 200, "{body}");
}
