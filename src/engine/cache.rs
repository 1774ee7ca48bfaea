//! An LRU cache of verified chunk plaintexts, bounded in bytes. Entries are keyed by pad seed and
//! content hash, so a rewritten pad can never be served stale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use autonomi::Bytes;
use lru::LruCache;

use crate::keys::PadSeed;

type Key = (PadSeed, [u8; 32]);

pub struct ChunkCache {
    inner: Mutex<Inner>,
    capacity_bytes: usize,
    /// Lookups answered and not, for `mutant-mount status`.
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner {
    lru: LruCache<Key, Bytes>,
    bytes: usize,
}

impl ChunkCache {
    pub fn new(capacity_bytes: usize) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, seed: &PadSeed, hash: &[u8; 32]) -> Option<Bytes> {
        let found = self.inner.lock().unwrap().lru.get(&(*seed, *hash)).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Lookups that found their chunk, and lookups that did not, so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    pub fn contains(&self, seed: &PadSeed, hash: &[u8; 32]) -> bool {
        self.inner.lock().unwrap().lru.contains(&(*seed, *hash))
    }

    pub fn insert(&self, seed: PadSeed, hash: [u8; 32], data: Bytes) {
        if data.len() > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        inner.bytes += data.len();
        if let Some(old) = inner.lru.put((seed, hash), data) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.capacity_bytes {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_budget_evicting_the_least_recent() {
        let cache = ChunkCache::new(10);
        cache.insert([1; 16], [0; 32], Bytes::from(vec![0; 4]));
        cache.insert([2; 16], [0; 32], Bytes::from(vec![0; 4]));
        assert!(cache.get(&[1; 16], &[0; 32]).is_some());
        cache.insert([3; 16], [0; 32], Bytes::from(vec![0; 4]));
        assert!(cache.bytes() <= 10);
        assert!(cache.contains(&[1; 16], &[0; 32]));
        assert!(!cache.contains(&[2; 16], &[0; 32]));
        cache.insert([4; 16], [0; 32], Bytes::from(vec![0; 11]));
        assert!(!cache.contains(&[4; 16], &[0; 32]));
    }
}
