//! Loading and committing the index. A commit writes the changed pages to pads the committed
//! index does not reference, then updates the root: until the root update lands, the store's
//! index is the previous one, whole. Pads released by the change join the free list only once
//! the root that no longer references them has landed.

use std::collections::{BTreeMap, HashSet};

use autonomi::{Bytes, SecretKey};
use futures::{StreamExt, TryStreamExt};

use super::error::{Error, Result};
use super::pads::{PadIo, INDEX_ENCODING};
use super::page_cache::PageCache;
use super::{Engine, State};
use crate::codec::{sha256, HashKind};
use crate::index::persist::{decode_page, encode_page, PageRef, Root};
use crate::index::{Entry, Index, PadRef};
use crate::seal::MAX_PLAINTEXT;
use crate::store::StoreError;

/// Pages beyond this size are split (the page count doubles): a change to one key rewrites one
/// page, and with inline data a page can grow large long before it has many keys.
const PAGE_SPLIT_BYTES: usize = 1 << 20;

/// A commit whose root write failed in a way that may have landed anyway.
pub(super) struct Attempt {
    generation: u64,
    root_hash: [u8; 32],
    /// The last journaled change the attempt covers.
    journal_upto: u64,
    root_counter: u64,
    pages: Vec<Option<PageRef>>,
    /// Free if the attempt landed; still the committed pages if it did not.
    old_page_pads: Vec<PadRef>,
    /// Released by the attempt's changes.
    releasing: Vec<PadRef>,
    /// Referenced if the attempt landed; free if it did not.
    new_page_pads: Vec<PadRef>,
}

impl Attempt {
    pub(super) fn unsettled_pads(&self) -> impl Iterator<Item = &PadRef> {
        self.releasing.iter().chain(&self.new_page_pads)
    }
}

/// Reads the index root and its pages; `None` if the store has no index for this key.
pub(super) async fn load(
    pads: &PadIo,
    root_key: &SecretKey,
    parallelism: usize,
    local: Option<&PageCache>,
) -> Result<Option<State>> {
    let (bytes, counter) = match pads.read_with_key(root_key.clone(), None).await {
        Ok(found) => found,
        Err(Error::Store(StoreError::NotFound)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let root = Root::decode(&bytes)?;
    let root_hash = sha256(&bytes);
    // Owned page refs: a closure over references would make `Engine::open` not `Send`.
    let reads: Vec<_> = root
        .pages
        .iter()
        .copied()
        .map(|page| async move {
            match page {
                None => Ok::<_, Error>(BTreeMap::new()),
                Some(page) => {
                    if let Some(bytes) = local.and_then(|l| l.get(&page.hash)) {
                        return Ok(decode_page(&bytes)?);
                    }
                    let bytes = pads.read(&page.pad, page.hash, HashKind::Sha256).await?;
                    if let Some(local) = local {
                        local.put(&page.hash, &bytes);
                    }
                    Ok(decode_page(&bytes)?)
                }
            }
        })
        .collect();
    let pages: Vec<BTreeMap<String, Entry>> = futures::stream::iter(reads)
        .buffered(parallelism.max(1))
        .try_collect()
        .await?;
    Ok(Some(State {
        index: Index::from_parts(pages, root.free_pads, root.scratchpad_size),
        pending_free: Vec::new(),
        in_flight: HashSet::new(),
        committed_pages: root.pages,
        root_hash,
        root_counter: Some(counter),
        generation: root.generation,
        in_doubt: None,
        free_unsaved: false,
        conflict: false,
    }))
}

/// What one commit will write, taken from the state under its lock.
struct Plan {
    dirty: Vec<usize>,
    /// (page number, its entries, the pad it goes to), for the non-empty dirty pages.
    writes: Vec<(usize, BTreeMap<String, Entry>, PadRef)>,
    root: Root,
    old_page_pads: Vec<PadRef>,
    releasing: Vec<PadRef>,
    root_counter: Option<u64>,
    /// The last journaled change this commit covers.
    journal_upto: u64,
}

impl Engine {
    /// Makes every change so far durable in the store. Concurrent callers share commits: a
    /// commit covers every change made before it started.
    pub async fn commit(&self) -> Result<()> {
        let _one_at_a_time = self.inner.commit_lock.lock().await;
        if self.inner.state.lock().await.conflict {
            return Err(Error::Conflict);
        }
        let settled = self.settle_doubt().await;
        if let Err(Error::Conflict) = settled {
            self.inner.state.lock().await.conflict = true;
        }
        settled?;
        loop {
            match self.try_commit().await {
                // A page outgrew a pad: split the pages and write them all.
                Err(Error::PageTooBig) => self.inner.state.lock().await.index.split_pages(),
                other => return other,
            }
        }
    }

    async fn try_commit(&self) -> Result<()> {
        let Some(plan) = self.plan_commit().await else {
            return Ok(());
        };
        let parallelism = self.inner.opts.parallelism.max(1);

        // Owned inputs: a closure over references would make `commit()` not `Send`.
        let inputs: Vec<(usize, BTreeMap<String, Entry>, PadRef)> = plan.writes.to_vec();
        let jobs: Vec<_> = inputs
            .into_iter()
            .map(|(n, entries, pad)| {
                let inner = self.inner.clone();
                async move {
                    let keys = entries.len();
                    let bytes = tokio::task::spawn_blocking(move || encode_page(&entries))
                        .await
                        .expect("encode task panicked")?;
                    // Splitting helps only a page of several keys; one key alone too big
                    // would make `commit` split pages for ever.
                    if bytes.len() > PAGE_SPLIT_BYTES && keys > 1 {
                        return Err(Error::PageTooBig);
                    }
                    if bytes.len() > MAX_PLAINTEXT {
                        return Err(Error::Store(StoreError::TooBig(bytes.len())));
                    }
                    let hash = sha256(&bytes);
                    if let Some(dir) = &inner.opts.index_cache_dir {
                        PageCache::new(dir).put(&hash, &bytes);
                    }
                    let pad = inner
                        .pads
                        .write(pad, INDEX_ENCODING, Bytes::from(bytes), hash)
                        .await?;
                    Ok((n, PageRef { pad, hash }))
                }
            })
            .collect();
        let written: Result<Vec<(usize, PageRef)>> = futures::stream::iter(jobs)
            .buffer_unordered(parallelism)
            .try_collect()
            .await;
        let new_page_pads: Vec<PadRef> = plan.writes.iter().map(|(_, _, pad)| *pad).collect();
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // Nothing references the new page pads: the root was never written.
                self.abandon(plan.dirty, plan.releasing, new_page_pads)
                    .await;
                return Err(e);
            }
        };

        let mut root = plan.root;
        for (n, page) in &written {
            root.pages[*n] = Some(*page);
        }
        let new_page_pads: Vec<PadRef> = written.iter().map(|(_, p)| p.pad).collect();
        let root_bytes = root.encode()?;
        if root_bytes.len() > MAX_PLAINTEXT {
            self.abandon(plan.dirty, plan.releasing, new_page_pads)
                .await;
            return Err(Error::RootTooBig(root_bytes.len()));
        }
        let root_hash = sha256(&root_bytes);
        if let Some(journal) = self.inner.journal.get() {
            if let Err(e) = journal.note_commit(plan.journal_upto, root_hash) {
                self.abandon(plan.dirty, plan.releasing, new_page_pads)
                    .await;
                return Err(Error::Journal(e.to_string()));
            }
        }
        let result = self
            .inner
            .pads
            .write_root(
                self.inner.root_key.clone(),
                plan.root_counter,
                INDEX_ENCODING,
                Bytes::from(root_bytes),
            )
            .await;

        let mut state = self.inner.state.lock().await;
        match result {
            Ok(counter) => {
                if let Some(dir) = &self.inner.opts.index_cache_dir {
                    let local = PageCache::new(dir);
                    let kept: HashSet<[u8; 32]> =
                        root.pages.iter().flatten().map(|p| p.hash).collect();
                    for old in state.committed_pages.iter().flatten() {
                        if !kept.contains(&old.hash) {
                            local.remove(&old.hash);
                        }
                    }
                }
                state.root_counter = Some(counter);
                state.generation = root.generation;
                state.root_hash = root_hash;
                state.committed_pages = root.pages;
                state.index.free_pads.extend(plan.old_page_pads);
                state.index.free_pads.extend(plan.releasing);
                drop(state);
                self.journal_committed(plan.journal_upto, root_hash);
                Ok(())
            }
            Err(Error::Conflict) => {
                state.conflict = true;
                drop(state);
                self.abandon(plan.dirty, plan.releasing, new_page_pads)
                    .await;
                Err(Error::Conflict)
            }
            Err(e) => {
                // The root write may have landed: settle that before anything is reused.
                state.index.mark_dirty(plan.dirty);
                state.free_unsaved = true;
                state.in_doubt = Some(Attempt {
                    generation: root.generation,
                    root_hash,
                    journal_upto: plan.journal_upto,
                    root_counter: plan.root_counter.map_or(0, |c| c + 1),
                    pages: root.pages,
                    old_page_pads: plan.old_page_pads,
                    releasing: plan.releasing,
                    new_page_pads,
                });
                Err(e)
            }
        }
    }

    /// Takes the dirty pages and released pads, and picks pads for the new page versions.
    async fn plan_commit(&self) -> Option<Plan> {
        let mut state = self.inner.state.lock().await;
        let state = &mut *state;
        let nothing_to_do =
            !state.index.is_dirty() && state.pending_free.is_empty() && !state.free_unsaved;
        if nothing_to_do && state.root_counter.is_some() {
            return None;
        }
        let count = state.index.page_count();
        let resized = count != state.committed_pages.len();
        let mut dirty: Vec<usize> = state.index.take_dirty().into_iter().collect();
        let (mut pages, old_page_pads): (Vec<Option<PageRef>>, Vec<PadRef>) = if resized {
            dirty = (0..count).collect();
            let old = state.committed_pages.iter().flatten().map(|p| p.pad);
            (vec![None; count], old.collect())
        } else {
            let old = dirty
                .iter()
                .filter_map(|&n| state.committed_pages[n].map(|p| p.pad));
            (state.committed_pages.clone(), old.collect())
        };
        let mut writes = Vec::new();
        for &n in &dirty {
            pages[n] = None;
            if !state.index.page(n).is_empty() {
                let page = state.index.page(n).clone();
                let pad = state.index.free_pads.pop().unwrap_or_else(PadRef::fresh);
                writes.push((n, page, pad));
            }
        }
        let releasing = std::mem::take(&mut state.pending_free);
        state.free_unsaved = false;
        // Under the state lock: exactly the changes journaled so far are in this plan.
        let journal_upto = self.inner.journal.get().map_or(0, |j| j.last_seq());
        let mut free_pads = state.index.free_pads.clone();
        free_pads.extend(&old_page_pads);
        free_pads.extend(&releasing);
        let root = Root {
            generation: state.generation + 1,
            scratchpad_size: state.index.scratchpad_size,
            pages,
            free_pads,
        };
        Some(Plan {
            dirty,
            writes,
            root,
            old_page_pads,
            releasing,
            root_counter: state.root_counter,
            journal_upto,
        })
    }

    /// Drops the changes a landed commit covers from the journal. A failure only costs a
    /// longer replay: the journal's commit record tells the next open they are in the store.
    fn journal_committed(&self, upto: u64, root_hash: [u8; 32]) {
        if let Some(journal) = self.inner.journal.get() {
            if let Err(e) = journal.committed(upto, root_hash) {
                tracing::warn!("could not trim the journal after a commit: {e}");
            }
        }
    }

    /// Undoes a commit that certainly did not land.
    async fn abandon(&self, dirty: Vec<usize>, releasing: Vec<PadRef>, page_pads: Vec<PadRef>) {
        let mut state = self.inner.state.lock().await;
        state.index.mark_dirty(dirty);
        state.pending_free.extend(releasing);
        state.index.free_pads.extend(page_pads);
        state.free_unsaved = true;
    }

    /// Finds out whether a commit whose root write failed landed, and settles its pads.
    async fn settle_doubt(&self) -> Result<()> {
        if self.inner.state.lock().await.in_doubt.is_none() {
            return Ok(());
        }
        let (bytes, counter) = self
            .inner
            .pads
            .read_with_key(self.inner.root_key.clone(), None)
            .await?;
        let stored = Root::decode(&bytes)?;
        let mut state = self.inner.state.lock().await;
        let attempt = state.in_doubt.take().expect("checked above");
        if stored.generation == attempt.generation && counter == attempt.root_counter {
            state.root_counter = Some(counter);
            state.generation = attempt.generation;
            state.root_hash = attempt.root_hash;
            state.committed_pages = attempt.pages;
            state.index.free_pads.extend(attempt.old_page_pads);
            state.index.free_pads.extend(attempt.releasing);
            drop(state);
            self.journal_committed(attempt.journal_upto, attempt.root_hash);
        } else if stored.generation == state.generation {
            state.root_counter = Some(counter);
            state.index.free_pads.extend(attempt.new_page_pads);
            state.pending_free.extend(attempt.releasing);
        } else {
            state.in_doubt = Some(attempt);
            return Err(Error::Conflict);
        }
        Ok(())
    }
}
