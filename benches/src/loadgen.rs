//! Load generators the harness runs pinned on the load core:
//!
//! - `fixed_rate`: open-loop HTTP/1.1 at a constant rate with coordinated-
//!   omission correction. Every request has an intended send time on a fixed
//!   schedule; latency is measured from that time, so a slow response also
//!   charges the requests queued behind it (what wrk2 and `oha --latency-
//!   correction` do). One OS thread per keep-alive connection, sleeping with
//!   the kernel's high-resolution timers and spinning the last 200 µs, so the
//!   schedule is accurate to a few µs rather than tokio's 1 ms timer wheel.
//! - `grpc`: closed-loop unary gRPC with a fixed number of requests in flight
//!   on one HTTP/2 connection; reports completed requests per second.

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct FixedRateResult {
    pub sent: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) from `s`,
/// reusing `buf`. Returns the status.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| anyhow!("non-UTF-8 header"))?
        .to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line"))?;
    if let Some(len) = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>())
    }) {
        let want = head_end + len?;
        while buf.len() < want {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if head.contains("transfer-encoding: chunked") {
        while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(status)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t <= now {
        return;
    }
    let left = t - now;
    if left > Duration::from_micros(300) {
        std::thread::sleep(left - Duration::from_micros(200));
    }
    while Instant::now() < t {
        std::hint::spin_loop();
        std::thread::yield_now();
    }
}

/// Runs `rate` requests/s for `duration` over `connections` keep-alive
/// connections to `addr`, `GET path` with `Host: host`.
pub fn fixed_rate(
    addr: SocketAddr,
    host: &str,
    path: &str,
    rate: u32,
    duration: Duration,
    connections: u32,
) -> anyhow::Result<FixedRateResult> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let per_conn = (duration.as_secs_f64() / interval.as_secs_f64()) as u64;
    // Warm every connection before the clock starts.
    let mut streams = Vec::new();
    for _ in 0..connections {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::new();
        s.write_all(&request)?;
        let status = read_response(&mut s, &mut buf)?;
        if status != 200 {
            bail!("warm-up request to {addr} got HTTP {status}");
        }
        streams.push(s);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let threads: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let request = request.clone();
            // Stagger connections evenly across one interval.
            let offset = interval.mul_f64(i as f64 / connections as f64);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_conn as usize);
                let mut errors = 0u64;
                let mut buf = Vec::with_capacity(32 * 1024);
                for k in 0..per_conn {
                    let intended = start + offset + interval.mul_f64(k as f64);
                    sleep_until(intended);
                    let ok = s.write_all(&request).is_ok()
                        && matches!(read_response(&mut s, &mut buf), Ok(200));
                    if ok {
                        lat.push(intended.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                        // Reconnect so one failure doesn't fail the rest.
                        match TcpStream::connect(addr) {
                            Ok(n) => {
                                let _ = n.set_nodelay(true);
                                let _ = n.set_read_timeout(Some(Duration::from_secs(10)));
                                s = n;
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, e) = t.join().map_err(|_| anyhow!("load thread panicked"))?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(FixedRateResult {
        sent: all.len() as u64 + errors,
        errors,
        achieved_rps: all.len() as f64 / elapsed,
        p50_us: percentile_us(&all, 0.50),
        p99_us: percentile_us(&all, 0.99),
        p999_us: percentile_us(&all, 0.999),
    })
}

#[derive(Debug, Serialize)]
pub struct GrpcResult {
    pub completed: u64,
    pub errors: u64,
    pub rps: f64,
}

/// Closed-loop unary gRPC: `concurrency` requests in flight on one channel.
pub async fn grpc(
    addr: SocketAddr,
    authority: &str,
    duration: Duration,
    concurrency: u32,
) -> anyhow::Result<GrpcResult> {
    use xds_proto::sample::v1::{echo_client::EchoClient, EchoRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .origin(format!("http://{authority}").parse()?)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect {addr}"))?;
    let deadline = tokio::time::Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = EchoClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err) = (0u64, 0u64);
            while tokio::time::Instant::now() < deadline {
                match client
                    .unary(EchoRequest {
                        message: "bench".into(),
                        count: 1,
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => err += 1,
                }
            }
            (ok, err)
        }));
    }
    let (mut completed, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        completed += o;
        errors += e;
    }
    Ok(GrpcResult {
        completed,
        errors,
        rps: completed as f64 / start.elapsed().as_secs_f64(),
    })
}
