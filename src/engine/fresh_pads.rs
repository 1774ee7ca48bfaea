//! The seeds of pads this machine created, kept until a commit shows where each one went.
//!
//! A pad's key derives from a random seed that only the index holds, and a network cannot
//! list a key's pads: a pad created for a write that a crash cut short (created, paid for, and
//! then referenced by nothing) could never be found again. So every fresh seed is appended
//! here, sealed, before its pad is written; a commit that lands drops the seeds whose fate it
//! recorded (in a file, or back on the free list). Seeds left over from an earlier run are
//! *suspects*: `gc` checks each against the index and the store, and returns the pads that
//! exist but nothing references to the free list.
//!
//! The log is written, not synced: after a crash of the whole machine a seed may be missing,
//! which can only leave a pad unreclaimed, never reclaim one in use. A torn last frame is
//! ignored for the same reason.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::at_rest::LocalKey;
use crate::keys::PadSeed;

const FILE: &str = "fresh-pads";
const AAD: &[u8] = b"mutant-mount fresh pads";

pub struct FreshLog {
    path: PathBuf,
    key: LocalKey,
}

impl FreshLog {
    /// The log in the journal directory `dir`.
    pub fn new(dir: &Path, key: LocalKey) -> Self {
        FreshLog {
            path: dir.join(FILE),
            key,
        }
    }

    /// Every seed in the log, up to the first frame that does not open.
    pub fn read(&self) -> HashSet<PadSeed> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return HashSet::new(),
            Err(e) => {
                tracing::warn!("cannot read the log of fresh pads: {e}");
                return HashSet::new();
            }
        };
        let mut seeds = HashSet::new();
        let mut rest = bytes.as_slice();
        while let Some((len, body)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some(frame) = body.get(..len) else { break };
            let Ok(plain) = self.key.open(frame, AAD) else {
                break;
            };
            seeds.extend(plain.chunks_exact(16).map(|s| {
                let mut seed = PadSeed::default();
                seed.copy_from_slice(s);
                seed
            }));
            rest = &body[len..];
        }
        seeds
    }

    /// Appends `seeds`; called before their pads are written.
    pub fn append(&self, seeds: &[PadSeed]) {
        if seeds.is_empty() {
            return;
        }
        let frame = self.frame(seeds.iter());
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&frame));
        if let Err(e) = appended {
            tracing::warn!("cannot log fresh pads (a crash now could leave them unreclaimed): {e}");
        }
    }

    /// Replaces the log with `seeds` (temporary file, then rename).
    pub fn rewrite(&self, seeds: &HashSet<PadSeed>) {
        let tmp = self.path.with_extension("tmp");
        let frame = match seeds.is_empty() {
            true => Vec::new(),
            false => self.frame(seeds.iter()),
        };
        let written = std::fs::write(&tmp, frame).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!("cannot rewrite the log of fresh pads: {e}");
        }
    }

    fn frame<'a>(&self, seeds: impl Iterator<Item = &'a PadSeed>) -> Vec<u8> {
        let plain: Vec<u8> = seeds.flat_map(|s| s.iter().copied()).collect();
        let sealed = self.key.seal(&plain, AAD);
        let mut frame = (sealed.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&sealed);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at_rest::LocalKeys;
    use crate::keys::MasterKey;

    #[test]
    fn seeds_survive_appends_and_rewrites_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let key = LocalKeys::derive(&MasterKey::generate()).fresh_pads;
        let log = FreshLog::new(dir.path(), key.clone());
        assert!(log.read().is_empty());
        log.append(&[[1; 16], [2; 16]]);
        log.append(&[[3; 16]]);
        let all: HashSet<PadSeed> = [[1; 16], [2; 16], [3; 16]].into();
        assert_eq!(log.read(), all);
        // Sealed: no seed is on disk in the clear.
        let raw = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(!raw.windows(16).any(|w| w == [2; 16]));
        // A frame cut short by a crash is ignored; the frames before it are kept.
        std::fs::write(dir.path().join(FILE), &raw[..raw.len() - 5]).unwrap();
        assert_eq!(log.read(), [[1; 16], [2; 16]].into());
        log.rewrite(&[[9; 16]].into());
        assert_eq!(log.read(), [[9; 16]].into());
        log.rewrite(&HashSet::new());
        assert!(log.read().is_empty());
        // Another key's log opens to nothing.
        log.append(&[[4; 16]]);
        let other = LocalKeys::derive(&MasterKey::generate()).fresh_pads;
        assert!(FreshLog::new(dir.path(), other).read().is_empty());
    }
}
