//! A minimal RESP2 client for the queue benchmark's Redis Streams side:
//! pipelined commands over one TCP connection, replies parsed fully.

use anyhow::{anyhow, bail, Context};
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

pub struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    out: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("redis at {addr}"))?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::with_capacity(1 << 16, r),
            w,
            out: Vec::new(),
        })
    }

    /// Queues one command (sent by `flush`).
    pub fn push(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends the queued commands and reads `n` replies; an error reply
    /// fails.
    pub async fn flush(&mut self, n: usize) -> anyhow::Result<Vec<Reply>> {
        self.w.write_all(&self.out).await?;
        self.out.clear();
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(self.read().await?);
        }
        Ok(replies)
    }

    pub async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.push(args);
        self.flush(1)
            .await?
            .pop()
            .ok_or_else(|| anyhow!("no reply"))
    }

    fn read(&mut self) -> Pin<Box<dyn Future<Output = anyhow::Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            if self.r.read_line(&mut line).await? == 0 {
                bail!("redis closed the connection");
            }
            let line = line.trim_end();
            let (kind, rest) = line.split_at(1.min(line.len()));
            match kind {
                "+" => Ok(Reply::Simple(rest.to_string())),
                "-" => bail!("redis: {rest}"),
                ":" => Ok(Reply::Int(rest.parse()?)),
                "$" => {
                    let n: i64 = rest.parse()?;
                    if n < 0 {
                        return Ok(Reply::Bulk(None));
                    }
                    let mut buf = vec![0; n as usize + 2];
                    self.r.read_exact(&mut buf).await?;
                    buf.truncate(n as usize);
                    Ok(Reply::Bulk(Some(buf)))
                }
                "*" => {
                    let n: i64 = rest.parse()?;
                    if n < 0 {
                        return Ok(Reply::Array(None));
                    }
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read().await?);
                    }
                    Ok(Reply::Array(Some(items)))
                }
                other => bail!("unexpected RESP type {other:?} in {line:?}"),
            }
        })
    }
}

/// The entry ids of an XREADGROUP reply.
pub fn stream_ids(reply: &Reply) -> Vec<Vec<u8>> {
    let Reply::Array(Some(streams)) = reply else {
        return Vec::new();
    };
    streams
        .iter()
        .filter_map(|s| match s {
            Reply::Array(Some(parts)) => parts.get(1),
            _ => None,
        })
        .flat_map(|entries| match entries {
            Reply::Array(Some(es)) => es.clone(),
            _ => Vec::new(),
        })
        .filter_map(|e| match e {
            Reply::Array(Some(parts)) => match parts.first() {
                Some(Reply::Bulk(Some(id))) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
