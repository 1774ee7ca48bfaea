//! The storage layer: one async trait for pads (signed, encrypted `autonomi::Scratchpad`s), and
//! the stores behind it. Every store enforces the network's rules (size, counters, create
//! once), so code that works on the local store works on the network; signatures are checked
//! by the network on write and by the engine on every read.

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey};

pub mod connecting;
mod group_commit;
pub mod health;
pub mod local;
pub mod network;
mod payments;
pub mod retry;
pub mod sim;
pub mod stats;
pub mod tier;

pub use health::{HealthStats, HealthStore};
pub use local::LocalStore;
pub use retry::{RetryPolicy, RetryingStore};
pub use sim::{SimConfig, SimStore};
pub use stats::{CountingStore, StoreStats};
pub use tier::{TierConfig, TieredStore};

/// Largest plaintext a pad can hold with autonomi 0.10.x (4 MiB including metadata).
pub const MAX_PAD_PLAINTEXT: usize = 4_193_824;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("pad not found")]
    NotFound,
    #[error("pad already exists")]
    AlreadyExists,
    #[error("pad counter {offered} does not exceed the stored {stored}")]
    StaleCounter { stored: u64, offered: u64 },
    #[error("pad of {0} bytes exceeds the 4 MiB scratchpad limit")]
    TooBig(usize),
    #[error("corrupt pad: {0}")]
    Corrupt(String),
    #[error("store operation timed out")]
    Timeout,
    /// The network has not been joined yet (a mount that started offline): worth trying
    /// again later, not within one operation.
    #[error("not connected to the network")]
    Offline,
    #[error("transient store error: {0}")]
    Transient(String),
    #[error("store error: {0}")]
    Permanent(String),
    /// The store's disk refused: its cause (a full disk, a quota, a read-only file system)
    /// is kept, so that it reaches the program as itself (`errno`).
    #[error("{context}: {cause}")]
    Io {
        context: String,
        #[source]
        cause: IoCause,
    },
}

/// An `io::Error` kept whole, shared so that errors stay `Clone`.
#[derive(Debug, Clone)]
pub struct IoCause(pub std::sync::Arc<std::io::Error>);

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for IoCause {}

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<std::io::Error> for IoCause {
    fn from(e: std::io::Error) -> Self {
        IoCause(std::sync::Arc::new(e))
    }
}

/// The errno a program should see for an I/O error, when it says more than `EIO`: the causes
/// a user can act on (free space, a quota, a read-only disk, a name or file too long for the
/// disk, a timeout).
pub fn io_errno(e: &std::io::Error) -> Option<i32> {
    use std::io::ErrorKind;
    const TOLD: [i32; 6] = [
        libc::ENOSPC,
        libc::EDQUOT,
        libc::EROFS,
        libc::EFBIG,
        libc::ENAMETOOLONG,
        libc::ETIMEDOUT,
    ];
    if let Some(code) = e.raw_os_error().filter(|c| TOLD.contains(c)) {
        return Some(code);
    }
    match e.kind() {
        ErrorKind::StorageFull => Some(libc::ENOSPC),
        ErrorKind::QuotaExceeded => Some(libc::EDQUOT),
        ErrorKind::ReadOnlyFilesystem => Some(libc::EROFS),
        ErrorKind::FileTooLarge => Some(libc::EFBIG),
        ErrorKind::InvalidFilename => Some(libc::ENAMETOOLONG),
        ErrorKind::TimedOut => Some(libc::ETIMEDOUT),
        _ => None,
    }
}

impl StoreError {
    pub fn io(context: impl std::fmt::Display, e: std::io::Error) -> Self {
        StoreError::Io {
            context: context.to_string(),
            cause: e.into(),
        }
    }

    /// The errno this error reaches a program as, when it is not plain `EIO`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            StoreError::Timeout => Some(libc::ETIMEDOUT),
            StoreError::Io { cause, .. } => io_errno(&cause.0),
            _ => None,
        }
    }

    /// Whether the same operation may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout | StoreError::Transient(_) | StoreError::Offline
        )
    }
}

/// A place that keeps pads. Implementations must be safe to call concurrently.
#[async_trait]
pub trait PadStore: Send + Sync + 'static {
    /// Stores a pad that must not exist yet (on the network: the paid operation).
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError>;
    /// Replaces an existing pad; the new counter must be higher than the stored one.
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError>;
    /// Whether this store sends writes on in index-root order and so has a use for
    /// [`update_freed`](Self::update_freed) (the tier); the engine notes freed pads only then.
    fn orders_by_root(&self) -> bool {
        false
    }
    /// Of a store that orders by root: the newest root version its destination holds, if
    /// known. A pad freed with that root or an earlier one goes up as soon as it is written;
    /// one freed later waits for the roots between (the engine reuses the first kind first).
    fn settled_root(&self) -> Option<u64> {
        None
    }
    /// The copy of a pad this store keeps was found older than the index says, or damaged: a
    /// store that caches what it fetched (the tier) drops it, so that the next get asks again.
    fn forget_fetched(&self, _owner: &PublicKey) {}
    /// [`update`](Self::update) of a pad that no index root names from root version `root`
    /// on (the engine freed it with that root, and writes it again now): a store that sends
    /// writes on in root order (the tier) may send this one as soon as its destination holds
    /// root `root`, ahead of the roots between.
    async fn update_freed(&self, pad: Scratchpad, _root: u64) -> Result<(), StoreError> {
        self.update(pad).await
    }
    /// A version of the pad owned by `owner`: the current one, except that a network store
    /// answers with the first version a node returns, which may be older (a node that was
    /// away). Readers that know the version to expect check it.
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError>;
    /// The newest version of the pad any place holding it has: a network store waits for
    /// every node of the pad's close group that answers and takes the newest signed version.
    /// Slower than [`get`](Self::get); for a pad whose version nothing else vouches for (the
    /// index root), or that `get` returned older than the index says.
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.get(owner).await
    }
    /// Whether a pad exists, without fetching it.
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError>;
    /// The counter of the pad's current version (a writer that found it existing goes past
    /// it). The local store reads it from the pad's header alone, which a trimmed pad keeps.
    async fn counter(&self, owner: &PublicKey) -> Result<u64, StoreError> {
        Ok(self.get_newest(owner).await?.counter())
    }
    /// Bytes `range` of the current version's `encrypted_data`, unchecked, or `None` if this
    /// store can only fetch whole pads (the network). Readers check parts against hashes of a
    /// version they checked whole.
    async fn get_part(
        &self,
        _owner: &PublicKey,
        _range: std::ops::Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
    /// Whether every get is a round trip over a network (read-ahead starts wider there).
    fn is_remote(&self) -> bool {
        false
    }
    /// Whether the pads are kept on this machine's disk (the local store), where a journal
    /// beside them is as durable as they are.
    fn on_this_disk(&self) -> bool {
        false
    }
    /// Waits until every write that returned is where this store promises it ends up (the
    /// network, for a store that stages writes locally). Most stores have it there already.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// These pads' contents are no longer needed: nothing references them, and each will be
    /// written whole before it is read again. A store on this disk gives their space back
    /// (the pads stay, at their counters); others keep them as they are.
    async fn trim(&self, _owners: Vec<PublicKey>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl<T: PadStore + ?Sized> PadStore for std::sync::Arc<T> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        (**self).create(pad).await
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        (**self).update(pad).await
    }
    fn orders_by_root(&self) -> bool {
        (**self).orders_by_root()
    }
    fn settled_root(&self) -> Option<u64> {
        (**self).settled_root()
    }
    fn forget_fetched(&self, owner: &PublicKey) {
        (**self).forget_fetched(owner)
    }
    async fn update_freed(&self, pad: Scratchpad, root: u64) -> Result<(), StoreError> {
        (**self).update_freed(pad, root).await
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        (**self).get(owner).await
    }
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        (**self).get_newest(owner).await
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        (**self).exists(owner).await
    }
    async fn counter(&self, owner: &PublicKey) -> Result<u64, StoreError> {
        (**self).counter(owner).await
    }
    async fn get_part(
        &self,
        owner: &PublicKey,
        range: std::ops::Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        (**self).get_part(owner, range).await
    }
    fn is_remote(&self) -> bool {
        (**self).is_remote()
    }
    fn on_this_disk(&self) -> bool {
        (**self).on_this_disk()
    }
    async fn flush(&self) -> Result<(), StoreError> {
        (**self).flush().await
    }
    async fn trim(&self, owners: Vec<PublicKey>) -> Result<(), StoreError> {
        (**self).trim(owners).await
    }
}

/// [`check_acceptable`] on the blocking pool (a signature check hashes the whole pad).
pub async fn check_acceptable_off_thread(pad: Scratchpad) -> Result<Scratchpad, StoreError> {
    tokio::task::spawn_blocking(move || check_acceptable(&pad).map(|()| pad))
        .await
        .map_err(|e| StoreError::Permanent(format!("pad check failed: {e}")))?
}

/// Checks what every store checks before accepting a pad.
pub fn check_acceptable(pad: &Scratchpad) -> Result<(), StoreError> {
    check_size(pad)?;
    if !crate::seal::signature_ok(pad) {
        return Err(StoreError::Corrupt("bad signature".into()));
    }
    Ok(())
}

/// The size rule alone. The local store takes this machine's own pads and does not spend a
/// SHA-256 of each on checking the signature it was just given: every reader checks it.
pub fn check_size(pad: &Scratchpad) -> Result<(), StoreError> {
    if pad.is_too_big() {
        return Err(StoreError::TooBig(pad.size()));
    }
    Ok(())
}
