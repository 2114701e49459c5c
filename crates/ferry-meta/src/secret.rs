//! The master key and AES-256-GCM encryption of stored secrets (instance URLs with passwords).
//! The key comes from `FERRY_MASTER_KEY` (base64 of 32 bytes) or from `master.key` in the data
//! directory, created with mode 0600 on first start.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Generate, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ferry_core::{Error, Result};
use sha2::Digest;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// The key that encrypts every stored secret. Its `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
    /// A key derived from the master key for keyed hashes of masked values.
    mask_key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// A key from base64 text.
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = B64.decode(text.trim()).map_err(|_| {
            Error::InvalidInput("FERRY_MASTER_KEY is not valid base64: give 32 random bytes in base64 (e.g. `openssl rand -base64 32`)".into())
        })?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| {
            Error::InvalidInput(format!(
                "the master key must be 32 bytes, got {}",
                bytes.len()
            ))
        })?;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"ferry masking key v1");
        hasher.update(bytes);
        let mask_key = hasher.finalize().into();
        Ok(MasterKey { cipher, mask_key })
    }

    /// The key from `FERRY_MASTER_KEY` if set, else from `<data_dir>/master.key`, created if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        if let Ok(text) = std::env::var("FERRY_MASTER_KEY") {
            return Self::from_base64(&text);
        }
        let path = data_dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_base64(&text)
                .map_err(|e| e.context(format!("reading the master key from {}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::<Aes256Gcm>::generate();
                write_private(&path, &B64.encode(key.as_slice()))?;
                tracing::info!(path = %path.display(), "created a new master key");
                Self::from_bytes(key.as_slice())
            }
            Err(e) => Err(Error::InvalidInput(format!(
                "cannot read the master key at {}: {e}",
                path.display()
            ))),
        }
    }

    /// The key for keyed hashes of masked values (derived, so the master key never leaves).
    pub fn mask_key(&self) -> [u8; 32] {
        self.mask_key
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<String> {
        let nonce = Nonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| Error::Internal("encrypting a secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    pub fn decrypt(&self, stored: &str) -> Result<String> {
        let undecryptable = || {
            Error::PermissionDenied(
                "a stored secret cannot be decrypted with this master key: start Ferry with the key it was stored under (FERRY_MASTER_KEY or master.key)".into(),
            )
        };
        let body = stored.strip_prefix(PREFIX).ok_or_else(undecryptable)?;
        let bytes = B64.decode(body).map_err(|_| undecryptable())?;
        if bytes.len() < NONCE_LEN {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| undecryptable())?;
        let plain = self
            .cipher
            .decrypt(&nonce, ciphertext)
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain).map_err(|_| undecryptable())
    }
}

/// The master key the server currently encrypts with, replaceable by key rotation.
#[derive(Debug)]
pub struct SharedKey {
    current: std::sync::RwLock<MasterKey>,
    /// The key file, when the key came from one (rotation rewrites it); `None` for
    /// `FERRY_MASTER_KEY`.
    file: Option<PathBuf>,
}

impl SharedKey {
    /// The key from `FERRY_MASTER_KEY` or `<data_dir>/master.key` (see [`MasterKey::load_or_create`]).
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let from_env = std::env::var_os("FERRY_MASTER_KEY").is_some();
        Ok(SharedKey {
            current: std::sync::RwLock::new(MasterKey::load_or_create(data_dir)?),
            file: (!from_env).then(|| data_dir.join("master.key")),
        })
    }

    pub fn current(&self) -> MasterKey {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<String> {
        self.current().encrypt(plaintext)
    }

    pub fn decrypt(&self, stored: &str) -> Result<String> {
        self.current().decrypt(stored)
    }

    /// Makes `key` the current key (after its secrets were re-encrypted and its file written).
    pub fn install(&self, key: MasterKey) {
        match self.current.write() {
            Ok(mut k) => *k = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl MasterKey {
    /// A new random key and its base64 text (to be written to a key file, never logged).
    pub fn generate() -> Result<(Self, String)> {
        let key = Key::<Aes256Gcm>::generate();
        let text = B64.encode(key.as_slice());
        Ok((Self::from_bytes(key.as_slice())?, text))
    }
}

/// Writes a new key file with mode 0600; fails if it exists.
pub fn write_new_key(path: &Path, base64_text: &str) -> Result<()> {
    write_private(path, base64_text)
}

/// Where a new key file is written before it replaces the old one.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::InvalidInput(format!(
                "cannot create the master key file {}: {e}",
                path.display()
            ))
        })?;
    f.write_all(text.as_bytes()).map_err(|e| {
        Error::InvalidInput(format!(
            "cannot write the master key file {}: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(dir.path()).unwrap();
        let sealed = key.encrypt("postgres://u:s3cret@h/db").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(key.decrypt(&sealed).unwrap(), "postgres://u:s3cret@h/db");
        // Same file, same key.
        let again = MasterKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.decrypt(&sealed).unwrap(), "postgres://u:s3cret@h/db");
        let other = MasterKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(
            other.decrypt(&sealed).unwrap_err().code(),
            "permission_denied"
        );
        assert!(format!("{key:?}").contains("***"));
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        MasterKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(
            MasterKey::from_base64("not base64!")
                .unwrap_err()
                .message()
                .contains("base64")
        );
        assert!(
            MasterKey::from_base64("AAAA")
                .unwrap_err()
                .message()
                .contains("32 bytes")
        );
    }
}
