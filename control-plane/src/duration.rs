//! Durations on the command line: "90s", "30m", "24h", "7d" (a bare number
//! is seconds).

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => return Err(format!("\"{s}\": the unit must be s, m, h or d")),
    }
    .ok_or_else(|| format!("\"{s}\" is too long"))?;
    if secs == 0 {
        return Err(format!("\"{s}\": a duration must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds_parse_and_nonsense_is_refused() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(604800)));
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        for bad in ["", "0s", "h", "5w", "-1s", "1.5h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
