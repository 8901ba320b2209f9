//! Fuzz targets: each takes arbitrary bytes and runs one parser the mesh
//! exposes to input it does not control. A target must never panic, hang
//! or grow without bound; a failing input found by the fuzzer is saved
//! under `fuzz/corpus/<target>/` and replayed by `tests/corpus.rs`, so it
//! stays fixed.
//!
//! `libfuzzer/` runs them coverage-guided (`cargo +nightly fuzz run
//! --fuzz-dir fuzz/libfuzzer <target>`); the tests replay the corpus and a
//! bounded number of mutations on stable, in CI.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;
use weft_control::config::ConfigSet;
use xds_proto::v1 as pb;

/// A target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets by name, as the corpus folders and libFuzzer know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("detect", detect),
    ("push", push),
    ("headers", headers),
    ("certificate", certificate),
    ("h1_messages", h1_messages),
];

/// A config file as `weftctl apply` sends it: YAML documents parsed and
/// checked one by one, then as a set. A set the control plane accepts is
/// compiled for each of (up to three of) its services, and every proxy must
/// be able to build its snapshot from what it is sent: an accepted config
/// that sidecars would refuse is a bug.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(set) = accepted_config(text) else {
        return;
    };
    for node in nodes(&set).take(3) {
        let resources = compile(&set, &node);
        if let Err(e) = weft_proxy::snapshot::Snapshot::from_resources("r1", resources) {
            panic!("an accepted config compiles to a push the sidecar refuses: {e}");
        }
    }
}

/// The config set `text` makes if the control plane accepts it.
pub fn accepted_config(text: &str) -> Option<ConfigSet> {
    let objects = weft_control::config::parse_documents("fuzz.yaml", text).ok()?;
    let mut set = ConfigSet {
        revision: 1,
        objects: BTreeMap::new(),
    };
    let mut origin = BTreeMap::new();
    for l in objects {
        let key = l.object.key();
        if origin.contains_key(&key) {
            return None; // a duplicate is refused before the set is checked
        }
        origin.insert(key.clone(), (l.source_name.clone(), l.document));
        set.objects.insert(key, l.object);
    }
    weft_control::config::validate::check_set(&set, &origin).ok()?;
    Some(set)
}

/// A proxy node for each service of the set.
pub fn nodes(set: &ConfigSet) -> impl Iterator<Item = pb::Node> + '_ {
    set.services().map(|(key, _)| pb::Node {
        name: format!("{}-0", key.name),
        namespace: key.namespace.clone(),
        service: key.name.clone(),
        ..Default::default()
    })
}

/// What the control plane pushes to `node`.
pub fn compile(set: &ConfigSet, node: &pb::Node) -> Vec<pb::Resource> {
    let trust = weft_control::trust::MeshTrust {
        trust_domain: "cluster.local".into(),
        roots_pem: vec![],
        rotate_before_unix: 0,
        epoch: 1,
    };
    weft_control::compile::compile_for(
        set,
        &weft_control::registry_view::RegistryView::default(),
        node,
        &trust,
    )
    .into_values()
    .map(|r| (*r).clone())
    .collect()
}

/// The first bytes of a connection on the outbound listener.
pub fn detect(data: &[u8]) {
    let _ = weft_proxy::listener::detect::classify(data);
}

/// A discovery push from the control plane: decoded, then built into the
/// proxy's snapshot (what a buggy or hostile control plane could send).
pub fn push(data: &[u8]) {
    use prost::Message;
    let Ok(resp) = pb::DiscoveryResponse::decode(data) else {
        return;
    };
    let _ = weft_proxy::snapshot::Snapshot::from_resources(&resp.version, resp.resources);
}

/// Request headers the sidecar interprets: `grpc-timeout`, Host and the
/// absolute-form authority, upgrades, hop-by-hop lists, `grpc-status`.
/// Input: `name: value` lines; the first line is the request target.
pub fn headers(data: &[u8]) {
    use weft_proxy::http::headers;
    let _ = weft_proxy::policy::timeout::parse_grpc_timeout(data);
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let mut builder = http::Request::builder();
    if let Ok(uri) = http::Uri::try_from(target) {
        builder = builder.uri(uri);
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(name),
            http::header::HeaderValue::from_bytes(value),
        ) {
            if n == "grpc-timeout" {
                let _ = weft_proxy::policy::timeout::parse_grpc_timeout(v.as_bytes());
            }
            req.headers_mut().append(n, v);
        }
    }
    let _ = headers::is_grpc(req.headers());
    let _ = headers::grpc_status(req.headers());
    let upgrade = headers::is_upgrade(req.headers());
    if headers::normalize_host(&mut req).is_ok() {
        let (mut parts, ()) = req.into_parts();
        let _ = headers::authority_as_host(&parts);
        parts.version = http::Version::HTTP_2;
        let _ = headers::authority_as_host(&parts);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    }
}

/// Certificates and CSRs: a peer's certificate as the inbound listener
/// inspects it (DER), and a CSR as the control plane's CA signs it (PEM,
/// from the Certify call).
pub fn certificate(data: &[u8]) {
    use weft_mesh_tls::{svid, tls};
    let _ = svid::spiffe_id(data);
    let _ = svid::inspect(data);
    let der = rustls_pki_types::CertificateDer::from(data.to_vec());
    let _ = tls::peer_identity(Some(&[der]));
    let Some((ca, granted)) = test_ca() else {
        return;
    };
    let pem = match std::str::from_utf8(data) {
        Ok(text) if text.contains("-----BEGIN") => text.to_string(),
        _ => weft_certs::ca::to_pem("CERTIFICATE REQUEST", data),
    };
    let _ = ca.sign(&pem, granted, Duration::from_secs(3600));
}

/// One CA for the whole run (creating a key per input would drown the
/// fuzzer); its folder lives as long as the process.
fn test_ca() -> Option<&'static (
    weft_certs::ca::CertificateAuthority,
    xds_proto::spiffe::SpiffeId,
)> {
    static CA: OnceLock<
        Option<(
            weft_certs::ca::CertificateAuthority,
            xds_proto::spiffe::SpiffeId,
        )>,
    > = OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?.keep();
        let ca =
            weft_certs::ca::CertificateAuthority::load_or_create(&dir, "cluster.local").ok()?;
        let id = xds_proto::spiffe::SpiffeId::new("cluster.local", "fuzz", "target").ok()?;
        Some((ca, id))
    })
    .as_ref()
}

/// Seeds that are built rather than written by hand: a push compiled from
/// the demo config, a workload certificate (DER) and a CSR (PEM). Returns
/// (target, file name, bytes); `tests/corpus.rs` checks they reach the
/// deep paths and can write them into the corpus.
pub fn generated_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use prost::Message;
    let mut seeds = Vec::new();
    let demo = include_str!("../corpus/config/demo-full.yaml");
    if let Some(set) = accepted_config(demo) {
        if let Some(node) = nodes(&set).next() {
            let push = pb::DiscoveryResponse {
                version: "r1".into(),
                nonce: "1".into(),
                resources: compile(&set, &node),
                removed: vec![],
                full_state: true,
            };
            seeds.push(("push", "demo-full", push.encode_to_vec()));
        }
    }
    if let Some((ca, id)) = test_ca() {
        if let Ok((issued, _key)) = ca.issue_local(id, Duration::from_secs(3600)) {
            if let Some(der) = weft_mesh_tls::svid::certs_from_pem(&issued.chain_pem)
                .ok()
                .and_then(|c| c.into_iter().next())
            {
                seeds.push(("certificate", "workload-der", der.to_vec()));
            }
        }
        if let Some(csr) = csr_pem(id) {
            seeds.push(("certificate", "csr-pem", csr.into_bytes()));
        }
    }
    seeds
}

fn csr_pem(id: &xds_proto::spiffe::SpiffeId) -> Option<String> {
    weft_mesh_tls::svid::csr_for(id).ok().map(|(csr, _key)| csr)
}

/// Bytes from a client (and, the same bytes, from an upstream) as the
/// HTTP/1.1 fast path reads them. Whatever it takes, it must write back out
/// as a message a strict reader takes the same way (same method, target,
/// Host and framing; the status and framing of a response), so that the
/// sidecar and the next hop never disagree about where a message ends; a
/// chunked body must end at the same byte however it is split.
pub fn h1_messages(data: &[u8]) {
    use weft_proxy::http::fast_h1::chunked::ChunkScanner;
    use weft_proxy::http::fast_h1::head::{self, Fields, Framing, RequestParse, ResponseParse};
    const MAX: usize = 64 * 1024;
    let mut fields = Vec::new();
    if let RequestParse::Fast(h) = head::parse_request(data, &mut fields, MAX) {
        assert!(h.len <= data.len());
        let mut out = Vec::new();
        head::write_request(&mut out, data, &h, Fields::Raw(&fields));
        let mut again = Vec::new();
        match head::parse_request(&out, &mut again, MAX) {
            RequestParse::Fast(h2) => {
                assert_eq!(h2.len, out.len(), "the written head is one whole head");
                assert_eq!(h2.method, h.method);
                assert_eq!(out[h2.target.clone()], data[h.target.clone()]);
                assert_eq!(out[h2.host.clone()], data[h.host.clone()]);
                assert_eq!(h2.framing, h.framing);
                assert!(!h2.close, "Connection is never forwarded");
            }
            other => panic!("a head the fast path took is written as {other:?}"),
        }
        if h.framing == Framing::Chunked {
            let body = &data[h.len..];
            let mut whole = ChunkScanner::default();
            let at_once = whole.scan(body);
            let mut split = ChunkScanner::default();
            let mut taken = 0;
            let mut failed = false;
            for piece in body.chunks(7) {
                match split.scan(piece) {
                    Ok(n) => taken += n,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                if split.done() {
                    break;
                }
            }
            match at_once {
                Ok(n) => {
                    assert!(!failed && taken == n && split.done() == whole.done());
                }
                Err(_) => assert!(
                    failed,
                    "split scanning accepted what whole scanning refused"
                ),
            }
        }
    }
    for head_request in [false, true] {
        if let ResponseParse::Head(r) = head::parse_response(data, head_request, &mut fields, MAX) {
            let mut out = Vec::new();
            head::write_response(&mut out, data, &r, Fields::Raw(&fields), r.close);
            let mut again = Vec::new();
            match head::parse_response(&out, head_request, &mut again, MAX) {
                ResponseParse::Head(r2) => {
                    assert_eq!(r2.len, out.len());
                    assert_eq!(r2.status, r.status);
                    assert_eq!(r2.framing, r.framing);
                    assert_eq!(r2.close, r.close);
                }
                other => panic!("a response head the fast path took is written as {other:?}"),
            }
        }
    }
}
