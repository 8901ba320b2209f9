//! Encryption at rest for queue payloads: AES-256-GCM (the aes-gcm crate)
//! with a fresh random nonce per record and the record's queue and message
//! id as associated data (a ciphertext moved to another message does not
//! decrypt). Keys come from files (`--queue-key-file`, 32 raw bytes or 64
//! hex characters); the first encrypts, every one decrypts, so a key is
//! rotated by putting the new one first and keeping the old one until no
//! record needs it. A key's id is the first 8 hex digits of its SHA-256,
//! stored with each record.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("queue key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the queue is encrypted but weft-control has no --queue-key-file")]
    NoKey,
    #[error("a record was encrypted with key {0}, which no --queue-key-file holds (add the old key back)")]
    UnknownKey(String),
    #[error("a record encrypted with key {0} does not decrypt (damaged, or not this record's)")]
    Failed(String),
}

#[derive(Default)]
pub struct Keys {
    current: Option<String>,
    all: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("current", &self.current)
            .field("ids", &self.all.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn key_id(key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    if bytes.len() == 32 {
        let mut k = [0u8; 32];
        k.copy_from_slice(bytes);
        return Ok(k);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| {
            format!(
                "{} bytes: expected 32 raw bytes or 64 hex characters",
                bytes.len()
            )
        })?
        .trim();
    if text.len() != 64 {
        return Err(format!(
            "{} characters: expected 32 raw bytes or 64 hex characters",
            text.len()
        ));
    }
    let mut k = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).unwrap_or("");
        k[i] = u8::from_str_radix(hex, 16).map_err(|_| format!("\"{hex}\" is not hex"))?;
    }
    Ok(k)
}

impl Keys {
    /// Reads the key files; the first is the one that encrypts.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Keys, CryptError> {
        let mut keys = Keys::default();
        for p in paths {
            let path = p.as_ref();
            let err = |reason: String| CryptError::KeyFile {
                path: path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let key = parse_key(&bytes).map_err(err)?;
            keys.add(&key);
        }
        Ok(keys)
    }

    fn add(&mut self, key: &[u8; 32]) {
        let id = key_id(key);
        self.current.get_or_insert_with(|| id.clone());
        self.all
            .insert(id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)));
    }

    /// Keys given as bytes (the first encrypts).
    pub fn from_raw(keys: &[[u8; 32]]) -> Keys {
        let mut k = Keys::default();
        for key in keys {
            k.add(key);
        }
        k
    }

    pub fn current_id(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Encrypts `plaintext`: (key id, nonce, ciphertext).
    pub fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(String, Vec<u8>, Vec<u8>), CryptError> {
        let id = self.current.as_ref().ok_or(CryptError::NoKey)?;
        let cipher = self.all.get(id).ok_or(CryptError::NoKey)?;
        let nonce: [u8; 12] = rand::random();
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptError::Failed(id.clone()))?;
        Ok((id.clone(), nonce.to_vec(), ct))
    }

    pub fn open(
        &self,
        id: &str,
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptError> {
        let cipher = self
            .all
            .get(id)
            .ok_or_else(|| CryptError::UnknownKey(id.to_string()))?;
        if nonce.len() != 12 {
            return Err(CryptError::Failed(id.to_string()));
        }
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptError::Failed(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_only_with_their_key_and_associated_data() {
        let old = Keys::from_raw(&[[1; 32]]);
        let (id, nonce, ct) = old.seal(b"intel/jobs/7", b"secret indicator").unwrap();
        assert!(!ct.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            old.open(&id, &nonce, b"intel/jobs/7", &ct).unwrap(),
            b"secret indicator"
        );
        assert_eq!(
            old.open(&id, &nonce, b"intel/jobs/8", &ct),
            Err(CryptError::Failed(id.clone()))
        );
        // Rotation: the new key encrypts, the old one still decrypts.
        let both = Keys::from_raw(&[[2; 32], [1; 32]]);
        assert_ne!(both.current_id(), Some(id.as_str()));
        assert_eq!(
            both.open(&id, &nonce, b"intel/jobs/7", &ct).unwrap(),
            b"secret indicator"
        );
        let (new_id, _, _) = both.seal(b"a", b"b").unwrap();
        assert_eq!(Some(new_id.as_str()), both.current_id());
        // Without the old key: named.
        let new_only = Keys::from_raw(&[[2; 32]]);
        assert_eq!(
            new_only.open(&id, &nonce, b"intel/jobs/7", &ct),
            Err(CryptError::UnknownKey(id))
        );
        assert_eq!(Keys::default().seal(b"", b"x"), Err(CryptError::NoKey));
    }

    #[test]
    fn key_files_hold_raw_or_hex_keys_and_anything_else_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let hex = dir.path().join("hex");
        let bad = dir.path().join("bad");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        std::fs::write(&hex, format!("{}\n", "07".repeat(32))).unwrap();
        std::fs::write(&bad, "short").unwrap();
        let a = Keys::load(&[&raw]).unwrap();
        let b = Keys::load(&[&hex]).unwrap();
        assert_eq!(a.current_id(), b.current_id(), "the same key either way");
        let e = Keys::load(&[&bad]).unwrap_err().to_string();
        assert!(e.contains("bad") && e.contains("64 hex"), "{e}");
    }
}
