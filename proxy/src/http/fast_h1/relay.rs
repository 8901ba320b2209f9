//! Moving a message body from one socket to the other as it arrives, in the
//! framing its head declared: the bytes are forwarded unchanged, and bytes
//! past the end of the body (a pipelined request) stay in the buffer.

use super::chunked::{BadChunk, ChunkScanner};
use super::head::Framing;
use bytes::{Buf, BytesMut};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read size while relaying a body.
pub const CHUNK: usize = 16 * 1024;

/// The response buffer: a head and a body of this size arrive in one read
/// and leave in one write.
pub const RESPONSE_BUFFER: usize = 32 * 1024;

/// How much of a body is still to come.
#[derive(Debug)]
pub enum Remaining {
    Length(u64),
    Chunked(ChunkScanner),
    /// Until the sender closes.
    Close,
    Done,
}

impl Remaining {
    pub fn new(f: Framing) -> Self {
        match f {
            Framing::Empty | Framing::Length(0) => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(ChunkScanner::default()),
            Framing::Close => Remaining::Close,
        }
    }

    pub fn done(&self) -> bool {
        match self {
            Remaining::Done => true,
            Remaining::Chunked(s) => s.done(),
            _ => false,
        }
    }

    /// How many of the bytes at hand belong to the body (counted as sent).
    pub fn take(&mut self, avail: &[u8]) -> Result<usize, BadChunk> {
        match self {
            Remaining::Done => Ok(0),
            Remaining::Length(n) => {
                let k = (*n).min(avail.len() as u64);
                *n -= k;
                if *n == 0 {
                    *self = Remaining::Done;
                }
                Ok(k as usize)
            }
            Remaining::Chunked(s) => s.scan(avail),
            Remaining::Close => Ok(avail.len()),
        }
    }
}

/// Why a relay stopped before the body ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the sender sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("the sender closed before the body ended")]
    Truncated,
    #[error("reading the body: {0}")]
    Read(io::Error),
    #[error("writing the body: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Framing(#[from] BadChunk),
}

/// Bodies up to this size are copied behind their head and sent with one
/// plain write; larger ones go out with the head in vectored writes.
const COPY_BEHIND_HEAD: usize = 4096;

/// Writes the message head in `head` followed by the body bytes `body`,
/// in one system call when the socket takes it all. `head` is left as it
/// was.
pub async fn write_head(dst: &mut TcpStream, head: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    if body.len() <= COPY_BEHIND_HEAD {
        let len = head.len();
        head.extend_from_slice(body);
        let written = dst.write_all(head).await;
        head.truncate(len);
        return written;
    }
    let (mut at_a, mut at_b) = (0, 0);
    while at_a < head.len() || at_b < body.len() {
        let bufs = [
            io::IoSlice::new(&head[at_a..]),
            io::IoSlice::new(&body[at_b..]),
        ];
        let n = dst.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(head.len() - at_a);
        at_a += from_a;
        at_b += n - from_a;
    }
    Ok(())
}

/// Makes room for one more read.
pub fn room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(CHUNK);
    }
}

/// Reads once more from `src` into `buf`, within `stall` if set; Ok(0) at
/// end of stream.
pub async fn read_more(
    src: &mut TcpStream,
    buf: &mut BytesMut,
    stall: Option<Duration>,
) -> Result<usize, RelayError> {
    room(buf);
    let read = src.read_buf(buf);
    match stall {
        Some(t) => match tokio::time::timeout(t, read).await {
            Ok(r) => r.map_err(RelayError::Read),
            Err(_) => Err(RelayError::Stalled(t)),
        },
        None => read.await.map_err(RelayError::Read),
    }
}

/// Relays the rest of a body (what `rem` says is still to come) from `src`
/// to `dst`, through `buf` (which holds bytes already read from `src`);
/// `stall` bounds each read and each write. Returns the bytes relayed.
pub async fn relay(
    src: &mut TcpStream,
    buf: &mut BytesMut,
    dst: &mut TcpStream,
    rem: &mut Remaining,
    stall: Option<Duration>,
) -> Result<u64, RelayError> {
    let mut sent = 0u64;
    loop {
        if !buf.is_empty() {
            let k = rem.take(buf)?;
            if k > 0 {
                let write = dst.write_all(&buf[..k]);
                match stall {
                    // A receiver that takes nothing for as long as a sender
                    // may stall fails the relay too.
                    Some(t) => tokio::time::timeout(t, write)
                        .await
                        .map_err(|_| RelayError::Write(io::ErrorKind::TimedOut.into()))?,
                    None => write.await,
                }
                .map_err(RelayError::Write)?;
                buf.advance(k);
                sent += k as u64;
            }
        }
        if rem.done() {
            return Ok(sent);
        }
        if read_more(src, buf, stall).await? == 0 {
            return match rem {
                Remaining::Close => {
                    *rem = Remaining::Done;
                    Ok(sent)
                }
                _ => Err(RelayError::Truncated),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_length_body_is_relayed_and_the_next_message_stays_buffered() {
        let (mut client, mut from) = pair().await;
        let (mut to, mut sink) = pair().await;
        client.write_all(b"34567NEXT").await.unwrap();
        let mut buf = BytesMut::from(&b"12"[..]);
        let mut rem = Remaining::new(Framing::Length(7));
        let n = relay(&mut from, &mut buf, &mut to, &mut rem, None)
            .await
            .unwrap();
        assert_eq!(n, 7);
        assert!(rem.done());
        drop(to);
        let mut got = Vec::new();
        sink.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"1234567");
        // NEXT was read with the body or is still on the socket; never sent.
        let mut rest = buf.to_vec();
        drop(client);
        from.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"NEXT");
    }

    #[tokio::test]
    async fn a_body_cut_short_or_stalled_is_an_error() {
        let (client, mut from) = pair().await;
        let (mut to, _sink) = pair().await;
        let mut buf = BytesMut::new();
        let mut rem = Remaining::new(Framing::Length(10));
        drop(client);
        let e = relay(&mut from, &mut buf, &mut to, &mut rem, None).await;
        assert!(matches!(e, Err(RelayError::Truncated)));

        let (_client, mut from) = pair().await;
        let mut rem = Remaining::new(Framing::Chunked);
        let t = Duration::from_millis(50);
        let e = relay(&mut from, &mut buf, &mut to, &mut rem, Some(t)).await;
        assert!(matches!(e, Err(RelayError::Stalled(_))));
    }

    #[tokio::test]
    async fn a_head_and_its_body_arrive_in_order_and_the_head_buffer_is_kept() {
        for size in [0, 100, COPY_BEHIND_HEAD + 1, 300_000] {
            let (mut to, mut sink) = pair().await;
            let mut head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                sink.read_to_end(&mut got).await.map(|_| got)
            });
            write_head(&mut to, &mut head, &body).await.unwrap();
            drop(to);
            let got = reader.await.unwrap().unwrap();
            assert_eq!(head, b"HTTP/1.1 200 OK\r\n\r\n", "size {size}");
            assert_eq!(&got[..head.len()], &head[..]);
            assert!(got[head.len()..] == body[..], "size {size}");
        }
    }

    #[tokio::test]
    async fn a_close_delimited_body_ends_at_end_of_stream() {
        let (mut client, mut from) = pair().await;
        let (mut to, mut sink) = pair().await;
        client.write_all(b"all of it").await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let mut rem = Remaining::new(Framing::Close);
        let n = relay(&mut from, &mut buf, &mut to, &mut rem, None)
            .await
            .unwrap();
        assert_eq!(n, 9);
        drop(to);
        let mut got = Vec::new();
        sink.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"all of it");
    }
}
