//! Injecting one pod (or pod template): the decision, the containers and
//! the patch; and the reverse.

use crate::annotations::{self, Overrides};
use crate::patch::{pointer_token, Op};
use crate::probes;
use crate::template::{
    Template, ADMIN_PORT, HEALTH_PORT, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT,
    PROXY_CONTAINER, TOKEN_DIR, TOKEN_VOLUME,
};
use crate::InjectError;
use serde_json::{json, Map, Value};

/// How the pod reached the injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Its namespace is labelled `weft.dev/inject: enabled` (or a user ran
    /// `weftctl inject` on it): inject unless the pod opts out.
    Namespace,
    /// Any other namespace: inject only a pod that opts in.
    OptIn,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected {
        patch: Vec<Op>,
        warnings: Vec<String>,
    },
    /// Left as it is, and why.
    Skipped(String),
}

/// The patch that injects the pod template at `base` (a JSON Pointer, ""
/// for a Pod) in `namespace`.
pub fn inject(
    template: &Template,
    object: &Value,
    base: &str,
    namespace: &str,
    selection: Selection,
) -> Result<Outcome, InjectError> {
    let pod = at(object, base)?;
    let metadata = pod.get("metadata").and_then(Value::as_object);
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| InjectError::Malformed(format!("{base}/spec: missing or not an object")))?;
    if template.skip_namespaces.iter().any(|n| n == namespace) {
        return Ok(Outcome::Skipped(format!(
            "pods in namespace {namespace} are never injected"
        )));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(
            "host-network pods are never injected (their traffic is the node's)".into(),
        ));
    }
    if is_injected(metadata, spec) {
        return Ok(Outcome::Skipped("already injected".into()));
    }
    let overrides = Overrides::parse(metadata)?;
    match (selection, overrides.inject) {
        (_, Some(false)) => {
            return Ok(Outcome::Skipped(format!(
                "{}: disabled",
                annotations::INJECT
            )))
        }
        (Selection::OptIn, None) => {
            return Ok(Outcome::Skipped(format!(
                "neither the namespace nor the pod sets {}: enabled",
                annotations::INJECT
            )))
        }
        _ => {}
    }
    if template.ca_bundle.trim().is_empty() {
        return Err(InjectError::Template(
            "caBundle is empty: the sidecar needs the mesh's roots (weftctl inject --ca-bundle)"
                .into(),
        ));
    }
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            InjectError::Malformed(format!("{base}/spec/containers: missing or empty"))
        })?;
    let labels = metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    let service = service_name(&overrides, labels)?;
    let app_port = overrides.app_port.or_else(|| first_port(containers));
    let native = overrides.native_sidecar.unwrap_or(template.native_sidecar);
    let spec_ptr = format!("{base}/spec");

    let mut warnings = Vec::new();
    let rewrite = if overrides
        .rewrite_app_probes
        .unwrap_or(template.rewrite_app_probes)
    {
        probes::rewrite(containers, &spec_ptr)
    } else {
        probes::Rewrite::default()
    };
    warnings.extend(rewrite.warnings.iter().cloned());
    if app_port.is_none() {
        warnings.push(format!(
            "no container port and no {}: the sidecar does not register the pod",
            annotations::APP_PORT
        ));
    }

    let proxy = proxy_container(
        template, &overrides, &service, app_port, labels, &rewrite, native,
    )?;
    let init = init_container(template, &overrides);

    // Probe replacements first: they use the containers' indices before
    // a legacy sidecar is inserted at the front.
    let mut patch = rewrite.ops.clone();
    let mut marks = vec![(
        annotations::INJECTED.to_string(),
        Value::String(env!("CARGO_PKG_VERSION").into()),
    )];
    if !rewrite.originals.is_empty() {
        marks.push((
            annotations::ORIGINAL_PROBES.to_string(),
            Value::String(Value::Object(rewrite.originals.clone()).to_string()),
        ));
    }
    add_map_entries(&mut patch, pod, base, &["metadata", "annotations"], marks);
    let volume = json!({
        "name": TOKEN_VOLUME,
        "projected": { "sources": [{ "serviceAccountToken": {
            "audience": template.token_audience,
            "expirationSeconds": template.token_expiration_seconds,
            "path": "token",
        }}]},
    });
    append(&mut patch, spec, &spec_ptr, "volumes", vec![volume]);
    let has_inits = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if native {
        // weft-init, then the sidecar, then the app's own init containers
        // (whose traffic the running sidecar carries).
        if has_inits {
            patch.push(Op::add(format!("{spec_ptr}/initContainers/0"), init));
            patch.push(Op::add(format!("{spec_ptr}/initContainers/1"), proxy));
        } else {
            patch.push(Op::add(
                format!("{spec_ptr}/initContainers"),
                json!([init, proxy]),
            ));
        }
    } else {
        // Legacy: the app's init containers run before any redirect (no
        // sidecar is up yet to carry them); the sidecar runs first among
        // the containers.
        append(&mut patch, spec, &spec_ptr, "initContainers", vec![init]);
        patch.push(Op::add(format!("{spec_ptr}/containers/0"), proxy));
    }
    Ok(Outcome::Injected { patch, warnings })
}

/// The patch that removes what [`inject`] added and restores the app's
/// probes; None when the pod template is not injected.
pub fn uninject(object: &Value, base: &str) -> Result<Option<Vec<Op>>, InjectError> {
    let pod = at(object, base)?;
    let metadata = pod.get("metadata").and_then(Value::as_object);
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return Ok(None);
    };
    if !is_injected(metadata, spec) {
        return Ok(None);
    }
    let spec_ptr = format!("{base}/spec");
    let mut patch = Vec::new();
    let annotations = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object);
    let originals: Map<String, Value> = annotations
        .and_then(|a| a.get(annotations::ORIGINAL_PROBES))
        .and_then(Value::as_str)
        .map(|s| {
            serde_json::from_str(s).map_err(|e| {
                InjectError::Malformed(format!("annotation {}: {e}", annotations::ORIGINAL_PROBES))
            })
        })
        .transpose()?
        .unwrap_or_default();
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        let Some(saved) = originals.get(name).and_then(Value::as_object) else {
            continue;
        };
        for (field, _) in probes::KINDS {
            if let Some(probe) = saved.get(field) {
                patch.push(Op::replace(
                    format!("{spec_ptr}/containers/{i}/{field}"),
                    probe.clone(),
                ));
            }
        }
    }
    for (field, names) in [
        ("containers", &[PROXY_CONTAINER][..]),
        ("initContainers", &[PROXY_CONTAINER, INIT_CONTAINER][..]),
        ("volumes", &[TOKEN_VOLUME][..]),
    ] {
        remove_named(&mut patch, spec, &spec_ptr, field, names);
    }
    if let Some(a) = annotations {
        let ours = [annotations::INJECTED, annotations::ORIGINAL_PROBES];
        if a.keys().all(|k| ours.contains(&k.as_str())) {
            patch.push(Op::remove(format!("{base}/metadata/annotations")));
        } else {
            for key in ours.iter().filter(|k| a.contains_key(**k)) {
                patch.push(Op::remove(format!(
                    "{base}/metadata/annotations/{}",
                    pointer_token(key)
                )));
            }
        }
    }
    Ok(Some(patch))
}

fn at<'a>(object: &'a Value, base: &str) -> Result<&'a Value, InjectError> {
    object
        .pointer(base)
        .filter(|v| v.is_object())
        .ok_or_else(|| InjectError::Malformed(format!("{base}: no pod template there")))
}

fn is_injected(metadata: Option<&Map<String, Value>>, spec: &Map<String, Value>) -> bool {
    let marked = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(annotations::INJECTED));
    let has_proxy = ["containers", "initContainers"].iter().any(|f| {
        spec.get(*f)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
    });
    marked || has_proxy
}

/// The mesh service: the annotation, else the standard labels.
fn service_name(
    overrides: &Overrides,
    labels: Option<&Map<String, Value>>,
) -> Result<String, InjectError> {
    if let Some(s) = &overrides.service {
        return Ok(s.clone());
    }
    for key in ["app.kubernetes.io/name", "app"] {
        if let Some(v) = labels.and_then(|l| l.get(key)).and_then(Value::as_str) {
            if annotations::dns_label(v).is_ok() {
                return Ok(v.to_string());
            }
            return Err(InjectError::Malformed(format!(
                "label {key}: \"{v}\" is not a service name (a DNS label); set {}",
                annotations::SERVICE
            )));
        }
    }
    Err(InjectError::Malformed(format!(
        "no service name: set the label app.kubernetes.io/name or app, or the annotation {}",
        annotations::SERVICE
    )))
}

fn first_port(containers: &[Value]) -> Option<u16> {
    containers
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|p| {
            p.get("protocol")
                .and_then(Value::as_str)
                .is_none_or(|proto| proto == "TCP")
        })
        .find_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .and_then(|p| u16::try_from(p).ok())
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn env_field(name: &str, field: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": field } } })
}

fn proxy_container(
    template: &Template,
    overrides: &Overrides,
    service: &str,
    app_port: Option<u16>,
    labels: Option<&Map<String, Value>>,
    rewrite: &probes::Rewrite,
    native: bool,
) -> Result<Value, InjectError> {
    let mut envs = vec![
        env("WEFT_CONTROL_PLANE", &template.control_plane),
        env("WEFT_CA_BUNDLE_PEM", &template.ca_bundle),
        env("WEFT_TRUST_DOMAIN", &template.trust_domain),
        env_field("WEFT_NODE", "metadata.name"),
        env_field("WEFT_NAMESPACE", "metadata.namespace"),
        env_field("WEFT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_field("WEFT_ADVERTISE_ADDRESS", "status.podIP"),
        env("WEFT_SERVICE", service),
        env("WEFT_APP_PORT", app_port.unwrap_or(0).to_string()),
        env("WEFT_REGISTER", app_port.is_some().to_string()),
        env("WEFT_INTERCEPTED", "true"),
        env("WEFT_INBOUND", format!("0.0.0.0:{INBOUND_PORT}")),
        env("WEFT_OUTBOUND", format!("127.0.0.1:{OUTBOUND_PORT}")),
        env("WEFT_ADMIN", format!("127.0.0.1:{ADMIN_PORT}")),
        env("WEFT_METRICS", format!("0.0.0.0:{HEALTH_PORT}")),
        env("WEFT_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        env(
            "WEFT_DRAIN_TIMEOUT_SECS",
            template.drain_timeout_seconds.to_string(),
        ),
        env(
            "RUST_LOG",
            overrides
                .log_level
                .as_deref()
                .unwrap_or(&template.log_level),
        ),
    ];
    let pod_labels: Vec<String> = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect();
    if !pod_labels.is_empty() {
        envs.push(env("WEFT_LABELS", pod_labels.join(",")));
    }
    if let Some(p) = &overrides.opaque_ports {
        envs.push(env("WEFT_OPAQUE_PORTS", p));
    }
    if !rewrite.probes.is_empty() {
        let probes = serde_json::to_string(&rewrite.probes)
            .map_err(|e| InjectError::Malformed(format!("app probes: {e}")))?;
        envs.push(env(xds_proto::app_probe::ENV, probes));
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": HEALTH_PORT, "scheme": "HTTP" },
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 1,
        })
    };
    let uid = template.proxy_uid;
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": template.proxy_image,
        "imagePullPolicy": template.image_pull_policy,
        "env": envs,
        "ports": [{ "name": "weft-health", "containerPort": HEALTH_PORT, "protocol": "TCP" }],
        "resources": overrides.resources(template),
        "securityContext": {
            "runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": true,
            "allowPrivilegeEscalation": false, "privileged": false,
            "readOnlyRootFilesystem": true, "capabilities": { "drop": ["ALL"] },
        },
        // Gates the app's start (native) or its traffic (legacy) on the
        // proxy holding a certificate and its first config.
        "startupProbe": probe("/ready", 1, 300),
        "readinessProbe": probe("/ready", 2, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": [{ "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true }],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(obj) = c.as_object_mut() {
        if native {
            obj.insert("restartPolicy".into(), json!("Always"));
        } else {
            // The kubelet starts the next container once postStart
            // returns: the app starts after the proxy is ready. preStop
            // deregisters and drains before the kubelet's SIGTERM.
            obj.insert(
                "lifecycle".into(),
                json!({
                    "postStart": { "exec": { "command": ["/usr/local/bin/weft-proxy", "wait"] } },
                    "preStop": { "exec": { "command": ["/usr/local/bin/weft-proxy", "drain"] } },
                }),
            );
        }
    }
    Ok(c)
}

fn init_container(template: &Template, overrides: &Overrides) -> Value {
    let uid = template.proxy_uid.to_string();
    let mut args = vec![
        "--proxy-uid".to_string(),
        uid.clone(),
        "--proxy-gid".into(),
        uid,
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--proxy-ports".into(),
        HEALTH_PORT.to_string(),
    ];
    for (flag, v) in [
        ("--skip-inbound-ports", &overrides.skip_inbound_ports),
        ("--skip-outbound-ports", &overrides.skip_outbound_ports),
        ("--skip-outbound-cidrs", &overrides.skip_outbound_cidrs),
    ] {
        if let Some(v) = v {
            args.push(flag.into());
            args.push(v.replace(' ', ""));
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": template.init_image,
        "imagePullPolicy": template.image_pull_policy,
        "command": ["/usr/local/bin/weft-init"],
        "args": args,
        "resources": crate::annotations::resources_json(
            &template.init_resources.requests,
            &template.init_resources.limits,
        ),
        // iptables needs NET_ADMIN and NET_RAW in the pod's network
        // namespace, nothing more; it writes /run/xtables.lock.
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
            "allowPrivilegeEscalation": false, "privileged": false,
            "readOnlyRootFilesystem": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// Adds `entries` to the map at `path` under the pod, creating the map
/// (and its parent) when absent.
fn add_map_entries(
    patch: &mut Vec<Op>,
    pod: &Value,
    base: &str,
    path: &[&str; 2],
    entries: Vec<(String, Value)>,
) {
    let [parent, field] = *path;
    match pod.get(parent).and_then(Value::as_object) {
        None => patch.push(Op::add(
            format!("{base}/{parent}"),
            json!({ field: Map::from_iter(entries) }),
        )),
        Some(p) if !p.get(field).is_some_and(Value::is_object) => patch.push(Op::add(
            format!("{base}/{parent}/{field}"),
            Value::Object(Map::from_iter(entries)),
        )),
        Some(_) => {
            for (k, v) in entries {
                patch.push(Op::add(
                    format!("{base}/{parent}/{field}/{}", pointer_token(&k)),
                    v,
                ));
            }
        }
    }
}

/// Appends to the array `field` of the spec, creating it when absent.
fn append(
    patch: &mut Vec<Op>,
    spec: &Map<String, Value>,
    spec_ptr: &str,
    field: &str,
    items: Vec<Value>,
) {
    if spec.get(field).is_some_and(Value::is_array) {
        for item in items {
            patch.push(Op::add(format!("{spec_ptr}/{field}/-"), item));
        }
    } else {
        patch.push(Op::add(format!("{spec_ptr}/{field}"), Value::Array(items)));
    }
}

/// Removes the named items of the array `field` (the whole array when
/// nothing else is left in it), highest index first.
fn remove_named(
    patch: &mut Vec<Op>,
    spec: &Map<String, Value>,
    spec_ptr: &str,
    field: &str,
    names: &[&str],
) {
    let Some(items) = spec.get(field).and_then(Value::as_array) else {
        return;
    };
    let ours: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n))
        })
        .map(|(i, _)| i)
        .collect();
    if ours.is_empty() {
        return;
    }
    if ours.len() == items.len() && field != "containers" {
        patch.push(Op::remove(format!("{spec_ptr}/{field}")));
    } else {
        for i in ours.into_iter().rev() {
            patch.push(Op::remove(format!("{spec_ptr}/{field}/{i}")));
        }
    }
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
