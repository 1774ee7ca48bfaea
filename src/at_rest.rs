//! Sealing what the mount keeps on local disk (the journal, the index cache, the record of the
//! newest root seen): XChaCha20-Poly1305 under keys derived from the master key with
//! HKDF-SHA256, one label per use, so a key for one file kind opens no other.
//!
//! A sealed blob is `nonce (24 bytes) || ciphertext || tag (16 bytes)`. Nonces are random: with
//! 192 bits, two seals under one key never share one in practice, so no counter has to be kept
//! consistent across crashes. The associated data binds a blob to where it belongs (a journal
//! file and frame, an index page's hash), so a valid blob moved elsewhere fails to open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::keys::MasterKey;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed blob adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The HKDF labels: one per kind of local file. Changing one makes every file of its kind
/// unreadable, so they are fixed forever.
const JOURNAL_LABEL: &[u8] = b"mutant-mount/local/journal/v1";
const INDEX_CACHE_LABEL: &[u8] = b"mutant-mount/local/index-cache/v1";
const INDEX_CACHE_NAMES_LABEL: &[u8] = b"mutant-mount/local/index-cache-names/v1";
const ROOT_RECORD_LABEL: &[u8] = b"mutant-mount/local/root-record/v1";
const FRESH_PADS_LABEL: &[u8] = b"mutant-mount/local/fresh-pads/v1";

/// A key for one kind of local file.
#[derive(Clone)]
pub struct LocalKey(XChaCha20Poly1305);

/// A blob that does not open: damaged, moved, or sealed under another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("local data failed its authentication check (damaged, or written with another key)")]
pub struct Unauthentic;

impl LocalKey {
    fn derive(master: &MasterKey, label: &[u8]) -> Self {
        LocalKey(XChaCha20Poly1305::new(&derive_bytes(master, label).into()))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a process can hold");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        if sealed.len() < OVERHEAD {
            return Err(Unauthentic);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| Unauthentic)
    }
}

/// 32 bytes derived from the master key's secret for `label`.
fn derive_bytes(master: &MasterKey, label: &[u8]) -> [u8; 32] {
    let secret = zeroize::Zeroizing::new(master.secret_bytes());
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret.as_slice())
        .expand(label, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// Every local key, derived once at start.
#[derive(Clone)]
pub struct LocalKeys {
    pub journal: LocalKey,
    pub index_cache: LocalKey,
    /// Names index-cache files (a keyed hash), so a name reveals no page hash.
    pub index_cache_names: [u8; 32],
    pub root_record: LocalKey,
    pub fresh_pads: LocalKey,
}

impl LocalKeys {
    pub fn derive(master: &MasterKey) -> Self {
        LocalKeys {
            journal: LocalKey::derive(master, JOURNAL_LABEL),
            index_cache: LocalKey::derive(master, INDEX_CACHE_LABEL),
            index_cache_names: derive_bytes(master, INDEX_CACHE_NAMES_LABEL),
            root_record: LocalKey::derive(master, ROOT_RECORD_LABEL),
            fresh_pads: LocalKey::derive(master, FRESH_PADS_LABEL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_opens_only_with_its_key_and_associated_data() {
        let master = MasterKey::generate();
        let keys = LocalKeys::derive(&master);
        let sealed = keys.journal.seal(b"secret-name-xyz", b"frame 1");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            keys.journal.open(&sealed, b"frame 1").unwrap(),
            b"secret-name-xyz"
        );
        assert_eq!(keys.journal.open(&sealed, b"frame 2"), Err(Unauthentic));
        assert_eq!(keys.index_cache.open(&sealed, b"frame 1"), Err(Unauthentic));
        let other = LocalKeys::derive(&MasterKey::generate());
        assert_eq!(other.journal.open(&sealed, b"frame 1"), Err(Unauthentic));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(keys.journal.open(&flipped, b"frame 1"), Err(Unauthentic));
        assert_eq!(keys.journal.open(&sealed[..10], b""), Err(Unauthentic));
        // Random nonces: sealing twice never gives the same bytes.
        assert_ne!(sealed, keys.journal.seal(b"secret-name-xyz", b"frame 1"));
        // Derivation is deterministic: the same master key opens it in a later run.
        let again = LocalKeys::derive(&master);
        assert!(again.journal.open(&sealed, b"frame 1").is_ok());
    }
}
