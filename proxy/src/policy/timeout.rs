//! Request deadlines: the route's timeout and the caller's `grpc-timeout`,
//! whichever ends first. The remaining time is sent on as `grpc-timeout` so
//! the deadline shrinks hop by hop.

use std::time::{Duration, Instant};

pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: at most 8 digits and a unit
/// (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value in the finest unit that
/// fits in 8 digits.
pub fn format_grpc_timeout(d: Duration) -> http::HeaderValue {
    let units: [(u128, &str); 4] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
    ];
    let nanos = d.as_nanos();
    for (per, unit) in units {
        let n = nanos / per;
        if n < 100_000_000 {
            return http::HeaderValue::from_str(&format!("{n}{unit}"))
                .unwrap_or(http::HeaderValue::from_static("0n"));
        }
    }
    let hours = (d.as_secs() / 3600).min(99_999_999);
    http::HeaderValue::from_str(&format!("{hours}H"))
        .unwrap_or(http::HeaderValue::from_static("0n"))
}

/// When a request must be answered by, and what set it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    /// The caller's grpc-timeout was the tighter bound.
    pub from_grpc: bool,
}

impl Deadline {
    /// The tighter of the route timeout and the request's grpc-timeout.
    pub fn of(
        start: Instant,
        route: Option<Duration>,
        headers: &http::HeaderMap,
    ) -> Option<Deadline> {
        let grpc = headers
            .get(&GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()));
        match (route, grpc) {
            (None, None) => None,
            (Some(r), Some(g)) if g < r => Some(Deadline {
                at: start + g,
                from_grpc: true,
            }),
            (Some(r), _) => Some(Deadline {
                at: start + r,
                from_grpc: false,
            }),
            (None, Some(g)) => Some(Deadline {
                at: start + g,
                from_grpc: true,
            }),
        }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses_every_unit_and_refuses_junk() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
        for bad in [&b""[..], b"m", b"123456789m", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeout_formats_within_eight_digits_and_round_trips() {
        for d in [
            Duration::from_nanos(5),
            Duration::from_millis(1500),
            Duration::from_secs(90_000),
            Duration::from_secs(10_000_000),
        ] {
            let v = format_grpc_timeout(d);
            assert!(v.len() <= 9, "{v:?}");
            let back = parse_grpc_timeout(v.as_bytes()).unwrap();
            assert!(
                back <= d && d - back < d / 100 + Duration::from_micros(1),
                "{d:?} -> {v:?}"
            );
        }
    }

    #[test]
    fn deadline_takes_the_tighter_bound() {
        let start = Instant::now();
        let mut h = http::HeaderMap::new();
        assert!(Deadline::of(start, None, &h).is_none());
        h.insert(GRPC_TIMEOUT, "100m".parse().unwrap());
        let d = Deadline::of(start, Some(Duration::from_secs(1)), &h).unwrap();
        assert!(d.from_grpc);
        assert_eq!(d.at, start + Duration::from_millis(100));
        let d = Deadline::of(start, Some(Duration::from_millis(50)), &h).unwrap();
        assert!(!d.from_grpc);
    }
}
