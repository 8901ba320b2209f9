//! A global rate limit with the servers' sidecars on three different
//! replicas: each replica hears only its own proxies, so the shares must be
//! computed over every replica's reporters to hold the limit mesh-wide.

use super::*;

#[test]
fn a_global_limit_holds_mesh_wide_when_its_proxies_talk_to_three_different_replicas() {
    let (mut mesh, _etcd, urls) = ha_mesh("ha-global-limit");
    let all = mesh.control_urls.clone();
    // Each server sidecar is given one replica only.
    let mut servers = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let name = format!("s{i}");
        let app = mesh.app("http", &name, &["--name", &name]);
        mesh.control_urls = Some(url.clone());
        servers.push(mesh.proxy("server", "e2e", app, 10 + i as u8, &[]));
    }
    mesh.control_urls = all;
    let client = mesh.proxy("client", "e2e", 1, 2, &[]);
    let endpoints: Vec<String> = servers
        .iter()
        .map(|s| {
            format!(
                "{{address: \"{}\", port: {}}}",
                s.inbound.ip(),
                s.inbound.port()
            )
        })
        .collect();
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  endpoints: [{}]\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  sources: [client]\n  hosts: [server]\n  http:\n  - destination: {{service: server, port: 8080}}\n---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: server, namespace: e2e}}\nspec:\n  target: {{service: server}}\n  rateLimits:\n  - {{name: global, rate: 100, burst: 10, global: true}}\n",
        service_yaml("client", "e2e", 1, "http", client.inbound),
        endpoints.join(", ")
    );
    let rev = apply_at(&mesh, &urls[0], "mesh.yaml", &yaml).expect("apply");
    let mut proxies: Vec<&ProxyAddrs> = servers.iter().collect();
    proxies.push(&client);
    wait_applied(&proxies, rev, Duration::from_secs(15));
    // Presence is refreshed every second.
    wait_until_ok(
        "a server sidecar on every replica",
        Duration::from_secs(5),
        || connected_per_replica(&mesh, &urls).iter().all(|n| *n > 0),
    );

    let replies = flood(client.outbound, "server", 6, 5.0, "/", &[]);
    // Shares settle within the first second; measure the next four.
    let window = |r: &&(f64, u16, Option<String>)| r.0 >= 1.0 && r.0 < 5.0;
    let admitted = replies.iter().filter(window).filter(|r| r.1 == 200).count() as f64 / 4.0;
    let offered = replies.iter().filter(window).count() as f64 / 4.0;
    eprintln!(
        "global limit 100/s over 3 replicas: admitted {admitted:.1}/s of {offered:.0}/s offered"
    );
    assert!(
        offered > 200.0,
        "the test must offer well over the limit: {offered}/s"
    );
    assert!(
        (90.0..=110.0).contains(&admitted),
        "admitted {admitted:.0}/s of {offered:.0}/s offered; the limit is 100/s mesh-wide"
    );
}
