//! The file-system core: every operation as an async call on plain values, errors as errno.
//! The FUSE adapter (`fuse.rs`) only translates; tests drive this directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use autonomi::Bytes;
use tokio::sync::Mutex;

use super::budget::MemoryBudget;
use super::children::FIRST_COOKIE;
use super::namespace::{is_orphan_key, join, orphan_key, KeyInfo, Namespace, ROOT_INO};
use super::open_file::OpenFile;
use crate::engine::{Engine, EntryMeta, Error as EngineError};
use crate::index::names;
use crate::index::{inode_key, inode_of_key, Entry, FileKind, Meta, Timestamp, MAX_FILE_SIZE};

/// An errno for the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<EngineError> for Errno {
    fn from(e: EngineError) -> Self {
        match e.errno() {
            Some(code) if !matches!(e, EngineError::NotFound(_)) => {
                tracing::warn!("storage error: {e}");
                Errno(code)
            }
            Some(code) => Errno(code),
            None => {
                tracing::error!("storage error: {e}");
                Errno(libc::EIO)
            }
        }
    }
}

pub type FsResult<T> = Result<T, Errno>;

fn err<T>(code: i32) -> FsResult<T> {
    Err(Errno(code))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    /// Bytes the file takes in the store: its size less its holes (`st_blocks`, which `du`,
    /// `cp --sparse` and `tar --sparse` read).
    pub stored: u64,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
}

/// A time given to `setattr`.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Bytes of changed chunks one open file may buffer before full chunks are uploaded.
    pub write_buffer_bytes: usize,
    pub read_only: bool,
    /// A directory on the disk that holds the store, for `statfs` (the local store).
    pub space_probe: Option<PathBuf>,
    /// How often changes are committed to the store (all changes: closed files too when the
    /// engine journals them).
    pub commit_interval: Duration,
    /// How long a system call waits for the store before it fails with `ETIMEDOUT`.
    pub timeout: Duration,
    /// Bytes of changed chunks all open files together may hold, uploads in flight included.
    pub write_budget_bytes: usize,
    /// Chunks uploading at once, over all files.
    pub uploads_in_flight: usize,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            write_buffer_bytes: 64 << 20,
            read_only: false,
            space_probe: None,
            commit_interval: Duration::from_secs(1),
            timeout: DEFAULT_TIMEOUT,
            write_budget_bytes: 256 << 20,
            uploads_in_flight: 16,
        }
    }
}

/// How long a system call waits for the store by default: long enough for a slow network
/// round trip and its retries, short enough that a program (and its user) hears of an outage.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Who asks: the caller's ids, for new files.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

struct Handle {
    ino: u64,
    append: bool,
}

pub struct FsCore {
    engine: Engine,
    ns: Mutex<Namespace>,
    handles: StdMutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    cfg: FsConfig,
    budget: Arc<MemoryBudget>,
}

const NAME_MAX: usize = 255;

/// The most names one file may have (ext4's bound).
const LINK_MAX: u32 = 65_000;

/// Bytes of extended attributes (names and values) one file may hold.
const XATTR_SPACE: usize = 256 << 10;

/// The index keys that move when the name at `from` (node `ino`, with everything under it)
/// becomes `to`: each with its new key.
fn key_moves(ns: &Namespace, ino: u64, from: &str, to: &str) -> Vec<(String, String)> {
    let keys = ns.keys_below(ino, from).into_iter();
    keys.map(|key| {
        let moved = format!("{to}{}", &key[from.len()..]);
        (key, moved)
    })
    .collect()
}

/// Checks a new name, in the index's form ([`names`]): its bytes as the kernel
/// sees them are what ext4 would accept.
fn check_name(name: &str) -> FsResult<()> {
    if names::from_key_name(name).is_some_and(|bytes| bytes.len() > NAME_MAX) {
        return err(libc::ENAMETOOLONG);
    }
    if !names::is_valid_name(name) {
        return err(libc::EINVAL);
    }
    Ok(())
}

impl FsCore {
    /// Builds the tree from the engine's index, creating the root if the index is new and
    /// dropping files that were unlinked while open when the last mount ended.
    pub async fn start(engine: Engine, cfg: FsConfig) -> Result<Arc<Self>, EngineError> {
        let snapshot = engine.snapshot().await;
        if !snapshot.iter().any(|(k, _)| k.is_empty()) && !cfg.read_only {
            let mut meta = Meta::file();
            meta.kind = FileKind::Dir;
            meta.mode = 0o755;
            engine.install("", Entry::empty(meta)).await?;
        }
        // Files with several names live under inode keys; their names point at them.
        let numbered: HashMap<u64, FileKind> = (snapshot.iter())
            .filter_map(|(k, e)| Some((inode_of_key(k)?, e.meta.kind)))
            .collect();
        let mut orphans = Vec::new();
        let mut stray = Vec::new();
        let keys = snapshot.into_iter().filter_map(|(key, e)| {
            if is_orphan_key(&key) {
                orphans.push(key);
                return None;
            }
            if inode_of_key(&key).is_some() {
                return None;
            }
            let kind = match e.link {
                None => e.meta.kind,
                Some(id) => match numbered.get(&id) {
                    Some(&kind) => kind,
                    None => {
                        stray.push(key);
                        return None;
                    }
                },
            };
            Some(KeyInfo {
                key,
                kind,
                link: e.link,
            })
        });
        let (ns, unplaced) = Namespace::build(keys.collect::<Vec<_>>());
        stray.extend(unplaced);
        if !stray.is_empty() {
            // Names stay out of logs at the default level.
            tracing::warn!(
                "{} index keys have no parent directory or file; they are not shown",
                stray.len()
            );
            tracing::debug!("keys without a parent directory or file: {stray:?}");
        }
        // A file whose last name went while it was open, or before a crash let it go.
        orphans.extend(
            (numbered.keys())
                .filter(|&&id| ns.linked(id).is_none())
                .map(|&id| inode_key(id)),
        );
        if !cfg.read_only {
            for key in orphans {
                engine.remove(&key).await?;
            }
            engine.commit().await?;
        }
        let budget = Arc::new(MemoryBudget::new(
            cfg.write_budget_bytes,
            engine.chunk_size(),
            cfg.uploads_in_flight,
        ));
        Ok(Arc::new(FsCore {
            engine,
            ns: Mutex::new(ns),
            handles: StdMutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cfg,
            budget,
        }))
    }

    /// The mount's budget for write buffers.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// When a system call starting now stops waiting for the store.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.cfg.timeout
    }

    /// An index commit, waited for until `deadline`: past it the caller hears `ETIMEDOUT` and
    /// the commit goes on in its own task (`Engine::commit`).
    async fn commit_by(&self, deadline: tokio::time::Instant) -> FsResult<()> {
        match tokio::time::timeout_at(deadline, self.engine.commit()).await {
            Ok(done) => Ok(done?),
            Err(_) => {
                tracing::warn!(
                    "the store did not take a commit within {:?}: ETIMEDOUT (the commit goes on)",
                    self.cfg.timeout
                );
                err(libc::ETIMEDOUT)
            }
        }
    }

    /// Waits until `deadline` for the store to hold what is committed where it promises to
    /// (uploaded, over a tiered store); past it `ETIMEDOUT`, and the uploads go on.
    async fn flush_by(&self, deadline: tokio::time::Instant) -> FsResult<()> {
        match tokio::time::timeout_at(deadline, self.engine.flush_store()).await {
            Ok(flushed) => Ok(flushed?),
            Err(_) => {
                tracing::warn!(
                    "the store did not finish uploading within {:?}: ETIMEDOUT (uploads go on)",
                    self.cfg.timeout
                );
                err(libc::ETIMEDOUT)
            }
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// Commits whatever is pending; the background committer and unmount call this.
    pub async fn sync_all(&self) -> FsResult<()> {
        let open: Vec<u64> = {
            let ns = self.ns.lock().await;
            let handles = self.handles.lock().unwrap();
            let mut inos: Vec<u64> = handles.values().map(|h| h.ino).collect();
            inos.sort_unstable();
            inos.dedup();
            inos.retain(|ino| ns.get(*ino).is_some_and(|n| n.open.is_some()));
            inos
        };
        for ino in open {
            self.commit_file(ino).await?;
        }
        self.drop_retired_packs().await?;
        self.engine.commit().await?;
        Ok(())
    }

    /// Lets the engine free the packs it merged before the oldest file open now read its
    /// chunk list (`Engine::drop_retired`).
    async fn drop_retired_packs(&self) -> FsResult<()> {
        let oldest_open = {
            let ns = self.ns.lock().await;
            ns.open_files().map(|open| open.opened_at).min()
        };
        let now = std::time::Instant::now();
        Ok(self.engine.drop_retired(oldest_open.unwrap_or(now)).await?)
    }

    /// Commits in the background every `commit_interval` while anything is pending.
    pub fn spawn_committer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.cfg.commit_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(fs) = weak.upgrade() else { return };
                if let Err(e) = fs.drop_retired_packs().await {
                    tracing::warn!("could not free merged packs (will retry): errno {}", e.0);
                }
                if fs.engine.has_uncommitted().await && fs.engine.commit_due(interval) {
                    match fs.engine.commit().await {
                        Ok(()) => {}
                        Err(EngineError::Conflict) => {
                            tracing::error!(
                                "{}; changes made here are kept in the journal and recovered \
                                 into lost+found/ at unmount",
                                EngineError::Conflict
                            );
                            return;
                        }
                        Err(e) => tracing::warn!("background commit failed (will retry): {e}"),
                    }
                }
            }
        })
    }

    async fn meta_at(&self, key: &str) -> FsResult<EntryMeta> {
        self.engine.entry_meta(key).await.ok_or(Errno(libc::ENOENT))
    }

    async fn attr_of(&self, ns: &Namespace, ino: u64) -> FsResult<Attr> {
        let node = ns.get(ino).ok_or(Errno(libc::ENOENT))?;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let EntryMeta { size, stored, meta } = self.meta_at(&key).await?;
        let mut attr = Attr {
            ino,
            kind: meta.kind,
            size,
            stored,
            perm: meta.mode & 0o7777,
            nlink: node.nlink(),
            uid: meta.uid,
            gid: meta.gid,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            rdev: meta.rdev,
        };
        match meta.kind {
            FileKind::Dir => {
                attr.size = 4096;
                attr.stored = 4096;
                attr.nlink = 2 + node.children.dirs() as u32;
            }
            FileKind::Symlink => {
                attr.size = meta.symlink_target.as_ref().map_or(0, |t| t.len() as u64);
            }
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => {
                attr.size = 0;
            }
            FileKind::File => {
                if node.unlinked {
                    attr.nlink = 0;
                }
                if let Some(open) = &node.open {
                    let pending = open.pending();
                    attr.size = pending.size;
                    attr.stored = attr.stored.min(pending.size);
                    if let Some(t) = pending.written_at {
                        attr.mtime = t;
                        attr.ctime = t;
                        // Where unsaved writes went is known at their commit: until then the
                        // file counts as taking its whole size.
                        attr.stored = pending.size;
                    }
                }
            }
        }
        Ok(attr)
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let ns = self.ns.lock().await;
        self.attr_of(&ns, ino).await
    }

    /// The attributes of `name` in `parent`. This and every call that answers with an entry
    /// (`mkdir`, `mknod`, `symlink`, `create`, `link`, `readdir_plus`) counts as one more
    /// lookup the kernel holds, until [`forget`](Self::forget).
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let mut ns = self.ns.lock().await;
        let dir = ns.get(parent).ok_or(Errno(libc::ENOENT))?;
        if dir.kind != FileKind::Dir {
            return err(libc::ENOTDIR);
        }
        if names::from_key_name(name).is_some_and(|bytes| bytes.len() > NAME_MAX) {
            return err(libc::ENAMETOOLONG);
        }
        let ino = ns.child(parent, name).ok_or(Errno(libc::ENOENT))?;
        let attr = self.attr_of(&ns, ino).await?;
        ns.told_kernel(ino);
        Ok(attr)
    }

    /// The kernel forgot `ino` `count` times (FUSE `forget`): once it holds the number no more
    /// and no file has it, it may be given again.
    pub async fn forget(&self, ino: u64, count: u64) {
        self.ns.lock().await.kernel_forgot(ino, count);
    }

    /// Bumps a directory's mtime and ctime (its entries changed).
    async fn touch_dir(&self, ns: &Namespace, dir: u64) -> FsResult<()> {
        let key = ns.key(dir).ok_or(Errno(libc::ENOENT))?;
        let now = Timestamp::now();
        self.engine
            .update_meta(&key, |m| {
                m.mtime = now;
                m.ctime = now;
            })
            .await?;
        Ok(())
    }

    /// Adds a new name to a directory and its entry to the index.
    async fn make_node(
        &self,
        parent: u64,
        name: &str,
        mut meta: Meta,
        caller: Caller,
    ) -> FsResult<Attr> {
        self.writable()?;
        check_name(name)?;
        let mut ns = self.ns.lock().await;
        let dir_key = ns.key(parent).ok_or(Errno(libc::ENOENT))?;
        let dir_meta = self.meta_at(&dir_key).await?.meta;
        if dir_meta.kind != FileKind::Dir {
            return err(libc::ENOTDIR);
        }
        if ns.get(parent).is_some_and(|n| n.unlinked) {
            return err(libc::ENOENT);
        }
        if ns.child(parent, name).is_some() {
            return err(libc::EEXIST);
        }
        meta.uid = caller.uid;
        meta.gid = caller.gid;
        // BSD group semantics on a set-group-id directory.
        if dir_meta.mode & libc::S_ISGID != 0 {
            meta.gid = dir_meta.gid;
            if meta.kind == FileKind::Dir {
                meta.mode |= libc::S_ISGID;
            }
        }
        let kind = meta.kind;
        self.engine
            .install(&join(&dir_key, name), Entry::empty(meta))
            .await?;
        let ino = ns.insert(parent, name, kind);
        self.touch_dir(&ns, parent).await?;
        let attr = self.attr_of(&ns, ino).await?;
        ns.told_kernel(ino);
        Ok(attr)
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let mut meta = Meta::file();
        meta.kind = FileKind::Dir;
        meta.mode = mode & 0o7777;
        self.make_node(parent, name, meta, caller).await
    }

    /// Creates a regular file, FIFO, socket or device node.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let mut meta = Meta::file();
        meta.kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return err(libc::EINVAL),
        };
        if matches!(meta.kind, FileKind::CharDevice | FileKind::BlockDevice) {
            meta.rdev = rdev;
        }
        meta.mode = mode & 0o7777;
        self.make_node(parent, name, meta, caller).await
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &[u8],
        caller: Caller,
    ) -> FsResult<Attr> {
        if target.len() > 4095 {
            return err(libc::ENAMETOOLONG);
        }
        let mut meta = Meta::file();
        meta.kind = FileKind::Symlink;
        meta.mode = 0o777;
        meta.symlink_target = Some(target.to_vec());
        self.make_node(parent, name, meta, caller).await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let ns = self.ns.lock().await;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let meta = self.meta_at(&key).await?.meta;
        meta.symlink_target.ok_or(Errno(libc::EINVAL))
    }

    /// Creates and opens a file (O_CREAT); O_EXCL is the kernel's: it looks the name up first.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        let attr = self
            .mknod(parent, name, (mode & 0o7777) | libc::S_IFREG, 0, caller)
            .await?;
        match self.open(attr.ino, flags).await {
            Ok(fh) => Ok((attr, fh)),
            Err(e) => {
                self.forget(attr.ino, 1).await;
                Err(e)
            }
        }
    }

    /// Takes a name out of the tree and the index. A file left without names but still open
    /// keeps its data (under an orphan key, or its inode key) until its last handle closes.
    async fn remove_name(&self, ns: &mut Namespace, parent: u64, name: &str) -> FsResult<()> {
        let ino = ns.child(parent, name).ok_or(Errno(libc::ENOENT))?;
        let name_key = ns.name_key(parent, name).ok_or(Errno(libc::ENOENT))?;
        let node = ns.get(ino).ok_or(Errno(libc::ENOENT))?;
        if node.link.is_none() {
            if node.handles > 0 {
                self.engine.rename(&name_key, &orphan_key(ino)).await?;
            } else {
                self.engine.remove(&name_key).await?;
            }
            ns.detach(parent, name);
            return Ok(());
        }
        // One name of a file with several: the file goes with its last name.
        let file_key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        self.engine.remove(&name_key).await?;
        let has_names = ns.detach(parent, name) == Some(true);
        if has_names {
            let now = Timestamp::now();
            self.engine
                .update_meta(&file_key, |m| m.ctime = now)
                .await?;
        } else if ns.get(ino).is_none() {
            self.engine.remove(&file_key).await?;
        }
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let mut ns = self.ns.lock().await;
        let ino = ns.child(parent, name).ok_or(Errno(libc::ENOENT))?;
        if ns.get(ino).is_some_and(|n| n.kind == FileKind::Dir) {
            return err(libc::EISDIR);
        }
        self.remove_name(&mut ns, parent, name).await?;
        self.touch_dir(&ns, parent).await
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        if name == "." {
            return err(libc::EINVAL);
        }
        let mut ns = self.ns.lock().await;
        let ino = ns.child(parent, name).ok_or(Errno(libc::ENOENT))?;
        let node = ns.get(ino).expect("child exists");
        if node.kind != FileKind::Dir {
            return err(libc::ENOTDIR);
        }
        if !node.children.is_empty() {
            return err(libc::ENOTEMPTY);
        }
        self.remove_name(&mut ns, parent, name).await?;
        self.touch_dir(&ns, parent).await
    }

    /// Renames a file or a whole directory; only index keys move, no data pad is written.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: u32,
    ) -> FsResult<()> {
        self.writable()?;
        check_name(new_name)?;
        if flags & libc::RENAME_WHITEOUT != 0 {
            return err(libc::EINVAL);
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return err(libc::EINVAL);
            }
            return self.exchange(parent, name, new_parent, new_name).await;
        }
        let mut ns = self.ns.lock().await;
        let ino = ns.child(parent, name).ok_or(Errno(libc::ENOENT))?;
        if ns.get(new_parent).map(|n| n.kind) != Some(FileKind::Dir) {
            return err(libc::ENOTDIR);
        }
        let is_dir = ns.get(ino).unwrap().kind == FileKind::Dir;
        if is_dir && ns.is_within(new_parent, ino) {
            return err(libc::EINVAL);
        }
        if let Some(target) = ns.child(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return err(libc::EEXIST);
            }
            let target_node = ns.get(target).unwrap();
            match (is_dir, target_node.kind == FileKind::Dir) {
                (true, false) => return err(libc::ENOTDIR),
                (false, true) => return err(libc::EISDIR),
                (true, true) if !target_node.children.is_empty() => return err(libc::ENOTEMPTY),
                _ => {}
            }
            self.remove_name(&mut ns, new_parent, new_name).await?;
        }
        let new_key = ns
            .name_key(new_parent, new_name)
            .ok_or(Errno(libc::ENOENT))?;
        let old_key = ns.name_key(parent, name).ok_or(Errno(libc::ENOENT))?;
        let moves = key_moves(&ns, ino, &old_key, &new_key);
        self.engine.rename_many(&moves).await?;
        ns.move_name(parent, name, new_parent, new_name);
        let now = Timestamp::now();
        let file_key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        self.engine
            .update_meta(&file_key, |m| m.ctime = now)
            .await?;
        self.touch_dir(&ns, parent).await?;
        if new_parent != parent {
            self.touch_dir(&ns, new_parent).await?;
        }
        Ok(())
    }

    /// Swaps two names, each with everything under it, as one change (`RENAME_EXCHANGE`: an
    /// atomic replace that keeps the old version, `mv --exchange`).
    async fn exchange(
        &self,
        parent: u64,
        name: &str,
        other_parent: u64,
        other_name: &str,
    ) -> FsResult<()> {
        let mut ns = self.ns.lock().await;
        let a = ns.child(parent, name).ok_or(Errno(libc::ENOENT))?;
        let b = (ns.child(other_parent, other_name)).ok_or(Errno(libc::ENOENT))?;
        if a == b {
            return Ok(());
        }
        let is_dir = |ino| ns.get(ino).is_some_and(|n| n.kind == FileKind::Dir);
        // Neither may land inside itself.
        if (is_dir(a) && ns.is_within(other_parent, a)) || (is_dir(b) && ns.is_within(parent, b)) {
            return err(libc::EINVAL);
        }
        let a_key = ns.name_key(parent, name).ok_or(Errno(libc::ENOENT))?;
        let b_key = (ns.name_key(other_parent, other_name)).ok_or(Errno(libc::ENOENT))?;
        // One change: a rename takes every source out before it puts any back.
        let mut moves = key_moves(&ns, a, &a_key, &b_key);
        moves.extend(key_moves(&ns, b, &b_key, &a_key));
        self.engine.rename_many(&moves).await?;
        ns.exchange(parent, name, other_parent, other_name);
        let now = Timestamp::now();
        for ino in [a, b] {
            let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
            self.engine.update_meta(&key, |m| m.ctime = now).await?;
        }
        self.touch_dir(&ns, parent).await?;
        if other_parent != parent {
            self.touch_dir(&ns, other_parent).await?;
        }
        Ok(())
    }

    /// Gives a file another name (a hard link). The first time, the file moves under an
    /// inode key and its name becomes one of its names; no data pad is written.
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> FsResult<Attr> {
        self.writable()?;
        check_name(new_name)?;
        let mut ns = self.ns.lock().await;
        let node = ns.get(ino).ok_or(Errno(libc::ENOENT))?;
        if node.kind == FileKind::Dir {
            return err(libc::EPERM);
        }
        if node.unlinked {
            return err(libc::ENOENT);
        }
        if node.nlink() >= LINK_MAX {
            return err(libc::EMLINK);
        }
        match ns.get(new_parent) {
            None => return err(libc::ENOENT),
            Some(dir) if dir.kind != FileKind::Dir => return err(libc::ENOTDIR),
            Some(dir) if dir.unlinked => return err(libc::ENOENT),
            Some(_) => {}
        }
        if ns.child(new_parent, new_name).is_some() {
            return err(libc::EEXIST);
        }
        let id = match ns.get(ino).and_then(|n| n.link) {
            Some(id) => id,
            None => {
                // The file's number, so that it keeps it at the next mount (namespace.rs).
                let mut candidates =
                    std::iter::once(ino).chain(std::iter::repeat_with(rand::random::<u64>));
                let id = loop {
                    let id = candidates.next().expect("endless");
                    if self.engine.entry_meta(&inode_key(id)).await.is_none() {
                        break id;
                    }
                };
                let path = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
                self.engine.make_linkable(&path, id).await?;
                ns.set_link(ino, id);
                id
            }
        };
        let new_key = ns
            .name_key(new_parent, new_name)
            .ok_or(Errno(libc::ENOENT))?;
        self.engine.install(&new_key, Entry::link_to(id)).await?;
        ns.add_name(ino, new_parent, new_name);
        let now = Timestamp::now();
        self.engine
            .update_meta(&inode_key(id), |m| m.ctime = now)
            .await?;
        self.touch_dir(&ns, new_parent).await?;
        let attr = self.attr_of(&ns, ino).await?;
        ns.told_kernel(ino);
        Ok(attr)
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        self.writable()?;
        if let Some(size) = set.size {
            if size > MAX_FILE_SIZE {
                return err(libc::EFBIG);
            }
            let open = self.open_state(ino).await?;
            let result = open.truncate(&self.engine, size, self.deadline()).await;
            let committed = match result {
                Ok(()) => self.commit_file(ino).await,
                Err(e) => Err(e.into()),
            };
            self.close_state(ino).await;
            committed?;
        }
        let ns = self.ns.lock().await;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let now = Timestamp::now();
        let resolve = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        let node = ns.get(ino).ok_or(Errno(libc::ENOENT))?;
        if set.mtime.is_some() {
            // An explicit time wins over the time of earlier writes.
            if let Some(open) = &node.open {
                open.attrs.lock().unwrap().written_at = None;
            }
        }
        let changes_meta = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if changes_meta {
            self.engine
                .update_meta(&key, |m| {
                    if let Some(mode) = set.mode {
                        m.mode = mode & 0o7777;
                    }
                    if let Some(uid) = set.uid {
                        m.uid = uid;
                    }
                    if let Some(gid) = set.gid {
                        m.gid = gid;
                    }
                    if let Some(t) = set.atime {
                        m.atime = resolve(t);
                    }
                    if let Some(t) = set.mtime {
                        m.mtime = resolve(t);
                    }
                    m.ctime = now;
                })
                .await?;
        }
        self.attr_of(&ns, ino).await
    }

    /// The shared open state of a regular file, counted as one more handle.
    async fn open_state(&self, ino: u64) -> FsResult<Arc<OpenFile>> {
        let mut ns = self.ns.lock().await;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let node = ns.get(ino).ok_or(Errno(libc::ENOENT))?;
        match node.kind {
            FileKind::Dir => return err(libc::EISDIR),
            FileKind::Symlink => return err(libc::ELOOP),
            FileKind::File => {}
            _ => return err(libc::ENXIO),
        }
        let open = match &node.open {
            Some(open) => open.clone(),
            None => {
                let opened_at = std::time::Instant::now();
                let entry = self.engine.entry(&key).await.ok_or(Errno(libc::ENOENT))?;
                Arc::new(OpenFile::new(
                    &entry,
                    self.engine.chunk_size(),
                    self.budget.clone(),
                    opened_at,
                ))
            }
        };
        let node = ns.get_mut(ino).unwrap();
        node.open = Some(open.clone());
        node.handles += 1;
        Ok(open)
    }

    /// Drops one handle; the last one frees the open state, and the data of an unlinked file.
    async fn close_state(&self, ino: u64) {
        let mut ns = self.ns.lock().await;
        let Some(node) = ns.get_mut(ino) else { return };
        node.handles = node.handles.saturating_sub(1);
        if node.handles > 0 {
            return;
        }
        let open = node.open.take();
        if node.unlinked {
            let key = ns.key(ino).unwrap_or_else(|| orphan_key(ino));
            if let Err(e) = self.engine.remove(&key).await {
                tracing::warn!("dropping unlinked file {ino}: {e}");
            }
            ns.forget_if_unused(ino);
        }
        // The file's data lock is taken with the namespace released: a commit of this file
        // holds the data lock while it uploads, then takes the namespace to install.
        drop(ns);
        // Pads of a file that is gone, or whose last commit failed (a store that timed out),
        // were never installed: they go back, those still uploading once they are done.
        if let Some(open) = open {
            let uploaded = open.data.lock().await.take_uploaded(&self.engine);
            self.engine.discard_chunks(&uploaded).await;
        }
    }

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let accmode = flags & libc::O_ACCMODE;
        if accmode != libc::O_RDONLY {
            self.writable()?;
        }
        let open = self.open_state(ino).await?;
        if flags & libc::O_TRUNC != 0 && accmode != libc::O_RDONLY {
            if let Err(e) = open.truncate(&self.engine, 0, self.deadline()).await {
                self.close_state(ino).await;
                return Err(e.into());
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                ino,
                append: flags & libc::O_APPEND != 0,
            },
        );
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> FsResult<(u64, bool)> {
        let handles = self.handles.lock().unwrap();
        let h = handles.get(&fh).ok_or(Errno(libc::EBADF))?;
        Ok((h.ino, h.append))
    }

    async fn open_of(&self, ino: u64) -> FsResult<Arc<OpenFile>> {
        let ns = self.ns.lock().await;
        ns.get(ino)
            .and_then(|n| n.open.clone())
            .ok_or(Errno(libc::EBADF))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (ino, _) = self.handle(fh)?;
        let open = self.open_of(ino).await?;
        // A read leaves nothing half done when dropped: the fetches it waits for go on.
        match tokio::time::timeout(
            self.cfg.timeout,
            open.read(&self.engine, offset, size as usize),
        )
        .await
        {
            Ok(read) => Ok(read?),
            Err(_) => {
                tracing::warn!(
                    "the store did not deliver within {:?}: a read fails with ETIMEDOUT",
                    self.cfg.timeout
                );
                err(libc::ETIMEDOUT)
            }
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable()?;
        let (ino, append) = self.handle(fh)?;
        let open = self.open_of(ino).await?;
        let offset = if append { open.size() } else { offset };
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > MAX_FILE_SIZE)
        {
            return err(libc::EFBIG);
        }
        let written = open
            .write(
                &self.engine,
                offset,
                data,
                self.cfg.write_buffer_bytes,
                self.deadline(),
            )
            .await?;
        Ok(written as u32)
    }

    /// `fallocate(2)`. Space is not reserved ahead (the store has no such notion), so plain
    /// allocation only extends the file, sparsely, unless `FALLOC_FL_KEEP_SIZE` is given;
    /// `PUNCH_HOLE` and `ZERO_RANGE` make the range read as zeros and free the pads of the
    /// chunks it covers whole. `COLLAPSE_RANGE`, `INSERT_RANGE` and the rest are
    /// `EOPNOTSUPP`, as on file systems without them.
    pub async fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let zeroes = match mode {
            0 | KEEP_SIZE => false,
            PUNCH_HOLE => true,
            _ if mode & !KEEP_SIZE == ZERO_RANGE => true,
            _ => return err(libc::EOPNOTSUPP),
        };
        self.writable()?;
        let (ino, _) = self.handle(fh)?;
        if len == 0 {
            return err(libc::EINVAL);
        }
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(Errno(libc::EFBIG))?;
        let open = self.open_of(ino).await?;
        let keep_size = mode & KEEP_SIZE != 0;
        if zeroes {
            open.zero_range(&self.engine, offset, end, keep_size, self.deadline())
                .await?;
        } else if !keep_size && end > open.size() {
            open.truncate(&self.engine, end, self.deadline()).await?;
        }
        Ok(())
    }

    /// Where the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) starts at or after `offset`
    /// ([`OpenFile::seek`]: a hole is a chunk without data or the part of a chunk past what it
    /// holds; the end of the file counts as one).
    pub async fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let (ino, _) = self.handle(fh)?;
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return err(libc::EINVAL),
        };
        let offset = u64::try_from(offset).or(Err(Errno(libc::EINVAL)))?;
        let open = self.open_of(ino).await?;
        match open.seek(offset, data, self.deadline()).await? {
            Some(found) => Ok(found as i64),
            None => err(libc::ENXIO),
        }
    }

    /// Uploads a file's changes and installs them in the index, so that `close()` reports a
    /// failure; with a journal, the index commit follows in the background.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (ino, _) = self.handle(fh)?;
        self.commit_file(ino).await
    }

    /// Saves the file's changes where they survive a crash of the machine: on a store on
    /// this disk the journal beside it, synced (the commit follows within a second, as for
    /// any change); over a network, a commit the network holds.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, _) = self.handle(fh)?;
        let deadline = self.deadline();
        self.commit_file_by(ino, deadline).await?;
        if self.engine.durable_by_journal() {
            return Ok(self.engine.sync_journal().await?);
        }
        self.commit_by(deadline).await?;
        self.flush_by(deadline).await
    }

    /// `fsync` of a directory: the names changed in it (every change so far) survive a
    /// crash of the machine, as [`fsync`](Self::fsync) says.
    pub async fn fsync_dir(&self) -> FsResult<()> {
        if self.engine.durable_by_journal() {
            return Ok(self.engine.sync_journal().await?);
        }
        self.sync_and_flush().await
    }

    /// [`sync_all`](Self::sync_all), then waits until the store holds it where it promises to
    /// (uploaded, over a tiered store): `fsync` of a directory, `mutant-mount sync`.
    pub async fn sync_and_flush(&self) -> FsResult<()> {
        self.sync_all().await?;
        self.engine.flush_store().await?;
        Ok(())
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let (ino, _) = self.handle(fh)?;
        let result = self.commit_file(ino).await;
        if let Err(e) = result {
            tracing::error!(
                "could not save inode {ino} at its last close: errno {}",
                e.0
            );
        }
        self.handles.lock().unwrap().remove(&fh);
        self.close_state(ino).await;
        result
    }

    /// Uploads the changed chunks of an open file and installs its new entry; commits too
    /// unless the engine journals changes.
    async fn commit_file(&self, ino: u64) -> FsResult<()> {
        self.commit_file_by(ino, self.deadline()).await
    }

    async fn commit_file_by(&self, ino: u64, deadline: tokio::time::Instant) -> FsResult<()> {
        let Some(open) = self.ns.lock().await.get(ino).and_then(|n| n.open.clone()) else {
            return Ok(());
        };
        let Some((mut data, chunks, size)) = open.prepare_commit(&self.engine, deadline).await?
        else {
            return Ok(());
        };
        {
            // Taken before the namespace: waiting for a commit's packs to be written holds
            // back this file alone, never every other operation.
            let permit = self.engine.install_permit(&chunks).await;
            let ns = self.ns.lock().await;
            let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
            let mut meta = self.meta_at(&key).await?.meta;
            let pending = open.pending();
            if let Some(t) = pending.written_at {
                meta.mtime = t;
                meta.ctime = t;
            }
            let entry = Entry {
                chunks: chunks.clone(),
                size,
                meta,
                link: None,
            };
            self.engine.install_with(&key, entry, permit).await?;
            data.committed(chunks);
            open.attrs.lock().unwrap().written_at = None;
        }
        drop(data);
        // A journaled change survives a crash of this process; the committer writes it to
        // the store within `commit_interval`, together with its neighbours.
        if !self.engine.is_journaled() {
            self.commit_by(deadline).await?;
        }
        Ok(())
    }

    /// Up to `max` entries of a directory from position `offset` on (`.` and `..` first, then
    /// the names in order), each with the position of the entry after it, for a reader that
    /// lists a directory over several calls.
    pub async fn readdir(
        &self,
        ino: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<(u64, DirEntry)>> {
        let ns = self.ns.lock().await;
        let entries = dir_entries(&ns, ino, offset, max)?.collect();
        Ok(entries)
    }

    /// [`readdir`](Self::readdir) with each entry's attributes, as `getattr` gives them: what
    /// lets `ls -l` list a directory without a lookup per name.
    pub async fn readdir_plus(
        &self,
        ino: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<(u64, String, Attr)>> {
        let mut ns = self.ns.lock().await;
        let mut out = Vec::new();
        for (next, entry) in dir_entries(&ns, ino, offset, max)? {
            out.push((next, entry.name, self.attr_of(&ns, entry.ino).await?));
        }
        // The kernel counts a lookup for every entry but `.` and `..`; the caller forgets
        // those it could not send.
        for (_, name, attr) in &out {
            if name != "." && name != ".." {
                ns.told_kernel(attr.ino);
            }
        }
        Ok(out)
    }

    pub async fn statfs(&self) -> FsResult<StatFs> {
        let stats = self.engine.stats().await;
        let bsize = 4096u64;
        let used = stats.data_bytes.div_ceil(bsize);
        // Used: the bytes of our files. Free: what the disk under the store has left, or for
        // a store with no such bound, a large round figure.
        let free = match &self.cfg.space_probe {
            Some(dir) => crate::engine::available_bytes(dir).map_or(0, |avail| avail / bsize),
            None => 1 << 40,
        };
        Ok(StatFs {
            blocks: used + free,
            bfree: free,
            files: stats.keys as u64 + 1_000_000,
            ffree: 1_000_000,
            bsize: bsize as u32,
            namelen: NAME_MAX as u32,
        })
    }

    async fn meta_of(&self, ino: u64) -> FsResult<(String, Meta)> {
        let ns = self.ns.lock().await;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let meta = self.meta_at(&key).await?.meta;
        Ok((key, meta))
    }

    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let (_, meta) = self.meta_of(ino).await?;
        meta.xattrs.get(name).cloned().ok_or(Errno(libc::ENODATA))
    }

    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (_, meta) = self.meta_of(ino).await?;
        let mut out = Vec::new();
        for name in meta.xattrs.keys() {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        self.writable()?;
        if name.is_empty() || name.len() > 255 {
            return err(libc::ERANGE);
        }
        // POSIX ACLs (system.posix_acl_*) are not supported: storing them as plain bytes
        // would make cp and rsync believe permissions were set when they were not. A name
        // outside the namespaces Linux knows is refused as by a local file system.
        let known = [&b"user."[..], b"trusted.", b"security."];
        if !known.iter().any(|ns| name.starts_with(ns)) {
            return err(libc::EOPNOTSUPP);
        }
        if value.len() > 64 * 1024 {
            return err(libc::E2BIG);
        }
        let ns = self.ns.lock().await;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let meta = self.meta_at(&key).await?.meta;
        let exists = meta.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return err(libc::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return err(libc::ENODATA);
        }
        // A file's attributes live in its index entry, which must fit in a pad beside its
        // chunk list: out of attribute space, as ext4 says when its block is full.
        let others: usize = (meta.xattrs.iter())
            .filter(|(n, _)| n.as_slice() != name)
            .map(|(n, v)| n.len() + v.len())
            .sum();
        if others + name.len() + value.len() > XATTR_SPACE {
            return err(libc::ENOSPC);
        }
        let now = Timestamp::now();
        self.engine
            .update_meta(&key, |m| {
                m.xattrs.insert(name.to_vec(), value.to_vec());
                m.ctime = now;
            })
            .await?;
        Ok(())
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let ns = self.ns.lock().await;
        let key = ns.key(ino).ok_or(Errno(libc::ENOENT))?;
        let mut missing = false;
        let now = Timestamp::now();
        self.engine
            .update_meta(&key, |m| {
                missing = m.xattrs.remove(name).is_none();
                if !missing {
                    m.ctime = now;
                }
            })
            .await?;
        if missing {
            return err(libc::ENODATA);
        }
        Ok(())
    }
}

/// One name in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileKind,
    pub name: String,
}

/// The entries of directory `ino` after directory offset `offset`, at most `max`, each with
/// the offset to resume after it: `.` and `..` at 1 and 2, then each name at its cookie, which
/// stays valid whatever is added or removed meanwhile.
fn dir_entries<'a>(
    ns: &'a Namespace,
    ino: u64,
    offset: u64,
    max: usize,
) -> FsResult<impl Iterator<Item = (u64, DirEntry)> + 'a> {
    let node = ns.get(ino).ok_or(Errno(libc::ENOENT))?;
    if node.kind != FileKind::Dir {
        return err(libc::ENOTDIR);
    }
    let dots = [(1, ".", ino), (2, "..", node.parent.max(ROOT_INO))]
        .into_iter()
        .filter(move |&(at, _, _)| at > offset);
    let names = node.children.after(offset.max(FIRST_COOKIE - 1));
    Ok(dots.chain(names).take(max).map(|(next, name, ino)| {
        let entry = DirEntry {
            ino,
            kind: ns.get(ino).map_or(FileKind::File, |n| n.kind),
            name: name.to_string(),
        };
        (next, entry)
    }))
}
