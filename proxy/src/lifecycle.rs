//! Commands a pod's lifecycle hooks run beside a legacy (non-native)
//! sidecar, talking to the running proxy's admin port (`WEFT_ADMIN`,
//! default 127.0.0.1:15000):
//!
//! - `weft-proxy wait` (postStart): returns once the proxy is ready, so
//!   the kubelet starts the app containers after it
//!   (`WEFT_WAIT_TIMEOUT_SECS`, default 120; exit 1 on timeout);
//! - `weft-proxy drain` (preStop): asks the proxy to deregister and drain.

use anyhow::Context;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn admin() -> anyhow::Result<SocketAddr> {
    let admin = std::env::var("WEFT_ADMIN").unwrap_or_else(|_| "127.0.0.1:15000".into());
    admin
        .parse()
        .with_context(|| format!("WEFT_ADMIN {admin} is not an address"))
}

/// One request to the admin port; (status, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot reach the proxy's admin port {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.take(64 * 1024).read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

pub fn drain() -> anyhow::Result<()> {
    let (status, body) = request(admin()?, "POST", "/drain")?;
    anyhow::ensure!(status == 202, "drain refused: {status} {}", body.trim());
    print!("{body}");
    Ok(())
}

pub fn wait() -> anyhow::Result<()> {
    let addr = admin()?;
    let timeout = std::env::var("WEFT_WAIT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match request(addr, "GET", "/ready") {
            Ok((200, _)) => {
                println!("weft-proxy is ready");
                return Ok(());
            }
            Ok((status, body)) => last = format!("{status} {}", body.trim()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    anyhow::bail!("weft-proxy not ready after {timeout:?}: {last}")
}
