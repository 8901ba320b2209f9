use super::*;
use crate::config::{parse_documents, ConfigSet, ObjectKey};
use std::collections::BTreeMap;

fn set_of(yaml: &str) -> (ConfigSet, BTreeMap<ObjectKey, (String, usize)>) {
    let mut set = ConfigSet::default();
    let mut origin = BTreeMap::new();
    for l in parse_documents("t.yaml", yaml).unwrap() {
        origin.insert(l.object.key(), (l.source_name.clone(), l.document));
        set.objects.insert(l.object.key(), l.object);
    }
    (set, origin)
}

const SVC: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api, namespace: demo}\nspec:\n  ports: [{port: 8080, protocol: http}, {port: 5432, protocol: opaque}]\n  endpoints: [{address: 127.0.0.2, port: 15006}]\n";

#[test]
fn route_to_missing_service_is_a_dangling_reference() {
    let (set, origin) = set_of("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {name: r, namespace: demo}\nspec:\n  hosts: [api]\n  http: [{destination: {service: nope, port: 80}}]\n");
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.http[0].destination.service");
    assert!(e.reason.contains("\"demo/nope\" not found"), "{e}");
}

#[test]
fn route_to_missing_port_lists_the_ports_that_exist() {
    let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api]\n  http: [{{destination: {{service: api, port: 9}}}}]\n"));
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.http[0].destination.port");
    assert!(e.reason.contains("8080, 5432"), "{e}");
}

#[test]
fn http_rule_to_opaque_port_is_rejected() {
    let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api]\n  http: [{{destination: {{service: api, port: 5432}}}}]\n"));
    assert!(check_set(&set, &origin)
        .unwrap_err()
        .reason
        .contains("opaque"));
}

#[test]
fn valid_config_passes() {
    let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api, api.demo]\n  http:\n  - match: {{path: {{prefix: /v1}}, method: GET, headers: {{x-canary: \"1\"}}}}\n    destination: {{service: api, port: 8080}}\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: db, namespace: demo}}\nspec:\n  tcp: {{bindPort: 15432, destination: {{service: api.demo, port: 5432}}}}\n"));
    check_set(&set, &origin).unwrap();
}

#[test]
fn field_rules_reject_bad_ports_hosts_and_paths() {
    let cases = [
        ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0, protocol: http}]}", "spec.ports[0].port"),
        ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 70000, protocol: http}]}", "spec.ports[0].port"),
        ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: http}, {port: 80, protocol: tcp}]}", "spec.ports[1].port"),
        ("kind: Service\nmetadata: {name: A_b}\nspec: {ports: [{port: 80, protocol: http}]}", "metadata.name"),
        ("kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: http}], endpoints: [{address: nope}]}", "spec.endpoints[0].address"),
        ("kind: Route\nmetadata: {name: a}\nspec: {hosts: ['a:80'], http: [{destination: {service: a, port: 80}}]}", "spec.hosts[0]"),
        ("kind: Route\nmetadata: {name: a}\nspec: {hosts: [a], http: [{match: {path: {prefix: x}}, destination: {service: a, port: 80}}]}", "spec.http[0].match.path"),
        ("kind: Route\nmetadata: {name: a}\nspec: {hosts: [a]}", "spec"),
        ("kind: Route\nmetadata: {name: a}\nspec: {tcp: {bindPort: 0, destination: {service: a, port: 80}}}", "spec.tcp.bindPort"),
    ];
    for (doc, field) in cases {
        let e =
            parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n")).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
}

#[test]
fn authorization_field_rules_name_the_field() {
    let cases = [
        ("kind: Authorization\nmetadata: {name: a}\nspec: {}", "spec"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {rules: [{action: allow}]}", "spec.rules"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}}", "spec.rules"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, default: deny, rules: [{action: allow}]}", "spec.default"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: allow, from: {identities: [nope]}}]}", "spec.rules[0].from.identities[0]"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: allow, from: {namespaces: [Bad_NS]}}]}", "spec.rules[0].from.namespaces[0]"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: deny, to: {paths: [{prefix: x}]}}]}", "spec.rules[0].to.paths[0]"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s}, rules: [{action: deny, to: {methods: [get]}}]}", "spec.rules[0].to.methods[0]"),
        ("kind: Authorization\nmetadata: {name: a}\nspec: {target: {service: s, port: 0}, rules: [{action: deny}]}", "spec.target.port"),
    ];
    for (doc, field) in cases {
        let e =
            parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n")).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
}

#[test]
fn traffic_policy_field_rules_name_the_field() {
    let d = "destination: {service: a, port: 80}";
    let route = |rule: &str| {
        format!("kind: Route\nmetadata: {{name: r}}\nspec: {{hosts: [a], http: [{rule}]}}")
    };
    let policy = |body: &str| {
        format!("kind: Policy\nmetadata: {{name: p}}\nspec: {{target: {{service: a}}, {body}}}")
    };
    let cases = [
        (
            route("{match: {path: {regex: '(['}}, destination: {service: a, port: 80}}"),
            "spec.http[0].match.path",
        ),
        (
            route(&format!(
                "{{match: {{headers: {{x-a: {{regex: '(['}}}}}}, {d}}}"
            )),
            "spec.http[0].match.headers.x-a",
        ),
        (
            route(&format!(
                "{{match: {{query: {{q: {{exact: a, present: true}}}}}}, {d}}}"
            )),
            "spec.http[0].match.query.q",
        ),
        (route("{}"), "spec.http[0]"),
        (
            route(&format!(
                "{{{d}, backends: [{{service: a, port: 80, weight: 1}}]}}"
            )),
            "spec.http[0].backends",
        ),
        (
            route("{backends: [{service: a, port: 80, weight: 0}]}"),
            "spec.http[0].backends",
        ),
        (
            route(&format!(
                "{{{d}, mirror: {{service: a, port: 80, percent: 0}}}}"
            )),
            "spec.http[0].mirror.percent",
        ),
        (
            route(&format!("{{{d}, timeout: 5x}}")),
            "spec.http[0].timeout",
        ),
        (
            route(&format!("{{{d}, retries: {{attempts: 0}}}}")),
            "spec.http[0].retries.attempts",
        ),
        (
            route(&format!(
                "{{{d}, retries: {{attempts: 3, on: [sometimes]}}}}"
            )),
            "spec.http[0].retries.on[0]",
        ),
        (
            route(&format!(
                "{{{d}, retries: {{attempts: 3, grpcCodes: [nope]}}}}"
            )),
            "spec.http[0].retries.grpcCodes[0]",
        ),
        (
            route(&format!(
                "{{{d}, retries: {{attempts: 3, backoff: {{base: 1s, max: 10ms}}}}}}"
            )),
            "spec.http[0].retries.backoff.max",
        ),
        (
            route(&format!("{{{d}, requestHeaders: {{set: {{X-Up: a}}}}}}")),
            "spec.http[0].requestHeaders.set.X-Up",
        ),
        (
            route("{destination: {service: a, port: 80, subset: {'v@': x}}}"),
            "spec.http[0].destination.subset.v@",
        ),
        (
            policy("loadBalancer: {algorithm: ring-hash}"),
            "spec.loadBalancer.hash",
        ),
        (
            policy("loadBalancer: {algorithm: random, hash: {sourceIp: true}}"),
            "spec.loadBalancer.hash",
        ),
        (
            policy("loadBalancer: {algorithm: fastest}"),
            "spec.loadBalancer.algorithm",
        ),
        (
            policy("outlierDetection: {interval: 1s}"),
            "spec.outlierDetection",
        ),
        (
            policy("outlierDetection: {consecutive5xx: 3, maxEjectionPercent: 101}"),
            "spec.outlierDetection.maxEjectionPercent",
        ),
        (
            policy("healthCheck: {interval: 1s, timeout: 1s}"),
            "spec.healthCheck",
        ),
        (
            policy("healthCheck: {interval: 1s, timeout: 1s, http: {path: health}}"),
            "spec.healthCheck.http.path",
        ),
        (
            policy("rateLimits: [{name: a, rate: 0}]"),
            "spec.rateLimits[0].rate",
        ),
        (
            policy("rateLimits: [{name: a, rate: 1, key: {identity: true, sourceIp: true}}]"),
            "spec.rateLimits[0].key",
        ),
        (
            policy("rateLimits: [{name: a, rate: 1}, {name: a, rate: 2}]"),
            "spec.rateLimits[1].name",
        ),
        (
            policy("rateLimits: [{name: a, rate: 1, global: true, key: {identity: true}}]"),
            "spec.rateLimits[0].key",
        ),
    ];
    for (doc, field) in cases {
        let e =
            parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n")).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
}

#[test]
fn subsets_must_select_an_endpoint_and_one_policy_per_target() {
    let svc = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api, namespace: demo}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  endpoints: [{address: 127.0.0.2, labels: {version: v1}}]\n";
    let (set, origin) = set_of(&format!("{svc}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: r, namespace: demo}}\nspec:\n  hosts: [api]\n  http: [{{backends: [{{service: api, port: 8080, subset: {{version: v1}}, weight: 90}}, {{service: api, port: 8080, subset: {{version: v2}}, weight: 10}}]}}]\n"));
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.http[0].backends[1].subset");
    let (set, origin) = set_of(&format!("{svc}---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: a, namespace: demo}}\nspec: {{target: {{service: api}}}}\n---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: b, namespace: demo}}\nspec: {{target: {{service: api}}}}\n"));
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.target");
    assert!(e.reason.contains("demo/a"), "{e}");
    let (set, origin) = set_of(&format!("{svc}---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: a, namespace: demo}}\nspec: {{target: {{service: api}}}}\n---\napiVersion: weft.dev/v1\nkind: Policy\nmetadata: {{name: b, namespace: demo}}\nspec: {{target: {{service: api, port: 8080}}}}\n"));
    check_set(&set, &origin).expect("a port-specific policy beside a service-wide one");
}

#[test]
fn authorization_must_target_an_existing_service_port() {
    let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {{name: p, namespace: demo}}\nspec: {{target: {{service: api, port: 9}}, rules: [{{action: deny}}]}}\n"));
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.target.port");
    let (set, origin) = set_of("apiVersion: weft.dev/v1\nkind: Authorization\nmetadata: {name: p, namespace: demo}\nspec: {target: {service: ghost}, rules: [{action: deny}]}\n");
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.target.service");
    assert!(e.reason.contains("\"demo/ghost\" not found"), "{e}");
}

#[test]
fn two_routes_cannot_bind_the_same_tcp_port() {
    let (set, origin) = set_of(&format!("{SVC}---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: a, namespace: demo}}\nspec: {{tcp: {{bindPort: 9000, destination: {{service: api, port: 5432}}}}}}\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: b, namespace: demo}}\nspec: {{tcp: {{bindPort: 9000, destination: {{service: api, port: 5432}}}}}}\n"));
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.tcp.bindPort");
}

#[test]
fn queue_field_rules_name_the_field() {
    let q = |spec: &str| format!("kind: Queue\nmetadata: {{name: jobs}}\nspec: {spec}");
    let cases = [
        (q("{type: lifo}"), "spec.type"),
        (q("{type: fifo, aging: 10s}"), "spec.aging"),
        (q("{type: priority, orderByKey: true}"), "spec.orderByKey"),
        (q("{type: fifo, subscriptions: [a]}"), "spec.subscriptions"),
        (q("{type: pubsub}"), "spec.subscriptions"),
        (q("{type: broadcast, retry: {maxDeliveries: 2}}"), "spec.retry"),
        (q("{type: broadcast, encrypted: true}"), "spec.encrypted"),
        (q("{type: pubsub, subscriptions: [a, a]}"), "spec.subscriptions[1]"),
        (q("{type: fifo, maxSize: {}}"), "spec.maxSize"),
        (q("{type: fifo, maxSize: {messages: 0}}"), "spec.maxSize.messages"),
        (q("{type: fifo, maxSize: {bytes: 10}}"), "spec.maxSize.bytes"),
        (q("{type: fifo, maxMessageBytes: 0}"), "spec.maxMessageBytes"),
        (q("{type: fifo, messageTtl: soon}"), "spec.messageTtl"),
        (q("{type: fifo, onExpiry: deadLetter}"), "spec.onExpiry"),
        (q("{type: fifo, deadLetter: {queue: jobs}}"), "spec.deadLetter.queue"),
        (q("{type: fifo, ackTimeout: 0s}"), "spec.ackTimeout"),
        (q("{type: fifo, deduplication: {window: 30d}}"), "spec.deduplication.window"),
        (q("{type: fifo, retry: {maxDeliveries: 0}}"), "spec.retry.maxDeliveries"),
        (q("{type: fifo, retry: {maxDeliveries: 3, backoff: {type: exponential, initial: 1m, max: 1s}}}"), "spec.retry.backoff"),
        (q("{type: fifo, retry: {maxDeliveries: 3, backoff: {type: exponential, initial: 1s, max: 1m, multiplier: 0.5}}}"), "spec.retry.backoff.multiplier"),
        (q("{type: fifo, durability: maybe}"), "spec.durability"),
    ];
    for (doc, field) in cases {
        let e =
            parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{doc}\n")).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
    let ok = q("{type: priority, aging: 30s, maxSize: {messages: 1000000, onFull: dropOldest}, messageTtl: 24h, onExpiry: drop, retry: {maxDeliveries: 5, backoff: {type: exponential, initial: 1s, max: 5m}}, ackTimeout: 30s, deduplication: {window: 10m}, encrypted: true, durability: sync}");
    parse_documents("t.yaml", &format!("apiVersion: weft.dev/v1\n{ok}\n")).unwrap();
}

#[test]
fn a_dead_letter_queue_must_exist_and_dead_letters_must_not_go_round() {
    let q = |name: &str, dl: &str| {
        format!("apiVersion: weft.dev/v1\nkind: Queue\nmetadata: {{name: {name}, namespace: intel}}\nspec: {{type: fifo, deadLetter: {{queue: {dl}}}}}\n")
    };
    let (set, origin) = set_of(&q("jobs", "jobs-dlq"));
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.deadLetter.queue");
    assert!(e.to_string().contains("intel/jobs-dlq"), "{e}");
    let (set, origin) = set_of(&format!("{}---\n{}", q("a", "b"), q("b", "a")));
    let e = check_set(&set, &origin).unwrap_err();
    assert!(e.to_string().contains("a -> b -> a"), "{e}");
    let dlq = "apiVersion: weft.dev/v1\nkind: Queue\nmetadata: {name: jobs-dlq, namespace: intel}\nspec: {type: fifo}\n";
    let (set, origin) = set_of(&format!("{}---\n{dlq}", q("jobs", "jobs-dlq")));
    check_set(&set, &origin).unwrap();
}

#[test]
fn queue_policy_field_rules_name_the_field_and_its_queues_must_exist() {
    let p = |spec: &str| {
        format!("apiVersion: weft.dev/v1\nkind: QueuePolicy\nmetadata: {{name: access, namespace: intel}}\nspec: {spec}\n")
    };
    let cases = [
        (
            p("{queues: [], rules: [{permissions: [publish], from: {namespaces: [feeds]}}]}"),
            "spec.queues",
        ),
        (
            p("{queues: [Jobs], rules: [{permissions: [publish], from: {namespaces: [feeds]}}]}"),
            "spec.queues[0]",
        ),
        (p("{queues: [jobs], rules: []}"), "spec.rules"),
        (
            p("{queues: [jobs], rules: [{permissions: [], from: {namespaces: [feeds]}}]}"),
            "spec.rules[0].permissions",
        ),
        (
            p("{queues: [jobs], rules: [{permissions: [read], from: {namespaces: [feeds]}}]}"),
            "spec.rules[0].permissions[0]",
        ),
        (
            p("{queues: [jobs], rules: [{permissions: [consume], from: {}}]}"),
            "spec.rules[0].from",
        ),
        (
            p("{queues: [jobs], rules: [{permissions: [consume], from: {identities: [bob]}}]}"),
            "spec.rules[0].from.identities[0]",
        ),
    ];
    for (doc, field) in cases {
        let e = parse_documents("t.yaml", &doc).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
    let grant = p("{queues: [jobs], rules: [{permissions: [publish, consume], from: {identities: ['spiffe://cluster.local/ns/intel/sa/worker']}}]}");
    let (set, origin) = set_of(&grant);
    let e = check_set(&set, &origin).unwrap_err();
    assert_eq!(e.field, "spec.queues[0]");
    assert!(e.to_string().contains("intel/jobs"), "{e}");
    let queue = "apiVersion: weft.dev/v1\nkind: Queue\nmetadata: {name: jobs, namespace: intel}\nspec: {type: fifo}\n";
    let (set, origin) = set_of(&format!("{queue}---\n{grant}"));
    check_set(&set, &origin).unwrap();
    let all = p("{queues: ['*'], rules: [{permissions: [admin], from: {namespaces: [ops]}}]}");
    let (set, origin) = set_of(&all);
    check_set(&set, &origin).unwrap();
}
