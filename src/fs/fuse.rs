//! The thin fuser adapter: each request becomes one call on the core, run to completion on the
//! tokio runtime, and its result or errno goes back to the kernel.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::Instrument;

use super::core::{Attr, Caller, Errno, FsCore, SetAttr, SetTime};
use crate::index::names;
use crate::index::{FileKind, Timestamp};

/// How long the kernel may cache attributes and names. Every change goes through this mount,
/// so the kernel's view only goes stale if the store is changed from elsewhere.
const TTL: Duration = Duration::from_secs(1);
/// Entries the core lists per READDIR: more than the kernel's reply buffer (a page) holds;
/// the rest are listed again by the next call.
const READDIR_BATCH: usize = 256;
/// The same for READDIRPLUS, whose entries carry attributes (about 25 fit a page).
const READDIRPLUS_BATCH: usize = 64;

pub struct FuseAdapter {
    core: Arc<FsCore>,
    rt: Handle,
}

impl FuseAdapter {
    pub fn new(core: Arc<FsCore>, rt: Handle) -> Self {
        FuseAdapter { core, rt }
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn name_str(name: &OsStr) -> Result<Cow<'_, str>, Errno> {
    Ok(names::to_key_name(name.as_bytes()))
}

/// A name from the index as the kernel's bytes. The index holds only names the mount made
/// with [`names::to_key_name`], so every name has bytes.
fn kernel_name(name: &str) -> Cow<'_, OsStr> {
    match names::from_key_name(name) {
        Some(Cow::Owned(bytes)) => Cow::Owned(OsString::from_vec(bytes)),
        _ => Cow::Borrowed(OsStr::new(name)),
    }
}

fn to_system_time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(t.nanos as u64)
    }
}

fn from_system_time(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn to_fuse(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.stored.div_ceil(512),
        atime: to_system_time(attr.atime),
        mtime: to_system_time(attr.mtime),
        ctime: to_system_time(attr.ctime),
        crtime: to_system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: attr.perm as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(from_system_time(t)),
    }
}

impl FuseAdapter {
    /// Runs one request's call on the core, inside a debug-level span that names the
    /// operation and the inode or handle it is about, so every log line the call makes is
    /// attributed to its request.
    fn run<T>(
        &self,
        op: &'static str,
        node: Option<u64>,
        f: impl std::future::Future<Output = Result<T, Errno>>,
    ) -> Result<T, Errno> {
        let span = tracing::debug_span!("fuse", op, node);
        let result = self.rt.block_on(f.instrument(span.clone()));
        if let Err(e) = &result {
            span.in_scope(|| tracing::debug!(errno = e.0, "failed"));
        }
        result
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<Attr, Errno>) {
        match result {
            Ok(attr) => reply.entry(&TTL, &to_fuse(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // One request per 1 MiB write. Read-ahead stays at the kernel's offer (128 KiB): INIT
        // can only lower it. Raising it through sysfs (root only) made 1 MiB requests but no
        // measurable difference to sequential reads, which are bound by pad decryption.
        let _ = config.set_max_write(crate::buffers::MAX_REQUEST as u32);
        // Not FUSE_ATOMIC_O_TRUNC: with it the kernel empties its cached pages of a file
        // opened O_RDONLY|O_TRUNC before it checks whether the file is being executed, so the
        // running program dies of SIGBUS and the open then succeeds instead of ETXTBSY.
        // Without it an O_TRUNC open of an existing file is an open and a truncating setattr,
        // after that check.
        let _ = config.add_capabilities(InitFlags::FUSE_BIG_WRITES | InitFlags::FUSE_MAX_PAGES);
        // Directory listings carry each entry's attributes (READDIRPLUS), so `ls -l` and file
        // managers need no lookup per name; the kernel falls back to plain READDIR where
        // only names are read.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = name_str(name)
            .and_then(|name| self.run("lookup", Some(parent.0), self.core.lookup(parent.0, &name)));
        self.reply_entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run("getattr", Some(ino.0), self.core.getattr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &to_fuse(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        match self.run("setattr", Some(ino.0), self.core.setattr(ino.0, set)) {
            Ok(attr) => reply.attr(&TTL, &to_fuse(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run("readlink", Some(ino.0), self.core.readlink(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
        let result = name_str(name).and_then(|name| {
            self.run(
                "mknod",
                Some(parent.0),
                self.core.mknod(parent.0, &name, mode, rdev, caller(req)),
            )
        });
        self.reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = name_str(name).and_then(|name| {
            self.run(
                "mkdir",
                Some(parent.0),
                self.core.mkdir(parent.0, &name, mode & !umask, caller(req)),
            )
        });
        self.reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = name_str(name)
            .and_then(|name| self.run("unlink", Some(parent.0), self.core.unlink(parent.0, &name)));
        reply_empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = name_str(name)
            .and_then(|name| self.run("rmdir", Some(parent.0), self.core.rmdir(parent.0, &name)));
        reply_empty(reply, result);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = name_str(link_name).and_then(|name| {
            self.run(
                "symlink",
                Some(parent.0),
                self.core
                    .symlink(parent.0, &name, target.as_os_str().as_bytes(), caller(req)),
            )
        });
        self.reply_entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = name_str(name).and_then(|name| {
            let newname = name_str(newname)?;
            self.run(
                "rename",
                Some(parent.0),
                self.core
                    .rename(parent.0, &name, newparent.0, &newname, flags.bits()),
            )
        });
        reply_empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = name_str(newname).and_then(|name| {
            self.run(
                "link",
                Some(ino.0),
                self.core.link(ino.0, newparent.0, &name),
            )
        });
        self.reply_entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.run("open", Some(ino.0), self.core.open(ino.0, flags.0)) {
            // Every change to a file's bytes passes through this mount, so what the kernel
            // cached for an earlier open is still right: a warm read is a page-cache hit
            // rather than a decrypted pad.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run("read", Some(fh.0), self.core.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A write may wait for room in the memory budget, which other files' writes make by
        // finishing their chunks. It waits in a task, not on one of the few FUSE threads, so
        // that those writes are still served (all threads waiting would wait for ever).
        let (core, data) = (self.core.clone(), crate::buffers::copy_request(data));
        let span = tracing::debug_span!("fuse", op = "write", node = fh.0);
        let request = async move {
            let written = core.write(fh.0, offset, &data).await;
            crate::buffers::give_back_request(data);
            match written {
                Ok(n) => reply.written(n),
                Err(e) => {
                    tracing::debug!(errno = e.0, "failed");
                    reply.error(errno(e))
                }
            }
        };
        self.rt.spawn(request.instrument(span));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.run("flush", Some(fh.0), self.core.flush(fh.0)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.run("release", Some(fh.0), self.core.release(fh.0)),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.run("fsync", Some(fh.0), self.core.fsync(fh.0)));
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the other kinds itself), so that `cp`,
    /// `tar --sparse` and backup tools skip holes rather than read them as zeros.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.run("lseek", Some(fh.0), self.core.lseek(fh.0, offset, whence)) {
            Ok(offset) => reply.offset(offset),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.run(
            "readdir",
            Some(ino.0),
            self.core.readdir(ino.0, offset, READDIR_BATCH),
        ) {
            Ok(entries) => {
                for (next, entry) in entries {
                    if reply.add(
                        INodeNo(entry.ino),
                        next,
                        file_type(entry.kind),
                        kernel_name(&entry.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.run(
            "readdirplus",
            Some(ino.0),
            self.core.readdir_plus(ino.0, offset, READDIRPLUS_BATCH),
        ) {
            Ok(entries) => {
                let mut entries = entries.into_iter();
                for (next, name, attr) in entries.by_ref() {
                    let full = reply.add(
                        INodeNo(attr.ino),
                        next,
                        kernel_name(&name),
                        &TTL,
                        &to_fuse(&attr),
                        Generation(0),
                    );
                    if full {
                        // Not sent, nor those after it: the kernel holds no lookup of them.
                        let unsent =
                            std::iter::once((name, attr)).chain(entries.map(|e| (e.1, e.2)));
                        let forget = unsent
                            .filter(|(name, _)| name != "." && name != "..")
                            .map(|(_, attr)| self.core.forget(attr.ino, 1));
                        self.rt.block_on(futures::future::join_all(forget));
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// The kernel dropped `nlookup` of its lookups of `ino` ([`FsCore::forget`]). The core
    /// counts a lookup before the reply naming it is sent, so its count never falls below the
    /// kernel's and a number is not given again while the kernel holds it.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.rt.block_on(self.core.forget(ino.0, nlookup));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.run("fsyncdir", Some(ino.0), self.core.fsync_dir()),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run("statfs", None, self.core.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.run(
            "setxattr",
            Some(ino.0),
            self.core.setxattr(ino.0, name.as_bytes(), value, flags),
        );
        reply_empty(reply, result);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(
            reply,
            size,
            self.run(
                "getxattr",
                Some(ino.0),
                self.core.getxattr(ino.0, name.as_bytes()),
            ),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(
            reply,
            size,
            self.run("listxattr", Some(ino.0), self.core.listxattr(ino.0)),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.run(
                "removexattr",
                Some(ino.0),
                self.core.removexattr(ino.0, name.as_bytes()),
            ),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = name_str(name).and_then(|name| {
            self.run(
                "create",
                Some(parent.0),
                self.core
                    .create(parent.0, &name, mode & !umask, flags, caller(req)),
            )
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &to_fuse(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.run(
                "fallocate",
                Some(fh.0),
                self.core.fallocate(fh.0, offset, length, mode),
            ),
        );
    }

    /// No ioctl is supported. Programs probe with them routinely (terminal checks,
    /// FS_IOC_GETFLAGS from `lsattr` and file managers), so the answer is the usual ENOTTY,
    /// logged only at debug level.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        tracing::debug!(
            op = "ioctl",
            node = ino.0,
            cmd = format_args!("{cmd:#x}"),
            "not supported"
        );
        reply.error(fuser::Errno::from_i32(libc::ENOTTY));
    }
}

/// Answers a size query (size 0) or the value, or ERANGE if the caller's buffer is too small.
fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => {
            reply.error(fuser::Errno::from_i32(libc::ERANGE))
        }
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(errno(e)),
    }
}
