//! `gc`: pads created by earlier runs that nothing references (a crash cut their write short
//! after the pad was made; on the network it was paid for) go back to the free list. The
//! candidates are the seeds the log of fresh pads kept (`fresh_pads.rs`); each is checked
//! against everything the index accounts for, then asked of the store.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};

use super::{Engine, Result};
use crate::index::PadRef;
use crate::keys::PadSeed;

/// What `gc` found.
#[derive(Debug, Default)]
pub struct Leaked {
    /// Pads that exist in the store and that nothing references.
    pub pads: Vec<PadRef>,
    /// Seeds logged whose pad is referenced, or was never created: nothing to reclaim.
    pub accounted: usize,
}

impl Engine {
    /// The pads earlier runs created that nothing references. Asks the store whether each
    /// exists; any error stops the search (nothing is guessed).
    pub async fn find_leaked_pads(&self) -> Result<Leaked> {
        let candidates: Vec<PadSeed> = {
            let state = self.inner.state.lock().await;
            let known: HashSet<PadSeed> = state.pad_places().into_iter().map(|(s, _)| s).collect();
            (state.fresh.suspects.iter())
                .filter(|seed| !known.contains(*seed))
                .copied()
                .collect()
        };
        let suspects = self.inner.state.lock().await.fresh.suspects.len();
        let store = self.inner.pads.store();
        let master = self.inner.pads.master();
        let exists = candidates.iter().map(|seed| async move {
            let owner = master.pad_key(seed).public_key();
            store.exists(&owner).await.map(|e| (*seed, e))
        });
        let found: Vec<(PadSeed, bool)> = futures::stream::iter(exists)
            .buffer_unordered(self.inner.opts.parallelism.max(1))
            .try_collect()
            .await?;
        let pads: Vec<PadRef> = (found.into_iter())
            .filter(|(_, exists)| *exists)
            .map(|(seed, _)| PadRef {
                seed,
                // Exists at some counter: a later write finds it and raises its counter.
                counter: None,
            })
            .collect();
        Ok(Leaked {
            accounted: suspects - pads.len(),
            pads,
        })
    }

    /// Returns `leaked` to the free list, commits, and forgets every suspect: those not
    /// returned are referenced or were never created.
    pub async fn reclaim(&self, leaked: &Leaked) -> Result<()> {
        self.trim_freed(leaked.pads.iter().map(|p| p.seed).collect())
            .await;
        {
            let mut state = self.inner.state.lock().await;
            state.free_unsaved = true;
            for pad in &leaked.pads {
                state.index.free_pads.push(*pad);
            }
        }
        self.commit().await?;
        let mut state = self.inner.state.lock().await;
        state.fresh.suspects.clear();
        if let Some(log) = &self.inner.fresh_log {
            log.rewrite(&state.fresh.this_run);
        }
        Ok(())
    }
}
