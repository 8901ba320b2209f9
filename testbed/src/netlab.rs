//! Pods in real network namespaces, for the interception tests: a switch
//! namespace holding a bridge (and the control plane on 10.77.0.1), and one
//! namespace per pod on the bridge (10.77.0.<last>/24, a default route out
//! of eth0 so service VIPs route and can be intercepted). Every lab is its
//! own set of namespaces, so the same addresses serve every test at once
//! and nothing reaches the host's network. Processes run inside with
//! `ip netns exec` (and `setpriv` for the proxy's UID); everything started
//! is stopped and every namespace deleted when the lab drops, also when a
//! test panics.

use crate::localmesh::Proc;
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The lab's addresses: 10.77.0.<last>.
pub fn lab_ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, last))
}

/// The switch namespace's address (the control plane listens here).
pub const SWITCH_LAST: u8 = 1;

/// Why namespace tests cannot run here, or None when they can: root,
/// `ip netns`, `iptables` and `setpriv` are all needed.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root".into());
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "setpriv",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let probe = format!(
        "weft-probe-{}-{}",
        std::process::id(),
        NEXT_LAB.fetch_add(1, Ordering::Relaxed)
    );
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    (!made).then(|| "cannot create network namespaces".into())
}

pub struct NetLab {
    prefix: String,
    /// Namespaces made, switch first (deleted last).
    namespaces: Vec<String>,
    pub dir: PathBuf,
    /// World-readable copies of what processes running as another UID
    /// need (binaries, the CA bundle): the checkout may sit under a
    /// directory only root can enter.
    pub shared: PathBuf,
    procs: Vec<Proc>,
}

impl NetLab {
    /// A switch namespace with a bridge on 10.77.0.1/24.
    pub fn new(name: &str) -> anyhow::Result<NetLab> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wf{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("weft-netlab-{prefix}-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared)?;
        for d in [&dir, &shared] {
            chmod(d, "755")?;
        }
        let mut lab = NetLab {
            namespaces: vec![],
            prefix,
            dir,
            shared,
            procs: vec![],
        };
        let sw = lab.ns("sw");
        lab.add_namespace(&sw)?;
        lab.ip(&sw, "link add br0 type bridge")?;
        lab.ip(&sw, &format!("addr add {}/24 dev br0", lab_ip(SWITCH_LAST)))?;
        lab.ip(&sw, "link set br0 up")?;
        Ok(lab)
    }

    /// The namespace name of `role` ("a", "b", "sw").
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        self.ip(ns, "link set lo up")
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, ns: &str, args: &str) -> anyhow::Result<()> {
        let mut a = vec!["-n", ns];
        a.extend(args.split_whitespace());
        run("ip", &a).map(|_| ())
    }

    /// A pod namespace `role` on the bridge as 10.77.0.<last>; its name.
    pub fn pod(&mut self, role: &str, last: u8) -> anyhow::Result<String> {
        let ns = self.ns(role);
        self.add_namespace(&ns)?;
        let sw = self.ns("sw");
        self.ip(
            &sw,
            &format!("link add v{last} type veth peer name eth0 netns {ns}"),
        )?;
        self.ip(&sw, &format!("link set v{last} master br0 up"))?;
        self.ip(&ns, &format!("addr add {}/24 dev eth0", lab_ip(last)))?;
        self.ip(&ns, "link set eth0 up")?;
        self.ip(&ns, "route add default dev eth0")?;
        Ok(ns)
    }

    /// Copies `path` into the shared folder (mode 0755); the copy's path.
    pub fn share(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let name = path.file_name().context("a file name")?;
        let to = self.shared.join(name);
        std::fs::copy(path, &to)
            .with_context(|| format!("cannot copy {} to {}", path.display(), to.display()))?;
        chmod(&to, "755")?;
        Ok(to)
    }

    /// Starts `program` in `ns` (as `uid`, its GID the same, when given);
    /// stopped with the lab.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        uid: Option<u32>,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<&mut Proc> {
        let mut full: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
        if let Some(uid) = uid {
            full.extend(
                [
                    "setpriv",
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &uid.to_string(),
                    "--clear-groups",
                    "--",
                ]
                .map(String::from),
            );
        }
        full.push(program.display().to_string());
        full.extend(args.iter().cloned());
        let p = Proc::spawn_env(name, Path::new("ip"), &full, env, &self.dir.join("logs"))?;
        self.procs.push(p);
        Ok(self.procs.last_mut().expect("just pushed"))
    }

    pub fn proc_mut(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.name == name)
    }

    /// Runs `program args` in `ns` to completion (at most `timeout`).
    pub fn exec(&self, ns: &str, timeout: Duration, program: &str, args: &[&str]) -> Output {
        let secs = format!("{}", timeout.as_secs().max(1));
        let mut full = vec!["netns", "exec", ns, "timeout", &secs, program];
        full.extend(args);
        Command::new("ip")
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {ns} {program}: {e}"))
    }

    /// The tails of every process log, for a failing test.
    pub fn log_tails(&self, lines: usize) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}\n", p.name, p.log_tail(lines)))
            .collect()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        // Processes first (they live in the namespaces), then pods, then
        // the switch.
        self.procs.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn chmod(path: &Path, mode: &str) -> anyhow::Result<()> {
    run("chmod", &[mode, &path.display().to_string()]).map(|_| ())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
