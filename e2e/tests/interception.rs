//! Transparent interception in real network namespaces (issue 15): pods
//! are namespaces on a bridge, each meshed pod has its rules installed by
//! `weft-init` and a `weft-proxy` running as UID 1337; the apps are
//! unmodified (curl, Python's grpcio, Python sockets, redis-cli, the sample
//! apps, Debian's redis-server) and dial plain addresses. The control plane
//! runs in the switch namespace. Needs root; CI runs as root. Where
//! namespaces cannot be made at all the tests say so and skip.

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_testbed::netlab::{self, lab_ip, NetLab, SWITCH_LAST};
use weft_testbed::{binaries, localmesh, metric, synced, Pki};

const PROXY_UID: u32 = 1337;
const B_VIP: &str = "10.96.0.11";
const T: Duration = Duration::from_secs(20);
const PEER_A: &str = "spiffe://cluster.local/ns/shop/sa/a";

/// Pods a (10) and b (11) meshed, c (20) outside the mesh, d (30) an
/// unmeshed client; the control plane on the switch (10.77.0.1).
struct Pods {
    lab: NetLab,
    a: String,
    b: String,
    c: String,
    d: String,
    admin_certs: PathBuf,
}

fn skip() -> bool {
    match netlab::unavailable() {
        Some(why) => {
            eprintln!("skipped: needs root + netns ({why})");
            true
        }
        None => false,
    }
}

fn cp_url() -> String {
    format!("https://{}:15012", lab_ip(SWITCH_LAST))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const MESH_YAML: &str = r#"
apiVersion: weft.dev/v1
kind: Service
metadata: {name: a, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: b, namespace: shop}
spec:
  addresses: [10.96.0.11]
  ports:
    - {name: http, port: 8080, protocol: http}
    - {name: grpc, port: 9090, protocol: grpc}
    - {name: echo, port: 7000, protocol: tcp}
    - {name: redis, port: 6379, protocol: tcp}
"#;

impl Pods {
    fn start(name: &str) -> Pods {
        let mut lab = NetLab::new(name).expect("lab");
        let a = lab.pod("a", 10).expect("pod a");
        let b = lab.pod("b", 11).expect("pod b");
        let c = lab.pod("c", 20).expect("pod c");
        let d = lab.pod("d", 30).expect("pod d");
        let bins = binaries();
        let sw = lab.ns("sw");
        let data = lab.dir.join("data");
        let cp_args = localmesh::control_args(
            &data,
            std::net::SocketAddr::new(lab_ip(SWITCH_LAST), 15012),
            "127.0.0.1:15014".parse().expect("addr"),
        );
        lab.spawn(
            &sw,
            "weft-control",
            None,
            &bins.path(localmesh::CONTROL),
            &cp_args,
            &[],
        )
        .expect("control plane");
        let pki = Pki::of(&data);
        pki.wait(T).expect("control plane certificates");
        let mut pods = Pods {
            lab,
            a,
            b,
            c,
            d,
            admin_certs: pki.admin_certs.clone(),
        };
        pods.wait_cp();
        pods.apply(MESH_YAML);
        let ca = pods.lab.share(&pki.ca_bundle).expect("share the CA bundle");
        let proxy = pods
            .lab
            .share(&bins.path(localmesh::PROXY))
            .expect("share weft-proxy");
        let app = bins.path(localmesh::SAMPLE_APP);
        // The apps: plain servers on every address, as root, unaware of
        // the mesh.
        let (b_ns, c_ns) = (pods.b.clone(), pods.c.clone());
        for (ns, who, kind, port) in [
            (&b_ns, "b", "http", 8080),
            (&b_ns, "b", "grpc", 9090),
            (&b_ns, "b", "tcp-echo", 7000),
            (&c_ns, "outside", "http", 8080),
            (&c_ns, "outside", "tcp-echo", 7000),
        ] {
            let mut args = vec![
                kind.to_string(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
            ];
            if kind != "tcp-echo" {
                args.extend(["--name".to_string(), who.to_string()]);
            }
            pods.lab
                .spawn(ns, &format!("{who}-{kind}"), None, &app, &args, &[])
                .expect("app");
        }
        let redis: Vec<String> = [
            "--port",
            "6379",
            "--bind",
            "0.0.0.0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        .map(String::from)
        .to_vec();
        pods.lab
            .spawn(
                &b_ns,
                "b-redis",
                None,
                std::path::Path::new("redis-server"),
                &redis,
                &[],
            )
            .expect("redis-server (apt-get install redis-server)");
        // Interception first, then the sidecars (as Kubernetes runs the
        // init container before them), with the arguments the injector
        // gives weft-init.
        let init_args = injected_init_args(&pods.lab.dir);
        let init_args: Vec<&str> = init_args.iter().map(String::as_str).collect();
        for (ns, last, svc) in [(pods.a.clone(), 10, "a"), (pods.b.clone(), 11, "b")] {
            let out = pods.init(&ns, &init_args);
            assert!(out.status.success(), "weft-init: {}", text(&out));
            let token = pods.weftctl_ok(&[
                "token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                svc,
            ]);
            let args: Vec<String> = [
                "--control-plane",
                &cp_url(),
                "--ca-bundle",
                &ca.display().to_string(),
                "--node",
                &format!("{svc}-0"),
                "--namespace",
                "shop",
                "--service",
                svc,
                "--app-port",
                "8080",
                "--inbound",
                "0.0.0.0:15006",
                "--outbound",
                "127.0.0.1:15001",
                "--admin",
                "127.0.0.1:15000",
                "--metrics",
                "0.0.0.0:15090",
                "--advertise-address",
                &lab_ip(last).to_string(),
                "--intercepted",
            ]
            .map(String::from)
            .to_vec();
            let env = [("WEFT_TOKEN".to_string(), token.trim().to_string())];
            pods.lab
                .spawn(
                    &ns,
                    &format!("{svc}-proxy"),
                    Some(PROXY_UID),
                    &proxy,
                    &args,
                    &env,
                )
                .expect("proxy");
        }
        pods.wait_ready();
        pods
    }

    fn init(&self, ns: &str, extra: &[&str]) -> std::process::Output {
        // (the pod's own iptables; `extra` are weft-init's flags)
        let init = binaries().path(localmesh::INIT);
        self.lab.exec(ns, T, &init.display().to_string(), extra)
    }

    fn weftctl(&self, args: &[&str]) -> std::process::Output {
        let ctl = binaries().path(localmesh::WEFTCTL).display().to_string();
        let certs = self.admin_certs.display().to_string();
        let url = cp_url();
        let mut full = vec!["--control-plane", &url, "--certs", &certs];
        full.extend(args);
        self.lab.exec(&self.lab.ns("sw"), T, &ctl, &full)
    }

    fn weftctl_ok(&self, args: &[&str]) -> String {
        let out = self.weftctl(args);
        assert!(out.status.success(), "weftctl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_cp(&self) {
        let deadline = Instant::now() + T;
        loop {
            let out = self.weftctl(&["-o", "json", "proxy-status"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control plane not answering: {}",
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn apply(&self, yaml: &str) -> u64 {
        let file = self.lab.dir.join(format!("apply-{}.yaml", yaml.len()));
        std::fs::write(&file, yaml).expect("write yaml");
        let out = self.weftctl_ok(&["-o", "json", "apply", "-f", &file.display().to_string()]);
        let v: Value = serde_json::from_str(&out).expect("apply JSON");
        v["revision"].as_u64().expect("revision")
    }

    /// Both sidecars SYNCED at the latest revision and b registered.
    fn wait_ready(&self) {
        let deadline = Instant::now() + T;
        loop {
            let status: Value =
                serde_json::from_str(&self.weftctl_ok(&["-o", "json", "proxy-status"]))
                    .expect("proxy-status JSON");
            let synced = synced(&status, None);
            let registry: Value = serde_json::from_str(
                &self.weftctl_ok(&["-o", "json", "registry", "list", "-n", "shop", "-s", "b"]),
            )
            .expect("registry JSON");
            let registered = registry.to_string().contains("10.77.0.11");
            if synced == 2 && registered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sidecars not ready: {status:#}\n{registry:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until both sidecars acknowledged config revision `rev`.
    fn wait_synced(&self, rev: u64) {
        let deadline = Instant::now() + T;
        loop {
            let status: Value =
                serde_json::from_str(&self.weftctl_ok(&["-o", "json", "proxy-status"]))
                    .expect("proxy-status JSON");
            if synced(&status, Some(rev)) == 2 {
                return;
            }
            assert!(Instant::now() < deadline, "not synced at {rev}: {status:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// curl in `ns` as root (an unmodified client): (HTTP status, body).
    fn curl(&self, ns: &str, extra: &[&str], url: &str) -> (u16, String) {
        let mut args = vec!["-sS", "--max-time", "10", "-w", "\n%{http_code}"];
        args.extend(extra);
        args.push(url);
        let out = self.lab.exec(ns, T, "curl", &args);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A Python socket client in `ns`: sends `msg`, returns what came back.
    fn tcp_echo(&self, ns: &str, host: &str, port: u16, msg: &str) -> String {
        let script = format!(
            "import socket\ns=socket.create_connection(('{host}',{port}),timeout=10)\ns.sendall(b'{msg}')\nb=b''\nwhile len(b)<{n}:\n  c=s.recv(4096)\n  if not c: break\n  b+=c\nprint(b.decode())",
            n = msg.len()
        );
        let out = self.lab.exec(ns, T, "python3", &["-c", &script]);
        assert!(out.status.success(), "tcp client: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A sidecar's Prometheus text (read inside its pod, on loopback).
    fn metrics(&self, ns: &str) -> String {
        self.curl(ns, &[], "http://127.0.0.1:15090/metrics").1
    }
}

fn count(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Python grpcio's health check (the raw method, no generated stubs): the
/// response bytes `08 01` are status SERVING.
const GRPC_HEALTH: &str = "import grpc,sys\nch=grpc.insecure_channel(sys.argv[1])\nr=ch.unary_unary('/grpc.health.v1.Health/Check')(b'',timeout=10)\nprint(r.hex())";

#[test]
fn an_unmodified_apps_calls_are_captured_and_secured_and_non_mesh_traffic_passes_through() {
    if skip() {
        return;
    }
    let pods = Pods::start("capture");
    // (5) The sidecars reached the control plane with their rules in
    // place: their own connection was not intercepted (nothing has passed
    // through a's outbound side yet).
    let before = pods.metrics(&pods.a);
    assert_eq!(
        count(&before, "weft_outbound_passthrough_total", ""),
        0.0,
        "{before}"
    );

    // (1) HTTP/1.1, h2c, gRPC and TCP to b's service address.
    let vip = |port: u16| format!("http://{B_VIP}:{port}");
    let (code, body) = pods.curl(&pods.a, &[], &vip(8080));
    assert_eq!(
        (code, body.trim()),
        (200, "hello from b path=/ version=HTTP/1.1")
    );
    let (code, headers) = pods.curl(&pods.a, &[], &format!("{}/headers", vip(8080)));
    assert_eq!(code, 200);
    assert!(
        headers.contains(PEER_A),
        "b's app sees a's verified identity: {headers}"
    );
    let (code, body) = pods.curl(&pods.a, &["--http2-prior-knowledge"], &vip(8080));
    assert_eq!(code, 200, "h2c");
    assert!(body.starts_with("hello from b "), "h2c: {body}");
    let out = pods.lab.exec(
        &pods.a,
        T,
        "python3",
        &["-c", GRPC_HEALTH, &format!("{B_VIP}:9090")],
    );
    assert!(out.status.success(), "grpcio: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0801",
        "SERVING"
    );
    assert_eq!(pods.tcp_echo(&pods.a, B_VIP, 7000, "weft-tcp"), "weft-tcp");
    // Also by b's pod address: the endpoint is in the mesh too.
    let (code, headers) = pods.curl(&pods.a, &[], "http://10.77.0.11:8080/headers");
    assert_eq!(code, 200);
    assert!(headers.contains(PEER_A), "{headers}");

    // mTLS on the wire: b's sidecar counted a's verified identity for
    // every call, a's counted mTLS hops and no plaintext ones.
    let b = pods.metrics(&pods.b);
    let peer = format!("peer=\"{PEER_A}\"");
    assert!(count(&b, "weft_inbound_peer_total", &peer) >= 6.0, "{b}");
    let a = pods.metrics(&pods.a);
    assert!(
        count(
            &a,
            "weft_outbound_security_total",
            "protocol=\"tcp\",security=\"mtls\""
        ) >= 1.0,
        "{a}"
    );
    assert!(
        count(
            &a,
            "weft_outbound_security_total",
            "protocol=\"http\",security=\"mtls\""
        ) >= 4.0,
        "{a}"
    );
    assert_eq!(
        count(&a, "weft_outbound_security_total", "security=\"plaintext\""),
        0.0,
        "{a}"
    );

    // (2) Outside the mesh: passes through unchanged, HTTP and TCP.
    let (code, body) = pods.curl(&pods.a, &[], "http://10.77.0.20:8080/");
    assert_eq!(
        (code, body.trim()),
        (200, "hello from outside path=/ version=HTTP/1.1")
    );
    // The client's HTTP version is kept: h2c stays h2c.
    let (code, body) = pods.curl(
        &pods.a,
        &["--http2-prior-knowledge"],
        "http://10.77.0.20:8080/x",
    );
    assert_eq!(
        (code, body.trim()),
        (200, "hello from outside path=/x version=HTTP/2.0")
    );
    let (code, headers) = pods.curl(&pods.a, &[], "http://10.77.0.20:8080/headers");
    assert_eq!(code, 200);
    assert!(!headers.contains("x-weft-peer-identity"), "{headers}");
    assert_eq!(
        pods.tcp_echo(&pods.a, "10.77.0.20", 7000, "outside"),
        "outside"
    );
    let a = pods.metrics(&pods.a);
    assert_eq!(
        count(&a, "weft_outbound_passthrough_total", "protocol=\"http\""),
        3.0,
        "{a}"
    );
    assert_eq!(
        count(&a, "weft_outbound_passthrough_total", "protocol=\"tcp\""),
        1.0,
        "{a}"
    );

    // Running weft-init again (the same injected arguments) changes
    // nothing.
    let init_args = injected_init_args(&pods.lab.dir);
    let init_args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let again = pods.init(&pods.a, &init_args);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing changed"),
        "{}",
        text(&again)
    );

    // (6) --cleanup restores direct connections: b's app answers a
    // without either sidecar (no identity), and b's sidecar sees nothing.
    for ns in [&pods.a, &pods.b] {
        let out = pods.init(ns, &["--cleanup"]);
        assert!(out.status.success(), "{}", text(&out));
        let saved = pods.lab.exec(ns, T, "iptables-save", &["-t", "nat"]);
        assert!(
            !String::from_utf8_lossy(&saved.stdout).contains("WEFT_"),
            "{}",
            text(&saved)
        );
    }
    let peers_before = count(&pods.metrics(&pods.b), "weft_inbound_peer_total", &peer);
    let (code, headers) = pods.curl(&pods.a, &[], "http://10.77.0.11:8080/headers");
    assert_eq!(code, 200);
    assert!(!headers.contains("x-weft-peer-identity"), "{headers}");
    assert_eq!(
        count(&pods.metrics(&pods.b), "weft_inbound_peer_total", &peer),
        peers_before
    );
}

#[test]
fn strict_refuses_unmeshed_plaintext_permissive_serves_it_and_redis_works_through_interception() {
    if skip() {
        return;
    }
    let pods = Pods::start("modes");
    // (4) redis-cli in a to redis-server in b, through both sidecars.
    let redis = |args: &[&str]| {
        let mut full = vec!["-h", B_VIP, "-p", "6379"];
        full.extend(args);
        let out = pods.lab.exec(&pods.a, T, "redis-cli", &full);
        assert!(out.status.success(), "redis-cli: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis(&["SET", "weft", "meshed"]), "OK");
    assert_eq!(redis(&["GET", "weft"]), "meshed");
    let b = pods.metrics(&pods.b);
    assert!(
        count(&b, "weft_inbound_peer_total", &format!("peer=\"{PEER_A}\"")) >= 2.0,
        "{b}"
    );

    // (3) d is outside the mesh (no rules, no sidecar) and speaks
    // plaintext to b's pod: strict (the default) refuses it...
    let (code, _) = pods.curl(&pods.d, &[], "http://10.77.0.11:8080/");
    assert_eq!(code, 0, "strict mode must not answer a plaintext caller");
    let b = pods.metrics(&pods.b);
    assert!(
        count(
            &b,
            "weft_inbound_plaintext_connections_total",
            "result=\"refused\""
        ) >= 1.0,
        "{b}"
    );
    // ...permissive serves it, without an identity.
    let rev = pods.apply(
        "apiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {name: migrate, namespace: shop}\nspec: {mtls: permissive}\n",
    );
    pods.wait_synced(rev);
    let (code, headers) = pods.curl(&pods.d, &[], "http://10.77.0.11:8080/headers");
    assert_eq!(code, 200);
    assert!(!headers.contains("x-weft-peer-identity"), "{headers}");
    let out = pods.lab.exec(
        &pods.d,
        T,
        "redis-cli",
        &["-h", "10.77.0.11", "-p", "6379", "GET", "weft"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "meshed",
        "{}",
        text(&out)
    );
    let b = pods.metrics(&pods.b);
    assert!(
        count(
            &b,
            "weft_inbound_plaintext_connections_total",
            "result=\"accepted\""
        ) >= 2.0,
        "{b}"
    );
    // Meshed callers still arrive with mTLS and their identity.
    let (code, headers) = pods.curl(&pods.a, &[], &format!("http://{B_VIP}:8080/headers"));
    assert_eq!(code, 200);
    assert!(headers.contains(PEER_A), "{headers}");
}

/// The weft-init arguments `weftctl inject` gives a pod (its init
/// container's args), so the rules tested here are the ones injected pods
/// get.
fn injected_init_args(dir: &std::path::Path) -> Vec<String> {
    let pod = dir.join("inject-pod.yaml");
    let bundle = dir.join("inject-ca.pem");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: a}}\nspec:\n  containers: [{name: a, image: a, ports: [{containerPort: 8080}]}]\n",
    )
    .expect("write pod");
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\n").expect("write bundle");
    let out = std::process::Command::new(binaries().path(localmesh::WEFTCTL))
        .args(["inject", "-f"])
        .arg(&pod)
        .arg("--ca-bundle")
        .arg(&bundle)
        .output()
        .expect("weftctl inject");
    assert!(out.status.success(), "weftctl inject: {}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout);
    let pod: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    let args: Vec<String> = pod["spec"]["initContainers"][0]["args"]
        .as_array()
        .expect("weft-init args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert!(args.contains(&"--proxy-uid".to_string()), "{yaml}");
    args
}
