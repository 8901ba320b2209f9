//! Micro-benchmarks of the per-request pieces of the proxy: loading the
//! snapshot, matching a route among many virtual hosts, picking an endpoint.
//! `cargo bench -p weft-proxy --bench hot_path`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use weft_proxy::snapshot::{new_holder, ResourceCache, Snapshot};
use xds_proto::type_url;
use xds_proto::v1::{self as pb, resource::Kind as RKind, route_rule::Path};

/// A snapshot with `services` virtual hosts, three rules each, 10 endpoints per cluster.
fn snapshot(services: usize) -> Snapshot {
    let mut resources = Vec::new();
    let mut vhosts = Vec::new();
    for s in 0..services {
        let name = format!("svc-{s}.bench:8080");
        resources.push(pb::Resource {
            name: name.clone(),
            type_url: type_url::CLUSTER.into(),
            kind: Some(RKind::Cluster(pb::Cluster {
                name: name.clone(),
                service: format!("svc-{s}"),
                namespace: "bench".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
                ..Default::default()
            })),
        });
        resources.push(pb::Resource {
            name: name.clone(),
            type_url: type_url::ENDPOINTS.into(),
            kind: Some(RKind::Endpoints(pb::Endpoints {
                cluster: name.clone(),
                endpoints: (0..10)
                    .map(|e| pb::Endpoint {
                        address: format!("10.0.{}.{}", s % 250, e + 1),
                        port: 8080,
                        identity: "spiffe://cluster.local/ns/bench/sa/svc".into(),
                        ..Default::default()
                    })
                    .collect(),
            })),
        });
        let rule = |path: Option<Path>, headers: Vec<pb::StringMatch>| pb::RouteRule {
            path,
            headers,
            backends: vec![pb::Backend {
                cluster: name.clone(),
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        vhosts.push(pb::VirtualHost {
            name: format!("bench/svc-{s}"),
            hosts: vec![format!("svc-{s}"), format!("svc-{s}.bench")],
            rules: vec![
                rule(
                    None,
                    vec![pb::StringMatch {
                        name: "x-canary".into(),
                        r#match: Some(pb::string_match::Match::Exact("1".into())),
                    }],
                ),
                rule(Some(Path::Prefix("/api".into())), vec![]),
                rule(None, vec![]),
            ],
        });
    }
    resources.push(pb::Resource {
        name: "outbound".into(),
        type_url: type_url::ROUTE_TABLE.into(),
        kind: Some(RKind::RouteTable(pb::RouteTable {
            name: "outbound".into(),
            virtual_hosts: vhosts,
        })),
    });
    let push = pb::DiscoveryResponse {
        version: "r1".into(),
        nonce: "1".into(),
        resources,
        removed: vec![],
        full_state: true,
    };
    let cache = ResourceCache::default().apply(&push).expect("valid push");
    Snapshot::build("r1", &cache).expect("valid snapshot")
}

fn hot_path(c: &mut Criterion) {
    let snap = snapshot(1000);
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", "bench".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    let get = http::Method::GET;
    c.bench_function("route_match_1000_hosts_fallthrough_rule", |b| {
        b.iter(|| {
            black_box(snap.routes.route_index(
                black_box("svc-777.bench:8080"),
                black_box("/index.html"),
                None,
                &get,
                &headers,
            ))
        })
    });
    c.bench_function("route_match_miss", |b| {
        b.iter(|| {
            black_box(snap.routes.route_index(
                black_box("unknown.example"),
                black_box("/"),
                None,
                &get,
                &headers,
            ))
        })
    });
    let holder = new_holder();
    holder.store(std::sync::Arc::new(snapshot(10)));
    c.bench_function("snapshot_load_full", |b| {
        b.iter(|| black_box(holder.load_full()))
    });
    let cluster = snap.cluster("svc-1.bench:8080").expect("cluster").clone();
    c.bench_function("endpoint_pick_round_robin", |b| {
        b.iter(|| black_box(cluster.pick()))
    });
    c.bench_function("push_apply_and_snapshot_build_1000_services", |b| {
        b.iter(|| black_box(snapshot(black_box(1000))))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
