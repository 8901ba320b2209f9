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
