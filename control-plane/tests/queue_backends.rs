//! The queue semantics, by counting, on every store: each test runs the
//! same steps against the embedded store and against the Redis store on a
//! real redis-server, plain and as a one-node cluster (see
//! common/backends.rs), with the real clock.

mod common;

use common::backends::*;
use std::time::Duration;
use weft_control::queue::backend::Backend;
use weft_control::queue::state::{Backoff, Delivery, Filter, NewMessage, Published, EXPIRED};
use weft_control::queue::store::{Fanout, DEAD_LETTER_QUEUE, DEAD_LETTER_REASON};

async fn publish(h: &Harness, q: &str, bodies: Vec<NewMessage>) -> Vec<Published> {
    h.store
        .publish(q, now_ms(), bodies)
        .await
        .unwrap_or_else(|e| panic!("{}: publish to {q}: {e}", h.name))
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// Each take has a new number (a consumer stream numbers its takes).
static TAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000);

fn next_take() -> u64 {
    TAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn take(h: &Harness, q: &str, consumer: u64, max: u32) -> Vec<Delivery> {
    h.store.tick(now_ms()).await.expect("tick");
    h.store
        .take(
            q,
            now_ms(),
            (consumer, next_take()),
            &Filter::default(),
            max,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: take from {q}: {e}", h.name))
}

fn payloads(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.body.payload).into_owned())
        .collect()
}

/// Takes until something comes or `within` passes.
async fn wait_take(h: &Harness, q: &str, consumer: u64, within: Duration) -> Vec<Delivery> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let d = take(h, q, consumer, 10).await;
        if !d.is_empty() || std::time::Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn the_highest_priority_is_delivered_first_and_fifo_holds_within_a_level() {
    let queues = [queue("p", |q| q.settings.priorities = true)];
    for h in stores(&queues).await {
        let bodies = vec![
            msg("n1", 4),
            msg("low", 0),
            msg("n2", 4),
            msg("crit", 9),
            msg("n3", 4),
        ];
        publish(&h, "t/p", bodies).await;
        let d = take(&h, "t/p", 1, 10).await;
        assert_eq!(
            payloads(&d),
            ["crit", "n1", "n2", "n3", "low"],
            "{}",
            h.name
        );
        let stats = h
            .store
            .stats(&h.store.queue("t/p").unwrap(), now_ms())
            .await
            .unwrap();
        assert_eq!(stats.depth.in_flight, 5, "{}", h.name);
        // A consumer of CRITICAL only sees nothing below it.
        publish(&h, "t/p", vec![msg("n4", 4)]).await;
        let filter = Filter {
            kinds: vec![],
            min_priority: 9,
        };
        let none = h
            .store
            .take("t/p", now_ms(), (2, next_take()), &filter, 10)
            .await
            .unwrap();
        assert!(none.is_empty(), "{}", h.name);
    }
}

#[tokio::test]
async fn a_delayed_message_is_delivered_within_50_ms_of_its_time_and_not_before() {
    let queues = [queue("d", |_| {})];
    for h in stores(&queues).await {
        let at = now_ms() + 300;
        let mut m = msg("later", 4);
        m.deliver_at_ms = Some(at);
        publish(&h, "t/d", vec![m]).await;
        // Each call is timed by the clock it hands the store (its start):
        // the store decides on that, so a slow round trip after the
        // decision does not count as lateness.
        let (d, asked_at) = loop {
            let asked_at = now_ms();
            h.store.tick(asked_at).await.expect("tick");
            let d = h
                .store
                .take("t/d", asked_at, (1, next_take()), &Filter::default(), 10)
                .await
                .expect("take");
            if !d.is_empty() {
                break (d, asked_at);
            }
            assert!(asked_at < at + 2_000, "{}: never delivered", h.name);
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let late = asked_at as i64 - at as i64;
        assert_eq!(payloads(&d), ["later"], "{}", h.name);
        assert!((0..=50).contains(&late), "{}: {late} ms off", h.name);
    }
}

#[tokio::test]
async fn an_expired_message_goes_to_the_dead_letter_queue_with_the_reason() {
    let queues = [
        queue("ttl", |q| {
            with_dlq(q);
            q.settings.ttl = Some(Duration::from_millis(100));
            q.settings.expire_to_dead_letter = true;
        }),
        queue("drop", |q| {
            q.settings.ttl = Some(Duration::from_millis(100))
        }),
        queue("dlq", |_| {}),
    ];
    for h in stores(&queues).await {
        publish(&h, "t/ttl", vec![msg("old", 4)]).await;
        publish(&h, "t/drop", vec![msg("gone", 4)]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(take(&h, "t/ttl", 1, 10).await.is_empty(), "{}", h.name);
        assert!(take(&h, "t/drop", 1, 10).await.is_empty(), "{}", h.name);
        let dead = take(&h, "t/dlq", 1, 10).await;
        assert_eq!(
            payloads(&dead),
            ["old"],
            "{}: only the dead-lettering queue's",
            h.name
        );
        let headers = &dead[0].message.body.headers;
        assert_eq!(headers[DEAD_LETTER_REASON], EXPIRED, "{}", h.name);
        assert_eq!(headers[DEAD_LETTER_QUEUE], "t/ttl", "{}", h.name);
    }
}

#[tokio::test]
async fn retries_wait_out_the_backoff_and_the_last_failure_dead_letters_with_the_last_error() {
    let queues = [
        queue("r", |q| {
            with_dlq(q);
            q.settings.max_deliveries = Some(3);
            q.settings.backoff = Backoff::Exponential {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(150),
                multiplier: 2.0,
            };
        }),
        queue("dlq", |_| {}),
    ];
    for h in stores(&queues).await {
        publish(&h, "t/r", vec![msg("flaky", 4)]).await;
        let mut waited = Vec::new();
        let mut nacked: Option<std::time::Instant> = None;
        for n in 1..=3u32 {
            let d = wait_take(&h, "t/r", 1, Duration::from_secs(2)).await;
            if let Some(t) = nacked {
                waited.push(t.elapsed().as_millis());
            }
            assert_eq!(d[0].message.deliveries, n, "{}", h.name);
            nacked = Some(std::time::Instant::now());
            h.store
                .nack(
                    "t/r",
                    now_ms(),
                    d[0].message.id,
                    1,
                    true,
                    &format!("error {n}"),
                )
                .await
                .unwrap();
        }
        // 100 ms, then 200 capped at 150 (the stores' clock is in whole
        // milliseconds: up to 1 ms early in real time).
        assert!(
            waited[0] >= 99 && waited[1] >= 149 && waited[1] < 1000,
            "{}: {waited:?}",
            h.name
        );
        let dead = wait_take(&h, "t/dlq", 1, Duration::from_secs(1)).await;
        let why = &dead[0].message.body.headers[DEAD_LETTER_REASON];
        assert!(
            why.contains("3 deliveries failed") && why.contains("error 3"),
            "{}: {why}",
            h.name
        );
    }
}

#[tokio::test]
async fn a_key_published_again_inside_the_window_is_deduplicated_and_after_it_is_not() {
    let queues = [queue("k", |q| {
        q.settings.dedup_window = Some(Duration::from_millis(200))
    })];
    for h in stores(&queues).await {
        let keyed = |p: &str| NewMessage {
            key: Some("order-1".into()),
            ..msg(p, 4)
        };
        let first = publish(&h, "t/k", vec![keyed("a")]).await;
        let Published::Enqueued(id) = first[0] else {
            panic!("{}: {first:?}", h.name)
        };
        let again = publish(&h, "t/k", vec![keyed("b")]).await;
        assert_eq!(again[0], Published::Deduplicated(id), "{}", h.name);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let later = publish(&h, "t/k", vec![keyed("c")]).await;
        assert!(
            matches!(later[0], Published::Enqueued(n) if n != id),
            "{}: {later:?}",
            h.name
        );
        assert_eq!(
            payloads(&take(&h, "t/k", 1, 10).await),
            ["a", "c"],
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn an_unacknowledged_delivery_comes_back_after_the_ack_timeout_and_an_extended_one_later() {
    let queues = [queue("a", |q| {
        q.settings.ack_timeout = Duration::from_millis(100)
    })];
    for h in stores(&queues).await {
        publish(&h, "t/a", vec![msg("x", 4), msg("y", 4)]).await;
        let d = take(&h, "t/a", 1, 10).await;
        let y = d[1].message.id;
        h.store
            .extend("t/a", now_ms(), y, 1, Duration::from_secs(5))
            .await
            .unwrap();
        let err = h
            .store
            .extend("t/a", now_ms(), y, 2, Duration::from_secs(5))
            .await;
        assert!(err.is_err(), "{}: another consumer's delivery", h.name);
        let back = wait_take(&h, "t/a", 2, Duration::from_secs(2)).await;
        assert_eq!(
            payloads(&back),
            ["x"],
            "{}: only the one not extended",
            h.name
        );
        assert_eq!(back[0].message.deliveries, 2, "{}", h.name);
        // The first consumer's ack of the timed-out delivery is refused.
        let failed = h.store.ack("t/a", &[d[0].message.id, y], 1).await.unwrap();
        assert_eq!(failed.len(), 1, "{}: {failed:?}", h.name);
        assert_eq!(failed[0].0, d[0].message.id, "{}", h.name);
    }
}

#[tokio::test]
async fn a_nack_with_requeue_redelivers_and_without_it_dead_letters_at_once() {
    let queues = [queue("n", with_dlq), queue("dlq", |_| {})];
    for h in stores(&queues).await {
        publish(&h, "t/n", vec![msg("m", 4)]).await;
        let d = take(&h, "t/n", 1, 10).await;
        h.store
            .nack("t/n", now_ms(), d[0].message.id, 1, true, "later")
            .await
            .unwrap();
        let again = take(&h, "t/n", 1, 10).await;
        assert_eq!(again[0].message.deliveries, 2, "{}", h.name);
        h.store
            .nack("t/n", now_ms(), again[0].message.id, 1, false, "bad")
            .await
            .unwrap();
        assert!(take(&h, "t/n", 1, 10).await.is_empty(), "{}", h.name);
        let dead = take(&h, "t/dlq", 1, 10).await;
        assert!(
            dead[0].message.body.headers[DEAD_LETTER_REASON]
                .contains("rejected by the consumer: bad"),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn a_full_queue_refuses_or_drops_its_oldest_as_configured() {
    let queues = [
        queue("full", |q| q.settings.max_messages = Some(2)),
        queue("ring", |q| {
            q.settings.max_messages = Some(2);
            q.settings.drop_oldest = true;
        }),
        queue("ring2", |q| {
            q.settings.max_messages = Some(2);
            q.settings.drop_oldest = true;
        }),
    ];
    for h in stores(&queues).await {
        let out = publish(&h, "t/full", vec![msg("1", 4), msg("2", 4), msg("3", 4)]).await;
        assert!(
            matches!(&out[2], Published::Refused(why) if why.contains("queue full")),
            "{}: {out:?}",
            h.name
        );
        publish(&h, "t/ring", vec![msg("1", 4), msg("2", 4)]).await;
        publish(&h, "t/ring", vec![msg("3", 4)]).await;
        assert_eq!(
            payloads(&take(&h, "t/ring", 1, 10).await),
            ["2", "3"],
            "{}",
            h.name
        );
        h.store.ack("t/ring", &[], 1).await.expect("ack nothing");
        // One request over the limit: the oldest go first, the request's
        // own earlier messages included.
        publish(
            &h,
            "t/ring2",
            (4..9).map(|i| msg(&i.to_string(), 4)).collect(),
        )
        .await;
        assert_eq!(
            payloads(&take(&h, "t/ring2", 1, 10).await),
            ["7", "8"],
            "{}",
            h.name
        );
        assert_eq!(
            payloads(&take(&h, "t/full", 1, 10).await),
            ["1", "2"],
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn with_order_by_key_the_next_message_of_a_key_waits_for_the_one_in_flight() {
    let queues = [queue("o", |q| q.settings.order_by_key = true)];
    for h in stores(&queues).await {
        let keyed = |k: &str, p: &str| NewMessage {
            key: Some(k.into()),
            ..msg(p, 4)
        };
        publish(
            &h,
            "t/o",
            vec![keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1")],
        )
        .await;
        let first = take(&h, "t/o", 1, 10).await;
        assert_eq!(payloads(&first), ["a1", "b1"], "{}", h.name);
        assert!(
            take(&h, "t/o", 2, 10).await.is_empty(),
            "{}: a2 waits",
            h.name
        );
        h.store.ack("t/o", &[first[0].message.id], 1).await.unwrap();
        assert_eq!(
            payloads(&take(&h, "t/o", 2, 10).await),
            ["a2"],
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn every_subscription_of_a_topic_gets_every_message_under_one_id() {
    let subs = vec!["t/news/audit".to_string(), "t/news/index".to_string()];
    let queues = [
        queue("news", |q| q.fanout = Fanout::Topic(subs.clone())),
        queue("news/audit", |_| {}),
        queue("news/index", |_| {}),
    ];
    for h in stores(&queues).await {
        let out = publish(&h, "t/news", vec![msg("one", 4), msg("two", 4)]).await;
        for s in &subs {
            let d = take(&h, s, 1, 10).await;
            assert_eq!(payloads(&d), ["one", "two"], "{}: {s}", h.name);
            assert_eq!(Published::Enqueued(d[0].message.id), out[0], "{}", h.name);
        }
    }
}

#[tokio::test]
async fn peek_shows_delivery_order_purge_keeps_deliveries_in_flight_and_redrive_moves_dead_letters_back(
) {
    let queues = [
        queue("w", |q| {
            with_dlq(q);
            q.settings.priorities = true;
        }),
        queue("dlq", |_| {}),
    ];
    for h in stores(&queues).await {
        publish(&h, "t/w", vec![msg("a", 4), msg("b", 9), msg("poison", 4)]).await;
        let seen = h.store.peek("t/w", 10, false).await.unwrap();
        let order: Vec<_> = seen
            .iter()
            .map(|(m, _)| String::from_utf8_lossy(&m.body.payload).into_owned())
            .collect();
        assert_eq!(order, ["b", "a", "poison"], "{}", h.name);
        let d = take(&h, "t/w", 1, 3).await;
        let poison = d
            .iter()
            .find(|d| &d.message.body.payload[..] == b"poison")
            .unwrap()
            .message
            .id;
        h.store
            .nack("t/w", now_ms(), poison, 1, false, "bad")
            .await
            .unwrap();
        let dead = h.store.peek("t/w", 10, true).await.unwrap();
        assert_eq!(dead.len(), 1, "{}", h.name);
        let moved = h.store.redrive("t/w", &[], now_ms()).await.unwrap();
        assert_eq!(moved.ids.len(), 1, "{}: {moved:?}", h.name);
        assert!(
            h.store.peek("t/w", 10, true).await.unwrap().is_empty(),
            "{}",
            h.name
        );
        let back = take(&h, "t/w", 2, 10).await;
        assert_eq!(payloads(&back), ["poison"], "{}", h.name);
        assert!(
            !back[0].message.body.headers.contains_key(DEAD_LETTER_QUEUE),
            "{}",
            h.name
        );
        publish(&h, "t/w", vec![msg("c", 4), msg("d", 4)]).await;
        assert_eq!(
            h.store.purge("t/w", now_ms()).await.unwrap(),
            2,
            "{}",
            h.name
        );
        let left = h.store.peek("t/w", 10, false).await.unwrap();
        assert_eq!(left.len(), 3, "{}: the three in flight stay", h.name);
    }
}

#[tokio::test]
async fn a_consumer_that_goes_away_gives_its_deliveries_back() {
    let queues = [queue("g", |_| {})];
    for h in stores(&queues).await {
        publish(&h, "t/g", vec![msg("m", 4)]).await;
        assert_eq!(take(&h, "t/g", 1, 10).await.len(), 1);
        assert!(take(&h, "t/g", 2, 10).await.is_empty());
        h.store.release("t/g", now_ms(), 1).await.unwrap();
        let d = take(&h, "t/g", 2, 10).await;
        assert_eq!(payloads(&d), ["m"], "{}", h.name);
    }
}

#[tokio::test]
async fn a_redelivered_message_goes_back_to_its_place_in_line() {
    let queues = [queue("f", |_| {})];
    for h in stores(&queues).await {
        publish(&h, "t/f", vec![msg("a", 4), msg("b", 4)]).await;
        let first = take(&h, "t/f", 1, 1).await;
        publish(&h, "t/f", vec![msg("c", 4)]).await;
        h.store
            .nack("t/f", now_ms(), first[0].message.id, 1, true, "retry")
            .await
            .unwrap();
        let all = take(&h, "t/f", 2, 10).await;
        assert_eq!(payloads(&all), ["a", "b", "c"], "{}", h.name);
    }
}

#[tokio::test]
async fn an_encrypted_queue_never_writes_its_payloads_in_clear() {
    const MARKER: &str = "PLAINTEXT-MARKER-7f3a";
    let queues = [
        queue("secret", |q| q.encrypted = true),
        queue("open", |_| {}),
    ];
    for h in stores(&queues).await {
        publish(&h, "t/secret", vec![msg(&format!("{MARKER}-secret"), 4)]).await;
        publish(&h, "t/open", vec![msg(&format!("{MARKER}-open"), 4)]).await;
        let disk = bytes_under(&h.disk);
        // The grep can find a marker: the unencrypted queue's is there.
        assert!(
            contains(&disk, format!("{MARKER}-open").as_bytes()),
            "{}",
            h.name
        );
        assert!(
            !contains(&disk, format!("{MARKER}-secret").as_bytes()),
            "{}",
            h.name
        );
        let d = take(&h, "t/secret", 1, 10).await;
        assert_eq!(payloads(&d), [format!("{MARKER}-secret")], "{}", h.name);
    }
}

#[tokio::test]
async fn an_unknown_queue_is_named_in_the_error() {
    let queues = [queue("x", |_| {})];
    for h in stores(&queues).await {
        let e = h
            .store
            .publish("t/nope", now_ms(), vec![msg("m", 4)])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("t/nope"), "{}: {e}", h.name);
    }
}

/// Redis ran a take but its reply was lost (it died before answering):
/// the consumer takes again with the same number and gets the same
/// deliveries rather than the next ones, so none sits in flight to nobody
/// until its ack timeout. The embedded store is in-process: no lost
/// replies, nothing to repeat.
#[tokio::test]
async fn a_take_repeated_with_its_number_answers_with_what_it_took() {
    let queues = [queue("r", |_| {})];
    for h in stores(&queues).await {
        if h.name == "embedded" {
            continue;
        }
        publish(&h, "t/r", vec![msg("a", 4), msg("b", 4), msg("c", 4)]).await;
        let none = Filter::default();
        let take = |n: u64| h.store.take("t/r", now_ms(), (1, n), &none, 2);
        let first = take(7).await.expect("take");
        let again = take(7).await.expect("repeat");
        assert_eq!(payloads(&first), ["a", "b"], "{}", h.name);
        assert_eq!(payloads(&again), ["a", "b"], "{}: the repeat", h.name);
        assert_eq!(
            again[0].message.deliveries, 1,
            "{}: not counted twice",
            h.name
        );
        let next = take(8).await.expect("next");
        assert_eq!(payloads(&next), ["c"], "{}", h.name);
        // An acked delivery is not answered again.
        h.store
            .ack("t/r", &[next[0].message.id], 1)
            .await
            .expect("ack");
        assert!(take(8).await.expect("repeat").is_empty(), "{}", h.name);
        // A released consumer's last take is forgotten with it: the same
        // number takes anew (a and b came back).
        h.store.release("t/r", now_ms(), 1).await.expect("release");
        let after = take(8).await.expect("after release");
        assert_eq!(payloads(&after), ["a", "b"], "{}", h.name);
    }
}

/// A dead Redis is an unreachable store, which a consumer waits out,
/// not a refusal.
#[tokio::test]
async fn a_dead_redis_is_reported_as_unreachable_for_now() {
    let queues = [queue("u", |_| {})];
    for mut h in stores(&queues).await {
        if h.name == "embedded" {
            continue;
        }
        h.kill_redis();
        let e = h
            .store
            .take("t/u", now_ms(), (1, 1), &Filter::default(), 1)
            .await
            .expect_err("Redis is dead");
        assert!(e.is_transient(), "{}: {e}", h.name);
    }
}

/// Publishes one message to t/ids: its id.
async fn one(store: &Backend, payload: &str) -> u64 {
    match store
        .publish("t/ids", now_ms(), vec![msg(payload, 4)])
        .await
    {
        Ok(mut out) => match out.remove(0).0 {
            Published::Enqueued(id) => id,
            o => panic!("publish {payload}: {o:?}"),
        },
        Err(e) => panic!("publish {payload}: {e}"),
    }
}

/// Replicas reserve ids in blocks: two replicas publishing in turn never
/// hand out the same id. A block reserved before Redis lost its writes
/// (a restart under `appendfsync everysec`: the counter goes back) is
/// still used by its replica; when another replica's fresh block names a
/// message stored from it, that publish takes new ids and nothing is
/// overwritten.
#[tokio::test]
async fn replicas_never_share_an_id_even_when_redis_forgets_its_id_counter() {
    let queues = [queue("ids", |_| {})];
    for h in stores(&queues).await {
        let Some(url) = &h.url else { continue };
        let replica = |name: &'static str| {
            let keys = weft_control::queue::crypt::Keys::from_raw(&[[7u8; 32]]);
            weft_control::queue::redis_store::RedisStore::open(url, &queues, keys, name)
        };
        let other = replica("fedcba9876543210").await.expect("second replica");
        let other = Backend::Redis(other);
        let mut ids = Vec::new();
        for i in 0..6 {
            let store = if i % 2 == 0 { &h.store } else { &other };
            ids.push(one(store, &format!("m{i}")).await);
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 6, "{}: {ids:?}", h.name);
        let got = payloads(&take(&h, "t/ids", 1, 10).await);
        assert_eq!(got, ["m0", "m1", "m2", "m3", "m4", "m5"], "{}", h.name);

        // Redis loses everything (its counter too); both replicas keep
        // their blocks, a new one reserves from the start again.
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut c = client.get_connection().expect("connect");
        let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL");
        let third = Backend::Redis(replica("0000111122223333").await.expect("third replica"));
        // The old replica goes on with its block (ids after m4's); the
        // new one's block starts at 1 and runs into them.
        let mut after = vec![one(&h.store, "y1").await];
        for x in ["x1", "x2", "x3", "x4"] {
            after.push(one(&third, x).await);
        }
        let mut unique = after.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5, "{}: {after:?}", h.name);
        assert!(
            after[1..].contains(&(after[0] - 1)),
            "{}: the new block reached the old one's ids: {after:?}",
            h.name
        );
        let got = payloads(&take(&h, "t/ids", 2, 10).await);
        assert_eq!(got, ["y1", "x1", "x2", "x3", "x4"], "{}", h.name);
    }
}

/// Acks settled together: an id named twice in one call is settled once
/// (the second is not in flight any more), the queue's bytes and in-flight
/// count end at zero, and a later take finds nothing.
#[tokio::test]
async fn an_id_acked_twice_in_one_call_is_settled_once() {
    let queues = [queue("twice", |_| {})];
    for h in stores(&queues).await {
        publish(&h, "t/twice", vec![msg("a", 4), msg("b", 4)]).await;
        let got = take(&h, "t/twice", 1, 10).await;
        let ids: Vec<u64> = got.iter().map(|d| d.message.id).collect();
        assert_eq!(ids.len(), 2, "{}", h.name);
        let failed = h
            .store
            .ack("t/twice", &[ids[0], ids[0], ids[1]], 1)
            .await
            .expect("ack");
        assert_eq!(failed.len(), 1, "{}: {failed:?}", h.name);
        assert_eq!(failed[0].0, ids[0], "{}", h.name);
        let stats = h
            .store
            .stats(&h.store.queue("t/twice").expect("queue"), now_ms())
            .await
            .expect("stats");
        assert_eq!(
            (stats.depth.in_flight, stats.depth.bytes),
            (0, 0),
            "{}",
            h.name
        );
        assert!(take(&h, "t/twice", 1, 10).await.is_empty(), "{}", h.name);
    }
}
