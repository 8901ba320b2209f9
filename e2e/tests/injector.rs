//! The sidecar injector (issue 15) at its real boundary, without an API
//! server: weft-control serves the admission webhook over HTTPS with a
//! certificate made by openssl; curl posts AdmissionReview v1 bodies shaped
//! as the API server sends them; the returned JSON Patch is applied with an
//! independent RFC 6902 implementation and the resulting pods are checked
//! against the Kubernetes schemas of two versions with kubernetes-validate.
//! `weftctl inject` must produce the same pods offline. Then an injected
//! sidecar is started from exactly the container the patch added (env
//! resolved as the kubelet would), bootstraps its identity from a projected
//! ServiceAccount token, and answers the kubelet's probes, including the
//! app's own probe it took over.

use base64::Engine;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use weft_testbed::k8s_issuer::{Issuer, ISSUER};
use weft_testbed::*;

/// Kubernetes versions whose schemas every injected object must satisfy:
/// the first with native sidecars on by default, and a current one.
const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.34.0"];

struct Webhook {
    url: String,
    ca: PathBuf,
}

/// A mesh whose control plane also serves the injector on 127.A.B.1:15017.
fn mesh_with_injector(name: &str, extra: &[&str]) -> (Mesh, Webhook) {
    let mut mesh = Mesh::prepare(name, &[]);
    std::fs::create_dir_all(&mesh.dir).expect("dir");
    let (cert, key) = (
        mesh.dir.join("webhook.pem"),
        mesh.dir.join("webhook-key.pem"),
    );
    let ip = mesh.ip(1);
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=weft-control.weft-system.svc",
        ])
        .arg("-addext")
        .arg(format!(
            "subjectAltName=DNS:weft-control.weft-system.svc,IP:{ip}"
        ))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listen = SocketAddr::new(ip, 15017);
    let mut flags: Vec<String> = vec![
        "--inject-listen".into(),
        listen.to_string(),
        "--inject-tls-cert".into(),
        cert.display().to_string(),
        "--inject-tls-key".into(),
        key.display().to_string(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    mesh.control_extra = flags;
    mesh.start_control();
    localmesh::wait_listening(listen, Duration::from_secs(10)).expect("injector listening");
    let webhook = Webhook {
        url: format!("https://{listen}"),
        ca: cert,
    };
    (mesh, webhook)
}

impl Webhook {
    /// POSTs `body` to `path` with curl (verifying the serving certificate
    /// as the API server does with the webhook's caBundle).
    fn post(&self, path: &str, body: &[u8], scratch: &Path) -> Value {
        std::fs::write(scratch, body).expect("write body");
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", scratch.display()))
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("JSON answer")
    }
}

/// An AdmissionReview as the API server sends it when a controller
/// creates `pod` in `namespace`.
fn review(uid: &str, namespace: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    }))
    .expect("review")
}

/// The answer's patch applied to `pod` (None when there is no patch).
fn patched(answer: &Value, uid: &str, pod: &Value) -> Option<Value> {
    let r = &answer["response"];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    assert_eq!(r["uid"], uid, "{answer}");
    assert_eq!(r["allowed"], true, "{answer}");
    let patch = r["patch"].as_str()?;
    assert_eq!(r["patchType"], "JSONPatch", "{answer}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64 patch");
    let ops: json_patch::Patch = serde_json::from_slice(&raw).expect("RFC 6902 patch");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).expect("patch applies");
    Some(out)
}

/// Every document of a YAML stream, read by PyYAML (a parser other than
/// the one weftctl writes with).
fn yaml_docs(text: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin.read()) if d is not None]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3 with PyYAML");
    assert!(out.status.success(), "PyYAML could not read:\n{text}");
    serde_json::from_slice(&out.stdout).expect("json")
}

/// kubernetes-validate --strict against each of KUBE_VERSIONS.
fn validate(files: &[PathBuf]) {
    for version in KUBE_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(files)
            .output()
            .expect("kubernetes-validate (pip install kubernetes-validate)");
        assert!(
            out.status.success(),
            "Kubernetes {version} schemas refused:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The pod a workload's controller would create from its template.
fn pod_of(workload: &Value) -> Option<(Value, String)> {
    let ptr = match workload["kind"].as_str()? {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return None,
    };
    let t = workload.pointer(ptr)?;
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": t.get("metadata").cloned().unwrap_or(json!({})), "spec": t["spec"]});
    Some((pod, ptr.to_string()))
}

fn injector_count(mesh: &Mesh, result: &str) -> f64 {
    let (_, m) = mesh.admin_get(mesh.control_admin, "/metrics");
    metric(
        &m,
        "weft_injector_reviews_total",
        &format!("result=\"{result}\""),
    )
    .unwrap_or(0.0)
}

#[test]
fn the_webhook_injects_every_workload_kind_as_weftctl_does_and_the_pods_satisfy_the_kubernetes_schemas(
) {
    let (mesh, webhook) = mesh_with_injector("injector-kinds", &[]);
    let scratch = mesh.dir.join("review.json");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s/workloads.yaml");
    let workloads = yaml_docs(&std::fs::read_to_string(&manifest).expect("manifest"));

    // weftctl inject, offline, with the same roots the webhook uses.
    let out = mesh.weftctl(&[
        "inject",
        "-f",
        &manifest.display().to_string(),
        "--ca-bundle",
        &mesh.pki().ca_bundle.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline_yaml = String::from_utf8(out.stdout).expect("utf8");
    let offline_file = mesh.dir.join("injected.yaml");
    std::fs::write(&offline_file, &offline_yaml).expect("write");
    let offline = yaml_docs(&offline_yaml);
    assert_eq!(offline.len(), workloads.len(), "every object comes back");

    let mut pods = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let Some((pod, ptr)) = pod_of(w) else {
            assert_eq!(&offline[i], w, "non-workloads pass through unchanged");
            continue;
        };
        let uid = format!("uid-{i}");
        let answer = webhook.post("/inject", &review(&uid, "shop", &pod), &scratch);
        let injected = patched(&answer, &uid, &pod)
            .unwrap_or_else(|| panic!("{} not injected: {answer}", w["kind"]));
        // The same pod as weftctl's offline template.
        let t = offline[i].pointer(&ptr).expect("template");
        assert_eq!(
            injected["spec"], t["spec"],
            "{} spec differs from weftctl's",
            w["kind"]
        );
        assert_eq!(injected["metadata"], t["metadata"], "{}", w["kind"]);
        let names: Vec<&str> = injected["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .chain(injected["spec"]["containers"].as_array())
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert!(
            names.contains(&"weft-proxy") && names.contains(&"weft-init"),
            "{names:?}"
        );
        let file = mesh.dir.join(format!("pod-{i}.yaml"));
        std::fs::write(
            &file,
            serde_json::to_string_pretty(&injected).expect("json"),
        )
        .expect("write");
        pods.push(file);
        // A second pass (a re-sent review) adds nothing.
        let again = webhook.post("/inject", &review("again", "shop", &injected), &scratch);
        assert!(patched(&again, "again", &injected).is_none(), "{again}");
    }
    assert_eq!(
        pods.len(),
        6,
        "Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod"
    );
    pods.push(offline_file);
    validate(&pods);

    // uninject (from stdin) gives back the manifest as written.
    let out = Command::new(binaries().path(localmesh::WEFTCTL))
        .args(["uninject", "-f", "-"])
        .stdin(std::fs::File::open(mesh.dir.join("injected.yaml")).expect("open"))
        .output()
        .expect("weftctl uninject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(yaml_docs(&String::from_utf8_lossy(&out.stdout)), workloads);
    assert!(injector_count(&mesh, "injected") >= 6.0);
}

#[test]
fn the_webhook_never_blocks_a_pod_skips_what_must_not_be_injected_and_counts_malformed_reviews() {
    let (mesh, webhook) = mesh_with_injector("injector-edges", &[]);
    let scratch = mesh.dir.join("review.json");
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 80}]}]}});
    // Malformed bodies: allowed, no patch, a warning; the uid echoed when
    // the body has one.
    for (body, uid) in [
        (b"{".to_vec(), ""),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-9"}}"#.to_vec(), "u-9"),
    ] {
        let a = webhook.post("/inject", &body, &scratch);
        assert_eq!(a["response"]["allowed"], true, "{a}");
        assert_eq!(a["response"]["uid"], uid, "{a}");
        assert!(a["response"].get("patch").is_none(), "{a}");
        assert!(a["response"]["warnings"][0].as_str().unwrap_or("").contains("weft injector"), "{a}");
    }
    assert!(injector_count(&mesh, "malformed") >= 2.0);
    // kube-system, host network, opt-out, and the opt-in webhook without
    // an opt-in: no patch.
    let skip = |path: &str, ns: &str, p: &Value| {
        let a = webhook.post(path, &review("s", ns, p), &scratch);
        assert!(patched(&a, "s", p).is_none(), "{ns}: {a}");
    };
    skip("/inject", "kube-system", &pod);
    let mut host = pod.clone();
    host["spec"]["hostNetwork"] = json!(true);
    skip("/inject", "shop", &host);
    let mut off = pod.clone();
    off["metadata"]["annotations"] = json!({"weft.dev/inject": "disabled"});
    skip("/inject", "shop", &off);
    skip("/inject/opt-in", "shop", &pod);
    let mut opted = pod.clone();
    opted["metadata"]["labels"]["weft.dev/inject"] = json!("enabled");
    let a = webhook.post("/inject/opt-in", &review("o", "shop", &opted), &scratch);
    assert!(patched(&a, "o", &opted).is_some(), "{a}");
    // A bad annotation: allowed unchanged, with a warning naming it.
    let mut bad = pod.clone();
    bad["metadata"]["annotations"] = json!({"weft.dev/proxy-cpu-limit": "lots"});
    let a = webhook.post("/inject", &review("b", "shop", &bad), &scratch);
    assert!(patched(&a, "b", &bad).is_none(), "{a}");
    assert!(
        a["response"]["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("weft.dev/proxy-cpu-limit"),
        "{a}"
    );
    assert!(injector_count(&mesh, "error") >= 1.0);
    assert!(injector_count(&mesh, "skipped") >= 4.0);
}

#[test]
fn an_injected_sidecar_boots_from_its_patch_with_the_pods_token_and_answers_the_kubelets_probes() {
    let issuer = Issuer::new("cluster-key-1");
    let jwks = std::env::temp_dir().join(format!("weft-e2e-{}-jwks.json", std::process::id()));
    std::fs::write(&jwks, issuer.jwks()).expect("jwks");
    let (mut mesh, webhook) = mesh_with_injector(
        "injector-boot",
        &[
            "--k8s-jwks",
            &jwks.display().to_string(),
            "--k8s-issuer",
            ISSUER,
        ],
    );
    let app = mesh.http_app("web");
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "web:1",
            "ports": [{"containerPort": app}],
            "readinessProbe": {"httpGet": {"path": "/", "port": app}}}]}});
    let scratch = mesh.dir.join("review.json");
    let answer = webhook.post("/inject", &review("boot", "shop", &pod), &scratch);
    let injected = patched(&answer, "boot", &pod).expect("injected");
    let proxy = injected["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "weft-proxy"))
        .expect("sidecar")
        .clone();

    // The kubelet's part: the downward API, the projected token, and the
    // pod's own address (127.A.B.3 here, so parallel tests don't collide).
    let pod_ip = mesh.ip(3);
    let token = mesh.dir.join("token");
    std::fs::write(&token, issuer.token("shop", "web", |_| {})).expect("token");
    let mut env = Vec::new();
    for e in proxy["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name").to_string();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "web-0".to_string(),
            Some("metadata.namespace") => "shop".to_string(),
            Some("spec.serviceAccountName") => "web".to_string(),
            Some("status.podIP") => pod_ip.to_string(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().expect("value").to_string(),
        };
        let value = match name.as_str() {
            "WEFT_CONTROL_PLANE" => mesh.cp_url(),
            "WEFT_TOKEN_FILE" => token.display().to_string(),
            "WEFT_INBOUND" | "WEFT_OUTBOUND" | "WEFT_ADMIN" | "WEFT_METRICS" => {
                let port = value.rsplit(':').next().expect("port");
                format!("{pod_ip}:{port}")
            }
            _ => value,
        };
        env.push((name, value));
    }
    mesh.spawn_env("proxy-injected", localmesh::PROXY, vec![], env);
    let health = proxy["startupProbe"]["httpGet"]["port"]
        .as_u64()
        .expect("probe port");
    let health = SocketAddr::new(pod_ip, u16::try_from(health).expect("port"));
    // The startup probe passes once the sidecar holds the pod's identity
    // and its first config.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = proxy["startupProbe"]["httpGet"]["path"]
            .as_str()
            .expect("path");
        if let Ok((200, _)) = http_request(health, "GET", path, "kubelet", &[], b"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the injected sidecar never became ready; log:\n{}",
            std::fs::read_to_string(mesh.logs().join("proxy-injected.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, certs) = mesh.admin_get(SocketAddr::new(pod_ip, 15000), "/certs");
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{certs}"
    );
    // The app's readiness probe, rewritten to the sidecar, runs against
    // the app: passes while it serves, fails once it is gone.
    let probe = &injected["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    let path = probe["path"].as_str().expect("path");
    assert_eq!(probe["port"].as_u64(), Some(u64::from(health.port())));
    let (code, body) = http_request(health, "GET", path, "kubelet", &[], b"").expect("probe");
    assert_eq!(code, 200, "{body}");
    mesh.procs
        .iter_mut()
        .find(|p| p.name == "app-web")
        .expect("app")
        .kill();
    let (code, body) = http_request(health, "GET", path, "kubelet", &[], b"").expect("probe");
    assert_eq!(code, 503, "{body}");
    let (code, _) = http_request(
        health,
        "GET",
        "/app-health/other/readyz",
        "kubelet",
        &[],
        b"",
    )
    .expect("probe");
    assert_eq!(code, 404);
    // The legacy layout's postStart hook returns at once for a ready
    // sidecar.
    let out = Command::new(binaries().path(localmesh::PROXY))
        .arg("wait")
        .env("WEFT_ADMIN", SocketAddr::new(pod_ip, 15000).to_string())
        .env("WEFT_WAIT_TIMEOUT_SECS", "5")
        .output()
        .expect("weft-proxy wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The legacy layout's preStop hook: `weft-proxy drain` asks the
    // running sidecar to deregister and drain; the kubelet then sees it
    // unready.
    let out = Command::new(binaries().path(localmesh::PROXY))
        .arg("drain")
        .env("WEFT_ADMIN", SocketAddr::new(pod_ip, 15000).to_string())
        .output()
        .expect("weft-proxy drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("draining"));
    let (code, _) =
        http_request(health, "GET", "/ready", "kubelet", &[], b"").unwrap_or((503, String::new()));
    assert_eq!(code, 503);
    // ... and `wait` on an unready sidecar gives up with the reason.
    let out = Command::new(binaries().path(localmesh::PROXY))
        .arg("wait")
        .env("WEFT_ADMIN", SocketAddr::new(pod_ip, 15000).to_string())
        .env("WEFT_WAIT_TIMEOUT_SECS", "1")
        .output()
        .expect("weft-proxy wait");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(jwks);
}
