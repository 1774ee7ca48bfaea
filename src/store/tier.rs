//! The durable local tier in front of the network: writes land on this disk (sealed pads, the
//! local store's own file format) and return; a background uploader pushes them to the network
//! in commit order; reads are served from this disk first, which also caches what was fetched.
//!
//! Layout of the tier's directory (files 0600, directories 0700, ciphertext only):
//! - `cache/`: a [`LocalStore`] holding the newest version of every pad the tier knows, staged
//!   or fetched; what reads are served from. Bounded by `max_bytes`, evicting the least recently
//!   used pads that are not staged.
//! - `staging/<epoch>/`: a [`LocalStore`] per epoch holding the versions written in that epoch
//!   and not yet uploaded; the same files as in `cache/` (hard links), so staging costs no second
//!   copy while a pad is not written again.
//!
//! **Epochs.** The engine writes data and index pages, then the root pad: the root write is the
//! commit, and it ends an epoch. The network's root must be whole at every instant, so epoch
//! `e` is uploaded only after epoch `e-1`'s root reached the network: first all its pads (each
//! at the version written in epoch `e`), then its root, then its staging is dropped. A pad freed
//! by root `e` may be written again in epoch `e+1`; uploading that version while the network's
//! root is still `e-1`, which references the pad, would break a file for every other reader, so
//! epochs are never merged and no version goes up ahead of its epoch (docs/architecture.md).
//!
//! The oldest epoch uploads while it is still open: once the network holds the root before it,
//! no pad written in it is one that root references (the engine writes only pads free in the
//! last committed root), so a long copy streams up as it is written instead of after its
//! commit. A pad written again after its upload goes up again; its root waits for the last.
//!
//! A pad the engine created in an epoch (a new key) is named by no root before that epoch's,
//! and a pad the engine freed with root `r` and writes again is named by no root from `r` on
//! (`PadStore::update_freed`): such a pad goes up without waiting for the epochs ahead, as
//! soon as the network holds root `r`, in the room their uploads leave. A copy that outruns
//! the network then waits at the end for the index pages and roots of its epochs, not for
//! every pack and chunk they wrote.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey};
use lru::LruCache;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{check_size, LocalStore, PadStore, StoreError};

/// Uploads in flight at once: each is a round trip of about a second on the network, and 16
/// keeps a link busy without queueing more pads in memory than 64 MiB.
pub const UPLOADS_IN_FLIGHT: usize = 16;

/// Default bound of the tier's disk use: room for a working set of files, never a reason to
/// drop what is not yet uploaded (staged pads are kept whatever the bound).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// First and longest wait between upload attempts of a pad that failed transiently: a network
/// that is down is asked again about once a minute, for as long as it takes.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How often a wait for uploads (unmount) logs what is left.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Per-address locks: a pad's rule check, its staging and its caching happen under one.
const LOCK_SHARDS: usize = 64;

#[derive(Clone, Debug)]
pub struct TierConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub uploads: usize,
    pub retry_first: Duration,
    pub retry_max: Duration,
}

impl TierConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TierConfig {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            uploads: UPLOADS_IN_FLIGHT,
            retry_first: RETRY_FIRST,
            retry_max: RETRY_MAX,
        }
    }
}

/// How a network mount uses the tier (`--upload`, `--cache-dir`, `--cache-max-size`,
/// `--unmount-wait`).
#[derive(Clone, Debug)]
pub struct TierOptions {
    /// Stage writes in the tier (the default); `false` writes to the network before `close()`
    /// returns, as without a tier.
    pub staged: bool,
    /// The tier's directory [default: beside the key, per network].
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
}

impl Default for TierOptions {
    fn default() -> Self {
        TierOptions {
            staged: true,
            dir: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What waits to be uploaded, for `status` and the unmount message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Pad versions staged and not yet uploaded (a pad written in two epochs counts twice).
    pub pads: u64,
    pub bytes: u64,
    /// Of `pads`, those committed (in epochs whose root was written): what a flush waits for.
    pub committed_pads: u64,
    /// Uploads in flight now.
    pub uploading: u64,
    /// Why uploading stopped, if it did (another machine moved the root; a permanent error).
    pub stopped: Option<String>,
}

pub struct TieredStore {
    shared: Arc<Shared>,
    uploader: tokio::task::JoinHandle<()>,
}

impl Drop for TieredStore {
    fn drop(&mut self) {
        self.uploader.abort();
    }
}

struct Shared {
    inner: Arc<dyn PadStore>,
    root_owner: PublicKey,
    cfg: TierConfig,
    cache: LocalStore,
    /// The open epoch: writes hold it shared while they stage, the root write exclusively while
    /// it ends the epoch, so no write lands in an epoch that is already sealed.
    open_epoch: RwLock<u64>,
    locks: Vec<Mutex<()>>,
    state: Mutex<TierState>,
    /// Bumped whenever an epoch is sealed or uploaded, uploads pause or resume, or stop.
    changed: watch::Sender<u64>,
}

struct TierState {
    /// Epochs staged and not yet uploaded, oldest first; only the last may still be open.
    epochs: BTreeMap<u64, Epoch>,
    /// How many pending epochs hold each pad: such a pad is never evicted.
    staged: HashMap<PublicKey, usize>,
    /// Every pad file in the cache with its length, most recently used first.
    lru: LruCache<PublicKey, u64>,
    cache_bytes: u64,
    /// The newest epoch uploaded whole, root included.
    uploaded: u64,
    /// The version of the index root the network holds, as far as this tier knows (not
    /// known after a restart with epochs still to upload, until the first of them is up).
    network_root: Option<u64>,
    stopped: Option<String>,
    paused: bool,
    uploading: u64,
    /// Pads and bytes uploaded since the last progress line, and when that was.
    since_report: (u64, u64),
    last_report: std::time::Instant,
}

#[derive(Default)]
struct Epoch {
    /// Each pad staged in this epoch.
    pads: HashMap<PublicKey, Staged>,
    /// Pads the engine created in this epoch and not yet uploaded (uploaded as creates whatever
    /// their counter; after a restart, a counter of 0 tells).
    created: HashSet<PublicKey>,
    /// Pads (never the root) whose newest version waits for an upload that has not started,
    /// in the order they were staged: in `early` those that may go up before the epochs
    /// ahead are done, by the network root they wait for (`None`: none, born here), the
    /// others in `ready`. A pad waiting is in one of them or being uploaded, never two.
    ready: VecDeque<PublicKey>,
    early: BTreeMap<Option<u64>, VecDeque<PublicKey>>,
    /// Pads that may go up early, with the network root they wait for: those created in this
    /// epoch (`None`) and those freed with a root (uploaded or not). Not known after a
    /// restart, when every pad waits its turn.
    free_from: HashMap<PublicKey, Option<u64>>,
    /// Uploads of this epoch's pads in flight: its root waits for them.
    in_flight: u64,
    /// Its root's upload started.
    root_uploading: bool,
    /// Its root was written: nothing more joins it.
    sealed: bool,
}

/// How the engine wrote a pad, which decides when its upload may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A new pad: no root names it.
    Created,
    /// An update of a pad some root before this epoch's may name.
    Updated,
    /// An update of a pad no root names from this root version on.
    Freed(u64),
}

/// A pad staged in an epoch.
struct Staged {
    /// The length of its file.
    bytes: u64,
    /// How many versions were staged in this epoch, and how many of those the network has (an
    /// upload reads the newest there is): it waits while `uploaded < versions`.
    versions: u64,
    uploaded: u64,
}

impl Staged {
    fn waiting(&self) -> bool {
        self.uploaded < self.versions
    }
}

impl Epoch {
    /// Puts a pad whose newest version waits in its queue.
    fn queue(&mut self, owner: PublicKey) {
        match self.free_from.get(&owner) {
            Some(&from) => self.early.entry(from).or_default().push_back(owner),
            None => self.ready.push_back(owner),
        }
    }

    /// The next pad to upload: any waiting pad if this is the oldest epoch, else one that no
    /// root from `network_root` on names.
    fn next_upload(&mut self, oldest: bool, network_root: Option<u64>) -> Option<PublicKey> {
        if oldest {
            if let Some(owner) = self.ready.pop_front() {
                return Some(owner);
            }
        }
        let mut queue = self.early.first_entry()?;
        if !oldest && *queue.key() > network_root {
            return None;
        }
        let owner = queue.get_mut().pop_front();
        if queue.get().is_empty() {
            queue.remove();
        }
        owner
    }

    /// Whether all that is left of it is its root, and its upload has not started.
    fn only_root_left(&self) -> bool {
        let pads_up = self.ready.is_empty() && self.early.is_empty() && self.in_flight == 0;
        self.sealed && pads_up && !self.root_uploading
    }
}

impl TierState {
    fn cached(&mut self, owner: PublicKey, bytes: u64) {
        if let Some(old) = self.lru.put(owner, bytes) {
            self.cache_bytes -= old;
        }
        self.cache_bytes += bytes;
    }

    /// Records a version of `owner` staged in `epoch`; whether the uploader has a new pad to
    /// start.
    fn stage(
        &mut self,
        epoch: u64,
        owner: PublicKey,
        bytes: u64,
        origin: Origin,
        seals: bool,
    ) -> bool {
        let epoch = self.epochs.entry(epoch).or_default();
        let staged = epoch.pads.entry(owner).or_insert_with(|| {
            *self.staged.entry(owner).or_default() += 1;
            Staged {
                bytes,
                versions: 0,
                uploaded: 0,
            }
        });
        // Queued unless already waiting (queued, or being uploaded and queued again after).
        let queue = !seals && !staged.waiting();
        staged.bytes = bytes;
        staged.versions += 1;
        match origin {
            Origin::Created => {
                epoch.created.insert(owner);
                epoch.free_from.insert(owner, None);
            }
            // Written twice in one epoch: it waits for the later of the two roots.
            Origin::Freed(root) => {
                let from = epoch.free_from.entry(owner).or_insert(Some(root));
                *from = (*from).max(Some(root));
            }
            Origin::Updated => {}
        }
        if queue {
            epoch.queue(owner);
        }
        epoch.sealed |= seals;
        self.cached(owner, bytes);
        queue
    }

    fn backlog(&self) -> Backlog {
        let waiting = |e: &Epoch| e.pads.values().filter(|s| s.waiting()).count() as u64;
        let all = self.epochs.values().flat_map(|e| e.pads.values());
        let committed = self.epochs.values().filter(|e| e.sealed);
        Backlog {
            pads: self.epochs.values().map(waiting).sum(),
            bytes: all.filter(|s| s.waiting()).map(|s| s.bytes).sum(),
            committed_pads: committed.map(waiting).sum(),
            uploading: self.uploading,
            stopped: self.stopped.clone(),
        }
    }

    /// The newest sealed epoch: what a flush now waits for.
    fn last_sealed(&self) -> Option<u64> {
        self.epochs
            .iter()
            .rev()
            .find(|(_, e)| e.sealed)
            .map(|(n, _)| *n)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(path.display(), e)
}

/// Whether two pads are the same version (ours, already uploaded).
fn same_version(a: &Scratchpad, b: &Scratchpad) -> bool {
    a.counter() == b.counter() && a.signature() == b.signature()
}

impl TieredStore {
    /// A pad fetched from the network, kept on the side: the reader has its pad, and a read of
    /// it before it is on disk only fetches it again.
    fn keep_on_the_side(&self, pad: Scratchpad) -> Scratchpad {
        let kept = pad.clone();
        let keeper = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = keeper.keep_fetched(&kept) {
                tracing::warn!("could not keep a fetched pad in the tier: {e}");
            }
        });
        pad
    }

    /// Opens (creating if needed) the tier in `cfg.dir` for the index whose root pad `root_owner`
    /// owns, in front of `inner`, and starts uploading what an earlier run left staged. Must be
    /// called within a tokio runtime.
    pub async fn open(
        inner: Arc<dyn PadStore>,
        root_owner: PublicKey,
        cfg: TierConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let dir = cfg.dir.clone();
        let (cache, state, open_epoch) =
            tokio::task::spawn_blocking(move || recover(&dir, &root_owner))
                .await
                .map_err(|e| StoreError::Permanent(format!("tier task failed: {e}")))??;
        let shared = Arc::new(Shared {
            inner,
            root_owner,
            cfg,
            cache,
            open_epoch: RwLock::new(open_epoch),
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        });
        let backlog = shared.backlog();
        if backlog.pads > 0 {
            tracing::info!(
                "{} pads ({}) staged by an earlier run wait for upload; uploading in the background",
                backlog.pads,
                mib(backlog.bytes)
            );
        } else {
            shared.check_cache().await?;
        }
        let uploader = tokio::spawn(shared.clone().upload_forever());
        Ok(Arc::new(TieredStore { shared, uploader }))
    }

    /// Whether the tier in `dir` holds a version of the root pad `root_owner` owns: a mount
    /// can then start from it without the network.
    pub fn holds(dir: &Path, root_owner: &PublicKey) -> bool {
        dir.join("cache").exists()
            && LocalStore::open(&dir.join("cache")).is_ok_and(|c| c.pad_path(root_owner).exists())
    }

    /// The tier's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.cfg.dir
    }

    /// What waits to be uploaded.
    pub fn backlog(&self) -> Backlog {
        self.shared.backlog()
    }

    /// Stops starting uploads (those in flight finish), or resumes.
    pub fn pause_uploads(&self, paused: bool) {
        lock(&self.shared.state).paused = paused;
        self.shared.bump();
    }

    /// Waits up to `bound` for everything committed so far to be uploaded, logging what is left
    /// as it goes. An error is the message for the user: what was not uploaded and where it is
    /// kept.
    pub async fn drain(&self, bound: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let next_log = tokio::time::Instant::now() + PROGRESS_EVERY;
            let until = next_log.min(deadline);
            match tokio::time::timeout_at(until, self.flush()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    let left = self.backlog();
                    return Err(format!(
                        "{} pads ({}) not uploaded: {e}; they are kept in {}",
                        left.pads,
                        mib(left.bytes),
                        self.dir().display()
                    ));
                }
                Err(_) if until == deadline => {
                    let left = self.backlog();
                    return Err(format!(
                        "{} pads ({}) not yet uploaded; they are kept in {} and uploaded by the \
                         next mount",
                        left.pads,
                        mib(left.bytes),
                        self.dir().display()
                    ));
                }
                Err(_) => {
                    let left = self.backlog();
                    tracing::info!(
                        "waiting for uploads: {} pads ({}) left, {} in flight",
                        left.pads,
                        mib(left.bytes),
                        left.uploading
                    );
                }
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Opens the tier's directory: checks it belongs to this index, drops what crashed writes
/// left, finds the staged epochs, makes the cache hold each pad's newest staged version (a crash
/// may have come between staging and caching), and lists the cache for eviction.
fn recover(dir: &Path, root_owner: &PublicKey) -> Result<(LocalStore, TierState, u64), StoreError> {
    let cache = LocalStore::open(&dir.join("cache"))?;
    check_owner(dir, root_owner)?;
    let staging = dir.join("staging");
    super::local::private_dirs(&staging).map_err(|e| io_error(&staging, e))?;
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(&staging).map_err(|e| io_error(&staging, e))? {
        let entry = entry.map_err(|e| io_error(&staging, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.parse::<u64>() {
            Ok(n) => numbers.push(n),
            // An uploaded epoch whose deletion a crash cut short.
            Err(_) if name.starts_with(".done-") => {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            Err(_) => {}
        }
    }
    numbers.sort_unstable();
    let mut epochs = BTreeMap::new();
    let mut staged: HashMap<PublicKey, usize> = HashMap::new();
    for &n in &numbers {
        let store = LocalStore::open(&staging.join(n.to_string()))?;
        let mut epoch = Epoch::default();
        for held in store.held()? {
            epoch.sealed |= held.owner == *root_owner;
            if !same_file(&store.pad_path(&held.owner), &cache.pad_path(&held.owner)) {
                cache.adopt(&held.owner, &store.pad_path(&held.owner))?;
            }
            *staged.entry(held.owner).or_default() += 1;
            let pad = Staged {
                bytes: held.bytes,
                versions: 1,
                uploaded: 0,
            };
            epoch.pads.insert(held.owner, pad);
            if held.owner != *root_owner {
                epoch.ready.push_back(held.owner);
            }
        }
        epochs.insert(n, epoch);
    }
    let open_epoch = match epochs.last_key_value() {
        Some((&n, e)) if !e.sealed => n,
        Some((&n, _)) => n + 1,
        None => 1,
    };
    let uploaded = numbers.first().map_or(0, |n| n - 1);
    // With nothing left to upload, the network holds the root this disk holds.
    let network_root = match epochs.is_empty() {
        true => cache.stored_counter(root_owner)?,
        false => None,
    };
    let mut held = cache.held()?;
    held.sort_by_key(|h| h.modified);
    let mut state = TierState {
        epochs,
        staged,
        lru: LruCache::unbounded(),
        cache_bytes: 0,
        uploaded,
        network_root,
        stopped: None,
        paused: false,
        uploading: 0,
        since_report: (0, 0),
        last_report: std::time::Instant::now(),
    };
    for h in held {
        state.cached(h.owner, h.bytes);
    }
    Ok((cache, state, open_epoch))
}

/// The tier belongs to one index: a directory given to a mount of another key is refused
/// rather than mixed.
fn check_owner(dir: &Path, root_owner: &PublicKey) -> Result<(), StoreError> {
    let file = dir.join("owner");
    let mine = root_owner.to_hex();
    match std::fs::read_to_string(&file) {
        Ok(found) if found.trim() == mine => Ok(()),
        Ok(_) => Err(StoreError::Permanent(format!(
            "the tier in {} belongs to another master key",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .and_then(|mut f| f.write_all(format!("{mine}\n").as_bytes()))
                .map_err(|e| io_error(&file, e))
        }
        Err(e) => Err(io_error(&file, e)),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Counts an upload of a pad of epoch `.1` in [`Backlog::uploading`] and the epoch's
/// `in_flight` while it runs, however it ends (aborted too).
struct InFlight(Arc<Shared>, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.uploading -= 1;
        if let Some(epoch) = state.epochs.get_mut(&self.1) {
            epoch.in_flight -= 1;
        }
    }
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn backlog(&self) -> Backlog {
        lock(&self.state).backlog()
    }

    fn lock_for(&self, owner: &PublicKey) -> MutexGuard<'_, ()> {
        lock(&self.locks[owner.to_bytes()[7] as usize % LOCK_SHARDS])
    }

    fn epoch_store(&self, epoch: u64) -> Result<LocalStore, StoreError> {
        LocalStore::open(&self.staging_dir().join(epoch.to_string()))
    }

    fn staging_dir(&self) -> PathBuf {
        self.cfg.dir.join("staging")
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Permanent(format!("tier task failed: {e}")))?
    }

    /// Writes `pad` durably to the open epoch's staging, by the network's rules as far as this
    /// disk knows the pad (a pad it does not hold is checked by the network at upload).
    fn stage(&self, pad: &Scratchpad, origin: Origin) -> Result<(), StoreError> {
        self.stage_checked(pad, origin)?;
        self.evict();
        Ok(())
    }

    fn stage_checked(&self, pad: &Scratchpad, origin: Origin) -> Result<(), StoreError> {
        check_size(pad)?;
        let owner = *pad.owner();
        let _pad = self.lock_for(&owner);
        match self.cache.stored_counter(&owner)? {
            Some(_) if origin == Origin::Created => return Err(StoreError::AlreadyExists),
            Some(stored) if pad.counter() <= stored => {
                return Err(StoreError::StaleCounter {
                    stored,
                    offered: pad.counter(),
                })
            }
            _ => {}
        }
        if owner == self.root_owner {
            let mut open = self.open_epoch.write().unwrap_or_else(|p| p.into_inner());
            self.stage_in(*open, pad, origin, true)?;
            *open += 1;
            drop(open);
            self.bump();
        } else {
            let open = self.open_epoch.read().unwrap_or_else(|p| p.into_inner());
            self.stage_in(*open, pad, origin, false)?;
        }
        Ok(())
    }

    fn stage_in(
        &self,
        epoch: u64,
        pad: &Scratchpad,
        origin: Origin,
        seals: bool,
    ) -> Result<(), StoreError> {
        let owner = *pad.owner();
        let store = self.epoch_store(epoch)?;
        let path = store.pad_path(&owner);
        store.write(pad)?;
        let bytes = std::fs::metadata(&path)
            .map_err(|e| io_error(&path, e))?
            .len();
        if let Err(e) = self.cache.adopt(&owner, &path) {
            // Not staged after all: the engine gives the pad back.
            let _ = store.remove(&owner);
            return Err(e);
        }
        let queued = lock(&self.state).stage(epoch, owner, bytes, origin, seals);
        if queued {
            self.bump();
        }
        Ok(())
    }

    /// Keeps a pad fetched from the network, unless a version was staged meanwhile.
    fn keep_fetched(&self, pad: &Scratchpad) -> Result<(), StoreError> {
        let owner = *pad.owner();
        {
            let _pad = self.lock_for(&owner);
            let path = self.cache.pad_path(&owner);
            if path.exists() {
                return Ok(());
            }
            self.cache.write(pad)?;
            let bytes = std::fs::metadata(&path)
                .map_err(|e| io_error(&path, e))?
                .len();
            lock(&self.state).cached(owner, bytes);
        }
        self.evict();
        Ok(())
    }

    /// Drops least recently used pads that are uploaded until the cache fits its bound.
    fn evict(&self) {
        loop {
            let victim = {
                let state = lock(&self.state);
                if state.cache_bytes <= self.cfg.max_bytes {
                    return;
                }
                let found = state.lru.iter().rev().find(|(owner, _)| {
                    !state.staged.contains_key(owner) && **owner != self.root_owner
                });
                match found {
                    Some((owner, _)) => *owner,
                    None => return,
                }
            };
            if let Err(e) = self.drop_cached(&victim) {
                tracing::warn!("could not evict a pad from the tier's cache: {e}");
                return;
            }
        }
    }

    /// Removes `owner`'s cached copy unless a version of it is staged (this machine's own,
    /// never dropped before its upload).
    fn drop_cached(&self, owner: &PublicKey) -> Result<(), StoreError> {
        let _pad = self.lock_for(owner);
        let mut state = lock(&self.state);
        if state.staged.contains_key(owner) {
            return Ok(());
        }
        self.cache.remove(owner)?;
        if let Some(bytes) = state.lru.pop(owner) {
            state.cache_bytes -= bytes;
        }
        Ok(())
    }

    /// Drops the cache if the network's root is not the one this disk holds: another machine
    /// wrote since, and what is cached may be stale. Offline, the cache is served as it is.
    async fn check_cache(self: &Arc<Self>) -> Result<(), StoreError> {
        let root = self.root_owner;
        let local = match self.cache.get(&root).await {
            Ok(pad) => pad,
            Err(_) => return Ok(()),
        };
        match self.inner.get(&root).await {
            Ok(net) if same_version(&net, &local) => Ok(()),
            Ok(_) | Err(StoreError::NotFound) => {
                tracing::info!(
                    "the index on the network changed since this machine last saw it: the \
                     tier's cached pads are dropped"
                );
                self.blocking(|s| {
                    let owners: Vec<PublicKey> =
                        lock(&s.state).lru.iter().map(|(o, _)| *o).collect();
                    for owner in owners {
                        s.cache.remove(&owner)?;
                    }
                    let mut state = lock(&s.state);
                    state.lru.clear();
                    state.cache_bytes = 0;
                    Ok(())
                })
                .await
            }
            Err(e) => {
                tracing::warn!(
                    "cannot reach the network to check the tier's cache ({e}); serving it as it is"
                );
                Ok(())
            }
        }
    }

    /// The uploader, until the tier is dropped: the oldest epoch's pads as they are staged, up
    /// to `uploads` at once, and in the room left the pads later epochs created; once the
    /// oldest is sealed and its pads are all up, its root.
    async fn upload_forever(self: Arc<Self>) {
        let mut changed = self.changed.subscribe();
        let mut uploads = JoinSet::new();
        loop {
            changed.borrow_and_update();
            self.start_uploads(&mut uploads);
            tokio::select! {
                Some(joined) = uploads.join_next() => {
                    let failed = match joined {
                        Ok(result) => result.err(),
                        Err(e) if e.is_cancelled() => None,
                        Err(e) => Some(StoreError::Permanent(format!("upload task failed: {e}"))),
                    };
                    if let Some(e) = failed {
                        uploads.abort_all();
                        self.stop(e);
                    }
                }
                _ = changed.changed() => {}
            }
        }
    }

    /// Starts uploads while there is room: the oldest epoch's waiting pads first, then those
    /// of later epochs that may go early, oldest first; and the oldest epoch's root once
    /// nothing else of that epoch is left (besides the pads in flight, beyond their bound).
    fn start_uploads(self: &Arc<Self>, uploads: &mut JoinSet<Result<(), StoreError>>) {
        let mut state = lock(&self.state);
        if state.paused || state.stopped.is_some() {
            return;
        }
        let TierState {
            epochs,
            uploading,
            network_root,
            ..
        } = &mut *state;
        let Some((&oldest, first)) = epochs.iter_mut().next() else {
            return;
        };
        if first.only_root_left() {
            first.root_uploading = true;
            let this = self.clone();
            uploads.spawn(async move { this.upload_root(oldest).await });
        }
        for (&epoch, pending) in epochs.iter_mut() {
            while uploads.len() < self.cfg.uploads.max(1) {
                let Some(owner) = pending.next_upload(epoch == oldest, *network_root) else {
                    break;
                };
                let created = pending.created.contains(&owner);
                *uploading += 1;
                pending.in_flight += 1;
                let guard = InFlight(self.clone(), epoch);
                let this = self.clone();
                uploads.spawn(async move {
                    let _in_flight = guard;
                    this.upload_pad(epoch, owner, created).await
                });
            }
        }
    }

    /// Uploading stops for good (until the next mount): a reason other than a passing one.
    fn stop(&self, e: StoreError) {
        let why = e.to_string();
        tracing::error!(
            "uploads stopped: {why}. Staged pads are kept in {} (the next mount tries again)",
            self.cfg.dir.display()
        );
        lock(&self.state).stopped = Some(why);
        self.bump();
    }

    /// How many versions of `owner` are staged in `epoch`.
    fn versions(&self, epoch: u64, owner: &PublicKey) -> u64 {
        let state = lock(&self.state);
        let staged = state.epochs.get(&epoch).and_then(|e| e.pads.get(owner));
        staged.map_or(0, |s| s.versions)
    }

    /// Uploads the newest version of a pad staged in `epoch`, read afresh for every attempt (a
    /// pad written again while the network was away goes up once), and records it.
    async fn upload_pad(
        &self,
        epoch: u64,
        owner: PublicKey,
        created: bool,
    ) -> Result<(), StoreError> {
        let store = self.epoch_store(epoch)?;
        let (versions, first) = self
            .persist(|| async {
                // Counted before the read: a version staged meanwhile is uploaded again.
                let versions = self.versions(epoch, &owner);
                let pad = store.get(&owner).await?;
                let create = created || pad.counter() == 0;
                let result = if create {
                    self.inner.create(pad.clone()).await
                } else {
                    self.inner.update(pad.clone()).await
                };
                match result {
                    Err(e) if e.is_transient() => Err(e),
                    Ok(()) => Ok((versions, Ok(()))),
                    Err(e) => Ok((versions, Err((e, pad, create)))),
                }
            })
            .await?;
        if let Err((e, pad, create)) = first {
            self.settle(pad, create, e).await?;
        }
        tracing::trace!(epoch, owner = ?owner, versions, "uploaded");
        let mut state = lock(&self.state);
        if let Some(e) = state.epochs.get_mut(&epoch) {
            e.created.remove(&owner);
            if let Some(staged) = e.pads.get_mut(&owner) {
                staged.uploaded = staged.uploaded.max(versions);
                if staged.waiting() {
                    e.queue(owner);
                }
            }
        }
        // The uploader wakes on this task's end; flushes wait for whole epochs, not pads.
        Ok(())
    }

    /// An epoch's root, then the epoch is done.
    async fn upload_root(self: &Arc<Self>, epoch: u64) -> Result<(), StoreError> {
        let pad = self.epoch_store(epoch)?.get(&self.root_owner).await?;
        let version = pad.counter();
        self.push_root(pad).await?;
        lock(&self.state).network_root = Some(version);
        tracing::trace!(epoch, version, "root uploaded");
        self.blocking(move |s| s.finish_epoch(epoch)).await
    }

    /// `op` until it succeeds or fails for a reason other than a passing one, waiting longer
    /// after each transient failure.
    async fn persist<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = self.cfg.retry_first;
        let mut failures = 0u64;
        loop {
            match op().await {
                Err(e) if e.is_transient() => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!("upload failed {failures} times, trying again: {e}");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cfg.retry_max);
                }
                done => return done,
            }
        }
    }

    /// After a pad's upload (a create for a pad the engine created, the paid operation; an
    /// update otherwise) failed with `first`: a version that is already there (an upload cut
    /// short by a crash) counts as uploaded.
    async fn settle(
        &self,
        pad: Scratchpad,
        create: bool,
        first: StoreError,
    ) -> Result<(), StoreError> {
        match first {
            // An update of a pad created in the same epoch, before a restart.
            StoreError::NotFound if !create => {
                self.persist(|| self.inner.create(pad.clone())).await
            }
            StoreError::AlreadyExists | StoreError::StaleCounter { .. } => {
                let stored = self.persist(|| self.inner.get(pad.owner())).await?;
                if same_version(&stored, &pad) {
                    Ok(())
                } else if stored.counter() < pad.counter() {
                    self.persist(|| self.inner.update(pad.clone())).await
                } else {
                    Err(StoreError::Permanent(format!(
                        "the network holds version {} of a pad this machine wrote as version {}: \
                         another machine writes with the same key",
                        stored.counter(),
                        pad.counter()
                    )))
                }
            }
            e => Err(e),
        }
    }

    /// Uploads an epoch's root, only over the root the previous epoch uploaded: a root that
    /// someone else moved stops the uploads (their index is not overwritten).
    async fn push_root(&self, pad: Scratchpad) -> Result<(), StoreError> {
        let counter = pad.counter();
        let stored = match self.persist(|| self.inner.get(pad.owner())).await {
            Ok(stored) => Some(stored),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let conflict = |found: Option<u64>| {
            StoreError::Permanent(format!(
                "the index root on the network is at version {} where this machine expected {}: \
                 another machine with the same key changed it",
                found.map_or("none".to_string(), |c| c.to_string()),
                counter
                    .checked_sub(1)
                    .map_or("none".to_string(), |c| c.to_string()),
            ))
        };
        match &stored {
            Some(stored) if same_version(stored, &pad) => return Ok(()),
            Some(stored) if counter > 0 && stored.counter() == counter - 1 => {}
            None if counter == 0 => {}
            _ => return Err(conflict(stored.map(|s| s.counter()))),
        }
        let result = self
            .persist(|| {
                let pad = pad.clone();
                async move {
                    if counter == 0 {
                        self.inner.create(pad).await
                    } else {
                        self.inner.update(pad).await
                    }
                }
            })
            .await;
        match result {
            Err(StoreError::AlreadyExists | StoreError::StaleCounter { .. }) => {
                let stored = self.persist(|| self.inner.get(pad.owner())).await?;
                if same_version(&stored, &pad) {
                    Ok(())
                } else {
                    Err(conflict(Some(stored.counter())))
                }
            }
            other => other,
        }
    }

    /// Drops an uploaded epoch's staging: renamed first, so a crash mid-deletion never leaves
    /// what looks like an epoch without its root.
    fn finish_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        let staging = self.staging_dir();
        let dir = staging.join(epoch.to_string());
        let done = staging.join(format!(".done-{epoch}"));
        std::fs::rename(&dir, &done)
            .and_then(|()| std::fs::File::open(&staging)?.sync_all())
            .map_err(|e| io_error(&dir, e))?;
        if let Err(e) = std::fs::remove_dir_all(&done) {
            tracing::warn!("could not delete {}: {e}", done.display());
        }
        let finished = {
            let mut state = lock(&self.state);
            let state = &mut *state;
            let finished = state.epochs.remove(&epoch).unwrap_or_default();
            for owner in finished.pads.keys() {
                if let Some(n) = state.staged.get_mut(owner) {
                    *n -= 1;
                    if *n == 0 {
                        state.staged.remove(owner);
                    }
                }
            }
            finished
        };
        self.evict();
        let report = {
            let mut state = lock(&self.state);
            state.uploaded = epoch;
            state.since_report.0 += finished.pads.len() as u64;
            state.since_report.1 += finished.pads.values().map(|s| s.bytes).sum::<u64>();
            let left = state.backlog();
            let due = state.last_report.elapsed() >= PROGRESS_EVERY;
            (left.committed_pads == 0 || due).then(|| {
                state.last_report = std::time::Instant::now();
                (std::mem::take(&mut state.since_report), left)
            })
        };
        // Progress at most every few seconds, and when everything committed is up.
        if let Some(((pads, bytes), left)) = report {
            tracing::info!(
                "uploaded {pads} pads ({}); {} pads ({}) still staged",
                mib(bytes),
                left.pads,
                mib(left.bytes)
            );
        }
        self.bump();
        Ok(())
    }
}

#[async_trait]
impl PadStore for TieredStore {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        (self.shared)
            .blocking(move |s| s.stage(&pad, Origin::Created))
            .await
    }

    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        (self.shared)
            .blocking(move |s| s.stage(&pad, Origin::Updated))
            .await
    }

    fn orders_by_root(&self) -> bool {
        true
    }

    fn settled_root(&self) -> Option<u64> {
        lock(&self.shared.state).network_root
    }

    fn forget_fetched(&self, owner: &PublicKey) {
        if let Err(e) = self.shared.drop_cached(owner) {
            tracing::warn!("could not drop a stale pad from the tier's cache: {e}");
        }
    }

    async fn update_freed(&self, pad: Scratchpad, root: u64) -> Result<(), StoreError> {
        (self.shared)
            .blocking(move |s| s.stage(&pad, Origin::Freed(root)))
            .await
    }

    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let shared = &self.shared;
        match shared.cache.get(owner).await {
            Ok(pad) => {
                lock(&shared.state).lru.get(owner);
                return Ok(pad);
            }
            Err(StoreError::NotFound) => {}
            Err(e) => {
                let staged = lock(&shared.state).staged.contains_key(owner);
                if staged {
                    return Err(e);
                }
                // A damaged copy of an uploaded pad: the network has it.
                tracing::warn!("a pad in the tier's cache is damaged ({e}); fetching it again");
                let owner = *owner;
                shared.blocking(move |s| s.cache.remove(&owner)).await?;
            }
        }
        let pad = shared.inner.get(owner).await?;
        Ok(self.keep_on_the_side(pad))
    }

    /// A staged pad is this mount's own write, newer than anything uploaded. Otherwise the
    /// network's newest version, which replaces an older copy here; the copy here if it is
    /// newer, or if the network cannot answer (a mount without it starts from the tier).
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let shared = &self.shared;
        if lock(&shared.state).staged.contains_key(owner) {
            return self.get(owner).await;
        }
        // The counter alone: the copy is read only if it is the one to return.
        let here = shared.cache.counter(owner).await.ok();
        let there = match shared.inner.get_newest(owner).await {
            Ok(there) => there,
            Err(e) if here.is_none() => return Err(e),
            Err(_) => return self.get(owner).await,
        };
        match here {
            Some(here) if here > there.counter() => self.get(owner).await,
            Some(here) if here == there.counter() => Ok(there),
            Some(_) => {
                self.forget_fetched(owner);
                Ok(self.keep_on_the_side(there))
            }
            None => Ok(self.keep_on_the_side(there)),
        }
    }

    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        if self.shared.cache.exists(owner).await? {
            return Ok(true);
        }
        self.shared.inner.exists(owner).await
    }

    async fn get_part(
        &self,
        owner: &PublicKey,
        range: std::ops::Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        match self.shared.cache.get_part(owner, range).await {
            Err(StoreError::NotFound) => Ok(None),
            other => other,
        }
    }

    fn is_remote(&self) -> bool {
        self.shared.inner.is_remote()
    }

    /// Waits until every epoch sealed so far is uploaded.
    async fn flush(&self) -> Result<(), StoreError> {
        let mut changed = self.shared.changed.subscribe();
        let Some(target) = lock(&self.shared.state).last_sealed() else {
            return Ok(());
        };
        loop {
            changed.borrow_and_update();
            {
                let state = lock(&self.shared.state);
                if state.uploaded >= target {
                    return Ok(());
                }
                if let Some(why) = &state.stopped {
                    return Err(StoreError::Permanent(format!("uploads stopped: {why}")));
                }
            }
            if changed.changed().await.is_err() {
                return Err(StoreError::Permanent("the uploader ended".into()));
            }
        }
    }
}
