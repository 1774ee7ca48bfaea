//! From a configuration to a mounted file system: open the key, the store and the engine, mount
//! with fuser, and on unmount or a signal commit what is pending before exiting.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::engine::root_record::RootRecordPlace;
use crate::engine::{Engine, EngineOptions};
use crate::fs::fuse::FuseAdapter;
use crate::fs::{FsConfig, FsCore};
use crate::keys::MasterKey;
use crate::store::connecting::ConnectingStore;
use crate::store::network::{NetworkConfig, NetworkStore};
use crate::store::tier::{TierConfig, TierOptions, TieredStore};
use crate::store::{
    CountingStore, HealthStats, HealthStore, LocalStore, PadStore, RetryPolicy, RetryingStore,
    SimConfig, SimStore, StoreError, StoreStats,
};

/// Where the pads live.
#[derive(Clone, Debug)]
pub enum StoreChoice {
    /// The embedded local store in `MountConfig::store_dir`.
    Local,
    /// The Autonomi network.
    Network(NetworkConfig),
}

/// Concurrent pad operations on the network: each is a round trip of hundreds of
/// milliseconds, so more of them in flight than the local store needs.
pub const NETWORK_PARALLELISM: usize = 32;

/// How long unmount (or a signal) waits by default for the last changes to reach the store.
pub const DEFAULT_UNMOUNT_WAIT: Duration = Duration::from_secs(30);

/// The mount's memory for file data by default: chunk cache and write buffers together.
pub const DEFAULT_MEMORY: usize = 512 << 20;

/// After a signal, how much longer than `--unmount-wait` the process may take to stop on its
/// own (a busy mount point that unmounts lazily, a commit that ignores its bound) before it
/// exits regardless.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often a wait at unmount says it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long a mount whose tier holds the index waits for the network before it starts
/// offline, and how long it then waits before its first try in the background.
const OFFLINE_AFTER: Duration = Duration::from_secs(20);
const OFFLINE_RETRY: Duration = Duration::from_secs(5);

/// How long joining the network may take before start-up gives up.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// Where the pads live: the local store (in `store_dir`) or the network.
    pub store: StoreChoice,
    /// The local store's directory (unused on the network).
    pub store_dir: PathBuf,
    pub key_file: PathBuf,
    /// Where the passphrase of a sealed key file comes from.
    pub passphrase: crate::key_seal::PassphraseSource,
    /// Memory for file data: the chunk cache and every open file's write buffers together.
    pub memory_bytes: usize,
    /// The chunk cache's share of `memory_bytes` (at most half of it).
    pub cache_bytes: usize,
    /// The most one open file may buffer, within `memory_bytes`.
    pub write_buffer_bytes: usize,
    /// How long a system call waits for the store.
    pub timeout: Duration,
    /// How long unmount and SIGTERM wait for the last changes to reach the store.
    pub unmount_wait: Duration,
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub allow_non_empty: bool,
    pub simulate: Option<SimConfig>,
    pub threads: usize,
    pub create_index: bool,
    /// Chunk size of a new index (an existing one keeps its own).
    pub chunk_size: Option<u32>,
    /// Replay what can be read of a damaged journal rather than refusing to start.
    pub discard_damaged_journal: bool,
    /// Mount a root older than the newest this machine has seen.
    pub accept_rollback: bool,
    /// The local tier in front of the network (unused on the local store).
    pub tier: TierOptions,
}

/// A failure to start, as the user should read it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, StartError> {
    Err(StartError(msg.into()))
}

/// The default data directory: `$XDG_DATA_HOME/mutant`, else `~/.local/share/mutant`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("mutant");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/mutant")
}

/// Checks everything that can be checked before mounting, with messages that say what to do.
pub fn preflight(cfg: &MountConfig) -> Result<(), StartError> {
    let mp = &cfg.mountpoint;
    match std::fs::metadata(mp) {
        Err(_) => {
            return fail(format!(
                "mount point {} does not exist (create it with mkdir)",
                mp.display()
            ))
        }
        Ok(m) if !m.is_dir() => {
            return fail(format!("mount point {} is not a directory", mp.display()))
        }
        Ok(_) => {}
    }
    if !cfg.allow_non_empty {
        let mut entries = std::fs::read_dir(mp)
            .map_err(|e| StartError(format!("cannot read mount point {}: {e}", mp.display())))?;
        if entries.next().is_some() {
            return fail(format!(
                "mount point {} is not empty (use -o nonempty to mount over it anyway)",
                mp.display()
            ));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return fail("/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3");
    }
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root && which("fusermount3").is_none() && which("fusermount").is_none() {
        return fail(
            "fusermount3 was not found: install the fuse3 package (apt-get install fuse3)",
        );
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}

/// Opens the key, or creates one (the first run); a new key gets a new index. A missing key
/// file where this data dir or store already serves a key is a mistyped or lost path, never a
/// reason for a new key beside the old one's files.
fn open_key(cfg: &MountConfig) -> Result<(MasterKey, bool), StartError> {
    check_new_key_allowed(cfg)?;
    MasterKey::load_or_create_with(&cfg.key_file, &cfg.passphrase)
        .map_err(|e| StartError(e.to_string()))
}

/// A missing key file is made only where no key was used before: a mistyped or lost
/// `--key-file` must not start a new key beside a store of another.
pub fn check_new_key_allowed(cfg: &MountConfig) -> Result<(), StartError> {
    if !cfg.key_file.exists() {
        if let Some(used) = used_by_a_key(cfg) {
            return fail(format!(
                "no master key in {}, the key file that was expected, but {} already belongs to \
                 a master key: give that key with --key-file (or put it back in {0}); a new key \
                 is made only where no key was used before",
                cfg.key_file.display(),
                used
            ));
        }
    }
    Ok(())
}

/// What shows that a key was used here already: a local store with an owner, or the local
/// state a mount keeps beside its key.
fn used_by_a_key(cfg: &MountConfig) -> Option<String> {
    let non_empty = |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if matches!(cfg.store, StoreChoice::Local) && cfg.store_dir.join("owner").exists() {
        return Some(format!("the store at {}", cfg.store_dir.display()));
    }
    let data = cfg.key_file.parent()?;
    [INDEX_CACHE_DIR, ROOT_RECORD_DIR]
        .iter()
        .map(|name| data.join(name))
        .find(|dir| non_empty(dir))
        .map(|dir| format!("the local state in {}", dir.display()))
}

/// Beside the key file: sealed copies of index pages, and the newest root seen per store.
const INDEX_CACHE_DIR: &str = "index-cache";
const ROOT_RECORD_DIR: &str = "roots";

/// The local store, checked to belong to this key (a store records its owner's public key).
pub fn open_local_store(dir: &Path, key: &MasterKey) -> Result<LocalStore, StartError> {
    let store = LocalStore::open(dir)
        .map_err(|e| StartError(format!("cannot open the store at {}: {e}", dir.display())))?;
    let owner_file = dir.join("owner");
    let mine = key.public_key().to_hex();
    match std::fs::read_to_string(&owner_file) {
        Ok(owner) if owner.trim() == mine => Ok(store),
        Ok(_) => fail(format!(
            "the store at {} belongs to another master key than {}",
            dir.display(),
            "the one given"
        )),
        Err(_) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&owner_file)
                .and_then(|mut f| f.write_all(format!("{mine}\n").as_bytes()))
                .map_err(|e| StartError(format!("cannot write {}: {e}", owner_file.display())))?;
            Ok(store)
        }
    }
}

/// Memory the network client holds for each pad upload in flight: it encodes the pad for
/// every peer it goes to, as a CBOR array about twice the pad's size (measured over the local
/// network: about 70 MB of peak RSS per upload).
pub const MEMORY_PER_UPLOAD: usize = 64 << 20;

/// The tier's uploads in flight on the network for a `--memory` of `memory` bytes: the
/// client's buffers for them take about half of it (writes drain to the tier's disk, so the
/// write buffers rarely fill while uploads run), between 2 and
/// [`UPLOADS_IN_FLIGHT`](crate::store::tier::UPLOADS_IN_FLIGHT) uploads.
pub fn uploads_within(memory: usize) -> usize {
    (memory / 2 / MEMORY_PER_UPLOAD).clamp(2, crate::store::tier::UPLOADS_IN_FLIGHT)
}

/// The chunk cache's and the write buffers' shares of `memory` bytes: the cache takes what was
/// asked for it, up to half.
pub fn split_memory(memory: usize, cache_wanted: usize) -> (usize, usize) {
    let cache = cache_wanted.min(memory / 2);
    (cache, memory - cache)
}

/// Waits for `work` at most `wait`, saying in the log (stderr in the foreground) what it waits
/// for and how long it will still wait; `None` if `wait` ran out first. For the last commit
/// at unmount and anything else a stopping mount waits for.
pub async fn wait_at_unmount<T>(
    what: &str,
    wait: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        PROGRESS_EVERY,
    );
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("gave up {what} after {} s (--unmount-wait)", wait.as_secs_f32());
                return None;
            }
            _ = ticks.tick() => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tracing::warn!("still {what}: waiting up to {} s more", left.as_secs());
            }
        }
    }
}

/// What a mount that stops with changes not in the store says about them.
fn kept_message(journal: Option<&Path>) -> String {
    match journal {
        Some(dir) => format!(
            "every change close() acknowledged is kept in the journal ({}); the next mount \
             replays it and commits it",
            dir.display()
        ),
        None => "this mount keeps no journal".to_string(),
    }
}

/// SIGINT and SIGTERM, listened for from before the mount appears until the process ends,
/// so that none is missed between the first and the second.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Unmounts `mountpoint` for a signal. A busy mount point cannot be unmounted at once: it is
/// detached lazily, as `fusermount3 -uz` does, so the signal is honoured anyway.
fn unmount_for_signal(unmounter: &mut fuser::SessionUnmounter, mountpoint: &Path) {
    if let Err(e) = unmounter.unmount() {
        tracing::warn!("unmount failed ({e}): detaching the mount lazily");
        match std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(mountpoint)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::error!(
                "fusermount3 -uz failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => tracing::error!("cannot run fusermount3: {e}"),
        }
    }
}

/// Mounts and serves until unmounted (by `fusermount3 -u`, `umount`, SIGINT or SIGTERM).
pub fn run(cfg: MountConfig) -> Result<(), StartError> {
    // Everything this process creates (key, store, journal, caches, records) is the user's
    // alone, whatever umask it was started with. Files made through the mount are not
    // affected: their modes come with each request.
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
    // Until the handlers are in place (before the mount appears), SIGINT stops the process as
    // SIGTERM does: a shell that starts it with `&` passes it on ignored, and a SIGINT during
    // start-up was lost, the mount then staying up. Stopping there is a kill before mounting:
    // the journal keeps what it held.
    // SAFETY: resets one signal's disposition; no handler of ours is replaced.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    preflight(&cfg)?;
    let (key, new_key) = open_key(&cfg)?;
    let fingerprint = crate::key_backup::fingerprint(&key);
    tracing::info!(
        "master key {} (fingerprint {fingerprint})",
        cfg.key_file.display()
    );
    if new_key {
        tracing::info!(
            "created a new master key in {}: back it up, it is the only way to your files",
            cfg.key_file.display()
        );
    }
    let rt = runtime()?;
    let Opened {
        engine,
        network,
        tier,
        store_stats,
        health,
        parallelism,
        journal_dir,
        write_budget_bytes,
    } = open_engine(&cfg, key, new_key, &rt)?;
    let fs_cfg = FsConfig {
        write_buffer_bytes: cfg.write_buffer_bytes.min(write_budget_bytes),
        write_budget_bytes,
        // Written straight to the network (`--upload sync`), each chunk upload costs the
        // client's buffers as the tier's uploads do; into the tier, a local write.
        uploads_in_flight: match (&cfg.store, &tier) {
            (StoreChoice::Network(_), None) => uploads_within(cfg.memory_bytes),
            _ => parallelism,
        },
        timeout: cfg.timeout,
        read_only: cfg.read_only,
        space_probe: match cfg.store {
            StoreChoice::Local => Some(cfg.store_dir.clone()),
            StoreChoice::Network(_) => None,
        },
        ..Default::default()
    };
    let core = rt
        .block_on(FsCore::start(engine, fs_cfg))
        .map_err(|e| StartError(format!("cannot start the file system: {e}")))?;
    let committer = {
        let _guard = rt.enter();
        core.spawn_committer()
    };

    let mut options = vec![
        MountOption::FSName("mutant-mount".into()),
        MountOption::Subtype("mutant".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if cfg.read_only {
        options.push(MountOption::RO);
    }
    let fuse_cfg = {
        let mut c = Config::default();
        c.mount_options = options;
        c.acl = if cfg.allow_other {
            SessionACL::All
        } else if cfg.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        c.n_threads = Some(cfg.threads.max(1));
        c
    };
    // SIGUSR1 logs the store operations so far. Listening starts before the mount appears, so
    // a signal sent once it is mounted never meets the default action (exit).
    {
        let _guard = rt.enter();
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| StartError(format!("cannot handle SIGUSR1: {e}")))?;
        let stats = store_stats.clone();
        rt.spawn(async move {
            while usr1.recv().await.is_some() {
                tracing::info!("store operations so far: {stats}");
            }
        });
    }
    let _control = serve_control(
        &cfg,
        &rt,
        &core,
        fingerprint,
        store_stats.clone(),
        health,
        (&network, &tier),
    );
    let mut signals = {
        let _guard = rt.enter();
        StopSignals::new()
            .map_err(|e| StartError(format!("cannot handle SIGTERM and SIGINT: {e}")))?
    };
    let adapter = FuseAdapter::new(core.clone(), rt.handle().clone());
    let mut session = fuser::Session::new(adapter, &cfg.mountpoint, &fuse_cfg)
        .map_err(|e| StartError(format!("cannot mount on {}: {e}", cfg.mountpoint.display())))?;
    tracing::info!("mounted on {}", cfg.mountpoint.display());
    crate::service::ready(&cfg.mountpoint);

    // The first SIGINT or SIGTERM unmounts; the last commit then gets `unmount_wait`. A
    // second one, or one during that commit, stops the process at once: what is not in the
    // store yet is in the journal.
    let mut unmounter = session.unmount_callable();
    let session_over = Arc::new(AtomicBool::new(false));
    {
        let (over, mountpoint, wait) = (
            session_over.clone(),
            cfg.mountpoint.clone(),
            cfg.unmount_wait,
        );
        let kept = kept_message(journal_dir.as_deref());
        let _guard = rt.enter();
        rt.spawn(async move {
            signals.next().await;
            if !over.load(Ordering::SeqCst) {
                tracing::warn!(
                    "signal received: unmounting; pending changes get up to {} s to reach the \
                     store (a second signal stops at once)",
                    wait.as_secs_f32()
                );
                unmount_for_signal(&mut unmounter, &mountpoint);
                tokio::select! {
                    _ = signals.next() => {}
                    _ = tokio::time::sleep(wait + STOP_GRACE) => {
                        tracing::error!("not stopped {} s after the signal", (wait + STOP_GRACE).as_secs());
                    }
                }
            }
            tracing::error!("stopping now, before the last commit ended: {kept}");
            std::process::exit(1);
        });
    }

    let served = session.run();
    session_over.store(true, Ordering::SeqCst);
    crate::service::stopping();
    committer.abort();
    let stopping = std::time::Instant::now();
    let synced = rt
        .block_on(wait_at_unmount(
            "committing the last changes",
            cfg.unmount_wait,
            core.sync_all(),
        ))
        .unwrap_or(Err(crate::fs::Errno(libc::ETIMEDOUT)));
    if let Some(tier) = &tier {
        let left = cfg.unmount_wait.saturating_sub(stopping.elapsed());
        wait_for_uploads(&rt, tier, left);
    }
    tracing::info!("store operations: {store_stats}");
    if let Some(network) = network.as_ref().and_then(|n| n.network()) {
        log_network_cost(&network);
    }
    if let Err(e) = served {
        return fail(format!("the FUSE session ended with an error: {e}"));
    }
    if let Err(e) = synced {
        if rt.block_on(core.engine().in_conflict()) {
            return match rt.block_on(core.engine().save_uncommitted()) {
                Ok(Some(dir)) => fail(format!(
                    "the index in the store was changed by another mount of the same key: this \
                     mount's last changes could not be written over it; they are saved in the \
                     file system, under {dir}"
                )),
                Ok(None) => fail(
                    "the index in the store was changed by another mount of the same key; this \
                     mount had no unsaved changes",
                ),
                Err(save) => fail(format!(
                    "the index in the store was changed by another mount of the same key, and \
                     this mount's changes could not be saved ({save}): they remain in its journal"
                )),
            };
        }
        return fail(format!(
            "could not commit pending changes at unmount ({}): {}",
            std::io::Error::from_raw_os_error(e.0),
            kept_message(journal_dir.as_deref())
        ));
    }
    tracing::info!("unmounted {}", cfg.mountpoint.display());
    Ok(())
}

/// The multi-threaded runtime the mount and the commands around it run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, StartError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start the runtime: {e}")))
}

/// A store opened as a mount opens it, and the engine over it.
pub struct Opened {
    pub engine: Engine,
    network: Option<Arc<Network>>,
    tier: Option<Arc<TieredStore>>,
    store_stats: Arc<StoreStats>,
    health: StoreHealth,
    /// Pad operations the engine keeps in flight.
    parallelism: usize,
    journal_dir: Option<PathBuf>,
    /// What `--memory` leaves for write buffers once the chunk cache has its part.
    write_budget_bytes: usize,
}

/// Opens the store `cfg` names (connecting to the network if it is one) and the index in it,
/// with the journal, caches and records a mount uses: a mount and `fsck` see the same files.
pub fn open_engine(
    cfg: &MountConfig,
    key: MasterKey,
    new_key: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<Opened, StartError> {
    let (network, parallelism) = match &cfg.store {
        StoreChoice::Local => (None, EngineOptions::default().parallelism),
        StoreChoice::Network(net) => (
            Some(Arc::new(rt.block_on(join_network(cfg, net, &key))?)),
            NETWORK_PARALLELISM,
        ),
    };
    // No single attempt may outlast what a system call waits for.
    let limited = |policy: RetryPolicy| RetryPolicy {
        attempt_limit: Some(cfg.timeout),
        ..policy
    };
    let (store, store_stats, health) = match &network {
        None => wrap(
            open_local_store(&cfg.store_dir, &key)?,
            cfg.simulate.clone(),
            limited(RetryPolicy::default()),
        ),
        Some(network) => wrap(
            network.clone(),
            cfg.simulate.clone(),
            limited(RetryPolicy::network()),
        ),
    };
    // The tier is in front of the network, or of a simulated one when asked for (benchmarks).
    let tier_name = match &cfg.store {
        StoreChoice::Network(net) => Some(format!("tier-{}", net.network)),
        StoreChoice::Local => cfg.simulate.as_ref().map(|_| "tier-simulated".to_string()),
    };
    let (store, tier) = match tier_name.filter(|_| cfg.tier.staged) {
        Some(name) => {
            let tier = rt.block_on(open_tier(cfg, &name, &key, store))?;
            (tier.clone() as Arc<dyn PadStore>, Some(tier))
        }
        None => (store, None),
    };
    let (cache_bytes, write_budget_bytes) = split_memory(cfg.memory_bytes, cfg.cache_bytes);
    if cache_bytes < cfg.cache_bytes {
        tracing::warn!(
            "the chunk cache gets {} MiB, half of --memory, not the {} MiB of --cache-size",
            cache_bytes >> 20,
            cfg.cache_bytes >> 20
        );
    }
    // Every field is set today; the default keeps options added later at their defaults.
    #[allow(clippy::needless_update)]
    let opts = EngineOptions {
        cache_bytes,
        create_if_missing: new_key || cfg.create_index,
        scratchpad_size: cfg
            .chunk_size
            .unwrap_or(crate::engine::DEFAULT_SCRATCHPAD_SIZE),
        parallelism,
        // Local copies of index pages, beside the key; the store keeps them all too.
        index_cache_dir: cfg.key_file.parent().map(|dir| dir.join(INDEX_CACHE_DIR)),
        // Changes not yet committed, per store. A read-only mount makes none, but shows those
        // a mount that stopped left in it.
        journal_dir: Some(match &cfg.store {
            StoreChoice::Local => cfg.store_dir.join("journal"),
            StoreChoice::Network(net) => {
                let data = cfg.key_file.parent().unwrap_or(Path::new("."));
                data.join(format!("journal-{}", net.network))
            }
        }),
        read_only: cfg.read_only,
        lock_wait: crate::engine::journal::LOCK_WAIT,
        discard_damaged_journal: cfg.discard_damaged_journal,
        root_record: cfg.key_file.parent().map(|dir| RootRecordPlace {
            dir: dir.join(ROOT_RECORD_DIR),
            store_id: match &cfg.store {
                StoreChoice::Local => format!(
                    "local:{}",
                    std::fs::canonicalize(&cfg.store_dir)
                        .unwrap_or_else(|_| cfg.store_dir.clone())
                        .display()
                ),
                StoreChoice::Network(net) => format!("network:{}", net.network),
            },
        }),
        accept_rollback: cfg.accept_rollback,
        ..Default::default()
    };
    let journal_dir = opts.journal_dir.clone();
    let engine = rt.block_on(Engine::open(store, key, opts)).map_err(|e| match e {
            crate::engine::Error::NoIndex => StartError(format!(
                "{} holds no index for the key in {}: check the key file, or pass --new-index to start an empty file system",
                match cfg.store {
                    StoreChoice::Local => format!("the store at {}", cfg.store_dir.display()),
                    StoreChoice::Network(ref net) => format!("the {} Autonomi network", net.network),
                },
                cfg.key_file.display()
            )),
            e @ (crate::engine::Error::Rollback(_) | crate::engine::Error::JournalDamaged(_)) => {
                StartError(e.to_string())
            }
            e => StartError(format!("cannot open the index: {e}")),
        })?;
    Ok(Opened {
        engine,
        network,
        tier,
        store_stats,
        health,
        parallelism,
        journal_dir,
        write_budget_bytes,
    })
}

/// The store with the retry layer, the simulation under it if asked for, counters of the
/// operations that reached the store (the simulation keeps its own, under its faults), and
/// counters of failures under and above the retries.
fn wrap<S: PadStore + 'static>(
    inner: S,
    simulate: Option<SimConfig>,
    policy: RetryPolicy,
) -> (Arc<dyn PadStore>, Arc<StoreStats>, StoreHealth) {
    let health = StoreHealth::default();
    let retried = |store: Arc<dyn PadStore>| -> Arc<dyn PadStore> {
        let counted = HealthStore::new(store, health.attempts.clone());
        Arc::new(HealthStore::new(
            RetryingStore::new(counted, policy),
            health.failures.clone(),
        ))
    };
    match simulate {
        Some(sim) => {
            let sim = SimStore::new(inner, sim);
            let stats = sim.stats.clone();
            (retried(Arc::new(sim)), stats, health)
        }
        None => {
            let counting = CountingStore::new(inner);
            let stats = counting.stats();
            (retried(Arc::new(counting)), stats, health)
        }
    }
}

/// Store failures for `mutant-mount status`: every failed attempt, and those that failed for good.
#[derive(Default)]
struct StoreHealth {
    attempts: Arc<HealthStats>,
    failures: Arc<HealthStats>,
}

/// Listens for `mutant-mount status` and `sync`. A mount without one still works: the failure
/// is logged, not fatal.
fn serve_control(
    cfg: &MountConfig,
    rt: &tokio::runtime::Runtime,
    core: &Arc<FsCore>,
    fingerprint: String,
    store_stats: Arc<StoreStats>,
    health: StoreHealth,
    (network, tier): (&Option<Arc<Network>>, &Option<Arc<TieredStore>>),
) -> Option<crate::control::server::ControlSocket> {
    let sources = crate::control::server::Sources {
        core: core.clone(),
        mountpoint: std::fs::canonicalize(&cfg.mountpoint).unwrap_or(cfg.mountpoint.clone()),
        store: match &cfg.store {
            StoreChoice::Local => format!("local ({})", cfg.store_dir.display()),
            StoreChoice::Network(net) => format!("network {}", net.network),
        },
        key_fingerprint: fingerprint,
        read_only: cfg.read_only,
        store_stats,
        attempts: health.attempts,
        failures: health.failures,
        tokens_spent: network.clone().map(|n| {
            Box::new(move || match n.network() {
                Some(n) => n.total_cost().to_string(),
                None => "0 (not connected to the network yet)".to_string(),
            }) as Box<dyn Fn() -> String + Send + Sync>
        }),
        tier: tier.clone(),
    };
    match crate::control::server::serve(rt.handle(), sources) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::warn!("no control socket (status and sync will not reach this mount): {e}");
            None
        }
    }
}

/// The tier in front of the network store: `--cache-dir`, or `name` beside the key.
async fn open_tier(
    cfg: &MountConfig,
    name: &str,
    key: &MasterKey,
    network: Arc<dyn PadStore>,
) -> Result<Arc<TieredStore>, StartError> {
    let dir = tier_dir(cfg, name);
    let mut tier_cfg = TierConfig {
        max_bytes: cfg.tier.max_bytes,
        ..TierConfig::new(&dir)
    };
    if matches!(cfg.store, StoreChoice::Network(_)) {
        tier_cfg.uploads = uploads_within(cfg.memory_bytes);
    }
    TieredStore::open(network, key.root_key().public_key(), tier_cfg)
        .await
        .map_err(|e| {
            StartError(format!(
                "cannot open the local tier in {}: {e}",
                dir.display()
            ))
        })
}

/// At unmount: waits up to `bound` for the uploads of everything committed, then leaves the
/// rest staged for the next mount, saying so on stderr and in the log.
pub fn wait_for_uploads(
    rt: &tokio::runtime::Runtime,
    tier: &TieredStore,
    bound: std::time::Duration,
) {
    let left = tier.backlog();
    if left.pads > 0 {
        tracing::info!(
            "unmount: waiting up to {} s for {} pads to upload",
            bound.as_secs(),
            left.pads
        );
    }
    match rt.block_on(tier.drain(bound)) {
        Ok(()) => tracing::info!("every commit is uploaded"),
        Err(message) => {
            tracing::warn!("{message}");
            // Not `eprintln!`: it panics when stderr is a full disk.
            let _ = writeln!(std::io::stderr(), "mutant-mount: {message}");
        }
    }
}

/// Where a tier lives: `--cache-dir`, or `name` beside the key.
fn tier_dir(cfg: &MountConfig, name: &str) -> PathBuf {
    cfg.tier.dir.clone().unwrap_or_else(|| {
        let data = cfg.key_file.parent().unwrap_or(Path::new("."));
        data.join(name)
    })
}

/// The network store of a mount, joined or still being joined.
type Network = ConnectingStore<NetworkStore>;

/// Joins the network. A mount whose tier already holds the index does not need it to start:
/// if the network cannot be reached within [`OFFLINE_AFTER`], it mounts offline (the tier
/// serves what it holds and stages writes) and joins in the background.
async fn join_network(
    cfg: &MountConfig,
    net: &NetworkConfig,
    key: &MasterKey,
) -> Result<Network, StartError> {
    let dir = tier_dir(cfg, &format!("tier-{}", net.network));
    let offline_ok = cfg.tier.staged && TieredStore::holds(&dir, &key.root_key().public_key());
    let limit = if offline_ok {
        OFFLINE_AFTER
    } else {
        CONNECT_LIMIT
    };
    match connect_within(net.clone(), limit).await {
        Ok(store) => Ok(ConnectingStore::connected(Arc::new(store))),
        Err(Unreachable::Now(e)) if offline_ok => {
            tracing::warn!(
                "{e}: mounting offline from the local tier in {}. Files it holds read as \
                 usual, others fail with EIO; writes are staged, and upload once the network \
                 is joined (tried again in the background)",
                dir.display()
            );
            let net = net.clone();
            Ok(ConnectingStore::offline(OFFLINE_RETRY, move || {
                let net = net.clone();
                async move {
                    connect_within(net, CONNECT_LIMIT)
                        .await
                        .map_err(|e| e.to_string())
                }
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Why the network could not be joined.
#[derive(Debug)]
enum Unreachable {
    /// No answer (yet): worth trying again.
    Now(StartError),
    /// A setting is wrong (a wallet key missing or invalid, a testnet without peers or EVM
    /// settings): trying again cannot help.
    Not(StartError),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::Now(e) | Unreachable::Not(e) => e.fmt(f),
        }
    }
}

impl From<Unreachable> for StartError {
    fn from(e: Unreachable) -> Self {
        match e {
            Unreachable::Now(e) | Unreachable::Not(e) => e,
        }
    }
}

/// Joins the network, as a start-up error a user can act on.
pub async fn connect_network(net: NetworkConfig) -> Result<NetworkStore, StartError> {
    Ok(connect_within(net, CONNECT_LIMIT).await?)
}

async fn connect_within(net: NetworkConfig, limit: Duration) -> Result<NetworkStore, Unreachable> {
    let kind = net.network;
    let now = |msg: String| Unreachable::Now(StartError(msg));
    match tokio::time::timeout(limit, NetworkStore::connect(net)).await {
        Ok(Ok(store)) => Ok(store),
        // The message says what to set.
        Ok(Err(StoreError::Permanent(msg))) => Err(Unreachable::Not(StartError(format!(
            "cannot use the {kind} Autonomi network: {msg}"
        )))),
        Ok(Err(StoreError::Transient(msg))) => Err(now(format!(
            "cannot reach the Autonomi network: {msg} (network {kind}; check ANT_PEERS and that those peers are up)"
        ))),
        Ok(Err(e)) => Err(now(format!("cannot reach the Autonomi network ({kind}): {e}"))),
        Err(_) => Err(now(format!(
            "cannot reach the Autonomi network: not connected after {} s (network {kind}; check ANT_PEERS and that those peers are up)",
            limit.as_secs()
        ))),
    }
}

/// What this session cost on the network.
fn log_network_cost(network: &NetworkStore) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = network.stats();
    tracing::info!(
        network = %network.network(),
        pads_created = stats.pads_created.load(Relaxed),
        creates_without_payment = stats.creates_without_payment.load(Relaxed),
        payments = network.payments(),
        updates = stats.updates.load(Relaxed),
        gets = stats.gets.load(Relaxed),
        tokens_paid = %network.total_cost(),
        atto_paid = %network.total_cost().as_atto(),
        "network session cost: {} pads created in {} payments, {} tokens paid (updates are free)",
        stats.pads_created.load(Relaxed),
        network.payments(),
        network.total_cost()
    );
}

/// What storing `bytes` of file data would cost: one pad per chunk, at the price nodes quote
/// now for a new scratchpad. No wallet is needed and nothing is paid.
pub fn estimate(net: NetworkConfig, bytes: u64, chunk_size: u32) -> Result<String, StartError> {
    let rt = runtime()?;
    rt.block_on(async {
        let store = connect_network(net).await?;
        let probe = autonomi::SecretKey::random().public_key();
        let price = store
            .client()
            .scratchpad_cost(&probe)
            .await
            .map_err(|e| StartError(format!("cannot get a price quote from the network: {e}")))?;
        let pads = bytes.div_ceil(u64::from(chunk_size.max(1)));
        let total = price.as_atto().saturating_mul(autonomi::Amount::from(pads));
        Ok(format!(
            "{bytes} bytes of file data: {pads} pads of {chunk_size} bytes at {price} tokens each \
             = about {} tokens ({total} atto), plus a few pads for the index on first use. \
             Updating a pad and reusing freed pads are free; prices change with the network's load.",
            autonomi::AttoTokens::from_atto(total)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_in_flight_follow_the_memory_budget() {
        assert_eq!(uploads_within(DEFAULT_MEMORY), 4);
        assert_eq!(uploads_within(1 << 30), 8);
        assert_eq!(uploads_within(64 << 20), 2, "never fewer than two");
        assert_eq!(
            uploads_within(64 << 30),
            16,
            "never more than the tier's own bound"
        );
    }
}
