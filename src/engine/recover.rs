//! Saving journaled changes that cannot be committed (someone else changed the index since they
//! were made) as ordinary files, so that nothing acknowledged is lost: the files' contents as
//! they were last written, and a list of every change in order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::journal::Op;
use super::{Engine, Error, Result};
use crate::index::{Entry, FileKind};

/// Writes what `ops` made under `<dir>/recovered/<UTC time>/` and returns that directory.
pub(super) async fn save(engine: &Engine, dir: &Path, ops: &[Op]) -> Result<PathBuf> {
    let io = |e: std::io::Error| Error::Journal(format!("saving uncommitted changes: {e}"));
    let out = fresh_dir(&dir.join("recovered")).map_err(io)?;
    let mut changes = String::new();
    // The keys the journal wrote, as its later renames and removals left them.
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
            Op::Link { key, id } => {
                let _ = writeln!(changes, "gave {} a second name (file {id})", shown(key));
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
        }
    }
    let _ = writeln!(changes, "\nsaved under files/:");
    let files = out.join("files");
    for (key, entry) in &written {
        // Files unlinked while open (kept under internal keys) were deleted by the user.
        if key.is_empty() || key.starts_with('\0') {
            continue;
        }
        let path = files.join(key);
        if let Some(id) = entry.link {
            let _ = writeln!(
                changes,
                "  {key}: another name of file {id}, not saved twice"
            );
            continue;
        }
        let saved = match entry.meta.kind {
            FileKind::Dir => std::fs::create_dir_all(&path).map_err(io),
            FileKind::File => write_file(engine, &path, entry).await,
            FileKind::Symlink => {
                let target = entry.meta.symlink_target.clone().unwrap_or_default();
                create_parent(&path)
                    .and_then(|()| {
                        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    })
                    .map_err(io)
            }
            _ => Err(Error::Journal("special file: only listed".into())),
        };
        let _ = match saved {
            Ok(()) => writeln!(changes, "  {key}"),
            Err(e) => writeln!(changes, "  {key}: NOT saved: {e}"),
        };
    }
    std::fs::write(out.join("CHANGES.txt"), changes).map_err(io)?;
    Ok(out)
}

async fn write_file(engine: &Engine, path: &Path, entry: &Entry) -> Result<()> {
    let io = |e: std::io::Error| Error::Journal(e.to_string());
    // The pads were ours when written; the other writer may have reused recycled ones since,
    // which the hash check catches.
    let data = engine.read_range(entry, 0, entry.size as usize).await?;
    create_parent(path).map_err(io)?;
    std::fs::write(path, data).map_err(io)
}

fn create_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}

fn shown(key: &str) -> String {
    if key.is_empty() {
        "/".into()
    } else {
        key.escape_debug().to_string()
    }
}

/// A new directory named for the time now.
fn fresh_dir(parent: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    for n in 0.. {
        let name = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        match std::fs::create_dir(parent.join(&name)) {
            Ok(()) => return Ok(parent.join(name)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!()
}
