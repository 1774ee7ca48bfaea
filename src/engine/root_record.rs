//! The newest index root this machine has seen for one key in one store, kept locally (sealed
//! with the root-record key, 0600) so that a store serving an older root is noticed: a
//! restored pad file, a stale network view, or a replayed old version would otherwise mount an
//! old index silently, and the next commit would make every newer file vanish.
//!
//! Scratchpad counters only grow: a root with a lower counter than one seen before is older.
//! The record is written after each commit landed, by rename, without `fsync`: a record lost
//! to a power cut only weakens the check to the root seen before.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::at_rest::LocalKeys;

/// Where the record of one store lives, and how it is bound to it.
#[derive(Clone, Debug)]
pub struct RootRecordPlace {
    /// The directory of records (one file per store and key).
    pub dir: PathBuf,
    /// Names the store, e.g. its directory or network: a record opens only for its store.
    pub store_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub counter: u64,
    pub generation: u64,
    pub root_hash: [u8; 32],
}

/// The record's plaintext: counter and generation (little-endian), then the root's hash.
const SEEN_LEN: usize = 8 + 8 + 32;

impl Seen {
    fn to_bytes(self) -> [u8; SEEN_LEN] {
        let mut out = [0; SEEN_LEN];
        out[..8].copy_from_slice(&self.counter.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..].copy_from_slice(&self.root_hash);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; SEEN_LEN] = bytes.try_into().ok()?;
        Some(Seen {
            counter: u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            generation: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            root_hash: bytes[16..].try_into().unwrap(),
        })
    }
}

pub struct RootRecord {
    path: PathBuf,
    aad: Vec<u8>,
    keys: LocalKeys,
}

impl RootRecord {
    pub fn new(place: &RootRecordPlace, keys: &LocalKeys) -> Self {
        let aad = format!("root-record\0{}", place.store_id).into_bytes();
        let name = blake3::keyed_hash(&keys.index_cache_names, &aad).to_hex();
        RootRecord {
            path: place.dir.join(name.as_str()),
            aad,
            keys: keys.clone(),
        }
    }

    /// The newest root recorded; `None` if there is no record or it does not open (then the
    /// check is as if this machine had never seen the store, and a warning says so).
    pub fn read(&self) -> Option<Seen> {
        let sealed = std::fs::read(&self.path).ok()?;
        let seen = self
            .keys
            .root_record
            .open(&sealed, &self.aad)
            .ok()
            .and_then(|plain| Seen::from_bytes(&plain));
        if seen.is_none() {
            tracing::warn!(
                "the record of the newest index root seen ({}) is damaged: it is replaced",
                self.path.display()
            );
        }
        seen
    }

    /// Records `seen`; failures are logged (the check then relies on the last record kept).
    pub fn write(&self, seen: &Seen) {
        let result = (|| {
            let sealed = self.keys.root_record.seal(&seen.to_bytes(), &self.aad);
            let dir = self.path.parent().expect("records are in a directory");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let tmp = self.path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&sealed)?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            tracing::warn!(
                "cannot record the newest index root in {}: {e}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn a_record_opens_only_for_its_store_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let keys = LocalKeys::derive(&master);
        let place = |id: &str| RootRecordPlace {
            dir: dir.path().join("roots"),
            store_id: id.into(),
        };
        let record = RootRecord::new(&place("local:/a"), &keys);
        assert_eq!(record.read(), None);
        let seen = Seen {
            counter: 7,
            generation: 3,
            root_hash: [5; 32],
        };
        record.write(&seen);
        assert_eq!(record.read(), Some(seen));
        assert_eq!(RootRecord::new(&place("local:/b"), &keys).read(), None);
        let other = LocalKeys::derive(&MasterKey::generate());
        assert_eq!(RootRecord::new(&place("local:/a"), &other).read(), None);
        // Moving another store's record over this one does not make it this store's.
        std::fs::copy(
            &record.path,
            &RootRecord::new(&place("local:/b"), &keys).path,
        )
        .unwrap();
        assert_eq!(RootRecord::new(&place("local:/b"), &keys).read(), None);
    }
}
