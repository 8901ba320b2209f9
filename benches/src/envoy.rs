//! Envoy as a contender: its configuration (one-hop listeners and the
//! mTLS two-hop path) and leaf certificates from the weft CA.

use anyhow::anyhow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_testbed::localmesh;

/// Certificate files for one Envoy side of the mTLS two-hop path, issued by
/// the weft control plane's CA (same trust as the weft sidecars).
#[derive(Clone)]
pub struct EnvoyTls {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    /// The peer's SPIFFE ID to require (upstream side only).
    pub peer: Option<String>,
}

fn envoy_tls_context(kind: &str, t: &EnvoyTls, indent: &str) -> String {
    let san = match &t.peer {
        Some(id) => format!(
            "\n{indent}        match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{id}\"}}}}]"
        ),
        None => String::new(),
    };
    let (require, alpn) = if kind == "Downstream" {
        (
            "\n".to_string() + indent + "    require_client_certificate: true",
            "[\"h2\", \"http/1.1\"]",
        )
    } else {
        (String::new(), "[\"h2\"]")
    };
    format!(
        r#"{indent}transport_socket:
{indent}  name: envoy.transport_sockets.tls
{indent}  typed_config:
{indent}    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}TlsContext{require}
{indent}    common_tls_context:
{indent}      alpn_protocols: {alpn}
{indent}      tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
{indent}      tls_certificates: [{{certificate_chain: {{filename: "{}"}}, private_key: {{filename: "{}"}}}}]
{indent}      validation_context:
{indent}        trusted_ca: {{filename: "{}"}}{san}
"#,
        t.chain.display(),
        t.key.display(),
        t.bundle.display(),
    )
}

/// One Envoy listener → cluster pair.
pub struct EnvoyHop {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub upstream_h2: bool,
    /// Terminate mTLS on the listener.
    pub downstream_tls: Option<EnvoyTls>,
    /// Originate mTLS to the upstream.
    pub upstream_tls: Option<EnvoyTls>,
}

pub fn envoy_config(hops: &[EnvoyHop]) -> String {
    let mut l = String::new();
    let mut c = String::new();
    for (i, hop) in hops.iter().enumerate() {
        let (listen, up, h2) = (&hop.listen, &hop.upstream, &hop.upstream_h2);
        let downstream = hop
            .downstream_tls
            .as_ref()
            .map(|t| envoy_tls_context("Downstream", t, "      "))
            .unwrap_or_default();
        l.push_str(&format!(
            r#"  - name: l{i}
    address: {{socket_address: {{address: "{}", port_value: {}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l{i}
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: c{i}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{downstream}"#,
            listen.ip(),
            listen.port()
        ));
        let upstream = hop
            .upstream_tls
            .as_ref()
            .map(|t| envoy_tls_context("Upstream", t, "    "))
            .unwrap_or_default();
        let proto = if *h2 {
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#
        } else {
            ""
        };
        c.push_str(&format!(
            r#"  - name: c{i}
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {{thresholds: [{{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000, max_retries: 1000000}}]}}
{proto}    load_assignment:
      cluster_name: c{i}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: "{}", port_value: {}}}}}}}}}]}}]
{upstream}"#,
            up.ip(),
            up.port()
        ));
    }
    format!("static_resources:\n  listeners:\n{l}  clusters:\n{c}")
}

/// Certificates for envoy-a (client side, requires envoy-b's ID) and
/// envoy-b (server side), issued by the bench control plane's CA.
pub fn envoy_certs(dir: &Path, pki: &localmesh::Pki) -> anyhow::Result<(EnvoyTls, EnvoyTls)> {
    let data = pki
        .ca_bundle
        .parent()
        .ok_or_else(|| anyhow!("no data dir"))?;
    let ca =
        weft_certs::ca::CertificateAuthority::load_existing(&data.join("ca"), "cluster.local")?;
    let mut out = Vec::new();
    for (name, peer) in [("envoy-a", Some("envoy-b")), ("envoy-b", None)] {
        let id = weft_mesh_tls::SpiffeId::new("cluster.local", "bench", name)?;
        let (issued, key) = ca.issue_local(&id, Duration::from_secs(24 * 3600))?;
        let chain = dir.join(format!("{name}-chain.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&chain, issued.chain_pem)?;
        std::fs::write(&key_path, key)?;
        out.push(EnvoyTls {
            chain,
            key: key_path,
            bundle: pki.ca_bundle.clone(),
            peer: peer.map(|p| format!("spiffe://cluster.local/ns/bench/sa/{p}")),
        });
    }
    let b = out.pop().ok_or_else(|| anyhow!("no envoy-b cert"))?;
    let a = out.pop().ok_or_else(|| anyhow!("no envoy-a cert"))?;
    Ok((a, b))
}
