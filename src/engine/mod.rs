//! The pad manager and the MutAnt API: values chunked into pads, written and read concurrently,
//! pads recycled through the free list, the index committed copy-on-write.
//!
//! Lifecycle of a pad: free (in the committed index's `free_pads`) -> in flight (being written
//! for a change) -> referenced by an entry -> released by a later change (`pending_free`) ->
//! free again once that change is committed. The index lock is held only around index access.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use autonomi::{Bytes, SecretKey};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use crate::codec::HashKind;
use crate::index::persist::{FreePageRef, PageRef};
use crate::index::segments::{self, SegmentRef};
use crate::index::{
    inode_key, inode_of_key, is_internal_key, is_retired_key, Chunk, ChunkMap, Entry, FileKind,
    Index, Meta, PadRef, MAX_DATA_CHUNKS, MAX_FILE_SIZE,
};
use crate::keys::{MasterKey, PadSeed};
use crate::store::PadStore;

mod activity;
pub mod cache;
pub mod check;
mod commit;
mod crypto_pool;
pub mod error;
mod fresh_pads;
pub mod gc;
pub mod journal;
mod pack;
pub mod pads;
pub mod page_cache;
mod recover;
mod reserve;
pub use reserve::available_bytes;
pub mod root_record;

pub use activity::Activity;
use cache::ChunkCache;
pub use error::{Error, Result};
use journal::{Journal, Op, Replay};
use pads::{PadIo, Priority, DATA_ENCODING};
use page_cache::PageCache;
use root_record::{RootRecord, RootRecordPlace, Seen};

use crate::at_rest::LocalKeys;
pub use recover::LOST_FOUND;

/// The most bytes a chunk holds inline in the index (see [`Engine::inline_limit`]). Larger
/// small pieces are packed instead: an index page is rewritten whole when any of its keys
/// changes, and keys spread over every page, so bytes held inline are uploaded again with
/// nearly every commit. At 4 KiB, a tree of 10,000 such files made each later commit over the
/// network carry tens of MiB of pages; at 1 KiB a page holds mostly metadata.
pub const INLINE_MAX: usize = 1024;

/// Chunk size of new indexes: 4 MiB less 4 KiB, a whole number of 4 KiB pages that fits a pad.
pub const DEFAULT_SCRATCHPAD_SIZE: u32 = 4 * 1024 * 1024 - 4096;
const _: () = assert!(DEFAULT_SCRATCHPAD_SIZE as usize <= crate::seal::MAX_PLAINTEXT);

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Chunk size for a new index; an existing index keeps its own.
    pub scratchpad_size: u32,
    /// Pad reads or writes in flight at once.
    pub parallelism: usize,
    pub cache_bytes: usize,
    /// Start an empty index when the store has none for this key.
    pub create_if_missing: bool,
    /// Where to keep local copies of index pages for a fast start (never the only copy).
    pub index_cache_dir: Option<PathBuf>,
    /// Where to keep the journal of changes not yet committed (and to save changes a commit
    /// could not write because someone else changed the index). Without one, a change is
    /// durable only once `commit` returns.
    pub journal_dir: Option<PathBuf>,
    /// How long to wait for another process holding the journal's lock (one finishing its
    /// unmount) before refusing to open.
    pub lock_wait: std::time::Duration,
    /// Replay what can be read of a journal with a damaged frame in the middle, dropping the
    /// rest; without it such a journal is refused and left as it is.
    pub discard_damaged_journal: bool,
    /// Where to record the newest root seen, to refuse an older one (a rollback).
    pub root_record: Option<RootRecordPlace>,
    /// Open a root older than the newest one recorded (and record it as the newest).
    pub accept_rollback: bool,
    /// Pads per free-list page (`index::free::FREE_PAGE_PADS`; tests use tiny pages).
    pub free_page_pads: usize,
    /// Write nothing, to the store or the journal: the journal's changes are applied in memory
    /// only (shown, and left for the next read-write open) and commits do nothing.
    pub read_only: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            scratchpad_size: DEFAULT_SCRATCHPAD_SIZE,
            parallelism: 16,
            cache_bytes: 256 << 20,
            create_if_missing: true,
            index_cache_dir: None,
            journal_dir: None,
            lock_wait: std::time::Duration::ZERO,
            discard_damaged_journal: false,
            root_record: None,
            accept_rollback: false,
            free_page_pads: crate::index::free::FREE_PAGE_PADS,
            read_only: false,
        }
    }
}

/// Where a store or commit stands, for a progress callback.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub pads_total: u64,
    pub pads_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Pads that had to be created (paid for, on the network) rather than recycled.
    pub pads_created: u64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Figures for `statfs` and logs.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub keys: usize,
    /// Files, directories and symlinks, each counted once.
    pub files: usize,
    /// Bytes of file data stored (holes take none).
    pub data_bytes: u64,
    pub pads_in_use: usize,
    pub free_pads: usize,
    pub chunk_size: u32,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pads: PadIo,
    root_key: SecretKey,
    state: Mutex<State>,
    commit_lock: Mutex<()>,
    cache: ChunkCache,
    reads_in_flight: std::sync::Mutex<HashMap<(PadSeed, [u8; 32]), SharedRead>>,
    opts: EngineOptions,
    chunk_size: u32,
    journal: OnceLock<Journal>,
    /// A read-only open's share of the journal's lock, held for the engine's life.
    read_only_lock: OnceLock<std::fs::File>,
    /// The directory (a key) where this open recovered changes it could not replay.
    recovered: OnceLock<String>,
    /// When this mount's last commit landed (see `activity.rs`).
    last_commit: std::sync::Mutex<Option<std::time::SystemTime>>,
    local_keys: LocalKeys,
    page_cache: Option<PageCache>,
    root_record: Option<RootRecord>,
    fresh_log: Option<fresh_pads::FreshLog>,
    /// Bytes of pieces held inline until a commit packs them (`pack.rs`), roughly.
    pack_backlog: std::sync::atomic::AtomicUsize,
    /// When the pieces waiting to be packed began to arrive, and the last did.
    pack_clock: std::sync::Mutex<pack::PackClock>,
    /// A commit was started for the backlog and has not begun packing yet.
    pack_commit_asked: std::sync::atomic::AtomicBool,
    /// Held by a commit's last packing pass; a change bringing a piece to pack waits for it.
    pack_gate: tokio::sync::RwLock<()>,
    /// Keys keeping compacted packs referenced, with when they were compacted.
    retired: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

/// The longest write that reuses a free pad waiting on roots not yet uploaded (see
/// `State::take_pad`): an index page's round trip is short, a whole pad's is not.
const LONGEST_WAITING_WRITE: usize = 256 << 10;

/// What [`Engine::entry_meta`] reads of an entry.
pub struct EntryMeta {
    pub size: u64,
    /// Bytes of data stored: the size less the holes (`st_blocks`).
    pub stored: u64,
    pub meta: Meta,
}

/// Leave to install an entry that brings pieces to pack ([`Engine::install_permit`]).
pub struct InstallPermit<'a>(Option<tokio::sync::RwLockReadGuard<'a, ()>>);

type SharedRead = futures::future::Shared<futures::future::BoxFuture<'static, Result<Bytes>>>;

struct State {
    index: Index,
    /// Released by changes not yet committed: not reusable until they are.
    pending_free: Vec<PadRef>,
    /// Taken for writes whose chunks are not yet in the index.
    in_flight: HashSet<PadSeed>,
    committed_pages: Vec<Option<PageRef>>,
    /// Where the committed pages keep the chunks of their large files, by key.
    committed_segments: HashMap<String, Vec<SegmentRef>>,
    /// The committed root's free-list pages.
    committed_free_pages: Vec<FreePageRef>,
    /// SHA-256 of the committed root's encoding: what the journal's records refer to.
    root_hash: [u8; 32],
    root_counter: Option<u64>,
    generation: u64,
    in_doubt: Option<commit::Attempt>,
    /// How many chunks of the index lie in each pack: a pack is freed with its last piece.
    pack_users: HashMap<PadSeed, pack::PackUse>,
    /// Pads went back to the free list that the committed index does not list as free (the
    /// pads of a failed write): a commit must save the list, or they are lost on restart.
    free_unsaved: bool,
    /// A commit found the stored index changed by someone else: no commit can land any more.
    conflict: bool,
    fresh: FreshSeeds,
}

/// Seeds of pads created fresh that no commit has accounted for yet (see `fresh_pads.rs`).
#[derive(Default)]
struct FreshSeeds {
    /// Minted and not yet in the log.
    unlogged: Vec<PadSeed>,
    /// Minted by this run and logged.
    this_run: HashSet<PadSeed>,
    /// Left in the log by earlier runs: for `gc` to check.
    suspects: HashSet<PadSeed>,
}

impl Engine {
    /// Opens the index of `master` in `store`: reads it, or starts (and commits) an empty one.
    pub async fn open(
        store: Arc<dyn PadStore>,
        master: MasterKey,
        opts: EngineOptions,
    ) -> Result<Self> {
        let local_keys = LocalKeys::derive(&master);
        // The store's lock before its root: a process still finishing its unmount commits
        // first, and this open then reads the root it left.
        let journal_lock = match &opts.journal_dir {
            Some(dir) => match lock_journal(dir, opts.lock_wait, opts.read_only).await {
                Ok(lock) => Some(lock),
                // A store on a read-only disk: no journal can be there, no writer either.
                Err(Error::Journal(e)) if opts.read_only => {
                    tracing::info!("read-only, without the journal's lock: {e}");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let pads = PadIo::with_gets_in_flight(store, master.clone(), opts.parallelism);
        let root_key = master.root_key();
        let page_cache = opts
            .index_cache_dir
            .as_deref()
            .map(|dir| PageCache::new(dir, &local_keys));
        let root_record = opts
            .root_record
            .as_ref()
            .map(|place| RootRecord::new(place, &local_keys));
        let check = |found| check_rollback(root_record.as_ref(), found, opts.accept_rollback);
        let loaded = commit::load(
            &pads,
            &root_key,
            opts.parallelism,
            page_cache.as_ref(),
            &check,
        )
        .await?;
        let fresh = loaded.is_none();
        let fresh_log = (opts.journal_dir.as_deref())
            .map(|dir| fresh_pads::FreshLog::new(dir, local_keys.fresh_pads.clone()));
        let mut state = match loaded {
            Some(state) => state,
            None if opts.create_if_missing => State {
                index: Index::new(opts.scratchpad_size),
                pending_free: Vec::new(),
                in_flight: HashSet::new(),
                committed_pages: vec![None],
                committed_segments: HashMap::new(),
                committed_free_pages: Vec::new(),
                root_hash: [0; 32],
                root_counter: None,
                generation: 0,
                in_doubt: None,
                pack_users: HashMap::new(),
                free_unsaved: false,
                conflict: false,
                fresh: FreshSeeds::default(),
            },
            None => return Err(Error::NoIndex),
        };
        state.fresh.suspects = fresh_log.as_ref().map(|l| l.read()).unwrap_or_default();
        // Packs an earlier run compacted: nothing in this process names them.
        let opened_at = std::time::Instant::now();
        let retired: Vec<(String, std::time::Instant)> = (state.index.entries())
            .filter(|(key, _)| is_retired_key(key))
            .map(|(key, _)| (key.clone(), opened_at))
            .collect();
        let chunk_size = state.index.scratchpad_size;
        let engine = Engine {
            inner: Arc::new(Inner {
                pads,
                root_key,
                state: Mutex::new(state),
                commit_lock: Mutex::new(()),
                cache: ChunkCache::new(opts.cache_bytes),
                reads_in_flight: Default::default(),
                opts,
                chunk_size,
                journal: OnceLock::new(),
                read_only_lock: OnceLock::new(),
                recovered: OnceLock::new(),
                last_commit: Default::default(),
                local_keys,
                page_cache,
                root_record,
                fresh_log,
                pack_backlog: Default::default(),
                pack_clock: Default::default(),
                pack_commit_asked: Default::default(),
                pack_gate: Default::default(),
                retired: std::sync::Mutex::new(retired),
            }),
        };
        if fresh {
            engine.commit().await?;
        }
        if let (Some(dir), Some(lock)) = (engine.inner.opts.journal_dir.clone(), journal_lock) {
            engine.start_journal(&dir, lock).await?;
        }
        Ok(engine)
    }

    /// Records a root that landed (or was loaded) as the newest seen, if it is.
    fn note_root(&self, counter: u64, generation: u64, root_hash: [u8; 32]) {
        if let Some(record) = &self.inner.root_record {
            if record.read().is_none_or(|seen| counter > seen.counter) {
                record.write(&Seen {
                    counter,
                    generation,
                    root_hash,
                });
            }
        }
    }

    /// Replays what an earlier run journaled and did not commit, then journals from here on.
    /// Changes made against a root someone else has since replaced are recovered into the file
    /// system instead (`recover.rs`), and the journal is rewritten only once they are committed.
    async fn start_journal(&self, dir: &std::path::Path, lock: std::fs::File) -> Result<()> {
        let journal_err = |e: std::io::Error| {
            let hint = match reserve::is_no_space(&e) {
                true => " (the disk holding the data dir is full: make room on it and mount again)",
                false => "",
            };
            Error::Journal(format!("{}: {e}{hint}", dir.display()))
        };
        let path = dir.join("journal");
        let key = self.inner.local_keys.journal.clone();
        let left = Journal::read(&path, &key).map_err(journal_err)?;
        if left.torn_bytes > 0 {
            tracing::warn!(
                "the journal ends in {} bytes of a change that was never acknowledged; ignored",
                left.torn_bytes
            );
        }
        if let Some(damage) = &left.damage {
            if !self.inner.opts.discard_damaged_journal {
                return Err(Error::JournalDamaged(format!(
                    "the journal {} is damaged: frame {} (byte {}) fails its check, and {} \
                     changes after it are intact. Nothing was replayed and the journal is left as \
                     it is; mount with --discard-damaged-journal to apply what can be read and \
                     drop the damaged part",
                    path.display(),
                    damage.frame,
                    damage.offset,
                    damage.valid_after
                )));
            }
            tracing::warn!(
                "the journal is damaged at frame {}: replaying what can be read around it, as \
                 asked (--discard-damaged-journal)",
                damage.frame
            );
        }
        if left.unsealed {
            tracing::info!(
                "the journal was written unencrypted by an earlier version: it is rewritten sealed"
            );
        }
        let old_recovered = dir.join("recovered");
        if old_recovered.exists() {
            tracing::warn!(
                "{} holds changes an earlier version recovered in plain text: move what you \
                 need into the mount and delete it",
                old_recovered.display()
            );
        }
        let read_only = self.inner.opts.read_only;
        let mut state = self.inner.state.lock().await;
        let (kept, foreign) = match left.replay(&state.root_hash) {
            Replay::Apply(ops) => {
                let mut kept = Vec::with_capacity(ops.len());
                for op in ops {
                    match state.check(&op, true) {
                        Ok(()) => {
                            state.apply(&op, true);
                            kept.push(op);
                        }
                        Err(e) => {
                            tracing::error!(
                                "a journaled change ({}) cannot be replayed; skipped",
                                op.kind()
                            );
                            tracing::debug!("not replayable ({e}): {op:?}");
                        }
                    }
                }
                if !kept.is_empty() && read_only {
                    tracing::info!(
                        "showing {} changes from the journal that are not committed yet \
                         (read-only: the next read-write mount commits them)",
                        kept.len()
                    );
                } else if !kept.is_empty() {
                    tracing::info!(
                        "replayed {} uncommitted changes from the journal",
                        kept.len()
                    );
                }
                (kept, Vec::new())
            }
            Replay::Foreign(ops) => (Vec::new(), ops),
        };
        drop(state);
        if read_only {
            if !foreign.is_empty() {
                tracing::warn!(
                    "the journal holds {} changes made against an index since replaced in the \
                     store: not shown; a read-write mount recovers them into lost+found/",
                    foreign.len()
                );
            }
            // The lock, shared with other read-only opens, keeps writers out while this lasts.
            let _ = self.inner.read_only_lock.set(lock);
            return Ok(());
        }
        if !foreign.is_empty() {
            // Committed before the journal holding them is rewritten: a failure here leaves the
            // journal as it is, for the next open to try again.
            let saved = recover::recover(self, &foreign).await?;
            tracing::error!(
                "the index was changed elsewhere after this machine's last {} changes were made; \
                 they were not applied, and what could be read of them is in the file system \
                 under {saved}",
                foreign.len(),
            );
            let _ = self.inner.recovered.set(saved);
        }
        let root_hash = self.inner.state.lock().await.root_hash;
        let journal = Journal::create(&path, lock, key, root_hash, kept).map_err(journal_err)?;
        let _ = self.inner.journal.set(journal);
        Ok(())
    }

    /// Where (a directory key) this open recovered journaled changes it could not apply.
    pub fn recovered_at(&self) -> Option<&str> {
        self.inner.recovered.get().map(String::as_str)
    }

    /// Whether a commit found the stored index changed by someone else (all later commits
    /// fail with [`Error::Conflict`]; `save_uncommitted` keeps the changes).
    pub async fn in_conflict(&self) -> bool {
        self.inner.state.lock().await.conflict
    }

    /// Waits until the store holds every commit so far where it promises to (a tiered store:
    /// uploaded to the network). `fsync(2)` calls it after its commit.
    pub async fn flush_store(&self) -> Result<()> {
        Ok(self.inner.pads.store().flush().await?)
    }

    /// Whether a synced journal makes changes as durable as a commit would: the journal is
    /// kept beside a store on this machine's disk, which holds the pads it names. Over a
    /// network (or the tier in front of one) a commit promises more: the network holds it.
    pub fn durable_by_journal(&self) -> bool {
        self.is_journaled() && self.inner.pads.store().on_this_disk()
    }

    /// Makes every change so far survive a crash of the machine without committing it: the
    /// next mount replays it ([`durable_by_journal`](Self::durable_by_journal) says when that
    /// is as good as a commit).
    pub async fn sync_journal(&self) -> Result<()> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || match engine.inner.journal.get() {
            Some(journal) => journal.sync(),
            None => Ok(()),
        })
        .await
        .expect("journal sync panicked")?;
        Ok(())
    }

    /// Whether changes are journaled locally (durable against a crash before the next commit).
    pub fn is_journaled(&self) -> bool {
        self.inner.journal.get().is_some()
    }

    /// After a commit refused because someone else changed the index: loads the index now in
    /// the store, recovers the changes not yet committed into it (under `lost+found/`, see
    /// `recover.rs`) and commits that; the journal forgets them only then. Returns where they
    /// went; `None` without a journal or changes. On failure they stay in the journal, and the
    /// next open recovers them.
    pub async fn save_uncommitted(&self) -> Result<Option<String>> {
        let Some(journal) = self.inner.journal.get() else {
            return Ok(None);
        };
        let ops = journal.pending();
        if ops.is_empty() {
            return Ok(None);
        }
        self.reload().await?;
        Ok(Some(recover::recover(self, &ops).await?))
    }

    /// Replaces the state with the index the store holds now (after a conflict).
    async fn reload(&self) -> Result<()> {
        let (record, accept) = (
            self.inner.root_record.as_ref(),
            self.inner.opts.accept_rollback,
        );
        let check = |found| check_rollback(record, found, accept);
        let loaded = commit::load(
            &self.inner.pads,
            &self.inner.root_key,
            self.inner.opts.parallelism,
            self.inner.page_cache.as_ref(),
            &check,
        )
        .await?
        .ok_or(Error::NoIndex)?;
        *self.inner.state.lock().await = loaded;
        self.inner.pads.forget_freed();
        Ok(())
    }

    /// Takes the pads in `seeds` out of the free list, so that no write reuses them while
    /// their contents are still to be read; returns them for [`Self::release_held_pads`].
    async fn hold_free_pads(&self, seeds: &HashSet<PadSeed>) -> Vec<PadRef> {
        let mut state = self.inner.state.lock().await;
        let held: Vec<PadRef> = (state.index.free_pads.iter())
            .filter(|p| seeds.contains(&p.seed))
            .copied()
            .collect();
        state.index.free_pads.retain(|p| !seeds.contains(&p.seed));
        held
    }

    async fn release_held_pads(&self, held: Vec<PadRef>) {
        self.inner.state.lock().await.index.free_pads.extend(held);
    }

    /// Whether installing `chunks` must wait for a commit's last packing pass: they hold a
    /// piece to pack, or a piece of a pack that may turn back into one (`State::reconcile`).
    fn brings_pieces(&self, chunks: &ChunkMap) -> bool {
        let limit = self.inline_limit();
        (chunks.iter()).any(|(_, c)| c.awaits_packing(limit) || c.is_packed())
    }

    /// Waits until an entry with `chunks` may be installed: a commit's last packing pass (which
    /// writes packs to the store) holds such installs back. A caller that holds a lock of its
    /// own takes this first, so that the lock is never held while the store is written; the
    /// permit then goes to [`install_with`](Self::install_with).
    pub async fn install_permit(&self, chunks: &ChunkMap) -> InstallPermit<'_> {
        InstallPermit(match self.brings_pieces(chunks) {
            true => Some(self.inner.pack_gate.read().await),
            false => None,
        })
    }

    /// Validates a change, journals it, then applies it: an error leaves nothing changed.
    async fn change(&self, op: Op) -> Result<()> {
        let permit = match &op {
            Op::Install { entry, .. } => self.install_permit(&entry.chunks).await,
            _ => InstallPermit(None),
        };
        self.change_with(op, permit).await
    }

    async fn change_with(&self, mut op: Op, permit: InstallPermit<'_>) -> Result<()> {
        if let Op::Install { entry, .. } = &op {
            debug_assert!(
                permit.0.is_some() || !self.brings_pieces(&entry.chunks),
                "an install bringing pieces to pack needs its permit"
            );
        }
        let _permit = permit;
        let mut state = self.inner.state.lock().await;
        if let Op::Install { key, entry } = &mut op {
            state.reconcile(key, entry);
        }
        state.check(&op, false)?;
        if let Some(journal) = self.inner.journal.get() {
            journal.append(&op)?;
        }
        state.apply(&op, false);
        Ok(())
    }

    pub fn chunk_size(&self) -> usize {
        self.inner.chunk_size as usize
    }

    pub fn store_handle(&self) -> &Arc<dyn PadStore> {
        self.inner.pads.store()
    }

    /// Stores `data` under `key`, replacing what was there. Not durable until `commit`.
    pub async fn store(&self, key: &str, data: &[u8], meta: Meta) -> Result<()> {
        self.store_with_progress(key, data, meta, None).await
    }

    pub async fn store_with_progress(
        &self,
        key: &str,
        data: &[u8],
        meta: Meta,
        progress: Option<ProgressFn>,
    ) -> Result<()> {
        let pieces = data
            .chunks(self.chunk_size())
            .map(Bytes::copy_from_slice)
            .collect();
        let chunks = self.write_chunks(pieces, progress).await?;
        let entry = Entry {
            chunks: ChunkMap::from_ordered(chunks),
            size: data.len() as u64,
            meta,
            link: None,
        };
        self.install(key, entry).await
    }

    /// The largest piece kept inline in the index rather than in a pad of its own: small files
    /// cost no pad at all. A 64th of a chunk at most, so that pads stay the rule for data.
    pub fn inline_limit(&self) -> usize {
        INLINE_MAX.min(self.chunk_size() / 64)
    }

    /// Writes chunks to pads (recycled first, from the end of the free list, then new), with
    /// bounded parallelism; pieces of zeros become holes, small pieces inline chunks, and
    /// pieces up to [`pack_limit`](Self::pack_limit) inline chunks the next commit packs
    /// (`pack.rs`). The pads stay in flight until `install` or `discard_chunks`. If any pad
    /// fails, every pad taken goes back and the first error is returned.
    pub async fn write_chunks(
        &self,
        pieces: Vec<Bytes>,
        progress: Option<ProgressFn>,
    ) -> Result<Vec<Chunk>> {
        let (inline_limit, pack_limit) = (self.inline_limit(), self.pack_limit());
        let mut inline = Vec::with_capacity(pieces.len());
        let needs_pad: Vec<bool> = pieces
            .iter()
            .map(|p| {
                let zeros = p.iter().all(|&b| b == 0);
                let held = !zeros
                    && (p.len() <= inline_limit
                        || (p.len() <= pack_limit && self.may_hold_for_packing(p.len())));
                inline.push(held);
                !zeros && !held
            })
            .collect();
        let wanted = needs_pad.iter().filter(|&&n| n).count();
        let mut taken = {
            let mut state = self.inner.state.lock().await;
            let mut taken = Vec::with_capacity(wanted);
            while taken.len() < wanted {
                taken.push(state.take_pad(&self.inner.pads, usize::MAX));
            }
            self.inner.log_fresh(&mut state);
            state.in_flight.extend(taken.iter().map(|p| p.seed));
            taken
        }
        .into_iter();
        let total = Progress {
            pads_total: wanted as u64,
            bytes_total: pieces.iter().map(|p| p.len() as u64).sum(),
            ..Default::default()
        };
        let done = Arc::new(std::sync::Mutex::new(total));

        let jobs: Vec<_> = pieces
            .into_iter()
            .zip(needs_pad)
            .zip(inline)
            .map(|((piece, needs), inline)| {
                let pad = needs.then(|| taken.next().expect("allocated above"));
                let inner = self.inner.clone();
                let (done, progress) = (done.clone(), progress.clone());
                async move {
                    let len = piece.len() as u32;
                    let Some(pad) = pad else {
                        return match inline {
                            true => (None, Ok(Chunk::inline(piece.to_vec()))),
                            false => (None, Ok(Chunk::hole(len))),
                        };
                    };
                    let written = inner.write_data_pad(pad, piece).await;
                    if let (Ok(chunk), Some(progress)) = (&written, progress) {
                        let mut p = done.lock().unwrap();
                        p.pads_done += 1;
                        p.bytes_done += chunk.len as u64;
                        p.pads_created += u64::from(pad.counter.is_none());
                        progress(&p);
                    }
                    (Some(pad), written)
                }
            })
            .map(tokio::spawn)
            .collect();
        let results: Vec<_> = futures::stream::iter(jobs)
            .buffered(self.inner.opts.parallelism.max(1))
            .map(|joined| joined.expect("pad write task panicked"))
            .collect()
            .await;

        if results.iter().all(|(_, r)| r.is_ok()) {
            return Ok(results.into_iter().map(|(_, r)| r.unwrap()).collect());
        }
        let mut first_error = None;
        let mut back = Vec::new();
        for (pad, result) in results {
            match result {
                Ok(chunk) => back.extend(chunk.pad),
                Err(e) => {
                    back.extend(pad);
                    first_error.get_or_insert(e);
                }
            }
        }
        self.return_pads(back).await;
        Err(first_error.expect("some write failed"))
    }

    /// Gives the space of pads no longer needed back to the disk (the local store), before
    /// they join the free list where a write could take them again: pads a landed commit
    /// freed, and pads written for changes that were dropped or failed. Deleting files then
    /// frees disk space as on any file system. Failing costs only the space.
    async fn trim_freed(&self, freed: Vec<PadSeed>) {
        let store = self.inner.pads.store();
        if freed.is_empty() || !store.on_this_disk() {
            return;
        }
        let master = self.inner.pads.master().clone();
        let owners = tokio::task::spawn_blocking(move || {
            (freed.iter())
                .map(|seed| master.pad_key(seed).public_key())
                .collect()
        })
        .await
        .expect("key task panicked");
        if let Err(e) = store.trim(owners).await {
            tracing::warn!("could not give the space of freed pads back to the disk: {e}");
        }
    }

    /// Gives pads taken by `write_chunks` back to the free list (their chunks were not used).
    pub async fn discard_chunks(&self, chunks: &[Chunk]) {
        self.return_pads(chunks.iter().filter_map(|c| c.pad).collect())
            .await;
    }

    /// Adds pads to the free list as if files using them had been removed: a test builds a
    /// long free list this way without writing each pad.
    #[doc(hidden)]
    pub async fn test_free_pads(&self, pads: Vec<PadRef>) {
        self.return_pads(pads).await;
    }

    async fn return_pads(&self, pads: Vec<PadRef>) {
        self.trim_freed(pads.iter().map(|p| p.seed).collect()).await;
        let mut state = self.inner.state.lock().await;
        for pad in &pads {
            state.in_flight.remove(&pad.seed);
        }
        state.free_unsaved |= !pads.is_empty();
        state.index.free_pads.extend(pads);
    }

    /// Puts `entry` under `key`. Its pads must be the key's current ones or in flight from
    /// `write_chunks`; the replaced entry's other pads are released.
    pub async fn install(&self, key: &str, entry: Entry) -> Result<()> {
        self.change(Op::Install {
            key: key.to_string(),
            entry,
        })
        .await
    }

    /// [`install`](Self::install) with a permit taken beforehand ([`Self::install_permit`]
    /// for the same chunks).
    pub async fn install_with(
        &self,
        key: &str,
        entry: Entry,
        permit: InstallPermit<'_>,
    ) -> Result<()> {
        let op = Op::Install {
            key: key.to_string(),
            entry,
        };
        self.change_with(op, permit).await
    }

    pub async fn entry(&self, key: &str) -> Option<Entry> {
        self.inner.state.lock().await.index.get(key).cloned()
    }

    /// A key's sizes and metadata, without copying its chunk map (which for a large file is
    /// tens of thousands of chunks): what `stat` needs.
    pub async fn entry_meta(&self, key: &str) -> Option<EntryMeta> {
        let state = self.inner.state.lock().await;
        state.index.get(key).map(|e| EntryMeta {
            size: e.size,
            stored: e.stored_bytes(),
            meta: e.meta.clone(),
        })
    }

    /// Changes a key's metadata in place.
    pub async fn update_meta(&self, key: &str, change: impl FnOnce(&mut Meta)) -> Result<()> {
        let mut meta = (self.entry_meta(key).await)
            .ok_or_else(|| Error::NotFound(key.to_string()))?
            .meta;
        change(&mut meta);
        self.change(Op::SetMeta {
            key: key.to_string(),
            meta,
        })
        .await
    }

    pub async fn fetch(&self, key: &str) -> Result<Vec<u8>> {
        self.fetch_range(key, 0, usize::MAX).await
    }

    /// Up to `len` bytes from `offset`, reading only the pads the range touches.
    pub async fn fetch_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let entry = self
            .entry(key)
            .await
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        self.read_range(&entry, offset, len).await
    }

    /// Reads a byte range of a file (pads fetched concurrently, through the cache); holes and
    /// the part of a chunk past its stored bytes read as zeros.
    pub async fn read_range(&self, entry: &Entry, offset: u64, len: usize) -> Result<Vec<u8>> {
        let cs = self.chunk_size() as u64;
        let end = offset.saturating_add(len as u64).min(entry.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        // (chunk, bytes wanted within it, where they go in the output)
        let mut wanted = Vec::new();
        for (idx, chunk) in entry.chunks.iter() {
            let start = idx * cs;
            let chunk_end = start + chunk.len as u64;
            if chunk_end > offset && start < end {
                let from = offset.saturating_sub(start) as usize;
                let to = (end.min(chunk_end) - start) as usize;
                let at = (start + from as u64 - offset) as usize;
                wanted.push((chunk.clone(), from, to, at));
            }
        }
        let reads: Vec<_> = wanted
            .iter()
            .map(|(chunk, _, _, _)| {
                let inner = self.inner.clone();
                let chunk = chunk.clone();
                async move { inner.read_chunk(&chunk, Priority::Reader).await }
            })
            .collect();
        let parts: Vec<Bytes> = futures::stream::iter(reads)
            .buffered(self.inner.opts.parallelism.max(1))
            .try_collect()
            .await?;
        let mut out = vec![0; (end - offset) as usize];
        for (part, (_, from, to, at)) in parts.iter().zip(&wanted) {
            out[*at..*at + (to - from)].copy_from_slice(&part[*from..*to]);
        }
        Ok(out)
    }

    /// One chunk's plaintext, verified.
    pub async fn read_chunk(&self, chunk: &Chunk) -> Result<Bytes> {
        self.inner.read_chunk(chunk, Priority::Reader).await
    }

    /// Bytes `from..to` of one chunk read whole and cached, verified: for a sequential reader,
    /// who goes on to read the rest. Fewer bytes if the chunk is shorter than `to`.
    pub async fn read_chunk_slice(&self, chunk: &Chunk, from: usize, to: usize) -> Result<Bytes> {
        self.inner.read_chunk_slice(chunk, from, to).await
    }

    /// Bytes `from..to` of one chunk, verified: for a random reader, who would not use the
    /// rest of the chunk (see `Inner::read_chunk_part`).
    pub async fn read_chunk_part(&self, chunk: &Chunk, from: usize, to: usize) -> Result<Bytes> {
        self.inner.read_chunk_part(chunk, from, to).await
    }

    /// Whether each pad get is a network round trip.
    pub fn store_is_remote(&self) -> bool {
        self.inner.pads.store().is_remote()
    }

    /// Bytes of plaintext the chunk cache holds; read-ahead must stay well within it.
    pub fn cache_capacity(&self) -> usize {
        self.inner.opts.cache_bytes
    }

    /// Loads chunks into the cache in the background (read-ahead). A chunk cached or being
    /// fetched costs nothing: a sequential reader asks for the same window on every read.
    pub fn prefetch(&self, chunks: Vec<Chunk>) {
        for chunk in chunks {
            match chunk.pad {
                Some(pad) if !self.inner.cache.contains(&pad.seed, &chunk.hash) => {
                    drop(self.inner.fetch(pad, &chunk, Priority::Background));
                }
                _ => {}
            }
        }
    }

    /// Removes a key; its pads become free after the next commit.
    pub async fn remove(&self, key: &str) -> Result<Entry> {
        let old = self
            .entry(key)
            .await
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        self.change(Op::Remove {
            key: key.to_string(),
        })
        .await?;
        Ok(old)
    }

    /// Moves `from` to `to`, replacing (and releasing) what `to` held. No data pad is written.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_many(&[(from.to_string(), to.to_string())])
            .await
    }

    /// Several renames as one change to the index (a directory and everything under it).
    pub async fn rename_many(&self, moves: &[(String, String)]) -> Result<()> {
        self.change(Op::Rename {
            moves: moves.to_vec(),
        })
        .await
    }

    /// Gives the file at `key` a number, so that it can take more names: it moves to
    /// `inode_key(id)` and `key` becomes a name of it. No data pad is written.
    pub async fn make_linkable(&self, key: &str, id: u64) -> Result<()> {
        self.change(Op::Link {
            key: key.to_string(),
            id,
        })
        .await
    }

    /// The keys stored, without the engine's own (`is_retired_key`).
    pub async fn list_keys(&self) -> Vec<String> {
        let mut keys = self.inner.state.lock().await.index.keys();
        keys.retain(|k| !is_retired_key(k));
        keys
    }

    /// Keys with their entries, for the file system's start-up scan (not the engine's own).
    pub async fn snapshot(&self) -> Vec<(String, Entry)> {
        let state = self.inner.state.lock().await;
        (state.index.entries())
            .filter(|(k, _)| !is_retired_key(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    pub async fn stats(&self) -> EngineStats {
        let state = self.inner.state.lock().await;
        let mut stats = EngineStats {
            keys: state.index.len(),
            free_pads: state.index.free_pads.len() + state.pending_free.len(),
            chunk_size: self.inner.chunk_size,
            pads_in_use: state.pack_users.len(),
            ..Default::default()
        };
        for (key, entry) in state.index.entries() {
            stats.keys -= usize::from(is_retired_key(key));
            stats.data_bytes += entry.stored_bytes();
            stats.pads_in_use += entry.own_pads().count();
            // What a user counts: each file once however many names it has, not the root,
            // not a name's link to its file, not a file deleted while still open.
            let internal = is_internal_key(key) && inode_of_key(key).is_none();
            if !key.is_empty() && entry.link.is_none() && !internal {
                stats.files += 1;
            }
        }
        stats
    }

    /// Whether there are changes not yet committed.
    pub async fn has_uncommitted(&self) -> bool {
        let state = self.inner.state.lock().await;
        state.index.is_dirty()
            || !state.pending_free.is_empty()
            || state.in_doubt.is_some()
            || state.free_unsaved
    }

    /// Checks invariant 3: every pad is in exactly one place. Returns the number of pads.
    pub async fn check_accounting(&self) -> std::result::Result<usize, String> {
        let state = self.inner.state.lock().await;
        let counted = pack_users_of(&state.index);
        if counted != state.pack_users {
            return Err(format!(
                "the pieces counted per pack ({} packs) differ from the index's ({} packs)",
                state.pack_users.len(),
                counted.len()
            ));
        }
        let mut places: std::collections::HashMap<PadSeed, String> = Default::default();
        for (seed, place) in state.pad_places() {
            if let Some(other) = places.insert(seed, place.clone()) {
                return Err(format!(
                    "pad {} is both in {other} and {place}",
                    crate::codec::sha256(&seed)[0]
                ));
            }
        }
        Ok(places.len())
    }

    /// Reads every chunk of every key from the store (not the cache) and checks its hash.
    pub async fn verify_all(&self) -> Result<()> {
        let chunks: Vec<Chunk> = {
            let state = self.inner.state.lock().await;
            state
                .index
                .entries()
                .flat_map(|(_, e)| e.chunks.iter().map(|(_, c)| c.clone()))
                .filter(|c| c.pad.is_some())
                .collect()
        };
        let reads: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let inner = self.inner.clone();
                async move {
                    let pad = chunk.pad.expect("filtered");
                    if !chunk.is_packed() {
                        let read = inner.pads.read(&pad, chunk.hash, chunk.hash_kind);
                        return read.await.map(|_| ());
                    }
                    let pack = inner.pads.read_pack(&pad, Priority::Background).await?;
                    check::piece_check(&pack, &chunk).map_err(|why| Error::CorruptPad {
                        pad: format!("{:02x?}", &pad.seed[..4]),
                        why,
                    })
                }
            })
            .collect();
        futures::stream::iter(reads)
            .buffer_unordered(self.inner.opts.parallelism.max(1))
            .try_collect::<()>()
            .await
    }
}

/// How many chunks of `index` lie in each pack.
fn pack_users_of(index: &Index) -> HashMap<PadSeed, pack::PackUse> {
    let mut users: HashMap<PadSeed, pack::PackUse> = HashMap::new();
    for (_, entry) in index.entries() {
        for piece in entry.pieces() {
            let pad = piece.pad.expect("a piece has a pad");
            users.entry(pad.seed).or_default().add(piece.len);
        }
    }
    users
}

/// The error of a change referencing a pad that is not the changed file's to reference. No
/// name in the message: errors reach the log, and names never do.
fn not_owned() -> Error {
    Error::Store(crate::store::StoreError::Permanent(
        "refusing to install a file that references a pad it does not own".into(),
    ))
}

/// Makes the journal directory (0700) and takes its lock (`shared` for a read-only engine),
/// waiting up to `wait` for a process that holds it.
async fn lock_journal(
    dir: &std::path::Path,
    wait: std::time::Duration,
    shared: bool,
) -> Result<std::fs::File> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| journal::lock(&dir.join("journal"), wait, shared))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock => Error::InUse(e.to_string()),
                _ => Error::Journal(format!("{}: {e}", dir.display())),
            })
    })
    .await
    .expect("lock task panicked")
}

/// Refuses a root older than the newest this machine recorded for the store (unless
/// `accept`), and records the loaded one if it is newer; without a record, nothing to check.
fn check_rollback(
    record: Option<&RootRecord>,
    found: Option<commit::RootSeen>,
    accept: bool,
) -> Result<()> {
    let Some(record) = record else {
        return Ok(());
    };
    let seen = record.read();
    let older = match (seen, found) {
        (Some(seen), Some((counter, ..))) => counter < seen.counter,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if older && !accept {
        let seen = seen.expect("older than a record");
        return Err(Error::Rollback(match found {
            Some((counter, generation, _)) => format!(
                "the store serves an older index (root version {counter}, generation \
                 {generation}) than this machine has seen (version {}, generation {}): a \
                 restored or stale copy. Mounting it would hide, and the next commit would \
                 drop, every newer change. Mount with --accept-rollback to use it anyway",
                seen.counter, seen.generation
            ),
            None => format!(
                "the store holds no index for this key, but this machine has seen one (version \
                 {}, generation {}): the store is not the one it was, or lost its pads. Mount \
                 with --accept-rollback to start from what it holds",
                seen.counter, seen.generation
            ),
        }));
    }
    if older {
        tracing::warn!(
            "mounting an index older than the newest seen, as asked (--accept-rollback)"
        );
    }
    if let Some((counter, generation, root_hash)) = found {
        if older || seen.is_none_or(|seen| counter > seen.counter) {
            record.write(&Seen {
                counter,
                generation,
                root_hash,
            });
        }
    }
    Ok(())
}

impl Op {
    /// What kind of change this is, for messages that must not show names.
    fn kind(&self) -> &'static str {
        match self {
            Op::Install { .. } => "a write",
            Op::Remove { .. } => "a removal",
            Op::Rename { .. } => "a rename",
            Op::SetMeta { .. } => "a metadata change",
            Op::Link { .. } => "a new name for a file",
        }
    }
}

impl State {
    /// Every pad the engine knows of, with where it is: in a file, a pack, free, an index
    /// page, in flight.
    fn pad_places(&self) -> Vec<(PadSeed, String)> {
        let mut places = Vec::new();
        for (key, entry) in self.index.entries() {
            places.extend(entry.own_pads().map(|pad| (pad.seed, format!("key {key}"))));
        }
        places.extend(
            self.pack_users
                .keys()
                .map(|seed| (*seed, "a pack".to_string())),
        );
        let free = self.index.free_pads.iter().chain(&self.pending_free);
        places.extend(free.map(|pad| (pad.seed, "the free list".to_string())));
        for page in self.committed_pages.iter().flatten() {
            places.push((page.pad.seed, "an index page".into()));
        }
        for segment in self.committed_segments.values().flatten() {
            places.push((segment.pad.seed, "a chunk segment".into()));
        }
        for page in &self.committed_free_pages {
            places.push((page.pad.seed, "a free-list page".into()));
        }
        places.extend(self.in_flight.iter().map(|s| (*s, "in flight".to_string())));
        if let Some(attempt) = &self.in_doubt {
            for pad in attempt.unsettled_pads() {
                places.push((pad.seed, "an unsettled commit".into()));
            }
        }
        places
    }

    /// Points the pieces of `entry` whose pack is no longer in the index (merged into others and
    /// freed since `entry`'s chunk list was read) at where the key holds the same bytes now.
    fn reconcile(&self, key: &str, entry: &mut Entry) {
        let Some(current) = self.index.get(key) else {
            return;
        };
        let mut chunks = entry.chunks.clone();
        let mut changed = false;
        for (idx, chunk) in entry.chunks.iter() {
            let Some(pack) = chunk.pad.filter(|_| chunk.is_packed()) else {
                continue;
            };
            if self.pack_users.contains_key(&pack.seed) {
                continue;
            }
            let same = |c: &&Chunk| {
                (c.hash, c.hash_kind, c.len) == (chunk.hash, chunk.hash_kind, chunk.len)
            };
            if let Some(now) = current.chunks.get(idx).filter(same) {
                chunks.insert(idx, now.clone());
                changed = true;
            }
        }
        if changed {
            entry.chunks = chunks;
        }
    }

    /// Releases the pads of an entry that left the index, but those in `kept` (still the key's):
    /// a pad of its own at once, a pack with its last piece. They are free once committed.
    fn release(&mut self, old: &Entry, kept: &HashSet<PadSeed>) {
        for pad in old.own_pads().filter(|p| !kept.contains(&p.seed)) {
            self.pending_free.push(pad);
        }
        for piece in old.pieces() {
            let pack = piece.pad.expect("a piece has a pad");
            if let Some(users) = self.pack_users.get_mut(&pack.seed) {
                if users.remove(piece.len) {
                    self.pack_users.remove(&pack.seed);
                    self.pending_free.push(pack);
                }
            }
        }
    }

    /// A pad for a write of `bytes`: a free one, else a fresh one (noted for the log). Of the
    /// free pads, the last freed whose write `pads` can send on at once
    /// (`PadIo::upload_wait`). Behind a tier, a pad the last roots freed goes up only once
    /// they are on the network, so a long write takes a fresh pad rather than hold its root
    /// back by a whole pad's upload; the pads it skips stay free for short writes (an index
    /// page's wait is a round trip) and for long ones once their roots are up.
    fn take_pad(&mut self, pads: &PadIo, bytes: usize) -> PadRef {
        let waits = pads.upload_waits();
        let cost = |pad: &PadRef| waits.of(&pad.seed);
        let usable = |wait: u64| wait == 0 || bytes <= LONGEST_WAITING_WRITE;
        (self.index.free_pads.take_cheapest(cost, usable)).unwrap_or_else(|| {
            let pad = PadRef::fresh();
            self.fresh.unlogged.push(pad.seed);
            pad
        })
    }

    /// Whether `op` can be applied. A replayed install may also claim pads from the free list
    /// and pads no one references (written before a crash, never committed).
    fn check(&self, op: &Op, replay: bool) -> Result<()> {
        let missing = |key: &str| Err(Error::NotFound(key.to_string()));
        match op {
            Op::Install { key, entry } => {
                if entry.size > MAX_FILE_SIZE
                    || entry.chunks.len() > MAX_DATA_CHUNKS
                    || segments::too_spread(&entry.chunks)
                {
                    return Err(Error::TooLarge(key.clone()));
                }
                let current: HashSet<PadSeed> = self
                    .index
                    .get(key)
                    .map(|e| e.pads().map(|p| p.seed).collect())
                    .unwrap_or_default();
                let mut seen = HashSet::new();
                let unreleased =
                    |seed: &PadSeed| !self.pending_free.iter().any(|p| &p.seed == seed);
                for pad in entry.own_pads() {
                    let known = current.contains(&pad.seed)
                        || self.in_flight.contains(&pad.seed)
                        || (replay && unreleased(&pad.seed));
                    let shared = self.pack_users.contains_key(&pad.seed);
                    if !known || shared || !seen.insert(pad.seed) {
                        return Err(not_owned());
                    }
                }
                // A pack is shared: any number of pieces, of this file or others, may lie in it.
                for pack in entry.pieces().filter_map(|c| c.pad) {
                    let known = self.pack_users.contains_key(&pack.seed)
                        || current.contains(&pack.seed)
                        || (replay && unreleased(&pack.seed));
                    if !known || seen.contains(&pack.seed) {
                        return Err(not_owned());
                    }
                }
                Ok(())
            }
            Op::Remove { key } | Op::SetMeta { key, .. } if self.index.get(key).is_none() => {
                missing(key)
            }
            Op::Link { key, id } => match self.index.get(key) {
                None => missing(key),
                Some(entry) if entry.link.is_some() || entry.meta.kind == FileKind::Dir => {
                    Err(Error::Store(crate::store::StoreError::Permanent(format!(
                        "{key} cannot take another name"
                    ))))
                }
                Some(_) if self.index.get(&inode_key(*id)).is_some() => Err(Error::Store(
                    crate::store::StoreError::Permanent(format!("file number {id} is taken")),
                )),
                Some(_) => Ok(()),
            },
            Op::Remove { .. } | Op::SetMeta { .. } => Ok(()),
            Op::Rename { moves } => {
                let mut sources = HashSet::new();
                for (from, _) in moves {
                    if self.index.get(from).is_none() {
                        return missing(from);
                    }
                    if !sources.insert(from) {
                        return Err(Error::Store(crate::store::StoreError::Permanent(format!(
                            "{from} is moved twice in one rename"
                        ))));
                    }
                }
                Ok(())
            }
        }
    }

    /// Applies a change `check` accepted.
    fn apply(&mut self, op: &Op, replay: bool) {
        match op {
            Op::Install { key, entry } => {
                let seen: HashSet<PadSeed> = entry.pads().map(|p| p.seed).collect();
                if replay {
                    self.index.free_pads.retain(|p| !seen.contains(&p.seed));
                }
                for seed in &seen {
                    self.in_flight.remove(seed);
                }
                for piece in entry.pieces() {
                    let pack = piece.pad.expect("a piece has a pad");
                    self.pack_users.entry(pack.seed).or_default().add(piece.len);
                }
                if let Some(old) = self.index.insert(key.clone(), entry.clone()) {
                    self.release(&old, &seen);
                }
            }
            Op::Remove { key } => {
                let old = self.index.remove(key).expect("checked");
                self.release(&old, &HashSet::new());
            }
            Op::Rename { moves } => {
                let taken: Vec<(String, Entry)> = moves
                    .iter()
                    .map(|(from, to)| (to.clone(), self.index.remove(from).expect("checked")))
                    .collect();
                for (to, entry) in taken {
                    if let Some(old) = self.index.insert(to, entry) {
                        self.release(&old, &HashSet::new());
                    }
                }
            }
            Op::SetMeta { key, meta } => {
                self.index.get_mut(key).expect("checked").meta = meta.clone();
            }
            Op::Link { key, id } => {
                let file = self.index.remove(key).expect("checked");
                self.index.insert(inode_key(*id), file);
                self.index.insert(key.clone(), Entry::link_to(*id));
            }
        }
    }
}

impl Inner {
    /// Logs the fresh seeds `state` minted, before their pads are written.
    fn log_fresh(&self, state: &mut State) {
        let minted = std::mem::take(&mut state.fresh.unlogged);
        if let Some(log) = &self.fresh_log {
            log.append(&minted);
        }
        state.fresh.this_run.extend(minted);
    }

    /// Drops from the log the seeds a landed commit accounted for.
    fn settle_fresh(&self, state: &mut State, settled: &[PadSeed]) {
        if settled.is_empty() {
            return;
        }
        for seed in settled {
            state.fresh.this_run.remove(seed);
        }
        if let Some(log) = &self.fresh_log {
            let kept = state.fresh.this_run.union(&state.fresh.suspects);
            log.rewrite(&kept.copied().collect());
        }
    }

    async fn write_data_pad(&self, pad: PadRef, piece: Bytes) -> Result<Chunk> {
        let (hash, piece) = tokio::task::spawn_blocking(move || {
            let hash = HashKind::default().hash(&piece);
            (hash, piece)
        })
        .await
        .expect("hash task panicked");
        let len = piece.len() as u32;
        let written = self
            .pads
            .write(pad, DATA_ENCODING, piece.clone(), hash)
            .await?;
        self.cache.insert(written.seed, hash, piece);
        Ok(Chunk::in_pad(written, len, hash, HashKind::default()))
    }

    /// A chunk from the cache, or fetched once however many readers ask for it meanwhile (a
    /// reader joining a read-ahead fetch waits with it).
    async fn read_chunk(self: &Arc<Self>, chunk: &Chunk, priority: Priority) -> Result<Bytes> {
        let Some(pad) = chunk.pad else {
            // Inline bytes came with the index page, whose hash was checked.
            return Ok(match &chunk.inline {
                Some(data) => Bytes::from(data.clone()),
                None => Bytes::from(vec![0; chunk.len as usize]),
            });
        };
        if let Some(hit) = self.cache.get(&pad.seed, &chunk.hash) {
            return Ok(hit);
        }
        self.fetch(pad, chunk, priority).await
    }

    /// The fetch of a chunk into the cache: the one under way, or a new one. It runs to the
    /// end whether or not anyone waits for it.
    fn fetch(self: &Arc<Self>, pad: PadRef, chunk: &Chunk, priority: Priority) -> SharedRead {
        let key = (pad.seed, chunk.hash);
        let mut reads = self.reads_in_flight.lock().unwrap();
        reads
            .entry(key)
            .or_insert_with(|| {
                let (inner, chunk) = (self.clone(), chunk.clone());
                let task = tokio::spawn(async move {
                    let result = inner.fetch_chunk(&chunk, priority).await;
                    inner.reads_in_flight.lock().unwrap().remove(&key);
                    result
                });
                async move { task.await.expect("chunk read task panicked") }
                    .boxed()
                    .shared()
            })
            .clone()
    }

    async fn fetch_chunk(self: &Arc<Self>, chunk: &Chunk, priority: Priority) -> Result<Bytes> {
        if chunk.is_packed() {
            return self.fetch_piece(chunk, priority).await;
        }
        let pad = chunk.pad.expect("holes are not fetched");
        let data = self
            .pads
            .read_checked(&pad, chunk.hash, chunk.hash_kind, priority)
            .await?;
        if data.len() != chunk.len as usize {
            return Err(Error::CorruptPad {
                pad: format!("{:02x?}", &pad.seed[..4]),
                why: "length differs from the index".into(),
            });
        }
        self.cache.insert(pad.seed, chunk.hash, data.clone());
        Ok(data)
    }

    /// Bytes `from..to` of a chunk. A chunk neither cached nor being read is read in part: only
    /// the segments the range lies in.
    async fn read_chunk_part(
        self: &Arc<Self>,
        chunk: &Chunk,
        from: usize,
        to: usize,
    ) -> Result<Bytes> {
        if let Some(pad) = chunk.pad {
            let key = (pad.seed, chunk.hash);
            let reading = || self.reads_in_flight.lock().unwrap().contains_key(&key);
            if !self.cache.contains(&pad.seed, &chunk.hash) && !reading() {
                if let Some(part) = self.read_part(chunk, from..to).await {
                    return Ok(part);
                }
            }
        }
        self.read_chunk_slice(chunk, from, to).await
    }

    /// Bytes `from..to` of a chunk read whole (fewer if the chunk is shorter).
    async fn read_chunk_slice(
        self: &Arc<Self>,
        chunk: &Chunk,
        from: usize,
        to: usize,
    ) -> Result<Bytes> {
        let whole = self.read_chunk(chunk, Priority::Reader).await?;
        let to = to.min(whole.len());
        Ok(whole.slice(from.min(to)..to))
    }

    /// Bytes `range` of a chunk, reading only the segments they lie in, if the store serves
    /// parts and they open as the version and content the index holds. If they do not (a pad
    /// of the old format, which is read whole only, or another version, or damage), the caller
    /// reads the pad whole, which tells these apart.
    async fn read_part(&self, chunk: &Chunk, range: std::ops::Range<usize>) -> Option<Bytes> {
        let pad = chunk.pad.filter(|_| chunk.pad_offset == 0)?;
        let len = chunk.len as usize;
        let read = self
            .pads
            .read_part(&pad, len, chunk.hash, range, Priority::Reader);
        match read.await {
            Ok(part) => part,
            Err(e) => {
                tracing::debug!("reading part of a pad failed: {e}");
                None
            }
        }
    }
}
