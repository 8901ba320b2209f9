//! What must not evict instances: a control-plane restart (every lease gets
//! a fresh TTL; watchers resume from their revision), and many instances
//! going quiet at once (self-preservation). One quiet instance is still
//! evicted.

use super::*;
use std::collections::BTreeSet;
use xds_proto::v1::{self as pb, registry_client::RegistryClient};

/// `n` sidecars of "server" in front of one app, on 127.A.B.(10+i).
fn sidecars(f: &mut Fleet, n: u8) {
    let app = f.mesh.app("http", "shared", &["--name", "shared"]);
    for i in 0..n {
        let last = 10 + i;
        let addrs = f.mesh.proxy(
            "server",
            NS,
            app,
            last,
            &["--register", "true", "--registry-ttl", "1s"],
        );
        f.instances.push((format!("shared-{i}"), addrs, app));
    }
}

async fn registry_client(mesh: &Mesh) -> RegistryClient<tonic::transport::Channel> {
    let auth = weft_mesh_tls::admin_client::AdminAuth::Certs(mesh.pki().admin_certs);
    RegistryClient::new(
        weft_mesh_tls::admin_client::channel(&mesh.cp_url(), &auth)
            .await
            .expect("registry channel"),
    )
}

/// Reads watch messages for `for_at_least`, then returns the events and
/// the revision reached.
async fn collect(
    stream: &mut tonic::Streaming<pb::WatchInstancesResponse>,
    for_at_least: Duration,
    until: impl Fn(&[pb::InstanceEvent]) -> bool,
) -> (Vec<pb::InstanceEvent>, u64) {
    let (mut events, mut revision) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + for_at_least;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => {
                revision = m.revision;
                events.extend(m.events);
                if until(&events) {
                    return (events, revision);
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return (events, revision),
        }
    }
}

#[test]
fn a_control_plane_restart_evicts_nobody_and_watchers_resume_without_loss_or_repeats() {
    let mut f = Fleet::start("registry-restart");
    sidecars(&mut f, 20);
    f.wait_passing(20);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A watcher that has seen everything so far.
    let (mut seen, last) = rt.block_on(async {
        let mut c = registry_client(&f.mesh).await;
        let mut s = c
            .watch(pb::WatchInstancesRequest {
                from_revision: 1,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        collect(&mut s, Duration::from_millis(1500), |_| false).await
    });
    assert!(!seen.is_empty());
    // Down for longer than a lease and its grace together.
    f.mesh.kill_control();
    std::thread::sleep(Duration::from_millis(2500));
    f.mesh.start_control();
    // Leases renewed at start; heartbeats resume within a lease.
    std::thread::sleep(Duration::from_millis(3000));
    let listed = f.registered();
    assert_eq!(listed.len(), 20, "{listed:#?}");
    assert!(
        listed.iter().all(|v| v["health"] == "passing"),
        "{listed:#?}"
    );
    let metrics = f.mesh.control_metrics();
    assert_eq!(
        metric(&metrics, "weft_control_registry_evictions_total", "").unwrap_or(0.0),
        0.0
    );
    // Two instances leave; the watcher resumes from its revision.
    for i in [0, 1] {
        f.sidecar(i).signal(15);
        f.sidecar(i)
            .wait_exit(Duration::from_secs(20))
            .expect("exit");
    }
    let (resumed, _) = rt.block_on(async {
        let mut c = registry_client(&f.mesh).await;
        let mut s = c
            .watch(pb::WatchInstancesRequest {
                from_revision: last,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        collect(&mut s, Duration::from_secs(5), |e| {
            e.iter()
                .filter(|e| e.r#type == pb::EventType::Removed as i32)
                .count()
                >= 2
        })
        .await
    });
    seen.extend(resumed);
    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    let unique: BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(
        unique.len(),
        revisions.len(),
        "repeated events: {revisions:?}"
    );
    let (lo, hi) = (revisions[0], revisions[revisions.len() - 1]);
    assert_eq!(
        revisions,
        (lo..=hi).collect::<Vec<_>>(),
        "events lost or out of order"
    );
    let removed = seen
        .iter()
        .filter(|e| e.r#type == pb::EventType::Removed as i32)
        .count();
    assert_eq!(removed, 2);
}

#[test]
fn three_of_four_instances_going_quiet_at_once_are_kept_as_warning_but_one_alone_is_evicted() {
    let mut f = Fleet::start("registry-preserve");
    sidecars(&mut f, 4);
    f.wait_passing(4);
    for i in 1..4 {
        f.sidecar(i).signal(19); // SIGSTOP
    }
    // Well past the lease and the grace.
    std::thread::sleep(Duration::from_millis(3500));
    let listed = f.registered();
    assert_eq!(listed.len(), 4, "{listed:#?}");
    let warned: Vec<&Value> = listed.iter().filter(|v| v["health"] == "warning").collect();
    assert_eq!(warned.len(), 3, "{listed:#?}");
    assert!(
        warned.iter().all(|v| v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("self-preservation")),
        "{warned:#?}"
    );
    let counted = metric(
        &f.mesh.control_metrics(),
        "weft_control_registry_self_preservation_total",
        "",
    )
    .unwrap_or(0.0);
    assert!(counted >= 3.0, "self-preservation counted {counted}");
    // Kept in rotation: the shared app still answers through the client.
    assert!(f.call().is_ok());
    for i in 1..4 {
        f.sidecar(i).signal(18); // SIGCONT
    }
    f.wait_passing(4);
    // One alone is a dead instance, not a partition.
    f.sidecar(3).signal(19);
    wait_until("the quiet instance evicted", Duration::from_secs(6), || {
        f.health_of(3).is_none()
    });
    assert_eq!(f.registered().len(), 3);
    // When it wakes up, its lease is gone: it registers again.
    f.sidecar(3).signal(18);
    f.wait_passing(4);
}
