//! Recovering journaled changes that cannot be committed as they are (someone else changed the
//! index since they were made): what they wrote is put into the file system itself, under
//! `lost+found/<UTC time>/`, with a `CHANGES.txt` listing every change in order, and committed
//! on top of the other writer's index. Nothing is written to local disk, so nothing is there in
//! plaintext, and the journal that holds the changes is rewritten only once the commit landed.
//!
//! The journal's pads may since have been reused by the other writer: every chunk is read
//! hash-checked and copied, one chunk at a time, into pads of the current index; the journal's
//! own pads are never referenced, and none of them is written while the copy runs.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use autonomi::Bytes;

use super::journal::Op;
use super::{Engine, Error, Result};
use crate::index::{
    inode_key, inode_of_key, is_internal_key, names, ChunkMap, Entry, FileKind, Meta, Timestamp,
};

/// The top-level directory recovered changes go under.
pub const LOST_FOUND: &str = "lost+found";

/// Puts what `ops` wrote under a new `lost+found/<UTC time>/` and commits it; returns that
/// directory's key. On any failure nothing is committed and the caller keeps the journal.
pub(super) async fn recover(engine: &Engine, ops: &[Op]) -> Result<String> {
    let (mut changes, written) = summarize(ops);
    let theirs: HashSet<_> = written
        .values()
        .flat_map(|e| e.pads().map(|p| p.seed))
        .collect();
    let held = engine.hold_free_pads(&theirs).await;
    let copied = copy_all(engine, &mut changes, &written).await;
    engine.release_held_pads(held).await;
    let dir = copied?;
    engine.commit().await?;
    Ok(dir)
}

/// The text of `CHANGES.txt` so far, and the keys the ops wrote as their later renames and
/// removals left them (only keys that are safe relative paths).
fn summarize(ops: &[Op]) -> (String, BTreeMap<String, Entry>) {
    let mut changes = String::new();
    let mut written: BTreeMap<String, Entry> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Install { key, entry } => {
                let _ = writeln!(changes, "wrote {} ({} bytes)", shown(key), entry.size);
                written.insert(key.clone(), entry.clone());
            }
            Op::Remove { key } => {
                let _ = writeln!(changes, "removed {}", shown(key));
                written.remove(key);
            }
            Op::Rename { moves } => {
                for (from, to) in moves {
                    let _ = writeln!(changes, "renamed {} -> {}", shown(from), shown(to));
                    if let Some(entry) = written.remove(from) {
                        written.insert(to.clone(), entry);
                    }
                }
            }
            Op::SetMeta { key, meta } => {
                let _ = writeln!(
                    changes,
                    "changed the metadata of {} (mode {:o}, uid {}, gid {})",
                    shown(key),
                    meta.mode,
                    meta.uid,
                    meta.gid
                );
                if let Some(entry) = written.get_mut(key) {
                    entry.meta = meta.clone();
                }
            }
            Op::Link { key, id } => {
                let _ = writeln!(changes, "gave {} another name (file {id})", shown(key));
                if let Some(entry) = written.remove(key) {
                    written.insert(inode_key(*id), entry);
                }
                written.insert(key.clone(), Entry::link_to(*id));
            }
        }
    }
    // Each name of a file with several gets a copy of it, if the ops wrote the file.
    let files: BTreeMap<u64, Entry> = (written.iter())
        .filter_map(|(k, e)| Some((inode_of_key(k)?, e.clone())))
        .collect();
    written.retain(|key, entry| match entry.link {
        None => true,
        Some(id) => match files.get(&id) {
            Some(file) => {
                *entry = file.clone();
                true
            }
            None => {
                let _ = writeln!(changes, "{}: a name of a file not changed here", shown(key));
                false
            }
        },
    });
    let _ = writeln!(changes, "\nrecovered here:");
    // Files unlinked while open (kept under internal keys) were deleted by the user.
    written.retain(|key, _| !is_internal_key(key));
    written.retain(|key, _| {
        let ok = is_safe_relative(key);
        if !ok {
            let _ = writeln!(changes, "  {}: NOT recovered: not a valid name", shown(key));
        }
        ok
    });
    (changes, written)
}

/// Whether `key` is a relative path of names a file may have: not empty, no `.` or `..`, no
/// empty component (so not absolute), nothing but the index's escapes of bytes that are not
/// UTF-8 ([`names`]). Only such keys may be joined under the recovery directory.
pub(super) fn is_safe_relative(key: &str) -> bool {
    !key.is_empty() && key.split('/').all(names::is_valid_name)
}

async fn copy_all(
    engine: &Engine,
    changes: &mut String,
    written: &BTreeMap<String, Entry>,
) -> Result<String> {
    let base = fresh_dir(engine).await?;
    for (key, entry) in written {
        let target = format!("{base}/{key}");
        let saved = match entry.meta.kind {
            FileKind::File => match make_parents(engine, &target).await {
                Ok(()) => copy_file(engine, &target, entry).await,
                Err(e) => Err(e),
            },
            FileKind::Dir | FileKind::Symlink => match make_parents(engine, &target).await {
                Ok(()) => {
                    let bare = Entry {
                        size: entry.size,
                        ..Entry::empty(entry.meta.clone())
                    };
                    engine.install(&target, bare).await
                }
                Err(e) => Err(e),
            },
            _ => Err(Error::Journal("a special file: only listed".into())),
        };
        let _ = match saved {
            Ok(()) => writeln!(changes, "  {}", shown(key)),
            Err(e) => writeln!(changes, "  {}: NOT recovered: {e}", shown(key)),
        };
    }
    write_text(engine, &format!("{base}/CHANGES.txt"), changes.clone()).await?;
    Ok(base)
}

/// Writes a private text file at `key` (the notes beside what recovery or fsck set aside).
pub(super) async fn write_text(engine: &Engine, key: &str, text: String) -> Result<()> {
    let text = Bytes::from(text.into_bytes());
    let pieces = text
        .chunks(engine.chunk_size())
        .map(|p| text.slice_ref(p))
        .collect();
    let chunks = engine.write_chunks(pieces, None).await?;
    let entry = Entry {
        chunks: ChunkMap::from_ordered(chunks.clone()),
        size: text.len() as u64,
        ..Entry::empty(private(FileKind::File))
    };
    if let Err(e) = engine.install(key, entry).await {
        engine.discard_chunks(&chunks).await;
        return Err(e);
    }
    Ok(())
}

/// Copies a file's chunks into new pads, one chunk in memory at a time, and installs it.
async fn copy_file(engine: &Engine, target: &str, entry: &Entry) -> Result<()> {
    let mut chunks = ChunkMap::default();
    let mut taken = Vec::new();
    for (idx, chunk) in entry.chunks.iter() {
        let copied = match chunk.pad {
            None => Ok(chunk.clone()),
            Some(_) => match engine.read_chunk(chunk).await {
                Ok(bytes) => engine
                    .write_chunks(vec![bytes], None)
                    .await
                    .map(|mut one| one.remove(0)),
                Err(e) => Err(e),
            },
        };
        match copied {
            Ok(c) => {
                taken.push(c.clone());
                chunks.insert(idx, c);
            }
            Err(e) => {
                engine.discard_chunks(&taken).await;
                return Err(e);
            }
        }
    }
    let copy = Entry {
        chunks,
        size: entry.size,
        ..Entry::empty(entry.meta.clone())
    };
    if let Err(e) = engine.install(target, copy).await {
        engine.discard_chunks(&taken).await;
        return Err(e);
    }
    Ok(())
}

/// Metadata for what recovery creates: the mount's user, private, stamped now.
pub(super) fn private(kind: FileKind) -> Meta {
    let now = Timestamp::now();
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Meta {
        kind,
        mode: if kind == FileKind::Dir { 0o700 } else { 0o600 },
        uid,
        gid,
        atime: now,
        mtime: now,
        ctime: now,
        ..Default::default()
    }
}

fn dir_entry() -> Entry {
    Entry::empty(private(FileKind::Dir))
}

/// Creates the directories above `key` that are missing.
pub(super) async fn make_parents(engine: &Engine, key: &str) -> Result<()> {
    let mut at = 0;
    while let Some(slash) = key[at..].find('/') {
        let dir = &key[..at + slash];
        match engine.entry(dir).await {
            Some(e) if e.meta.kind == FileKind::Dir => {}
            Some(_) => return Err(Error::Journal(format!("{} is not a directory", shown(dir)))),
            None => engine.install(dir, dir_entry()).await?,
        }
        at += slash + 1;
    }
    Ok(())
}

/// A new directory under `lost+found` named for the time now (`lost+found` is made if
/// missing; if a file has that name, a numbered name is used).
pub(super) async fn fresh_dir(engine: &Engine) -> Result<String> {
    let mut top = LOST_FOUND.to_string();
    for n in 1.. {
        match engine.entry(&top).await {
            None => {
                engine.install(&top, dir_entry()).await?;
                break;
            }
            Some(e) if e.meta.kind == FileKind::Dir => break,
            Some(_) => top = format!("{LOST_FOUND}.{n}"),
        }
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    for n in 0.. {
        let name = match n {
            0 => format!("{top}/{stamp}"),
            n => format!("{top}/{stamp}-{n}"),
        };
        if engine.entry(&name).await.is_none() {
            engine.install(&name, dir_entry()).await?;
            return Ok(name);
        }
    }
    unreachable!()
}

pub(super) fn shown(key: &str) -> String {
    if key.is_empty() {
        "/".into()
    } else {
        names::display(key)
    }
}

#[cfg(test)]
mod tests {
    use super::is_safe_relative;

    #[test]
    fn only_plain_relative_keys_are_safe() {
        for good in ["a", "a/b", "dir/.hidden", "a..b", "x/...", "sp ace/é"] {
            assert!(is_safe_relative(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "../../x",
            "a/../b",
            "a/./b",
            "/etc/cron.d/x",
            "a//b",
            "a/",
            "nul\0",
            "a/..",
        ] {
            assert!(!is_safe_relative(bad), "{bad:?}");
        }
    }
}
