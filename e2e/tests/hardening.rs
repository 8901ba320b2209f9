//! Hardening: one bad client must not hurt another, and malformed or
//! oversized requests are refused at the edge of the sidecar with the right
//! status (issue 12). Real processes, raw sockets.

use std::time::Duration;
use weft_testbed::*;

/// A request whose headers the callee's sidecar would refuse must get 431 at
/// the caller's outbound listener and never reach the shared, multiplexed
/// HTTP/2 connection between the sidecars, where it would reset every
/// unrelated request in flight to the same destination; one within the
/// limit crosses both sidecars.
#[test]
fn an_oversized_header_gets_431_and_requests_in_flight_to_the_same_callee_succeed() {
    let mut mesh = Mesh::start("big-header");
    let (client, _server) = http_pair(&mut mesh, "http");
    // Warm the sidecar-to-sidecar connection.
    assert_eq!(
        http_request(client.outbound, "GET", "/", "server", &[], b"")
            .unwrap()
            .0,
        200
    );
    // Within the mesh's 64 KiB head limit: forwarded to the app. Beyond it:
    // 431 from the caller's own sidecar.
    for (size, want) in [(40 * 1024, 200), (70 * 1024, 431), (200 * 1024, 431)] {
        let normal: Vec<_> = (0..5)
            .map(|_| {
                let outbound = client.outbound;
                std::thread::spawn(move || {
                    http_request(
                        outbound,
                        "GET",
                        "/",
                        "server",
                        &[("x-fault-delay-ms", "400")],
                        b"",
                    )
                    .map(|(status, _)| status)
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let big = "a".repeat(size);
        let (status, body) = http_request(
            client.outbound,
            "GET",
            "/",
            "server",
            &[("x-big", &big)],
            b"",
        )
        .unwrap_or_else(|e| panic!("{size} B header: no answer: {e}"));
        assert_eq!(status, want, "{size} B header: {body}");
        for n in normal {
            assert_eq!(
                n.join().unwrap(),
                Ok(200),
                "a normal request in flight next to a {size} B header"
            );
        }
    }
}
