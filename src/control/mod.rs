//! The control socket: how `mutant-mount status` and `sync` talk to a running mount.
//!
//! Each mount listens on a Unix socket (mode 0600, in a 0700 directory of the user's runtime
//! directory) named after its mount point, so a client finds it from the mount point alone. The
//! server also checks that a client runs as the mount's user or root. One request per
//! connection, one JSON object per line: the request, then progress lines and a final answer.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The directory of this user's control sockets: `/run/mutant-mount` for root (whose mounts
/// systemd starts without a session), else `$XDG_RUNTIME_DIR/mutant-mount`, else
/// `/tmp/mutant-mount-UID`.
pub fn socket_dir() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return PathBuf::from("/run/mutant-mount");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("mutant-mount"),
        None => PathBuf::from(format!("/tmp/mutant-mount-{uid}")),
    }
}

/// The socket of the mount on `mountpoint` (an absolute, canonical path).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    socket_dir().join(format!("{}.sock", hex::encode(&digest[..12])))
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Status,
    Sync,
}

/// What `status` reports. Counts are since this mount started.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Status {
    pub mountpoint: PathBuf,
    pub pid: u32,
    /// "local (DIR)" or "network NAME".
    pub store: String,
    pub key_fingerprint: String,
    pub read_only: bool,
    /// Whether anything waits for a commit, and how many journaled changes.
    pub uncommitted: bool,
    pub uncommitted_changes: usize,
    /// Pads being written (uploads in flight) and their size at most.
    pub uploads_in_flight: usize,
    pub upload_bytes_in_flight: u64,
    /// Unix time of this mount's last commit.
    pub last_commit_unix: Option<u64>,
    pub files: usize,
    pub data_bytes: u64,
    pub pads_in_use: usize,
    pub free_pads: usize,
    pub pads_created: u64,
    pub pads_updated: u64,
    pub pads_read: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Tokens paid for new pads (network only), as the wallet counts them.
    pub tokens_spent: Option<String>,
    pub cache_bytes: usize,
    pub cache_capacity: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Store operations that failed (before retries) and that failed for good (after).
    pub store_failed_attempts: u64,
    pub store_errors: u64,
    pub last_store_error: Option<String>,
    /// The local tier (network mounts): pads written here and not yet uploaded, their bytes,
    /// uploads in flight now, and why uploads stopped if they did. `None` without a tier.
    #[serde(default)]
    pub staged: Option<StagedStatus>,
}

/// What the local tier holds that the network does not have yet.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedStatus {
    pub pads: u64,
    pub bytes: u64,
    pub uploading: u64,
    pub stopped: Option<String>,
}

/// One line the server sends.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Status(Box<Status>),
    /// A sync in progress: what still waits.
    Progress {
        uncommitted_changes: usize,
        uploads_in_flight: usize,
    },
    /// A sync finished.
    Synced,
    Error(String),
}
