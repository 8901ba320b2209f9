//! The limits a client connection lives under: its deadlines
//! (`ClientTimeouts`), and the header-size limits every HTTP hop of the mesh
//! agrees on, so that a
//! request one sidecar accepts is never refused by the next one. This
//! matters because sidecars talk over one multiplexed HTTP/2 connection: an
//! HTTP/2 peer that receives a header block far beyond its limit treats it
//! as a connection error (a CONTINUATION flood) and resets every unrelated
//! request in flight on that connection.
//!
//! - An HTTP/1.1 message head (request line or status line plus headers) may
//!   be at most `MAX_HEAD_BYTES`; a larger request gets 431 at the listener
//!   that read it, a larger response from an app fails that one request.
//! - HTTP/2 peers (clients of the listeners, sidecars between each other)
//!   may send header lists of up to `MAX_HEADER_LIST_BYTES` (RFC 9113 size:
//!   names + values + 32 per field), which covers any head within
//!   `MAX_HEAD_BYTES` with hyper's default of at most 100 header fields.

use std::time::Duration;

/// The deadlines of a client's connection to a listener. A client that
/// stops sending holds its connection (and its share of the listener's
/// connection cap) no longer than these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// A request head (HTTP/1.1) must arrive within it, and so must a new
    /// connection's first request (HTTP/1.1 and HTTP/2: a client that sends
    /// the HTTP/2 preface and then nothing is closed). HAProxy's `timeout
    /// http-request` is the same idea.
    pub header_read: Duration,
    /// The longest a request body may stall (no bytes while the proxy waits
    /// for them): the request then ends with 408.
    pub body_read: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY). Longer than the sidecars' own upstream pool idle
    /// time (60 s), so a pooled connection is never closed under a request.
    pub idle: Duration,
    /// HTTP/2 keep-alive: a PING after this long without a frame from the
    /// client; one not answered within `KEEPALIVE_ACK` closes the connection.
    pub keepalive: Duration,
}

/// How long an HTTP/2 client has to answer a keep-alive PING.
pub const KEEPALIVE_ACK: Duration = Duration::from_secs(10);

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            keepalive: Duration::from_secs(30),
        }
    }
}

/// Largest HTTP/1.1 message head, in bytes (hyper's read buffer cap).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest HTTP/2 header list accepted or advertised, in bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 80 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_head_at_the_limit_always_fits_the_http2_header_list_limit() {
        // At most 100 fields (hyper's default), each costing at most 32
        // bytes more in HTTP/2 accounting than the ": " + CRLF it takes in
        // HTTP/1.1.
        let worst_case = MAX_HEAD_BYTES + 100 * 32;
        assert!(worst_case <= MAX_HEADER_LIST_BYTES as usize);
    }
}
