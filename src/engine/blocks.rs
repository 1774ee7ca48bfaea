//! Reading part of a pad. A chunk's BLAKE3 hash is the root of a tree over its bytes; computed
//! from subtrees of [`BLOCK_LEN`] bytes, the pass that checks a whole pad against the index also
//! yields each block's chaining value. Kept with the stream key of that pad version
//! ([`PadBlocks`]), they let a later read fetch, decrypt and check only the blocks it touches: a
//! block is served only if it hashes to a chaining value of a tree whose root matched the index.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use autonomi::PublicKey;
use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use lru::LruCache;

use crate::keys::PadSeed;
use crate::seal::StreamKey;

/// Bytes per checked block: a power of two, a whole number of BLAKE3 chunks. A random read
/// decrypts (four stream bytes per byte) and hashes at least this much.
pub const BLOCK_LEN: usize = 16 << 10;

/// The BLAKE3 hash of `data` and, if it is longer than one block, each block's chaining value.
pub fn hash_blocks(data: &[u8]) -> (blake3::Hash, Vec<ChainingValue>) {
    if data.len() <= BLOCK_LEN {
        return (blake3::hash(data), Vec::new());
    }
    let cvs: Vec<_> = data
        .chunks(BLOCK_LEN)
        .enumerate()
        .map(|(i, block)| block_cv(block, i * BLOCK_LEN))
        .collect();
    (root(&cvs, data.len()), cvs)
}

/// Decrypts a pad's whole message with its stream key, hashing each block while its bytes are
/// still in the CPU's cache: the plaintext, its BLAKE3 hash and (if it is longer than one
/// block) each block's chaining value.
pub fn open_hashing(
    key: &StreamKey,
    ciphertext: &[u8],
) -> (Vec<u8>, blake3::Hash, Vec<ChainingValue>) {
    let mut plain = crate::buffers::take(ciphertext.len());
    if ciphertext.len() <= BLOCK_LEN {
        crate::seal::open_part_into(key, 0, ciphertext, &mut plain);
        let hash = blake3::hash(&plain);
        return (plain, hash, Vec::new());
    }
    let mut cvs = Vec::with_capacity(ciphertext.len().div_ceil(BLOCK_LEN));
    open_blocks(key, 0, ciphertext, &mut plain, |_, cv| {
        cvs.push(cv);
        true
    });
    let hash = root(&cvs, ciphertext.len());
    (plain, hash, cvs)
}

/// Decrypts `ciphertext`, whose plaintext starts at `offset` (a block boundary), into `out`
/// one block at a time, handing each block's chaining value to `check`; stops, returning
/// `false`, at the first block `check` refuses.
fn open_blocks(
    key: &StreamKey,
    offset: usize,
    ciphertext: &[u8],
    out: &mut Vec<u8>,
    mut check: impl FnMut(usize, ChainingValue) -> bool,
) -> bool {
    for (i, block) in ciphertext.chunks(BLOCK_LEN).enumerate() {
        let (at, start) = (offset + i * BLOCK_LEN, out.len());
        crate::seal::open_part_into(key, at, block, out);
        if !check(i, block_cv(&out[start..], at)) {
            return false;
        }
    }
    true
}

/// The BLAKE3 hash of `len` bytes (more than one block) from its blocks' chaining values.
fn root(cvs: &[ChainingValue], len: usize) -> blake3::Hash {
    let (left, right) = split(cvs, len);
    merge_subtrees_root(&left, &right, Mode::Hash)
}

/// The chaining values of the two halves of a subtree of `len` bytes, more than one block.
/// BLAKE3 splits at the largest power of two of 1 KiB chunks that leaves some bytes on the
/// right: above one block, always a whole number of blocks.
fn split(cvs: &[ChainingValue], len: usize) -> (ChainingValue, ChainingValue) {
    let left = left_subtree_len(len as u64) as usize;
    let blocks = left / BLOCK_LEN;
    (
        subtree(&cvs[..blocks], left),
        subtree(&cvs[blocks..], len - left),
    )
}

fn subtree(cvs: &[ChainingValue], len: usize) -> ChainingValue {
    if len <= BLOCK_LEN {
        return cvs[0];
    }
    let (left, right) = split(cvs, len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

fn block_cv(block: &[u8], offset: usize) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(offset as u64)
        .update(block)
        .finalize_non_root()
}

/// What a checked read of one pad version leaves behind to read parts of it.
pub struct PadBlocks {
    /// The pad's address (deriving it again is a scalar multiplication, more than a part read).
    owner: PublicKey,
    key: StreamKey,
    cvs: Vec<ChainingValue>,
    len: usize,
}

impl PadBlocks {
    /// `None` for a chunk of one block: it is read whole anyway.
    pub fn new(
        owner: PublicKey,
        key: StreamKey,
        cvs: Vec<ChainingValue>,
        len: usize,
    ) -> Option<Self> {
        (cvs.len() > 1 && cvs.len() == len.div_ceil(BLOCK_LEN)).then_some(PadBlocks {
            owner,
            key,
            cvs,
            len,
        })
    }

    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// The whole blocks that cover `from..to` of the chunk.
    pub fn span(&self, from: usize, to: usize) -> Range<usize> {
        let start = from / BLOCK_LEN * BLOCK_LEN;
        start..(to.div_ceil(BLOCK_LEN) * BLOCK_LEN).min(self.len)
    }

    /// The plaintext of `span` from its ciphertext, or `None` if a block does not check out
    /// (another version of the pad, or damage).
    pub fn open(&self, span: Range<usize>, ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() != span.len()
            || !span.start.is_multiple_of(BLOCK_LEN)
            || span.end > self.len
        {
            return None;
        }
        let mut plain = crate::buffers::take(span.len());
        let first = span.start / BLOCK_LEN;
        if open_blocks(&self.key, span.start, ciphertext, &mut plain, |i, cv| {
            cv == self.cvs[first + i]
        }) {
            Some(plain)
        } else {
            crate::buffers::give_back(plain);
            None
        }
    }
}

/// A pad and the hash of the content it was read with.
type ChunkKey = (PadSeed, [u8; 32]);

/// The [`PadBlocks`] of recently read pads, keyed like the chunk cache (pad and content hash),
/// bounded in pads: a 4 MiB pad's take 8 KiB.
pub struct BlocksCache {
    lru: Mutex<LruCache<ChunkKey, Arc<PadBlocks>>>,
}

impl BlocksCache {
    pub fn new(pads: usize) -> Self {
        let pads = std::num::NonZeroUsize::new(pads.max(1)).expect("at least one");
        BlocksCache {
            lru: Mutex::new(LruCache::new(pads)),
        }
    }

    pub fn get(&self, seed: &PadSeed, hash: &[u8; 32]) -> Option<Arc<PadBlocks>> {
        self.lru.lock().unwrap().get(&(*seed, *hash)).cloned()
    }

    pub fn insert(&self, seed: PadSeed, hash: [u8; 32], blocks: PadBlocks) {
        self.lru.lock().unwrap().put((seed, hash), Arc::new(blocks));
    }

    pub fn remove(&self, seed: &PadSeed, hash: &[u8; 32]) {
        self.lru.lock().unwrap().pop(&(*seed, *hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomi::SecretKey;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
            .collect()
    }

    #[test]
    fn the_root_is_blake3_of_the_whole() {
        for len in [
            0,
            1,
            1024,
            BLOCK_LEN - 1,
            BLOCK_LEN,
            BLOCK_LEN + 1,
            2 * BLOCK_LEN,
            3 * BLOCK_LEN + 5,
            5 * BLOCK_LEN,
            100_003,
            (1 << 20) + 1,
            crate::store::MAX_PAD_PLAINTEXT,
            4 << 20,
        ] {
            let data = sample(len);
            let (root, cvs) = hash_blocks(&data);
            assert_eq!(root, blake3::hash(&data), "len {len}");
            let blocks = if len > BLOCK_LEN {
                len.div_ceil(BLOCK_LEN)
            } else {
                0
            };
            assert_eq!(cvs.len(), blocks, "len {len}");
            if len == 0 {
                continue; // no pad holds nothing
            }
            // Decrypting and hashing in one pass gives the same, and the plaintext.
            let sk = SecretKey::random();
            let pad = crate::seal::seal(&sk, 1, &data, 0);
            let key = crate::seal::stream_key(&sk, &pad).unwrap();
            let opened = open_hashing(&key, &pad.encrypted_data()[crate::seal::HEADER..]);
            assert!(opened == (data, root, cvs), "len {len}");
        }
    }

    #[test]
    fn parts_open_only_as_the_version_that_was_checked() {
        let sk = SecretKey::random();
        let data = sample(5 * BLOCK_LEN + 123);
        let pad = crate::seal::seal(&sk, 1, &data, 0);
        let key = crate::seal::stream_key(&sk, &pad).unwrap();
        let (plain, root, cvs) = open_hashing(&key, &pad.encrypted_data()[crate::seal::HEADER..]);
        assert_eq!((&plain, root), (&data, blake3::hash(&data)));
        let blocks = PadBlocks::new(sk.public_key(), key, cvs, data.len()).unwrap();
        let ct = &pad.encrypted_data()[crate::seal::HEADER..];

        for (from, to) in [
            (0, 1),
            (BLOCK_LEN - 1, BLOCK_LEN + 1),
            (5 * BLOCK_LEN + 7, data.len()),
        ] {
            let span = blocks.span(from, to);
            assert!(span.start <= from && to <= span.end);
            let part = blocks.open(span.clone(), &ct[span.clone()]).unwrap();
            assert_eq!(part, data[span], "{from}..{to}");
        }

        // A damaged byte fails its block, and only its block.
        let mut damaged = ct[..2 * BLOCK_LEN].to_vec();
        damaged[BLOCK_LEN + 9] ^= 1;
        assert!(blocks.open(0..2 * BLOCK_LEN, &damaged).is_none());
        assert!(blocks.open(0..BLOCK_LEN, &damaged[..BLOCK_LEN]).is_some());

        // The same bytes sealed again (a recycled pad) have another key: nothing checks out.
        let again = crate::seal::seal(&sk, 1, &data, 1);
        let moved = &again.encrypted_data()[crate::seal::HEADER..];
        assert!(blocks.open(0..BLOCK_LEN, &moved[..BLOCK_LEN]).is_none());
        // A span that is not whole blocks is refused, not half-checked.
        assert!(blocks.open(1..BLOCK_LEN, &ct[1..BLOCK_LEN]).is_none());
    }
}
