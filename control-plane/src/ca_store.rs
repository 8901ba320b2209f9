//! One CA for every replica: with the etcd store, the CA directory's files
//! (root and issuing CA, the join-token key) are shared through etcd. The
//! first replica to start creates them and stores them (compare-and-swap);
//! every other replica, and every later start, writes the stored files into
//! its `<data-dir>/ca/` before the CA is loaded. Certificates and join
//! tokens from any replica then verify at every replica.
//!
//! The private keys are stored as they are in the CA directory: protect
//! them with etcd's TLS, authentication and encryption at rest (README,
//! "High availability").

use crate::join_token::JoinTokens;
use crate::store::EtcdStore;
use anyhow::Context;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::path::Path;
use weft_certs::ca::CertificateAuthority;

/// The files of the CA directory that make up the mesh's identity.
const SHARED: [&str; 5] = [
    "root-cert.pem",
    "root-key.pem",
    "issuer-cert.pem",
    "issuer-key.pem",
    "token-key",
];

/// Makes `ca_dir` hold the CA every replica uses. `own_ca`: the operator
/// gave --ca-cert/--ca-key (every replica is given the same), so only the
/// join-token key is shared.
pub async fn share(
    store: &EtcdStore,
    ca_dir: &Path,
    trust_domain: &str,
    own_ca: bool,
) -> anyhow::Result<()> {
    let stored = match store.ca_files().await? {
        Some(blob) => blob,
        None => {
            if !own_ca {
                CertificateAuthority::load_or_create(ca_dir, trust_domain)?;
            }
            JoinTokens::load_or_create(ca_dir)?;
            let blob = pack(ca_dir)?;
            let stored = store.create_ca_files(blob.clone()).await?;
            if stored == blob {
                tracing::info!(store = %store.describe(), "stored this replica's CA for the other replicas");
            }
            stored
        }
    };
    unpack(&stored, ca_dir)
}

fn pack(ca_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut files = BTreeMap::new();
    for name in SHARED {
        let path = ca_dir.join(name);
        if path.exists() {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            files.insert(
                name.to_string(),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
    }
    Ok(serde_json::to_vec(&files)?)
}

fn unpack(blob: &[u8], ca_dir: &Path) -> anyhow::Result<()> {
    let files: BTreeMap<String, String> =
        serde_json::from_slice(blob).context("the CA files in the store are not readable")?;
    std::fs::create_dir_all(ca_dir)
        .with_context(|| format!("cannot create {}", ca_dir.display()))?;
    for (name, b64) in files {
        if !SHARED.contains(&name.as_str()) {
            anyhow::bail!("the CA files in the store name an unexpected file \"{name}\"");
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .with_context(|| format!("stored CA file {name} is not base64"))?;
        let path = ca_dir.join(&name);
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        write_private(&path, &bytes)?;
    }
    Ok(())
}

/// Writes `bytes` readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_ca_files_unpack_to_the_same_bytes_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(a.path(), "cluster.local").unwrap();
        JoinTokens::load_or_create(a.path()).unwrap();
        let blob = pack(a.path()).unwrap();
        let b = tempfile::tempdir().unwrap();
        unpack(&blob, b.path()).unwrap();
        for name in SHARED {
            assert_eq!(
                std::fs::read(a.path().join(name)).unwrap(),
                std::fs::read(b.path().join(name)).unwrap(),
                "{name}"
            );
            let mode = std::fs::metadata(b.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(unpack(br#"{"../x": ""}"#, b.path()).is_err());
    }
}
