//! Zero-copy relay between two plaintext TCP sockets: splice(2) moves the
//! bytes socket → pipe → socket inside the kernel, so they are never copied
//! into user space (the copy relay reads and writes every byte through a
//! 64 KiB buffer). Linux only; the syscalls go through rustix's safe
//! wrappers.
//!
//! Each direction owns a pipe and empties it completely before it splices
//! more in, so a splice into the pipe never finds it full: EAGAIN there
//! means the socket has nothing to read, and EAGAIN from the pipe to a
//! socket means the socket's send buffer is full. Both map onto tokio's
//! readiness, which `try_io` clears on `WouldBlock`.

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::OwnedFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of one splice: the pipe's default capacity (16 pages). A
/// larger pipe measured no faster here and counts against the user's
/// pipe-pages limit (`fs.pipe-user-pages-soft`) for every connection.
const CHUNK: usize = 64 * 1024;

/// One direction's pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Pipe { read, write })
    }
}

/// The pipes for both directions, made before any byte moves so that a
/// caller can fall back to copying when the process is out of descriptors.
pub struct Pipes([Pipe; 2]);

impl Pipes {
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes([Pipe::new()?, Pipe::new()?]))
    }
}

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Relays `a` ⇄ `b` until both directions have ended: a read side's end
/// of stream shuts the other socket's write side (half-close carried
/// through), as `tokio::io::copy_bidirectional` does. Returns the bytes
/// moved a → b and b → a; the first error ends both directions.
pub async fn relay(a: &TcpStream, b: &TcpStream, pipes: Pipes) -> io::Result<(u64, u64)> {
    let [ab, ba] = pipes.0;
    tokio::try_join!(pump(a, b, &ab), pump(b, a, &ba))
}

/// One direction: `from` → pipe → `to` until `from` ends.
async fn pump(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                retrying(|| splice(from, None, &pipe.write, None, CHUNK, FLAGS))
            })
            .await?;
        if n == 0 {
            // End of stream: pass the half-close on. The peer may already
            // have gone (both sides closing at once); that is not an error.
            match rustix::net::shutdown(to, rustix::net::Shutdown::Write) {
                Ok(()) | Err(rustix::io::Errno::NOTCONN) => return Ok(total),
                Err(e) => return Err(e.into()),
            }
        }
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    retrying(|| splice(&pipe.read, None, to, None, left, FLAGS))
                })
                .await?;
            if m == 0 {
                // The pipe held `left` bytes a moment ago; nothing moved
                // means the socket cannot take more and never will.
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "splice moved no bytes into the socket",
                ));
            }
            left -= m;
        }
        total += n as u64;
    }
}

/// One splice, again if a signal interrupted it (EAGAIN goes back to
/// tokio as `WouldBlock`, which clears the readiness).
fn retrying(mut f: impl FnMut() -> rustix::io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets: (the side the test drives,
    /// the side the relay holds).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (outer, inner) = tokio::join!(TcpStream::connect(addr), l.accept());
        (outer.expect("connect"), inner.expect("accept").0)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_intact_and_a_half_close_is_carried_through() {
        let (mut client, relay_a) = pair().await;
        let (mut server, relay_b) = pair().await;
        let relay =
            tokio::spawn(
                async move { relay(&relay_a, &relay_b, Pipes::new().expect("pipes")).await },
            );
        // More than the socket buffers and the pipe hold, so both sides
        // wait on each other many times.
        let request = pattern(8 << 20, 7);
        let response = pattern(3 << 20, 99);
        let sent = request.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            // Half-close: the server must see the end of the request and
            // still be able to answer.
            client.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read response");
            got
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read request");
        assert!(got == request, "the request arrived altered");
        server.write_all(&response).await.expect("answer");
        server.shutdown().await.expect("close");
        let back = writer.await.expect("client");
        assert!(back == response, "the response arrived altered");
        let (up, down) = relay.await.expect("join").expect("relay");
        assert_eq!((up, down), (request.len() as u64, response.len() as u64));
    }

    #[tokio::test]
    async fn a_peer_that_resets_ends_the_relay_with_an_error() {
        let (client, relay_a) = pair().await;
        let (server, relay_b) = pair().await;
        let relay =
            tokio::spawn(
                async move { relay(&relay_a, &relay_b, Pipes::new().expect("pipes")).await },
            );
        // SO_LINGER 0 then close: an RST, not a FIN.
        socket2::SockRef::from(&server)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(server);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), relay)
            .await
            .expect("the relay ends");
        assert!(ended.expect("join").is_err(), "a reset is an error");
        drop(client);
    }
}
