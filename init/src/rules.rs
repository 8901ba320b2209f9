//! The interception rules for one pod network namespace, as an
//! `iptables-restore --noflush` batch for the nat table. Pure: built from
//! the options, never from the machine, so `--dry-run` prints exactly what
//! is applied.
//!
//! Chains (all ours, named `WEFT_*`, so `--cleanup` removes exactly them):
//!
//! - `PREROUTING -p tcp -j WEFT_INBOUND`: inbound TCP, except the skipped
//!   ports and the proxy's own ports, → `WEFT_IN_REDIRECT` → the proxy's
//!   inbound port.
//! - `OUTPUT -p tcp -j WEFT_OUTPUT`: outbound TCP, except the proxy's own
//!   (its UID, or GID), loopback, DNS, the skipped ports and CIDRs, →
//!   `WEFT_OUT_REDIRECT` → the proxy's outbound port.
//!
//! UDP is never touched, so DNS over UDP is left alone; DNS over TCP
//! (port 53) is skipped too unless `capture_dns`.

use std::fmt::Write as _;
use std::net::IpAddr;

pub use xds_proto::ports::PortRange;

pub const INBOUND: &str = "WEFT_INBOUND";
pub const IN_REDIRECT: &str = "WEFT_IN_REDIRECT";
pub const OUTPUT: &str = "WEFT_OUTPUT";
pub const OUT_REDIRECT: &str = "WEFT_OUT_REDIRECT";
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT];
/// The built-in chains we hook, and the chain each jumps to.
pub const HOOKS: [(&str, &str); 2] = [("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)];

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("\"{s}\" is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{s}\": the prefix length must be 0-{max}"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// What to intercept.
#[derive(Debug, Clone)]
pub struct Options {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// The proxy's other ports reachable on the pod IP (metrics, health):
    /// never redirected inbound.
    pub proxy_ports: Vec<u16>,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<Cidr>,
    pub capture_dns: bool,
}

/// The batch for one address family (CIDRs of the other family are left
/// out), ending in COMMIT. Its first rule carries the fingerprint of the
/// rest, which is how a second run tells that nothing changed.
pub fn batch(o: &Options, family: Family) -> String {
    let mut rules = Vec::new();
    let mut add = |chain: &str, spec: String| rules.push(format!("-A {chain} {spec}"));
    add(
        IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", o.inbound_port),
    );
    add(
        OUT_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", o.outbound_port),
    );
    let mut never_inbound: Vec<PortRange> = std::iter::once(o.inbound_port)
        .chain(o.proxy_ports.iter().copied())
        .map(|p| PortRange(p, p))
        .collect();
    never_inbound.extend(o.skip_inbound_ports.iter().copied());
    for p in dedup(never_inbound) {
        add(INBOUND, format!("-p tcp --dport {p} -j RETURN"));
    }
    add(INBOUND, format!("-p tcp -j {IN_REDIRECT}"));

    add(
        OUTPUT,
        format!("-m owner --uid-owner {} -j RETURN", o.proxy_uid),
    );
    if let Some(gid) = o.proxy_gid {
        add(OUTPUT, format!("-m owner --gid-owner {gid} -j RETURN"));
    }
    add(OUTPUT, "-o lo -j RETURN".into());
    add(OUTPUT, format!("-d {} -j RETURN", family.loopback()));
    let mut skip_out = o.skip_outbound_ports.clone();
    if !o.capture_dns {
        skip_out.push(PortRange(53, 53));
    }
    for p in dedup(skip_out) {
        add(OUTPUT, format!("-p tcp --dport {p} -j RETURN"));
    }
    for c in &o.skip_outbound_cidrs {
        if c.addr.is_ipv4() == (family == Family::V4) {
            add(OUTPUT, format!("-d {c} -j RETURN"));
        }
    }
    add(OUTPUT, format!("-p tcp -j {OUT_REDIRECT}"));

    let fingerprint = fingerprint(&rules);
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        out,
        "-A {OUTPUT} -m comment --comment \"{}\"",
        marker(fingerprint)
    );
    for r in &rules {
        let _ = writeln!(out, "{r}");
    }
    for (hook, chain) in HOOKS {
        let _ = writeln!(out, "-A {hook} -p tcp -j {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The comment that marks a ruleset: `weft-init <fingerprint>`.
pub fn marker(fingerprint: u64) -> String {
    format!("weft-init {fingerprint:016x}")
}

/// The marker a batch carries (what `iptables-save` shows once applied).
pub fn marker_of(batch: &str) -> Option<&str> {
    let start = batch.find("weft-init ")?;
    let rest = &batch[start..];
    Some(&rest[..rest.find('"').unwrap_or(rest.len())])
}

fn dedup(mut v: Vec<PortRange>) -> Vec<PortRange> {
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|p| {
        let fresh = !seen.contains(p);
        seen.push(*p);
        fresh
    });
    v
}

/// FNV-1a over the rules: stable across builds and Rust versions.
fn fingerprint(rules: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rules.iter().flat_map(|r| r.bytes().chain([b'\n'])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            proxy_uid: 1337,
            proxy_gid: None,
            inbound_port: 15006,
            outbound_port: 15001,
            proxy_ports: vec![15090],
            skip_inbound_ports: vec!["22".parse().unwrap()],
            skip_outbound_ports: vec!["5432-5433".parse().unwrap()],
            skip_outbound_cidrs: vec![
                "169.254.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            capture_dns: false,
        }
    }

    #[test]
    fn the_batch_redirects_tcp_both_ways_and_exempts_the_proxy_loopback_dns_and_skips() {
        let b = batch(&options(), Family::V4);
        let want = [
            "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A WEFT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A WEFT_INBOUND -p tcp --dport 15006 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 15090 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
            "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT",
            "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A WEFT_OUTPUT -o lo -j RETURN",
            "-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A WEFT_OUTPUT -p tcp --dport 5432:5433 -j RETURN",
            "-A WEFT_OUTPUT -p tcp --dport 53 -j RETURN",
            "-A WEFT_OUTPUT -d 169.254.0.0/16 -j RETURN",
            "-A WEFT_OUTPUT -p tcp -j WEFT_OUT_REDIRECT",
            "-A PREROUTING -p tcp -j WEFT_INBOUND",
            "-A OUTPUT -p tcp -j WEFT_OUTPUT",
        ];
        let lines: Vec<&str> = b.lines().filter(|l| !l.contains("comment")).collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(&lines[5..lines.len() - 1], &want[..]);
        assert_eq!(lines.last(), Some(&"COMMIT"));
        // The v6 batch leaves out v4 blocks and uses ::1.
        let v6 = batch(&options(), Family::V6);
        assert!(v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(v6.contains("-d ::1/128 -j RETURN"));
        assert!(!v6.contains("169.254"));
    }

    #[test]
    fn the_marker_changes_with_the_rules_and_only_with_them() {
        let a = batch(&options(), Family::V4);
        assert_eq!(marker_of(&a), marker_of(&batch(&options(), Family::V4)));
        let mut o = options();
        o.capture_dns = true;
        let b = batch(&o, Family::V4);
        assert_ne!(marker_of(&a), marker_of(&b));
        assert!(!b.contains("--dport 53"));
        assert!(marker_of(&a).unwrap().starts_with("weft-init "));
    }

    #[test]
    fn bad_ports_and_blocks_are_refused_with_what_was_wrong() {
        assert_eq!(
            "0".parse::<PortRange>().unwrap_err(),
            "\"0\" is not a port (1-65535)"
        );
        assert!("90-80"
            .parse::<PortRange>()
            .unwrap_err()
            .contains("ends before"));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("0-32"));
        assert!("nope".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
    }
}
