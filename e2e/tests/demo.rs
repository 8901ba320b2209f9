//! `weftctl demo --for N`, as a user runs it from the README: the mesh
//! comes up on loopback, HTTP and gRPC traffic flows both ways through the
//! sidecars, and the queue flow turns enrichment requests into results
//! with the one poison request in the dead-letter queue; exit 0 only then.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_demo_serves_traffic_and_its_queue_flow_dead_letters_exactly_the_poison_request() {
    let weftctl = weft_testbed::binaries().path(weft_testbed::localmesh::WEFTCTL);
    let mut child = Command::new(&weftctl)
        .args(["demo", "--for", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weftctl demo");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            // SIGTERM: the demo stops every process it started.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status =
        status.unwrap_or_else(|| panic!("the demo did not finish in 120 s\n{stdout}\n{stderr}"));
    assert!(status.success(), "demo failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("queue flow:"), "{stdout}");
    assert!(stdout.contains(", 1 dead letters"), "{stdout}");
    assert!(
        stdout.contains("demo/web:") && stdout.contains("0 failed"),
        "{stdout}"
    );
}
