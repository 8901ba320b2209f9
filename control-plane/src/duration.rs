//! Durations in flags and config: "250ms", "90s", "30m", "24h", "7d" (a bare
//! number is seconds).

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
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

/// `parse` in milliseconds, for wire fields (0 stays "unset").
pub fn parse_ms(s: &str) -> Result<u64, String> {
    parse(s).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds_parse_and_nonsense_is_refused() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(604800)));
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_ms("2s"), Ok(2000));
        for bad in ["", "0s", "0ms", "h", "5w", "-1s", "1.5h", "5us"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
