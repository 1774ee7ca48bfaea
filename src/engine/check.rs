//! `fsck`: every pad the index references is fetched from the store and checked whole
//! (signature, owner, version and content), and the files whose data is damaged can be set
//! aside under `lost+found/<UTC time>/`, with their damaged chunks made holes and a
//! `DAMAGE.txt` saying which bytes were lost, so that no name keeps answering `EIO`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use futures::StreamExt;

use super::recover::{fresh_dir, make_parents, shown, write_text};
use super::{Engine, Result};
use crate::index::{inode_key, is_internal_key, Chunk, ChunkMap};
use crate::keys::PadSeed;

/// A file with damaged data: the index key holding its chunks, the names it has, and each
/// damaged chunk.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// The key that holds the chunks (the path, or the file's inode key if it has several names).
    pub key: String,
    /// Its paths; empty for a file deleted while still open.
    pub names: Vec<String>,
    pub chunks: Vec<DamagedChunk>,
}

#[derive(Debug, Clone)]
pub struct DamagedChunk {
    pub index: u64,
    /// The file's bytes the chunk held.
    pub bytes: Range<u64>,
    pub why: String,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Pads read and checked.
    pub pads: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
    pub damaged: Vec<Damaged>,
}

impl Engine {
    /// Checks every data pad the index references, fetched from the store, never the cache.
    /// `progress(done, total)` is called after each pad. Index pages were checked when the
    /// engine opened (it does not open otherwise).
    pub async fn check(&self, progress: &(dyn Fn(u64, u64) + Sync)) -> CheckReport {
        let cs = self.chunk_size() as u64;
        let (chunks, names) = {
            let state = self.inner.state.lock().await;
            let mut chunks = Vec::new();
            let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (key, entry) in state.index.entries() {
                match entry.link {
                    Some(id) => names.entry(inode_key(id)).or_default().push(key.clone()),
                    None if !is_internal_key(key) => {
                        names.entry(key.clone()).or_default().push(key.clone())
                    }
                    None => {}
                }
                for (idx, chunk) in entry.chunks.iter() {
                    if chunk.pad.is_some() {
                        chunks.push((key.clone(), idx, chunk.clone()));
                    }
                }
            }
            (chunks, names)
        };
        // A pack is read once for all its pieces.
        let mut reads: BTreeMap<PadSeed, Vec<(String, u64, Chunk)>> = BTreeMap::new();
        for (key, idx, chunk) in chunks {
            let pad = chunk.pad.expect("filtered");
            reads.entry(pad.seed).or_default().push((key, idx, chunk));
        }
        let total = reads.len() as u64;
        let checks = reads.into_values().map(|pieces| {
            let pads = &self.inner.pads;
            async move {
                let first = &pieces[0].2;
                let pad = first.pad.expect("filtered");
                let content = (!first.is_packed()).then_some((first.hash, first.hash_kind));
                let read = pads.verify(&pad, content).await;
                let results: Vec<_> = (pieces.into_iter())
                    .map(|(key, idx, chunk)| {
                        let result = match &read {
                            Err(e) => Err(e.to_string()),
                            Ok(data) if chunk.is_packed() => piece_check(data, &chunk),
                            Ok(_) => Ok(()),
                        };
                        (key, idx, chunk.len, result)
                    })
                    .collect();
                results
            }
        });
        let mut results = futures::stream::iter(checks).buffer_unordered(self.parallelism());
        let mut report = CheckReport::default();
        let mut damaged: BTreeMap<String, Vec<DamagedChunk>> = BTreeMap::new();
        while let Some(pieces) = results.next().await {
            report.pads += 1;
            for (key, index, len, result) in pieces {
                report.bytes += len as u64;
                if let Err(why) = result {
                    damaged.entry(key).or_default().push(DamagedChunk {
                        index,
                        bytes: index * cs..index * cs + len as u64,
                        why,
                    });
                }
            }
            progress(report.pads, total);
        }
        report.damaged = damaged
            .into_iter()
            .map(|(key, mut chunks)| {
                chunks.sort_by_key(|c| c.index);
                let names = names.get(&key).cloned().unwrap_or_default();
                Damaged { key, names, chunks }
            })
            .collect();
        report
    }

    /// Sets damaged files aside: each loses its damaged chunks (they read as zeros from now
    /// on, and their pads are freed), and every name of it moves under a new
    /// `lost+found/<UTC time>/`, beside a `DAMAGE.txt` listing what was lost. Committed before
    /// it returns; returns that directory.
    pub async fn set_aside(&self, damaged: &[Damaged]) -> Result<String> {
        let base = fresh_dir(self).await?;
        let mut text = String::from(
            "Files set aside by mutant-mount fsck --repair: the byte ranges listed could not \
             be read back intact and now read as zeros.\n\n",
        );
        for file in damaged {
            let Some(mut entry) = self.entry(&file.key).await else {
                continue;
            };
            let mut kept = ChunkMap::default();
            for (idx, chunk) in entry.chunks.iter() {
                if !file.chunks.iter().any(|c| c.index == idx) {
                    kept.insert(idx, chunk.clone());
                }
            }
            entry.chunks = kept;
            self.install(&file.key, entry).await?;
            if file.names.is_empty() {
                let _ = writeln!(text, "a file deleted while open: its damaged bytes zeroed");
            }
            for name in &file.names {
                let target = format!("{base}/{name}");
                make_parents(self, &target).await?;
                self.rename(name, &target).await?;
                let _ = writeln!(text, "{} -> {}", shown(name), shown(&target));
            }
            for chunk in &file.chunks {
                let _ = writeln!(
                    text,
                    "  bytes {}..{}: {}",
                    chunk.bytes.start, chunk.bytes.end, chunk.why
                );
            }
        }
        write_text(self, &format!("{base}/DAMAGE.txt"), text).await?;
        self.commit().await?;
        Ok(base)
    }

    fn parallelism(&self) -> usize {
        self.inner.opts.parallelism.max(1)
    }
}

/// Whether a piece of a pack, whose plaintext is `pack`, is whole: in the pack and of its hash.
pub(super) fn piece_check(pack: &[u8], chunk: &Chunk) -> std::result::Result<(), String> {
    let (from, to) = (
        chunk.pad_offset as usize,
        (chunk.pad_offset + chunk.len) as usize,
    );
    match pack.get(from..to) {
        Some(piece) if chunk.hash_kind.hash(piece) == chunk.hash => Ok(()),
        Some(_) => Err("a piece of a pack does not match its hash".into()),
        None => Err("a piece lies outside its pack".into()),
    }
}
