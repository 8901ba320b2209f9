//! End-to-end: the service registry with real processes. Instances of
//! service "server" are sample apps behind sidecars that register
//! themselves (`--register true`); the Service object lists no endpoints, so
//! every endpoint a caller uses came from the registry. A client sidecar
//! calls "server"; tests watch the registry with weftctl and over gRPC.
//!
//! One test binary; one module per area.

mod api;
mod lifecycle;
mod resilience;
#[path = "../common/workload.rs"]
mod workload;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use weft_testbed::*;

pub const NS: &str = "e2e";
/// The Service's port; every instance's sidecar forwards to its own app.
pub const PORT: u16 = 8080;

/// Registry settings short enough for tests: 1 s leases, 1 s grace.
pub const CONTROL_FLAGS: &[&str] = &["--registry-grace", "1s"];

/// A client sidecar that may call "server", and the registered instances.
pub struct Fleet {
    pub mesh: Mesh,
    pub client: ProxyAddrs,
    /// (name, sidecar addresses, app port) per instance started.
    pub instances: Vec<(String, ProxyAddrs, u16)>,
}

impl Fleet {
    /// The control plane, the Services (server without endpoints), the
    /// route and the client sidecar.
    pub fn start(name: &str) -> Fleet {
        Self::start_with(name, CONTROL_FLAGS)
    }

    pub fn start_with(name: &str, control_flags: &[&str]) -> Fleet {
        let mut mesh = Mesh::start_with(name, control_flags);
        let client = mesh.proxy("client", NS, 1, 2, &[]);
        let yaml = format!(
            "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: {PORT}, protocol: http}}]\n---\n{}",
            service_yaml("client", NS, 1, "http", client.inbound),
            http_route_yaml("server", NS, &["client"], &["server"], "server", PORT),
        );
        let rev = mesh.apply("mesh.yaml", &yaml).expect("apply");
        mesh.wait_synced(rev, 1);
        Fleet {
            mesh,
            client,
            instances: vec![],
        }
    }

    /// Starts app `name` and its registering sidecar on 127.A.B.`last`
    /// (1 s lease) with `extra` sidecar flags; returns its index.
    pub fn instance(&mut self, name: &str, last: u8, extra: &[&str]) -> usize {
        let app = self.mesh.app("http", name, &["--name", name]);
        let mut flags = vec!["--register", "true", "--registry-ttl", "1s"];
        flags.extend_from_slice(extra);
        let addrs = self.mesh.proxy("server", NS, app, last, &flags);
        self.instances.push((name.to_string(), addrs, app));
        self.instances.len() - 1
    }

    /// The sidecar process of instance `i`.
    pub fn sidecar(&mut self, i: usize) -> &mut Proc {
        let last = last_octet(self.instances[i].1.ip);
        self.mesh.proc_mut(&format!("proxy-server-{last}"))
    }

    /// The registered instances of "server", by instance id.
    pub fn registered(&self) -> Vec<Value> {
        self.mesh.registry_list(NS, "server")["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn health_of(&self, i: usize) -> Option<String> {
        let id = self.instance_id(i);
        self.registered()
            .into_iter()
            .find(|v| v["instanceId"] == id.as_str())
            .map(|v| v["health"].as_str().unwrap_or("").to_string())
    }

    /// The instance id a testbed sidecar registers (its node name).
    pub fn instance_id(&self, i: usize) -> String {
        format!("server-{}", last_octet(self.instances[i].1.ip))
    }

    /// Waits until `n` instances are registered and passing.
    pub fn wait_passing(&self, n: usize) {
        wait_until(
            &format!("{n} passing instances"),
            Duration::from_secs(15),
            || {
                self.registered()
                    .iter()
                    .filter(|v| v["health"] == "passing")
                    .count()
                    == n
            },
        );
    }

    /// One request through the client sidecar: the app's name, or why not.
    pub fn call(&self) -> Result<String, String> {
        who(self.client.outbound)
    }
}

/// GET / for host "server" through `outbound`: "a" for "hello from a".
pub fn who(outbound: SocketAddr) -> Result<String, String> {
    match http_request(outbound, "GET", "/", "server", &[], b"") {
        Ok((200, body)) => body
            .trim()
            .strip_prefix("hello from ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| format!("200 with an unexpected body: {body:?}")),
        Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// The testbed's sidecars are on 127.A.B.<last>.
fn last_octet(ip: std::net::IpAddr) -> u8 {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(v6) => v6.octets()[15],
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A log line without its ANSI colours.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Calls "server" `n` times in a row; the names that answered, and the
/// failures.
pub fn calls(f: &Fleet, n: usize) -> (Vec<String>, Vec<String>) {
    let (mut ok, mut failed) = (vec![], vec![]);
    for _ in 0..n {
        match f.call() {
            Ok(name) => ok.push(name),
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}
