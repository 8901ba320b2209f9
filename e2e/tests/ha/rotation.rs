//! CA rotation with three replicas on etcd: the rotation's phase lives in
//! etcd, every replica applies it to its own proxies, and the leader moves
//! it on; killing the leader midway leaves the next leader to finish it.

use super::*;

fn certs(mesh: &Mesh, admin: SocketAddr) -> Value {
    let (code, body) = mesh.admin_get(admin, "/certs");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/certs JSON")
}

#[test]
fn killing_the_leader_mid_ca_rotation_leaves_the_next_leader_to_finish_it_with_no_failed_request() {
    let (mut mesh, _etcd, urls) = ha_mesh("ha-rotate");
    let (client, server, _app, _) = client_and_server(&mut mesh, &urls);
    let old_roots = certs(&mesh, client.admin)["trust_bundle_sha256"].clone();
    assert_eq!(old_roots.as_array().map(Vec::len), Some(1), "{old_roots}");
    let old_issuer = certs(&mesh, client.admin)["chain"][1]["sha256"].clone();

    let leader = the_leader(&mesh, &urls);
    let via = (leader + 1) % 3;
    // weftctl uses the admin certificate of the replica it talks to, which
    // that replica re-issues from the new CA during the rotation.
    let admin = mesh
        .dir
        .join(["data", "data-5", "data-6"][via])
        .join("admin");
    let status = |url: &str| -> Value {
        let out = weftctl_as(
            &admin,
            url,
            &["-o", "json", "certs", "rotate-ca", "--status"],
        );
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let load = BackgroundLoad::http_get(client.outbound, "server");
    std::thread::sleep(Duration::from_millis(300));
    let out = weftctl_as(&admin, &urls[via], &["-o", "json", "certs", "rotate-ca"]);
    assert!(
        out.status.success(),
        "rotate-ca via a follower: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second rotation is refused while this one runs, on any replica.
    let again = weftctl_as(&admin, &urls[(via + 1) % 3], &["certs", "rotate-ca"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The leader dies once proxies are being re-issued from the new CA.
    wait_until_ok("the reissuing phase", Duration::from_secs(30), || {
        status(&urls[via])["phase"] == "reissuing"
    });
    kill_replica(&mut mesh, leader);
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&urls[via]);
        assert_ne!(s["phase"], "failed", "{s}");
        if s["phase"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotation did not finish within 60 s of the leader's death: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "rotation finished {:?} after the leader was killed",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 100, "too little load went through: {ok}");

    // Every surviving replica trusts only the new root; every proxy trusts
    // only it and holds a certificate from the new issuing CA.
    let new_root = status(&urls[via])["roots_sha256"].clone();
    assert_eq!(new_root.as_array().map(Vec::len), Some(1), "{new_root}");
    assert_ne!(new_root, old_roots);
    for (i, url) in urls.iter().enumerate().filter(|(i, _)| *i != leader) {
        wait_until_ok("every replica done", Duration::from_secs(5), || {
            let s = status(url);
            s["phase"] == "done" && s["roots_sha256"] == new_root
        });
        eprintln!("replica {i} done");
    }
    for p in [&client, &server] {
        wait_until_ok(
            "proxies on the new root only",
            Duration::from_secs(5),
            || certs(&mesh, p.admin)["trust_bundle_sha256"] == new_root,
        );
        let c = certs(&mesh, p.admin);
        assert_ne!(
            c["chain"][1]["sha256"], old_issuer,
            "still on the old issuing CA: {c:#}"
        );
    }
}
