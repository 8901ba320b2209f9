//! Small HTTP/1.1 clients for tests: one request on a fresh connection,
//! curl, and a kept-alive connection for thousands of requests.

use anyhow::{anyhow, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// An HTTP/1.1 request line and headers, ending with the blank line.
fn request_head(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body_len: usize,
    keep_alive: bool,
) -> String {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body_len}\r\n");
    if !keep_alive {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A minimal HTTP/1.1 client over a fresh connection (`Connection: close`).
/// Returns (status, body as text). Used where curl would be too slow.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = request_head(method, path, host, headers, body.len(), false);
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header in response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs curl; returns (HTTP status, body). `args` go before the URL.
pub fn curl(args: &[&str], url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl must be installed");
    let stdout = out.stdout;
    let split = stdout.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&stdout[split + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    (code, stdout[..split].to_vec())
}

/// A response read by `KeepAlive`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

const CLOSED_BEFORE_RESPONSE: &str = "connection closed before a response";

/// A minimal HTTP/1.1 client that keeps its connection open between
/// requests (thousands of requests in a test without a connect each), and
/// reconnects when the server closed it.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<std::io::BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        KeepAlive { addr, conn: None }
    }

    pub fn get(
        &mut self,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send("GET", path, host, headers, b"")
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        let reused = self.conn.is_some();
        match self.try_send(method, path, host, headers, body) {
            // A kept-alive connection the server had closed: nothing was
            // answered, one fresh try.
            Err(e) if reused && e.to_string() == CLOSED_BEFORE_RESPONSE => {
                self.try_send(method, path, host, headers, body)
            }
            r => r,
        }
    }

    fn try_send(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        use std::io::BufRead;
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.conn = Some(std::io::BufReader::new(s));
        }
        let result = (|| {
            let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
            let req = request_head(method, path, host, headers, body.len(), true);
            conn.get_mut().write_all(req.as_bytes())?;
            conn.get_mut().write_all(body)?;
            let mut line = String::new();
            if conn.read_line(&mut line)? == 0 {
                bail!(CLOSED_BEFORE_RESPONSE);
            }
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
            let mut headers = Vec::new();
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let mut body = Vec::new();
            if method == "HEAD" || status == 204 || status == 304 {
            } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    line.clear();
                    conn.read_line(&mut line)?;
                    let n = usize::from_str_radix(line.trim(), 16)?;
                    let mut chunk = vec![0; n + 2];
                    conn.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
                body.resize(n, 0);
                conn.read_exact(&mut body)?;
            } else {
                conn.read_to_end(&mut body)?;
                self.conn = None;
            }
            if find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                self.conn = None;
            }
            Ok(Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).to_string(),
            })
        })();
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}
