//! A real etcd cluster for tests: Debian's `etcd` binary, one member per
//! loopback address of the test's block, client port 2379 and peer port
//! 2380 on each; data under the test's directory; killed when dropped.

use crate::http_client::http_request;
use crate::localmesh::Proc;
use anyhow::{bail, Context};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use xds_proto::etcd::auth_client::AuthClient;

pub struct EtcdCluster {
    pub members: Vec<IpAddr>,
    pub procs: Vec<Proc>,
    args: Vec<Vec<String>>,
    logs: std::path::PathBuf,
    tls: Option<EtcdTls>,
}

/// Certificates for an etcd cluster that speaks TLS to its clients and
/// requires their certificates: a CA, a server certificate for the members'
/// addresses, a client certificate. PEM files in a directory.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

impl EtcdTls {
    pub fn generate(dir: &Path, members: &[IpAddr]) -> anyhow::Result<EtcdTls> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, SanType,
        };
        std::fs::create_dir_all(dir)?;
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "weft test etcd CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |sans: Vec<SanType>,
                    usage: ExtendedKeyUsagePurpose|
         -> anyhow::Result<(String, String)> {
            let mut p = CertificateParams::default();
            p.subject_alt_names = sans;
            p.extended_key_usages = vec![usage];
            p.distinguished_name.push(DnType::CommonName, "weft test");
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server, server_key) = leaf(
            members.iter().map(|ip| SanType::IpAddress(*ip)).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth)?;
        let tls = EtcdTls {
            ca: dir.join("etcd-ca.pem"),
            server_cert: dir.join("etcd-server.pem"),
            server_key: dir.join("etcd-server-key.pem"),
            client_cert: dir.join("etcd-client.pem"),
            client_key: dir.join("etcd-client-key.pem"),
        };
        std::fs::write(&tls.ca, ca_cert.pem())?;
        std::fs::write(&tls.server_cert, server)?;
        std::fs::write(&tls.server_key, server_key)?;
        std::fs::write(&tls.client_cert, client)?;
        std::fs::write(&tls.client_key, client_key)?;
        Ok(tls)
    }

    /// weft-control flags that use these certificates.
    pub fn control_flags(&self) -> Vec<String> {
        vec![
            "--etcd-ca".into(),
            self.ca.display().to_string(),
            "--etcd-cert".into(),
            self.client_cert.display().to_string(),
            "--etcd-key".into(),
            self.client_key.display().to_string(),
        ]
    }
}

/// Where the `etcd` binary is (Debian's etcd-server puts it in /usr/bin).
pub fn etcd_binary() -> Option<std::path::PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// The etcd binary, installing Debian's etcd-server first if it is missing
/// (once per test process; needs root or password-less sudo).
pub fn ensure_etcd() -> anyhow::Result<std::path::PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(bin) = etcd_binary() {
        return Ok(bin);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut c = if root {
            std::process::Command::new("apt-get")
        } else {
            let mut c = std::process::Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !apt(&["install", "-y", "-qq", "etcd-server"]) {
        let _ = apt(&["update", "-qq"]);
        apt(&["install", "-y", "-qq", "etcd-server"]);
    }
    etcd_binary().context(
        "etcd is not installed and could not be installed (apt-get install etcd-server as root)",
    )
}

impl EtcdCluster {
    /// Starts one member per address and waits until every member answers
    /// /health.
    pub fn start(members: &[IpAddr], dir: &Path, logs: &Path) -> anyhow::Result<EtcdCluster> {
        Self::start_with(members, dir, logs, None)
    }

    /// `start`, with clients on TLS and client certificates required.
    pub fn start_with(
        members: &[IpAddr],
        dir: &Path,
        logs: &Path,
        tls: Option<EtcdTls>,
    ) -> anyhow::Result<EtcdCluster> {
        let bin = ensure_etcd()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let token = format!("weft-{}-{}", std::process::id(), dir.display()).replace('/', "-");
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect();
        let mut cluster = EtcdCluster {
            members: members.to_vec(),
            procs: vec![],
            args: vec![],
            logs: logs.to_path_buf(),
            tls: tls.clone(),
        };
        for (i, ip) in members.iter().enumerate() {
            let mut args: Vec<String> = [
                "--name".to_string(),
                format!("m{i}"),
                "--data-dir".into(),
                dir.join(format!("etcd-m{i}")).display().to_string(),
                "--listen-client-urls".into(),
                format!("{scheme}://{ip}:2379"),
                "--advertise-client-urls".into(),
                format!("{scheme}://{ip}:2379"),
                "--listen-peer-urls".into(),
                format!("http://{ip}:2380"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{ip}:2380"),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-token".into(),
                token.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                // Large applies fit one transaction.
                "--max-txn-ops".into(),
                "10000".into(),
                "--max-request-bytes".into(),
                "10485760".into(),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
            ]
            .into();
            if let Some(t) = &tls {
                args.extend([
                    "--cert-file".to_string(),
                    t.server_cert.display().to_string(),
                    "--key-file".into(),
                    t.server_key.display().to_string(),
                    "--trusted-ca-file".into(),
                    t.ca.display().to_string(),
                    "--client-cert-auth".into(),
                ]);
            }
            cluster.args.push(args);
        }
        for i in 0..members.len() {
            let p = Proc::spawn(&format!("etcd-m{i}"), &bin, &cluster.args[i], logs)?;
            cluster.procs.push(p);
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        let _ = &cluster.logs;
        Ok(cluster)
    }

    /// `etcd://m0:2379,m1:2379,...`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|ip| format!("{ip}:2379")).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Waits until every running member reports healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for (i, ip) in self.members.clone().iter().enumerate() {
            if !self.procs[i].is_running() {
                continue;
            }
            loop {
                let ok = match &self.tls {
                    None => http_request((*ip, 2379).into(), "GET", "/health", "etcd", &[], b"")
                        .map(|(code, body)| code == 200 && body.contains("true"))
                        .unwrap_or(false),
                    Some(t) => {
                        let (code, body) = crate::http_client::curl(
                            &[
                                "--cacert",
                                &t.ca.display().to_string(),
                                "--cert",
                                &t.client_cert.display().to_string(),
                                "--key",
                                &t.client_key.display().to_string(),
                            ],
                            &format!("https://{ip}:2379/health"),
                        );
                        code == 200 && String::from_utf8_lossy(&body).contains("true")
                    }
                };
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd member m{i} not healthy within {timeout:?}: {}",
                        self.procs[i].log_tail(20)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Turns on user/password authentication (plaintext clusters): user
    /// `root` with `password` and the root role. Every client must then
    /// authenticate.
    pub fn enable_auth(&self, password: &str) -> anyhow::Result<()> {
        use xds_proto::etcd::{AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest};
        self.auth_api(|mut auth| async move {
            auth.user_add(AuthUserAddRequest {
                name: "root".into(),
                password: password.into(),
            })
            .await?;
            auth.user_grant_role(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            })
            .await?;
            auth.auth_enable(AuthEnableRequest {}).await?;
            anyhow::Ok(())
        })
    }

    /// Runs `f` with etcd's Auth API on member 0 (plaintext clusters).
    fn auth_api<F, Fut>(&self, f: F) -> anyhow::Result<()>
    where
        F: FnOnce(AuthClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let url = format!("http://{}:2379", self.members[0]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(url)?
                .connect()
                .await?;
            f(AuthClient::new(ch)).await
        })
    }

    /// Sets `root`'s password again (to `password`): etcd drops every token
    /// it gave out, as it does when tokens expire.
    pub fn invalidate_tokens(&self, password: &str) -> anyhow::Result<()> {
        use xds_proto::etcd::{AuthUserChangePasswordRequest, AuthenticateRequest};
        self.auth_api(|mut auth| async move {
            let token = auth
                .authenticate(AuthenticateRequest {
                    name: "root".into(),
                    password: password.into(),
                })
                .await?
                .into_inner()
                .token;
            let mut req = tonic::Request::new(AuthUserChangePasswordRequest {
                name: "root".into(),
                password: password.into(),
            });
            req.metadata_mut().insert("token", token.parse()?);
            auth.user_change_password(req).await?;
            anyhow::Ok(())
        })
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        self.procs[i].kill();
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = etcd_binary().context("etcd is not installed")?;
        self.procs[i] = Proc::spawn(&format!("etcd-m{i}"), &bin, &self.args[i], &self.logs)?;
        Ok(())
    }
}
