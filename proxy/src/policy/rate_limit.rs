//! Rate limits on calls to the local workload, enforced by its own sidecar:
//! per route (path/method match), per caller identity, per header value
//! (an API key) or per source IP, each a rate and a burst. Over the limit:
//! 429 with `Retry-After` (a gRPC caller gets RESOURCE_EXHAUSTED).
//!
//! Local limits use governor (GCRA, lock-free for unkeyed limits; keyed ones
//! in governor's sharded map, trimmed as keys go idle). A global limit holds
//! mesh-wide: each proxy enforces the share the control plane leases to it
//! (`rate_limit_lease`), so no request waits on the network; the share's bucket
//! (`Gcra`) changes rate without refilling.

use crate::clock::clock_ns;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use http::HeaderName;
use metrics::Counter;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::v1 as pb;

pub const RATE_LIMITED_TOTAL: &str = "weft_rate_limited_total";

/// Keyed limiters are trimmed of idle keys every this many checks.
const TRIM_EVERY: u64 = 4096;

#[derive(Debug, Clone, PartialEq)]
enum Key {
    None,
    Identity,
    Header(HeaderName),
    SourceIp,
}

/// The request facts a limit may look at.
pub struct Call<'a> {
    pub port: u16,
    pub path: &'a str,
    pub method: &'a str,
    pub identity: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub source: IpAddr,
}

pub enum Verdict {
    Allow,
    Limited {
        /// The limit's name, "<namespace>/<policy>/<limit>".
        name: Arc<str>,
        retry_after: Duration,
    },
}

/// One configured limit and its buckets.
pub struct Limit {
    pub name: Arc<str>,
    port: u32,
    path_prefix: String,
    path_exact: String,
    method: String,
    key: Key,
    pub rate: f64,
    pub burst: u32,
    pub global: bool,
    buckets: Arc<Buckets>,
}

enum Bucket {
    Direct(DefaultDirectRateLimiter),
    Keyed(DefaultKeyedRateLimiter<Vec<u8>>),
    Leased(Gcra),
}

/// A limit's state, kept across config pushes while its settings stay.
pub struct Buckets {
    bucket: Bucket,
    checks: AtomicU64,
    /// Requests seen since the last lease report (global limits).
    demand: AtomicU64,
    limited: Counter,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("global", &self.global)
            .finish()
    }
}

fn governor_now() -> governor::clock::QuantaInstant {
    use governor::clock::Clock;
    governor::clock::DefaultClock::default().now()
}

fn quota(rate: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl Limit {
    /// The leased bucket of a global limit (its rate is the lease).
    pub(crate) fn leased(&self) -> Option<&Gcra> {
        match &self.buckets.bucket {
            Bucket::Leased(g) => Some(g),
            _ => None,
        }
    }

    fn from_pb(l: &pb::RateLimit, prev: Option<&Limit>) -> Result<Limit, String> {
        let key = match pb::RateLimitKey::try_from(l.key) {
            Ok(pb::RateLimitKey::None) => Key::None,
            Ok(pb::RateLimitKey::Identity) => Key::Identity,
            Ok(pb::RateLimitKey::Header) => {
                Key::Header(HeaderName::from_bytes(l.header.as_bytes()).map_err(|_| {
                    format!("rate limit \"{}\": bad header \"{}\"", l.name, l.header)
                })?)
            }
            Ok(pb::RateLimitKey::SourceIp) => Key::SourceIp,
            Err(_) => return Err(format!("rate limit \"{}\": unknown key {}", l.name, l.key)),
        };
        if !(l.requests_per_second.is_finite() && l.requests_per_second > 0.0) {
            return Err(format!("rate limit \"{}\": rate must be above 0", l.name));
        }
        let rate = l.requests_per_second;
        let burst = l.burst.max(1);
        // Same settings as before: keep the buckets (a push must not hand
        // every caller a fresh burst).
        let buckets = match prev
            .filter(|p| p.key == key && p.rate == rate && p.burst == burst && p.global == l.global)
        {
            Some(p) => p.buckets.clone(),
            None => {
                let bucket = match (&key, l.global) {
                    (_, true) => Bucket::Leased(Gcra::new(rate, burst)),
                    (Key::None, false) => {
                        Bucket::Direct(DefaultDirectRateLimiter::direct(quota(rate, burst)))
                    }
                    (_, false) => Bucket::Keyed(DefaultKeyedRateLimiter::keyed(quota(rate, burst))),
                };
                Arc::new(Buckets {
                    bucket,
                    checks: AtomicU64::new(0),
                    demand: AtomicU64::new(0),
                    limited: metrics::counter!(RATE_LIMITED_TOTAL, "policy" => l.name.clone()),
                })
            }
        };
        Ok(Limit {
            name: Arc::from(l.name.as_str()),
            port: l.port,
            path_prefix: l.path_prefix.clone(),
            path_exact: l.path_exact.clone(),
            method: l.method.clone(),
            key,
            rate,
            burst,
            global: l.global,
            buckets,
        })
    }

    fn applies(&self, c: &Call<'_>) -> bool {
        (self.port == 0 || self.port == u32::from(c.port))
            && (self.path_exact.is_empty() || self.path_exact == c.path)
            && (self.path_prefix.is_empty() || c.path.starts_with(self.path_prefix.as_str()))
            && (self.method.is_empty() || self.method == c.method)
    }

    /// None: allowed; Some(wait): over the limit.
    fn check(&self, c: &Call<'_>) -> Option<Duration> {
        let b = &self.buckets;
        let n = b.checks.fetch_add(1, Ordering::Relaxed);
        let wait = match &b.bucket {
            Bucket::Direct(l) => l.check().err().map(|nu| nu.wait_time_from(governor_now())),
            Bucket::Leased(g) => {
                b.demand.fetch_add(1, Ordering::Relaxed);
                g.check()
            }
            Bucket::Keyed(l) => {
                let key: Vec<u8> = match &self.key {
                    Key::Identity => c.identity.unwrap_or("").as_bytes().to_vec(),
                    Key::Header(h) => match c.headers.get(h) {
                        Some(v) => v.as_bytes().to_vec(),
                        // No key: the request is not subject to this limit.
                        None => return None,
                    },
                    Key::SourceIp => match c.source {
                        IpAddr::V4(v) => v.octets().to_vec(),
                        IpAddr::V6(v) => v.octets().to_vec(),
                    },
                    Key::None => Vec::new(),
                };
                if n % TRIM_EVERY == TRIM_EVERY - 1 {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
                l.check_key(&key)
                    .err()
                    .map(|nu| nu.wait_time_from(governor_now()))
            }
        };
        if wait.is_some() {
            b.limited.increment(1);
        }
        wait
    }
}

/// The limits of one proxy's workload, as configured.
#[derive(Default)]
pub struct RateLimits {
    pub limits: Vec<Limit>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.limits).finish()
    }
}

impl RateLimits {
    pub fn from_pb(
        p: &pb::RateLimitPolicy,
        prev: Option<&RateLimits>,
    ) -> Result<RateLimits, String> {
        let limits = p
            .limits
            .iter()
            .map(|l| {
                let before = prev.and_then(|p| p.limits.iter().find(|x| *x.name == *l.name));
                Limit::from_pb(l, before)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RateLimits { limits })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Every limit that applies must admit the call.
    pub fn check(&self, call: &Call<'_>) -> Verdict {
        for l in &self.limits {
            if l.applies(call) {
                if let Some(retry_after) = l.check(call) {
                    return Verdict::Limited {
                        name: l.name.clone(),
                        retry_after,
                    };
                }
            }
        }
        Verdict::Allow
    }

    /// Global limits with their demand since the last call (requests/s).
    pub(crate) fn take_demands(&self, elapsed: Duration) -> Vec<(&Limit, f64)> {
        self.limits
            .iter()
            .filter(|l| l.global)
            .map(|l| {
                let n = l.buckets.demand.swap(0, Ordering::Relaxed);
                (l, n as f64 / elapsed.as_secs_f64().max(1e-3))
            })
            .collect()
    }
}

/// A GCRA bucket whose rate can change without refilling it (global limits
/// follow their lease).
pub struct Gcra {
    /// Theoretical arrival time, ns on the process clock.
    tat: AtomicU64,
    /// f64 bits: requests per second.
    rate: AtomicU64,
    burst: u32,
}

impl Gcra {
    pub fn new(rate: f64, burst: u32) -> Self {
        Gcra {
            tat: AtomicU64::new(0),
            rate: AtomicU64::new(rate.to_bits()),
            burst: burst.max(1),
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate.store(rate.max(0.0).to_bits(), Ordering::Relaxed);
    }

    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// None: admitted; Some(wait) otherwise.
    pub fn check(&self) -> Option<Duration> {
        let rate = self.rate();
        if rate <= 0.0 {
            return Some(Duration::from_secs(1));
        }
        let interval = (1e9 / rate) as u64;
        let tolerance = interval.saturating_mul(u64::from(self.burst - 1));
        let now = clock_ns();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Some(Duration::from_nanos(start - now - tolerance));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return None,
                Err(t) => tat = t,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: pb::RateLimitKey, header: &str, rate: f64, burst: u32) -> pb::RateLimit {
        pb::RateLimit {
            name: "ns/p/l".into(),
            key: key as i32,
            header: header.into(),
            requests_per_second: rate,
            burst,
            ..Default::default()
        }
    }

    fn call<'a>(headers: &'a http::HeaderMap, identity: Option<&'a str>) -> Call<'a> {
        Call {
            port: 80,
            path: "/api/x",
            method: "GET",
            identity,
            headers,
            source: "10.0.0.1".parse().unwrap(),
        }
    }

    fn admitted(l: &RateLimits, c: &Call<'_>, n: usize) -> usize {
        (0..n)
            .filter(|_| matches!(l.check(c), Verdict::Allow))
            .count()
    }

    #[test]
    fn a_burst_is_admitted_then_the_rest_limited_with_a_wait() {
        let p = pb::RateLimitPolicy {
            limits: vec![limit(pb::RateLimitKey::None, "", 1.0, 5)],
        };
        let l = RateLimits::from_pb(&p, None).unwrap();
        let h = http::HeaderMap::new();
        assert_eq!(admitted(&l, &call(&h, None), 20), 5);
        match l.check(&call(&h, None)) {
            Verdict::Limited { retry_after, name } => {
                assert_eq!(&*name, "ns/p/l");
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            Verdict::Allow => panic!("over the limit"),
        }
    }

    #[test]
    fn per_header_and_per_identity_buckets_are_independent() {
        let p = pb::RateLimitPolicy {
            limits: vec![limit(pb::RateLimitKey::Header, "x-api-key", 1.0, 3)],
        };
        let l = RateLimits::from_pb(&p, None).unwrap();
        let mut a = http::HeaderMap::new();
        a.insert("x-api-key", "a".parse().unwrap());
        let mut b = http::HeaderMap::new();
        b.insert("x-api-key", "b".parse().unwrap());
        assert_eq!(admitted(&l, &call(&a, None), 10), 3);
        assert_eq!(
            admitted(&l, &call(&b, None), 10),
            3,
            "key b has its own bucket"
        );
        assert_eq!(
            admitted(&l, &call(&http::HeaderMap::new(), None), 10),
            10,
            "no key, no limit"
        );

        let p = pb::RateLimitPolicy {
            limits: vec![limit(pb::RateLimitKey::Identity, "", 1.0, 2)],
        };
        let l = RateLimits::from_pb(&p, None).unwrap();
        let h = http::HeaderMap::new();
        assert_eq!(admitted(&l, &call(&h, Some("spiffe://t/ns/a/sa/x")), 5), 2);
        assert_eq!(admitted(&l, &call(&h, Some("spiffe://t/ns/a/sa/y")), 5), 2);
    }

    #[test]
    fn matching_narrows_a_limit_to_a_route() {
        let mut pl = limit(pb::RateLimitKey::None, "", 1.0, 1);
        pl.path_prefix = "/admin".into();
        let l = RateLimits::from_pb(&pb::RateLimitPolicy { limits: vec![pl] }, None).unwrap();
        let h = http::HeaderMap::new();
        assert_eq!(admitted(&l, &call(&h, None), 5), 5, "/api is not limited");
    }

    #[test]
    fn buckets_survive_a_push_with_the_same_settings_and_reset_on_change() {
        let p = pb::RateLimitPolicy {
            limits: vec![limit(pb::RateLimitKey::None, "", 1.0, 2)],
        };
        let l1 = RateLimits::from_pb(&p, None).unwrap();
        let h = http::HeaderMap::new();
        assert_eq!(admitted(&l1, &call(&h, None), 5), 2);
        let l2 = RateLimits::from_pb(&p, Some(&l1)).unwrap();
        assert_eq!(
            admitted(&l2, &call(&h, None), 5),
            0,
            "same bucket, still empty"
        );
        let p3 = pb::RateLimitPolicy {
            limits: vec![limit(pb::RateLimitKey::None, "", 1.0, 4)],
        };
        let l3 = RateLimits::from_pb(&p3, Some(&l2)).unwrap();
        assert_eq!(admitted(&l3, &call(&h, None), 5), 4);
    }

    #[test]
    fn gcra_changes_rate_without_refilling() {
        let g = Gcra::new(1000.0, 10);
        let burst = (0..100).filter(|_| g.check().is_none()).count();
        assert_eq!(burst, 10);
        g.set_rate(2000.0);
        assert!(g.check().is_some(), "a rate change hands out no new burst");
        std::thread::sleep(Duration::from_millis(50));
        let refilled = (0..100).filter(|_| g.check().is_none()).count();
        assert!(
            (10..=11).contains(&refilled),
            "refills at the rate, capped at the burst: {refilled}"
        );
        g.set_rate(0.0);
        assert!(g.check().is_some());
    }
}
