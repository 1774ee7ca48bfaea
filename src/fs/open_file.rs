//! The state of a regular file while it is open: its committed chunks, the chunks changed since
//! (buffered whole, in memory), and chunks already uploaded early to bound that memory. All
//! handles of one inode share it, so there is one writer per file. Chunk `i` covers bytes
//! `[i * cs, (i + 1) * cs)`; every chunk but the last is full.
//!
//! A big write streams: a sequential writer hands each chunk to its own background upload as
//! soon as it is full, so encryption and the store work while the writer goes on, with as
//! many chunks in flight as the write buffer holds. The writer waits only when the buffer is
//! full of uploads not yet done. A random writer's full chunks upload once half the buffer is
//! dirty. Memory stays within the write buffer, and all open files' buffers within the mount's
//! [`MemoryBudget`].
//!
//! Every wait for the store (a chunk read in, an upload, room in the budget) ends at the
//! caller's deadline with `ETIMEDOUT`, and leaves nothing half done: an upload that is late
//! goes on in its task and is taken in by the next call.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};

use autonomi::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::budget::{MemoryBudget, SMALL_BUFFER};
use super::dirty::{BufMut, DirtyChunks};
use super::read_pattern::{ReadPattern, ReadPlan};
use crate::buffers;
use crate::engine::{Engine, Error as EngineError};
use crate::index::segments::{MAX_WINDOWS, WINDOW_CHUNKS};
use crate::index::{Chunk, ChunkMap, Entry, Timestamp, MAX_DATA_CHUNKS, MAX_FILE_SIZE};

pub struct OpenFile {
    /// Chunk state; held across uploads, so one upload at a time per file.
    pub data: Mutex<FileData>,
    /// What `getattr` needs while data may be busy uploading.
    pub attrs: StdMutex<PendingAttrs>,
    /// When the entry its chunks came from was read: a pack compacted later may still be
    /// named by them (`Engine::drop_retired`).
    pub opened_at: std::time::Instant,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PendingAttrs {
    pub size: u64,
    /// Set by a write, cleared by an explicit utimens or a commit.
    pub written_at: Option<Timestamp>,
}

pub struct FileData {
    chunk_size: u64,
    /// The chunks of the last committed version (cut back by truncation).
    base: ChunkMap,
    /// Changed chunks, whole, keyed by chunk number; a buffer may be shorter than its chunk's
    /// extent, and the rest reads as zeros.
    dirty: DirtyChunks,
    /// Changed chunks uploaded before the commit (their pads are in flight in the engine).
    uploaded: BTreeMap<u64, Chunk>,
    /// Full chunks being uploaded in the background, one task each, readable meanwhile.
    uploading: BTreeMap<u64, Upload>,
    /// The bytes of `uploading`, and how many of them are big buffers.
    uploading_bytes: usize,
    uploading_big: usize,
    changed: bool,
    /// Where the last write ended: a write starting there continues a sequential stream.
    write_head: u64,
    reads: ReadPattern,
    /// The mount's budget, and the units of it these buffers hold.
    budget: Arc<MemoryBudget>,
    charged: usize,
}

struct Upload {
    bytes: Bytes,
    task: tokio::task::JoinHandle<Result<Vec<Chunk>, EngineError>>,
}

/// A write this big into a new chunk is likely the first of many: give the chunk a whole
/// chunk's room at once. Smaller ones (small files) grow their buffer as they go.
const BIG_WRITE: usize = SMALL_BUFFER;

/// `f`, or a timeout (`ETIMEDOUT`) at `deadline`. `f` must leave nothing half done if dropped.
async fn by_deadline<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout_at(deadline, f)
        .await
        .unwrap_or(Err(EngineError::Store(crate::store::StoreError::Timeout)))
}

/// Where the bytes of one chunk are now.
enum Source<'a> {
    /// Changed, in a buffer or an upload in progress.
    Dirty(&'a [u8]),
    Stored(Chunk),
    Zeros,
}

impl OpenFile {
    /// `opened_at`: taken before `entry` was read.
    pub fn new(
        entry: &Entry,
        chunk_size: usize,
        budget: Arc<MemoryBudget>,
        opened_at: std::time::Instant,
    ) -> Self {
        OpenFile {
            opened_at,
            data: Mutex::new(FileData {
                chunk_size: chunk_size as u64,
                base: entry.chunks.clone(),
                dirty: DirtyChunks::default(),
                uploaded: BTreeMap::new(),
                uploading: BTreeMap::new(),
                uploading_bytes: 0,
                uploading_big: 0,
                changed: false,
                write_head: 0,
                reads: ReadPattern::new(chunk_size as u64),
                budget,
                charged: 0,
            }),
            attrs: StdMutex::new(PendingAttrs {
                size: entry.size,
                written_at: None,
            }),
        }
    }

    pub fn size(&self) -> u64 {
        self.attrs.lock().unwrap().size
    }

    pub fn pending(&self) -> PendingAttrs {
        *self.attrs.lock().unwrap()
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset`: where the first byte at or after
    /// `offset` that holds data (or none) is, the end of the file counting as a hole; `None`
    /// from the end of the file on. Data is what chunks hold up to their length (a chunk's
    /// bytes past it and chunks without data read as zeros), so runs of zeros that were
    /// written count as data.
    pub async fn seek(
        &self,
        offset: u64,
        data: bool,
        deadline: Instant,
    ) -> Result<Option<u64>, EngineError> {
        let file = by_deadline(deadline, async { Ok(self.data.lock().await) }).await?;
        let size = self.size();
        if offset >= size {
            return Ok(None);
        }
        let cs = file.chunk_size;
        let (first, last) = (offset / cs, (size - 1) / cs);
        // The byte ranges holding data, in order, from the chunk `offset` is in on.
        let extents = (file.held().into_iter())
            .filter(|i| (first..=last).contains(i))
            .filter_map(|i| {
                let start = i * cs;
                let len = file.data_len(i)?;
                Some((start, (start + len.min(cs)).min(size)))
            })
            .filter(|&(start, end)| start < end && end > offset);
        let found = match data {
            true => extents.map(|(start, _)| start.max(offset)).next(),
            false => {
                let mut at = offset;
                for (start, end) in extents {
                    if start > at {
                        break;
                    }
                    at = end;
                }
                Some(at.min(size))
            }
        };
        Ok(found)
    }

    fn set_size(&self, size: u64, written: bool) {
        let mut attrs = self.attrs.lock().unwrap();
        attrs.size = size;
        if written {
            attrs.written_at = Some(Timestamp::now());
        }
    }

    /// Writes at `offset` and returns how many bytes were written: fewer than asked (a short
    /// write) when room for the rest did not come by `deadline`. Past `memory_limit` bytes of
    /// buffered chunks, full chunks are uploaded now (their pads stay in flight until the
    /// commit).
    pub async fn write(
        &self,
        engine: &Engine,
        offset: u64,
        bytes: &[u8],
        memory_limit: usize,
        deadline: Instant,
    ) -> Result<usize, EngineError> {
        // A write of nothing changes nothing, not even the size (POSIX).
        if bytes.is_empty() {
            return Ok(0);
        }
        let mut data = by_deadline(deadline, async { Ok(self.data.lock().await) }).await?;
        let size = self.size();
        let cs = data.chunk_size;
        data.check_room(offset / cs..=(offset + bytes.len() as u64 - 1) / cs)?;
        data.reap_uploads(engine, false, deadline).await?;
        // This file's own share: its uploads drain before it buffers more.
        while data.dirty.bytes() + data.uploading_bytes > memory_limit && !data.uploading.is_empty()
        {
            data.reap_one(engine, deadline).await?;
        }
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = offset + done as u64;
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = (cs as usize - within).min(bytes.len() - done);
            let piece = &bytes[done..done + n];
            let mut buf = match data
                .prepare_chunk(engine, idx, size, within, n, deadline)
                .await
            {
                Ok(buf) => buf,
                Err(e) if done == 0 => return Err(e),
                Err(e) => {
                    tracing::debug!("short write of {done} bytes: {e}");
                    break;
                }
            };
            // Overwrite what the buffer has, append the rest (zero-filling only a gap).
            let overlap = buf.len().saturating_sub(within).min(n);
            if overlap > 0 {
                buf[within..within + overlap].copy_from_slice(&piece[..overlap]);
            }
            if overlap < n {
                buf.resize(within + overlap, 0);
                buf.extend_from_slice(&piece[overlap..]);
            }
            done += n;
        }
        data.recount();
        data.changed = true;
        let end = offset + done as u64;
        self.set_size(size.max(end), true);
        if offset == data.write_head {
            // The chunks this write finished are behind a sequential writer: upload them now.
            let finished = (offset / cs..end / cs)
                .filter(|i| data.is_full(*i))
                .collect();
            data.start_uploads(engine, finished);
        }
        data.write_head = end;
        if data.dirty.bytes() > memory_limit / 2 {
            let full = data
                .dirty
                .keys()
                .copied()
                .filter(|&i| data.is_full(i))
                .collect();
            data.start_uploads(engine, full);
        }
        Ok(done)
    }

    /// Cuts or extends the file to `size`; bytes past the old end read as zeros.
    pub async fn truncate(
        &self,
        engine: &Engine,
        size: u64,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let mut data = by_deadline(deadline, async { Ok(self.data.lock().await) }).await?;
        data.reap_uploads(engine, true, deadline).await?;
        let old = self.size();
        if size == old {
            return Ok(());
        }
        let cs = data.chunk_size;
        if size < old {
            let keep = size.div_ceil(cs);
            if !size.is_multiple_of(cs) {
                let last = size / cs;
                let mut buf = data.materialize(engine, last, old, 0, deadline).await?;
                buf.truncate((size % cs) as usize);
            }
            data.base.truncate(keep);
            data.dirty.truncate(keep);
            let dropped: Vec<Chunk> = data.uploaded.split_off(&keep).into_values().collect();
            engine.discard_chunks(&dropped).await;
        }
        data.recount();
        data.changed = true;
        self.set_size(size, true);
        Ok(())
    }

    /// Makes `[offset, end)` read as zeros (`fallocate` with `PUNCH_HOLE` or `ZERO_RANGE`):
    /// chunks the range covers whole become holes, and give their pads back at the commit;
    /// the chunks at its two ends are zeroed in their buffers. Without `keep_size` a range
    /// reaching past the end extends the file.
    pub async fn zero_range(
        &self,
        engine: &Engine,
        offset: u64,
        end: u64,
        keep_size: bool,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let mut data = by_deadline(deadline, async { Ok(self.data.lock().await) }).await?;
        data.reap_uploads(engine, true, deadline).await?;
        let size = self.size();
        let zero_end = end.min(size);
        let cs = data.chunk_size;
        let touched = match offset < zero_end {
            true => offset / cs..zero_end.div_ceil(cs),
            false => 0..0,
        };
        let held: Vec<u64> = data.held().range(touched).copied().collect();
        for idx in held {
            let start = idx * cs;
            let extent = (start + cs).min(size) - start;
            let from = offset.saturating_sub(start);
            let to = (zero_end - start).min(extent);
            if from == 0 && to == extent {
                data.dirty.insert(idx, Vec::new());
                continue;
            }
            let (from, to) = (from as usize, to as usize);
            let mut buf = data
                .prepare_chunk(engine, idx, size, from, to - from, deadline)
                .await?;
            let len = buf.len();
            if to >= len {
                buf.truncate(from.min(len));
            } else {
                buf[from..to].fill(0);
            }
        }
        data.recount();
        data.changed = true;
        let new_size = if keep_size { size } else { size.max(end) };
        self.set_size(new_size, true);
        Ok(())
    }

    /// Up to `len` bytes at `offset`, including writes not yet committed. A read within one
    /// stored chunk (the common case: the kernel asks for at most 1 MiB) shares the cached
    /// plaintext instead of copying it.
    pub async fn read(
        &self,
        engine: &Engine,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, EngineError> {
        let size = self.size();
        if offset >= size {
            return Ok(Bytes::new());
        }
        let end = size.min(offset + len as u64);
        let mut plan = Vec::new();
        let mut prefetch = Vec::new();
        let random;
        {
            let mut data = self.data.lock().await;
            let cs = data.chunk_size;
            let mut pos = offset;
            while pos < end {
                let idx = pos / cs;
                let from = (pos % cs) as usize;
                let to = ((end - idx * cs).min(cs)) as usize;
                let piece = match data.source(idx) {
                    Source::Dirty(buf) => {
                        let mut out = vec![0; to - from];
                        if from < buf.len() {
                            let n = buf.len().min(to) - from;
                            out[..n].copy_from_slice(&buf[from..from + n]);
                        }
                        Ok(out)
                    }
                    Source::Stored(chunk) => Err((chunk, from, to)),
                    Source::Zeros => Ok(vec![0; to - from]),
                };
                plan.push(piece);
                pos = idx * cs + to as u64;
            }
            let remote = engine.store_is_remote();
            let ahead = match data.reads.observe(offset, end, remote) {
                ReadPlan::Part => 0,
                ReadPlan::Stream { ahead } => ahead,
            };
            random = ahead == 0;
            // Chunks fetched ahead wait in the chunk cache: at most half of it.
            let room = engine.cache_capacity() as u64 / 2;
            let mut wanted = end.div_ceil(cs)..end.div_ceil(cs) + ahead.min(room / cs);
            // Over a network a random reader waits a round trip for each chunk it misses. A
            // file that fits in that half of the cache is fetched whole, in the background,
            // at its second random read; later reads find their chunks cached.
            if random && remote && size <= room && data.reads.random_reads() == 2 {
                wanted = 0..size.div_ceil(cs);
            }
            for idx in wanted {
                if let Source::Stored(chunk) = data.source(idx) {
                    prefetch.push(chunk);
                }
            }
        }
        engine.prefetch(prefetch);
        let stored: Vec<(crate::index::Chunk, usize, usize)> = plan
            .iter()
            .filter_map(|p| p.as_ref().err().cloned())
            .collect();
        // A random reader gets only the blocks its bytes lie in; a sequential one whole
        // chunks, which it goes on to read (and which read-ahead fetched).
        let reads: Vec<_> = stored
            .iter()
            .map(|(chunk, from, to)| async move {
                if random {
                    engine.read_chunk_part(chunk, *from, *to).await
                } else {
                    engine.read_chunk_slice(chunk, *from, *to).await
                }
            })
            .collect();
        let mut fetched = futures::future::try_join_all(reads).await?.into_iter();
        if let ([Err((_, from, to))], [bytes]) = (plan.as_slice(), fetched.as_slice()) {
            if bytes.len() == to - from {
                return Ok(bytes.clone());
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for piece in plan {
            match piece {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err((_, from, to)) => {
                    let bytes = fetched.next().expect("one per stored piece");
                    out.extend_from_slice(&bytes);
                    // A stored chunk shorter than its extent (the file grew) reads as zeros.
                    out.resize(out.len() + (to - from) - bytes.len(), 0);
                }
            }
        }
        out.resize((end - offset) as usize, 0);
        Ok(Bytes::from(out))
    }

    /// Whether there is anything to commit.
    pub async fn is_changed(&self) -> bool {
        self.data.lock().await.changed
    }

    /// Uploads every changed chunk and returns the new chunk list, with the data lock held so
    /// nothing changes until `committed` or `failed` is called with it.
    pub async fn prepare_commit<'a>(
        &'a self,
        engine: &Engine,
        deadline: Instant,
    ) -> Result<Option<(tokio::sync::MutexGuard<'a, FileData>, ChunkMap, u64)>, EngineError> {
        let mut data = by_deadline(deadline, async { Ok(self.data.lock().await) }).await?;
        if !data.changed {
            return Ok(None);
        }
        data.reap_uploads(engine, true, deadline).await?;
        let size = self.size();
        data.normalize(engine, size, deadline).await?;
        let all = data.dirty.keys().copied().collect();
        data.start_uploads(engine, all);
        data.reap_uploads(engine, true, deadline).await?;
        let count = size.div_ceil(data.chunk_size);
        let mut chunks = data.base.clone();
        chunks.truncate(count);
        for (&idx, chunk) in data.uploaded.range(..count) {
            // An uploaded hole (a chunk rewritten as zeros) clears the stored one.
            chunks.insert(idx, chunk.clone());
        }
        Ok(Some((data, chunks, size)))
    }
}

impl FileData {
    fn source(&self, idx: u64) -> Source<'_> {
        if let Some(buf) = self.dirty.get(&idx) {
            return Source::Dirty(buf);
        }
        if let Some(upload) = self.uploading.get(&idx) {
            return Source::Dirty(&upload.bytes);
        }
        match self.uploaded.get(&idx).or_else(|| self.base.get(idx)) {
            Some(chunk) => Source::Stored(chunk.clone()),
            None => Source::Zeros,
        }
    }

    /// Whether chunk `idx` may hold data now (stored, changed or being uploaded).
    fn holds(&self, idx: u64) -> bool {
        self.base.get(idx).is_some()
            || self.uploaded.contains_key(&idx)
            || self.dirty.contains_key(&idx)
            || self.uploading.contains_key(&idx)
    }

    /// Refuses a write that would give the file more chunks of data than its index entry can
    /// list (`MAX_DATA_CHUNKS`), or spread them over more windows (`segments::MAX_WINDOWS`),
    /// before anything is buffered.
    fn check_room(&self, chunks: std::ops::RangeInclusive<u64>) -> Result<(), EngineError> {
        let new: Vec<u64> = chunks.filter(|&i| !self.holds(i)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let bound = self.base.len() + self.uploaded.len() + self.dirty.len() + self.uploading.len();
        if bound + new.len() > MAX_DATA_CHUNKS && self.held().len() + new.len() > MAX_DATA_CHUNKS {
            return Err(EngineError::TooLarge(format!(
                "a file of more than {MAX_DATA_CHUNKS} chunks of data"
            )));
        }
        // Only chunks under 2 MiB can spread a file of the largest size over more windows
        // than it may, and windows are counted again only when a write opens a new one.
        let spreadable = self.chunk_size < MAX_FILE_SIZE / (WINDOW_CHUNKS * MAX_WINDOWS as u64);
        if !spreadable || bound + new.len() <= MAX_WINDOWS {
            return Ok(());
        }
        let opens_one = new
            .iter()
            .any(|&i| !self.holds_in_window(i / WINDOW_CHUNKS));
        if !opens_one {
            return Ok(());
        }
        let mut windows: std::collections::BTreeSet<u64> =
            self.held().into_iter().map(|i| i / WINDOW_CHUNKS).collect();
        windows.extend(new.iter().map(|i| i / WINDOW_CHUNKS));
        if windows.len() > MAX_WINDOWS {
            return Err(EngineError::TooLarge(format!(
                "a file whose data lies in more than {MAX_WINDOWS} ranges of {WINDOW_CHUNKS} chunks"
            )));
        }
        Ok(())
    }

    /// Whether any chunk of window `window` may hold data now.
    fn holds_in_window(&self, window: u64) -> bool {
        let range = window * WINDOW_CHUNKS..(window + 1) * WINDOW_CHUNKS;
        self.base.any_in(range.clone())
            || self.uploaded.range(range.clone()).next().is_some()
            || self.dirty.range(range.clone()).next().is_some()
            || self.uploading.range(range).next().is_some()
    }

    /// How many bytes from its start chunk `idx` holds (the rest of it reads as zeros), or
    /// `None` if it holds no data.
    fn data_len(&self, idx: u64) -> Option<u64> {
        match self.source(idx) {
            Source::Dirty(buf) => Some(buf.len() as u64),
            Source::Stored(chunk) => chunk.has_data().then_some(u64::from(chunk.len)),
            Source::Zeros => None,
        }
    }

    /// The chunks that may hold data now: stored, changed or being uploaded.
    fn held(&self) -> std::collections::BTreeSet<u64> {
        let mut held: std::collections::BTreeSet<u64> = self.base.indices().collect();
        held.extend(self.uploaded.keys());
        held.extend(self.dirty.keys());
        held.extend(self.uploading.keys());
        held
    }

    /// The buffer of chunk `idx`, read in from the store the first time it changes. A write
    /// of `writing` bytes is coming: a big one gets a whole chunk's room from the pool.
    async fn materialize(
        &mut self,
        engine: &Engine,
        idx: u64,
        size: u64,
        writing: usize,
        deadline: Instant,
    ) -> Result<BufMut<'_>, EngineError> {
        if !self.dirty.contains_key(&idx) {
            let cs = self.chunk_size as usize;
            let mut buf = match self.source(idx) {
                Source::Stored(chunk) => {
                    let stored = by_deadline(deadline, engine.read_chunk(&chunk)).await?;
                    buffers::copy_of(&stored, cs)
                }
                Source::Dirty(uploading) => buffers::copy_of(uploading, cs),
                Source::Zeros if writing >= BIG_WRITE => buffers::take(cs),
                Source::Zeros => Vec::new(),
            };
            // Bytes past the file's end (left by an earlier truncation) are not content.
            let extent = size
                .saturating_sub(idx * self.chunk_size)
                .min(self.chunk_size);
            buf.truncate(extent as usize);
            self.dirty.insert(idx, buf);
        }
        Ok(self.dirty.get_mut(idx).expect("inserted above"))
    }

    /// The big buffers other than chunk `keep`'s (only the full ones, with `full_only`).
    fn spare_buffers(&self, keep: u64, full_only: bool) -> Vec<u64> {
        self.dirty
            .iter()
            .filter(|(&i, b)| {
                i != keep
                    && b.len() >= SMALL_BUFFER
                    && (!full_only || b.len() as u64 == self.chunk_size)
            })
            .map(|(&i, _)| i)
            .collect()
    }

    /// Settles the units of the budget the buffers hold.
    fn recount(&mut self) {
        let wanted = self.units_wanted();
        if wanted > self.charged {
            self.budget.force(wanted - self.charged);
        } else {
            self.budget.give_back(self.charged - wanted);
        }
        self.charged = wanted;
    }

    /// Units of the budget the buffers need: one per buffer past [`SMALL_BUFFER`].
    fn units_wanted(&self) -> usize {
        self.dirty.big() + self.uploading_big
    }

    /// Readies chunk `idx` for a write of `n` bytes at `within`: room in the budget if its
    /// buffer is to grow big, then the buffer (read in from the store if need be).
    async fn prepare_chunk(
        &mut self,
        engine: &Engine,
        idx: u64,
        size: u64,
        within: usize,
        n: usize,
        deadline: Instant,
    ) -> Result<BufMut<'_>, EngineError> {
        let now = match self.dirty.get(&idx) {
            Some(buf) => buf.len(),
            None => size
                .saturating_sub(idx * self.chunk_size)
                .min(self.chunk_size) as usize,
        };
        let charged_now = self
            .dirty
            .get(&idx)
            .is_some_and(|b| b.len() >= SMALL_BUFFER);
        if !charged_now
            && now.max(within + n) >= SMALL_BUFFER
            && self.charged <= self.units_wanted()
        {
            self.make_room(engine, idx, deadline).await?;
        }
        self.materialize(engine, idx, size, n, deadline).await
    }

    /// Takes a unit of the budget for chunk `keep`. With none free, this file's own buffers go
    /// first: its full chunks start uploading, its uploads are waited for, then its other
    /// buffers upload too (a short one is read back at the commit if the file goes on past
    /// it). Only holding nothing does it queue for room others give back.
    async fn make_room(
        &mut self,
        engine: &Engine,
        keep: u64,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        loop {
            if self.budget.try_take() {
                self.charged += 1;
                return Ok(());
            }
            let full = self.spare_buffers(keep, true);
            if !full.is_empty() {
                self.start_uploads(engine, full);
                continue;
            }
            if !self.uploading.is_empty() {
                self.reap_one(engine, deadline).await?;
                continue;
            }
            let partial = self.spare_buffers(keep, false);
            if !partial.is_empty() {
                self.start_uploads(engine, partial);
                continue;
            }
            let budget = self.budget.clone();
            by_deadline(deadline, async move {
                budget.take().await;
                Ok(())
            })
            .await?;
            self.charged += 1;
            return Ok(());
        }
    }

    /// Brings every kept chunk within its extent: a stored chunk longer than the file now
    /// leaves it is read in and cut. A chunk shorter than its extent is left short (it reads
    /// as zeros past its end), so a file written sparsely stores only what was written: a few
    /// bytes in a chunk go inline or into a pack rather than a whole pad of zeros.
    async fn normalize(
        &mut self,
        engine: &Engine,
        size: u64,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let cs = self.chunk_size;
        let count = size.div_ceil(cs);
        // Only chunks that hold something can be long; the rest are holes.
        for idx in self.held().range(..count).copied().collect::<Vec<_>>() {
            let extent = (size - idx * cs).min(cs) as usize;
            let stored_len = match self.source(idx) {
                Source::Stored(chunk) if chunk.has_data() => Some(chunk.len as usize),
                _ => None,
            };
            if stored_len.is_some_and(|len| len > extent) {
                self.materialize(engine, idx, size, 0, deadline).await?;
            }
            if let Some(mut buf) = self.dirty.get_mut(idx) {
                buf.truncate(extent);
            }
        }
        self.recount();
        Ok(())
    }

    /// Whether chunk `idx` is dirty and holds a whole chunk.
    fn is_full(&self, idx: u64) -> bool {
        self.dirty
            .get(&idx)
            .is_some_and(|buf| buf.len() as u64 == self.chunk_size)
    }

    /// Moves these dirty chunks to background uploads, one task each.
    fn start_uploads(&mut self, engine: &Engine, which: Vec<u64>) {
        for idx in which {
            if self.uploading.contains_key(&idx) {
                continue; // rewritten while uploading: it goes again once that one is done
            }
            let Some(buf) = self.dirty.remove(idx) else {
                continue;
            };
            let bytes = buffers::share(buf);
            let (engine, piece, budget) = (engine.clone(), bytes.clone(), self.budget.clone());
            let task = tokio::spawn(async move {
                let _turn = budget.upload_slot().await;
                engine.write_chunks(vec![piece], None).await
            });
            self.uploading_bytes += bytes.len();
            self.uploading_big += usize::from(bytes.len() >= SMALL_BUFFER);
            self.uploading.insert(idx, Upload { bytes, task });
        }
        self.recount();
    }

    /// Takes in the uploads that are done, or (with `wait`) all of them. A failed upload's
    /// buffer becomes dirty again (unless rewritten since); the first error is returned once
    /// every upload waited for is settled.
    async fn reap_uploads(
        &mut self,
        engine: &Engine,
        wait: bool,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let done: Vec<u64> = self
            .uploading
            .iter()
            .filter(|(_, u)| wait || u.task.is_finished())
            .map(|(&idx, _)| idx)
            .collect();
        let mut first_error = None;
        for idx in done {
            if let Err(e) = self.settle(engine, idx, deadline).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits for the earliest chunk's upload.
    async fn reap_one(&mut self, engine: &Engine, deadline: Instant) -> Result<(), EngineError> {
        match self.uploading.keys().next().copied() {
            Some(idx) => self.settle(engine, idx, deadline).await,
            None => Ok(()),
        }
    }

    /// Takes in chunk `idx`'s upload once it is done. Past `deadline` the upload stays where
    /// it is, still running.
    async fn settle(
        &mut self,
        engine: &Engine,
        idx: u64,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let running = &mut self.uploading.get_mut(&idx).expect("an upload").task;
        let result = by_deadline(deadline, async {
            Ok(running.await.expect("upload task panicked"))
        })
        .await?;
        let upload = self.uploading.remove(&idx).expect("an upload in progress");
        self.uploading_bytes -= upload.bytes.len();
        self.uploading_big -= usize::from(upload.bytes.len() >= SMALL_BUFFER);
        let outcome = match result {
            Ok(chunks) => {
                let chunk = chunks.into_iter().next().expect("one chunk per upload");
                let replaced = self.uploaded.insert(idx, chunk);
                engine.discard_chunks(replaced.as_slice()).await;
                Ok(())
            }
            Err(e) => {
                if !self.dirty.contains_key(&idx) {
                    self.dirty.insert(idx, upload.bytes.to_vec());
                }
                Err(e)
            }
        };
        self.recount();
        outcome
    }

    /// After the new chunk list is installed in the index: it is the new base.
    pub fn committed(&mut self, chunks: ChunkMap) {
        self.base = chunks;
        self.uploaded.clear();
        self.changed = false;
    }

    /// Pads in flight that will never be installed (the file is gone). Uploads still running
    /// give theirs back when they end, without anyone waiting for them.
    pub fn take_uploaded(&mut self, engine: &Engine) -> Vec<Chunk> {
        (self.uploading_bytes, self.uploading_big) = (0, 0);
        let running: Vec<_> = std::mem::take(&mut self.uploading)
            .into_values()
            .map(|u| u.task)
            .collect();
        if !running.is_empty() {
            let engine = engine.clone();
            tokio::spawn(async move {
                for task in running {
                    match task.await.expect("upload task panicked") {
                        Ok(chunks) => engine.discard_chunks(&chunks).await,
                        Err(e) => tracing::debug!("upload of a deleted file failed: {e}"),
                    }
                }
            });
        }
        self.dirty.clear();
        self.changed = false;
        self.recount();
        std::mem::take(&mut self.uploaded).into_values().collect()
    }
}

impl Drop for FileData {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
    }
}
