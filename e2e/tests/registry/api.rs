//! The Registry API as a client sees it: who may register what, bad input
//! refused with the field named (and nothing stored), watches that resume,
//! and `weftctl get endpoints` merging static and registered endpoints.

use super::*;
use xds_proto::v1::{self as pb, registry_client::RegistryClient};

type Client = RegistryClient<tonic::transport::Channel>;

async fn admin(mesh: &Mesh) -> Client {
    let auth = weft_mesh_tls::admin_client::AdminAuth::Certs(mesh.pki().admin_certs);
    RegistryClient::new(
        weft_mesh_tls::admin_client::channel(&mesh.cp_url(), &auth)
            .await
            .expect("admin channel"),
    )
}

/// A client with a real workload certificate for `ns`/`sa`.
async fn workload(mesh: &Mesh, ns: &str, sa: &str) -> Client {
    RegistryClient::new(super::workload::workload_channel(mesh, ns, sa).await)
}

fn external(id: &str, address: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        instance: Some(pb::Instance {
            namespace: NS.into(),
            service: "server".into(),
            instance_id: id.into(),
            address: address.into(),
            ports: vec![pb::InstancePort {
                name: "http".into(),
                port: u32::from(PORT),
                protocol: pb::Protocol::Http as i32,
            }],
            ..Default::default()
        }),
        ttl_ms: 30_000,
        ..Default::default()
    }
}

#[test]
fn a_workload_registers_only_its_own_service_and_touches_only_its_own_leases() {
    let f = Fleet::start("registry-authz");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // Identity ns/e2e/sa/x: "server" runs as sa "server".
        let mut x = workload(&f.mesh, NS, "x").await;
        let err = x
            .register(external("x-0", "127.0.0.61"))
            .await
            .expect_err("x may not register server");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("spiffe://cluster.local/ns/e2e/sa/x")
                && err.message().contains("\"server\""),
            "{}",
            err.message()
        );
        // The service's own identity may.
        let mut server = workload(&f.mesh, NS, "server").await;
        let lease = server
            .register(external("server-x", "127.0.0.62"))
            .await
            .expect("server registers server")
            .into_inner()
            .lease_id;
        let err = x
            .deregister(pb::DeregisterRequest {
                lease_id: lease.clone(),
            })
            .await
            .expect_err("x may not deregister another's lease");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("belongs to"), "{}", err.message());
        // Nor renew it.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::HeartbeatRequest {
            lease_id: lease.clone(),
            ..Default::default()
        })
        .await
        .expect("send");
        let mut replies = x
            .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let reply = replies.message().await.expect("reply").expect("one reply");
        assert!(reply.error.contains("belongs to"), "{reply:?}");
        // The admin may.
        admin(&f.mesh)
            .await
            .deregister(pb::DeregisterRequest { lease_id: lease })
            .await
            .expect("admin deregisters");
    });
    let metrics = f.mesh.control_metrics();
    assert!(
        metric(
            &metrics,
            "weft_control_permission_denied_total",
            "service=\"registry\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "weft_control_registry_refused_total", "not_owner").unwrap_or(0.0) >= 2.0
    );
    assert!(f.registered().is_empty());
}

#[test]
fn bad_registrations_are_refused_naming_the_field_and_nothing_is_stored() {
    let f = Fleet::start("registry-bad");
    let register = |args: &[&str]| {
        let mut all = vec![
            "registry", "register", "-n", NS, "--port", "8080", "--detach",
        ];
        all.extend_from_slice(args);
        let out = f.mesh.weftctl(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ok = [
        "-s",
        "server",
        "--address",
        "127.0.0.50",
        "--instance-id",
        "db-1",
    ];
    let long = "x".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-s", "server", "--address", "127.0.0.50", "--ttl", "0s"],
            "--ttl",
        ),
        (
            vec!["-s", "server", "--address", "127.0.0.50", "--ttl=-5s"],
            "--ttl",
        ),
        (
            vec!["-s", "server", "--address", "127.0.0.50", "--ttl", "100d"],
            "ttl_ms",
        ),
        (
            vec!["-s", "", "--address", "127.0.0.50"],
            "instance.service",
        ),
        (
            vec!["-s", &long, "--address", "127.0.0.50"],
            "instance.service",
        ),
        (
            vec!["-s", "server", "--address", "127.0.0.500"],
            "--address",
        ),
        (
            vec!["-s", "server", "--address", "0.0.0.0"],
            "instance.address",
        ),
        (
            vec!["-s", "nosuch", "--address", "127.0.0.50"],
            "instance.service",
        ),
    ];
    for (args, field) in &cases {
        let (success, stderr) = register(args);
        assert!(!success, "{args:?} was accepted");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
    let overlong_id = "i".repeat(300);
    let (success, stderr) = register(&[
        "-s",
        "server",
        "--address",
        "127.0.0.50",
        "--instance-id",
        &overlong_id,
    ]);
    assert!(
        !success && stderr.contains("instance.instance_id"),
        "{stderr}"
    );
    assert!(
        f.registered().is_empty(),
        "a refused registration was stored"
    );
    // One good registration; the same id at another address is refused.
    let (success, stderr) = register(&ok);
    assert!(success, "{stderr}");
    let (success, stderr) = register(&[
        "-s",
        "server",
        "--address",
        "127.0.0.51",
        "--instance-id",
        "db-1",
    ]);
    assert!(!success, "a duplicate instance id was accepted");
    assert!(
        stderr.contains("instance.instance_id") && stderr.contains("127.0.0.50"),
        "{stderr}"
    );
    let listed = f.registered();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["address"], "127.0.0.50");
}

#[test]
fn a_watcher_reconnecting_from_its_revision_gets_exactly_the_fifty_changes_it_missed() {
    let f = Fleet::start("registry-watch");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = admin(&f.mesh).await;
        c.register(external("first", "127.0.0.70"))
            .await
            .expect("register");
        let mut s = c
            .watch(pb::WatchInstancesRequest {
                namespace: NS.into(),
                service: "server".into(),
                from_revision: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        let snapshot = s.message().await.expect("message").expect("snapshot");
        assert!(snapshot.snapshot);
        assert_eq!(snapshot.events.len(), 1);
        let from = snapshot.revision;
        drop(s);
        // 25 registrations and 25 deregistrations while disconnected.
        let mut leases = Vec::new();
        for n in 0..25 {
            leases.push(
                c.register(external(&format!("w-{n}"), &format!("127.0.3.{}", n + 1)))
                    .await
                    .expect("register")
                    .into_inner()
                    .lease_id,
            );
        }
        for l in leases {
            c.deregister(pb::DeregisterRequest { lease_id: l })
                .await
                .expect("deregister");
        }
        let mut s = c
            .watch(pb::WatchInstancesRequest {
                namespace: NS.into(),
                service: "server".into(),
                from_revision: from,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut got = Vec::new();
        while got.len() < 50 {
            let m = tokio::time::timeout(Duration::from_secs(5), s.message())
                .await
                .expect("events within 5 s")
                .expect("message")
                .expect("open");
            assert!(!m.snapshot);
            got.extend(m.events);
        }
        // And nothing more.
        let more = tokio::time::timeout(Duration::from_millis(500), s.message()).await;
        assert!(more.is_err(), "an extra event: {more:?}");
        let revisions: Vec<u64> = got.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, (from + 1..=from + 50).collect::<Vec<_>>());
        let kinds: Vec<i32> = got.iter().map(|e| e.r#type).collect();
        assert!(kinds[..25]
            .iter()
            .all(|k| *k == pb::EventType::Added as i32));
        assert!(kinds[25..]
            .iter()
            .all(|k| *k == pb::EventType::Removed as i32));
    });
}

#[test]
fn get_endpoints_shows_static_and_registered_endpoints_with_their_source_and_health() {
    let mut f = Fleet::start("registry-endpoints");
    // A static endpoint beside the registered instance.
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: {PORT}, protocol: http}}]\n  endpoints: [{{address: \"127.0.0.80\", port: 9999, labels: {{zone: a}}}}]\n"
    );
    f.mesh.apply("static.yaml", &yaml).expect("apply");
    f.instance("a", 10, &["--label", "version=v1"]);
    f.wait_passing(1);
    let out = f
        .mesh
        .weftctl(&["-o", "json", "get", "endpoints", "server", "-n", NS]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let eps = v["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 2, "{v:#}");
    let stat = eps
        .iter()
        .find(|e| e["source"] == "static")
        .expect("static");
    assert_eq!(stat["address"], "127.0.0.80");
    assert_eq!(stat["labels"]["zone"], "a");
    let reg = eps
        .iter()
        .find(|e| e["source"] == "registry")
        .expect("registered");
    assert_eq!(reg["instanceId"], "server-10");
    assert_eq!(reg["health"], "passing");
    assert_eq!(reg["labels"]["version"], "v1");
    assert_eq!(reg["sidecar"], true);
    let table = f.mesh.weftctl(&["get", "endpoints", "server", "-n", NS]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("SOURCE") && text.contains("registry") && text.contains("static"),
        "{text}"
    );
}

#[test]
fn weftctl_registry_watch_prints_a_snapshot_then_each_change_as_json_lines() {
    use std::io::{BufRead, BufReader};
    let f = Fleet::start("registry-cli-watch");
    let mut child = std::process::Command::new(binaries().path(localmesh::WEFTCTL))
        .args(["--control-plane", &f.mesh.cp_url(), "--certs"])
        .arg(f.mesh.pki().admin_certs)
        .args(["-o", "json", "registry", "watch", "-s", "server", "-n", NS])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("weftctl registry watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Give the watch a moment to open, then change the registry.
    std::thread::sleep(Duration::from_millis(500));
    let out = f.mesh.weftctl(&[
        "registry",
        "register",
        "-s",
        "server",
        "-n",
        NS,
        "--address",
        "127.0.0.90",
        "--port",
        "8080",
        "--instance-id",
        "ext-1",
        "--detach",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("an event line within 5 s");
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["type"], "ADDED", "{v:#}");
    assert_eq!(v["instance"]["instanceId"], "ext-1");
    assert_eq!(v["instance"]["address"], "127.0.0.90");
    assert!(v["revision"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn a_route_split_by_version_subset_follows_the_labels_instances_registered_with() {
    let mut f = Fleet::start("registry-subset");
    f.instance("v1a", 10, &["--label", "version=v1"]);
    f.instance("v2a", 11, &["--label", "version=v2"]);
    f.wait_passing(2);
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n  - backends:\n    - {{service: server, port: {PORT}, subset: {{version: v2}}, weight: 100}}\n"
    );
    let rev = f.mesh.apply("subset.yaml", &yaml).expect("apply");
    f.mesh.wait_synced(rev, 3);
    let (names, failures) = calls(&f, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(names.iter().all(|n| n == "v2a"), "{names:?}");
}
