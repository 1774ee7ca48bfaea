//! Loading and committing the index. A commit writes the changed pages to pads the committed
//! index does not reference, then updates the root: until the root update lands, the store's
//! index is the previous one, whole. Pads released by the change join the free list only once
//! the root that no longer references them has landed. The free list is written the same way:
//! the pages that changed go to new pads, and the old ones are free once the root landed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use autonomi::{Bytes, SecretKey};
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::error::{Error, Result};
use super::pads::{PadIo, INDEX_ENCODING};
use super::{Engine, State};
use crate::codec::CodecError;
use crate::codec::{sha256, HashKind};
use crate::index::persist::{
    decode_free_page, decode_page, encode_free_page, encode_page, FreePageRef, Page, PageRef, Root,
};
use crate::index::segments::{self, Segment, SegmentRef};
use crate::index::{page_of, ChunkMap, Entry, Index, PadRef};
use crate::keys::PadSeed;
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
    free_pages: Vec<FreePageRef>,
    /// Free if the attempt landed; still the committed pages if it did not.
    old_page_pads: Vec<PadRef>,
    /// Released by the attempt's changes.
    releasing: Vec<PadRef>,
    /// Referenced if the attempt landed; free if it did not.
    new_page_pads: Vec<PadRef>,
    segments: SegmentChange,
}

/// How a commit changes where large files keep their chunks: the keys of the pages it
/// rewrote lose their committed segments, and the pages it wrote name these.
pub(super) struct SegmentChange {
    replaced: Vec<String>,
    written: Vec<(String, Vec<SegmentRef>)>,
}

impl SegmentChange {
    fn apply(self, committed: &mut SegmentMap) {
        for key in &self.replaced {
            committed.remove(key);
        }
        committed.extend(self.written);
    }
}

impl Attempt {
    pub(super) fn unsettled_pads(&self) -> impl Iterator<Item = &PadRef> {
        self.releasing.iter().chain(&self.new_page_pads)
    }
}

/// What a root tells of itself before its pages are read: its counter, generation and hash.
pub(super) type RootSeen = (u64, u64, [u8; 32]);

/// Reads the index root and its pages; `None` if the store has no index for this key.
/// `check_root` may refuse the root (a rollback) before any of its pages is read: an older
/// root's pages may hold other content by now, or none.
pub(super) async fn load(
    pads: &PadIo,
    root_key: &SecretKey,
    parallelism: usize,
    local: Option<&super::page_cache::PageCache>,
    check_root: &(dyn Fn(Option<RootSeen>) -> Result<()> + Sync),
) -> Result<Option<State>> {
    let (bytes, counter) = match pads.read_with_key(root_key.clone(), None).await {
        Ok(found) => found,
        Err(Error::Store(StoreError::NotFound)) => {
            check_root(None)?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let root = Root::decode(&bytes)?;
    let root_hash = sha256(&bytes);
    check_root(Some((counter, root.generation, root_hash)))?;
    let parallelism = parallelism.max(1);
    // Owned page refs: a closure over references would make `Engine::open` not `Send`.
    let reads: Vec<_> = root
        .pages
        .iter()
        .copied()
        .map(|page| async move {
            match page {
                None => Ok::<_, Error>(Page::default()),
                Some(page) => Ok(decode_page(
                    &read_record(pads, local, page.pad, page.hash).await?,
                )?),
            }
        })
        .collect();
    let pages: Vec<Page> = futures::stream::iter(reads)
        .buffered(parallelism)
        .try_collect()
        .await?;
    let (pages, committed_segments) = load_segments(pads, local, pages, parallelism).await?;
    let free_reads: Vec<_> = root
        .free_pages
        .iter()
        .copied()
        .map(|page| async move {
            let bytes = pads.read(&page.pad, page.hash, HashKind::Sha256).await?;
            Ok::<_, Error>(decode_free_page(&bytes, page.len)?)
        })
        .collect();
    let free_pages: Vec<Vec<PadRef>> = futures::stream::iter(free_reads)
        .buffered(parallelism)
        .try_collect()
        .await?;
    let mut free = free_pages.concat();
    free.extend(root.free_tail);
    let index = Index::from_parts(pages, free, root.scratchpad_size);
    Ok(Some(State {
        pack_users: super::pack_users_of(&index),
        index,
        pending_free: Vec::new(),
        in_flight: HashSet::new(),
        committed_pages: root.pages,
        committed_segments,
        committed_free_pages: root.free_pages,
        root_hash,
        root_counter: Some(counter),
        generation: root.generation,
        in_doubt: None,
        free_unsaved: false,
        conflict: false,
        fresh: Default::default(),
    }))
}

/// An index record (a page or a chunk segment) from the local copy if it holds exactly it,
/// else from the store (then kept locally).
async fn read_record(
    pads: &PadIo,
    local: Option<&super::page_cache::PageCache>,
    pad: PadRef,
    hash: [u8; 32],
) -> Result<Vec<u8>> {
    if let Some(bytes) = local.and_then(|l| l.get(&hash)) {
        return Ok(bytes);
    }
    let bytes = pads.read(&pad, hash, HashKind::Sha256).await?;
    if let Some(local) = local {
        local.put(&hash, &bytes);
    }
    Ok(bytes.to_vec())
}

/// Reads the chunk segments `pages` name into their entries; returns the entries by page and
/// the segments by key.
async fn load_segments(
    pads: &PadIo,
    local: Option<&super::page_cache::PageCache>,
    pages: Vec<Page>,
    parallelism: usize,
) -> Result<(Vec<BTreeMap<String, Entry>>, SegmentMap)> {
    let corrupt = |why: &str| Error::Index(CodecError::Decode(why.into()));
    let mut reads = Vec::new();
    for (n, page) in pages.iter().enumerate() {
        for (key, refs) in &page.segments {
            let entry = page.entries.get(key);
            if !entry.is_some_and(|e| e.chunks.is_empty()) || refs.is_empty() {
                return Err(corrupt("an index page lists segments of no large file"));
            }
            for (i, segment) in refs.iter().enumerate() {
                let end = refs.get(i + 1).map(|next| next.first);
                reads.push((n, key.clone(), *segment, end));
            }
        }
    }
    let reads = reads.into_iter().map(|(n, key, segment, end)| async move {
        let bytes = read_record(pads, local, segment.pad, segment.hash).await?;
        let chunks = segments::decode(&bytes, &segment, end)?;
        Ok::<_, Error>((n, key, chunks))
    });
    let read: Vec<_> = futures::stream::iter(reads)
        .buffered(parallelism)
        .try_collect()
        .await?;
    let mut committed = SegmentMap::new();
    let mut entries: Vec<BTreeMap<String, Entry>> = Vec::with_capacity(pages.len());
    for page in pages {
        committed.extend(page.segments);
        entries.push(page.entries);
    }
    for (n, key, chunks) in read {
        let entry = entries[n].get_mut(&key).expect("checked above");
        for (idx, chunk) in chunks {
            entry.chunks.insert(idx, chunk);
        }
    }
    Ok((entries, committed))
}

/// The chunk segments of large files, by key.
pub(super) type SegmentMap = HashMap<String, Vec<SegmentRef>>;

/// Page `n` as a commit stores it: its large files' chunks taken out of their entries and cut
/// into segments (returned by key; the page lists none yet).
#[allow(clippy::type_complexity)]
fn cut_segments(
    n: usize,
    entries: BTreeMap<String, Entry>,
) -> std::result::Result<(usize, Page, Vec<(String, Vec<Segment>)>), CodecError> {
    let mut page = Page {
        entries,
        segments: BTreeMap::new(),
    };
    let mut cuts = Vec::new();
    for (key, entry) in page.entries.iter_mut() {
        if segments::segmented(&entry.chunks) {
            cuts.push((key.clone(), segments::split(&entry.chunks)?));
            entry.chunks = ChunkMap::default();
        }
    }
    Ok((n, page, cuts))
}

impl super::Inner {
    /// Writes an index or free-list page record of hash `hash` to `pad`; returns the pad as
    /// written.
    async fn write_record(&self, pad: PadRef, bytes: Vec<u8>, hash: [u8; 32]) -> Result<PadRef> {
        if bytes.len() > MAX_PLAINTEXT {
            return Err(Error::Store(StoreError::TooBig(bytes.len())));
        }
        self.pads
            .write(pad, INDEX_ENCODING, Bytes::from(bytes), hash)
            .await
    }
}

/// How a commit writes the free list.
struct FreePlan {
    /// Committed pages that stay as they are.
    kept: Vec<FreePageRef>,
    /// New pages, each with its pad.
    writes: Vec<(Vec<PadRef>, PadRef)>,
    tail: Vec<PadRef>,
}

/// Lays out the free list a commit writes: the free pads now, then `old_page_pads` (which gains
/// the pads of the committed free-list pages that change), then `releasing`; all of them are
/// free once the root lands. Committed pages whose pads are unchanged are kept; the rest is
/// written as full pages of `per_page`, leaving between one and two pages' worth in the tail.
/// The pads for new pages come off the free list itself, which shortens it, so they are taken
/// one at a time until there are enough.
fn plan_free_list(
    state: &mut State,
    pads: &PadIo,
    per_page: usize,
    old_page_pads: &mut Vec<PadRef>,
    releasing: &[PadRef],
) -> FreePlan {
    let mut taken = Vec::new();
    let (kept, kept_len, pages) = loop {
        let unchanged = state.index.free_pads.committed_prefix();
        let mut kept = 0;
        let mut kept_len = 0;
        for page in &state.committed_free_pages {
            if kept_len + page.len as usize > unchanged {
                break;
            }
            kept += 1;
            kept_len += page.len as usize;
        }
        // The pads of the pages that change are free once the root lands.
        let dropped = state.committed_free_pages.len() - kept;
        let rest = state.index.free_pads.len() - kept_len
            + old_page_pads.len()
            + dropped
            + releasing.len();
        let pages = (rest / per_page).saturating_sub(1);
        if taken.len() >= pages {
            break (kept, kept_len, pages);
        }
        taken.push(state.take_pad(pads, 0));
    };
    // Taken one too many (the last one shortened the list by a page): it stays free.
    state.index.free_pads.extend(taken.drain(pages..));
    state.index.free_pads.plan();
    old_page_pads.extend(state.committed_free_pages[kept..].iter().map(|p| p.pad));
    let mut rest: Vec<PadRef> = state.index.free_pads.as_slice()[kept_len..].to_vec();
    rest.extend(old_page_pads.iter());
    rest.extend(releasing);
    let tail = rest.split_off(pages * per_page);
    let writes = rest
        .chunks(per_page)
        .map(<[PadRef]>::to_vec)
        .zip(taken)
        .collect();
    FreePlan {
        kept: state.committed_free_pages[..kept].to_vec(),
        writes,
        tail,
    }
}

/// A page a commit wrote: an index page by number, or a new free-list page by position.
enum Written {
    /// With the segments of the page's large files, and the pads of those newly written.
    Page(usize, PageRef, Vec<(String, Vec<SegmentRef>)>, Vec<PadRef>),
    FreePage(usize, FreePageRef),
}

/// An index page a commit writes, with the chunk segments of its large files that changed.
struct PageWrite {
    n: usize,
    /// Its large files' entries hold no chunks; `page.segments` lists where they are (a new
    /// segment's pad as it is before its write).
    page: Page,
    pad: PadRef,
    /// New segments: the key, the segment's position in its list, its record and its pad.
    segments: Vec<(String, usize, Segment, PadRef)>,
}

/// What one commit will write, taken from the state under its lock.
struct Plan {
    dirty: Vec<usize>,
    /// The non-empty dirty pages.
    writes: Vec<PageWrite>,
    /// The new free-list pages, in order, each with the pad it goes to; they follow the
    /// pages `root.free_pages` already lists.
    free_writes: Vec<(Vec<PadRef>, PadRef)>,
    root: Root,
    old_page_pads: Vec<PadRef>,
    releasing: Vec<PadRef>,
    root_counter: Option<u64>,
    /// The last journaled change this commit covers.
    journal_upto: u64,
    /// Fresh pads whose place this commit records (see `fresh_pads.rs`).
    settling: Vec<PadSeed>,
    /// The keys with committed segments in the pages this commit rewrites.
    replaced_segments: Vec<String>,
}

impl Engine {
    /// Makes every change so far durable in the store. Concurrent callers share commits: a
    /// commit covers every change made before it started.
    ///
    /// The commit runs in a task of its own, to its end whether or not the caller still waits
    /// (a timeout, an aborted task): dropped between its root write and the bookkeeping after,
    /// it would leave a root in the store this engine does not know it wrote, and the next
    /// commit would take that root for another writer's.
    ///
    /// A read-only engine writes nothing: its commits do nothing.
    pub async fn commit(&self) -> Result<()> {
        if self.inner.opts.read_only {
            return Ok(());
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.commit_to_the_end().await })
            .await
            .expect("a commit task panicked")
    }

    async fn commit_to_the_end(&self) -> Result<()> {
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
            self.inner.pack_commit_asked.store(false, Ordering::Relaxed);
            // Most pieces are packed while changes go on; the rest with them held back, so
            // that the pages snapshotted next hold none (`pack.rs`).
            self.compact_packs().await;
            self.pack_pending().await?;
            let gate = self.inner.pack_gate.write().await;
            self.pack_pending().await?;
            // Nothing waits to be packed now but what closes are still writing.
            self.inner.pack_backlog.store(0, Ordering::Relaxed);
            self.inner.pack_clock.lock().unwrap().reset();
            match self.try_commit(gate).await {
                // A page outgrew a pad: split the pages and write them all.
                Err(Error::PageTooBig) => self.inner.state.lock().await.index.split_pages(),
                // A disk filled by others: this commit (most likely of deletes, which give
                // their space back when it lands) may use the room the journal keeps.
                Err(e) if e.errno() == Some(libc::ENOSPC) && self.release_disk_reserve() => {}
                other => return other,
            }
        }
    }

    async fn try_commit(&self, packing_gate: tokio::sync::RwLockWriteGuard<'_, ()>) -> Result<()> {
        let plan = self.plan_commit().await;
        drop(packing_gate);
        let Some(mut plan) = plan? else {
            return Ok(());
        };
        let parallelism = self.inner.opts.parallelism.max(1);

        let mut new_page_pads: Vec<PadRef> = plan.writes.iter().map(|w| w.pad).collect();
        new_page_pads.extend(plan.free_writes.iter().map(|(_, pad)| *pad));
        let segment_pads = plan.writes.iter().flat_map(|w| &w.segments);
        new_page_pads.extend(segment_pads.map(|(_, _, _, pad)| *pad));

        // Owned inputs: a closure over references would make `commit()` not `Send`.
        let index_jobs = std::mem::take(&mut plan.writes).into_iter().map(|write| {
            let inner = self.inner.clone();
            async move {
                let keys = write.page.entries.len();
                let mut page = write.page;
                let segments = write.segments.into_iter().map(|(key, i, segment, pad)| {
                    let inner = inner.clone();
                    async move {
                        if let Some(local) = &inner.page_cache {
                            local.put(&segment.hash, &segment.bytes);
                        }
                        let pad = inner.write_record(pad, segment.bytes, segment.hash);
                        Ok::<_, Error>((key, i, pad.await?))
                    }
                });
                let written: Vec<_> = futures::stream::iter(segments)
                    .buffer_unordered(parallelism)
                    .try_collect()
                    .await?;
                let mut new_pads = Vec::with_capacity(written.len());
                for (key, i, pad) in written {
                    page.segments.get_mut(&key).expect("planned")[i].pad = pad;
                    new_pads.push(pad);
                }
                let (bytes, page) = tokio::task::spawn_blocking(move || {
                    encode_page(&page).map(|bytes| (bytes, page))
                })
                .await
                .expect("encode task panicked")?;
                // Splitting helps only a page of several keys; one key alone too big
                // would make `commit` split pages for ever.
                if bytes.len() > PAGE_SPLIT_BYTES && keys > 1 {
                    return Err(Error::PageTooBig);
                }
                let hash = sha256(&bytes);
                if let Some(local) = &inner.page_cache {
                    local.put(&hash, &bytes);
                }
                let pad = inner.write_record(write.pad, bytes, hash).await?;
                let segments = page.segments.into_iter().collect();
                Ok(Written::Page(
                    write.n,
                    PageRef { pad, hash },
                    segments,
                    new_pads,
                ))
            }
            .boxed()
        });
        let free_jobs = plan
            .free_writes
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (pads, pad))| {
                let inner = self.inner.clone();
                async move {
                    let len = pads.len() as u32;
                    let bytes = encode_free_page(&pads)?;
                    let hash = sha256(&bytes);
                    let pad = inner.write_record(pad, bytes, hash).await?;
                    Ok(Written::FreePage(i, FreePageRef { pad, hash, len }))
                }
                .boxed()
            });
        let jobs: Vec<futures::future::BoxFuture<'static, Result<Written>>> =
            index_jobs.chain(free_jobs).collect();
        let written: Result<Vec<Written>> = futures::stream::iter(jobs)
            .buffer_unordered(parallelism)
            .try_collect()
            .await;
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
        let kept_free_pages = root.free_pages.len();
        let mut new_free_pages = vec![None; plan.free_writes.len()];
        new_page_pads.clear();
        let mut segments = SegmentChange {
            replaced: plan.replaced_segments,
            written: Vec::new(),
        };
        for written in written {
            match written {
                Written::Page(n, page, written, new_pads) => {
                    root.pages[n] = Some(page);
                    new_page_pads.push(page.pad);
                    new_page_pads.extend(new_pads);
                    segments.written.extend(written);
                }
                Written::FreePage(i, page) => {
                    new_free_pages[i] = Some(page);
                    new_page_pads.push(page.pad);
                }
            }
        }
        root.free_pages.extend(new_free_pages.into_iter().flatten());
        debug_assert_eq!(
            root.free_pages.len(),
            kept_free_pages + plan.free_writes.len()
        );
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
                return Err(e.into());
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
        if result.is_ok() {
            let freed = plan.old_page_pads.iter().chain(&plan.releasing);
            self.trim_freed(freed.map(|p| p.seed).collect()).await;
        }

        let mut state = self.inner.state.lock().await;
        match result {
            Ok(counter) => {
                if let Some(local) = &self.inner.page_cache {
                    let mut kept: HashSet<[u8; 32]> =
                        root.pages.iter().flatten().map(|p| p.hash).collect();
                    let new_segments = segments.written.iter().flat_map(|(_, refs)| refs);
                    kept.extend(new_segments.map(|s| s.hash));
                    let old_segments = (segments.replaced.iter())
                        .flat_map(|key| &state.committed_segments[key])
                        .map(|s| &s.hash);
                    let old_pages = state.committed_pages.iter().flatten().map(|p| &p.hash);
                    for old in old_pages.chain(old_segments) {
                        if !kept.contains(old) {
                            local.remove(old);
                        }
                    }
                }
                segments.apply(&mut state.committed_segments);
                state.root_counter = Some(counter);
                state.generation = root.generation;
                state.root_hash = root_hash;
                state.committed_pages = root.pages;
                state.committed_free_pages = root.free_pages;
                let freed = plan.old_page_pads.iter().chain(&plan.releasing);
                self.inner.pads.note_freed(freed.map(|p| p.seed), counter);
                state.index.free_pads.extend(plan.old_page_pads);
                state.index.free_pads.extend(plan.releasing);
                state.index.free_pads.landed();
                let mut settled = plan.settling;
                settled.extend(new_page_pads.iter().map(|p| p.seed));
                self.inner.settle_fresh(&mut state, &settled);
                drop(state);
                self.note_root(counter, root.generation, root_hash);
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
                    free_pages: root.free_pages,
                    old_page_pads: plan.old_page_pads,
                    releasing: plan.releasing,
                    new_page_pads,
                    segments,
                });
                Err(e)
            }
        }
    }

    /// Takes the dirty pages and released pads, and picks pads for the new page versions.
    async fn plan_commit(&self) -> Result<Option<Plan>> {
        let (snapshot, releasing, journal_upto, settling) = {
            let mut state = self.inner.state.lock().await;
            let state = &mut *state;
            let nothing_to_do =
                !state.index.is_dirty() && state.pending_free.is_empty() && !state.free_unsaved;
            if nothing_to_do && state.root_counter.is_some() {
                return Ok(None);
            }
            let count = state.index.page_count();
            let mut dirty: Vec<usize> = state.index.take_dirty().into_iter().collect();
            if count != state.committed_pages.len() {
                dirty = (0..count).collect();
            }
            let pages: Vec<(usize, BTreeMap<String, Entry>)> = (dirty.iter())
                .filter(|&&n| !state.index.page(n).is_empty())
                .map(|&n| (n, state.index.page(n).clone()))
                .collect();
            // Fresh pads not in flight are in the index or on the free list now: once this
            // commit lands, the store says where they went.
            let settling: Vec<PadSeed> = (state.fresh.this_run.iter())
                .filter(|seed| !state.in_flight.contains(*seed))
                .copied()
                .collect();
            let releasing = std::mem::take(&mut state.pending_free);
            // Under the state lock: exactly the changes journaled so far are in this plan.
            let journal_upto = self.inner.journal.get().map_or(0, |j| j.last_seq());
            ((count, dirty, pages), releasing, journal_upto, settling)
        };
        let (count, dirty, pages) = snapshot;
        // Cutting large files into segments is work in proportion to their size: done with
        // no lock held, on the snapshot just taken.
        let cut = tokio::task::spawn_blocking(move || {
            (pages.into_iter())
                .map(|(n, entries)| cut_segments(n, entries))
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .await
        .expect("segment task panicked");

        let mut state = self.inner.state.lock().await;
        let state = &mut *state;
        let cut = match cut {
            Ok(cut) => cut,
            Err(e) => {
                state.index.mark_dirty(dirty);
                state.pending_free.extend(releasing);
                return Err(e.into());
            }
        };
        let resized = count != state.committed_pages.len();
        let (mut pages, mut old_page_pads): (Vec<Option<PageRef>>, Vec<PadRef>) = if resized {
            let old = state.committed_pages.iter().flatten().map(|p| p.pad);
            (vec![None; count], old.collect())
        } else {
            let old = dirty
                .iter()
                .filter_map(|&n| state.committed_pages[n].map(|p| p.pad));
            (state.committed_pages.clone(), old.collect())
        };
        for &n in &dirty {
            pages[n] = None;
        }
        // The committed segments of the pages rewritten, by hash: a segment stored again
        // unchanged (its file's page changed for another key, or the file was renamed) keeps
        // its pad; the others are free once this commit lands, like the pages replaced.
        let replaced_segments: Vec<String> = (state.committed_segments.keys())
            .filter(|key| resized || dirty.contains(&page_of(key, count)))
            .cloned()
            .collect();
        let mut reusable: HashMap<[u8; 32], Vec<SegmentRef>> = HashMap::new();
        for segment in replaced_segments
            .iter()
            .flat_map(|key| &state.committed_segments[key])
        {
            reusable.entry(segment.hash).or_default().push(*segment);
        }
        let mut writes = Vec::new();
        for (n, mut page, cuts) in cut {
            let mut segments = Vec::new();
            for (key, cuts) in cuts {
                let mut refs = Vec::with_capacity(cuts.len());
                for (i, segment) in cuts.into_iter().enumerate() {
                    let kept = reusable.get_mut(&segment.hash).and_then(Vec::pop);
                    let pad =
                        kept.map_or_else(|| state.take_pad(&self.inner.pads, 0), |kept| kept.pad);
                    refs.push(SegmentRef {
                        first: segment.first,
                        chunks: segment.chunks,
                        pad,
                        hash: segment.hash,
                    });
                    if kept.is_none() {
                        segments.push((key.clone(), i, segment, pad));
                    }
                }
                page.segments.insert(key, refs);
            }
            let pad = state.take_pad(&self.inner.pads, 0);
            writes.push(PageWrite {
                n,
                page,
                pad,
                segments,
            });
        }
        old_page_pads.extend(reusable.into_values().flatten().map(|s| s.pad));
        state.free_unsaved = false;
        let free = plan_free_list(
            state,
            &self.inner.pads,
            self.inner.opts.free_page_pads.max(1),
            &mut old_page_pads,
            &releasing,
        );
        self.inner.log_fresh(state);
        let root = Root {
            generation: state.generation + 1,
            scratchpad_size: state.index.scratchpad_size,
            pages,
            free_pages: free.kept,
            free_tail: free.tail,
        };
        Ok(Some(Plan {
            dirty,
            writes,
            free_writes: free.writes,
            root,
            old_page_pads,
            releasing,
            root_counter: state.root_counter,
            journal_upto,
            settling,
            replaced_segments,
        }))
    }

    fn release_disk_reserve(&self) -> bool {
        self.inner
            .journal
            .get()
            .is_some_and(|journal| journal.release_reserve())
    }

    /// Drops the changes a landed commit covers from the journal. A failure only costs a
    /// longer replay: the journal's commit record tells the next open they are in the store.
    fn journal_committed(&self, upto: u64, root_hash: [u8; 32]) {
        *self.inner.last_commit.lock().unwrap() = Some(std::time::SystemTime::now());
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
            attempt.segments.apply(&mut state.committed_segments);
            state.committed_free_pages = attempt.free_pages;
            state.index.free_pads.extend(attempt.old_page_pads);
            state.index.free_pads.extend(attempt.releasing);
            state.index.free_pads.landed();
            drop(state);
            self.note_root(counter, attempt.generation, attempt.root_hash);
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
