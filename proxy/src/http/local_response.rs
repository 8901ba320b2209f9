//! Responses the proxy makes itself: a status with `x-weft-error: reason`
//! and a text body, or for a gRPC caller a trailers-only response carrying
//! the matching gRPC status.

use crate::http::body::ResponseBody;
use crate::policy::circuit_breaker::{Limit, OVERLOADED_HEADER};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use std::time::Duration;

/// The gRPC status for a locally generated HTTP error.
fn grpc_code_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,       // INTERNAL
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 12,       // UNIMPLEMENTED
        429 => 8,        // RESOURCE_EXHAUSTED
        504 => 4,        // DEADLINE_EXCEEDED
        502 | 503 => 14, // UNAVAILABLE
        _ => 2,          // UNKNOWN
    }
}

pub fn local_response(
    status: StatusCode,
    reason: &'static str,
    body: String,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut resp = if grpc {
        let mut r = Response::new(ResponseBody::local(Bytes::new()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(grpc_code_for(status)));
        if let Ok(msg) = HeaderValue::from_str(body.trim()) {
            h.insert("grpc-message", msg);
        }
        r
    } else {
        let mut r = Response::new(ResponseBody::local(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    resp.headers_mut()
        .insert("x-weft-error", HeaderValue::from_static(reason));
    resp
}

/// 503 for a request refused by one of the cluster's limits, naming it.
pub fn overloaded(limit: Limit, grpc: bool) -> Response<ResponseBody> {
    let mut resp = local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("weft: over the cluster's {limit} limit\n"),
        grpc,
    );
    resp.headers_mut()
        .insert(OVERLOADED_HEADER, HeaderValue::from_static(limit.as_str()));
    resp
}

/// 429 for a request over rate limit `name`, with `Retry-After` in whole
/// seconds (rounded up, at least 1).
pub fn rate_limited(name: &str, retry_after: Duration, grpc: bool) -> Response<ResponseBody> {
    let mut resp = local_response(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("weft: rate limit {name} exceeded\n"),
        grpc,
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    if let Ok(v) = HeaderValue::from_str(name) {
        h.insert("x-weft-rate-limit", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_reach_grpc_callers_as_grpc_statuses() {
        let r = local_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "limited\n".into(),
            true,
        );
        assert_eq!(r.status(), StatusCode::OK, "trailers-only gRPC response");
        assert_eq!(r.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");
        assert_eq!(r.headers()["grpc-message"], "limited");
        let r = local_response(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            "t".into(),
            true,
        );
        assert_eq!(r.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
        let r = local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "o".into(),
            false,
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["x-weft-error"], "overloaded");
    }

    #[test]
    fn rate_limited_rounds_retry_after_up_to_whole_seconds() {
        let r = rate_limited("ns/p/l", Duration::from_millis(1200), false);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()["x-weft-rate-limit"], "ns/p/l");
        let r = rate_limited("l", Duration::ZERO, false);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1", "at least 1");
    }
}
