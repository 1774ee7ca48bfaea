//! Packing: small files and the short tails of large ones share pads.
//!
//! A pad costs the same (on the network, a payment) whether it holds 5 KiB or 4 MiB, so a tree
//! of small files given a pad each costs a pad per file. Instead, a piece longer than an index
//! page keeps inline and shorter than [`Engine::pack_limit`] is held inline in the index from its
//! close (journaled, so it is as durable as any change), and the next commit packs every such
//! piece into as few pads as they fit: a pack is the header [`HEADER`] then the pieces one after
//! another, and each chunk names its pack and the range its bytes lie in (`Chunk::pad_offset`,
//! never 0 for a piece). A pack is sealed without a content hash (the index holds none for the
//! pack as a whole) but bound to its version; each piece is checked against its own hash.
//!
//! A pack is written once and never changed while the index references it. It is freed when
//! its last piece leaves the index (`State::pack_users` counts them); a pack left with a few
//! live pieces keeps its pad until they go.
//!
//! The pieces a commit packs are those in the pages it is about to write. So that none slips in
//! between packing and the page snapshot, the commit's last packing pass holds the pack gate,
//! which a change bringing a piece to pack waits for; a change that brings none never does.

use std::collections::{HashMap, HashSet};

use autonomi::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::pads::{Priority, PACK_ENCODING};
use super::{Engine, Error, Result};
use crate::codec::HashKind;
use crate::index::{retired_key, Chunk, ChunkMap, Entry, Meta, PadRef};
use crate::keys::PadSeed;
use crate::seal::NO_CONTENT_HASH;

/// The first bytes of a pack's plaintext; the first piece starts after them, so that a chunk
/// with an offset is exactly a piece of a pack.
pub const HEADER: &[u8; 8] = b"MMPACK01";

/// Bytes held inline awaiting a pack past which a close asks for a commit now rather than at
/// the next interval.
const BACKLOG_COMMIT: usize = 16 << 20;
/// Bytes held inline awaiting a pack past which pieces get pads of their own: the memory the
/// index and the journal hold for them stays bounded whatever the writers do.
const BACKLOG_MAX: usize = 32 << 20;

/// Packs under half full past which a commit compacts them (see [`Engine::compact_packs`]).
const COMPACT_AT: usize = 8;

/// What the index holds in one pack: its pieces (chunks naming it) and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackUse {
    pieces: u32,
    bytes: u64,
}

impl PackUse {
    pub(super) fn add(&mut self, len: u32) {
        self.pieces += 1;
        self.bytes += u64::from(len);
    }

    /// Drops a piece; true if it was the last.
    pub(super) fn remove(&mut self, len: u32) -> bool {
        self.pieces -= 1;
        self.bytes -= u64::from(len);
        self.pieces == 0
    }
}

/// When the pieces now waiting for a commit started and last arrived.
#[derive(Default)]
pub(super) struct PackClock {
    first: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

impl PackClock {
    /// Nothing waits any more.
    pub(super) fn reset(&mut self) {
        *self = PackClock::default();
    }
}

/// One piece to pack: its hash (which names it: equal pieces are packed once) and bytes.
struct Piece {
    hash: [u8; 32],
    kind: HashKind,
    data: Vec<u8>,
}

/// A pack to write: its pieces, each with the offset it goes at.
struct Layout {
    pieces: Vec<(Piece, u32)>,
    len: usize,
}

impl Layout {
    fn new() -> Self {
        Layout {
            pieces: Vec::new(),
            len: HEADER.len(),
        }
    }

    fn plaintext(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        out.extend_from_slice(HEADER);
        for (piece, _) in &self.pieces {
            out.extend_from_slice(&piece.data);
        }
        Bytes::from(out)
    }
}

/// Lays pieces out in packs of at most `capacity` bytes, in the order given (the index's key
/// order, so the files of a directory tend to share a pack and a read-ahead), each piece into the
/// first pack with room for it.
fn lay_out(pieces: Vec<Piece>, capacity: usize) -> Vec<Layout> {
    let mut packs: Vec<Layout> = Vec::new();
    for piece in pieces {
        let len = piece.data.len();
        let pack = match packs.iter_mut().position(|p| p.len + len <= capacity) {
            Some(i) => &mut packs[i],
            None => {
                packs.push(Layout::new());
                packs.last_mut().expect("just pushed")
            }
        };
        let offset = pack.len as u32;
        pack.len += len;
        pack.pieces.push((piece, offset));
    }
    packs
}

/// The chunk cache's name for a pack's whole plaintext: no content hash equals it.
pub(super) fn cache_tag(pad: &PadRef) -> [u8; 32] {
    let mut tag = crate::codec::sha256(&pad.counter.unwrap_or(0).to_be_bytes());
    tag[0] ^= 0xa5;
    tag
}

impl Engine {
    /// The longest piece held inline for packing: a quarter of a chunk, so that a pack holds at
    /// least four and a piece longer goes on having a pad of its own.
    pub fn pack_limit(&self) -> usize {
        self.chunk_size() / 4
    }

    /// Whether a close may hold another piece inline for packing: false once the pieces waiting
    /// for a commit reach [`BACKLOG_MAX`] bytes. Past [`BACKLOG_COMMIT`] a commit is started.
    pub(super) fn may_hold_for_packing(&self, adding: usize) -> bool {
        use std::sync::atomic::Ordering;
        let waiting = self.inner.pack_backlog.fetch_add(adding, Ordering::Relaxed) + adding;
        if waiting > BACKLOG_MAX {
            self.inner.pack_backlog.fetch_sub(adding, Ordering::Relaxed);
            return false;
        }
        let now = std::time::Instant::now();
        let mut clock = self.inner.pack_clock.lock().unwrap();
        clock.first.get_or_insert(now);
        clock.last = Some(now);
        drop(clock);
        if waiting > BACKLOG_COMMIT && !self.inner.pack_commit_asked.swap(true, Ordering::Relaxed) {
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.commit().await {
                    tracing::warn!("a commit to pack small files failed (will retry): {e}");
                }
            });
        }
        true
    }

    /// Whether a commit every `interval` should happen now, as far as packing goes: not while
    /// small files are still arriving, so that a copy of many small files fills whole packs
    /// rather than one part-filled pack per interval (a backlog of [`BACKLOG_COMMIT`] starts a
    /// commit of its own); but never more than five intervals after the first of them.
    pub fn commit_due(&self, interval: std::time::Duration) -> bool {
        let clock = self.inner.pack_clock.lock().unwrap();
        let (Some(first), Some(last)) = (clock.first, clock.last) else {
            return true;
        };
        last.elapsed() >= interval || first.elapsed() >= 5 * interval
    }

    /// Packs every piece awaiting packing in the pages a commit would write: writes the packs,
    /// then points each chunk holding such a piece at its range in its pack. A piece changed
    /// meanwhile is left as it is (its bytes in a pack are never read); a pack left with no piece
    /// goes back to the free list. On a failed write every pad taken goes back, and the index is
    /// as it was.
    pub(super) async fn pack_pending(&self) -> Result<()> {
        let limit = self.inline_limit();
        let layouts = {
            let mut state = self.inner.state.lock().await;
            let mut seen = std::collections::HashSet::new();
            let mut pieces = Vec::new();
            for chunk in state.index.dirty_chunks_mut() {
                if chunk.awaits_packing(limit) && seen.insert(chunk.hash) {
                    let data = chunk.inline.clone().expect("awaits packing");
                    pieces.push(Piece {
                        hash: chunk.hash,
                        kind: chunk.hash_kind,
                        data,
                    });
                }
            }
            if pieces.is_empty() {
                return Ok(());
            }
            let layouts = lay_out(pieces, self.chunk_size());
            let pads: Vec<PadRef> = layouts
                .iter()
                .map(|layout| state.take_pad(&self.inner.pads, layout.len))
                .collect();
            self.inner.log_fresh(&mut state);
            state.in_flight.extend(pads.iter().map(|p| p.seed));
            layouts.into_iter().zip(pads).collect::<Vec<_>>()
        };
        let taken: Vec<PadRef> = layouts.iter().map(|(_, pad)| *pad).collect();
        let writes = layouts.into_iter().map(|(layout, pad)| {
            let inner = self.inner.clone();
            async move {
                let plaintext = layout.plaintext();
                let written = (inner.pads)
                    .write(pad, PACK_ENCODING, plaintext.clone(), NO_CONTENT_HASH)
                    .await?;
                inner
                    .cache
                    .insert(written.seed, cache_tag(&written), plaintext);
                Ok::<_, Error>((layout, written))
            }
        });
        let written: Vec<(Layout, PadRef)> = match futures::stream::iter(writes)
            .buffer_unordered(self.inner.opts.parallelism.max(1))
            .try_collect()
            .await
        {
            Ok(written) => written,
            Err(e) => {
                // None of them is referenced: the index still holds the pieces inline.
                self.return_pads(taken).await;
                return Err(e);
            }
        };

        let mut places: HashMap<[u8; 32], Chunk> = HashMap::new();
        for (layout, pad) in &written {
            for (piece, offset) in &layout.pieces {
                let len = piece.data.len() as u32;
                let chunk = Chunk::packed(*pad, *offset, len, piece.hash, piece.kind);
                places.insert(piece.hash, chunk);
            }
        }
        let mut state = self.inner.state.lock().await;
        let mut users: HashMap<_, PackUse> = HashMap::new();
        for chunk in state.index.dirty_chunks_mut() {
            if !chunk.awaits_packing(limit) {
                continue;
            }
            if let Some(place) = places
                .get(&chunk.hash)
                .filter(|p| p.hash_kind == chunk.hash_kind)
            {
                *chunk = place.clone();
                let seed = place.pad.expect("packed").seed;
                users.entry(seed).or_default().add(place.len);
            }
        }
        let mut unused = Vec::new();
        for (_, pad) in written {
            state.in_flight.remove(&pad.seed);
            match users.get(&pad.seed) {
                Some(&used) => {
                    state.pack_users.insert(pad.seed, used);
                }
                None => unused.push(pad),
            }
        }
        if !unused.is_empty() {
            state.free_unsaved = true;
            state.index.free_pads.extend(unused);
        }
        Ok(())
    }
}

impl Engine {
    /// Compacts packs most of whose pieces are gone, once there are [`COMPACT_AT`] of them
    /// (a pad each, paid for on the network, for little data): the pieces left in them are put
    /// back inline, for this commit to pack with the new ones, and each compacted pack stays
    /// referenced under its retired key until the next mount drops it. Until then a reader or
    /// a writer may hold a chunk naming it (an open file keeps its chunk list), and the pack
    /// must still hold what such a chunk names. A pack that cannot be read is left as it is
    /// (`fsck` reports it); nothing here fails a commit.
    pub(super) async fn compact_packs(&self) {
        let half = self.chunk_size() as u64 / 2;
        let victims: Vec<PadRef> = {
            let state = self.inner.state.lock().await;
            let mut sparse: Vec<(u64, PadSeed)> = (state.pack_users.iter())
                .filter(|(_, used)| used.bytes > 0 && used.bytes < half)
                .map(|(seed, used)| (used.bytes, *seed))
                .collect();
            if sparse.len() < COMPACT_AT {
                return;
            }
            sparse.sort_unstable();
            // At most four packs' worth of pieces move in one commit.
            let mut budget = 4 * half;
            let chosen: HashSet<PadSeed> = (sparse.into_iter())
                .take_while(|(bytes, _)| budget.checked_sub(*bytes).map(|b| budget = b).is_some())
                .map(|(_, seed)| seed)
                .collect();
            let mut pads = HashMap::new();
            for (_, entry) in state.index.entries() {
                for pad in entry.pieces().filter_map(|c| c.pad) {
                    if chosen.contains(&pad.seed) {
                        pads.insert(pad.seed, pad);
                    }
                }
            }
            pads.into_values().collect()
        };
        let reads = victims.iter().map(|pad| async move {
            let pack = self.inner.pack(*pad, Priority::Background).await;
            (*pad, pack)
        });
        let mut packs: HashMap<PadSeed, Bytes> = HashMap::new();
        for (pad, pack) in futures::future::join_all(reads).await {
            match pack {
                Ok(pack) => {
                    packs.insert(pad.seed, pack);
                }
                Err(e) => tracing::warn!("a pack to compact could not be read; left as it is: {e}"),
            }
        }
        if packs.len() < 2 {
            return;
        }
        let mut state = self.inner.state.lock().await;
        let state = &mut *state;
        let mut moved: HashMap<PadSeed, PackUse> = HashMap::new();
        state.index.change_chunks(|chunk| {
            let Some(pad) = chunk.pad.filter(|_| chunk.is_packed()) else {
                return false;
            };
            let Some(pack) = packs.get(&pad.seed) else {
                return false;
            };
            let (from, len) = (chunk.pad_offset as usize, chunk.len as usize);
            let Some(piece) = pack.get(from..from + len) else {
                return false;
            };
            if chunk.hash_kind != HashKind::default() || chunk.hash_kind.hash(piece) != chunk.hash {
                return false;
            }
            moved.entry(pad.seed).or_default().add(chunk.len);
            *chunk = Chunk::inline(piece.to_vec());
            true
        });
        for (seed, gone) in moved {
            let pad = *victims.iter().find(|p| p.seed == seed).expect("a victim");
            let used = state.pack_users.get_mut(&seed).expect("counted");
            used.pieces -= gone.pieces;
            used.bytes -= gone.bytes;
            let empty = HashKind::default().hash(&[]);
            let keeper = Chunk::packed(pad, HEADER.len() as u32, 0, empty, HashKind::default());
            let entry = Entry {
                chunks: ChunkMap::from_ordered([keeper]),
                ..Entry::empty(Meta::default())
            };
            used.add(0);
            let key = retired_key(&seed);
            if let Some(old) = state.index.insert(key.clone(), entry) {
                state.release(&old, &std::collections::HashSet::new());
            }
            let mut retired = self.inner.retired.lock().unwrap();
            retired.retain(|(k, _)| *k != key);
            retired.push((key, std::time::Instant::now()));
        }
    }

    /// Drops the keys of packs compacted before `before` (when the oldest chunk list still in
    /// use was read): their packs are free once that is committed. Those of an earlier mount
    /// are due at once.
    pub async fn drop_retired(&self, before: std::time::Instant) -> Result<()> {
        let due: Vec<String> = {
            let retired = self.inner.retired.lock().unwrap();
            (retired.iter())
                .filter(|(_, at)| *at < before)
                .map(|(key, _)| key.clone())
                .collect()
        };
        for key in due {
            match self.remove(&key).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            self.inner
                .retired
                .lock()
                .unwrap()
                .retain(|(k, _)| *k != key);
        }
        Ok(())
    }
}

impl super::Inner {
    /// A pack's plaintext, from the cache or the store.
    async fn pack(self: &std::sync::Arc<Self>, pad: PadRef, priority: Priority) -> Result<Bytes> {
        let tag = cache_tag(&pad);
        match self.cache.get(&pad.seed, &tag) {
            Some(pack) => Ok(pack),
            None => self.fetch_pack(pad, tag, priority).await,
        }
    }

    /// A piece of a pack: the pack from the cache or the store (fetched once however many of its
    /// pieces are asked for), cut and checked against the piece's hash.
    pub(super) async fn fetch_piece(
        self: &std::sync::Arc<Self>,
        chunk: &Chunk,
        priority: Priority,
    ) -> Result<Bytes> {
        let pad = chunk.pad.expect("a packed chunk has a pad");
        let pack = self.pack(pad, priority).await?;
        let (from, len) = (chunk.pad_offset as usize, chunk.len as usize);
        let corrupt = |why: &str| Error::CorruptPad {
            pad: format!("{:02x?}", &pad.seed[..4]),
            why: why.into(),
        };
        if from + len > pack.len() || !pack.starts_with(HEADER) {
            return Err(corrupt("a piece lies outside its pack"));
        }
        let piece = pack.slice(from..from + len);
        let (kind, checked) = (chunk.hash_kind, piece.clone());
        let hash = super::crypto_pool::blocking(priority, move || kind.hash(&checked)).await;
        if hash != chunk.hash {
            return Err(corrupt("a piece does not match its hash"));
        }
        self.cache.insert(pad.seed, chunk.hash, piece.clone());
        Ok(piece)
    }

    fn fetch_pack(
        self: &std::sync::Arc<Self>,
        pad: PadRef,
        tag: [u8; 32],
        priority: Priority,
    ) -> super::SharedRead {
        use futures::FutureExt;
        let key = (pad.seed, tag);
        let mut reads = self.reads_in_flight.lock().unwrap();
        reads
            .entry(key)
            .or_insert_with(|| {
                let inner = self.clone();
                let task = tokio::spawn(async move {
                    let result = inner.pads.read_pack(&pad, priority).await;
                    if let Ok(pack) = &result {
                        inner.cache.insert(pad.seed, tag, pack.clone());
                    }
                    inner.reads_in_flight.lock().unwrap().remove(&key);
                    result
                });
                async move { task.await.expect("pack read task panicked") }
                    .boxed()
                    .shared()
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: usize, n: u8) -> Piece {
        Piece {
            hash: [n; 32],
            kind: HashKind::default(),
            data: vec![n; len],
        }
    }

    #[test]
    fn pieces_fill_packs_first_fit_and_never_overflow() {
        let capacity = 1000;
        let sizes = [600, 300, 500, 90, 400, 100, 992];
        let pieces = (0..).zip(sizes).map(|(n, len)| piece(len, n)).collect();
        let packs = lay_out(pieces, capacity);
        let laid: Vec<Vec<usize>> = (packs.iter())
            .map(|p| p.pieces.iter().map(|(x, _)| x.data.len()).collect())
            .collect();
        assert_eq!(
            laid,
            vec![vec![600, 300, 90], vec![500, 400], vec![100], vec![992]]
        );
        for pack in &packs {
            let plain = pack.plaintext();
            assert_eq!(plain.len(), pack.len);
            assert!(plain.len() <= capacity);
            for (piece, offset) in &pack.pieces {
                let at = *offset as usize;
                assert!(at >= HEADER.len());
                assert_eq!(&plain[at..at + piece.data.len()], &piece.data[..]);
            }
        }
    }
}
