//! End-to-end: sidecars with several data-plane workers (`--workers`):
//! every worker has its own runtime and listening sockets on the same
//! address, the kernel spreads connections over them, and every request
//! still reaches the app.

use std::time::Duration;
use weft_testbed::*;

/// CPU seconds each thread of `pid` named `weft-data-*` has used.
fn extra_worker_cpu(pid: u32) -> Vec<f64> {
    let mut cpu = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = t.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("weft-data-") {
            cpu.push(weft_testbed::procfs::cpu_seconds_in(&dir.join("stat")).unwrap_or(0.0));
        }
    }
    cpu
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
    let cpu = extra_worker_cpu(pid);
    assert_eq!(cpu.len(), 2, "two extra data-plane threads: {cpu:?}");
    assert!(
        cpu.iter().any(|t| *t > 0.0),
        "no extra worker served anything: {cpu:?}"
    );

    // A request still flows after the load (no worker wedged).
    std::thread::sleep(Duration::from_millis(100));
    let (code, body) = http_request(addr, "GET", "/after", "server", &[], b"").expect("after");
    assert_eq!(code, 200, "{body}");
}
