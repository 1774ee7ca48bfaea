//! What the engine is doing now, for `mutant-mount status` and `sync`: changes not yet
//! committed, pads being written, the last commit, the chunk cache's use.

use std::time::SystemTime;

use super::Engine;

#[derive(Clone, Debug, Default)]
pub struct Activity {
    /// Journaled changes no commit has covered yet (0 without a journal: see `uncommitted`).
    pub uncommitted_changes: usize,
    /// Whether anything at all waits for a commit.
    pub uncommitted: bool,
    /// Pads taken by writes whose chunks are not in the index yet: uploads in flight.
    pub pads_in_flight: usize,
    /// When this mount's last commit landed; `None` before the first.
    pub last_commit: Option<SystemTime>,
    pub cache_bytes: usize,
    pub cache_capacity: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl Engine {
    pub async fn activity(&self) -> Activity {
        let uncommitted = self.has_uncommitted().await;
        let pads_in_flight = self.inner.state.lock().await.in_flight.len();
        let (cache_hits, cache_misses) = self.inner.cache.hits_and_misses();
        Activity {
            uncommitted_changes: self.inner.journal.get().map_or(0, |j| j.pending().len()),
            uncommitted,
            pads_in_flight,
            last_commit: *self.inner.last_commit.lock().unwrap(),
            cache_bytes: self.inner.cache.bytes(),
            cache_capacity: self.inner.opts.cache_bytes,
            cache_hits,
            cache_misses,
        }
    }
}
