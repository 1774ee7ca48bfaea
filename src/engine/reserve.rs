//! Room kept on the disk under the data dir, for when other programs fill it to the last block.
//!
//! Deleting files is how a user makes room, and a delete must be journaled and committed: an
//! append to the journal, new index pages, a new root and a rewrite of the journal, all of them
//! bytes on the very disk that is full. Without room for those, `rm` inside the mount fails
//! with ENOSPC and the store does not even mount (opening rewrites the journal). So the journal
//! keeps a file of allocated blocks beside it; a write that finds the disk full gives that room
//! back and tries once more. The room is taken again once the disk has plenty free.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Enough for a journal rewrite and a commit of deletes over an index of many pages.
pub const RESERVE_BYTES: u64 = 4 << 20;

pub struct Reserve {
    path: PathBuf,
    held: AtomicBool,
}

impl Reserve {
    /// The reserve kept in the file at `path`, taken if the disk has room for it.
    pub fn new(path: PathBuf) -> Reserve {
        let reserve = Reserve {
            path,
            held: AtomicBool::new(false),
        };
        reserve.refill();
        reserve
    }

    /// Takes the room again if it was given back and the disk has twice as much free: the
    /// reserve never takes a user's last bytes.
    pub fn refill(&self) {
        if self.held.load(Ordering::Relaxed) {
            return;
        }
        if is_whole(&self.path) {
            self.held.store(true, Ordering::Relaxed);
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if available_bytes(dir).unwrap_or(0) < 2 * RESERVE_BYTES {
            return;
        }
        match allocate(&self.path) {
            Ok(()) => self.held.store(true, Ordering::Relaxed),
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::debug!("could not take the disk room kept in reserve: {e}");
            }
        }
    }

    /// Gives the room back to the disk; `false` if none was held.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::Relaxed) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    "the disk under the data dir is full: using the {} MiB kept in reserve; \
                     make room on it (deleting files in the mount gives their space back)",
                    RESERVE_BYTES >> 20
                );
                true
            }
            Err(e) => {
                tracing::warn!("the disk is full and its reserve could not be given back: {e}");
                false
            }
        }
    }

    /// Runs `write`; if it finds the disk full and the reserve held room, gives that room back
    /// and runs it once more. `write` must leave nothing half-written when it fails.
    pub fn with_room<T>(&self, mut write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match write() {
            Err(e) if is_no_space(&e) && self.release() => write(),
            other => other,
        }
    }
}

pub fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

/// Whether the file at `path` holds the whole reserve in allocated blocks.
fn is_whole(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == RESERVE_BYTES && m.blocks() * 512 >= m.len())
}

/// Allocates the reserve's blocks. Zeros are written where the file system cannot allocate
/// without writing.
fn allocate(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    // SAFETY: fallocate on a descriptor this function owns; no memory is involved.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, RESERVE_BYTES as libc::off_t) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    use std::io::Write;
    let zeros = vec![0u8; 1 << 20];
    let mut file = file;
    for _ in 0..RESERVE_BYTES >> 20 {
        file.write_all(&zeros)?;
    }
    file.sync_data()
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_given_back_once_and_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reserve");
        let reserve = Reserve::new(path.clone());
        assert!(is_whole(&path), "no reserve allocated");

        let mut tries = 0;
        let full = || io::Error::from_raw_os_error(libc::ENOSPC);
        let out = reserve.with_room(|| {
            tries += 1;
            if tries == 1 {
                Err(full())
            } else {
                Ok(tries)
            }
        });
        assert_eq!(out.unwrap(), 2, "not retried once the room was given back");
        assert!(!path.exists());
        // Nothing more to give: a full disk is the writer's error.
        let out: io::Result<()> = reserve.with_room(|| Err(full()));
        assert!(is_no_space(&out.unwrap_err()));

        reserve.refill();
        assert!(is_whole(&path), "the reserve was not taken again");
        // Other errors are not retried and keep the reserve.
        let out: io::Result<()> = reserve.with_room(|| Err(io::Error::other("broken")));
        assert!(out.is_err());
        assert!(is_whole(&path));
    }
}
