//! Load balancing over a set of hosts: round robin, weighted round robin,
//! random, least-request (power of two choices), peak-EWMA, ring-hash and
//! Maglev. A `Balancer` is built once per snapshot for each host set (a
//! cluster or a subset of it); `pick` is lock-free and allocation-free.
//!
//! Every algorithm skips hosts that are ejected (outlier detection) or
//! failed health checks, unless fewer than the panic threshold are available:
//! then all hosts take traffic (a degraded cluster beats no cluster). An
//! ejected host whose ejection time is over receives a single probe.

use crate::clock::clock_ms;
use crate::host::ejection::Availability;
use crate::host::{Host, HostGuard};
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use xds_proto::v1 as pb;

/// The algorithms are the wire enum's: one definition in xds-proto.
pub use xds_proto::v1::LbAlgorithm as Algorithm;

/// Where a consistent-hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    pub algorithm: Algorithm,
    pub hash_key: Option<HashKey>,
    pub slow_start: Option<Duration>,
    /// Percent of available hosts below which availability is ignored.
    pub panic_threshold: u32,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            algorithm: Algorithm::RoundRobin,
            hash_key: None,
            slow_start: None,
            panic_threshold: 50,
        }
    }
}

impl LbConfig {
    pub fn from_pb(lb: Option<&pb::LoadBalancer>) -> Result<LbConfig, String> {
        let Some(lb) = lb else {
            return Ok(LbConfig::default());
        };
        let algorithm = Algorithm::try_from(lb.algorithm)
            .map_err(|_| format!("unknown load balancer {}", lb.algorithm))?;
        let hash_key = if !lb.hash_header.is_empty() {
            Some(HashKey::Header(
                http::HeaderName::from_bytes(lb.hash_header.as_bytes())
                    .map_err(|_| format!("bad hash header \"{}\"", lb.hash_header))?,
            ))
        } else if !lb.hash_cookie.is_empty() {
            Some(HashKey::Cookie(lb.hash_cookie.clone()))
        } else if lb.hash_source_ip {
            Some(HashKey::SourceIp)
        } else {
            None
        };
        if matches!(algorithm, Algorithm::RingHash | Algorithm::Maglev) && hash_key.is_none() {
            return Err("ring-hash and maglev need a hash key".into());
        }
        Ok(LbConfig {
            algorithm,
            hash_key,
            slow_start: (lb.slow_start_ms > 0).then(|| Duration::from_millis(lb.slow_start_ms)),
            panic_threshold: if lb.panic_threshold_percent == 0 {
                50
            } else {
                lb.panic_threshold_percent.min(100)
            },
        })
    }
}

/// Maglev lookup table size: a prime well above the host count.
const MAGLEV_TABLE: usize = 65_537;
/// Virtual nodes per unit of weight on the hash ring.
const RING_VNODES: u32 = 100;

#[derive(Debug)]
enum Table {
    None,
    /// Host indexes in smooth weighted round-robin order.
    Schedule(Vec<u32>),
    /// (point, host index), sorted by point.
    Ring(Vec<(u64, u32)>),
    /// Maglev lookup table of host indexes.
    Maglev(Vec<u32>),
}

/// A load balancer over one host set.
#[derive(Debug)]
pub struct Balancer {
    pub config: LbConfig,
    cursor: AtomicUsize,
    table: Table,
}

/// The host chosen for one try.
pub struct Picked {
    pub index: usize,
    pub guard: HostGuard,
}

impl Balancer {
    pub fn new(config: LbConfig, hosts: &[Host]) -> Balancer {
        let table = match config.algorithm {
            Algorithm::WeightedRoundRobin => Table::Schedule(smooth_wrr_schedule(hosts)),
            Algorithm::RingHash => Table::Ring(ring(hosts)),
            Algorithm::Maglev => Table::Maglev(maglev(hosts)),
            _ => Table::None,
        };
        Balancer {
            config,
            cursor: AtomicUsize::new(0),
            table,
        }
    }

    /// Picks a host for a request with consistent-hash key `key` (if the
    /// algorithm uses one), avoiding `exclude` (the host a retry follows)
    /// when another is available. `unavailable` is the cluster's count of
    /// ejected or unhealthy hosts (for panic mode).
    pub fn pick(
        &self,
        hosts: &[Host],
        key: Option<u64>,
        exclude: Option<usize>,
        unavailable: usize,
    ) -> Option<Picked> {
        let n = hosts.len();
        if n == 0 {
            return None;
        }
        let available = n.saturating_sub(unavailable);
        let panic = available * 100 < n * self.config.panic_threshold as usize;
        let now = clock_ms();
        // Each algorithm proposes candidates in its order of preference; the
        // first one that is usable wins.
        let usable = |i: usize| -> Option<Picked> {
            if Some(i) == exclude && n > 1 {
                return None;
            }
            let h = &hosts[i];
            if panic {
                return Some(Picked {
                    index: i,
                    guard: HostGuard::new(h.state.clone(), false),
                });
            }
            if !h.state.is_healthy() {
                return None;
            }
            match h.state.ejection.availability(now) {
                Availability::Available => Some(Picked {
                    index: i,
                    guard: HostGuard::new(h.state.clone(), false),
                }),
                Availability::Probe => Some(Picked {
                    index: i,
                    guard: HostGuard::new(h.state.clone(), true),
                }),
                Availability::Unavailable => None,
            }
        };
        let picked = match (&self.table, self.config.algorithm) {
            (Table::Schedule(s), _) if !s.is_empty() && self.config.slow_start.is_none() => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..s.len()).find_map(|k| usable(s[(start + k) % s.len()] as usize))
            }
            (Table::Ring(r), _) if !r.is_empty() => {
                let k = key.unwrap_or_else(|| rand::rng().random());
                let start = r.partition_point(|(p, _)| *p < k);
                (0..r.len()).find_map(|j| usable(r[(start + j) % r.len()].1 as usize))
            }
            (Table::Maglev(t), _) if !t.is_empty() => {
                let k = key.unwrap_or_else(|| rand::rng().random());
                let start = (k % t.len() as u64) as usize;
                // An unusable host falls through to the next table entry:
                // only its keys move.
                (0..t.len().min(4 * n + 64)).find_map(|j| usable(t[(start + j) % t.len()] as usize))
            }
            (_, Algorithm::Random | Algorithm::WeightedRoundRobin) => {
                let mut rng = rand::rng();
                let weighted =
                    hosts.iter().any(|h| h.weight != 1) || self.config.slow_start.is_some();
                let first = if weighted {
                    weighted_random(hosts, self.config.slow_start, now, &mut rng)
                } else {
                    rng.random_range(0..n)
                };
                usable(first).or_else(|| {
                    let start = rng.random_range(0..n);
                    (0..n).find_map(|k| usable((start + k) % n))
                })
            }
            (_, Algorithm::LeastRequest | Algorithm::PeakEwma) => {
                let ewma = self.config.algorithm == Algorithm::PeakEwma;
                let cost = |i: usize| {
                    let h = &hosts[i];
                    let active = f64::from(h.state.active.load(Ordering::Relaxed));
                    let w = h.effective_weight(self.config.slow_start, now);
                    if ewma {
                        h.state.latency.get() * (active + 1.0) / w
                    } else {
                        (active + 1.0) / w
                    }
                };
                let mut rng = rand::rng();
                let (a, b) = if n == 1 {
                    (0, 0)
                } else {
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    (a, b)
                };
                let (first, second) = if cost(b) < cost(a) { (b, a) } else { (a, b) };
                usable(first).or_else(|| usable(second)).or_else(|| {
                    let start = rng.random_range(0..n);
                    (0..n).find_map(|k| usable((start + k) % n))
                })
            }
            _ => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n).find_map(|k| usable((start + k) % n))
            }
        };
        // Everything excluded or out: fall back to the excluded host rather
        // than fail (a retry to the same host beats none).
        picked.or_else(|| {
            exclude.filter(|i| *i < n).and_then(|i| {
                let h = &hosts[i];
                (h.state.is_healthy() && !h.state.ejection.is_ejected()).then(|| Picked {
                    index: i,
                    guard: HostGuard::new(h.state.clone(), false),
                })
            })
        })
    }

    /// The consistent-hash key of a request, when this balancer uses one.
    /// Whether `hash_key` reads the request's headers.
    pub fn hashes_headers(&self) -> bool {
        matches!(
            self.config.hash_key,
            Some(HashKey::Header(_) | HashKey::Cookie(_))
        )
    }

    pub fn hash_key(
        &self,
        headers: &http::HeaderMap,
        source: Option<std::net::IpAddr>,
    ) -> Option<u64> {
        match self.config.hash_key.as_ref()? {
            HashKey::Header(name) => headers.get(name).map(|v| hash64(v.as_bytes())),
            HashKey::Cookie(name) => cookie(headers, name).map(|v| hash64(v.as_bytes())),
            HashKey::SourceIp => source.map(|ip| match ip {
                std::net::IpAddr::V4(v4) => hash64(&v4.octets()),
                std::net::IpAddr::V6(v6) => hash64(&v6.octets()),
            }),
        }
    }
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn weighted_random(
    hosts: &[Host],
    slow_start: Option<Duration>,
    now: u64,
    rng: &mut impl Rng,
) -> usize {
    let total: f64 = hosts
        .iter()
        .map(|h| h.effective_weight(slow_start, now))
        .sum();
    let mut x = rng.random::<f64>() * total;
    for (i, h) in hosts.iter().enumerate() {
        x -= h.effective_weight(slow_start, now);
        if x < 0.0 {
            return i;
        }
    }
    hosts.len() - 1
}

/// FNV-1a followed by a 64-bit finalizer: stable across processes and
/// versions (both sides of a consistent hash must agree).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finalizer spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn host_key(h: &Host) -> String {
    h.addr.to_string()
}

/// Smooth weighted round robin (as nginx): each step every host gains its
/// weight, the richest is chosen and pays the total. Precomputed for one
/// full cycle (capped) so picking is a cursor increment.
fn smooth_wrr_schedule(hosts: &[Host]) -> Vec<u32> {
    let weights: Vec<i64> = hosts.iter().map(|h| i64::from(h.weight.max(1))).collect();
    let g = weights.iter().fold(0, |a, w| gcd(a, *w)).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
    let total: i64 = weights.iter().sum();
    let len = total.clamp(0, 65_536) as usize;
    let mut current = vec![0i64; hosts.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn ring(hosts: &[Host]) -> Vec<(u64, u32)> {
    let mut points = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let key = host_key(h);
        for v in 0..RING_VNODES * h.weight.clamp(1, 100) {
            points.push((hash64(format!("{key}#{v}").as_bytes()), i as u32));
        }
    }
    points.sort_unstable();
    points
}

/// Maglev (Eisenbud et al., NSDI '16): every host walks its own permutation
/// of the table and claims the next free slot in turn; weights give a host
/// proportionally more turns.
fn maglev(hosts: &[Host]) -> Vec<u32> {
    let m = MAGLEV_TABLE as u64;
    if hosts.is_empty() {
        return vec![];
    }
    let perms: Vec<(u64, u64)> = hosts
        .iter()
        .map(|h| {
            let k = host_key(h);
            let offset = hash64(format!("{k}/offset").as_bytes()) % m;
            let skip = hash64(format!("{k}/skip").as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = hosts.iter().map(|h| h.weight.max(1)).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; hosts.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE];
    let mut filled = 0;
    let mut round: u64 = 0;
    while filled < MAGLEV_TABLE {
        for (i, h) in hosts.iter().enumerate() {
            // Weighted turns: host i plays in this round if its share of
            // rounds so far has grown past an integer.
            let w = u64::from(h.weight.max(1));
            if (round + 1) * w / max_w == round * w / max_w {
                continue;
            }
            let (offset, skip) = perms[i];
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == MAGLEV_TABLE {
                break;
            }
        }
        round += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use crate::host::test_hosts as hosts;

    fn lb(algorithm: Algorithm, hs: &[Host]) -> Balancer {
        Balancer::new(
            LbConfig {
                algorithm,
                ..LbConfig::default()
            },
            hs,
        )
    }

    fn counts(
        b: &Balancer,
        hs: &[Host],
        n: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> Vec<usize> {
        let mut c = vec![0; hs.len()];
        for i in 0..n {
            c[b.pick(hs, key(i), None, 0).unwrap().index] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_even() {
        let hs = hosts(3, &[]);
        assert_eq!(
            counts(&lb(Algorithm::RoundRobin, &hs), &hs, 300, |_| None),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        let hs = hosts(3, &[5, 1, 1]);
        let b = lb(Algorithm::WeightedRoundRobin, &hs);
        assert_eq!(counts(&b, &hs, 700, |_| None), vec![500, 100, 100]);
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(&hs, None, None, 0).unwrap().index)
            .collect();
        assert!(
            seq.windows(2).any(|w| w[0] != w[1]),
            "smooth, not blocks: {seq:?}"
        );
    }

    #[test]
    fn random_honours_weights() {
        let hs = hosts(2, &[3, 1]);
        let c = counts(&lb(Algorithm::Random, &hs), &hs, 8000, |_| None);
        assert!((5600..6400).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_request_avoids_a_busy_host() {
        let hs = hosts(2, &[]);
        let b = lb(Algorithm::LeastRequest, &hs);
        let _busy: Vec<HostGuard> = (0..10)
            .map(|_| HostGuard::new(hs[0].state.clone(), false))
            .collect();
        let c = counts(&b, &hs, 100, |_| None);
        assert_eq!(c[1], 100, "{c:?}");
    }

    #[test]
    fn peak_ewma_avoids_a_slow_host() {
        let hs = hosts(3, &[]);
        hs[1].state.latency.observe(Duration::from_millis(200));
        hs[0].state.latency.observe(Duration::from_millis(1));
        hs[2].state.latency.observe(Duration::from_millis(1));
        let c = counts(&lb(Algorithm::PeakEwma, &hs), &hs, 300, |_| None);
        assert_eq!(c[1], 0, "{c:?}");
    }

    /// Keys stay on one host, and removing one of N hosts moves about 1/N
    /// of the keys (only those that were on it).
    fn check_consistency(algorithm: Algorithm) {
        let hs = hosts(5, &[]);
        let b = lb(algorithm, &hs);
        let keys: Vec<u64> = (0..5000u32).map(|k| hash64(&k.to_be_bytes())).collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|k| hs[b.pick(&hs, Some(*k), None, 0).unwrap().index].addr)
            .collect();
        let again: Vec<SocketAddr> = keys
            .iter()
            .map(|k| hs[b.pick(&hs, Some(*k), None, 0).unwrap().index].addr)
            .collect();
        assert_eq!(before, again, "same key, same host");
        let mut per_host: HashMap<SocketAddr, usize> = HashMap::new();
        for a in &before {
            *per_host.entry(*a).or_default() += 1;
        }
        assert!(
            per_host.values().all(|c| (600..1400).contains(c)),
            "{per_host:?}"
        );
        let fewer: Vec<Host> = hs
            .iter()
            .filter(|h| h.addr != hs[2].addr)
            .cloned()
            .collect();
        let b2 = lb(algorithm, &fewer);
        let after: Vec<SocketAddr> = keys
            .iter()
            .map(|k| fewer[b2.pick(&fewer, Some(*k), None, 0).unwrap().index].addr)
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_removed = before.iter().filter(|a| **a == hs[2].addr).count();
        assert!(moved >= on_removed, "every key of the removed host moves");
        assert!(
            moved as f64 <= on_removed as f64 * 1.15 + 50.0,
            "{algorithm:?}: moved {moved}, the removed host had {on_removed}"
        );
    }

    #[test]
    fn ring_hash_is_consistent_and_moves_about_one_nth() {
        check_consistency(Algorithm::RingHash);
    }

    #[test]
    fn maglev_is_consistent_and_moves_about_one_nth() {
        check_consistency(Algorithm::Maglev);
    }

    #[test]
    fn unhealthy_hosts_are_skipped_until_panic_threshold() {
        let hs = hosts(4, &[]);
        let b = lb(Algorithm::RoundRobin, &hs);
        hs[0].state.healthy.store(false, Ordering::Relaxed);
        let c = counts(&b, &hs, 300, |_| None);
        assert_eq!(c[0], 0);
        // 3 of 4 unavailable: below 50 %, spread over all.
        let c = {
            let mut c = vec![0; 4];
            for _ in 0..400 {
                c[b.pick(&hs, None, None, 3).unwrap().index] += 1;
            }
            c
        };
        assert_eq!(c, vec![100; 4]);
    }

    #[test]
    fn a_retry_avoids_the_host_it_follows() {
        let hs = hosts(2, &[]);
        let b = lb(Algorithm::RoundRobin, &hs);
        for _ in 0..10 {
            assert_eq!(b.pick(&hs, None, Some(0), 0).unwrap().index, 1);
        }
        let one = hosts(1, &[]);
        let b = lb(Algorithm::RoundRobin, &one);
        assert_eq!(
            b.pick(&one, None, Some(0), 0).unwrap().index,
            0,
            "the only host"
        );
    }

    #[test]
    fn cookie_and_header_keys_are_read() {
        let hs = hosts(2, &[]);
        let mut cfg = LbConfig {
            algorithm: Algorithm::RingHash,
            hash_key: Some(HashKey::Cookie("session".into())),
            ..LbConfig::default()
        };
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; session=abc".parse().unwrap());
        assert_eq!(
            Balancer::new(cfg.clone(), &hs).hash_key(&h, None),
            Some(hash64(b"abc"))
        );
        cfg.hash_key = Some(HashKey::Header(http::HeaderName::from_static("x-user")));
        assert_eq!(Balancer::new(cfg, &hs).hash_key(&h, None), None);
    }
}
