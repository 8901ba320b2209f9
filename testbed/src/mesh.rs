//! End-to-end harness: a real mesh per test (weft-control, weft-proxy and
//! sample workloads as child processes) on the test's own 127.A.B.0/24, so
//! tests run in parallel without port clashes. Everything started is stopped
//! when the `Mesh` drops, also when the test panics; on panic the tail of
//! every process log is printed.

use crate::http_client::{http_request, KeepAlive};
use crate::localmesh::{self, Binaries, Pki, Proc, ProxyAddrs, ProxyAuth, ProxySpec};
use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use xds_proto::sample::v1::echo_client::EchoClient;

static BINARIES: OnceLock<Binaries> = OnceLock::new();
static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

pub fn binaries() -> &'static Binaries {
    BINARIES.get_or_init(|| {
        Binaries::from_current_exe().expect("mesh binaries (cargo build --workspace --bins)")
    })
}

pub struct Mesh {
    pub name: String,
    pub dir: PathBuf,
    /// 127.A.B.0/24 owned by this test.
    block: (u8, u8),
    pub control_grpc: SocketAddr,
    pub control_admin: SocketAddr,
    pub control: Option<Proc>,
    /// Extra weft-control flags (kept across restarts).
    pub control_extra: Vec<String>,
    /// When set, the control-plane address(es) proxies and weftctl are
    /// given instead of the one control plane's (e.g. several replicas).
    pub control_urls: Option<String>,
    pub procs: Vec<Proc>,
}

impl Mesh {
    /// Starts weft-control with a fresh data dir.
    pub fn start(name: &str) -> Mesh {
        Self::start_with(name, &[])
    }

    /// `start`, with extra weft-control flags (e.g. a short --cert-ttl).
    pub fn start_with(name: &str, control_extra: &[&str]) -> Mesh {
        let mut mesh = Self::prepare(name, control_extra);
        mesh.start_control();
        mesh
    }

    /// A mesh whose control plane is not started yet (`start_control`),
    /// e.g. to start its store first on the mesh's addresses.
    pub fn prepare(name: &str, control_extra: &[&str]) -> Mesh {
        let n = std::process::id()
            .wrapping_mul(64)
            .wrapping_add(NEXT_BLOCK.fetch_add(1, Ordering::Relaxed));
        let block = (20 + ((n / 256) % 200) as u8, (n % 256) as u8);
        let dir = std::env::temp_dir().join(format!("weft-e2e-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ip = IpAddr::V4(Ipv4Addr::new(127, block.0, block.1, 1));
        let mesh = Mesh {
            name: name.to_string(),
            dir,
            block,
            control_grpc: SocketAddr::new(ip, 15012),
            control_admin: SocketAddr::new(ip, 15014),
            control: None,
            control_extra: control_extra.iter().map(|s| s.to_string()).collect(),
            control_urls: None,
            procs: vec![],
        };
        mesh
    }

    pub fn ip(&self, last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.block.0, self.block.1, last))
    }

    pub fn cp_url(&self) -> String {
        self.control_urls
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.control_grpc))
    }

    /// Starts another weft-control on 127.A.B.`last` (its own data dir,
    /// the same extra flags, e.g. the same etcd store); returns its gRPC
    /// and admin addresses. Stopped with the mesh.
    pub fn start_replica(&mut self, last: u8) -> (SocketAddr, SocketAddr) {
        let (grpc, admin) = (
            SocketAddr::new(self.ip(last), 15012),
            SocketAddr::new(self.ip(last), 15014),
        );
        let mut args = localmesh::control_args(&self.dir.join(format!("data-{last}")), grpc, admin);
        args.extend(self.control_extra.iter().cloned());
        self.spawn(&format!("weft-control-{last}"), localmesh::CONTROL, args);
        localmesh::wait_listening(grpc, Duration::from_secs(15)).expect("replica listening");
        (grpc, admin)
    }

    /// The admin certificate and CA bundle the control plane wrote.
    pub fn pki(&self) -> Pki {
        Pki::of(&self.dir.join("data"))
    }

    /// A join token for `namespace`/`service_account`, minted with weftctl.
    pub fn token(&self, namespace: &str, service_account: &str) -> String {
        let out = self.weftctl(&[
            "token",
            "create",
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ]);
        assert!(
            out.status.success(),
            "weftctl token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn start_control(&mut self) {
        let mut args = localmesh::control_args(
            &self.dir.join("data"),
            self.control_grpc,
            self.control_admin,
        );
        args.extend(self.control_extra.iter().cloned());
        let p = Proc::spawn(
            "weft-control",
            &binaries().path(localmesh::CONTROL),
            &args,
            &self.logs(),
        )
        .expect("start weft-control");
        self.control = Some(p);
        localmesh::wait_listening(self.control_grpc, Duration::from_secs(15))
            .expect("weft-control listening");
        self.pki()
            .wait(Duration::from_secs(15))
            .expect("weft-control wrote its certificates");
    }

    /// SIGKILL the control plane (a crash, not a shutdown).
    pub fn kill_control(&mut self) {
        if let Some(mut c) = self.control.take() {
            c.kill();
        }
    }

    pub fn spawn(&mut self, name: &str, bin: &str, args: Vec<String>) -> &mut Proc {
        self.spawn_env(name, bin, args, vec![])
    }

    /// `spawn` with extra environment variables; stopped with the mesh.
    pub fn spawn_env(
        &mut self,
        name: &str,
        bin: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> &mut Proc {
        let p = Proc::spawn_env(name, &binaries().path(bin), &args, &env, &self.logs())
            .unwrap_or_else(|e| panic!("start {name}: {e:#}"));
        self.procs.push(p);
        self.procs.last_mut().expect("just pushed")
    }

    /// A sample app of `kind` (http, grpc, ...) with extra flags; its port.
    pub fn app(&mut self, kind: &str, name: &str, extra: &[&str]) -> u16 {
        let port = localmesh::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("free port");
        let mut args = vec![
            kind.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(&format!("app-{name}"), localmesh::SAMPLE_APP, args);
        localmesh::wait_listening(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        )
        .expect("app listening");
        port
    }

    /// HTTP/1.1 + h2c sample app answering "hello from NAME"; returns its port.
    pub fn http_app(&mut self, name: &str) -> u16 {
        self.app("http", name, &["--name", name])
    }

    pub fn grpc_app(&mut self, name: &str) -> u16 {
        self.app("grpc", name, &["--name", name])
    }

    pub fn tcp_echo_app(&mut self, name: &str) -> u16 {
        self.app("tcp-echo", name, &[])
    }

    pub fn server_first_app(&mut self, name: &str, banner: &str) -> u16 {
        self.app("server-first", name, &["--banner", banner])
    }

    /// Starts a sidecar on 127.A.B.`last` with default ports; waits for its admin port.
    pub fn proxy(
        &mut self,
        service: &str,
        namespace: &str,
        app_port: u16,
        last: u8,
        extra: &[&str],
    ) -> ProxyAddrs {
        let token = self.token(namespace, service);
        self.proxy_with_token(service, namespace, app_port, last, extra, token)
    }

    /// `proxy` with a given join token (e.g. one granting another identity).
    pub fn proxy_with_token(
        &mut self,
        service: &str,
        namespace: &str,
        app_port: u16,
        last: u8,
        extra: &[&str],
        token: String,
    ) -> ProxyAddrs {
        let auth = ProxyAuth::Token {
            token,
            ca_bundle: self.pki().ca_bundle,
        };
        self.proxy_with_auth(service, namespace, app_port, last, extra, auth)
    }

    /// `proxy` with the given bootstrap credential.
    pub fn proxy_with_auth(
        &mut self,
        service: &str,
        namespace: &str,
        app_port: u16,
        last: u8,
        extra: &[&str],
        auth: ProxyAuth,
    ) -> ProxyAddrs {
        let addrs = ProxyAddrs::on(self.ip(last));
        // Tests list endpoints in their Service YAML; a sidecar registers
        // itself only where the test asks (`--register true`), so the
        // registry never adds endpoints a test did not expect.
        let mut extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.contains(&"--register") {
            extra_args.extend(["--register".to_string(), "false".to_string()]);
        }
        let spec = ProxySpec {
            node: format!("{service}-{last}"),
            namespace: namespace.into(),
            service: service.into(),
            app_port,
            addrs,
            auth,
            extra_args,
        };
        let args = spec.args(&self.cp_url());
        self.spawn_env(
            &format!("proxy-{service}-{last}"),
            localmesh::PROXY,
            args,
            spec.env(),
        );
        localmesh::wait_listening(addrs.admin, Duration::from_secs(15))
            .expect("proxy admin listening");
        addrs
    }

    pub fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Runs weftctl against this mesh's control plane.
    pub fn weftctl(&self, args: &[&str]) -> Output {
        Command::new(binaries().path(localmesh::WEFTCTL))
            .arg("--control-plane")
            .arg(self.cp_url())
            .arg("--certs")
            .arg(self.pki().admin_certs)
            .args(args)
            .output()
            .expect("run weftctl")
    }

    /// Writes `yaml` to a file and applies it with weftctl; returns the revision.
    pub fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<u64> {
        let path = self.dir.join(file);
        std::fs::write(&path, yaml)?;
        let out = self.weftctl(&["-o", "json", "apply", "-f", &path.display().to_string()]);
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("apply -o json output")?;
        v["revision"]
            .as_u64()
            .ok_or_else(|| anyhow!("no revision in {v}"))
    }

    pub fn proxy_status(&self) -> Value {
        let out = self.weftctl(&["-o", "json", "proxy-status"]);
        assert!(
            out.status.success(),
            "proxy-status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("proxy-status JSON")
    }

    /// `weftctl -o json registry list` (optionally one service).
    pub fn registry_list(&self, namespace: &str, service: &str) -> Value {
        let mut args = vec!["-o", "json", "registry", "list", "-n", namespace];
        if !service.is_empty() {
            args.extend(["-s", service]);
        }
        let out = self.weftctl(&args);
        assert!(
            out.status.success(),
            "registry list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("registry list JSON")
    }

    /// Waits until `count` proxies are SYNCED at revision `rev`.
    pub fn wait_synced(&self, rev: u64, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.proxy_status();
            if synced(&status, Some(rev)) >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} proxies not SYNCED at config revision {rev}: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The control plane's Prometheus text.
    pub fn control_metrics(&self) -> String {
        http_request(self.control_admin, "GET", "/metrics", "localhost", &[], b"")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// GET a proxy admin path; (status, body).
    pub fn admin_get(&self, admin: SocketAddr, path: &str) -> (u16, String) {
        http_request(admin, "GET", path, "localhost", &[], b"").unwrap_or((0, String::new()))
    }
}

/// How many proxies `weftctl -o json proxy-status` shows SYNCED (at
/// config revision `rev`, when given).
pub fn synced(status: &Value, rev: Option<u64>) -> usize {
    status["proxies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["state"] == "SYNCED" && rev.is_none_or(|r| p["ackedRevision"] == r))
                .count()
        })
        .unwrap_or(0)
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let all = self.control.iter().chain(self.procs.iter());
            for p in all {
                eprintln!(
                    "----- {} ({}) -----\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail(30)
                );
            }
        }
    }
}

/// client sidecar (ip .2) → server sidecar (ip .3) → http app; route host "server".
pub fn http_pair(mesh: &mut Mesh, protocol: &str) -> (ProxyAddrs, ProxyAddrs) {
    http_pair_with(mesh, protocol, &[])
}

/// `http_pair` with extra flags for the client sidecar.
pub fn http_pair_with(
    mesh: &mut Mesh,
    protocol: &str,
    client_flags: &[&str],
) -> (ProxyAddrs, ProxyAddrs) {
    http_pair_with_flags(mesh, protocol, client_flags, &[])
}

/// `http_pair` with extra flags for each sidecar.
pub fn http_pair_with_flags(
    mesh: &mut Mesh,
    protocol: &str,
    client_flags: &[&str],
    server_flags: &[&str],
) -> (ProxyAddrs, ProxyAddrs) {
    let app = mesh.http_app("server");
    let client = mesh.proxy("client", "e2e", 1, 2, client_flags);
    let server = mesh.proxy("server", "e2e", app, 3, server_flags);
    let yaml = format!(
        "{}---\n{}---\n{}",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        service_yaml("server", "e2e", app, protocol, server.inbound),
        http_route_yaml(
            "server",
            "e2e",
            &["client"],
            &["server", "server.e2e"],
            "server",
            app
        )
    );
    let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
    mesh.wait_synced(rev, 2);
    (client, server)
}

/// The value of the first Prometheus sample of `name` whose labels contain
/// `labels` ("" for any).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Standard two-sidecar topology YAML: `client` may call `server` through
/// route `host` to service port `port` with `protocol`.
pub fn service_yaml(
    name: &str,
    ns: &str,
    port: u16,
    protocol: &str,
    endpoint: SocketAddr,
) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{port: {port}, protocol: {protocol}}}]\n  endpoints: [{{address: \"{}\", port: {}}}]\n",
        endpoint.ip(),
        endpoint.port()
    )
}

pub fn http_route_yaml(
    name: &str,
    ns: &str,
    sources: &[&str],
    hosts: &[&str],
    service: &str,
    port: u16,
) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  sources: [{}]\n  hosts: [{}]\n  http: [{{destination: {{service: {service}, port: {port}}}}}]\n",
        sources.join(", "),
        hosts.join(", ")
    )
}

/// Requests in a loop on a background thread, one every 5 ms, until
/// `finish`: counts the ones that succeed and the ones that fail (each
/// failure is printed with its reason). Stops when dropped, too.
pub struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundLoad {
    /// `request` sends one request: Ok if it got what it should, else why not.
    pub fn start(mut request: impl FnMut() -> Result<(), String> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match request() {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(why) => {
                            eprintln!("background load: failed request: {why}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        BackgroundLoad {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// GETs of `/` with `host` through a sidecar's outbound listener that
    /// must answer 200.
    pub fn http_get(outbound: SocketAddr, host: &'static str) -> Self {
        Self::start(
            move || match http_request(outbound, "GET", "/", host, &[], b"") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    }

    /// Stops the load and returns (succeeded, failed).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A gRPC client of the sample app's Echo service, through a sidecar's
/// outbound listener, with `host` as the :authority the route matches.
pub async fn echo_client(
    outbound: SocketAddr,
    host: &str,
) -> EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .expect("a socket address is a valid URI")
        .origin(format!("http://{host}").parse().expect("valid authority"))
        .connect()
        .await
        .expect("connect to the sidecar's outbound listener");
    EchoClient::new(channel)
}

/// Runs `threads` kept-alive clients (requests for `host`) as fast as they
/// go for `secs`; every reply as
/// (seconds since start, status, Retry-After).
pub fn flood(
    addr: SocketAddr,
    host: &'static str,
    threads: usize,
    secs: f64,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<(f64, u16, Option<String>)> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                let mut out = Vec::new();
                while start.elapsed().as_secs_f64() < secs {
                    let r = c.get(path, host, headers).expect("request");
                    out.push((
                        start.elapsed().as_secs_f64(),
                        r.status,
                        r.header("retry-after").map(String::from),
                    ));
                }
                out
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect()
}
