//! `weft-benches soak`: a two-sidecar mesh (release binaries, default
//! limits) under steady valid traffic while a rotating set of hostile
//! clients attacks the caller's sidecar: slowloris heads, oversize headers,
//! oversize and stalled bodies, resets mid-request, idle and HTTP/2-preface
//! floods, and a flood of the metrics port. Every loop is bounded in time
//! and count, and only loopback is touched.
//!
//! It prints the sidecars' RSS and open descriptors every 10 s and a
//! summary; it fails if any valid request failed or a sidecar died.

use anyhow::{bail, Context};
use clap::Args;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_testbed::{http_pair, KeepAlive, Mesh};

#[derive(Args)]
pub struct SoakArgs {
    /// How long the soak runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Valid clients (keep-alive), each at most `--rate` requests/s.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 200)]
    rate: u64,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    hostile: AtomicU64,
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    let mut mesh = Mesh::start("soak");
    let (client, server) = http_pair(&mut mesh, "http");
    let pids = [
        ("caller", pid(&mut mesh, "proxy-client-2")?),
        ("callee", pid(&mut mesh, "proxy-server-3")?),
    ];
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    for i in 0..args.clients {
        let (stop, counts) = (stop.clone(), counts.clone());
        let rate = args.rate.max(1);
        threads.push(std::thread::spawn(move || {
            valid_client(i, client.outbound, rate, &stop, &counts)
        }));
    }
    {
        let (stop, counts) = (stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            hostile_clients(client.outbound, client.metrics, &stop, &counts)
        }));
    }
    println!("seconds  ok  failed  hostile  caller_rss_mb  caller_fds  callee_rss_mb  callee_fds");
    let mut samples: Vec<[(f64, usize); 2]> = Vec::new();
    let started = Instant::now();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(10).min(until - Instant::now()));
        let mut row = [(0.0, 0); 2];
        for (slot, (name, p)) in row.iter_mut().zip(pids) {
            *slot = usage(p).with_context(|| format!("the {name} sidecar (pid {p}) is gone"))?;
        }
        println!(
            "{:>7}  {}  {}  {}  {:.1}  {}  {:.1}  {}",
            started.elapsed().as_secs(),
            counts.ok.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
            counts.hostile.load(Ordering::Relaxed),
            row[0].0 / 1e6,
            row[0].1,
            row[1].0 / 1e6,
            row[1].1
        );
        samples.push(row);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // After the attacks: what the sidecars hold once their deadlines passed.
    std::thread::sleep(Duration::from_secs(15));
    let after: Vec<(f64, usize)> = pids
        .iter()
        .map(|(_, p)| usage(*p))
        .collect::<Result<_, _>>()?;
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "\nsummary ({} s, {} valid clients)",
        args.seconds, args.clients
    );
    println!(
        "valid requests: {ok} ok, {failed} failed; hostile connections: {}",
        counts.hostile.load(Ordering::Relaxed)
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        let rss: Vec<f64> = samples.iter().map(|s| s[i].0).collect();
        let fds: Vec<usize> = samples.iter().map(|s| s[i].1).collect();
        println!(
            "{name}: RSS min {:.1} MB, max {:.1} MB, 15 s after {:.1} MB; fds max {}, 15 s after {}",
            rss.iter().cloned().fold(f64::MAX, f64::min) / 1e6,
            rss.iter().cloned().fold(0.0, f64::max) / 1e6,
            after[i].0 / 1e6,
            fds.iter().max().unwrap_or(&0),
            after[i].1
        );
    }
    let _ = server;
    if failed > 0 || ok == 0 {
        bail!("{failed} valid requests failed ({ok} succeeded)");
    }
    Ok(())
}

fn pid(mesh: &mut Mesh, name: &str) -> anyhow::Result<u32> {
    mesh.proc_mut(name)
        .pid()
        .with_context(|| format!("{name} is not running"))
}

/// RSS in bytes and open descriptors of `pid`.
fn usage(pid: u32) -> anyhow::Result<(f64, usize)> {
    let rss = crate::rss_bytes(pid)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

/// Keep-alive GETs and small POSTs at `rate`/s; every answer must be 200.
fn valid_client(i: usize, outbound: SocketAddr, rate: u64, stop: &AtomicBool, counts: &Counts) {
    let mut conn = KeepAlive::new(outbound);
    let gap = Duration::from_micros(1_000_000 / rate);
    let body = format!("valid client {i}");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let reply = if n & 1 == 0 {
            conn.get("/", "server", &[])
        } else {
            conn.send("POST", "/echo", "server", &[], body.as_bytes())
        };
        match reply {
            Ok(r) if r.status == 200 => counts.ok.fetch_add(1, Ordering::Relaxed),
            Ok(r) => {
                eprintln!("valid client {i}: status {} {}", r.status, r.body.trim());
                counts.failed.fetch_add(1, Ordering::Relaxed)
            }
            Err(e) => {
                eprintln!("valid client {i}: {e:#}");
                conn = KeepAlive::new(outbound);
                counts.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        n += 1;
        if let Some(rest) = gap.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// One attack after another, each a bounded burst, until `stop`.
fn hostile_clients(outbound: SocketAddr, metrics: SocketAddr, stop: &AtomicBool, counts: &Counts) {
    type Attack = fn(SocketAddr, SocketAddr) -> usize;
    let attacks: [(&str, Attack); 8] = [
        ("slowloris", slowloris),
        ("header flood", header_flood),
        ("oversize body", oversize_body),
        ("stalled body", stalled_body),
        ("resets", resets),
        ("idle flood", idle_flood),
        ("h2 preface flood", preface_flood),
        ("metrics flood", metrics_flood),
    ];
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (_name, attack) = attacks[round % attacks.len()];
        counts
            .hostile
            .fetch_add(attack(outbound, metrics) as u64, Ordering::Relaxed);
        round += 1;
    }
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    Some(s)
}

/// Holds `conns` for `hold`, then drops them.
fn hold(conns: Vec<TcpStream>, hold: Duration) -> usize {
    let n = conns.len();
    std::thread::sleep(hold);
    drop(conns);
    n
}

/// 100 connections trickling a request head, a header line per second.
fn slowloris(outbound: SocketAddr, _: SocketAddr) -> usize {
    let mut conns: Vec<TcpStream> = (0..100).filter_map(|_| connect(outbound)).collect();
    for c in &mut conns {
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n");
    }
    for second in 0..5 {
        for c in &mut conns {
            let _ = c.write_all(format!("X-Slow-{second}: 1\r\n").as_bytes());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    conns.len()
}

/// 50 requests with a 200 KiB header (431 expected).
fn header_flood(outbound: SocketAddr, _: SocketAddr) -> usize {
    let big = "a".repeat(200 * 1024);
    let mut n = 0;
    for _ in 0..50 {
        if let Some(mut c) = connect(outbound) {
            let _ = c.write_all(
                format!("GET / HTTP/1.1\r\nHost: server\r\nX-Big: {big}\r\n\r\n").as_bytes(),
            );
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
            n += 1;
        }
    }
    n
}

/// 10 uploads promising 1 GiB, each sending 8 MiB and then closing.
fn oversize_body(outbound: SocketAddr, _: SocketAddr) -> usize {
    let chunk = vec![b'x'; 64 * 1024];
    let mut n = 0;
    for _ in 0..10 {
        if let Some(mut c) = connect(outbound) {
            let _ = c.write_all(
                b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 1073741824\r\n\r\n",
            );
            for _ in 0..128 {
                if c.write_all(&chunk).is_err() {
                    break;
                }
            }
            n += 1;
        }
    }
    n
}

/// 50 requests that send 10 of 1,000 promised body bytes and wait.
fn stalled_body(outbound: SocketAddr, _: SocketAddr) -> usize {
    let conns: Vec<TcpStream> = (0..50)
        .filter_map(|_| {
            let mut c = connect(outbound)?;
            c.write_all(
                b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 1000\r\n\r\n0123456789",
            )
            .ok()?;
            Some(c)
        })
        .collect();
    hold(conns, Duration::from_secs(5))
}

/// 200 connections cut (RST) halfway through a request.
fn resets(outbound: SocketAddr, _: SocketAddr) -> usize {
    let mut n = 0;
    for i in 0..200 {
        if let Some(mut c) = connect(outbound) {
            let req: &[u8] = if i & 1 == 0 {
                b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 100\r\n\r\nhalf"
            } else {
                b"GET / HTTP/1.1\r\nHost: ser"
            };
            let _ = c.write_all(req);
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            n += 1;
        }
    }
    n
}

/// 500 connections that never send a byte, held 5 s.
fn idle_flood(outbound: SocketAddr, _: SocketAddr) -> usize {
    hold(
        (0..500).filter_map(|_| connect(outbound)).collect(),
        Duration::from_secs(5),
    )
}

/// 200 connections sending the HTTP/2 preface and SETTINGS, then nothing.
fn preface_flood(outbound: SocketAddr, _: SocketAddr) -> usize {
    let conns = (0..200)
        .filter_map(|_| {
            let mut c = connect(outbound)?;
            c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .ok()?;
            Some(c)
        })
        .collect();
    hold(conns, Duration::from_secs(5))
}

/// 200 silent connections to the metrics port, held 3 s.
fn metrics_flood(_: SocketAddr, metrics: SocketAddr) -> usize {
    hold(
        (0..200).filter_map(|_| connect(metrics)).collect(),
        Duration::from_secs(3),
    )
}
