//! Kubernetes resource quantities ("100m", "128Mi", "1.5", "2e3"), checked
//! before they reach a pod spec the API server would reject.

/// Ok when `q` is a quantity the API server accepts.
pub fn check(q: &str) -> Result<(), String> {
    let bad = || format!("\"{q}\" is not a Kubernetes quantity (e.g. 100m, 128Mi, 1.5)");
    let digits_end = q
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+' || *c == '-'))
        .map_or(q.len(), |(i, _)| i);
    let (number, suffix) = q.split_at(digits_end);
    let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
    if unsigned.starts_with('-') || unsigned.contains(['+', '-']) {
        return Err(bad());
    }
    let mut parts = unsigned.split('.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    if parts.next().is_some()
        || (whole.is_empty() && frac.is_none_or(str::is_empty))
        || frac.is_some_and(|f| f.is_empty() && whole.is_empty())
    {
        return Err(bad());
    }
    if number.starts_with('-') {
        return Err(format!("\"{q}\" is negative"));
    }
    const SUFFIXES: [&str; 15] = [
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi",
    ];
    if SUFFIXES.contains(&suffix) || suffix == "Ei" {
        return Ok(());
    }
    // Decimal exponent: e3, E-2.
    let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(bad)?;
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    if !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn the_api_servers_quantity_forms_pass_and_others_are_refused() {
        for ok in [
            "100m", "128Mi", "1", "1.5", ".5", "2e3", "1E-2", "0", "+1Gi", "3Ei",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "m", "lots", "1.2.3", "12mb", "1Gib", "-1", "1e", "--1", ".",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
