//! `weftctl inject` / `uninject`: the injector's patch, applied offline to
//! manifests (files, directories, `-` for stdin), printed as YAML.

use anyhow::{bail, Context};
use std::path::PathBuf;
use weft_inject::manifest::{transform, Direction};
use weft_inject::Template;

#[derive(clap::Args)]
pub struct InjectArgs {
    /// Manifests: files, directories (every .yaml/.yml), or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The injection template the webhook uses (the chart renders it into
    /// the weft-inject-template ConfigMap); default: the built-in one.
    #[arg(long)]
    template: Option<PathBuf>,
    /// The mesh's root bundle (PEM) for the sidecars, when the template
    /// carries none: the control plane's <data-dir>/ca-bundle.pem, or
    /// `kubectl -n weft-system get configmap weft-ca-bundle`.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The sidecar as a regular container with a preStop drain (clusters
    /// before Kubernetes 1.29), instead of a native sidecar.
    #[arg(long)]
    legacy: bool,
    #[arg(long)]
    proxy_image: Option<String>,
    #[arg(long)]
    init_image: Option<String>,
    /// The control plane URL the sidecars dial (default: the template's,
    /// https://weft-control.weft-system.svc:15012).
    #[arg(long)]
    sidecar_control_plane: Option<String>,
}

#[derive(clap::Args)]
pub struct UninjectArgs {
    /// Manifests: files, directories (every .yaml/.yml), or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

pub fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let mut template = match &args.template {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --template {}", p.display()))?;
            Template::parse(&text).with_context(|| format!("--template {}", p.display()))?
        }
        None => Template::default(),
    };
    if let Some(p) = &args.ca_bundle {
        template.ca_bundle = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read --ca-bundle {}", p.display()))?;
    }
    if template.ca_bundle.trim().is_empty() {
        bail!("the sidecars need the mesh's roots: pass --ca-bundle (the control plane's <data-dir>/ca-bundle.pem) or a --template with caBundle");
    }
    if args.legacy {
        template.native_sidecar = false;
    }
    for (field, value) in [
        (&mut template.proxy_image, &args.proxy_image),
        (&mut template.init_image, &args.init_image),
        (&mut template.control_plane, &args.sidecar_control_plane),
    ] {
        if let Some(v) = value {
            *field = v.clone();
        }
    }
    template.check()?;
    run(
        &args.files,
        &Direction::Inject {
            template: &template,
            namespace: &args.namespace,
        },
    )
}

pub fn uninject(args: UninjectArgs) -> anyhow::Result<()> {
    run(&args.files, &Direction::Uninject)
}

fn run(files: &[PathBuf], direction: &Direction<'_>) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for doc in crate::read_documents(files)? {
        let (yaml, reports) =
            transform(&doc.yaml, direction).with_context(|| doc.source.clone())?;
        for r in reports {
            eprintln!("{}: {}: {}", doc.source, r.object, r.result);
            for w in r.warnings {
                eprintln!("{}: {}: warning: {w}", doc.source, r.object);
            }
        }
        if !yaml.is_empty() {
            out.push(yaml);
        }
    }
    print!("{}", out.join("---\n"));
    Ok(())
}
