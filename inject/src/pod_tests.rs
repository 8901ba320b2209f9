use super::*;
use crate::patch::apply;

fn template() -> Template {
    Template {
        ca_bundle: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
        ..Template::default()
    }
}

fn pod(extra_meta: Value, spec: Value) -> Value {
    let mut meta = json!({ "name": "web-1", "labels": { "app": "web", "version": "v2" } });
    if let (Some(m), Some(e)) = (meta.as_object_mut(), extra_meta.as_object()) {
        m.extend(e.clone());
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec })
}

fn app_spec() -> Value {
    json!({
        "initContainers": [{ "name": "migrate", "image": "migrate:1" }],
        "containers": [{
            "name": "web", "image": "web:1",
            "ports": [{ "name": "http", "containerPort": 8080 }],
            "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 5 },
        }],
    })
}

fn injected(t: &Template, object: &Value, ns: &str, sel: Selection) -> Value {
    match inject(t, object, "", ns, sel).unwrap() {
        Outcome::Injected { patch, .. } => {
            let mut out = object.clone();
            apply(&mut out, &patch).unwrap();
            out
        }
        Outcome::Skipped(why) => panic!("skipped: {why}"),
    }
}

fn env_of<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[test]
fn a_native_sidecar_starts_after_weft_init_and_before_the_apps_init_containers() {
    let out = injected(
        &template(),
        &pod(json!({}), app_spec()),
        "shop",
        Selection::Namespace,
    );
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["weft-init", "weft-proxy", "migrate"]);
    let proxy = &inits[1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(env_of(proxy, "WEFT_SERVICE")["value"], "web");
    assert_eq!(env_of(proxy, "WEFT_APP_PORT")["value"], "8080");
    assert_eq!(env_of(proxy, "WEFT_INTERCEPTED")["value"], "true");
    assert_eq!(
        env_of(proxy, "WEFT_ADVERTISE_ADDRESS")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        env_of(proxy, "WEFT_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert!(env_of(proxy, "WEFT_LABELS")["value"]
        .as_str()
        .unwrap()
        .contains("version=v2"));
    let init = &inits[0];
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(init["securityContext"]["privileged"], false);
    assert_eq!(
        out["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "weft"
    );
    // The app's readiness probe now asks the sidecar, which runs the
    // original (named port resolved) over loopback.
    let web = &out["spec"]["containers"][0];
    assert_eq!(web["readinessProbe"]["httpGet"]["port"], 15090);
    assert_eq!(
        web["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readyz"
    );
    assert_eq!(web["readinessProbe"]["periodSeconds"], 5);
    let probes: xds_proto::app_probe::AppProbes =
        serde_json::from_str(env_of(proxy, "WEFT_APP_PROBES")["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes["/app-health/web/readyz"],
        xds_proto::app_probe::AppProbe::Http {
            port: 8080,
            path: "/healthz".into(),
            https: false,
            host: None,
            headers: vec![]
        }
    );
    assert_eq!(
        out["metadata"]["annotations"][annotations::INJECTED],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn a_legacy_sidecar_is_the_first_container_holds_the_app_until_ready_drains_on_prestop_and_init_runs_last(
) {
    let p = pod(
        json!({ "annotations": { annotations::NATIVE_SIDECAR: "false" } }),
        app_spec(),
    );
    let out = injected(&template(), &p, "shop", Selection::Namespace);
    let names = |f: &str| -> Vec<String> {
        out["spec"][f]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("initContainers"), ["migrate", "weft-init"]);
    assert_eq!(names("containers"), ["weft-proxy", "web"]);
    let proxy = &out["spec"]["containers"][0];
    assert!(proxy.get("restartPolicy").is_none());
    assert_eq!(
        proxy["lifecycle"]["preStop"]["exec"]["command"],
        json!(["/usr/local/bin/weft-proxy", "drain"])
    );
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["/usr/local/bin/weft-proxy", "wait"])
    );
    // The probe rewrite hit the app container, not the inserted sidecar.
    assert_eq!(
        out["spec"]["containers"][1]["readinessProbe"]["httpGet"]["port"],
        15090
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
}

#[test]
fn pods_that_must_not_be_injected_are_skipped_with_the_reason() {
    let t = template();
    let skip = |p: &Value, ns: &str, sel| match inject(&t, p, "", ns, sel).unwrap() {
        Outcome::Skipped(why) => why,
        Outcome::Injected { .. } => panic!("injected in {ns}"),
    };
    let plain = pod(json!({}), app_spec());
    assert!(skip(&plain, "kube-system", Selection::Namespace).contains("kube-system"));
    let host = pod(
        json!({}),
        json!({ "hostNetwork": true, "containers": [{ "name": "a" }] }),
    );
    assert!(skip(&host, "shop", Selection::Namespace).contains("host-network"));
    let off = pod(
        json!({ "annotations": { annotations::INJECT: "disabled" } }),
        app_spec(),
    );
    assert!(skip(&off, "shop", Selection::Namespace).contains("disabled"));
    assert!(skip(&plain, "shop", Selection::OptIn).contains("neither"));
    let done = injected(&t, &plain, "shop", Selection::Namespace);
    assert!(skip(&done, "shop", Selection::Namespace).contains("already injected"));
    // A pod opts in by annotation or by label in a namespace that did not.
    for meta in [
        json!({ "annotations": { annotations::INJECT: "enabled" } }),
        json!({ "labels": { "app": "web", annotations::INJECT: "enabled" } }),
    ] {
        injected(&t, &pod(meta, app_spec()), "shop", Selection::OptIn);
    }
}

#[test]
fn annotations_set_ports_resources_log_level_and_interception_exclusions() {
    let p = pod(
        json!({ "annotations": {
            annotations::SKIP_OUTBOUND_CIDRS: "169.254.169.254/32",
            annotations::SKIP_INBOUND_PORTS: "9090",
            annotations::SKIP_OUTBOUND_PORTS: "5432,6000-6010",
            annotations::OPAQUE_PORTS: "6379",
            annotations::LOG_LEVEL: "debug",
            annotations::CPU_LIMIT: "1",
            annotations::MEMORY_REQUEST: "64Mi",
            annotations::SERVICE: "storefront",
            annotations::APP_PORT: "9000",
            annotations::REWRITE_APP_PROBES: "false",
        }}),
        app_spec(),
    );
    let out = injected(&template(), &p, "shop", Selection::Namespace);
    let proxy = &out["spec"]["initContainers"][1];
    assert_eq!(env_of(proxy, "WEFT_SERVICE")["value"], "storefront");
    assert_eq!(env_of(proxy, "WEFT_APP_PORT")["value"], "9000");
    assert_eq!(env_of(proxy, "RUST_LOG")["value"], "debug");
    assert_eq!(env_of(proxy, "WEFT_OPAQUE_PORTS")["value"], "6379");
    assert_eq!(proxy["resources"]["limits"]["cpu"], "1");
    assert_eq!(proxy["resources"]["requests"]["memory"], "64Mi");
    let args: Vec<&str> = out["spec"]["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(after("--skip-outbound-cidrs"), "169.254.169.254/32");
    assert_eq!(after("--skip-inbound-ports"), "9090");
    assert_eq!(after("--skip-outbound-ports"), "5432,6000-6010");
    // Probe rewriting was turned off.
    assert_eq!(
        out["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        "http"
    );
}

#[test]
fn a_pod_that_cannot_be_injected_gets_an_error_naming_what_to_fix() {
    let t = template();
    let nameless = json!({ "kind": "Pod", "metadata": { "name": "x" },
        "spec": { "containers": [{ "name": "a", "image": "a" }] } });
    let e = inject(&t, &nameless, "", "shop", Selection::Namespace)
        .unwrap_err()
        .to_string();
    assert!(e.contains(annotations::SERVICE), "{e}");
    let bad = pod(
        json!({ "annotations": { annotations::APP_PORT: "eighty" } }),
        app_spec(),
    );
    let e = inject(&t, &bad, "", "shop", Selection::Namespace)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("weft.dev/app-port") && e.contains("eighty"),
        "{e}"
    );
    let e = inject(
        &t,
        &json!({ "kind": "Pod" }),
        "",
        "shop",
        Selection::Namespace,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/spec"), "{e}");
    let no_roots = Template::default();
    let e = inject(
        &no_roots,
        &pod(json!({}), app_spec()),
        "",
        "shop",
        Selection::Namespace,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("caBundle"), "{e}");
}

#[test]
fn uninject_restores_the_original_pod_native_and_legacy() {
    let t = template();
    for native in ["true", "false"] {
        let original = pod(
            json!({ "annotations": { annotations::NATIVE_SIDECAR: native } }),
            app_spec(),
        );
        let out = injected(&t, &original, "shop", Selection::Namespace);
        let patch = uninject(&out, "").unwrap().expect("injected");
        let mut back = out.clone();
        apply(&mut back, &patch).unwrap();
        assert_eq!(back, original, "native={native}");
        assert_eq!(uninject(&original, "").unwrap(), None);
    }
    // A template without metadata, volumes or init containers.
    let bare = json!({ "spec": { "containers": [{ "name": "a", "image": "a" }] } });
    let t2 = Template {
        rewrite_app_probes: true,
        ..t
    };
    let mut meta = bare.clone();
    meta["metadata"] = json!({ "annotations": { annotations::SERVICE: "a" } });
    let out = injected(&t2, &meta, "shop", Selection::Namespace);
    let mut back = out.clone();
    apply(&mut back, &uninject(&out, "").unwrap().unwrap()).unwrap();
    assert_eq!(back, meta);
}
