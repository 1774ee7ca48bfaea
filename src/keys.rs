//! The user's master key, the pad keys derived from it, and key files.
//!
//! Every pad's secret key is `master.derive_child(seed)`, where the seed is stored in the
//! (encrypted) index, or is a fixed label for the index root. A fresh machine holding only the
//! master key can therefore find and decrypt everything.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use blsttc::{PublicKey, SecretKey};

use crate::key_seal::PassphraseSource;

/// Per-pad seed: random for data and index-page pads, so pads of different users or machines
/// never collide.
pub type PadSeed = [u8; 16];

/// Label from which the index root's key derives; the root is the one pad at a fixed place.
const ROOT_LABEL: &[u8] = b"mutant-mount/index-root/v1";

#[derive(Clone)]
pub struct MasterKey(SecretKey);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a hex-encoded BLS secret key")]
    Malformed { path: String },
    #[error("cannot open key file {path}: {reason}")]
    Passphrase { path: String, reason: String },
    #[error(
        "key file {path} can be read by other users (mode {mode:o}): the key opens every file; \
         make it yours alone with: chmod 600 {path}"
    )]
    Exposed { path: String, mode: u32 },
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey(SecretKey::random())
    }

    pub fn from_secret(sk: SecretKey) -> Self {
        MasterKey(sk)
    }

    /// The key of the pad with this seed.
    pub fn pad_key(&self, seed: &PadSeed) -> SecretKey {
        self.0.derive_child(seed)
    }

    /// The key of the index root pad.
    pub fn root_key(&self) -> SecretKey {
        self.0.derive_child(ROOT_LABEL)
    }

    pub fn public_key(&self) -> PublicKey {
        self.0.public_key()
    }

    /// The secret scalar's bytes, from which the local-state keys derive (`at_rest.rs`).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// Reads a key file (hex, surrounding white space ignored); a passphrase-sealed one is
    /// asked the passphrase for on the terminal.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::load_with(path, &PassphraseSource::Prompt)
    }

    /// Reads a key file, sealed with a passphrase (from `passphrase`) or not. A file that
    /// group or others may read is refused: another user could have copied it.
    pub fn load_with(path: &Path, passphrase: &PassphraseSource) -> Result<Self, KeyError> {
        let shown = || path.display().to_string();
        let read_err = |source| KeyError::Read {
            path: shown(),
            source,
        };
        // Before anything is read or a passphrase asked for: a key others could read is refused
        // whatever it holds.
        let mode = fs::metadata(path).map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: shown(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        let text = crate::key_seal::open_key_file(text, path, passphrase).map_err(|reason| {
            KeyError::Passphrase {
                path: shown(),
                reason,
            }
        })?;
        SecretKey::from_hex(text.trim())
            .map(MasterKey)
            .map_err(|_| KeyError::Malformed { path: shown() })
    }

    /// Writes the key with mode 0600, never replacing an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let err = |source| KeyError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        file.write_all(format!("{}\n", self.to_hex()).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(err)
    }

    /// Loads the key at `path`, or creates and saves a new one if there is no file there.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        Self::load_or_create_with(path, &PassphraseSource::Prompt)
    }

    /// [`MasterKey::load_or_create`], with the passphrase of a sealed key file from `passphrase`.
    pub fn load_or_create_with(
        path: &Path,
        passphrase: &PassphraseSource,
    ) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load_with(path, passphrase)?, false));
        }
        let key = Self::generate();
        key.save_new(path)?;
        Ok((key, true))
    }
}

/// A fresh random pad seed.
pub fn random_seed() -> PadSeed {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_distinct() {
        let master = MasterKey::generate();
        let seed = random_seed();
        assert_eq!(
            master.pad_key(&seed).public_key(),
            master.pad_key(&seed).public_key()
        );
        assert_ne!(
            master.pad_key(&seed).public_key(),
            master.pad_key(&random_seed()).public_key()
        );
        let other = MasterKey::generate();
        assert_ne!(
            master.pad_key(&seed).public_key(),
            other.pad_key(&seed).public_key()
        );
    }

    #[test]
    fn key_file_round_trip_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        let (key, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.to_hex(), again.to_hex());
        assert!(key.save_new(&path).is_err());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::generate().save_new(&path).unwrap();
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = MasterKey::load(&path).err().expect("refused");
            let text = err.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(MasterKey::load(&path).is_ok());
    }

    /// A sealed key file others can read is refused before its passphrase is asked for: the
    /// passphrase must not be typed (or fetched from a secret manager) for a key already exposed.
    #[test]
    fn an_exposed_sealed_key_file_is_refused_before_the_passphrase_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let sealed = crate::key_seal::seal(MasterKey::generate().to_hex().as_bytes(), b"pw");
        fs::write(&path, sealed).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let asked = dir.path().join("asked");
        let command = PassphraseSource::Command(format!("touch {}; echo pw", asked.display()));
        let err = MasterKey::load_with(&path, &command)
            .err()
            .expect("refused");
        assert!(matches!(err, KeyError::Exposed { .. }), "{err}");
        assert!(!asked.exists(), "the passphrase was asked for");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::load_with(&path, &command).is_ok());
        assert!(asked.exists());
    }

    #[test]
    fn malformed_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = MasterKey::load(&path).err().unwrap();
        assert!(err.to_string().contains("does not hold"), "{err}");
    }
}
