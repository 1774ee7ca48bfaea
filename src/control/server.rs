//! The mount's side of the control socket.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{socket_dir, socket_path, Reply, Request, StagedStatus, Status};
use crate::fs::FsCore;
use crate::store::{HealthStats, StoreStats, TieredStore};

/// How often a running sync reports what still waits.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Where a status report's figures come from.
pub struct Sources {
    pub core: Arc<FsCore>,
    /// Canonical, as clients compute it.
    pub mountpoint: PathBuf,
    pub store: String,
    pub key_fingerprint: String,
    pub read_only: bool,
    pub store_stats: Arc<StoreStats>,
    /// Failed attempts, under the retry layer, and failures the engine saw, above it.
    pub attempts: Arc<HealthStats>,
    pub failures: Arc<HealthStats>,
    pub tokens_spent: Option<Box<dyn Fn() -> String + Send + Sync>>,
    /// The local tier in front of the network, if there is one.
    pub tier: Option<Arc<TieredStore>>,
}

/// A listening control socket; dropping it stops listening and removes the socket file.
pub struct ControlSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts listening for `sources.mountpoint`'s clients on `rt`.
pub fn serve(rt: &Handle, sources: Sources) -> io::Result<ControlSocket> {
    let dir = socket_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = socket_path(&sources.mountpoint);
    // A socket left by a mount that was killed: nobody answers on it any more.
    if std::os::unix::net::UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = {
        let _guard = rt.enter();
        UnixListener::bind(&path)?
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let sources = Arc::new(sources);
    let task = rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &sources).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    });
    Ok(ControlSocket { path, task })
}

/// Only the mount's own user, or root, may ask.
fn allowed(stream: &UnixStream) -> bool {
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == me || cred.uid() == 0)
}

async fn answer(stream: UnixStream, sources: &Sources) -> io::Result<()> {
    if !allowed(&stream) {
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let send = |reply: Reply| {
        let mut text = serde_json::to_string(&reply).expect("replies serialize");
        text.push('\n');
        text
    };
    match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => {
            let reply = Reply::Error(format!("bad request: {e}"));
            write.write_all(send(reply).as_bytes()).await?;
        }
        Ok(Request::Status) => {
            let reply = Reply::Status(Box::new(status(sources).await));
            write.write_all(send(reply).as_bytes()).await?;
        }
        Ok(Request::Sync) => {
            let core = sources.core.clone();
            // Done once the changes are committed and, over a tier, uploaded.
            let mut sync = tokio::spawn(async move { core.sync_and_flush().await });
            let result = loop {
                tokio::select! {
                    done = &mut sync => break done,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {
                        let now = sources.core.engine().activity().await;
                        let reply = Reply::Progress {
                            uncommitted_changes: now.uncommitted_changes,
                            uploads_in_flight: now.pads_in_flight
                                + staged(sources).map_or(0, |s| s.pads as usize),
                        };
                        write.write_all(send(reply).as_bytes()).await?;
                    }
                }
            };
            let reply = match result {
                Ok(Ok(())) => Reply::Synced,
                Ok(Err(e)) => Reply::Error(format!(
                    "the commit failed: {} (the changes stay pending; see the mount's log)",
                    std::io::Error::from_raw_os_error(e.0)
                )),
                Err(e) => Reply::Error(format!("the commit did not finish: {e}")),
            };
            write.write_all(send(reply).as_bytes()).await?;
        }
    }
    write.shutdown().await
}

async fn status(s: &Sources) -> Status {
    let engine = s.core.engine();
    let stats = engine.stats().await;
    let now = engine.activity().await;
    Status {
        mountpoint: s.mountpoint.clone(),
        pid: std::process::id(),
        store: s.store.clone(),
        key_fingerprint: s.key_fingerprint.clone(),
        read_only: s.read_only,
        uncommitted: now.uncommitted,
        uncommitted_changes: now.uncommitted_changes,
        uploads_in_flight: now.pads_in_flight,
        upload_bytes_in_flight: now.pads_in_flight as u64 * u64::from(stats.chunk_size),
        last_commit_unix: now
            .last_commit
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        files: stats.files,
        data_bytes: stats.data_bytes,
        pads_in_use: stats.pads_in_use,
        free_pads: stats.free_pads,
        pads_created: s.store_stats.creates.load(Relaxed),
        pads_updated: s.store_stats.updates.load(Relaxed),
        pads_read: s.store_stats.gets.load(Relaxed) + s.store_stats.parts.load(Relaxed),
        bytes_written: s.store_stats.bytes_written.load(Relaxed),
        bytes_read: s.store_stats.bytes_read.load(Relaxed),
        tokens_spent: s.tokens_spent.as_ref().map(|f| f()),
        cache_bytes: now.cache_bytes,
        cache_capacity: now.cache_capacity,
        cache_hits: now.cache_hits,
        cache_misses: now.cache_misses,
        store_failed_attempts: s.attempts.errors(),
        store_errors: s.failures.errors(),
        last_store_error: s.failures.last_error().or_else(|| s.attempts.last_error()),
        staged: staged(s),
    }
}

fn staged(s: &Sources) -> Option<StagedStatus> {
    s.tier.as_ref().map(|tier| {
        let b = tier.backlog();
        StagedStatus {
            pads: b.pads,
            bytes: b.bytes,
            uploading: b.uploading,
            stopped: b.stopped,
        }
    })
}
