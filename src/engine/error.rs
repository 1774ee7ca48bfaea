use crate::codec::CodecError;
use crate::store::{io_errno, IoCause, StoreError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pad {pad} failed verification: {why}")]
    CorruptPad { pad: String, why: String },
    #[error("the index could not be read: {0} (wrong master key, or a damaged store)")]
    Index(#[from] CodecError),
    #[error("the store holds no index for this master key")]
    NoIndex,
    #[error("no such key: {0}")]
    NotFound(String),
    #[error("the index in the store was changed by someone else since it was loaded; local changes were kept and not written")]
    Conflict,
    /// Larger than the index can describe (`index::MAX_FILE_SIZE`, `index::MAX_DATA_CHUNKS`):
    /// refused before it is journaled, so it can never poison a commit.
    #[error("{0}: larger than the largest file this file system holds")]
    TooLarge(String),
    #[error("an index page outgrew its pad")]
    PageTooBig,
    #[error("the index root does not fit in one pad ({0} bytes)")]
    RootTooBig(usize),
    #[error("the local journal could not be written: {0}")]
    Journal(String),
    /// Another process holds the store's journal lock (a mount, or a tool working on it).
    #[error("the store is in use: {0}")]
    InUse(String),
    /// The journal has a damaged frame with intact ones after it: left as it is.
    #[error("{0}")]
    JournalDamaged(String),
    /// The store serves an older root than one seen before.
    #[error("{0}")]
    Rollback(String),
    /// A local file (the journal) could not be written; the cause is kept for its errno.
    #[error("the local journal could not be written: {cause}")]
    JournalIo {
        #[source]
        cause: IoCause,
    },
}

impl From<std::io::Error> for Error {
    /// The engine's own local I/O is the journal's.
    fn from(e: std::io::Error) -> Self {
        Error::JournalIo { cause: e.into() }
    }
}

impl Error {
    /// The errno this error reaches a program as, when it is more than `EIO`: the one place
    /// causes are classified (the file system maps everything else to `EIO`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::NotFound(_) => Some(libc::ENOENT),
            Error::TooLarge(_) => Some(libc::EFBIG),
            Error::Store(e) => e.errno(),
            Error::JournalIo { cause } => io_errno(&cause.0),
            _ => None,
        }
    }

    /// Bad data from the store: never to be shown as content.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::CorruptPad { .. } | Error::Index(_) | Error::Store(StoreError::Corrupt(_))
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
