//! How the wire's plain-number fields map to time: instants are Unix
//! seconds (`*_unix`) or milliseconds (`*_unix_ms`), durations are
//! milliseconds (`*_ms`), and operators write durations as "250ms", "90s",
//! "30m", "24h" or "7d" (a bare number is seconds) in flags and config.
//! Every crate converts through here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in whole Unix seconds (0 before 1970).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `t` in Unix milliseconds (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Now, in whole Unix seconds.
pub fn unix_now() -> i64 {
    unix_secs(SystemTime::now())
}

/// The instant `secs` Unix seconds name (1970 for a negative value).
pub fn from_unix_secs(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration like 250ms, 90s, 30m, 24h or 7d"))?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86400).map(Duration::from_secs),
        _ => return Err(format!("\"{s}\": the unit must be ms, s, m, h or d")),
    }
    .ok_or_else(|| format!("\"{s}\" is too long"))?;
    if d.is_zero() {
        return Err(format!("\"{s}\": a duration must be positive"));
    }
    Ok(d)
}

/// `parse_duration` in milliseconds, for wire fields (0 stays "unset").
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    parse_duration(s).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_round_trip_and_clamp_before_1970() {
        let t = from_unix_secs(1_700_000_000);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(unix_ms(t), 1_700_000_000_000);
        assert_eq!(from_unix_secs(-5), UNIX_EPOCH);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn units_and_bare_seconds_parse_and_nonsense_is_refused() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604800)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        for bad in ["", "0s", "0ms", "h", "5w", "-1s", "1.5h", "5us"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
