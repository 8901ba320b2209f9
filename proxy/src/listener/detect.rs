//! Protocol detection: peek (never consume) the first bytes of a connection
//! to tell HTTP/1.x, HTTP/2 prior knowledge and anything else apart. Bounded
//! by a timeout so server-first protocols, whose clients send nothing until
//! the server speaks, fall through to opaque TCP instead of stalling.

use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

enum Verdict {
    Known(Detected),
    NeedMore,
}

fn classify(bytes: &[u8]) -> Verdict {
    let mut possible = false;
    for (candidate, result) in METHODS
        .iter()
        .map(|m| (*m, Detected::Http1))
        .chain(std::iter::once((H2_PREFACE, Detected::Http2)))
    {
        if bytes.starts_with(candidate) {
            return Verdict::Known(result);
        }
        if candidate.starts_with(bytes) {
            possible = true;
        }
    }
    if possible {
        Verdict::NeedMore
    } else {
        Verdict::Known(Detected::Opaque)
    }
}

/// Peeks until the protocol is known or `timeout` passes (→ Opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Detected::Opaque,
        };
        if n == 0 {
            return Detected::Opaque;
        }
        match classify(&buf[..n]) {
            Verdict::Known(d) => return d,
            // A partial first segment: wait a little for the rest.
            Verdict::NeedMore => {
                if tokio::time::Instant::now() >= deadline {
                    return Detected::Opaque;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_methods_preface_and_binary() {
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\n"),
            Verdict::Known(Detected::Http1)
        ));
        assert!(matches!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Verdict::Known(Detected::Http2)
        ));
        assert!(matches!(
            classify(b"\x16\x03\x01"),
            Verdict::Known(Detected::Opaque)
        ));
        assert!(matches!(
            classify(b"GETX"),
            Verdict::Known(Detected::Opaque)
        ));
        assert!(matches!(classify(b"PO"), Verdict::NeedMore));
    }

    #[tokio::test]
    async fn silent_client_is_opaque_after_the_timeout_and_bytes_are_not_consumed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let t = std::time::Instant::now();
        assert_eq!(
            detect(&server, Duration::from_millis(50)).await,
            Detected::Opaque
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            detect(&server, Duration::from_millis(500)).await,
            Detected::Http1
        );
        let mut buf = [0u8; 3];
        server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET");
    }
}
