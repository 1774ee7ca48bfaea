//! The embedded default store: one file per pad, holding the very scratchpad the network would.
//! Writes are atomic (temp file, fsync, rename, fsync of the directory).
//!
//! A pad file is a small header record (owner, encoding, counter, signature and data length,
//! checksummed by the codec) followed by the encrypted bytes as they are: the scratchpad's
//! signature covers those bytes and every reader checks it, so they are not hashed again here,
//! and an update reads only the header to check the counter. Files of the first format (the
//! whole scratchpad as one codec record) are still read. Chunk-sized pad files are written and
//! read whole past the page cache (O_DIRECT, where the file system has it); parts of pads,
//! index pages and small files go through it.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey, Signature};
use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::{check_size, PadStore, StoreError};
use crate::codec::{self, Kind};

const LOCK_SHARDS: usize = 64;

#[derive(Serialize, Deserialize)]
struct PadHeader {
    owner: PublicKey,
    data_encoding: u64,
    counter: u64,
    signature: Signature,
    data_len: u64,
}

/// The length prefix and header record of a pad file; the encrypted bytes follow.
fn encode_header(pad: &Scratchpad) -> Result<Vec<u8>, codec::CodecError> {
    let header = codec::encode(
        Kind::PadHeader,
        &PadHeader {
            owner: *pad.owner(),
            data_encoding: pad.data_encoding(),
            counter: pad.counter(),
            signature: pad.signature().clone(),
            data_len: pad.encrypted_data().len() as u64,
        },
    )?;
    let mut out = Vec::with_capacity(4 + header.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    Ok(out)
}

/// The header of a pad file and where its data starts, from the file's first bytes.
fn decode_header(bytes: &[u8]) -> Result<(PadHeader, usize), String> {
    let len = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
        .ok_or("truncated header")?;
    let record = bytes.get(4..4 + len).ok_or("truncated header")?;
    let header: PadHeader = codec::decode(Kind::PadHeader, record).map_err(|e| e.to_string())?;
    Ok((header, 4 + len))
}

/// The whole file, in a buffer of the chunk pool (a pad file is a chunk and a header), and
/// where in the buffer it starts.
fn read_pooled(path: &Path) -> std::io::Result<(Vec<u8>, usize)> {
    match read_direct(path) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => read_buffered(path), // no O_DIRECT
        read => read,
    }
}

/// [`read_pooled`] through the page cache.
fn read_buffered(path: &Path) -> std::io::Result<(Vec<u8>, usize)> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len() as usize;
    let mut buf = crate::buffers::take(len + 1);
    file.read_to_end(&mut buf)?;
    Ok((buf, 0))
}

/// Creates `dir` and its missing parents with mode 0700 (directories that exist keep theirs).
pub(crate) fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Alignment of O_DIRECT buffers, offsets and lengths: a page, which every block size divides.
const DIRECT_ALIGN: usize = 4096;

/// [`read_pooled`] of a chunk-sized file with O_DIRECT, bypassing the page cache: the disk
/// writes straight into the buffer. A pad is read whole once, into the chunk cache; through
/// the page cache it cost a copy of every byte, a tenth of a cold read's CPU, and memory for a
/// second copy of the ciphertext. Smaller files (index pages, small files) are read through
/// the page cache, like their writes. `EINVAL` where the file system cannot.
fn read_direct(path: &Path) -> std::io::Result<(Vec<u8>, usize)> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;

    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let len = file.metadata()?.len() as usize;
    if len < DIRECT_MIN {
        clear_direct(&file)?;
        let mut buf = crate::buffers::take(len + 1);
        file.read_to_end(&mut buf)?;
        return Ok((buf, 0));
    }
    let whole = len.next_multiple_of(DIRECT_ALIGN);
    let (mut buf, start) = aligned_buffer(whole);
    let room = &mut buf.spare_capacity_mut()[..whole];
    let mut done = 0;
    while done < len {
        // SAFETY: the kernel writes at most `whole - done` bytes into `room[done..]`, which
        // is that long; `done` stays a multiple of DIRECT_ALIGN (checked below).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                room[done..].as_mut_ptr().cast(),
                whole - done,
                done as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            n => done += n as usize,
        }
        if done < len && done % DIRECT_ALIGN != 0 {
            // A short read mid-file: the rest cannot be read aligned.
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
    }
    // SAFETY: the first `start` bytes were zeroed and the kernel wrote the `done` after them.
    unsafe { buf.set_len(start + done) };
    Ok((buf, start))
}

/// Files this big are read and written past the page cache (below, index pages and small
/// files are not worth the aligned copy, and are worth caching).
const DIRECT_MIN: usize = 1 << 20;

/// A pooled buffer with room for `len` bytes from its first page-aligned byte, which is
/// returned; the bytes before it are zeroed and count as the buffer's content.
fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let mut buf = crate::buffers::take(len + DIRECT_ALIGN);
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    buf.resize(start, 0);
    (buf, start)
}

/// Creates `path` holding `parts` one after the other, not yet synced. A chunk-sized file is
/// written past the page cache (O_DIRECT) where the file system has it: its pages would only
/// hold a second copy of a pad that the chunk cache has, and once they filled the page cache,
/// writeback throttled long sequential writes (docs/benchmarks.md has the figures).
fn write_file(path: &Path, parts: &[&[u8]]) -> std::io::Result<fs::File> {
    let len = parts.iter().map(|part| part.len()).sum();
    if len >= DIRECT_MIN {
        match write_direct(path, parts, len) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // No O_DIRECT here (the failed open may still have created the file).
                let _ = fs::remove_file(path);
            }
            written => return written,
        }
    }
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?
    };
    for part in parts {
        file.write_all(part)?;
    }
    Ok(file)
}

/// [`write_file`] with O_DIRECT: the parts are copied into one aligned buffer, whose whole
/// pages go straight to the disk; the last partial page goes through the page cache.
fn write_direct(path: &Path, parts: &[&[u8]], len: usize) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;

    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let (mut buf, start) = aligned_buffer(len);
    for part in parts {
        buf.extend_from_slice(part);
    }
    let whole_pages = len / DIRECT_ALIGN * DIRECT_ALIGN;
    let (pages, tail) = buf[start..].split_at(whole_pages);
    let written = file
        .write_all_at(pages, 0)
        .and_then(|()| clear_direct(&file))
        .and_then(|()| file.write_all_at(tail, whole_pages as u64));
    crate::buffers::give_back(buf);
    written.map(|()| file)
}

/// Turns O_DIRECT off on `file`, for a write that is not aligned.
fn clear_direct(file: &fs::File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;

    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns, with flags only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A whole pad file, of either format, from `bytes[at..]`.
fn decode_pad(bytes: Vec<u8>, at: usize) -> Result<Scratchpad, String> {
    let file = &bytes[at..];
    if codec::has_magic(file) {
        return codec::decode(Kind::PadRecord, file).map_err(|e| e.to_string());
    }
    let (header, start) = decode_header(file)?;
    if (file.len() - start) as u64 != header.data_len {
        return Err(format!(
            "{} bytes of data where the header says {}",
            file.len() - start,
            header.data_len
        ));
    }
    let data = crate::buffers::share(bytes).slice(at + start..);
    Ok(Scratchpad::new_with_signature(
        header.owner,
        header.data_encoding,
        data,
        header.counter,
        header.signature,
    ))
}

#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Serialises check-then-write per address, so create and update obey the network's rules
    /// under concurrency.
    locks: Vec<Mutex<()>>,
    /// Pad files kept open for reading parts, dropped when their pad is written.
    part_files: Mutex<LruCache<PublicKey, Arc<PartFile>>>,
}

/// Pad files kept open at most: a quarter of the usual limit of 1024 open files.
const PART_FILES: usize = 256;

impl LocalStore {
    /// Opens (creating if needed) a store in `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        private_dirs(&root.join("pads")).map_err(|e| io_error(root, e))?;
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
                part_files: Mutex::new(LruCache::new(
                    std::num::NonZeroUsize::new(PART_FILES).expect("not zero"),
                )),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file that holds the pad owned by `owner` (sharded by the first byte).
    pub fn pad_path(&self, owner: &PublicKey) -> PathBuf {
        let hex = owner.to_hex();
        self.inner.root.join("pads").join(&hex[..2]).join(hex)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Permanent(format!("store task failed: {e}")))?
    }

    fn lock_for(&self, owner: &PublicKey) -> std::sync::MutexGuard<'_, ()> {
        let shard = owner.to_bytes()[7] as usize % LOCK_SHARDS;
        self.inner.locks[shard]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn read(&self, owner: &PublicKey) -> Result<Option<Scratchpad>, StoreError> {
        let path = self.pad_path(owner);
        let (bytes, at) = match read_pooled(&path) {
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let pad = decode_pad(bytes, at)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        if pad.owner() != owner {
            return Err(StoreError::Corrupt(format!(
                "{}: holds another pad",
                path.display()
            )));
        }
        Ok(Some(pad))
    }

    /// The counter of the stored pad, reading only its header.
    pub(crate) fn stored_counter(&self, owner: &PublicKey) -> Result<Option<u64>, StoreError> {
        let (file, header_len) = match self.open_pad_file(owner)? {
            None => return Ok(None),
            Some((_, Layout::Record)) => return Ok(self.read(owner)?.map(|pad| pad.counter())),
            Some((file, Layout::Header(len))) => (file, len),
        };
        let path = self.pad_path(owner);
        let corrupt = |e: String| StoreError::Corrupt(format!("{}: {e}", path.display()));
        let mut head = vec![0; (4 + header_len).clamp(8, 1 << 16)];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| corrupt(e.to_string()))?;
        let (header, _) = decode_header(&head).map_err(corrupt)?;
        Ok(Some(header.counter))
    }

    /// The pad's file, open, and how it is laid out; `None` if there is no such pad.
    fn open_pad_file(&self, owner: &PublicKey) -> Result<Option<(fs::File, Layout)>, StoreError> {
        let path = self.pad_path(owner);
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let mut head = [0; 8];
        file.read_exact(&mut head)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        let layout = if codec::has_magic(&head) {
            Layout::Record
        } else {
            Layout::Header(u32::from_le_bytes(head[..4].try_into().unwrap()) as usize)
        };
        Ok(Some((file, layout)))
    }

    /// Writes `pad` durably whatever is stored (the caller checks the rules).
    pub(crate) fn write(&self, pad: &Scratchpad) -> Result<(), StoreError> {
        let path = self.pad_path(pad.owner());
        let dir = path.parent().expect("pad paths have a parent");
        private_dirs(dir).map_err(|e| io_error(dir, e))?;
        let header = encode_header(pad).map_err(|e| StoreError::Permanent(e.to_string()))?;
        let tmp = dir.join(format!(
            ".{}.tmp{:016x}",
            path.file_name().unwrap().to_string_lossy(),
            rand::random::<u64>()
        ));
        let result = (|| {
            let file = write_file(&tmp, &[&header, pad.encrypted_data()])?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            self.inner.part_files.lock().unwrap().pop(pad.owner());
            fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&path, e));
        }
        Ok(())
    }

    /// Makes the pad file at `from` (written durably by another store on the same file system)
    /// this store's version of its pad too, as a second name of the same file: no copy.
    pub(crate) fn adopt(&self, owner: &PublicKey, from: &Path) -> Result<(), StoreError> {
        let path = self.pad_path(owner);
        let dir = path.parent().expect("pad paths have a parent");
        private_dirs(dir).map_err(|e| io_error(dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp{:016x}",
            owner.to_hex(),
            rand::random::<u64>()
        ));
        let _guard = self.lock_for(owner);
        let result = (|| {
            fs::hard_link(from, &tmp)?;
            fs::rename(&tmp, &path)?;
            self.inner.part_files.lock().unwrap().pop(owner);
            fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&path, e));
        }
        Ok(())
    }

    /// Cuts the pad's file to its header: the pad still exists at its counter (an update
    /// checks that), its content is gone and its space is the disk's again. A file of the
    /// first format, whose counter lies in its content, is left whole.
    fn trim_one(&self, owner: &PublicKey) -> Result<(), StoreError> {
        let _guard = self.lock_for(owner);
        let Some((file, Layout::Header(len))) = self.open_pad_file(owner)? else {
            return Ok(());
        };
        let keep = 4 + len as u64;
        let path = self.pad_path(owner);
        let file_len = file.metadata().map_err(|e| io_error(&path, e))?.len();
        if file_len > keep {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
            file.set_len(keep).map_err(|e| io_error(&path, e))?;
            self.inner.part_files.lock().unwrap().pop(owner);
        }
        Ok(())
    }

    /// Deletes the pad's file, if there is one.
    pub(crate) fn remove(&self, owner: &PublicKey) -> Result<(), StoreError> {
        let path = self.pad_path(owner);
        let _guard = self.lock_for(owner);
        self.inner.part_files.lock().unwrap().pop(owner);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error(&path, e)),
            _ => Ok(()),
        }
    }

    /// Every pad file held: its owner, length and modification time. Temporary files left by
    /// a write that never finished (a crash) are deleted: they were never a pad.
    pub(crate) fn held(&self) -> Result<Vec<HeldPad>, StoreError> {
        let pads = self.inner.root.join("pads");
        let mut found = Vec::new();
        let list = |dir: &Path| fs::read_dir(dir).map_err(|e| io_error(dir, e));
        for shard in list(&pads)? {
            let shard = shard.map_err(|e| io_error(&pads, e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in list(&shard)? {
                let file = file.map_err(|e| io_error(&shard, e))?;
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    let _ = fs::remove_file(file.path());
                    continue;
                }
                let Ok(owner) = PublicKey::from_hex(&name) else {
                    continue;
                };
                let meta = file.metadata().map_err(|e| io_error(&file.path(), e))?;
                found.push(HeldPad {
                    owner,
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
        Ok(found)
    }

    /// Bytes `range` of the stored pad's encrypted data, read from the file alone. The header
    /// is skipped, not decoded (decoding checks the owner and signature points, which takes
    /// longer than the read): the reader checks the part against hashes it trusts.
    fn read_part(&self, owner: &PublicKey, range: Range<usize>) -> Result<Bytes, StoreError> {
        let path = self.pad_path(owner);
        let corrupt = |e: String| StoreError::Corrupt(format!("{}: {e}", path.display()));
        let open = match self.open_part_file(owner)? {
            Some(open) => open,
            None => {
                // A file of the first format: one record, read whole.
                let pad = self.read(owner)?.ok_or(StoreError::NotFound)?;
                let data = pad.encrypted_data();
                return data
                    .get(range.clone())
                    .map(|_| data.slice(range))
                    .ok_or_else(|| corrupt("shorter than the part asked for".into()));
            }
        };
        if range.start > range.end || range.end as u64 > open.data_len {
            return Err(corrupt(format!(
                "{} bytes of data, part {range:?} asked for",
                open.data_len
            )));
        }
        let mut part = crate::buffers::take(range.len());
        part.resize(range.len(), 0);
        open.file
            .read_exact_at(&mut part, open.data_start + range.start as u64)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(crate::buffers::share(part))
    }

    /// The pad's file, open for reading parts: kept open (a random reader comes back to the
    /// same pads, and opening a file costs more than reading 16 KiB of it) until the pad is
    /// written again. `None` for a file of the first format.
    fn open_part_file(&self, owner: &PublicKey) -> Result<Option<Arc<PartFile>>, StoreError> {
        if let Some(open) = self.inner.part_files.lock().unwrap().get(owner) {
            return Ok(Some(open.clone()));
        }
        // Under the pad's lock, so no write can land between opening and keeping the file
        // (a write drops the kept file under the same lock).
        let _guard = self.lock_for(owner);
        let (file, header_len) = match self.open_pad_file(owner)? {
            None => return Err(StoreError::NotFound),
            Some((_, Layout::Record)) => return Ok(None),
            Some((file, Layout::Header(len))) => (file, len),
        };
        let data_start = 4 + header_len as u64;
        let file_len = file
            .metadata()
            .map_err(|e| io_error(&self.pad_path(owner), e))?
            .len();
        let open = Arc::new(PartFile {
            file,
            data_start,
            data_len: file_len.saturating_sub(data_start),
        });
        self.inner
            .part_files
            .lock()
            .unwrap()
            .put(*owner, open.clone());
        Ok(Some(open))
    }
}

/// A pad file found by [`LocalStore::held`].
pub(crate) struct HeldPad {
    pub owner: PublicKey,
    pub bytes: u64,
    pub modified: std::time::SystemTime,
}

/// How a pad file starts.
enum Layout {
    /// The first format: the whole scratchpad as one codec record.
    Record,
    /// A 4-byte length, a header record of that many bytes, then the encrypted data.
    Header(usize),
}

/// A pad file open for reading parts of its data.
struct PartFile {
    file: fs::File,
    data_start: u64,
    data_len: u64,
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(path.display(), e)
}

#[async_trait]
impl PadStore for LocalStore {
    fn on_this_disk(&self) -> bool {
        true
    }

    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.blocking(move |s| {
            check_size(&pad)?;
            let _guard = s.lock_for(pad.owner());
            if s.pad_path(pad.owner()).exists() {
                return Err(StoreError::AlreadyExists);
            }
            s.write(&pad)
        })
        .await
    }

    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.blocking(move |s| {
            check_size(&pad)?;
            let _guard = s.lock_for(pad.owner());
            let stored = s.stored_counter(pad.owner())?.ok_or(StoreError::NotFound)?;
            if pad.counter() <= stored {
                return Err(StoreError::StaleCounter {
                    stored,
                    offered: pad.counter(),
                });
            }
            s.write(&pad)
        })
        .await
    }

    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let owner = *owner;
        self.blocking(move |s| s.read(&owner)?.ok_or(StoreError::NotFound))
            .await
    }

    async fn counter(&self, owner: &PublicKey) -> Result<u64, StoreError> {
        let owner = *owner;
        self.blocking(move |s| s.stored_counter(&owner)?.ok_or(StoreError::NotFound))
            .await
    }

    async fn trim(&self, owners: Vec<PublicKey>) -> Result<(), StoreError> {
        self.blocking(move |s| owners.iter().try_for_each(|owner| s.trim_one(owner)))
            .await
    }

    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        let owner = *owner;
        self.blocking(move |s| Ok(s.pad_path(&owner).exists()))
            .await
    }

    async fn get_part(
        &self,
        owner: &PublicKey,
        range: Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        let owner = *owner;
        self.blocking(move |s| s.read_part(&owner, range).map(Some))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomi::{Bytes, SecretKey};

    fn pad(sk: &SecretKey, data: &[u8], counter: u64) -> Scratchpad {
        Scratchpad::new(sk, 7, &Bytes::copy_from_slice(data), counter)
    }

    #[tokio::test]
    async fn enforces_the_network_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let sk = SecretKey::random();
        let pk = sk.public_key();

        assert_eq!(store.get(&pk).await.unwrap_err(), StoreError::NotFound);
        assert!(!store.exists(&pk).await.unwrap());
        assert_eq!(
            store.update(pad(&sk, b"a", 1)).await.unwrap_err(),
            StoreError::NotFound
        );
        store.create(pad(&sk, b"a", 0)).await.unwrap();
        assert!(store.exists(&pk).await.unwrap());
        assert_eq!(
            store.create(pad(&sk, b"b", 0)).await.unwrap_err(),
            StoreError::AlreadyExists
        );
        store.update(pad(&sk, b"c", 3)).await.unwrap();
        assert_eq!(
            store.update(pad(&sk, b"d", 3)).await.unwrap_err(),
            StoreError::StaleCounter {
                stored: 3,
                offered: 3
            }
        );
        let got = store.get(&pk).await.unwrap();
        assert_eq!(got.counter(), 3);
        assert_eq!(&got.decrypt_data(&sk).unwrap()[..], b"c");

        let big = vec![1u8; crate::store::MAX_PAD_PLAINTEXT + 1];
        assert!(matches!(
            store.create(pad(&SecretKey::random(), &big, 0)).await,
            Err(StoreError::TooBig(_))
        ));
        let fits = vec![1u8; crate::store::MAX_PAD_PLAINTEXT];
        store
            .create(pad(&SecretKey::random(), &fits, 0))
            .await
            .unwrap();
    }

    /// A trimmed pad gives its bytes back but still exists at its counter: the next update
    /// must go past it, and then reads whole again.
    #[tokio::test]
    async fn a_trimmed_pad_keeps_its_counter_and_not_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let sk = SecretKey::random();
        let pk = sk.public_key();
        let data = vec![5u8; 3 << 20];
        store.create(pad(&sk, &data, 4)).await.unwrap();
        store
            .trim(vec![pk, SecretKey::random().public_key()])
            .await
            .unwrap();
        assert!(fs::metadata(store.pad_path(&pk)).unwrap().len() < 1024);
        assert!(store.exists(&pk).await.unwrap());
        assert!(matches!(store.get(&pk).await, Err(StoreError::Corrupt(_))));
        assert_eq!(
            store.update(pad(&sk, b"x", 4)).await.unwrap_err(),
            StoreError::StaleCounter {
                stored: 4,
                offered: 4
            }
        );
        store.update(pad(&sk, &data, 5)).await.unwrap();
        let got = store.get(&pk).await.unwrap();
        assert_eq!(got.counter(), 5);
        assert!(got.decrypt_data(&sk).unwrap()[..] == data[..]);
    }

    /// File lengths on both sides of the block size, the page size and the O_DIRECT threshold.
    const FILE_SIZES: [usize; 11] = [
        0,
        1,
        511,
        4095,
        4096,
        4097,
        DIRECT_MIN - 1,
        DIRECT_MIN,
        DIRECT_MIN + 513,
        DIRECT_MIN + 4097,
        (4 << 20) + 301,
    ];

    #[test]
    fn whole_files_read_the_same_direct_and_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in FILE_SIZES.into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let data: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
            fs::write(&path, &data).unwrap();
            for (how, read) in [
                ("direct", read_direct as fn(&Path) -> _),
                ("buffered", read_buffered),
                ("pooled", read_pooled),
            ] {
                let (buf, at) = read(&path).unwrap();
                assert!(buf[at..] == data[..], "{how} read of {size} bytes");
                // Buffers go back to the pool and come out again with other offsets.
                crate::buffers::give_back(buf);
            }
        }
        let missing = read_pooled(&dir.path().join("none")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn files_written_direct_hold_their_parts() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in FILE_SIZES.into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|k| (k * 13 + i) as u8).collect();
            // A short head and the rest, like a pad file's header and data.
            let (head, rest) = data.split_at(size.min(217));
            let path = dir.path().join(format!("f{i}"));
            write_file(&path, &[head, rest])
                .unwrap()
                .sync_all()
                .unwrap();
            assert!(fs::read(&path).unwrap() == data, "{size} bytes");
            let path = dir.path().join(format!("g{i}"));
            if size >= DIRECT_ALIGN {
                write_direct(&path, &[head, rest], size).unwrap();
                assert!(fs::read(&path).unwrap() == data, "{size} bytes, direct");
            }
        }
        let exists = write_file(&dir.path().join("f0"), &[b"x"]).unwrap_err();
        assert_eq!(exists.kind(), ErrorKind::AlreadyExists);
    }

    #[tokio::test]
    async fn pads_of_any_length_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        // File lengths on both sides of several 4 KiB boundaries.
        for len in (3700..4400).step_by(23).chain([1, 8000, 1 << 20]) {
            let sk = SecretKey::random();
            let data: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
            let written = pad(&sk, &data, 0);
            store.create(written.clone()).await.unwrap();
            let read = store.get(&sk.public_key()).await.unwrap();
            assert_eq!(read, written, "data of {len} bytes");
        }
    }

    #[tokio::test]
    async fn damaged_files_read_as_corrupt_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let sk = SecretKey::random();
        store.create(pad(&sk, b"hello", 0)).await.unwrap();
        let path = store.pad_path(&sk.public_key());
        let bytes = fs::read(&path).unwrap();

        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            store.get(&sk.public_key()).await,
            Err(StoreError::Corrupt(_))
        ));
        // A flipped header byte is caught by the header's checksum...
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            store.get(&sk.public_key()).await,
            Err(StoreError::Corrupt(_))
        ));
        // ...a flipped data byte by the signature every reader checks.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        assert!(!store
            .get(&sk.public_key())
            .await
            .unwrap()
            .verify_signature());
        // Files of the first format (one codec record) are still read.
        fs::write(
            &path,
            codec::encode(Kind::PadRecord, &pad(&sk, b"old", 4)).unwrap(),
        )
        .unwrap();
        let old = store.get(&sk.public_key()).await.unwrap();
        assert_eq!(&old.decrypt_data(&sk).unwrap()[..], b"old");
        assert_eq!(
            store.update(pad(&sk, b"x", 4)).await.unwrap_err(),
            StoreError::StaleCounter {
                stored: 4,
                offered: 4
            }
        );
    }

    #[tokio::test]
    async fn parts_are_the_stored_bytes_and_nothing_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let sk = SecretKey::random();
        let pk = sk.public_key();
        assert_eq!(
            store.get_part(&pk, 0..1).await.unwrap_err(),
            StoreError::NotFound
        );
        store.create(pad(&sk, &[7; 50_000], 0)).await.unwrap();
        let whole = store.get(&pk).await.unwrap().encrypted_data().clone();
        for range in [0..1, 100..20_000, 0..whole.len(), whole.len()..whole.len()] {
            let part = store.get_part(&pk, range.clone()).await.unwrap().unwrap();
            assert_eq!(part, whole[range]);
        }
        assert!(matches!(
            store.get_part(&pk, 10..whole.len() + 1).await,
            Err(StoreError::Corrupt(_))
        ));
        // A file kept open for parts is let go when the pad is written: parts are of the
        // version stored now.
        store.update(pad(&sk, &[8; 50_000], 1)).await.unwrap();
        let whole = store.get(&pk).await.unwrap().encrypted_data().clone();
        let part = store.get_part(&pk, 0..whole.len()).await.unwrap().unwrap();
        assert_eq!(part, whole);
        // A truncated file cannot pass off zeros or a short read as the part.
        let path = store.pad_path(&pk);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(
            store.get_part(&pk, whole.len() - 20..whole.len()).await,
            Err(StoreError::Corrupt(_))
        ));
        // Files of the first format serve parts too (to a store opened since: this one keeps
        // the file it has open, rewritten behind its back).
        let old = pad(&sk, b"old format", 4);
        fs::write(&path, codec::encode(Kind::PadRecord, &old).unwrap()).unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let part = store.get_part(&pk, 3..9).await.unwrap().unwrap();
        assert_eq!(part, old.encrypted_data()[3..9]);
    }
}
