//! `weftctl check --pre`: a cluster's prerequisites for installing Weft,
//! checked before anything is installed. Without a reachable API server
//! it checks what it can (kubectl, the chart rendering) and lists what it
//! would check with one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Oldest Kubernetes the chart installs on (legacy sidecars), and the first
/// with native sidecars on by default.
const MIN_MINOR: u64 = 26;
const NATIVE_SIDECAR_MINOR: u64 = 29;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

struct Report {
    lines: Vec<(Verdict, String)>,
}

impl Report {
    fn add(&mut self, v: Verdict, what: impl Into<String>) {
        let what = what.into();
        let tag = match v {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        println!("{tag}  {what}");
        self.lines.push((v, what));
    }
}

/// Runs the checks; Err when one failed (the exit status is 1).
pub fn run(kubectl: &str, chart: Option<PathBuf>) -> anyhow::Result<()> {
    let mut r = Report { lines: Vec::new() };
    let have_kubectl = check_kubectl(&mut r, kubectl);
    if have_kubectl {
        check_cluster(&mut r, kubectl);
    } else {
        r.add(Verdict::Skip, "the cluster checks (they need kubectl)");
    }
    check_chart(&mut r, chart);
    let failed = r.lines.iter().filter(|(v, _)| *v == Verdict::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} prerequisite check(s) failed");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn check_kubectl(r: &mut Report, kubectl: &str) -> bool {
    match output(Command::new(kubectl).args(["version", "--client", "-o", "json"])) {
        Ok(json) => {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let version = v["clientVersion"]["gitVersion"]
                .as_str()
                .unwrap_or("(version unknown)");
            r.add(Verdict::Ok, format!("kubectl {version}"));
            true
        }
        Err(e) => {
            r.add(
                Verdict::Fail,
                format!("kubectl: cannot run \"{kubectl}\" ({e}); install it or pass --kubectl"),
            );
            false
        }
    }
}

/// What `--pre` checks once an API server answers.
const CLUSTER_CHECKS: &str = "the server version (>= 1.26; >= 1.29 for native sidecars), admissionregistration.k8s.io/v1, permission to create MutatingWebhookConfigurations, and the service-account issuer's keys at /openid/v1/jwks";

fn check_cluster(r: &mut Report, kubectl: &str) {
    let timeout = format!("--request-timeout={}s", Duration::from_secs(5).as_secs());
    let json = match output(Command::new(kubectl).args(["version", "-o", "json", &timeout])) {
        Ok(j) => j,
        Err(e) => {
            let why = e.lines().last().unwrap_or("no answer").to_string();
            r.add(
                Verdict::Skip,
                format!("no API server reachable ({why}); with one, check --pre also checks {CLUSTER_CHECKS}"),
            );
            return;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let server = &v["serverVersion"];
    let minor = server["minor"]
        .as_str()
        .map(|m| m.trim_end_matches('+'))
        .and_then(|m| m.parse::<u64>().ok());
    let version = server["gitVersion"].as_str().unwrap_or("?");
    match minor {
        None => r.add(Verdict::Warn, format!("server version {version}: cannot read its minor version")),
        Some(m) if m < MIN_MINOR => r.add(
            Verdict::Fail,
            format!("server {version}: Weft needs Kubernetes 1.{MIN_MINOR} or later"),
        ),
        Some(m) if m < NATIVE_SIDECAR_MINOR => r.add(
            Verdict::Warn,
            format!("server {version}: no native sidecars before 1.{NATIVE_SIDECAR_MINOR}; install with --set injector.nativeSidecar=false"),
        ),
        Some(_) => r.add(Verdict::Ok, format!("server {version} (native sidecars)")),
    }
    match output(Command::new(kubectl).args(["api-versions", &timeout])) {
        Ok(list)
            if list
                .lines()
                .any(|l| l.trim() == "admissionregistration.k8s.io/v1") =>
        {
            r.add(
                Verdict::Ok,
                "admissionregistration.k8s.io/v1 (the injector webhook)",
            )
        }
        Ok(_) => r.add(
            Verdict::Fail,
            "admissionregistration.k8s.io/v1 is not served: no sidecar injection",
        ),
        Err(e) => r.add(Verdict::Warn, format!("kubectl api-versions: {e}")),
    }
    match output(Command::new(kubectl).args([
        "auth",
        "can-i",
        "create",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        &timeout,
    ])) {
        Ok(a) if a.trim() == "yes" => {
            r.add(Verdict::Ok, "may create MutatingWebhookConfigurations")
        }
        _ => r.add(
            Verdict::Fail,
            "this user may not create MutatingWebhookConfigurations (the chart installs one)",
        ),
    }
    match output(Command::new(kubectl).args(["get", "--raw", "/openid/v1/jwks", &timeout])) {
        Ok(jwks) => {
            let keys = serde_json::from_str::<serde_json::Value>(&jwks)
                .ok()
                .and_then(|v| v["keys"].as_array().map(Vec::len))
                .unwrap_or(0);
            if keys > 0 {
                r.add(
                    Verdict::Ok,
                    format!("service-account issuer keys: {keys} (pod identity)"),
                );
            } else {
                r.add(
                    Verdict::Fail,
                    "/openid/v1/jwks has no keys: pod identity cannot be verified",
                );
            }
        }
        Err(e) => r.add(
            Verdict::Warn,
            format!("/openid/v1/jwks: {e} (weft-control reads it with its own ServiceAccount)"),
        ),
    }
}

fn check_chart(r: &mut Report, chart: Option<PathBuf>) {
    let dir = chart.unwrap_or_else(|| PathBuf::from("charts/weft"));
    if !dir.join("Chart.yaml").is_file() {
        r.add(
            Verdict::Skip,
            format!(
                "chart: no Chart.yaml in {} (pass --chart DIR)",
                dir.display()
            ),
        );
        return;
    }
    let rendered = if which("helm") {
        output(
            Command::new("helm")
                .args(["template", "weft"])
                .arg(&dir)
                .args(["-n", "weft-system"]),
        )
        .map(|yaml| ("helm template", yaml))
    } else if python_has_helm() {
        output(Command::new("python3").args(["-c", RENDER_PY]).arg(&dir))
            .map(|yaml| ("helm-python-sdk", yaml))
    } else {
        r.add(
            Verdict::Skip,
            "chart render: neither helm nor python3 with helm-python-sdk is installed",
        );
        return;
    };
    match rendered {
        Ok((engine, yaml)) => {
            let objects =
                yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
            r.add(
                Verdict::Ok,
                format!(
                    "chart {} renders ({engine}, {objects} objects)",
                    dir.display()
                ),
            )
        }
        Err(e) => r.add(
            Verdict::Fail,
            format!("chart {} does not render: {e}", dir.display()),
        ),
    }
}

const RENDER_PY: &str = "import sys, helm_python\nout = helm_python.Chart.load(sys.argv[1]).render({}, name='weft', namespace='weft-system', is_install=True)\nprint('\\n---\\n'.join(v for k, v in sorted(out.items()) if not k.endswith('NOTES.txt')))";

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| Path::new(&p).join(program).is_file())
    })
}

fn python_has_helm() -> bool {
    Command::new("python3")
        .args(["-c", "import helm_python"])
        .output()
        .is_ok_and(|o| o.status.success())
}
