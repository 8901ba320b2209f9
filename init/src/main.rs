//! `weft-init`: programs a pod's network namespace so its TCP traffic goes
//! through the Weft sidecar, transparently to the app. Run once per pod
//! before the app starts (the injector adds it as an init container with
//! NET_ADMIN and NET_RAW only).
//!
//! Idempotent: a second run with the same options changes nothing;
//! different options replace our rules. `--cleanup` removes exactly our
//! chains and hooks; `--dry-run` prints the batch instead of applying it.
#![forbid(unsafe_code)]

mod iptables;
mod rules;

use anyhow::Context as _;
use clap::Parser;
use iptables::{Applied, Tables};
use rules::{Cidr, Family, Options, PortRange};

#[derive(Debug, Parser)]
#[command(
    name = "weft-init",
    version,
    about = "Redirect a pod's TCP traffic through the Weft sidecar (iptables nat)"
)]
struct Args {
    /// The UID the proxy runs as: its own traffic is never redirected.
    #[arg(long, env = "WEFT_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// Also exempt traffic from this GID.
    #[arg(long, env = "WEFT_PROXY_GID")]
    proxy_gid: Option<u32>,
    /// The proxy's inbound port (weft-proxy --inbound).
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's outbound port (weft-proxy --outbound).
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// The proxy's ports others reach on the pod IP (metrics, health):
    /// never redirected.
    #[arg(
        long,
        env = "WEFT_PROXY_PORTS",
        value_delimiter = ',',
        default_value = "15090,15020"
    )]
    proxy_ports: Vec<u16>,
    /// Inbound ports (or ranges a-b) that reach the app directly.
    #[arg(long, env = "WEFT_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    skip_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports (or ranges) that bypass the proxy.
    #[arg(long, env = "WEFT_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    skip_outbound_ports: Vec<PortRange>,
    /// Outbound destination blocks (CIDR) that bypass the proxy.
    #[arg(long, env = "WEFT_SKIP_OUTBOUND_CIDRS", value_delimiter = ',')]
    skip_outbound_cidrs: Vec<Cidr>,
    /// Redirect DNS over TCP (port 53) too (left alone by default; DNS over
    /// UDP is never touched).
    #[arg(long)]
    capture_dns: bool,
    /// Also program IPv6 (ip6tables).
    #[arg(long)]
    ipv6: bool,
    /// The iptables command (ip6tables is found beside it as `ip6tables`).
    #[arg(long, env = "WEFT_IPTABLES", default_value = "iptables")]
    iptables: String,
    /// Remove our rules instead.
    #[arg(long)]
    cleanup: bool,
    /// Print what would be applied (or removed) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = Options {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        proxy_ports: args.proxy_ports.clone(),
        skip_inbound_ports: args.skip_inbound_ports.clone(),
        skip_outbound_ports: args.skip_outbound_ports.clone(),
        skip_outbound_cidrs: args.skip_outbound_cidrs.clone(),
        capture_dns: args.capture_dns,
    };
    if args.inbound_port == args.outbound_port {
        anyhow::bail!(
            "--inbound-port and --outbound-port are both {}: they must differ",
            args.inbound_port
        );
    }
    let mut families = vec![Family::V4];
    if args.ipv6 {
        families.push(Family::V6);
    }
    for family in families {
        let bin = match family {
            Family::V4 => args.iptables.clone(),
            Family::V6 => args.iptables.replacen("iptables", "ip6tables", 1),
        };
        let tables = Tables::new(family, Some(&bin));
        let label = format!("{family:?}").to_lowercase();
        if args.dry_run {
            if args.cleanup {
                let saved = tables.saved().unwrap_or_default();
                println!("# {label}: would run");
                for c in iptables::cleanup_commands(&saved) {
                    println!("{} {}", tables.bin, c.join(" "));
                }
            } else {
                println!("# {label}: {} -restore --noflush <<EOF", tables.bin);
                print!("{}", rules::batch(&options, family));
                println!("EOF");
            }
            continue;
        }
        if args.cleanup {
            let removed = tables
                .cleanup()
                .with_context(|| format!("removing the {label} interception rules"))?;
            println!(
                "weft-init: {label}: {}",
                if removed {
                    "interception rules removed"
                } else {
                    "no interception rules to remove"
                }
            );
            continue;
        }
        let applied = tables
            .apply(&rules::batch(&options, family))
            .with_context(|| format!("installing the {label} interception rules"))?;
        println!(
            "weft-init: {label}: {} (inbound tcp -> :{}, outbound tcp -> :{}, proxy uid {} exempt)",
            match applied {
                Applied::Unchanged => "rules already in place, nothing changed",
                Applied::Installed => "rules installed",
            },
            args.inbound_port,
            args.outbound_port,
            args.proxy_uid
        );
    }
    Ok(())
}
