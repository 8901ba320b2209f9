//! End-to-end traffic policies with real processes: a client sidecar calls a
//! service of several instances (each a sample app behind its own sidecar);
//! the fault-injecting sample app misbehaves on request; tests count
//! requests on both sides (client replies, the apps' own counters, the
//! proxies' metrics).
//!
//! One test binary; one module per policy.

mod health;
mod lb;
mod limits;
mod outlier;
mod rate_limit;
mod retry;
mod split;
mod timeout;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_testbed::*;

/// A client sidecar and `n` instances of service "server" (app s<i> behind
/// sidecar 127.A.B.(10+i)).
pub struct Fleet {
    mesh: Mesh,
    client: ProxyAddrs,
    apps: Vec<u16>,
    sidecars: Vec<ProxyAddrs>,
    protocol: &'static str,
}
impl Fleet {
    /// The Service with every instance (`fields[i]` added to instance i's
    /// endpoint, e.g. "labels: {version: v1}" or "weight: 3") plus
    /// `extra` documents (routes, policies); waits until every proxy has it.
    fn apply(&self, fields: &[&str], extra: &str) -> u64 {
        self.apply_endpoints(&(0..self.apps.len()).collect::<Vec<_>>(), fields, extra)
    }

    fn apply_endpoints(&self, instances: &[usize], labels: &[&str], extra: &str) -> u64 {
        let port = 8080;
        let endpoints: Vec<String> = instances
            .iter()
            .map(|i| {
                let a = self.sidecars[*i].inbound;
                let extra = labels.get(*i).map(|l| format!(", {l}")).unwrap_or_default();
                format!("{{address: \"{}\", port: {}{extra}}}", a.ip(), a.port())
            })
            .collect();
        let yaml = format!(
            "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  ports: [{{port: {port}, protocol: {}}}]\n  endpoints: [{}]\n---\n{extra}",
            service_yaml("client", "e2e", 1, "http", self.client.inbound),
            self.protocol,
            endpoints.join(", ")
        );
        let rev = self.mesh.apply("mesh.yaml", &yaml).expect("apply");
        self.mesh.wait_synced(rev, 1 + self.apps.len());
        rev
    }

    fn app_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.apps[i]))
    }

    /// An admin call straight to instance i's app (fault, stats).
    fn app_call(&self, i: usize, method: &str, path: &str) -> String {
        let (status, body) =
            http_request(self.app_addr(i), method, path, "app", &[], b"").expect("app admin call");
        assert_eq!(status, 200, "{method} {path}: {body}");
        body
    }

    fn served(&self, i: usize) -> u64 {
        self.app_call(i, "GET", "/stats")
            .trim()
            .strip_prefix("requests ")
            .and_then(|n| n.parse().ok())
            .expect("requests count")
    }

    fn client_metrics(&self) -> String {
        self.mesh.admin_get(self.client.metrics, "/metrics").1
    }
}

pub fn fleet(name: &str, n: usize, protocol: &'static str, app_flags: &[&[&str]]) -> Fleet {
    let mut mesh = Mesh::start(name);
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for i in 0..n {
        let flags: Vec<&str> = app_flags.get(i).copied().unwrap_or(&[]).to_vec();
        let app_name = format!("s{i}");
        let mut args = vec!["--name", app_name.as_str()];
        args.extend(flags);
        let kind = if protocol == "grpc" { "grpc" } else { "http" };
        let port = mesh.app(kind, &app_name, &args);
        apps.push(port);
        sidecars.push(mesh.proxy("server", "e2e", port, 10 + i as u8, &[]));
    }
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    Fleet {
        mesh,
        client,
        apps,
        sidecars,
        protocol,
    }
}

/// `rule` as a Route for host "server" from the client.
pub fn route(rule: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n{rule}")
}

pub fn policy(body: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  target: {{service: server}}\n{body}")
}

pub const DEST: &str = "destination: {service: server, port: 8080}";

/// Sends `n` GETs through the client sidecar on one kept-alive connection;
/// counts replies by (status, x-served-by).
pub fn send(
    f: &Fleet,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> HashMap<(u16, String), usize> {
    let mut c = KeepAlive::new(f.client.outbound);
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = c
            .get(path, "server", headers)
            .expect("request through the sidecar");
        let by = r.header("x-served-by").unwrap_or("-").to_string();
        *out.entry((r.status, by)).or_default() += 1;
    }
    out
}

pub fn count(replies: &HashMap<(u16, String), usize>, status: u16, by: &str) -> usize {
    replies.get(&(status, by.to_string())).copied().unwrap_or(0)
}

pub fn ok_total(replies: &HashMap<(u16, String), usize>) -> usize {
    replies
        .iter()
        .filter(|((s, _), _)| *s == 200)
        .map(|(_, n)| *n)
        .sum()
}

/// Waits until `check` holds, polling; false on timeout.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
