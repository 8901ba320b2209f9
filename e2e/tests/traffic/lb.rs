//! Load balancers: round robin, least-request, peak-EWMA, ring-hash, Maglev.

use super::*;

#[test]
fn round_robin_is_even_and_least_request_and_peak_ewma_avoid_a_slow_instance() {
    let f = fleet("lb", 3, "http", &[]);
    f.apply(&[], &route(&format!("  - {DEST}\n")));
    let replies = send(&f, 300, "/", &[]);
    for i in 0..3 {
        assert_eq!(count(&replies, 200, &format!("s{i}")), 100, "{replies:?}");
    }

    f.app_call(2, "POST", "/fault?delay_ms=80");
    for algorithm in ["least-request", "peak-ewma"] {
        f.apply(
            &[],
            &format!(
                "{}---\n{}",
                route(&format!("  - {DEST}\n")),
                policy(&format!("  loadBalancer: {{algorithm: {algorithm}}}\n"))
            ),
        );
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let addr = f.client.outbound;
                std::thread::spawn(move || {
                    let mut c = KeepAlive::new(addr);
                    let mut slow = 0;
                    for _ in 0..50 {
                        let r = c.get("/", "server", &[]).expect("request");
                        if r.header("x-served-by") == Some("s2") {
                            slow += 1;
                        }
                    }
                    slow
                })
            })
            .collect();
        let slow: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        eprintln!("{algorithm}: {slow} of 400 requests to the slow instance");
        // Round robin would send a third (133) there.
        assert!(
            slow < 50,
            "{algorithm} sent {slow} of 400 requests to the slow instance"
        );
    }
}

#[test]
fn ring_hash_and_maglev_keep_a_key_on_one_host_and_move_few_keys_when_a_host_leaves() {
    let f = fleet("hash", 4, "http", &[]);
    for algorithm in ["ring-hash", "maglev"] {
        let pol = policy(&format!(
            "  loadBalancer: {{algorithm: {algorithm}, hash: {{header: x-user}}}}\n"
        ));
        let extra = format!("{}---\n{pol}", route(&format!("  - {DEST}\n")));
        f.apply(&[], &extra);
        let mut c = KeepAlive::new(f.client.outbound);
        let owner = |c: &mut KeepAlive, k: usize| {
            let key = format!("user-{k}");
            let r = c.get("/", "server", &[("x-user", &key)]).expect("request");
            r.header("x-served-by").unwrap_or("-").to_string()
        };
        let before: Vec<String> = (0..200).map(|k| owner(&mut c, k)).collect();
        let again: Vec<String> = (0..200).map(|k| owner(&mut c, k)).collect();
        assert_eq!(before, again, "{algorithm}: same key, same host");
        let hosts: std::collections::HashSet<&String> = before.iter().collect();
        assert_eq!(hosts.len(), 4, "{algorithm}: keys spread over every host");

        // Instance 3 leaves the service.
        f.apply_endpoints(&[0, 1, 2], &[], &extra);
        let after: Vec<String> = (0..200).map(|k| owner(&mut c, k)).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_removed = before.iter().filter(|h| *h == "s3").count();
        assert!(
            moved <= on_removed + 10,
            "{algorithm}: {moved} keys moved, {on_removed} were on the removed host"
        );
        assert!(after.iter().all(|h| h != "s3"));
    }
}
