//! The master index: key -> entry, the free pads, and the chunk size. In memory it is split into
//! hash-partitioned pages so that a commit rewrites only the pages whose keys changed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::{sha256, HashKind};
use crate::keys::PadSeed;

pub mod free;
pub mod names;
pub mod persist;
pub mod segments;

pub use free::FreeList;

/// A pad the engine owns: its key derives from the master key and the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PadRef {
    pub seed: PadSeed,
    /// The counter of the last version we know was written; `None` if the pad may not exist
    /// yet (its creation has not been confirmed).
    pub counter: Option<u64>,
}

impl PadRef {
    pub fn fresh() -> Self {
        PadRef {
            seed: crate::keys::random_seed(),
            counter: None,
        }
    }
}

/// One piece of a value, in order: in a pad, inline in the index (small pieces: a pad each
/// would cost a pad write, and on the network money, per small file), or a hole that reads as
/// zeros (neither).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub pad: Option<PadRef>,
    pub len: u32,
    /// Hash of the plaintext: a pad is checked against it on every read.
    pub hash: [u8; 32],
    pub hash_kind: HashKind,
    /// The bytes themselves, for a piece small enough to live in the index.
    pub inline: Option<Vec<u8>>,
    /// Where the chunk's `len` bytes start in its pad's plaintext: 0 for a chunk with a pad of
    /// its own, past the pack header for a piece of a pad shared with other small pieces (a
    /// pack, `engine/pack.rs`), so that a chunk with an offset is exactly a packed one.
    pub pad_offset: u32,
}

impl Chunk {
    pub fn hole(len: u32) -> Self {
        Chunk {
            pad: None,
            len,
            hash: [0; 32],
            hash_kind: HashKind::default(),
            inline: None,
            pad_offset: 0,
        }
    }

    pub fn inline(data: Vec<u8>) -> Self {
        Chunk {
            pad: None,
            len: data.len() as u32,
            hash: HashKind::default().hash(&data),
            hash_kind: HashKind::default(),
            inline: Some(data),
            pad_offset: 0,
        }
    }

    /// A chunk with a pad of its own.
    pub fn in_pad(pad: PadRef, len: u32, hash: [u8; 32], hash_kind: HashKind) -> Self {
        Chunk {
            pad: Some(pad),
            len,
            hash,
            hash_kind,
            inline: None,
            pad_offset: 0,
        }
    }

    /// Bytes `offset..offset + len` of the pack `pad`, shared with other pieces.
    pub fn packed(pad: PadRef, offset: u32, len: u32, hash: [u8; 32], hash_kind: HashKind) -> Self {
        debug_assert!(offset > 0, "a pack's pieces start after its header");
        Chunk {
            pad_offset: offset,
            ..Chunk::in_pad(pad, len, hash, hash_kind)
        }
    }

    /// Whether the chunk is a piece of a pack rather than a pad of its own.
    pub fn is_packed(&self) -> bool {
        self.pad.is_some() && self.pad_offset > 0
    }

    /// Whether the chunk holds more bytes inline than an index page keeps (`limit`): a piece
    /// written since the last commit, which that commit packs.
    pub fn awaits_packing(&self, limit: usize) -> bool {
        self.inline.as_ref().is_some_and(|data| data.len() > limit)
    }

    /// Whether the chunk holds bytes (in a pad or inline) rather than zeros.
    pub fn has_data(&self) -> bool {
        self.pad.is_some() || self.inline.is_some()
    }
}

/// The largest file: 16 TiB. Its size costs nothing in the index (holes are not stored), so
/// the bound is only there to be documented and enforced where a write or truncate asks for
/// more (EFBIG).
pub const MAX_FILE_SIZE: u64 = 1 << 44;

/// The most chunks of one file that hold data (the rest of a file is holes): at the default
/// chunk size, a 16 TiB file with no holes. A large file's chunks are stored in segments
/// beside its index page (`segments.rs`), so this bounds memory and the journal record a
/// change of the file takes (about 80 bytes a chunk), not the index.
pub const MAX_DATA_CHUNKS: usize = 4_200_000;

/// A file's stored chunks by chunk number. Chunk `i` covers bytes `[i * cs, (i + 1) * cs)` of
/// the file; a number that is absent is a hole and reads as zeros, so a sparse file of any size
/// costs only its data in the index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkMap(BTreeMap<u64, Chunk>);

impl ChunkMap {
    /// From chunks in file order; holes are dropped.
    pub fn from_ordered(chunks: impl IntoIterator<Item = Chunk>) -> Self {
        let mut map = ChunkMap::default();
        for (idx, chunk) in (0..).zip(chunks) {
            map.insert(idx, chunk);
        }
        map
    }

    pub fn get(&self, idx: u64) -> Option<&Chunk> {
        self.0.get(&idx)
    }

    /// Puts a chunk at `idx`, returning the one it replaces; a hole just clears `idx`.
    pub fn insert(&mut self, idx: u64, chunk: Chunk) -> Option<Chunk> {
        if chunk.has_data() {
            self.0.insert(idx, chunk)
        } else {
            self.0.remove(&idx)
        }
    }

    /// Drops the chunks from `keep` on, returning them.
    pub fn truncate(&mut self, keep: u64) -> Vec<Chunk> {
        self.0.split_off(&keep).into_values().collect()
    }

    /// The chunks that hold data, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Chunk)> {
        self.0.iter().map(|(&idx, chunk)| (idx, chunk))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Chunk> {
        self.0.values_mut()
    }

    pub fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.keys().copied()
    }

    /// Whether any chunk numbered in `range` holds data.
    pub fn any_in(&self, range: std::ops::Range<u64>) -> bool {
        self.0.range(range).next().is_some()
    }

    /// How many chunks hold data.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The entries of index pages in format version 1, before chunks could hold inline bytes.
pub mod v1 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Chunk {
        pad: Option<super::PadRef>,
        len: u32,
        hash: [u8; 32],
    }

    #[derive(Deserialize)]
    pub struct Entry {
        chunks: Vec<Chunk>,
        size: u64,
        meta: super::Meta,
    }

    impl From<Entry> for super::Entry {
        fn from(e: Entry) -> Self {
            super::Entry {
                chunks: super::ChunkMap::from_ordered(e.chunks.into_iter().map(|c| match c.pad {
                    Some(pad) => {
                        super::Chunk::in_pad(pad, c.len, c.hash, crate::codec::HashKind::Sha256)
                    }
                    None => super::Chunk::hole(c.len),
                })),
                size: e.size,
                meta: e.meta,
                link: None,
            }
        }
    }
}

/// The entries of format version 2: every chunk of a file in a list, holes included, so that
/// a sparse file's entry grew with its size (a 1 TiB file took 10 MB and no longer fit a pad).
pub mod v2 {
    use serde::Deserialize;

    use crate::codec::HashKind;

    #[derive(Deserialize)]
    pub struct Chunk {
        pad: Option<super::PadRef>,
        len: u32,
        hash: [u8; 32],
        hash_kind: HashKind,
        inline: Option<Vec<u8>>,
    }

    impl From<Chunk> for super::Chunk {
        fn from(c: Chunk) -> Self {
            match (c.pad, c.inline) {
                (Some(pad), _) => super::Chunk::in_pad(pad, c.len, c.hash, c.hash_kind),
                (None, Some(data)) => super::Chunk::inline(data),
                (None, None) => super::Chunk::hole(c.len),
            }
        }
    }

    #[derive(Deserialize)]
    pub struct Entry {
        chunks: Vec<Chunk>,
        size: u64,
        meta: super::Meta,
    }

    impl From<Entry> for super::Entry {
        fn from(e: Entry) -> Self {
            super::Entry {
                chunks: super::ChunkMap::from_ordered(e.chunks.into_iter().map(Into::into)),
                size: e.size,
                meta: e.meta,
                link: None,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        let now = chrono::Utc::now();
        Timestamp {
            secs: now.timestamp(),
            nanos: now.timestamp_subsec_nanos(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    #[default]
    File,
    Dir,
    Symlink,
    /// Special files: only their metadata is stored; the kernel does their I/O.
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What a file system needs besides the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub kind: FileKind,
    /// Permission bits (07777), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub symlink_target: Option<Vec<u8>>,
    /// Device number of a character or block device.
    pub rdev: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// A regular file with mode 0644, owned by root, stamped now.
    pub fn file() -> Self {
        let now = Timestamp::now();
        Meta {
            mode: 0o644,
            atime: now,
            mtime: now,
            ctime: now,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub chunks: ChunkMap,
    pub size: u64,
    pub meta: Meta,
    /// Set on a name of a file with several names (hard links): the file itself, its chunks
    /// and metadata, lives under `inode_key(id)`, and this entry holds nothing else.
    pub link: Option<u64>,
}

/// The prefix of the keys of files with several names. Internal keys start with NUL and a
/// letter that is not a hex digit: no name, escaped or not ([`names`]), begins so.
const INODE_PREFIX: &str = "\0inode/";

/// The prefix of the keys that keep a compacted pack referenced until the next mount (see
/// `engine/pack.rs`): a reader or writer may still hold a chunk naming it.
const RETIRED_PREFIX: &str = "\0retired/";

/// The key that keeps the compacted pack of `seed` referenced.
pub fn retired_key(seed: &PadSeed) -> String {
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    format!("{RETIRED_PREFIX}{hex}")
}

pub fn is_retired_key(key: &str) -> bool {
    key.starts_with(RETIRED_PREFIX)
}

/// Whether `key` is one the index keeps for itself (a file with several names, a retired
/// pack, a file deleted while open) rather than a path.
pub fn is_internal_key(key: &str) -> bool {
    key.strip_prefix('\0')
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| !c.is_ascii_hexdigit())
}

/// Where the file with several names numbered `id` lives.
pub fn inode_key(id: u64) -> String {
    format!("{INODE_PREFIX}{id}")
}

/// The number of the file with several names that lives under `key`, if it is such a key.
pub fn inode_of_key(key: &str) -> Option<u64> {
    key.strip_prefix(INODE_PREFIX)?.parse().ok()
}

impl Entry {
    /// A file with nothing in it.
    pub fn empty(meta: Meta) -> Self {
        Entry {
            chunks: ChunkMap::default(),
            size: 0,
            meta,
            link: None,
        }
    }

    /// One name of the file with several names numbered `id`.
    pub fn link_to(id: u64) -> Self {
        Entry {
            link: Some(id),
            ..Entry::empty(Meta::default())
        }
    }

    /// The pad of every chunk in a pad, a pack once per piece in it.
    pub fn pads(&self) -> impl Iterator<Item = PadRef> + '_ {
        self.chunks.iter().filter_map(|(_, c)| c.pad)
    }

    /// The pads this entry has to itself (not packs).
    pub fn own_pads(&self) -> impl Iterator<Item = PadRef> + '_ {
        (self.chunks.iter())
            .filter(|(_, c)| !c.is_packed())
            .filter_map(|(_, c)| c.pad)
    }

    /// Bytes of data stored (in pads, packs or inline): what the file takes, holes aside.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, c)| u64::from(c.len)).sum()
    }

    /// The chunks that are pieces of packs.
    pub fn pieces(&self) -> impl Iterator<Item = &Chunk> + '_ {
        self.chunks.iter().map(|(_, c)| c).filter(|c| c.is_packed())
    }
}

/// Keys per page before the page count doubles.
const KEYS_PER_PAGE: usize = 2048;

#[derive(Clone, Debug)]
pub struct Index {
    pages: Vec<BTreeMap<String, Entry>>,
    /// Pads free in the committed index, reusable now; taken from the end.
    pub free_pads: FreeList,
    pub scratchpad_size: u32,
    dirty: BTreeSet<usize>,
    len: usize,
}

/// The page `key` belongs in, of `pages` pages.
pub fn page_of(key: &str, pages: usize) -> usize {
    let h = sha256(key.as_bytes());
    (u64::from_le_bytes(h[..8].try_into().unwrap()) as usize) & (pages - 1)
}

impl Index {
    pub fn new(scratchpad_size: u32) -> Self {
        Index::from_parts(vec![BTreeMap::new()], Vec::new(), scratchpad_size)
    }

    /// Rebuilds an index from its loaded pages; the page count must be a power of two.
    pub fn from_parts(
        pages: Vec<BTreeMap<String, Entry>>,
        free_pads: Vec<PadRef>,
        scratchpad_size: u32,
    ) -> Self {
        assert!(pages.len().is_power_of_two());
        let len = pages.iter().map(BTreeMap::len).sum();
        Index {
            pages,
            free_pads: FreeList::committed(free_pads),
            scratchpad_size,
            dirty: BTreeSet::new(),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    pub fn page(&self, n: usize) -> &BTreeMap<String, Entry> {
        &self.pages[n]
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.pages[page_of(key, self.pages.len())].get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let p = page_of(key, self.pages.len());
        let entry = self.pages[p].get_mut(key);
        if entry.is_some() {
            self.dirty.insert(p);
        }
        entry
    }

    pub fn insert(&mut self, key: String, entry: Entry) -> Option<Entry> {
        let p = page_of(&key, self.pages.len());
        self.dirty.insert(p);
        let old = self.pages[p].insert(key, entry);
        if old.is_none() {
            self.len += 1;
            if self.len > self.pages.len() * KEYS_PER_PAGE {
                self.split_pages();
            }
        }
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        let p = page_of(key, self.pages.len());
        let old = self.pages[p].remove(key);
        if old.is_some() {
            self.dirty.insert(p);
            self.len -= 1;
        }
        old
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.pages.iter().flat_map(|p| p.keys().cloned()).collect();
        keys.sort_unstable();
        keys
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.pages.iter().flat_map(|p| p.iter())
    }

    /// Doubles the page count (every page then changes).
    pub fn split_pages(&mut self) {
        let n = self.pages.len() * 2;
        let mut pages = vec![BTreeMap::new(); n];
        for page in std::mem::take(&mut self.pages) {
            for (key, entry) in page {
                pages[page_of(&key, n)].insert(key, entry);
            }
        }
        self.pages = pages;
        self.dirty = (0..n).collect();
    }

    /// The chunks of the entries in the pages changed since the last commit: where the pieces
    /// a commit packs are (an entry changed or moved lands in a changed page).
    pub fn dirty_chunks_mut(&mut self) -> impl Iterator<Item = &mut Chunk> {
        let dirty = &self.dirty;
        (self.pages.iter_mut().enumerate())
            .filter(move |(n, _)| dirty.contains(n))
            .flat_map(|(_, page)| page.values_mut())
            .flat_map(|entry| entry.chunks.iter_mut())
    }

    /// Calls `change` on every chunk of every entry; a page where it changed one (returned
    /// true) is marked changed.
    pub fn change_chunks(&mut self, mut change: impl FnMut(&mut Chunk) -> bool) {
        for (n, page) in self.pages.iter_mut().enumerate() {
            let mut changed = false;
            for entry in page.values_mut() {
                for chunk in entry.chunks.iter_mut() {
                    changed |= change(chunk);
                }
            }
            if changed {
                self.dirty.insert(n);
            }
        }
    }

    /// Pages changed since the last call, for a commit.
    pub fn take_dirty(&mut self) -> BTreeSet<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// Marks pages changed again after a failed commit (ignoring any no longer there).
    pub fn mark_dirty(&mut self, pages: impl IntoIterator<Item = usize>) {
        let n = self.pages.len();
        self.dirty.extend(pages.into_iter().filter(|&p| p < n));
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> Entry {
        Entry {
            chunks: ChunkMap::from_ordered([Chunk::in_pad(
                PadRef::fresh(),
                1,
                [n; 32],
                HashKind::default(),
            )]),
            size: 1,
            meta: Meta::default(),
            link: None,
        }
    }

    #[test]
    fn a_change_dirties_only_its_page_and_pages_split_as_keys_grow() {
        let mut index = Index::new(4096);
        for i in 0..(KEYS_PER_PAGE * 4 + 1) {
            index.insert(format!("k{i}"), entry(1));
        }
        assert_eq!(index.page_count(), 8);
        assert_eq!(index.len(), KEYS_PER_PAGE * 4 + 1);
        index.take_dirty();
        index.insert("k17".into(), entry(2));
        assert_eq!(index.take_dirty().len(), 1);
        assert_eq!(
            index.get("k17").unwrap().chunks.get(0).unwrap().hash,
            [2; 32]
        );
        assert!(index.remove("k17").is_some());
        assert!(index.get("k17").is_none());
        assert_eq!(index.keys().len(), KEYS_PER_PAGE * 4);
    }
}
