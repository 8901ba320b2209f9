//! The service registry on etcd: one registry whichever replica is asked,
//! leases that outlive the replica a workload heartbeats to, expiry run by
//! the leader, and conflicting registrations decided by etcd.

use super::*;

const NS: &str = "e2e";
const PORT: u16 = 8080;

/// `weftctl registry list -n e2e -s server` through `url`: (revision,
/// instance id → health).
fn listed(mesh: &Mesh, url: &str) -> (u64, Vec<(String, String)>) {
    let out = weftctl_at(
        mesh,
        url,
        &["-o", "json", "registry", "list", "-n", NS, "-s", "server"],
    );
    assert!(
        out.status.success(),
        "registry list via {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("registry list JSON");
    let mut instances: Vec<(String, String)> = v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["instanceId"].as_str().unwrap_or("").to_string(),
                        i["health"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    instances.sort();
    (v["revision"].as_u64().unwrap_or(0), instances)
}

fn passing(ids: &[&str]) -> Vec<(String, String)> {
    ids.iter()
        .map(|i| (i.to_string(), "passing".to_string()))
        .collect()
}

#[test]
fn one_registry_on_etcd_outlives_the_leader_and_expires_a_dead_workload_everywhere() {
    let (mut mesh, _etcd, urls) = ha_mesh_with("ha-registry", &["--registry-grace", "1s"]);
    let client = mesh.proxy("client", NS, 1, 2, &[]);
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: {PORT}, protocol: http}}]\n---\n{}",
        service_yaml("client", NS, 1, "http", client.inbound),
        http_route_yaml("server", NS, &["client"], &["server"], "server", PORT),
    );
    let rev = apply_at(&mesh, &urls[0], "mesh.yaml", &yaml).expect("apply");
    wait_applied(&[&client], rev, Duration::from_secs(15));
    // Two workloads whose sidecars register themselves (3 s leases) with
    // whichever replica they reach first.
    for last in [10u8, 11] {
        let name = format!("s{last}");
        let app = mesh.app("http", &name, &["--name", &name]);
        mesh.proxy(
            "server",
            NS,
            app,
            last,
            &["--register", "true", "--registry-ttl", "3s"],
        );
    }
    let both = passing(&["server-10", "server-11"]);
    // Every replica lists the same instances at the same revision.
    wait_until_ok(
        "both instances on every replica",
        Duration::from_secs(15),
        || {
            let lists: Vec<_> = urls.iter().map(|u| listed(&mesh, u)).collect();
            lists.iter().all(|l| l == &lists[0]) && lists[0].1 == both
        },
    );
    wait_until_ok("the client reaches both", Duration::from_secs(10), || {
        http_request(client.outbound, "GET", "/", "server", &[], b"").is_ok_and(|(s, _)| s == 200)
    });

    // The leader dies under traffic: no lease it was renewing or sweeping
    // runs out, no request fails.
    let load = BackgroundLoad::http_get(client.outbound, "server");
    let victim = the_leader(&mesh, &urls);
    kill_replica(&mut mesh, victim);
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| urls[i].clone())
        .collect();
    wait_until_ok("a new leader", Duration::from_secs(15), || {
        leaders(&mesh, &survivors[0]).1.len() == 1
    });
    // Three more TTLs with the new leader sweeping.
    let quiet_until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < quiet_until {
        for u in &survivors {
            assert_eq!(
                listed(&mesh, u).1,
                both,
                "via {u}: an instance changed after the leader died"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, failed) = load.finish();
    assert!(ok > 100, "too little load went through: {ok}");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);

    // A workload dies without deregistering: its etcd lease runs out, the
    // new leader expires it, and after the grace every replica drops it.
    let killed = Instant::now();
    mesh.proc_mut("proxy-server-11").kill();
    let mut saw_critical = false;
    wait_until_ok(
        "the dead workload removed everywhere",
        Duration::from_secs(20),
        || {
            let lists: Vec<_> = survivors.iter().map(|u| listed(&mesh, u)).collect();
            saw_critical |= lists.iter().any(|l| {
                l.1.iter()
                    .any(|(id, h)| id == "server-11" && h == "critical")
            });
            lists.iter().all(|l| l.1 == passing(&["server-10"]))
        },
    );
    eprintln!(
        "dead workload removed from every replica {:?} after SIGKILL",
        killed.elapsed()
    );
    assert!(
        saw_critical,
        "the instance was removed without going critical first (grace skipped)"
    );
    assert!(
        killed.elapsed() > Duration::from_secs(3),
        "removed before its 3 s lease could run out"
    );
}

#[test]
fn two_replicas_registering_one_instance_id_for_two_addresses_at_once_admit_exactly_one() {
    let (mesh, _etcd, urls) = ha_mesh("ha-registry-race");
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: {PORT}, protocol: http}}]\n"
    );
    apply_at(&mesh, &urls[0], "service.yaml", &yaml).expect("apply");
    wait_until_ok(
        "every replica has the Service",
        Duration::from_secs(5),
        || {
            urls.iter().all(|u| {
                weftctl_at(&mesh, u, &["get", "services", "server", "-n", NS])
                    .status
                    .success()
            })
        },
    );
    let register = |url: String, last: u8| {
        let address = mesh.ip(last).to_string();
        let certs = mesh.pki().admin_certs;
        std::thread::spawn(move || {
            std::process::Command::new(binaries().path(localmesh::WEFTCTL))
                .args(["--control-plane", &url, "--certs"])
                .arg(certs)
                .args([
                    "registry",
                    "register",
                    "-n",
                    NS,
                    "-s",
                    "server",
                    "--instance-id",
                    "contested",
                    "--address",
                    &address,
                    "--port",
                    "8080",
                    "--ttl",
                    "30s",
                    "--detach",
                ])
                .output()
                .expect("run weftctl")
        })
    };
    for round in 0..5u8 {
        let a = register(urls[1].clone(), 20 + round);
        let b = register(urls[2].clone(), 40 + round);
        let (a, b) = (a.join().expect("a"), b.join().expect("b"));
        let won: Vec<bool> = [&a, &b].iter().map(|o| o.status.success()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one registration must win: {:?} / {:?}",
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
        let loser = if won[0] { &b } else { &a };
        let why = String::from_utf8_lossy(&loser.stderr);
        assert!(
            why.contains("already registered"),
            "round {round}: the loser must be told the id is taken: {why}"
        );
        // Every replica agrees on the winner's address.
        let winner_ip = mesh.ip(if won[0] { 20 + round } else { 40 + round });
        wait_until_ok(
            "every replica has the winner",
            Duration::from_secs(5),
            || {
                urls.iter().all(|u| {
                    let out = weftctl_at(
                        &mesh,
                        u,
                        &["-o", "json", "registry", "list", "-n", NS, "-s", "server"],
                    );
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                    v["instances"].as_array().is_some_and(|a| {
                        a.len() == 1 && a[0]["address"] == winner_ip.to_string().as_str()
                    })
                })
            },
        );
        let out = weftctl_at(
            &mesh,
            &urls[round as usize % 3],
            &[
                "registry",
                "deregister",
                "-n",
                NS,
                "-s",
                "server",
                "--instance-id",
                "contested",
            ],
        );
        assert!(
            out.status.success(),
            "deregister: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until_ok("every replica dropped it", Duration::from_secs(5), || {
            urls.iter().all(|u| listed(&mesh, u).1.is_empty())
        });
    }
}
