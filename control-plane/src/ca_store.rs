//! One CA for every replica: with the etcd store, the CA directory's files
//! (root and issuing CA, the join-token key) are shared through etcd. The
//! first replica to start creates them and stores them (compare-and-swap);
//! every other replica, and every later start, writes the stored files into
//! its `<data-dir>/ca/` before the CA is loaded. Certificates and join
//! tokens from any replica then verify at every replica.
//!
//! With `--ca-key-encryption-key-file` (32 random bytes, the same file on
//! every replica) the stored files are sealed with AES-256-GCM; without it
//! they are stored as they are in the CA directory, and etcd's TLS,
//! authentication and encryption at rest protect them (README, "High
//! availability").

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
    seal: Option<&Seal>,
) -> anyhow::Result<()> {
    let stored = match store.ca_files().await? {
        Some(blob) => blob,
        None => {
            if !own_ca {
                CertificateAuthority::load_or_create(ca_dir, trust_domain)?;
            }
            JoinTokens::load_or_create(ca_dir)?;
            let blob = seal_with(seal, &pack(ca_dir)?)?;
            let stored = store.create_ca_files(blob.clone()).await?;
            if stored == blob {
                tracing::info!(store = %store.describe(), sealed = seal.is_some(), "stored this replica's CA for the other replicas");
            }
            stored
        }
    };
    unpack(&open_with(seal, stored)?, ca_dir)
}

/// The form CA files are stored in: sealed when a key is given.
pub fn seal_with(seal: Option<&Seal>, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    match seal {
        Some(s) => s.seal(plain),
        None => Ok(plain.to_vec()),
    }
}

/// The packed CA files from their stored form.
pub fn open_with(seal: Option<&Seal>, stored: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    Ok(match (stored.strip_prefix(SEALED), seal) {
        (Some(sealed), Some(s)) => s.open(sealed)?,
        (Some(_), None) => anyhow::bail!(
            "the CA files in the store are encrypted: give every replica the same --ca-key-encryption-key-file"
        ),
        (None, _) => stored,
    })
}

/// Packed files: `base`'s, with those `over` has replaced.
pub fn merge(base: &[u8], over: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut files: BTreeMap<String, String> =
        serde_json::from_slice(base).context("the CA files in the store are not readable")?;
    let over: BTreeMap<String, String> =
        serde_json::from_slice(over).context("the new CA files are not readable")?;
    files.extend(over);
    Ok(serde_json::to_vec(&files)?)
}

/// Marks a sealed blob: the rest is nonce (12 bytes) and AES-256-GCM
/// ciphertext with its tag.
const SEALED: &[u8] = b"weft-sealed-v1:";

/// The key the stored CA files are sealed with.
pub struct Seal {
    key: ring::aead::LessSafeKey,
}

impl Seal {
    /// Reads a key file: 32 bytes, raw or as 64 hex digits.
    pub fn from_file(path: &Path) -> anyhow::Result<Seal> {
        let raw = std::fs::read(path).with_context(|| {
            format!(
                "cannot read --ca-key-encryption-key-file {}",
                path.display()
            )
        })?;
        let text = String::from_utf8_lossy(&raw);
        let hex = text.trim();
        let bytes: Vec<u8> = if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        } else {
            raw.clone()
        };
        if bytes.len() != 32 {
            anyhow::bail!(
                "--ca-key-encryption-key-file {} must hold 32 bytes (or 64 hex digits), not {}: e.g. `head -c 32 /dev/urandom > key`",
                path.display(),
                bytes.len()
            );
        }
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &bytes)
            .map_err(|_| anyhow::anyhow!("not an AES-256 key"))?;
        Ok(Seal {
            key: ring::aead::LessSafeKey::new(key),
        })
    }

    fn seal(&self, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; 12];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for the nonce"))?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(SEALED),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("cannot seal the CA files"))?;
        let mut out = SEALED.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        let wrong = || {
            anyhow::anyhow!(
                "cannot decrypt the CA files in the store: is --ca-key-encryption-key-file the file the other replicas use?"
            )
        };
        if sealed.len() < 12 + 16 {
            return Err(wrong());
        }
        let (nonce, data) = sealed.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::from(SEALED), &mut data)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

pub fn pack(ca_dir: &Path) -> anyhow::Result<Vec<u8>> {
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

pub fn unpack(blob: &[u8], ca_dir: &Path) -> anyhow::Result<()> {
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

    #[test]
    fn sealed_ca_files_open_only_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "00".repeat(32)).unwrap();
        let seal = Seal::from_file(&key).unwrap();
        let sealed = seal.seal(b"root-key").unwrap();
        assert!(sealed.starts_with(SEALED));
        assert!(!sealed.windows(8).any(|w| w == b"root-key"));
        assert_eq!(seal.open(&sealed[SEALED.len()..]).unwrap(), b"root-key");
        std::fs::write(&key, "11".repeat(32)).unwrap();
        let other = Seal::from_file(&key).unwrap();
        let e = other.open(&sealed[SEALED.len()..]).unwrap_err();
        assert!(
            e.to_string().contains("--ca-key-encryption-key-file"),
            "{e}"
        );
        std::fs::write(&key, "short").unwrap();
        assert!(Seal::from_file(&key).is_err());
    }
}
