//! End-to-end: a highly available control plane. A real 3-member etcd
//! cluster (Debian's etcd, started here on loopback) and three weft-control
//! replicas on it; proxies and weftctl are given all three addresses.
//! The registry on etcd is in `registry`, CA rotation in `rotation`,
//! global rate limits across replicas in `rate_limit`.

mod queue;
mod rate_limit;
mod registry;
mod rotation;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_testbed::etcd::EtcdCluster;
use weft_testbed::*;

/// The mesh with its three replicas (.1, .5, .6) on a 3-member etcd
/// (.211-.213); returns the etcd cluster and each replica's URL.
fn ha_mesh(name: &str) -> (Mesh, EtcdCluster, Vec<String>) {
    ha_mesh_with(name, &[])
}

/// `ha_mesh` with `flags` for every replica.
fn ha_mesh_with(name: &str, flags: &[&str]) -> (Mesh, EtcdCluster, Vec<String>) {
    let mut mesh = Mesh::prepare(name, &[]);
    std::fs::create_dir_all(mesh.logs()).expect("logs dir");
    let etcd = EtcdCluster::start(
        &[mesh.ip(211), mesh.ip(212), mesh.ip(213)],
        &mesh.dir,
        &mesh.logs(),
    )
    .expect("etcd cluster");
    // The CA's keys in etcd are sealed with a key every replica is given.
    let seal = mesh.dir.join("ca-seal.key");
    std::fs::write(&seal, "5e".repeat(32)).expect("seal key");
    mesh.control_extra = vec![
        "--store".into(),
        etcd.url(),
        "--ca-key-encryption-key-file".into(),
        seal.display().to_string(),
    ];
    mesh.control_extra
        .extend(flags.iter().map(|f| f.to_string()));
    mesh.start_control();
    let (b, _) = mesh.start_replica(5);
    let (c, _) = mesh.start_replica(6);
    let urls = vec![
        format!("https://{}", mesh.control_grpc),
        format!("https://{b}"),
        format!("https://{c}"),
    ];
    mesh.control_urls = Some(urls.join(","));
    (mesh, etcd, urls)
}

fn weftctl_at(mesh: &Mesh, url: &str, args: &[&str]) -> std::process::Output {
    weftctl_as(&mesh.pki().admin_certs, url, args)
}

/// weftctl with the admin certificate in `certs` (each replica writes its
/// own, e.g. `<mesh dir>/data-5/admin`).
fn weftctl_as(certs: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binaries().path(localmesh::WEFTCTL))
        .args(["--control-plane", url, "--certs"])
        .arg(certs)
        .args(args)
        .output()
        .expect("run weftctl")
}

fn apply_at(mesh: &Mesh, url: &str, file: &str, yaml: &str) -> Result<u64, String> {
    let path = mesh.dir.join(file);
    std::fs::write(&path, yaml).expect("write config");
    let out = weftctl_at(
        mesh,
        url,
        &["-o", "json", "apply", "-f", &path.display().to_string()],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {v}"))
}

/// The config revision a proxy has applied (its `weft_config_version`).
fn applied(metrics: SocketAddr) -> u64 {
    http_request(metrics, "GET", "/metrics", "localhost", &[], b"")
        .ok()
        .and_then(|(_, m)| metric(&m, "weft_config_version", ""))
        .unwrap_or(0.0) as u64
}

fn wait_applied(proxies: &[&ProxyAddrs], rev: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    while !proxies.iter().all(|p| applied(p.metrics) >= rev) {
        assert!(
            started.elapsed() < timeout,
            "proxies not at revision {rev} within {timeout:?}: {:?}",
            proxies
                .iter()
                .map(|p| applied(p.metrics))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Proxies connected to each replica (`weftctl get control-planes`), in the
/// order of `urls`.
fn connected_per_replica(mesh: &Mesh, urls: &[String]) -> Vec<usize> {
    let cps = control_planes(mesh, &urls.join(","));
    urls.iter()
        .map(|u| {
            cps.iter()
                .find(|c| c["address"] == u.as_str())
                .and_then(|c| c["connectedProxies"].as_u64())
                .unwrap_or(0) as usize
        })
        .collect()
}

fn mesh_yaml(client: &ProxyAddrs, server: &ProxyAddrs, app: u16, round: u32) -> String {
    format!(
        "{}---\n{}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n  - destination: {{service: server, port: {app}}}\n    responseHeaders: {{set: {{x-round: \"{round}\"}}}}\n",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        service_yaml("server", "e2e", app, "http", server.inbound),
    )
}

/// A client sidecar and a server sidecar (app "server"), the config that
/// joins them applied through replica 0 and applied by both proxies
/// (wherever they are connected): (client, server, app port, revision).
fn client_and_server(mesh: &mut Mesh, urls: &[String]) -> (ProxyAddrs, ProxyAddrs, u16, u64) {
    let app = mesh.http_app("server");
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let server = mesh.proxy("server", "e2e", app, 3, &[]);
    let first = apply_at(
        mesh,
        &urls[0],
        "mesh.yaml",
        &mesh_yaml(&client, &server, app, 0),
    )
    .expect("apply");
    wait_applied(&[&client, &server], first, Duration::from_secs(15));
    (client, server, app, first)
}

#[test]
fn killing_the_busiest_replica_under_traffic_and_applies_fails_no_request_and_loses_no_apply() {
    let (mut mesh, _etcd, urls) = ha_mesh("ha-failover");
    let (client, server, app, first) = client_and_server(&mut mesh, &urls);
    let load = BackgroundLoad::http_get(client.outbound, "server");
    std::thread::sleep(Duration::from_millis(300));

    // Presence is refreshed every second: wait until it shows both proxies.
    wait_until_ok("both proxies counted", Duration::from_secs(5), || {
        connected_per_replica(&mesh, &urls).iter().sum::<usize>() == 2
    });
    let counts = connected_per_replica(&mesh, &urls);
    let victim = (0..3).max_by_key(|i| counts[*i]).unwrap_or(0);
    kill_replica(&mut mesh, victim);
    let survivors: Vec<&String> = (0..3).filter(|i| *i != victim).map(|i| &urls[i]).collect();
    // Config changes through the survivors while the proxies fail over.
    let mut last = first;
    for round in 1..=5u32 {
        let url = survivors[round as usize % 2];
        last = apply_at(
            &mesh,
            url,
            &format!("round-{round}.yaml"),
            &mesh_yaml(&client, &server, app, round),
        )
        .unwrap_or_else(|e| panic!("apply {round} through {url}: {e}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last, first + 5, "every apply is one revision");
    let took = wait_applied(&[&client, &server], last, Duration::from_secs(2));
    eprintln!(
        "both proxies at revision {last} {took:?} after the last apply (replica {victim} killed)"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} requests failed ({ok} ok)");
    assert!(ok > 100, "{ok}");
    // The last apply is what the proxies serve and what the store holds.
    let (status, body, headers) = {
        let mut k = KeepAlive::new(client.outbound);
        let r = k.get("/", "server", &[]).expect("request");
        (
            r.status,
            r.body.clone(),
            r.header("x-round").map(str::to_string),
        )
    };
    assert_eq!((status, headers.as_deref()), (200, Some("5")), "{body}");
    let dead_first = format!(
        "{},{}",
        urls[victim],
        survivors
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = weftctl_at(&mesh, &dead_first, &["-o", "json", "get", "routes"]);
    assert!(
        out.status.success(),
        "weftctl with a dead first address: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(
        routes.contains("x-round") && routes.contains("\"5\""),
        "{routes}"
    );
    // Every replica that is left reports the same revision, and every
    // proxy SYNCED on it, whichever replica it is connected to.
    for url in &survivors {
        wait_until_ok(
            "proxy-status across replicas",
            Duration::from_secs(5),
            || {
                let out = weftctl_at(&mesh, url, &["-o", "json", "proxy-status"]);
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let synced = v["proxies"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|p| p["state"] == "SYNCED" && p["ackedRevision"] == last)
                            .count()
                    })
                    .unwrap_or(0);
                v["revision"] == format!("r{last}") && synced == 2
            },
        );
    }
}

#[test]
fn two_replicas_applying_at_once_both_land_in_order_and_the_store_is_never_half_applied() {
    let (mesh, _etcd, urls) = ha_mesh("ha-conflict");
    let yaml = |port: u16| {
        format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: x, namespace: e2e}}\nspec:\n  ports: [{{port: {port}, protocol: http}}]\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: y, namespace: e2e}}\nspec:\n  ports: [{{port: {port}, protocol: http}}]\n"
        )
    };
    let base = apply_at(&mesh, &urls[0], "base.yaml", &yaml(1000)).expect("apply");
    for round in 0..5u16 {
        let (a, b) = (yaml(2000 + round), yaml(3000 + round));
        let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
            let ta = s.spawn(|| apply_at(&mesh, &urls[0], &format!("a{round}.yaml"), &a));
            let tb = s.spawn(|| apply_at(&mesh, &urls[1], &format!("b{round}.yaml"), &b));
            vec![ta.join().expect("thread"), tb.join().expect("thread")]
        });
        for r in &results {
            if let Err(e) = r {
                assert!(e.contains("changed meanwhile"), "an unclear failure: {e}");
            }
        }
        let out = weftctl_at(&mesh, &urls[2], &["-o", "json", "get", "services"]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("services JSON");
        let text = v.to_string();
        let x_port = ports_of(&v, "x");
        let y_port = ports_of(&v, "y");
        assert_eq!(x_port, y_port, "half-applied: {text}");
        assert!(
            x_port == Some(2000 + round as u64) || x_port == Some(3000 + round as u64),
            "{text}"
        );
    }
    let out = weftctl_at(&mesh, &urls[2], &["-o", "json", "proxy-status"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rev: u64 = v["revision"]
        .as_str()
        .and_then(|r| r.trim_start_matches('r').parse().ok())
        .unwrap_or(0);
    assert!(
        rev > base && rev <= base + 10,
        "revision {rev} after base {base}"
    );
}

fn ports_of(services: &Value, name: &str) -> Option<u64> {
    services
        .as_array()
        .or_else(|| services["objects"].as_array())?
        .iter()
        .find(|o| o["metadata"]["name"] == name || o["name"] == name)
        .and_then(|o| o["spec"]["ports"][0]["port"].as_u64())
}

#[test]
fn etcd_members_dying_cost_no_request_and_a_lost_quorum_refuses_writes_clearly_until_it_returns() {
    let (mut mesh, mut etcd, urls) = ha_mesh("ha-etcd-down");
    let (client, server, app, first) = client_and_server(&mut mesh, &urls);
    let load = BackgroundLoad::http_get(client.outbound, "server");
    let ready = |mesh: &Mesh| {
        http_request(mesh.control_admin, "GET", "/ready", "localhost", &[], b"").expect("/ready")
    };
    // A registered instance (of "client", which nobody calls) must outlive
    // the outage.
    let register = |mesh: &Mesh, url: &str, last: u8| {
        let address = mesh.ip(last).to_string();
        weftctl_at(
            mesh,
            url,
            &[
                "registry",
                "register",
                "-n",
                "e2e",
                "-s",
                "client",
                "--address",
                &address,
                "--port",
                "1",
                "--ttl",
                "60s",
                "--detach",
            ],
        )
    };
    let registered = register(&mesh, &urls[0], 50);
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    let instances = |mesh: &Mesh, url: &str| -> Vec<String> {
        let out = weftctl_at(mesh, url, &["-o", "json", "registry", "list", "-n", "e2e"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut ids: Vec<String> = v["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| i["instanceId"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let before = instances(&mesh, &urls[1]);
    assert_eq!(before.len(), 1, "{before:?}");
    // One member of three: nothing to see.
    etcd.kill(0);
    let r1 = apply_at(
        &mesh,
        &urls[0],
        "one-down.yaml",
        &mesh_yaml(&client, &server, app, 1),
    )
    .expect("apply with one etcd member down");
    assert_eq!(r1, first + 1);
    wait_applied(&[&client, &server], r1, Duration::from_secs(2));
    assert_eq!(ready(&mesh).0, 200);
    // All of them: proxies keep serving the last config; writes are refused.
    etcd.kill(1);
    etcd.kill(2);
    let err = apply_at(
        &mesh,
        &urls[0],
        "all-down.yaml",
        &mesh_yaml(&client, &server, app, 2),
    )
    .expect_err("an apply without etcd");
    assert!(err.contains("store unavailable"), "{err}");
    let refused = register(&mesh, &urls[1], 51);
    assert!(!refused.status.success(), "a registration without etcd");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("store unavailable"), "{why}");
    wait_until_ok("/ready reports the store", Duration::from_secs(5), || {
        let (code, body) = ready(&mesh);
        code == 503 && body.contains("store unavailable")
    });
    let (live, _) =
        http_request(mesh.control_admin, "GET", "/live", "localhost", &[], b"").expect("/live");
    assert_eq!(live, 200);
    std::thread::sleep(Duration::from_millis(500));
    // Back: writes resume where they were.
    for i in 0..3 {
        etcd.restart(i).expect("restart etcd");
    }
    etcd.wait_healthy(Duration::from_secs(30))
        .expect("etcd back");
    wait_until_ok("/ready again", Duration::from_secs(10), || {
        ready(&mesh).0 == 200
    });
    let r2 = apply_at(
        &mesh,
        &urls[1],
        "back.yaml",
        &mesh_yaml(&client, &server, app, 3),
    )
    .expect("apply after etcd returned");
    assert_eq!(r2, r1 + 1, "nothing lost, nothing skipped");
    // The registry kept its instance on every replica, and takes new ones.
    for url in &urls {
        assert_eq!(instances(&mesh, url), before, "via {url}");
    }
    let again = register(&mesh, &urls[2], 51);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    wait_applied(&[&client, &server], r2, Duration::from_secs(2));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} requests failed ({ok} ok)");
}

/// Starts a replica on .9 with only `flags` (besides its addresses and
/// data dir), expects it to exit with an error, and returns its log.
fn replica_that_fails(mesh: &mut Mesh, flags: Vec<String>) -> String {
    let mut args = localmesh::control_args(
        &mesh.dir.join("data-9"),
        SocketAddr::new(mesh.ip(9), 15012),
        SocketAddr::new(mesh.ip(9), 15014),
    );
    args.extend(flags);
    let p = mesh.spawn("weft-control-9", localmesh::CONTROL, args);
    let code = p.wait_exit(Duration::from_secs(20)).expect("it exits");
    assert_ne!(code, Some(0), "the replica started");
    p.log_tail(400)
}

fn wait_until_ok(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn control_planes(mesh: &Mesh, url: &str) -> Vec<Value> {
    let out = weftctl_at(mesh, url, &["-o", "json", "get", "control-planes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("control-planes JSON");
    v["controlPlanes"].as_array().cloned().unwrap_or_default()
}

/// How many replicas `url` lists, and the addresses of those that say
/// they lead.
fn leaders(mesh: &Mesh, url: &str) -> (usize, Vec<String>) {
    let cps = control_planes(mesh, url);
    let leaders: Vec<String> = cps
        .iter()
        .filter(|c| c["leader"] == true)
        .map(|c| c["address"].as_str().unwrap_or("").to_string())
        .collect();
    (cps.len(), leaders)
}

/// Waits for three replicas and one leader; the leader's index in `urls`.
fn the_leader(mesh: &Mesh, urls: &[String]) -> usize {
    wait_until_ok(
        "three replicas, one leader",
        Duration::from_secs(10),
        || {
            let (n, l) = leaders(mesh, &urls[0]);
            n == 3 && l.len() == 1
        },
    );
    let (_, l) = leaders(mesh, &urls[0]);
    urls.iter()
        .position(|u| *u == l[0])
        .expect("the leader is a replica")
}

/// SIGKILLs replica `i` (0: the mesh's first control plane, 1: .5, 2: .6).
fn kill_replica(mesh: &mut Mesh, i: usize) {
    match i {
        0 => mesh.kill_control(),
        1 => mesh.proc_mut("weft-control-5").kill(),
        _ => mesh.proc_mut("weft-control-6").kill(),
    }
}

#[test]
fn weftctl_lists_the_replicas_and_one_leader_and_leadership_moves_when_the_leader_dies() {
    let (mut mesh, _etcd, urls) = ha_mesh("ha-leader");
    let victim = the_leader(&mesh, &urls);
    let leader = urls[victim].clone();
    let killed_at = Instant::now();
    kill_replica(&mut mesh, victim);
    let survivor = &urls[(victim + 1) % 3];
    wait_until_ok("a new leader", Duration::from_secs(10), || {
        let (_, l) = leaders(&mesh, survivor);
        l.len() == 1 && l[0] != leader
    });
    eprintln!(
        "leadership moved {:?} after the leader was killed",
        killed_at.elapsed()
    );
    wait_until_ok(
        "the dead replica gone from the list",
        Duration::from_secs(10),
        || leaders(&mesh, survivor).0 == 2,
    );
}

#[test]
fn a_replica_without_the_seal_key_refuses_to_start_and_says_why() {
    let (mut mesh, etcd, _urls) = ha_mesh("ha-seal");
    let log = replica_that_fails(&mut mesh, vec!["--store".to_string(), etcd.url()]);
    assert!(
        log.contains("encrypted") && log.contains("--ca-key-encryption-key-file"),
        "{log}"
    );
}

#[test]
fn replicas_reach_etcd_over_tls_with_a_client_certificate() {
    use weft_testbed::etcd::EtcdTls;
    let mut mesh = Mesh::prepare("ha-etcd-tls", &[]);
    std::fs::create_dir_all(mesh.logs()).expect("logs dir");
    let member = mesh.ip(211);
    let tls = EtcdTls::generate(&mesh.dir.join("etcd-tls"), &[member]).expect("certificates");
    let etcd = EtcdCluster::start_with(&[member], &mesh.dir, &mesh.logs(), Some(tls.clone()))
        .expect("etcd with TLS");
    let mut extra = vec!["--store".to_string(), etcd.url()];
    extra.extend(tls.control_flags());
    mesh.control_extra = extra;
    mesh.start_control();
    let (b, _) = mesh.start_replica(5);
    let a = format!("https://{}", mesh.control_grpc);
    let b = format!("https://{b}");
    let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: tls, namespace: e2e}\nspec:\n  ports: [{port: 80, protocol: http}]\n";
    let rev = apply_at(&mesh, &a, "tls.yaml", yaml).expect("apply over TLS");
    // The other replica sees it through its own TLS watch.
    wait_until_ok("the other replica has it", Duration::from_secs(5), || {
        let out = weftctl_at(&mesh, &b, &["-o", "json", "proxy-status"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .map(|v| v["revision"] == format!("r{rev}"))
            .unwrap_or(false)
    });
    // Without a client certificate etcd refuses: the replica says so.
    let log = replica_that_fails(
        &mut mesh,
        vec![
            "--store".to_string(),
            etcd.url(),
            "--etcd-ca".into(),
            tls.ca.display().to_string(),
        ],
    );
    assert!(log.contains("cannot use the etcd store"), "{log}");
}

#[test]
fn replicas_authenticate_to_etcd_with_a_password_through_restarts_and_revoked_tokens() {
    let mut mesh = Mesh::prepare("ha-etcd-auth", &[]);
    std::fs::create_dir_all(mesh.logs()).expect("logs dir");
    let mut etcd = EtcdCluster::start(&[mesh.ip(211)], &mesh.dir, &mesh.logs()).expect("etcd");
    etcd.enable_auth("s3cret-pw").expect("turn on etcd auth");
    let password = mesh.dir.join("etcd-password");
    std::fs::write(&password, "s3cret-pw\n").expect("password file");
    let wrong = mesh.dir.join("wrong-password");
    std::fs::write(&wrong, "guess\n").expect("password file");
    let flags = |file: &std::path::Path| {
        vec![
            "--store".to_string(),
            etcd.url(),
            "--etcd-user".into(),
            "root".into(),
            "--etcd-password-file".into(),
            file.display().to_string(),
        ]
    };
    // A wrong password: the replica refuses to start and says why.
    let log = replica_that_fails(&mut mesh, flags(&wrong));
    assert!(
        log.contains("cannot use the etcd store") && log.contains("authentication failed"),
        "{log}"
    );
    mesh.control_extra = flags(&password);
    mesh.start_control();
    let yaml = |name: &str| {
        format!("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}, namespace: e2e}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n")
    };
    let first = mesh
        .apply("a.yaml", &yaml("a"))
        .expect("apply with a password");
    // etcd's tokens do not survive a restart: the replica takes a new one.
    etcd.kill(0);
    etcd.restart(0).expect("restart etcd");
    etcd.wait_healthy(Duration::from_secs(30))
        .expect("etcd back");
    let mut second = None;
    wait_until_ok(
        "an apply after etcd restarted",
        Duration::from_secs(20),
        || {
            second = mesh.apply("b.yaml", &yaml("b")).ok();
            second.is_some()
        },
    );
    assert_eq!(second, Some(first + 1));
    // Tokens expire or are revoked (here: the password is set again): the
    // replica takes a new one and writes go on.
    etcd.invalidate_tokens("s3cret-pw").expect("revoke tokens");
    let third = mesh
        .apply("c.yaml", &yaml("c"))
        .expect("apply after tokens were revoked");
    assert_eq!(third, first + 2);
    let log = mesh
        .control
        .as_ref()
        .expect("weft-control")
        .log_tail(100_000);
    assert!(
        log.matches("authenticated to etcd").count() >= 2,
        "no new token was taken after the restart: {log}"
    );
}
