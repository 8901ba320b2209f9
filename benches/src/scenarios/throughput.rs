//! Throughput and latency, one round: max requests/s over HTTP/1.1 (100 B
//! and 16 KiB responses, RSS under load), added latency at fixed rates,
//! h2c and gRPC requests/s, new mTLS handshakes/s, TCP throughput.

use crate::contenders::Contenders;
use crate::harness::with_rss_sampling;
use crate::report::Results;
use crate::scenarios::Plan;
use std::net::SocketAddr;

/// (contender, address, Host header) for the HTTP/1.1 scenarios; "direct"
/// first (latency is reported as added to it).
fn h1_contenders(c: &Contenders) -> Vec<(&'static str, SocketAddr, &'static str)> {
    let mut h1 = vec![
        ("direct", c.http_up, "bench"),
        ("weft", c.client.outbound, "bench"),
        ("weft-policy", c.client.outbound, "bench-policy"),
        ("weft-2hop", c.client.outbound, "bench2"),
        ("weft-2hop-policy", c.client.outbound, "bench2-policy"),
    ];
    if let Some(e) = &c.envoy {
        h1.push(("envoy", e.h1, "bench"));
        h1.push(("envoy-2hop", e.two_hop, "bench"));
    }
    h1.push(("haproxy", c.haproxy, "bench"));
    h1
}

fn url(a: SocketAddr, path: &str) -> String {
    format!("http://{a}{path}")
}

pub fn round(c: &Contenders, plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    let want = |s: &str| plan.want(s);
    let env = &c.env;
    let h1 = h1_contenders(c);
    let (proxy_pid, envoy_pid) = (c.proxy_pid, c.envoy.as_ref().map(|e| e.pid));
    let (http_up, grpc_up, iperf_up, client, server) =
        (c.http_up, c.grpc_up, c.iperf_up, c.client, c.server);
    let tls_a = &c.tls_client;
    if want("max_rps_h1") {
        for (name, addr, host) in &h1 {
            eprintln!("  max_rps_h1 {name}");
            let pid = match *name {
                "weft" => Some(proxy_pid),
                "envoy" => envoy_pid,
                _ => None,
            };
            let (rps, rss) = match pid {
                Some(pid) => with_rss_sampling(pid, || env.wrk(&url(*addr, "/bytes?n=100"), host))?,
                None => (env.wrk(&url(*addr, "/bytes?n=100"), host)?, 0.0),
            };
            results.add("max_rps_h1", name, "rps", "req/s", rps);
            if rss > 0.0 {
                results.add("rss_load", name, "rss_bytes", "bytes", rss);
            }
            if !name.contains("2hop") {
                let rps16 = env.wrk(&url(*addr, "/bytes?n=16384"), host)?;
                results.add("max_rps_h1", name, "rps_16k", "req/s", rps16);
            }
        }
    }
    for (scenario, rate) in [("latency_1k", 1000u32), ("latency_5k", 5000)] {
        if !want(scenario) {
            continue;
        }
        let mut direct = None;
        for (name, addr, host) in &h1 {
            eprintln!("  {scenario} {name}");
            let v = env.fixed_rate(*addr, host, rate)?;
            let (p50, p99, p999) = (
                v["p50_us"].as_f64().unwrap_or(0.0),
                v["p99_us"].as_f64().unwrap_or(0.0),
                v["p999_us"].as_f64().unwrap_or(0.0),
            );
            results.add(scenario, name, "p50_us", "µs", p50);
            results.add(scenario, name, "p99_us", "µs", p99);
            results.add(scenario, name, "p999_us", "µs", p999);
            match direct {
                None => direct = Some((p50, p99, p999)),
                Some((d50, d99, d999)) => {
                    results.add(scenario, name, "p50_added_us", "µs", p50 - d50);
                    results.add(scenario, name, "p99_added_us", "µs", p99 - d99);
                    results.add(scenario, name, "p999_added_us", "µs", p999 - d999);
                }
            }
        }
    }
    if want("h2c_rps") {
        let mut h2: Vec<(&str, SocketAddr, &str)> = vec![
            ("direct", http_up, "bench-h2"),
            ("weft", client.outbound, "bench-h2"),
        ];
        if envoy_pid.is_some() {
            h2.push((
                "envoy",
                c.envoy.as_ref().map(|e| e.h2).unwrap_or(http_up),
                "bench-h2",
            ));
        }
        for (name, addr, host) in h2 {
            eprintln!("  h2c_rps {name}");
            results.add(
                "h2c_rps",
                name,
                "rps",
                "req/s",
                env.h2load(&url(addr, "/bytes?n=100"), host)?,
            );
        }
    }
    if want("grpc_rps") {
        let mut g: Vec<(&str, SocketAddr)> = vec![("direct", grpc_up), ("weft", client.outbound)];
        if envoy_pid.is_some() {
            g.push(("envoy", c.envoy.as_ref().map(|e| e.grpc).unwrap_or(grpc_up)));
        }
        for (name, addr) in g {
            eprintln!("  grpc_rps {name}");
            results.add("grpc_rps", name, "rps", "req/s", env.grpc(addr, "grpc")?);
        }
    }
    if want("tls_handshakes") {
        // New mTLS handshakes per second against each server side of the
        // two-hop path, with a client certificate from the same CA.
        let mut targets = vec![("weft", server.inbound)];
        {
            if let Some(e) = &c.envoy {
                targets.push(("envoy", e.b));
            }
        }
        for (name, addr) in targets {
            eprintln!("  tls_handshakes {name}");
            let per_s = env.handshakes(addr, tls_a)?;
            results.add("tls_handshakes", name, "handshakes_per_s", "1/s", per_s);
        }
    }
    if want("tcp_throughput") {
        for (name, addr) in [
            ("direct", iperf_up),
            ("weft", SocketAddr::new(client.ip, c.tcp_bind)),
        ] {
            eprintln!("  tcp_throughput {name}");
            let cpu_before = crate::cpu_seconds(proxy_pid)?;
            let bytes_per_s = env.iperf(addr)?;
            results.add("tcp_throughput", name, "bytes_per_s", "B/s", bytes_per_s);
            if name == "weft" {
                // What the proxy's core spent per GB moved: with both
                // iperf3 ends on the load core, throughput can be bound by
                // that core while the proxy idles, so this is the proxy's
                // own cost.
                let cpu = crate::cpu_seconds(proxy_pid)? - cpu_before;
                // iperf3 runs for whole seconds (`-t`).
                let gb = bytes_per_s * env.seconds.ceil() / 1e9;
                if gb > 0.0 {
                    results.add(
                        "tcp_proxy_cpu",
                        name,
                        "cpu_ms_per_gb",
                        "ms/GB",
                        cpu * 1000.0 / gb,
                    );
                }
            }
        }
    }
    Ok(())
}
