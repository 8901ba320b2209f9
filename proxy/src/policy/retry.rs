//! Retries: which failures are retried (per route), whether another try is
//! allowed (`RetryPolicy::next_try`), how long to wait between tries
//! (exponential backoff with full jitter, or the server's `Retry-After`),
//! and the per-cluster retry counters. The budget that caps retries per
//! cluster is `retry_budget`.

use metrics::Counter;
use rand::Rng;

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use xds_proto::v1 as pb;

pub const RETRIES_TOTAL: &str = "weft_retries_total";

const CONNECT_FAILURE: u32 = 1;
const RESET: u32 = 1 << 1;
const REFUSED_STREAM: u32 = 1 << 2;
const FIVE_XX: u32 = 1 << 3;
const GATEWAY_ERROR: u32 = 1 << 4;
const STATUS_CODES: u32 = 1 << 5;
const GRPC_CODES: u32 = 1 << 6;

/// Why a try failed, as retry conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectFailure,
    /// The connection or stream broke before a response.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the server did not process the request.
    RefusedStream,
    PerTryTimeout,
    Status(u16),
    /// A gRPC status carried in the response headers (trailers-only).
    Grpc(u32),
}

impl Failure {
    /// Failures where the request provably never reached the application:
    /// safe to retry whatever the method.
    pub fn never_processed(self) -> bool {
        matches!(self, Failure::ConnectFailure | Failure::RefusedStream)
    }
}

/// Label values of `weft_retries_total{reason}`.
pub const REASONS: [&str; 8] = [
    "connect_failure",
    "reset",
    "refused_stream",
    "per_try_timeout",
    "5xx",
    "gateway_error",
    "status_code",
    "grpc_status",
];

/// The longest wait before a retry when the request has no deadline.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// What the retry decision needs to know about the try that failed.
pub struct FailedTry<'a> {
    /// 1-based number of the try that failed.
    pub attempt: u32,
    /// Whether the request could be sent again (retries allowed on this
    /// request and its body replayable).
    pub replayable: bool,
    pub method: &'a http::Method,
    pub grpc: bool,
    /// The failed response's headers (for `Retry-After`), if there was one.
    pub response: Option<&'a http::HeaderMap>,
    /// Time left before the request deadline, if it has one.
    pub remaining: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    conditions: u32,
    status_codes: Vec<u16>,
    /// Bit n set: gRPC code n is retried.
    grpc_codes: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    pub non_idempotent: bool,
    pub max_body_bytes: u64,
}

impl Default for RetryPolicy {
    /// What a rule without a policy gets: one more try when the request
    /// never reached the application.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            conditions: CONNECT_FAILURE | REFUSED_STREAM,
            status_codes: vec![],
            grpc_codes: 0,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            non_idempotent: false,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl RetryPolicy {
    pub fn from_pb(r: Option<&pb::RetryPolicy>) -> Result<RetryPolicy, String> {
        let Some(r) = r else {
            return Ok(RetryPolicy::default());
        };
        let mut conditions = 0;
        for c in &r.on {
            conditions |= match c.as_str() {
                "connect-failure" => CONNECT_FAILURE,
                "reset" => RESET,
                "refused-stream" => REFUSED_STREAM,
                "5xx" => FIVE_XX,
                "gateway-error" => GATEWAY_ERROR,
                "retriable-status-codes" => STATUS_CODES,
                "retriable-grpc-codes" => GRPC_CODES,
                other => return Err(format!("unknown retry condition \"{other}\"")),
            };
        }
        let mut grpc_codes = 0;
        for c in &r.grpc_codes {
            if *c > 16 {
                return Err(format!("bad gRPC code {c}"));
            }
            grpc_codes |= 1 << c;
        }
        let base = Duration::from_millis(r.backoff_base_ms.max(1));
        Ok(RetryPolicy {
            attempts: r.attempts.max(1),
            per_try_timeout: (r.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(r.per_try_timeout_ms)),
            conditions,
            status_codes: r
                .status_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            grpc_codes,
            backoff_base: base,
            backoff_max: Duration::from_millis(r.backoff_max_ms).max(base),
            non_idempotent: r.non_idempotent,
            max_body_bytes: u64::from(r.max_body_bytes),
        })
    }

    /// Whether the policy can retry anything at all.
    pub fn enabled(&self) -> bool {
        self.attempts > 1 && self.conditions != 0
    }

    /// Whether every failure the policy retries is one where nothing of the
    /// request was sent (a connect failure, a refused stream): the request
    /// body then never needs replaying.
    pub fn only_unsent(&self) -> bool {
        self.conditions & !(CONNECT_FAILURE | REFUSED_STREAM) == 0
    }

    /// Whether `method` may be retried after it may have reached the app.
    pub fn method_allowed(&self, method: &http::Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// The `REASONS` index if the policy retries this failure.
    pub fn reason(&self, f: Failure) -> Option<usize> {
        let c = self.conditions;
        match f {
            Failure::ConnectFailure if c & CONNECT_FAILURE != 0 => Some(0),
            Failure::Reset if c & (RESET | FIVE_XX | GATEWAY_ERROR) != 0 => Some(1),
            Failure::RefusedStream if c & (REFUSED_STREAM | RESET) != 0 => Some(2),
            Failure::PerTryTimeout if c & (FIVE_XX | GATEWAY_ERROR | RESET) != 0 => Some(3),
            Failure::Status(s) if c & STATUS_CODES != 0 && self.status_codes.contains(&s) => {
                Some(6)
            }
            Failure::Status(s) if c & GATEWAY_ERROR != 0 && (502..=504).contains(&s) => Some(5),
            Failure::Status(s) if c & FIVE_XX != 0 && (500..=599).contains(&s) => Some(4),
            Failure::Grpc(code)
                if c & GRPC_CODES != 0 && code < 32 && self.grpc_codes & (1 << code) != 0 =>
            {
                Some(7)
            }
            _ => None,
        }
    }

    /// Whether a try that failed with `failure` gets another, and after how
    /// long: `Some((REASONS index, wait))`. The cluster's `max_retries` and
    /// budget are asked after this (`Cluster::admit_retry`).
    pub fn next_try(&self, failure: Failure, t: &FailedTry<'_>) -> Option<(usize, Duration)> {
        let reason = self.reason(failure)?;
        let safe = failure.never_processed()
            || self.method_allowed(t.method)
            // Every gRPC call is a POST: listing a gRPC code is the route
            // saying that status is safe to retry.
            || (t.grpc && matches!(failure, Failure::Grpc(_)));
        if !(t.replayable && t.attempt < self.attempts && safe) {
            return None;
        }
        let wait = t
            .response
            .and_then(retry_after)
            .unwrap_or_else(|| self.backoff(t.attempt));
        let fits = match t.remaining {
            Some(left) => wait < left,
            None => wait <= MAX_RETRY_WAIT,
        };
        fits.then_some((reason, wait))
    }

    /// Wait before retry number `retry` (1-based): full jitter over an
    /// exponentially growing cap.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }
}

pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// `Retry-After` as a delay: seconds, or an HTTP date.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), the form servers send.
fn httpdate_parse(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    (secs >= 0).then(|| xds_proto::units::from_unix_secs(secs))
}

/// `weft_retries_total{cluster,reason}` of one cluster, each registered on
/// its first retry.
#[derive(Debug)]
pub struct RetryCounters {
    cluster: Arc<str>,
    by_reason: [OnceLock<Counter>; 8],
}

impl RetryCounters {
    pub fn new(cluster: Arc<str>) -> Self {
        RetryCounters {
            cluster,
            by_reason: Default::default(),
        }
    }

    /// Counts a retry for `REASONS[reason]`.
    pub fn count(&self, reason: usize) {
        if let Some(cell) = self.by_reason.get(reason) {
            cell.get_or_init(|| {
                metrics::counter!(RETRIES_TOTAL, "cluster" => self.cluster.to_string(), "reason" => REASONS[reason])
            })
            .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str], codes: &[u32], grpc: &[u32]) -> RetryPolicy {
        RetryPolicy::from_pb(Some(&pb::RetryPolicy {
            attempts: 3,
            on: on.iter().map(|s| s.to_string()).collect(),
            status_codes: codes.to_vec(),
            grpc_codes: grpc.to_vec(),
            backoff_base_ms: 10,
            backoff_max_ms: 100,
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn conditions_select_what_is_retried() {
        let p = policy(&["gateway-error"], &[], &[]);
        assert!(p.reason(Failure::Status(503)).is_some());
        assert!(p.reason(Failure::Status(500)).is_none());
        assert!(p.reason(Failure::Reset).is_some());
        assert!(p.reason(Failure::ConnectFailure).is_none());
        let p = policy(&["5xx"], &[], &[]);
        assert!(p.reason(Failure::Status(500)).is_some());
        assert!(p.reason(Failure::Status(429)).is_none());
        let p = policy(&["retriable-status-codes"], &[409], &[]);
        assert!(p.reason(Failure::Status(409)).is_some());
        assert!(p.reason(Failure::Status(503)).is_none());
        let p = policy(&["retriable-grpc-codes"], &[], &[14]);
        assert!(p.reason(Failure::Grpc(14)).is_some());
        assert!(p.reason(Failure::Grpc(13)).is_none());
        assert!(RetryPolicy::default()
            .reason(Failure::Status(503))
            .is_none());
        assert!(RetryPolicy::default()
            .reason(Failure::ConnectFailure)
            .is_some());
    }

    #[test]
    fn next_try_needs_attempts_left_a_replayable_body_a_safe_method_and_time() {
        let p = policy(&["5xx"], &[], &[]);
        let get = http::Method::GET;
        let post = http::Method::POST;
        let t = |attempt, replayable, method, remaining| FailedTry {
            attempt,
            replayable,
            method,
            grpc: false,
            response: None,
            remaining,
        };
        let f = Failure::Status(503);
        assert!(p.next_try(f, &t(1, true, &get, None)).is_some());
        assert!(
            p.next_try(f, &t(p.attempts, true, &get, None)).is_none(),
            "no tries left"
        );
        assert!(
            p.next_try(f, &t(1, false, &get, None)).is_none(),
            "body gone"
        );
        assert!(
            p.next_try(f, &t(1, true, &post, None)).is_none(),
            "POST may have run"
        );
        assert!(
            p.next_try(Failure::ConnectFailure, &t(1, true, &post, None))
                .is_none(),
            "connect failures are not retried unless listed"
        );
        assert!(
            p.next_try(f, &t(1, true, &get, Some(Duration::ZERO)))
                .is_none(),
            "no time left"
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("3"),
        );
        let mut after = t(1, true, &get, None);
        after.response = Some(&headers);
        assert_eq!(
            p.next_try(f, &after).map(|(_, w)| w),
            Some(Duration::from_secs(3))
        );
        after.remaining = Some(Duration::from_secs(2));
        assert!(
            p.next_try(f, &after).is_none(),
            "Retry-After past the deadline"
        );
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap() {
        let p = policy(&["5xx"], &[], &[]);
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(3) <= Duration::from_millis(40));
            assert!(p.backoff(20) <= Duration::from_millis(100));
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| p.backoff(4)).collect();
        assert!(spread.len() > 5, "full jitter varies");
    }

    #[test]
    fn only_idempotent_methods_retry_unless_allowed() {
        let p = policy(&["5xx"], &[], &[]);
        assert!(p.method_allowed(&http::Method::GET));
        assert!(!p.method_allowed(&http::Method::POST));
        assert!(Failure::ConnectFailure.never_processed());
        assert!(!Failure::Status(503).never_processed());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a past date: now");
        assert_eq!(
            httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }
}
