//! Memory: the sidecar's RSS when idle (and Envoy's), and what 10,000
//! endpoints add to it.

use crate::contenders::Contenders;
use crate::report::Results;
use crate::rss_bytes;
use crate::scenarios::Plan;
use anyhow::bail;
use std::time::{Duration, Instant};

pub fn rss_idle(c: &Contenders, plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    if !plan.want("rss_idle") {
        return Ok(());
    }
    results.add(
        "rss_idle",
        "weft",
        "rss_bytes",
        "bytes",
        rss_bytes(c.proxy_pid)?,
    );
    // Where it is: the binary's and libraries' mapped pages (file) against
    // heap, stacks and anonymous maps (anon).
    for (metric, field) in [
        ("rss_anon_bytes", "RssAnon:"),
        ("rss_file_bytes", "RssFile:"),
    ] {
        if let Some(v) = crate::status_kb(c.proxy_pid, field) {
            results.add("rss_idle", "weft", metric, "bytes", v * 1024.0);
        }
    }
    eprintln!(
        "  rss_idle: weft-proxy has {} threads",
        crate::status_kb(c.proxy_pid, "Threads:").unwrap_or(0.0)
    );
    if let Some(e) = &c.envoy {
        results.add("rss_idle", "envoy", "rss_bytes", "bytes", rss_bytes(e.pid)?);
    }
    Ok(())
}

/// 1,000 services of 10 endpoints each, all reachable from the client
/// sidecar: its RSS after it ACKed them, and the growth.
pub fn rss_10k_endpoints(c: &Contenders, plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    if !plan.want("rss_10k_endpoints") {
        return Ok(());
    }
    let (proxy_pid, smoke, dir) = (c.proxy_pid, plan.smoke, &c.env.dir);
    eprintln!("rss_10k_endpoints");
    let before = rss_bytes(proxy_pid)?;
    let big = big_config(if smoke { 50 } else { 1000 }, 10);
    let path = dir.join("big.yaml");
    std::fs::write(&path, big)?;
    let out = c.weftctl(&[
        "-o".into(),
        "json".into(),
        "apply".into(),
        "-f".into(),
        path.display().to_string(),
    ])?;
    let rev = serde_json::from_str::<serde_json::Value>(&out)?["revision"]
        .as_u64()
        .unwrap_or(0);
    wait_acked(c, "bench-client-0", rev)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_bytes(proxy_pid)?;
    results.add("rss_10k_endpoints", "weft", "rss_bytes", "bytes", after);
    results.add(
        "rss_10k_endpoints",
        "weft",
        "rss_added_bytes",
        "bytes",
        after - before,
    );
    Ok(())
}

/// `services` Services of `endpoints` endpoints each (addresses in
/// 10.0.0.0/8 that are only ever configured, never contacted) and a Route
/// from the bench client to each.
fn big_config(services: usize, endpoints: usize) -> String {
    let mut y = String::new();
    for s in 0..services {
        y.push_str(&format!(
            "---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  endpoints: [{}]\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: to-svc-{s}, namespace: bench}}\nspec:\n  sources: [bench-client]\n  hosts: [svc-{s}]\n  http: [{{destination: {{service: svc-{s}, port: 8080}}}}]\n",
            (0..endpoints).map(|e| format!("{{address: \"10.{}.{}.{}\"}}", s / 250, s % 250, e + 1)).collect::<Vec<_>>().join(", ")
        ));
    }
    y
}

/// Waits until proxy `node` has ACKed revision `rev`.
fn wait_acked(c: &Contenders, node: &str, rev: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = c.weftctl(&["-o".into(), "json".into(), "proxy-status".into()])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if v["proxies"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["name"] == node && p["ackedRevision"] == rev)
        }) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{node} did not ACK config revision {rev}")
}
