//! Starting the contenders on pinned cores: direct upstreams; weft one and
//! two hops, plain and with every policy on; Envoy; HAProxy.

use crate::envoy::{envoy_certs, envoy_config, EnvoyHop, EnvoyTls};
use crate::harness::{ip, Env, LOAD_CORE, PROXY_CORE};
use crate::run_cmd;
use anyhow::bail;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use weft_mesh_tls::admin_client::AdminAuth;
use weft_testbed::localmesh::{self, Binaries, ProxyAddrs, ProxyAuth, ProxySpec};

/// Envoy's listeners: one process for the one-hop paths (h1, h2c, gRPC) and
/// the client side of the mTLS two-hop path, a second for its server side.
pub struct EnvoyAddrs {
    /// The first process (one hop).
    pub pid: u32,
    pub h1: SocketAddr,
    pub h2: SocketAddr,
    pub grpc: SocketAddr,
    pub two_hop: SocketAddr,
    /// The server side of the two-hop path (mTLS).
    pub b: SocketAddr,
}

/// Everything started, and where it listens.
pub struct Contenders {
    pub env: Env,
    pub cp_url: String,
    pub pki: localmesh::Pki,
    pub http_up: SocketAddr,
    pub grpc_up: SocketAddr,
    pub iperf_up: SocketAddr,
    /// The client-side sidecar (every weft contender enters here).
    pub client: ProxyAddrs,
    pub proxy_pid: u32,
    /// The plain two-hop server-side sidecar.
    pub server: ProxyAddrs,
    /// weft's explicit TCP listener port on the client sidecar.
    pub tcp_bind: u16,
    pub envoy: Option<EnvoyAddrs>,
    pub haproxy: SocketAddr,
    /// The client certificate the handshake scenario presents.
    pub tls_client: EnvoyTls,
}

impl Contenders {
    pub fn start(mut env: Env) -> anyhow::Result<Contenders> {
        let (http_up, grpc_up, iperf_up) = start_upstreams(&mut env)?;
        let weft = start_weft(&mut env, http_up, grpc_up, iperf_up)?;
        // Leaf certificates from the weft CA for the Envoys (and the
        // handshake benchmark's client).
        let (tls_a, tls_b) = envoy_certs(&env.dir, &weft.pki)?;
        let envoy = match env.envoy.clone() {
            Some(bin) => Some(start_envoy(
                &mut env, &bin, http_up, grpc_up, &tls_a, &tls_b,
            )?),
            None => None,
        };
        let haproxy = SocketAddr::new(ip(6), 10000);
        run_haproxy(&mut env, "haproxy", PROXY_CORE, haproxy, http_up, 1)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Contenders {
            env,
            cp_url: weft.cp_url,
            pki: weft.pki,
            http_up,
            grpc_up,
            iperf_up,
            client: weft.client,
            proxy_pid: weft.proxy_pid,
            server: weft.server,
            tcp_bind: weft.tcp_bind,
            envoy,
            haproxy,
            tls_client: tls_a,
        })
    }

    /// Another client-side sidecar (service `bench-client`, so it gets the
    /// same routes) with `workers` data-plane workers, pinned to `cores`,
    /// on 127.0.0.`last`; returns its pid and outbound address once a
    /// request through it reaches the upstream.
    pub fn spawn_client_sidecar(
        &mut self,
        workers: usize,
        cores: &str,
        last: u8,
    ) -> anyhow::Result<(u32, SocketAddr)> {
        let admin_auth = AdminAuth::Certs(self.pki.admin_certs.clone());
        let token = join_token(
            &self.env.bins,
            &self.cp_url,
            &admin_auth,
            "bench",
            "bench-client",
        )?;
        let addrs = ProxyAddrs::on(ip(last));
        let spec = ProxySpec {
            node: format!("bench-client-w{workers}"),
            namespace: "bench".into(),
            service: "bench-client".into(),
            app_port: 1,
            addrs,
            auth: ProxyAuth::Token {
                token,
                ca_bundle: self.pki.ca_bundle.clone(),
            },
            extra_args: vec!["--workers".into(), workers.to_string()],
        };
        let proxy_bin = self.env.bins.path(localmesh::PROXY);
        let pid = self.env.spawn_pinned_env(
            &format!("weft-bench-client-w{workers}"),
            cores,
            &proxy_bin,
            spec.args(&self.cp_url),
            &spec.env(),
        )?;
        localmesh::wait_listening(addrs.outbound, Duration::from_secs(15))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match weft_testbed::http_request(
                addrs.outbound,
                "GET",
                "/bytes?n=100",
                "bench",
                &[],
                b"",
            ) {
                Ok((200, _)) => return Ok((pid, addrs.outbound)),
                other if std::time::Instant::now() > deadline => {
                    bail!("the {workers}-worker sidecar never routed a request: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// HAProxy with `threads` threads pinned to `cores`, one hop to the
    /// HTTP upstream, on 127.0.0.`last`.
    pub fn spawn_haproxy(
        &mut self,
        threads: usize,
        cores: &str,
        last: u8,
    ) -> anyhow::Result<(u32, SocketAddr)> {
        let listen = SocketAddr::new(ip(last), 10000);
        let name = format!("haproxy-{threads}");
        let pid = run_haproxy(&mut self.env, &name, cores, listen, self.http_up, threads)?;
        Ok((pid, listen))
    }

    /// Envoy `--concurrency n` pinned to `cores`, one hop to the HTTP
    /// upstream, on 127.0.0.`last`; None where Envoy is not installed.
    pub fn spawn_envoy(
        &mut self,
        concurrency: usize,
        cores: &str,
        last: u8,
    ) -> anyhow::Result<Option<(u32, SocketAddr)>> {
        let Some(bin) = self.env.envoy.clone() else {
            return Ok(None);
        };
        let listen = SocketAddr::new(ip(last), 10000);
        let config = envoy_config(&[EnvoyHop {
            listen,
            upstream: self.http_up,
            upstream_h2: false,
            downstream_tls: None,
            upstream_tls: None,
        }]);
        let name = format!("envoy-{concurrency}");
        let pid = run_envoy(&mut self.env, &name, &bin, cores, &config, concurrency)?;
        localmesh::wait_listening(listen, Duration::from_secs(30))?;
        Ok(Some((pid, listen)))
    }

    /// Runs weftctl against the bench control plane with the admin cert.
    pub fn weftctl(&self, args: &[String]) -> anyhow::Result<String> {
        let mut full = vec![
            "--control-plane".to_string(),
            self.cp_url.clone(),
            "--certs".into(),
            self.pki.admin_certs.display().to_string(),
        ];
        full.extend_from_slice(args);
        run_cmd(
            &self.env.bins.path(localmesh::WEFTCTL).display().to_string(),
            &full,
        )
    }
}

/// The upstreams on the load core: the HTTP and gRPC sample apps and an
/// iperf3 server.
fn start_upstreams(env: &mut Env) -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
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

    Ok((http_up, grpc_up, iperf_up))
}

/// The weft side once started.
struct Weft {
    cp_url: String,
    pki: localmesh::Pki,
    client: ProxyAddrs,
    proxy_pid: u32,
    server: ProxyAddrs,
    tcp_bind: u16,
}

/// The control plane on the load core and three sidecars on the proxy core
/// (one worker each), configured and listening.
fn start_weft(
    env: &mut Env,
    http_up: SocketAddr,
    grpc_up: SocketAddr,
    iperf_up: SocketAddr,
) -> anyhow::Result<Weft> {
    let (http_port, grpc_port, iperf_port) = (http_up.port(), grpc_up.port(), iperf_up.port());
    let dir = env.dir.clone();
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
    let weft_cfg = weft_config(
        http_port,
        grpc_port,
        iperf_port,
        tcp_bind,
        server,
        server_policy,
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

    Ok(Weft {
        cp_url,
        pki,
        client,
        proxy_pid,
        server,
        tcp_bind,
    })
}

/// The weft configuration of every weft contender: the upstreams as
/// Services outside the mesh, the two server-side sidecars, the policy
/// path (every caller-side policy on, and a callee rate limit two hops),
/// and one Route per contender host.
fn weft_config(
    http_port: u16,
    grpc_port: u16,
    iperf_port: u16,
    tcp_bind: u16,
    server: ProxyAddrs,
    server_policy: ProxyAddrs,
) -> String {
    format!(
        "{}---\n{}",
        weft_services(http_port, grpc_port, iperf_port, server, server_policy),
        weft_routes(http_port, grpc_port, iperf_port, tcp_bind)
    )
}

/// The Services: upstreams outside the mesh and the bench sidecars.
fn weft_services(
    http_port: u16,
    grpc_port: u16,
    iperf_port: u16,
    server: ProxyAddrs,
    server_policy: ProxyAddrs,
) -> String {
    format!(
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
"#,
        server.inbound.ip(),
        server.inbound.port(),
        server_policy.inbound.ip(),
        server_policy.inbound.port(),
    )
}

/// The policy path's Policies and one Route per contender host.
fn weft_routes(http_port: u16, grpc_port: u16, iperf_port: u16, tcp_bind: u16) -> String {
    // The policies of the two policy-path contenders.
    let policy_body = "  loadBalancer: {algorithm: peak-ewma}\n  circuitBreaker: {maxConnections: 10000, maxPendingRequests: 10000, maxRequests: 100000, maxRetries: 1000}\n  outlierDetection: {consecutive5xx: 5, consecutiveGatewayErrors: 5, consecutiveConnectFailures: 3}\n  retryBudget: {percent: 20, minRetriesPerSecond: 10}";
    let route_policy =
        "    retries: {attempts: 3, on: [5xx, connect-failure, reset]}\n    timeout: 10s";
    format!(
        r#"# The policy path: every caller-side policy on (EWMA balancing, limits far
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
"#
    )
}

/// Envoy pinned to the proxy core, `--concurrency 1`. The two-hop path is
/// mTLS with h2 between the Envoys, like weft's: certificates from the same
/// CA, each side checking the other's ID.
fn start_envoy(
    env: &mut Env,
    envoy: &Path,
    http_up: SocketAddr,
    grpc_up: SocketAddr,
    tls_a: &EnvoyTls,
    tls_b: &EnvoyTls,
) -> anyhow::Result<EnvoyAddrs> {
    let envoy_addr = SocketAddr::new(ip(4), 10000);
    let envoy_h2 = SocketAddr::new(ip(4), 10001);
    let envoy_grpc = SocketAddr::new(ip(4), 10002);
    let envoy_2hop = SocketAddr::new(ip(4), 10003);
    let envoy_b = SocketAddr::new(ip(5), 10000);
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
            upstream_tls: Some(tls_a.clone()),
            ..hop(envoy_2hop, envoy_b, true)
        },
    ]);
    let b = envoy_config(&[EnvoyHop {
        downstream_tls: Some(tls_b.clone()),
        ..hop(envoy_b, http_up, false)
    }]);
    let envoy_pid = run_envoy(env, "envoy-a", envoy, PROXY_CORE, &a, 1)?;
    run_envoy(env, "envoy-b", envoy, PROXY_CORE, &b, 1)?;
    for a in [envoy_addr, envoy_b] {
        localmesh::wait_listening(a, Duration::from_secs(30))?;
    }
    Ok(EnvoyAddrs {
        pid: envoy_pid,
        h1: envoy_addr,
        h2: envoy_h2,
        grpc: envoy_grpc,
        two_hop: envoy_2hop,
        b: envoy_b,
    })
}

/// Envoy `name` with config `config`, `--concurrency n`, pinned to
/// `cores`; returns its pid (the caller waits for its listeners).
fn run_envoy(
    env: &mut Env,
    name: &str,
    bin: &Path,
    cores: &str,
    config: &str,
    concurrency: usize,
) -> anyhow::Result<u32> {
    let path = env.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    env.spawn_pinned(
        name,
        cores,
        bin,
        vec![
            "-c".into(),
            path.display().to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--disable-hot-restart".into(),
            "-l".into(),
            "error".into(),
        ],
    )
}

/// HAProxy `name`, `threads` threads pinned to `cores`, keep-alive to the
/// upstream, listening on `listen`; returns its pid once it listens.
fn run_haproxy(
    env: &mut Env,
    name: &str,
    cores: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
) -> anyhow::Result<u32> {
    let cfg = env.dir.join(format!("{name}.cfg"));
    std::fs::write(&cfg, haproxy_config(listen, upstream, threads))?;
    let pid = env.spawn_pinned(
        name,
        cores,
        Path::new("/usr/sbin/haproxy"),
        vec!["-f".into(), cfg.display().to_string(), "-db".into()],
    )?;
    localmesh::wait_listening(listen, Duration::from_secs(10))?;
    Ok(pid)
}

fn haproxy_config(listen: SocketAddr, upstream: SocketAddr, threads: usize) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\nfrontend f\n  bind {listen}\n  default_backend b\nbackend b\n  server s1 {upstream}\n"
    )
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
