//! The Helm chart (charts/weft) through Helm's own engine and the
//! Kubernetes schemas: charts/check.py renders it with the default values,
//! values-ha.yaml and overrides, validates every object for two Kubernetes
//! versions, checks that bad value combinations fail with the reason, that
//! every value is documented, and that the chart's injection template
//! drives `weftctl inject`. It needs python3 with helm-python-sdk and
//! kubernetes-validate (.ci/run installs them).

use std::path::Path;
use std::process::Command;
use weft_testbed::*;

#[test]
fn the_chart_renders_with_helm_and_every_object_passes_the_kubernetes_schemas() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/check.py");
    let weftctl = binaries().path(localmesh::WEFTCTL);
    let out = Command::new("python3")
        .arg(&script)
        .arg(&weftctl)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "charts/check.py failed (pip install helm-python-sdk kubernetes-validate):\n{text}"
    );
    assert!(text.contains("chart: all checks passed"), "{text}");
}

#[test]
fn check_pre_checks_kubectl_and_the_chart_and_lists_what_needs_an_api_server() {
    let weftctl = binaries().path(localmesh::WEFTCTL);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |kubectl: &str| {
        let out = Command::new(&weftctl)
            .current_dir(&root)
            .args(["check", "--pre", "--kubectl", kubectl])
            .output()
            .expect("weftctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // No kubectl: a failure that says so; the chart is still checked.
    let (code, text) = run("/nonexistent/kubectl");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  kubectl"), "{text}");
    assert!(text.contains("ok    chart charts/weft renders"), "{text}");
    // A kubectl with no cluster behind it (as on a laptop before `kind
    // create cluster`): the cluster checks are skipped and listed.
    let dir = std::env::temp_dir().join(format!("weft-e2e-{}-kubectl", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let fake = dir.join("kubectl");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$*\" in\n  *--client*) echo '{\"clientVersion\":{\"gitVersion\":\"v1.31.2\"}}';;\n  *) echo 'The connection to the server localhost:8080 was refused' >&2; exit 1;;\nesac\n",
    )
    .expect("write");
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&fake)
        .status()
        .expect("chmod");
    let (code, text) = run(&fake.display().to_string());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok    kubectl v1.31.2"), "{text}");
    assert!(
        text.contains("skip  no API server reachable") && text.contains("/openid/v1/jwks"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
