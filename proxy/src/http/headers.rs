//! Header rules both directions apply: what is gRPC, what is an upgrade,
//! which headers are hop-by-hop (RFC 9110 §7.6.1), and the Host an HTTP/1.1
//! hop needs when the client spoke HTTP/2.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;

/// Whether a request is gRPC (its local errors are then gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether the request asks to switch protocols (`Connection: upgrade`) to
/// something the sidecar carries through (WebSocket and the like).
///
/// `Upgrade: h2c` alone is not: the sidecar answers such a request over
/// HTTP/1.1, as RFC 9110 §7.8 lets a server do, and drops `Upgrade` and
/// `HTTP2-Settings` with the other hop-by-hop headers. Passing it on would
/// let a client turn a routed request into a raw HTTP/2 connection to
/// whatever the app proxies to (h2c smuggling). Clients that want HTTP/2
/// to the sidecar use prior knowledge.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return false;
    };
    let only_h2c = upgrade.to_str().is_ok_and(|v| {
        v.split(',')
            .all(|t| t.trim().eq_ignore_ascii_case("h2c") || t.trim().is_empty())
    });
    !only_h2c
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

pub(crate) fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Host as RFC 9112 §3.2 wants it at the edge of the sidecar: a request
/// with more than one Host header is refused (Err: the reason, for a 400);
/// an HTTP/1.1 request in absolute form (`GET http://a/p`) is routed by its
/// URI, so the URI's authority replaces whatever Host it carried.
pub fn normalize_host<B>(req: &mut http::Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if req.version() < http::Version::HTTP_2 {
        let authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(a) = authority {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    Ok(())
}

/// The request's :authority as a Host header, when it came over HTTP/2
/// without one: an HTTP/1.1 hop must carry it as Host.
pub fn authority_as_host(parts: &request::Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_2 || parts.headers.contains_key(header::HOST) {
        return None;
    }
    parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// The gRPC status in response headers (a trailers-only response).
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the connection-level headers a proxy must not forward, keeping
/// `upgrade`/`connection: upgrade` for an upgrade request and
/// `te: trailers` (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        if !keep_upgrade {
            // Names listed in Connection are hop-by-hop too.
            let listed: Vec<HeaderName> = conn
                .to_str()
                .unwrap_or("")
                .split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for name in listed {
                headers.remove(name);
            }
            headers.remove(header::CONNECTION);
        }
    }
    if headers.contains_key(&KEEP_ALIVE) {
        headers.remove(&KEEP_ALIVE);
    }
    if headers.contains_key(&PROXY_CONNECTION) {
        headers.remove(&PROXY_CONNECTION);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if !keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
    if let Some(te) = headers.get(header::TE) {
        if !has_token(te, "trailers") {
            headers.remove(header::TE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_with_the_ones_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-kept").unwrap(), "yes");
    }

    #[test]
    fn te_trailers_and_upgrade_headers_survive_when_needed() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(h.contains_key(header::CONNECTION));
    }

    #[test]
    fn an_h2c_upgrade_is_answered_over_http1_with_its_headers_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        // Anything else that is offered is an upgrade to carry through.
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        ws.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&ws));
    }

    #[test]
    fn two_hosts_are_refused_and_absolute_form_overrides_host() {
        let mut two = http::Request::builder()
            .uri("/")
            .header(header::HOST, "a")
            .header(header::HOST, "b")
            .body(())
            .unwrap();
        assert!(normalize_host(&mut two).is_err());
        let mut absolute = http::Request::builder()
            .uri("http://greeter:8080/hi")
            .header(header::HOST, "evil")
            .body(())
            .unwrap();
        normalize_host(&mut absolute).unwrap();
        assert_eq!(absolute.headers()[header::HOST], "greeter:8080");
        // Between sidecars (HTTP/2) :authority is the endpoint and Host the
        // service name: both stay.
        let mut h2 = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("https://127.0.0.3:15006/hi")
            .header(header::HOST, "greeter")
            .body(())
            .unwrap();
        normalize_host(&mut h2).unwrap();
        assert_eq!(h2.headers()[header::HOST], "greeter");
    }

    #[test]
    fn an_http2_request_without_host_gets_its_authority_as_host() {
        let (mut parts, ()) = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("http://greeter:8080/hi")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(authority_as_host(&parts).unwrap(), "greeter:8080");
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("x"));
        assert_eq!(authority_as_host(&parts), None, "Host already set");
        parts.version = http::Version::HTTP_11;
        parts.headers.remove(header::HOST);
        assert_eq!(authority_as_host(&parts), None, "HTTP/1.1 keeps its own");
    }
}
