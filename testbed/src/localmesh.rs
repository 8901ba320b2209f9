//! Runs Weft's real binaries on loopback: the control plane, sidecars and
//! sample workloads, each a child process that is stopped (SIGTERM, then
//! SIGKILL) when its handle drops. Used by `weftctl demo`, the e2e tests and
//! the benches, so every one of them starts processes the same way.

use anyhow::{anyhow, bail, Context};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the weft-control, weft-proxy and weft-sample-app executables are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

pub const CONTROL: &str = "weft-control";
pub const PROXY: &str = "weft-proxy";
pub const SAMPLE_APP: &str = "weft-sample-app";
pub const WEFTCTL: &str = "weftctl";
pub const INIT: &str = "weft-init";

impl Binaries {
    /// Finds the binaries next to `exe_dir` (a cargo target profile dir). When
    /// running under cargo (`CARGO` set) they are (re)built first with the same
    /// profile, so `cargo run -p weftctl -- demo` works from a fresh clone.
    pub fn locate(exe_dir: &Path) -> anyhow::Result<Binaries> {
        let profile_dir = if exe_dir.ends_with("deps") {
            exe_dir.parent().unwrap_or(exe_dir).to_path_buf()
        } else {
            exe_dir.to_path_buf()
        };
        let names = [CONTROL, PROXY, SAMPLE_APP, WEFTCTL, INIT];
        if let Ok(cargo) = std::env::var("CARGO") {
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            eprintln!("building the mesh binaries (the first build takes a few minutes)...");
            let mut cmd = Command::new(cargo);
            cmd.arg("build");
            if release {
                cmd.arg("--release");
            }
            // The whole workspace, so features unify exactly as in
            // `cargo build --workspace` / `cargo test --workspace` and nothing
            // is compiled twice.
            cmd.args(["--workspace", "--bins"]);
            if let Some(workspace) = workspace_root() {
                cmd.current_dir(workspace);
            }
            // Cargo gives a running test or binary its own package's CARGO_PKG_*
            // and CARGO_MANIFEST_* variables; passed on, they change build-script
            // fingerprints and the nested build recompiles crates for nothing.
            for (key, _) in std::env::vars_os() {
                let k = key.to_string_lossy();
                if [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .iter()
                .any(|p| k.starts_with(p))
                {
                    cmd.env_remove(&key);
                }
            }
            let status = cmd
                .status()
                .context("cannot run cargo build for the mesh binaries")?;
            if !status.success() {
                bail!("cargo build of the mesh binaries failed");
            }
        }
        for n in names {
            if !profile_dir.join(n).exists() {
                bail!(
                    "{} not found in {} (build with `cargo build --workspace --bins`)",
                    n,
                    profile_dir.display()
                );
            }
        }
        Ok(Binaries { dir: profile_dir })
    }

    /// For a process started by cargo (test or run): the binaries beside it.
    pub fn from_current_exe() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("cannot find current executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("executable has no parent dir"))?;
        Binaries::locate(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn workspace_root() -> Option<PathBuf> {
    // CARGO_MANIFEST_DIR of the crate being run (cli/ or e2e/): its parent is the workspace.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from)?;
    let parent = dir.parent()?.to_path_buf();
    parent.join("Cargo.toml").exists().then_some(parent)
}

/// A child process stopped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        Self::spawn_env(name, program, args, &[], log_dir)
    }

    /// `spawn` with extra environment variables (secrets such as the join
    /// token go here, not on the command line).
    pub fn spawn_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env(
                "RUST_LOG",
                std::env::var("WEFT_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (e.g. libc::SIGTERM) without waiting.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits up to `timeout` for exit; returns the exit code (None: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} already reaped", self.name))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {:?}", self.name, timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL, no drain (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free TCP port on `ip` (bound and released; fine for tests on loopback).
pub fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// Waits until a TCP connect to `addr` succeeds.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listening on {addr} after {timeout:?}")
}

/// Addresses of one sidecar on its own loopback IP, default ports.
#[derive(Debug, Clone, Copy)]
pub struct ProxyAddrs {
    pub ip: IpAddr,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
}

impl ProxyAddrs {
    pub fn on(ip: IpAddr) -> ProxyAddrs {
        ProxyAddrs {
            ip,
            outbound: SocketAddr::new(ip, 15001),
            inbound: SocketAddr::new(ip, 15006),
            admin: SocketAddr::new(ip, 15000),
            metrics: SocketAddr::new(ip, 15090),
        }
    }
}

/// How a sidecar gets its identity.
#[derive(Debug, Clone)]
pub enum ProxyAuth {
    /// A join token (passed as WEFT_TOKEN) and the control plane's CA bundle.
    Token { token: String, ca_bundle: PathBuf },
    /// A credential file (--token-file, e.g. a service-account token) and
    /// the control plane's CA bundle.
    TokenFile { path: PathBuf, ca_bundle: PathBuf },
    /// Plaintext to a control plane started with --insecure-dev.
    InsecureDev,
}

/// How to run one sidecar.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub node: String,
    pub namespace: String,
    pub service: String,
    pub app_port: u16,
    pub addrs: ProxyAddrs,
    pub auth: ProxyAuth,
    pub extra_args: Vec<String>,
}

impl ProxySpec {
    pub fn args(&self, control_plane: &str) -> Vec<String> {
        let mut a = vec![
            "--control-plane".into(),
            control_plane.into(),
            "--node".into(),
            self.node.clone(),
            "--namespace".into(),
            self.namespace.clone(),
            "--service".into(),
            self.service.clone(),
            "--app-port".into(),
            self.app_port.to_string(),
            "--outbound".into(),
            self.addrs.outbound.to_string(),
            "--inbound".into(),
            self.addrs.inbound.to_string(),
            "--admin".into(),
            self.addrs.admin.to_string(),
            "--metrics".into(),
            self.addrs.metrics.to_string(),
        ];
        match &self.auth {
            ProxyAuth::Token { ca_bundle, .. } => {
                a.push("--ca-bundle".into());
                a.push(ca_bundle.display().to_string());
            }
            ProxyAuth::TokenFile { path, ca_bundle } => {
                a.push("--ca-bundle".into());
                a.push(ca_bundle.display().to_string());
                a.push("--token-file".into());
                a.push(path.display().to_string());
            }
            ProxyAuth::InsecureDev => a.push("--insecure-dev".into()),
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match &self.auth {
            ProxyAuth::Token { token, .. } => vec![("WEFT_TOKEN".into(), token.clone())],
            ProxyAuth::TokenFile { .. } | ProxyAuth::InsecureDev => vec![],
        }
    }
}

/// Where a control plane started with `data_dir` writes weftctl's admin
/// certificate directory and the CA bundle proxies bootstrap with.
pub struct Pki {
    pub admin_certs: PathBuf,
    pub ca_bundle: PathBuf,
}

impl Pki {
    pub fn of(data_dir: &Path) -> Pki {
        Pki {
            admin_certs: data_dir.join("admin"),
            ca_bundle: data_dir.join("ca-bundle.pem"),
        }
    }

    /// Waits until the control plane has written both.
    pub fn wait(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let key = self.admin_certs.join("key.pem");
        while Instant::now() < deadline {
            if self.ca_bundle.exists() && key.exists() && self.admin_certs.join("ca.pem").exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the control plane did not write {} and {} within {timeout:?}",
            self.admin_certs.display(),
            self.ca_bundle.display()
        )
    }
}

pub fn control_args(data_dir: &Path, grpc: SocketAddr, admin: SocketAddr) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        grpc.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ]
}
