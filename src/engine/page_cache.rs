//! A local copy of index pages, to start without fetching them. Each copy is sealed with the
//! index-cache key (`at_rest.rs`), bound to the page's hash, and named by a keyed hash of it,
//! so the directory shows neither names nor contents nor which pages it holds. A copy is either
//! exactly the page the root names or is ignored; the store always holds the pages too, and the
//! root is always read from the store.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::at_rest::LocalKey;
use crate::codec::sha256;

#[derive(Clone)]
pub struct PageCache {
    dir: PathBuf,
    key: LocalKey,
    names: [u8; 32],
}

impl PageCache {
    pub fn new(dir: &Path, keys: &crate::at_rest::LocalKeys) -> Self {
        PageCache {
            dir: dir.to_path_buf(),
            key: keys.index_cache.clone(),
            names: keys.index_cache_names,
        }
    }

    fn name(&self, hash: &[u8; 32]) -> String {
        blake3::keyed_hash(&self.names, hash).to_hex().to_string()
    }

    /// The page with this hash, if a local copy holds exactly it.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Vec<u8>> {
        let sealed = std::fs::read(self.dir.join(self.name(hash))).ok()?;
        let bytes = self.key.open(&sealed, hash).ok()?;
        (sha256(&bytes) == *hash).then_some(bytes)
    }

    /// Keeps a copy (0600, in a 0700 directory); failures only cost speed, so they are logged
    /// and ignored.
    pub fn put(&self, hash: &[u8; 32], bytes: &[u8]) {
        let name = self.name(hash);
        let path = self.dir.join(&name);
        let tmp = self
            .dir
            .join(format!(".{name}.tmp{:016x}", rand::random::<u64>()));
        let sealed = self.key.seal(bytes, hash);
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
            })
            .and_then(|mut f| f.write_all(&sealed))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("cannot keep a local copy of an index page: {e}");
        }
    }

    pub fn remove(&self, hash: &[u8; 32]) {
        let _ = std::fs::remove_file(self.dir.join(self.name(hash)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at_rest::LocalKeys;
    use crate::keys::MasterKey;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copies_are_sealed_private_and_bound_to_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("index-cache");
        let keys = LocalKeys::derive(&MasterKey::generate());
        let cache = PageCache::new(&cache_dir, &keys);
        let page = b"secret-name-xyz holds MARKER".to_vec();
        let hash = sha256(&page);
        cache.put(&hash, &page);
        assert_eq!(cache.get(&hash), Some(page.clone()));

        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache_dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!files[0].to_string_lossy().contains(&hex));
        assert_eq!(mode(&files[0]), 0o600);
        let stored = std::fs::read(&files[0]).unwrap();
        assert!(!stored.windows(6).any(|w| w == b"MARKER"));

        // Another key reads nothing; a copy put in another page's place is ignored.
        let other = PageCache::new(&cache_dir, &LocalKeys::derive(&MasterKey::generate()));
        assert_eq!(other.get(&hash), None);
        let other_hash = sha256(b"another page");
        std::fs::copy(&files[0], cache_dir.join(cache.name(&other_hash))).unwrap();
        assert_eq!(cache.get(&other_hash), None);
    }
}
