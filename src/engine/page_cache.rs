//! A local copy of index pages, to start without fetching them. Files are named by the hash of
//! their bytes, so a copy is either exactly the page the root names or is ignored; the store
//! always holds the pages too, and the root is always read from the store.

use std::path::{Path, PathBuf};

use crate::codec::sha256;

#[derive(Clone, Debug)]
pub struct PageCache {
    dir: PathBuf,
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl PageCache {
    pub fn new(dir: &Path) -> Self {
        PageCache {
            dir: dir.to_path_buf(),
        }
    }

    /// The page with this hash, if a local copy holds exactly it.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.dir.join(hex(hash))).ok()?;
        (sha256(&bytes) == *hash).then_some(bytes)
    }

    /// Keeps a copy; failures only cost speed, so they are logged and ignored.
    pub fn put(&self, hash: &[u8; 32], bytes: &[u8]) {
        let path = self.dir.join(hex(hash));
        let tmp = self.dir.join(format!(".{}.tmp", hex(hash)));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|_| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!("cannot keep a local copy of an index page: {e}");
        }
    }

    pub fn remove(&self, hash: &[u8; 32]) {
        let _ = std::fs::remove_file(self.dir.join(hex(hash)));
    }
}
