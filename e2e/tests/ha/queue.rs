//! Replicas sharing one Redis queue store serve the same queues: messages
//! published through two replicas are described and consumed (in priority
//! order) through a third, the acks show through the first, and a consumer
//! connected to one replica is counted by Describe on another.

use super::*;
use weft_testbed::redis::RedisServer;

const QUEUES: &str = "\
apiVersion: weft.dev/v1
kind: Queue
metadata: {name: jobs, namespace: intel}
spec: {type: priority}
";

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn replicas_on_one_redis_serve_one_queue_publish_here_consume_there() {
    let dir = std::env::temp_dir().join(format!("weft-e2e-{}-ha-redis", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let redis = RedisServer::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &dir.join("redis"),
        &dir.join("logs"),
    )
    .expect("redis-server (apt-get install redis-server)");
    let (mesh, _etcd, urls) = ha_mesh_with("ha-queue", &["--queue-store", &redis.url()]);
    apply_at(&mesh, &urls[0], "queues.yaml", QUEUES).expect("apply");
    // Every replica has the Queue once it has the revision.
    wait_until_ok(
        "every replica knows the queue",
        Duration::from_secs(10),
        || {
            urls.iter().all(|u| {
                weftctl_at(&mesh, u, &["queue", "describe", "jobs", "-n", "intel"])
                    .status
                    .success()
            })
        },
    );
    for (i, p) in [("NORMAL", "first"), ("CRITICAL", "urgent")]
        .iter()
        .enumerate()
    {
        let out = ok(weftctl_at(
            &mesh,
            &urls[i % 2],
            &[
                "queue",
                "publish",
                "jobs",
                "-n",
                "intel",
                "--priority",
                p.0,
                "--data",
                p.1,
            ],
        ));
        assert!(out.starts_with("enqueued "), "{out}");
    }
    let described = ok(weftctl_at(
        &mesh,
        &urls[2],
        &["-o", "json", "queue", "describe", "jobs", "-n", "intel"],
    ));
    let q: serde_json::Value = serde_json::from_str(&described).expect("json");
    let q = q
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .expect("one queue");
    assert_eq!(q["readyByPriority"][9], 1, "{q}");
    assert_eq!(q["readyByPriority"][4], 1, "{q}");
    let out = ok(weftctl_at(
        &mesh,
        &urls[2],
        &[
            "-o", "json", "queue", "consume", "jobs", "-n", "intel", "--count", "2",
        ],
    ));
    let texts: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["payload"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(texts, ["urgent", "first"], "priority order across replicas");
    let after = ok(weftctl_at(
        &mesh,
        &urls[0],
        &["-o", "json", "queue", "describe", "jobs", "-n", "intel"],
    ));
    let q: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(q[0]["readyByPriority"][9], 0, "{q}");
    assert_eq!(q[0]["inFlight"], 0, "acked through the third replica: {q}");

    // A consumer waiting on replica 2 is counted by Describe on replica 0,
    // and no longer once it has gone.
    let consumers_at_0 = || {
        let out = ok(weftctl_at(
            &mesh,
            &urls[0],
            &["-o", "json", "queue", "describe", "jobs", "-n", "intel"],
        ));
        let q: serde_json::Value = serde_json::from_str(&out).expect("json");
        q[0]["consumers"].as_u64().unwrap_or(0)
    };
    let mut waiting = std::process::Command::new(binaries().path(localmesh::WEFTCTL))
        .args(["--control-plane", &urls[1], "--certs"])
        .arg(mesh.pki().admin_certs)
        .args(["queue", "consume", "jobs", "-n", "intel"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("weftctl queue consume");
    let mut counted = 0;
    for _ in 0..50 {
        counted = consumers_at_0();
        if counted == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert_eq!(counted, 1, "the consumer on replica 1, seen from replica 0");
    wait_until_ok(
        "the departed consumer is no longer counted",
        Duration::from_secs(10),
        || consumers_at_0() == 0,
    );
}
