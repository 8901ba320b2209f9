//! The injection template: the settings every injected pod shares (images,
//! control-plane address, trust bundle, resources). The chart writes it as
//! YAML for `weft-control --inject-template`; `weftctl inject` reads the same
//! file or uses the defaults.

use crate::InjectError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The proxy's ports inside the pod (the proxy's own defaults).
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;
/// Metrics, readiness and the rewritten app probes, on the pod IP.
pub const HEALTH_PORT: u16 = 15090;

/// The names the injector gives what it adds (uninject removes exactly
/// these).
pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";
pub const TOKEN_VOLUME: &str = "weft-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/weft/token";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Template {
    /// The sidecar image (holds /usr/local/bin/weft-proxy).
    pub proxy_image: String,
    /// The interception init image (holds /usr/local/bin/weft-init and
    /// iptables).
    pub init_image: String,
    pub image_pull_policy: String,
    /// The control plane's gRPC URL, as sidecars dial it.
    pub control_plane: String,
    pub trust_domain: String,
    /// PEM roots the sidecar trusts the control plane with on its first
    /// connection. weft-control fills it from its own trust bundle.
    pub ca_bundle: String,
    /// The projected ServiceAccount token's audience (weft-control
    /// --k8s-audience).
    pub token_audience: String,
    pub token_expiration_seconds: i64,
    /// Kubernetes 1.29+: the proxy is an init container with
    /// `restartPolicy: Always` that starts before the app and stops after
    /// it. False: a regular container that drains on preStop.
    pub native_sidecar: bool,
    /// The proxy's UID and GID (weft-init lets this user's traffic out
    /// untouched).
    pub proxy_uid: i64,
    /// RUST_LOG for the proxy.
    pub log_level: String,
    pub resources: Resources,
    pub init_resources: Resources,
    /// Namespaces whose pods are never injected.
    pub skip_namespaces: Vec<String>,
    /// Point the app's HTTP, TCP and gRPC probes at the proxy, which runs
    /// them against the app (a kubelet probe is plaintext: in strict mTLS
    /// the inbound side would refuse it).
    pub rewrite_app_probes: bool,
    /// The proxy's graceful drain, in seconds.
    pub drain_timeout_seconds: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Default for Template {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Template {
            proxy_image: format!("ghcr.io/weft-mesh/weft-proxy:{version}"),
            init_image: format!("ghcr.io/weft-mesh/weft-init:{version}"),
            image_pull_policy: "IfNotPresent".into(),
            control_plane: "https://weft-control.weft-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            ca_bundle: String::new(),
            token_audience: "weft".into(),
            token_expiration_seconds: 3600,
            native_sidecar: true,
            proxy_uid: 1337,
            log_level: "info".into(),
            resources: Resources {
                requests: [("cpu", "50m"), ("memory", "32Mi")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                limits: [("memory", "256Mi")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            },
            init_resources: Resources {
                requests: [("cpu", "10m"), ("memory", "10Mi")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                limits: [("cpu", "100m"), ("memory", "50Mi")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            },
            skip_namespaces: [
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "weft-system",
            ]
            .map(String::from)
            .to_vec(),
            rewrite_app_probes: true,
            drain_timeout_seconds: 30,
        }
    }
}

impl Template {
    /// Parses and checks a template (YAML or JSON): unknown fields, bad
    /// quantities and empty images are errors that name the field.
    pub fn parse(text: &str) -> Result<Template, InjectError> {
        let t = Template::deserialize(serde_yaml_ng::Deserializer::from_str(text))
            .map_err(|e| InjectError::Template(e.to_string()))?;
        t.check()?;
        Ok(t)
    }

    pub fn check(&self) -> Result<(), InjectError> {
        let bad = |field: &str, why: String| InjectError::Template(format!("{field}: {why}"));
        for (field, v) in [
            ("proxyImage", &self.proxy_image),
            ("initImage", &self.init_image),
            ("controlPlane", &self.control_plane),
            ("trustDomain", &self.trust_domain),
            ("tokenAudience", &self.token_audience),
        ] {
            if v.trim().is_empty() {
                return Err(bad(field, "must not be empty".into()));
            }
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(bad(
                "imagePullPolicy",
                format!(
                    "\"{}\" is not Always, IfNotPresent or Never",
                    self.image_pull_policy
                ),
            ));
        }
        if !(600..=86_400 * 2).contains(&self.token_expiration_seconds) {
            return Err(bad(
                "tokenExpirationSeconds",
                format!(
                    "{} is outside 600..=172800 (the kubelet's bounds)",
                    self.token_expiration_seconds
                ),
            ));
        }
        if !(1..=i64::from(u32::MAX)).contains(&self.proxy_uid) {
            return Err(bad(
                "proxyUid",
                format!("{} is not a non-root UID", self.proxy_uid),
            ));
        }
        for (field, r) in [
            ("resources", &self.resources),
            ("initResources", &self.init_resources),
        ] {
            for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
                for (name, q) in map {
                    if !["cpu", "memory", "ephemeral-storage"].contains(&name.as_str()) {
                        return Err(bad(
                            &format!("{field}.{kind}"),
                            format!("unknown resource \"{name}\" (cpu, memory, ephemeral-storage)"),
                        ));
                    }
                    crate::quantity::check(q)
                        .map_err(|why| bad(&format!("{field}.{kind}.{name}"), why))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_their_own_checks_and_an_empty_file_means_the_defaults() {
        Template::default().check().unwrap();
        assert_eq!(Template::parse("{}").unwrap(), Template::default());
    }

    #[test]
    fn a_template_with_an_unknown_field_or_a_bad_quantity_names_it() {
        let e = Template::parse("proxyImag: x\n").unwrap_err().to_string();
        assert!(e.contains("proxyImag"), "{e}");
        let e = Template::parse("resources:\n  requests:\n    cpu: lots\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("resources.requests.cpu") && e.contains("lots"),
            "{e}"
        );
        let e = Template::parse("imagePullPolicy: Sometimes\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("imagePullPolicy"), "{e}");
    }
}
