//! The fuzz targets on stable, as CI runs them: every saved input (seeds,
//! and each input a fuzzer ever found failing) is replayed, then a bounded
//! number of deterministic mutations of them. The coverage-guided runs are
//! `cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer <target>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `f(input)`; on a panic, says which input (hex) caused it.
fn run(target: &str, what: &str, f: fn(&[u8]), input: &[u8]) {
    let ok = std::panic::catch_unwind(|| f(input));
    if ok.is_err() {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        panic!("target {target} panicked on {what}: {hex}");
    }
}

#[test]
fn every_saved_input_runs_without_panicking() {
    for (target, f) in weft_fuzz::TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "no corpus for {target}");
        for (path, bytes) in inputs {
            run(target, &path.display().to_string(), *f, &bytes);
        }
    }
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\x00",
    b"\xff",
    b"\r\n",
    b"[",
    b"{",
    b": ",
    b"---\n",
    b"-",
    b"999999999999",
    b"\xf0\x9f\x92\xa9",
    b"*",
    b"&a",
    b"!!binary",
    b"\"",
    b"%",
    b"0x",
    b"://",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, token.iter().copied());
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                v.splice(at..at, other[from..to].iter().copied());
            }
            5 => v.truncate(at),
            _ if !v.is_empty() => {
                let from = rng.below(v.len());
                let to = (from + rng.below(32)).min(v.len());
                let chunk = v[from..to].to_vec();
                v.splice(at..at, chunk);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// Bounded: at most `PER_TARGET` mutations and `BUDGET` of time per target.
#[test]
fn mutations_of_the_corpus_run_without_panicking() {
    const PER_TARGET: usize = 20_000;
    const BUDGET: Duration = Duration::from_secs(8);
    for (target, f) in weft_fuzz::TARGETS {
        let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
        let started = Instant::now();
        for i in 0..PER_TARGET {
            if started.elapsed() > BUDGET {
                break;
            }
            let seed = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed, other);
            run(target, &format!("mutation {i}"), *f, &input);
        }
    }
}

/// The seeds exercise the whole path, not just the first check: the demo
/// config is accepted and compiles to pushes every sidecar accepts, the
/// generated push builds a snapshot, the certificate names its workload
/// and the CSR is signed. Set WEFT_FUZZ_WRITE_SEEDS=1 to (re)write the
/// generated seeds into the corpus.
#[test]
fn the_seeds_reach_the_deep_paths() {
    use prost::Message;
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/config/demo-full.yaml"),
    )
    .unwrap();
    let set = weft_fuzz::accepted_config(&demo).expect("the demo config is accepted");
    let nodes: Vec<_> = weft_fuzz::nodes(&set).collect();
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        let snapshot =
            weft_proxy::snapshot::Snapshot::from_resources("r1", weft_fuzz::compile(&set, node));
        assert!(snapshot.is_ok(), "{}: {:?}", node.service, snapshot.err());
    }
    let seeds = weft_fuzz::generated_seeds();
    let names: Vec<_> = seeds.iter().map(|(t, n, _)| format!("{t}/{n}")).collect();
    assert_eq!(
        names,
        [
            "push/demo-full",
            "certificate/workload-der",
            "certificate/csr-pem"
        ]
    );
    let push = xds_proto::v1::DiscoveryResponse::decode(&seeds[0].2[..]).unwrap();
    assert!(weft_proxy::snapshot::Snapshot::from_resources("r1", push.resources).is_ok());
    let id = weft_mesh_tls::svid::spiffe_id(&seeds[1].2).expect("a workload certificate");
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/fuzz/sa/target");
    assert!(std::str::from_utf8(&seeds[2].2)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    if std::env::var_os("WEFT_FUZZ_WRITE_SEEDS").is_some() {
        for (target, name, bytes) in &seeds {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(target)
                .join(name);
            std::fs::write(path, bytes).unwrap();
        }
    }
}
