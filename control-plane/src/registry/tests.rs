use super::*;
use crate::config::ConfigSet;
use tokio::sync::mpsc;

const OWNER: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn instance(id: &str, address: &str) -> pb::Instance {
    pb::Instance {
        namespace: "shop".into(),
        service: "cart".into(),
        instance_id: id.into(),
        address: address.into(),
        sidecar_port: 15006,
        ports: vec![pb::InstancePort {
            name: "http".into(),
            port: 8080,
            protocol: pb::Protocol::Http as i32,
        }],
        ..Default::default()
    }
}

fn passing() -> (pb::Health, String) {
    (pb::Health::Passing, String::new())
}

/// Registers `i` for OWNER, passing, with `ttl`.
async fn register(f: &Fixture, i: pb::Instance, ttl: Duration) -> Registered {
    f.registry.register(i, ttl, passing(), OWNER).await.unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    registry: Arc<Registry>,
    publisher: Arc<Publisher>,
}

fn start_on(dir: tempfile::TempDir, settings: Settings) -> Fixture {
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (publisher, _rx) =
        Publisher::start(Arc::new(ConfigSet::default()), Duration::from_millis(5));
    let registry = Registry::start(store.clone(), publisher.clone(), settings).unwrap();
    Fixture {
        _dir: dir,
        store,
        registry,
        publisher,
    }
}

fn start(settings: Settings) -> Fixture {
    start_on(tempfile::tempdir().unwrap(), settings)
}

fn health(r: &Registry, id: &str) -> Option<pb::Health> {
    r.list("shop", "cart", &BTreeMap::new())
        .0
        .into_iter()
        .find(|i| i.instance_id == id)
        .map(|i| pb::Health::try_from(i.health).unwrap())
}

/// Runs `f` on a runtime of its own; dropping the runtime stops the
/// registry's tasks and closes the store, as a control-plane exit does.
fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_registered_instance_is_stored_published_and_survives_a_restart_with_a_fresh_lease() {
    let (dir, lease) = run(async {
        let f = start(Settings::default());
        let r = register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(5)).await;
        assert_eq!((r.action, r.revision), ("created", 1));
        // Published once stored.
        let view = f.publisher.registry();
        assert_eq!(view.revision, 1);
        assert_eq!(view.instances("shop", "cart").len(), 1);
        (f._dir, r.lease_id)
    });
    run(async {
        let again = start_on(dir, Settings::default());
        let (list, revision) = again.registry.list("", "", &BTreeMap::new());
        assert_eq!((list.len(), revision), (1, 1));
        assert_eq!(list[0].lease_id, lease);
        // The old lease still renews, and the listing shows when.
        let before = list[0].last_heartbeat_unix_ms;
        std::thread::sleep(Duration::from_millis(20));
        assert!(again.registry.heartbeat(&lease, None, Some(OWNER)).is_ok());
        let after = again.registry.list("", "", &BTreeMap::new()).0[0].last_heartbeat_unix_ms;
        assert!(after >= before + 15, "{before} → {after}");
    });
}

#[tokio::test]
async fn only_the_owner_renews_or_deregisters_a_lease_and_unknown_leases_are_named() {
    let f = start(Settings::default());
    let r = register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(5)).await;
    let other = "spiffe://cluster.local/ns/shop/sa/web";
    let e = f
        .registry
        .heartbeat(&r.lease_id, None, Some(other))
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotYours { .. }), "{e}");
    let e = f
        .registry
        .deregister(&r.lease_id, Some(other))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(other), "{e}");
    assert_eq!(f.registry.list("", "", &BTreeMap::new()).0.len(), 1);
    let e = f.registry.heartbeat("nope", None, Some(OWNER)).unwrap_err();
    assert!(matches!(e, RegistryError::UnknownLease(_)));
    // The admin (None) may.
    f.registry.deregister(&r.lease_id, None).await.unwrap();
    assert!(f.registry.list("", "", &BTreeMap::new()).0.is_empty());
}

#[tokio::test]
async fn a_live_instance_id_cannot_be_taken_by_another_workload_but_its_own_restart_replaces_it() {
    let f = start(Settings::default());
    let first = register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(5)).await;
    let e = f
        .registry
        .register(
            instance("cart-0", "127.0.0.8"),
            Duration::from_secs(5),
            passing(),
            OWNER,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Duplicate { .. }) && e.to_string().contains("127.0.0.7"),
        "{e}"
    );
    let before = f.registry.revision();
    let same = register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(5)).await;
    assert_eq!(same.action, "unchanged");
    assert_ne!(same.lease_id, first.lease_id, "a restart gets a new lease");
    assert!(matches!(
        f.registry.heartbeat(&first.lease_id, None, Some(OWNER)),
        Err(RegistryError::UnknownLease(_))
    ));
    // Stored (the new lease), but no event: nothing a caller sees changed.
    let (events, _) = f.store.registry_events_after(before, 10).unwrap();
    assert!(events.is_empty(), "{events:?}");
    let mut changed = instance("cart-0", "127.0.0.7");
    changed.labels.insert("version".into(), "v2".into());
    let r = f
        .registry
        .register(changed, Duration::from_secs(5), passing(), OWNER)
        .await
        .unwrap();
    assert_eq!(r.action, "replaced");
}

#[tokio::test]
async fn a_silent_instance_goes_critical_after_its_ttl_and_is_removed_after_the_grace() {
    let f = start(Settings {
        grace: Duration::from_millis(400),
        ..Settings::default()
    });
    let ttl = Duration::from_secs(1);
    let quiet = register(&f, instance("cart-0", "127.0.0.7"), ttl).await;
    let mut live = Vec::new();
    for (id, a) in [("cart-1", "127.0.0.8"), ("cart-2", "127.0.0.9")] {
        live.push(register(&f, instance(id, a), ttl).await.lease_id);
    }
    let beat = |f: &Fixture| {
        for l in &live {
            f.registry.heartbeat(l, None, Some(OWNER)).unwrap();
        }
    };
    let started = Instant::now();
    while health(&f.registry, "cart-0") == Some(pb::Health::Passing) {
        beat(&f);
        assert!(started.elapsed() < Duration::from_secs(3), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= ttl - Duration::from_millis(150));
    assert_eq!(health(&f.registry, "cart-0"), Some(pb::Health::Critical));
    // Critical instances leave the published endpoints' rotation (compile
    // skips them) but stay listed until the grace passes.
    while health(&f.registry, "cart-0").is_some() {
        beat(&f);
        assert!(started.elapsed() < Duration::from_secs(4), "never evicted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        f.registry.heartbeat(&quiet.lease_id, None, Some(OWNER)),
        Err(RegistryError::UnknownLease(_))
    ));
    assert_eq!(health(&f.registry, "cart-1"), Some(pb::Health::Passing));
}

#[test]
fn a_reported_health_change_is_an_event_and_survives_a_restart() {
    let dir = run(async {
        let f = start(Settings::default());
        let r = register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(5)).await;
        let mut events = f.registry.subscribe();
        f.registry
            .heartbeat(
                &r.lease_id,
                Some((pb::Health::Critical, "readiness probe: 503".into())),
                Some(OWNER),
            )
            .unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch[0].r#type, pb::EventType::Health as i32);
        let i = batch[0].instance.as_ref().unwrap();
        assert_eq!(
            (i.health, i.health_reason.as_str()),
            (pb::Health::Critical as i32, "readiness probe: 503")
        );
        f._dir
    });
    run(async {
        let again = start_on(dir, Settings::default());
        assert_eq!(
            health(&again.registry, "cart-0"),
            Some(pb::Health::Critical)
        );
    });
}

async fn next(
    rx: &mut mpsc::Receiver<Result<pb::WatchInstancesResponse, Status>>,
) -> pb::WatchInstancesResponse {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a watch message")
        .expect("stream open")
        .expect("not an error")
}

use tonic::Status;

#[tokio::test]
async fn a_watcher_resuming_from_its_revision_gets_exactly_the_changes_it_missed() {
    let f = start(Settings::default());
    let first = register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(30)).await;
    let from = first.revision;
    let mut leases = Vec::new();
    for n in 1..=25 {
        leases.push(
            f.registry
                .register(
                    instance(&format!("cart-{n}"), &format!("127.0.1.{n}")),
                    Duration::from_secs(30),
                    passing(),
                    OWNER,
                )
                .await
                .unwrap()
                .lease_id,
        );
    }
    for l in &leases {
        f.registry.deregister(l, Some(OWNER)).await.unwrap();
    }
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(watch::run(
        f.registry.clone(),
        "shop".into(),
        "cart".into(),
        from,
        tx,
    ));
    let mut got = Vec::new();
    while got.len() < 50 {
        let m = next(&mut rx).await;
        assert!(!m.snapshot);
        got.extend(m.events);
    }
    let revs: Vec<u64> = got.iter().map(|e| e.revision).collect();
    assert_eq!(revs, (from + 1..=from + 50).collect::<Vec<_>>());
    // Then live, without repeats.
    register(
        &f,
        instance("cart-99", "127.0.2.1"),
        Duration::from_secs(30),
    )
    .await;
    let m = next(&mut rx).await;
    assert_eq!(m.events.len(), 1);
    assert_eq!(m.events[0].revision, from + 51);
    assert_eq!(m.events[0].r#type, pb::EventType::Added as i32);
}

#[tokio::test]
async fn a_new_watcher_gets_a_snapshot_of_the_matching_instances() {
    let f = start(Settings::default());
    register(&f, instance("cart-0", "127.0.0.7"), Duration::from_secs(30)).await;
    let mut other = instance("web-0", "127.0.0.8");
    other.service = "web".into();
    f.registry
        .register(
            other,
            Duration::from_secs(30),
            passing(),
            "spiffe://cluster.local/ns/shop/sa/web",
        )
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(watch::run(
        f.registry.clone(),
        "shop".into(),
        "cart".into(),
        0,
        tx,
    ));
    let m = next(&mut rx).await;
    assert!(m.snapshot);
    assert_eq!(m.revision, 2);
    assert_eq!(m.events.len(), 1);
    assert_eq!(m.events[0].instance.as_ref().unwrap().instance_id, "cart-0");
}
