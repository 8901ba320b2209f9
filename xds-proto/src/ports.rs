//! Port lists as operators write them in flags and annotations: `80`,
//! `8000-8100` (or iptables' `8000:8100`), comma-separated.

/// A port or an inclusive range of ports. Displays in iptables' `--dport`
/// form (`8000:8100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("\"{p}\" is not a port (1-65535)"))
        };
        match s.split_once(['-', ':']) {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("port range \"{s}\" ends before it starts"));
                }
                Ok(PortRange(a, b))
            }
            None => {
                let p = port(s)?;
                Ok(PortRange(p, p))
            }
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.0..=self.1).contains(&port)
    }
}

/// Parses `80,8000-8100`; empty items are errors.
pub fn parse_list(s: &str) -> Result<Vec<PortRange>, String> {
    s.split(',').map(|item| item.trim().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_ports_and_ranges_parse_and_bad_items_are_named() {
        let l = parse_list("80, 8000-8100,9000:9001").unwrap();
        assert_eq!(
            l,
            [
                PortRange(80, 80),
                PortRange(8000, 8100),
                PortRange(9000, 9001)
            ]
        );
        assert!(l[1].contains(8050) && !l[1].contains(8101));
        assert!(parse_list("80,x").unwrap_err().contains("\"x\""));
        assert!(parse_list("90-80").unwrap_err().contains("ends before"));
        assert!(parse_list("").is_err());
    }
}
