//! Multi-core: weft-proxy `--workers N` beside HAProxy `nbthread N` and
//! Envoy `--concurrency N`, one hop HTTP/1.1 with 100 B responses, each
//! pinned to cores 0..N-1, N = 1, 2, 4, 8 up to the machine's cores. The
//! load (wrk, one thread, 64 connections) and the upstream stay on the
//! load core, so where N reaches it they share it: requests per proxy
//! CPU-second (requests ÷ the proxy's user + system time from /proc) is
//! the figure that compares, and its ratio to N = 1 says whether workers
//! contend with each other.

use crate::contenders::Contenders;
use crate::cpu_seconds;
use crate::report::Results;
use crate::scenarios::Plan;
use std::net::SocketAddr;

/// 127.0.0.x addresses of the contenders started here (clear of the
/// harness's own 1..=8).
const FIRST_ADDRESS: u8 = 20;

pub fn run(c: &mut Contenders, plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    if !plan.want("workers") {
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let counts: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|n| *n <= cores).collect();
    for (i, n) in counts.into_iter().enumerate() {
        let set = if n == 1 {
            "0".to_string()
        } else {
            format!("0-{}", n - 1)
        };
        let last = FIRST_ADDRESS + 3 * i as u8;
        let (pid, addr) = c.spawn_client_sidecar(n, &set, last)?;
        measure(c, results, "weft", n, pid, addr, "bench")?;
        let (pid, addr) = c.spawn_haproxy(n, &set, last + 1)?;
        measure(c, results, "haproxy", n, pid, addr, "bench")?;
        if let Some((pid, addr)) = c.spawn_envoy(n, &set, last + 2)? {
            measure(c, results, "envoy", n, pid, addr, "bench")?;
        }
    }
    Ok(())
}

/// One wrk run against `addr`: requests/s, and requests per CPU-second
/// of `pid`.
fn measure(
    c: &Contenders,
    results: &mut Results,
    name: &str,
    n: usize,
    pid: u32,
    addr: SocketAddr,
    host: &str,
) -> anyhow::Result<()> {
    let contender = format!("{name}-{n}");
    eprintln!("  workers {contender}");
    let url = format!("http://{addr}/bytes?n=100");
    let before = cpu_seconds(pid)?;
    let rps = c.env.wrk(&url, host)?;
    let cpu = cpu_seconds(pid)? - before;
    results.add("workers", &contender, "rps", "req/s", rps);
    // wrk runs for whole seconds (`-d`).
    let requests = rps * c.env.seconds.ceil();
    if cpu > 0.0 {
        results.add(
            "workers",
            &contender,
            "rps_per_cpu_s",
            "req/cpu-s",
            requests / cpu,
        );
    }
    Ok(())
}
