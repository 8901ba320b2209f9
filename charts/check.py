#!/usr/bin/env python3
"""Checks charts/weft with Helm's own engine (helm-python-sdk) and the
Kubernetes schemas (kubernetes-validate), offline:

- `helm lint` finds nothing above INFO;
- the chart renders with the default values, values-ha.yaml and a set of
  overrides, and every rendered object passes `kubernetes-validate --strict`
  for each of KUBE_VERSIONS; no object is empty, unnamed or duplicated;
- values that cannot work together fail the render with the reason;
- every value a template reads exists in values.yaml, and every key in
  values.yaml has a comment;
- the injection template the chart renders is one `weftctl inject` accepts,
  and what it injects passes the same schemas.

Usage: check.py WEFTCTL_BINARY   (run by e2e/tests/chart.rs under cargo test)
Exit status 0 when everything holds; otherwise each failure is printed.
"""

import os
import re
import subprocess
import sys
import tempfile

import helm_python
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "weft")
ROOT = os.path.dirname(HERE)
KUBE_VERSIONS = ["1.30.0", "1.34.0"]
NAMESPACE = "weft-system"

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg, file=sys.stderr)


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def render(values):
    chart = helm_python.Chart.load(CHART)
    return chart.render(values, name="weft", namespace=NAMESPACE, is_install=True)


def objects(rendered):
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append((path, doc))
    return docs


def validate(files, what):
    for version in KUBE_VERSIONS:
        r = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", "-k", version, *files],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            fail(f"{what}: Kubernetes {version} schemas refused:\n{r.stdout}{r.stderr}")


HA = yaml.safe_load(open(os.path.join(CHART, "values-ha.yaml")))
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SCENARIOS = {
    "defaults": {},
    "values-ha.yaml": HA,
    "operator CA and a managed webhook certificate": {
        "ca": {"mode": "secret", "secretName": "weft-issuer"},
        "injector": {
            "tls": {"mode": "secret", "secretName": "weft-webhook", "caBundle": PEM},
            "podOptIn": False,
            "failurePolicy": "Fail",
        },
    },
    "legacy sidecars, no persistence, no anti-affinity": {
        "injector": {"nativeSidecar": False},
        "store": {"persistence": {"enabled": False, "storageClass": "fast"}},
        "controlPlane": {"antiAffinity": "none", "nodeSelector": {"pool": "system"}},
        "image": {"tag": "0.1.0-rc1", "pullSecrets": ["regcred"]},
    },
    "no injector": {"injector": {"enabled": False}},
    "HA without etcd TLS": deep_merge(HA, {"store": {"etcd": {"tlsSecret": ""}}}),
}

MUST_FAIL = {
    "replicas > 1 on the embedded store": ({"controlPlane": {"replicas": 3}}, "store.type=etcd"),
    "etcd without members": ({"store": {"type": "etcd", "etcd": {"caKeyEncryptionKeySecret": "s"}}}, "store.etcd.endpoints"),
    "etcd without a seal key": (
        {"store": {"type": "etcd", "etcd": {"endpoints": ["e:2379"]}}},
        "caKeyEncryptionKeySecret",
    ),
    "an unknown store": ({"store": {"type": "postgres"}}, "store.type"),
    "operator CA without a Secret": ({"ca": {"mode": "secret"}}, "ca.secretName"),
    "an unknown failure policy": ({"injector": {"failurePolicy": "Maybe"}}, "injector.failurePolicy"),
    "a managed webhook certificate without its CA": (
        {"injector": {"tls": {"mode": "secret", "secretName": "x"}}},
        "injector.tls.caBundle",
    ),
}


def check_lint():
    result = helm_python.lint(CHART)
    for m in result.get("messages", []):
        if m.get("severity", 0) >= 2:
            fail(f"helm lint: {m.get('path')}: {m.get('error')}")
    for e in result.get("errors", []):
        fail(f"helm lint: {e}")


def check_scenarios(tmp):
    for i, (name, values) in enumerate(SCENARIOS.items()):
        try:
            rendered = render(values)
        except helm_python.HelmError as e:
            fail(f"{name}: render failed: {e}")
            continue
        docs = objects(rendered)
        seen = set()
        kinds = set()
        for path, doc in docs:
            kind = doc.get("kind")
            meta = doc.get("metadata") or {}
            if not kind or not meta.get("name"):
                fail(f"{name}: {path} renders an object without kind or name: {doc}")
                continue
            key = (kind, meta.get("namespace", ""), meta["name"])
            if key in seen:
                fail(f"{name}: duplicate {key}")
            seen.add(key)
            kinds.add(kind)
        want = {"Deployment", "Service", "ServiceAccount", "ClusterRoleBinding"}
        if values.get("injector", {}).get("enabled", True):
            want |= {"MutatingWebhookConfiguration", "ConfigMap"}
        if not want <= kinds:
            fail(f"{name}: missing {sorted(want - kinds)}")
        f = os.path.join(tmp, f"render-{i}.yaml")
        with open(f, "w") as out:
            yaml.safe_dump_all([d for _, d in docs], out)
        validate([f], name)
        check_rendered_semantics(name, values, docs)
        print(f"ok: {name}: {len(docs)} objects")


def check_rendered_semantics(name, values, docs):
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    dep = by_kind["Deployment"][0]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    ha = values.get("store", {}).get("type") == "etcd"
    if ha != any(a.startswith("--store=etcd://") for a in args):
        fail(f"{name}: the etcd store flag does not follow store.type: {args}")
    if ha and not by_kind.get("PodDisruptionBudget"):
        fail(f"{name}: HA values without a PodDisruptionBudget")
    for hook in by_kind.get("MutatingWebhookConfiguration", []):
        for w in hook["webhooks"]:
            ns = [e for e in w["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"]
            if not ns or "kube-system" not in ns[0]["values"] or NAMESPACE not in ns[0]["values"]:
                fail(f"{name}: webhook {w['name']} does not exclude kube-system and {NAMESPACE}")
            if not w["clientConfig"].get("caBundle"):
                fail(f"{name}: webhook {w['name']} has no caBundle")


def check_must_fail():
    for name, (values, reason) in MUST_FAIL.items():
        try:
            render(values)
        except helm_python.HelmError as e:
            if reason not in str(e):
                fail(f"{name}: failed, but the message does not name {reason}: {e}")
            else:
                print(f"ok: refused {name}")
            continue
        fail(f"{name}: rendered; it must fail naming {reason}")


def values_paths(node, prefix=""):
    paths = set()
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            paths.add(p)
            paths |= values_paths(v, p)
    return paths


def check_values_documented():
    text = open(os.path.join(CHART, "values.yaml")).read()
    defined = values_paths(yaml.safe_load(text))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not m:
            continue
        above = lines[i - 1].strip() if i > 0 else ""
        if not above.startswith("#") and "#" not in line:
            fail(f"values.yaml:{i + 1}: {m.group(2)} has no comment")
    used = set()
    for dirpath, _, files in os.walk(os.path.join(CHART, "templates")):
        for f in files:
            src = open(os.path.join(dirpath, f)).read()
            used |= set(re.findall(r"\.Values\.([A-Za-z][\w.]*[\w])", src))
    for path in sorted(used):
        if path not in defined:
            fail(f"templates read .Values.{path}, which values.yaml does not define")
    print(f"ok: {len(used)} values read by templates, all defined and documented")


def check_inject_template(tmp, weftctl):
    docs = objects(render({}))
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "weft-inject-template")
    template = os.path.join(tmp, "template.yaml")
    bundle = os.path.join(tmp, "ca-bundle.pem")
    with open(template, "w") as f:
        f.write(cm["data"]["template.yaml"])
    with open(bundle, "w") as f:
        f.write(PEM)
    out = os.path.join(tmp, "injected.yaml")
    workloads = os.path.join(ROOT, "examples", "k8s", "workloads.yaml")
    with open(out, "w") as f:
        r = subprocess.run(
            [weftctl, "inject", "--template", template, "--ca-bundle", bundle, "-f", workloads],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
        )
    if r.returncode != 0:
        fail(f"weftctl inject with the chart's template: {r.stderr}")
        return
    injected = list(yaml.safe_load_all(open(out)))
    images = [
        c["image"]
        for d in injected
        if d and d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["initContainers"]
    ]
    if "ghcr.io/weft-mesh/weft-proxy:0.1.0" not in images:
        fail(f"the chart's template did not set the proxy image: {images}")
    validate([out], "weftctl inject with the chart's template")
    print("ok: the chart's injection template drives weftctl inject")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    weftctl = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="weft-chart-") as tmp:
        check_lint()
        check_scenarios(tmp)
        check_must_fail()
        check_values_documented()
        check_inject_template(tmp, weftctl)
    if failures:
        print(f"{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    print("chart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
