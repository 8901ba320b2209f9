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

pub enum Verdict {
    Known(Detected),
    NeedMore,
}

/// Longest first line an extension-method request is sniffed through.
const MAX_SNIFFED_LINE: usize = 1024;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request line with a method outside `METHODS` (WebDAV's PROPFIND, an
/// extension method): `TOKEN SP target SP HTTP/1.x CRLF`. Requiring the
/// version keeps text protocols that also start with a word and a space
/// (NATS `PUB subject 5`, Redis inline `SET k v`) opaque.
fn classify_extension(bytes: &[u8]) -> Verdict {
    let method_len = bytes.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == 0 || method_len > 32 {
        return Verdict::Known(Detected::Opaque);
    }
    match bytes.get(method_len) {
        None => return Verdict::NeedMore,
        Some(b' ') => {}
        Some(_) => return Verdict::Known(Detected::Opaque),
    }
    match bytes.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &bytes[..end];
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Verdict::Known(Detected::Http1)
            } else {
                Verdict::Known(Detected::Opaque)
            }
        }
        None if bytes.len() < MAX_SNIFFED_LINE => Verdict::NeedMore,
        None => Verdict::Known(Detected::Opaque),
    }
}

/// What the first bytes of a connection say it speaks (the sniff `detect`
/// repeats on a peeked buffer); public for the fuzz target.
pub fn classify(bytes: &[u8]) -> Verdict {
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
        classify_extension(bytes)
    }
}

/// Peeks until the protocol is known or `timeout` passes (→ Opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; MAX_SNIFFED_LINE];
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

/// What an inbound connection opens with: a TLS handshake (a sidecar's
/// mTLS) or anything else (a plaintext caller outside the mesh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    Tls,
    Plaintext,
    /// Closed before a byte arrived.
    Closed,
}

/// TLS records of type handshake (22) start every TLS ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

/// Peeks at the first byte (never consumes it). A client silent for
/// `timeout` (a server-first protocol) is plaintext: TLS clients speak
/// first.
pub async fn opening(stream: &TcpStream, timeout: Duration) -> Opening {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Opening::Closed,
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE => Opening::Tls,
        Ok(Ok(_)) | Err(_) => Opening::Plaintext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn extension_methods_are_http_only_with_an_http_version_on_the_line() {
        assert!(matches!(
            classify(b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\n"),
            Verdict::Known(Detected::Http1)
        ));
        assert!(matches!(classify(b"PROPFIND /dav HT"), Verdict::NeedMore));
        for opaque in [
            &b"PUB subject 5\r\nhello\r\n"[..],
            b"SET k v\r\n",
            b"\x00\x01 x",
        ] {
            assert!(
                matches!(classify(opaque), Verdict::Known(Detected::Opaque)),
                "{opaque:?}"
            );
        }
    }

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
        // "GETX" may still become an extension method's request line; the
        // end of the line without a space after the word decides.
        assert!(matches!(classify(b"GETX"), Verdict::NeedMore));
        assert!(matches!(
            classify(b"GETX\r\n"),
            Verdict::Known(Detected::Opaque)
        ));
        assert!(matches!(classify(b"PO"), Verdict::NeedMore));
    }

    #[tokio::test]
    async fn opening_tells_a_tls_handshake_from_plaintext_and_silence() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        for (bytes, want) in [
            (&b"\x16\x03\x01\x02\x00"[..], Opening::Tls),
            (b"GET / HTTP/1.1\r\n", Opening::Plaintext),
            (b"", Opening::Plaintext),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(bytes).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            assert_eq!(opening(&server, Duration::from_millis(50)).await, want);
        }
        let client = TcpStream::connect(addr).await.unwrap();
        drop(client);
        let (server, _) = l.accept().await.unwrap();
        assert_eq!(
            opening(&server, Duration::from_secs(1)).await,
            Opening::Closed
        );
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
