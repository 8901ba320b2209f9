//! Micro-benchmarks of the per-request pieces of the proxy: loading the
//! snapshot, matching a route among many virtual hosts, picking an endpoint,
//! and the per-request cost of each traffic policy (balancers, limits,
//! retry budget, outlier bookkeeping, rate limits).
//! `cargo bench -p weft-benches --bench hot_path`

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
            kind: Some(RKind::Cluster(Box::new(pb::Cluster {
                name: name.clone(),
                service: format!("svc-{s}"),
                namespace: "bench".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
                ..Default::default()
            }))),
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
    let cache = ResourceCache::default().apply(push).expect("valid push");
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

/// A 10-host cluster with `lb` (and outlier detection on).
fn cluster_with(lb: pb::LoadBalancer) -> std::sync::Arc<weft_proxy::cluster::Cluster> {
    let name = "c.bench:80".to_string();
    let resources = vec![
        pb::Resource {
            name: name.clone(),
            type_url: type_url::CLUSTER.into(),
            kind: Some(RKind::Cluster(Box::new(pb::Cluster {
                name: name.clone(),
                service: "c".into(),
                namespace: "bench".into(),
                port: 80,
                protocol: pb::Protocol::Http as i32,
                lb: Some(Box::new(lb)),
                outlier: Some(Box::new(pb::OutlierDetection {
                    consecutive_5xx: 5,
                    ..Default::default()
                })),
                ..Default::default()
            }))),
        },
        pb::Resource {
            name: name.clone(),
            type_url: type_url::ENDPOINTS.into(),
            kind: Some(RKind::Endpoints(pb::Endpoints {
                cluster: name.clone(),
                endpoints: (0..10)
                    .map(|e| pb::Endpoint {
                        address: format!("10.1.0.{}", e + 1),
                        port: 80,
                        ..Default::default()
                    })
                    .collect(),
            })),
        },
    ];
    Snapshot::from_resources("r1", resources)
        .expect("valid snapshot")
        .clusters[&name]
        .clone()
}

fn policies(c: &mut Criterion) {
    use pb::LbAlgorithm as A;
    for (label, algorithm, header) in [
        ("lb_pick_round_robin", A::RoundRobin, ""),
        ("lb_pick_weighted_round_robin", A::WeightedRoundRobin, ""),
        ("lb_pick_random", A::Random, ""),
        ("lb_pick_least_request_p2c", A::LeastRequest, ""),
        ("lb_pick_peak_ewma", A::PeakEwma, ""),
        ("lb_pick_ring_hash", A::RingHash, "x-user"),
        ("lb_pick_maglev", A::Maglev, "x-user"),
    ] {
        let cluster = cluster_with(pb::LoadBalancer {
            algorithm: algorithm as i32,
            hash_header: header.into(),
            ..Default::default()
        });
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "user-42".parse().unwrap());
        c.bench_function(label, |b| {
            b.iter(|| {
                let key = cluster.lb.hash_key(&headers, None);
                black_box(
                    cluster
                        .lb
                        .pick(&cluster.hosts, key, None, cluster.unavailable()),
                )
            })
        });
    }
    let cluster = cluster_with(pb::LoadBalancer::default());
    let limits = weft_proxy::policy::circuit_breaker::Limits {
        max_requests: 100_000,
        max_pending: 100,
        max_connections: 0,
        max_retries: 100,
    };
    c.bench_function("breaker_admit_and_release", |b| {
        b.iter(|| {
            black_box(futures::executor::block_on(
                cluster.runtime.load.admit(&limits, None),
            ))
        })
    });
    let budget = weft_proxy::policy::retry_budget::BudgetConfig::from_pb(None);
    c.bench_function("retry_budget_record_request", |b| {
        b.iter(|| cluster.runtime.budget.record_request())
    });
    c.bench_function("retry_budget_withdraw", |b| {
        b.iter(|| black_box(cluster.runtime.budget.try_withdraw(&budget)))
    });
    let host = cluster.hosts[0].clone();
    c.bench_function("outlier_record_success", |b| {
        b.iter(|| {
            cluster.record_outcome(&host, false, weft_proxy::policy::outlier::Outcome::Success)
        })
    });
    c.bench_function("ewma_observe_latency", |b| {
        b.iter(|| {
            host.state
                .latency
                .observe(std::time::Duration::from_micros(250))
        })
    });
    let limit = |key: pb::RateLimitKey, header: &str| {
        weft_proxy::policy::rate_limit::RateLimits::from_pb(
            &pb::RateLimitPolicy {
                limits: vec![pb::RateLimit {
                    name: "bench/p/l".into(),
                    key: key as i32,
                    header: header.into(),
                    requests_per_second: 1e9,
                    burst: 1_000_000,
                    ..Default::default()
                }],
            },
            None,
        )
        .expect("valid limits")
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-api-key", "key-1234".parse().unwrap());
    let call = |h| weft_proxy::policy::rate_limit::Call {
        port: 80,
        path: "/api",
        method: "GET",
        identity: Some("spiffe://cluster.local/ns/bench/sa/client"),
        headers: h,
        source: "10.0.0.1".parse().unwrap(),
    };
    let direct = limit(pb::RateLimitKey::None, "");
    c.bench_function("rate_limit_check_local", |b| {
        b.iter(|| {
            black_box(matches!(
                direct.check(&call(&headers)),
                weft_proxy::policy::rate_limit::Verdict::Allow
            ))
        })
    });
    let keyed = limit(pb::RateLimitKey::Header, "x-api-key");
    c.bench_function("rate_limit_check_per_api_key", |b| {
        b.iter(|| {
            black_box(matches!(
                keyed.check(&call(&headers)),
                weft_proxy::policy::rate_limit::Verdict::Allow
            ))
        })
    });
    let global = weft_proxy::policy::rate_limit::Gcra::new(1e9, 1_000_000);
    c.bench_function("rate_limit_check_global_share", |b| {
        b.iter(|| black_box(global.check()))
    });
    let policy = weft_proxy::policy::retry::RetryPolicy::default();
    c.bench_function("retry_policy_classify", |b| {
        b.iter(|| {
            black_box(policy.reason(black_box(weft_proxy::policy::retry::Failure::Status(503))))
        })
    });
}

criterion_group!(benches, hot_path, policies);
criterion_main!(benches);
