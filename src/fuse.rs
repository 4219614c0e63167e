//! The fuser adapter, and nothing else: each handler calls the mount's `Tree` (one vault's
//! `SecretFs`, or several), then replies.
//!
//! Errors are logged here, once, at the level they carry, and warnings at most once per cause
//! per interval (`log_limit`): a reader repeating a failing call cannot grow the log. Every
//! write-type operation answers EROFS (the mount is read-only too, so the kernel usually
//! answers it first).
//!
//! Without an audit log, opens are zero-message (ENOSYS once, then the kernel stops sending
//! OPEN and RELEASE). With one, every open must reach kvfs to be recorded, so OPEN is answered
//! with a handle and `FOPEN_KEEP_CACHE`: reads still come from the page cache, but each
//! open and close costs a round trip. So with `--allow-root`: fuser enforces that ACL itself
//! (the kernel knows only allow_other) and refuses other users' OPEN, but a zero-message open
//! sends none, and another user could read pages root's read left in the cache.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::audit::{AuditLog, Caller};
use tokio::runtime::Handle;

use crate::forest::Tree;
use crate::fs::{Entries, Entry, FsError, FsResult, Invalidate, Opened, ReadData};

pub struct FuseAdapter {
    fs: Arc<Tree>,
    audit: Option<Arc<AuditLog>>,
    /// Every OPEN must reach kvfs (auditing, or fuser's allow_root check): no zero-message open.
    every_open: bool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Tree>) -> Self {
        Self {
            fs,
            audit: None,
            every_open: false,
        }
    }

    /// Records every successful open in `audit` (which turns zero-message open off).
    pub fn with_audit(mut self, audit: Option<AuditLog>) -> Self {
        self.every_open |= audit.is_some();
        self.audit = audit.map(Arc::new);
        self
    }

    /// Turns zero-message open off, so that fuser checks the caller of every open
    /// (`SessionACL::RootAndOwner` is enforced by fuser, not by the kernel).
    pub fn with_every_open(mut self, every_open: bool) -> Self {
        self.every_open |= every_open;
        self
    }
}

/// Invalidations through the kernel session. A name the kernel does not hold answers ENOENT,
/// which is not a failure.
pub struct KernelInvalidator(pub Notifier);

impl Invalidate for KernelInvalidator {
    fn entry(&self, parent: u64, name: &str) {
        if let Err(e) = self.0.inval_entry(INodeNo(parent), OsStr::new(name))
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(name, error = %e, "kernel entry invalidation failed");
        }
    }

    fn data(&self, ino: u64) {
        // Offset 0, length 0: every cached page and the attributes.
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(ino, error = %e, "kernel data invalidation failed");
        }
    }

    fn attributes(&self, ino: u64) {
        // A negative offset invalidates the attributes only (there are no cached pages: the
        // in-place mode reads with direct I/O).
        if let Err(e) = self.0.inval_inode(INodeNo(ino), -1, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(ino, error = %e, "kernel attribute invalidation failed");
        }
    }
}

/// A write-type request: counted, and refused (the filesystem is read-only).
fn refused(op: &'static str) -> Errno {
    crate::metrics::fuse_request(op);
    crate::metrics::fuse_error(op, libc::EROFS);
    Errno::EROFS
}

/// The one place a filesystem error becomes an errno: logged and counted here.
fn errno(op: &'static str, ino: u64, err: &FsError) -> Errno {
    crate::metrics::fuse_error(op, err.errno());
    if err.is_routine() {
        tracing::debug!(op, ino, error = %err, "request failed");
    } else if let Some(suppressed) = crate::log_limit::allow(&format!("{op}: {err}")) {
        tracing::warn!(op, ino, error = %err, suppressed, "request failed");
    }
    Errno::from_i32(err.errno())
}

fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

/// Runs `call` to its answer: at once, on this FUSE thread, when it completes at its first
/// poll (everything kvfs holds in memory), else as a task on the runtime, so that a request
/// waiting on Key Vault never holds a FUSE thread nor delays answers about other secrets.
fn answer<T: Send + 'static>(
    runtime: &Handle,
    call: impl Future<Output = T> + Send + 'static,
    reply: impl FnOnce(T) + Send + 'static,
) {
    // Timers and the store's I/O need the runtime's context even for a first poll.
    let _context = runtime.enter();
    let mut call = Box::pin(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => reply(out),
        // Polled again at once by the task, with a waker that wakes it.
        Poll::Pending => drop(runtime.spawn(async move { reply(call.await) })),
    }
}

fn reply_entry(fs: &Tree, parent: u64, result: FsResult<Entry>, reply: ReplyEntry) {
    match result {
        Ok(e) => reply.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &e.attr, Generation(0)),
        Err(err) => match fs.negative_ttl(parent, &err) {
            // Inode 0 with a TTL is a negative entry the kernel caches; a plain ENOENT would
            // bring every retry of the name back here.
            Some(ttl) => {
                errno("lookup", parent, &err);
                match fs.getattr(parent) {
                    Ok((mut attr, _)) => {
                        attr.ino = INodeNo(0);
                        reply.entry_with_ttls(&ttl, &ttl, &attr, Generation(0));
                    }
                    Err(e) => reply.error(errno("lookup", parent, &e)),
                }
            }
            _ => reply.error(errno("lookup", parent, &err)),
        },
    }
}

fn reply_open(
    result: FsResult<Opened>,
    audit: Option<(&AuditLog, Caller)>,
    every_open: bool,
    ino: u64,
    reply: ReplyOpen,
) {
    let opened = match result {
        Ok(opened) => opened,
        Err(err) => return reply.error(errno("open", ino, &err)),
    };
    if let Some((log, caller)) = audit {
        log.record(caller, opened.name.as_str(), opened.version.as_deref());
    }
    match (opened.handle, every_open) {
        // Zero-message open: ENOSYS makes the kernel stop sending OPEN and RELEASE for the
        // mount's life and keep each inode's pages across opens. Correct only because an inode
        // is one version whose content never changes (new-inode rotation). Never when every
        // open must be seen: the kernel would stop sending them.
        (None, false) => reply.error(Errno::ENOSYS),
        // Every open seen, new-inode rotation: no handle to keep, and KEEP_CACHE keeps the
        // inode's pages across opens for the same reason as above, so reads stay message-free.
        (None, true) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
        // In-place rotation: the handle pins a version; direct I/O keeps the page cache (shared
        // by all handles of the inode) out of the way.
        (Some(handle), _) => reply.opened(FileHandle(handle), FopenFlags::FOPEN_DIRECT_IO),
    }
}

fn reply_read(result: FsResult<ReadData>, ino: u64, reply: ReplyData) {
    match result {
        Ok(data) => reply.data(data.as_bytes()),
        Err(err) => reply.error(errno("read", ino, &err)),
    }
}

fn reply_readdir(result: FsResult<(Entries, usize)>, ino: u64, mut reply: ReplyDirectory) {
    match result {
        Ok((entries, start)) => {
            for e in entries.get(start..).unwrap_or_default() {
                if reply.add(INodeNo(e.ino), e.next_offset, e.kind, &e.name) {
                    break;
                }
            }
            reply.ok();
        }
        Err(err) => reply.error(errno("readdir", ino, &err)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Nothing is ever written; a small maximum keeps the relay's buffer small (the kernel
        // refuses a read of the device into a buffer smaller than max_write).
        let _ = config.set_max_write(crate::handoff::relay::MAX_WRITE);
        // Without it the kernel serialises lookups in a directory: one lookup waiting on Key
        // Vault would hold up every other, cached or not.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS) {
            tracing::warn!(
                ?missing,
                "the kernel cannot run lookups in parallel: a slow secret delays lookups of others"
            );
        }
        Ok(())
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        crate::metrics::fuse_request("ioctl");
        // Not a terminal, nor anything else an ioctl could ask about. Silent: Python's open()
        // sends one per file.
        reply.error(Errno::ENOTTY);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        crate::metrics::fuse_request("lookup");
        let (fs, name) = (self.fs.clone(), name.to_owned());
        answer(
            self.fs.runtime(),
            async move {
                let result = fs.lookup(parent.0, &name).await;
                (fs, result)
            },
            move |(fs, result)| reply_entry(&fs, parent.0, result, reply),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        crate::metrics::fuse_request("forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        crate::metrics::fuse_request("getattr");
        match self.fs.getattr(ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(err) => reply.error(errno("getattr", ino.0, &err)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let caller = Caller {
            pid: req.pid(),
            uid: req.uid(),
            gid: req.gid(),
        };
        crate::metrics::fuse_request("open");
        let (fs, audit, every) = (self.fs.clone(), self.audit.clone(), self.every_open);
        // In place, an open pins the value, which may have to be fetched again first.
        answer(
            self.fs.runtime(),
            async move { fs.open(ino.0).await },
            move |result| {
                let audit = audit.as_deref().map(|a| (a, caller));
                reply_open(result, audit, every, ino.0, reply);
            },
        );
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
        crate::metrics::fuse_request("release");
        self.fs.release(fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        crate::metrics::fuse_request("read");
        let fs = self.fs.clone();
        // An evicted value is fetched again by version: then off the FUSE threads.
        answer(
            self.fs.runtime(),
            async move { fs.read(ino.0, fh.0, offset, size).await },
            move |result| reply_read(result, ino.0, reply),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        crate::metrics::fuse_request("flush");
        // Nothing is ever written. ENOSYS (not "ok") makes the kernel stop sending FLUSH on
        // every close: answering it cost a round trip per close, ~8x on cached reads.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        crate::metrics::fuse_request("opendir");
        let fs = self.fs.clone();
        // An opendir may list the vault (when the cached listing expired).
        answer(
            self.fs.runtime(),
            async move { fs.opendir(ino.0).await },
            move |result| match result {
                // The kernel caches the entries (CACHE_DIR) and, while the listing is unchanged,
                // keeps them across opens (KEEP_CACHE): `ls` then costs no READDIR message.
                Ok(keep) => {
                    let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                    if keep {
                        flags |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(0), flags);
                }
                Err(err) => reply.error(errno("opendir", ino.0, &err)),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        crate::metrics::fuse_request("readdir");
        let fs = self.fs.clone();
        // A listing may wait on Key Vault, as a lookup may.
        answer(
            self.fs.runtime(),
            async move { fs.readdir(ino.0, offset).await },
            move |result| reply_readdir(result, ino.0, reply),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::metrics::fuse_request("getxattr");
        match self.fs.getxattr(ino.0, name) {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(err) => reply.error(errno("getxattr", ino.0, &err)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::metrics::fuse_request("listxattr");
        match self.fs.listxattr(ino.0) {
            Ok(names) => xattr_reply(reply, size, &names),
            Err(err) => reply.error(errno("listxattr", ino.0, &err)),
        }
    }

    // Everything below would change the vault: the filesystem is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(refused("setattr"));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refused("mknod"));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refused("mkdir"));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(refused("unlink"));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(refused("rmdir"));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(refused("symlink"));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(refused("rename"));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(refused("link"));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(refused("write"));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(refused("create"));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(refused("setxattr"));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(refused("removexattr"));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(refused("fallocate"));
    }
}
