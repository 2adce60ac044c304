//! The filesystem: a root directory holding one regular file whose bytes
//! are the device's. Every answer comes from the device; nothing is cached
//! here (the kernel's page cache does that, and only for a read-only disk).

use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use synth::{BlockDev, ErrorKind, ExtentKind, ExtentList, ZeroFlags};

/// The file's inode (the root directory is [`INodeNo::ROOT`], 1).
pub(crate) const FILE: INodeNo = INodeNo(2);

/// Largest read or write the kernel is offered (`max_write`, and through
/// `max_pages` the largest read): 1 MiB, the kernel's default cap on
/// `max_pages` (256 pages, fs/fuse/inode.c `fuse_max_pages_limit`).
pub const MAX_IO: u32 = 1 << 20;

/// Largest request served at all. The kernel never sends more than
/// `max_pages` pages (≤ [`MAX_IO`] unless the module's limit was raised);
/// this bounds the buffer a request can make us allocate even then. A
/// larger request is refused (EINVAL) rather than answered short: a short
/// read of a page-cache file reads as zeros to the caller, a wrong byte.
const MAX_REQUEST: u64 = 32 << 20;

/// How long the kernel may cache names and attributes: the size and the
/// single name never change while mounted.
const TTL: Duration = Duration::from_secs(3600);

/// `lseek(2)` whence values for holes (Linux `include/uapi/linux/fs.h`).
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;

/// `fallocate(2)` mode bits (Linux `include/uapi/linux/falloc.h`).
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// How many `extents` calls the allocated-size estimate (`st_blocks`) may
/// make at mount time before it counts the rest as data.
const BLOCKS_CALLS: usize = 64;

/// Answers a request that returns nothing: OK, or the error's errno (the
/// kernel passes on only the number, so the error is logged, named by
/// `what`).
fn answer(reply: ReplyEmpty, result: synth::Result<()>, what: impl FnOnce() -> String) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => {
            log::warn!("{}: {e:#}", what());
            reply.error(errno_of(&e));
        }
    }
}

/// The errno a device error becomes.
pub fn errno_of(e: &synth::Error) -> Errno {
    match e.kind() {
        ErrorKind::NoSpace => Errno::ENOSPC,
        ErrorKind::ReadOnly => Errno::EROFS,
        ErrorKind::Unsupported | ErrorKind::NotFast => Errno::EOPNOTSUPP,
        ErrorKind::InvalidInput | ErrorKind::OutOfBounds => Errno::EINVAL,
        ErrorKind::Refused => Errno::EPERM,
        // Io, Corrupt, and kinds added later: the bytes could not be had.
        _ => Errno::EIO,
    }
}

/// The one-file filesystem over a device.
#[derive(Debug)]
pub(crate) struct DiskFs {
    dev: Arc<dyn BlockDev>,
    size: u64,
    name: OsString,
    writable: bool,
    /// Open with `FOPEN_DIRECT_IO` (see `Options::uncached`).
    uncached: bool,
    uid: u32,
    gid: u32,
    /// The file's times: when it was mounted.
    time: SystemTime,
    /// Allocated 512-byte blocks, estimated at mount (`st_blocks`).
    blocks: u64,
    /// The device's smallest addressable unit and largest request.
    minimum: u64,
    maximum: u64,
    /// Writes not aligned to `minimum` read, patch and write whole units:
    /// they hold this exclusively, aligned writes share it, so a
    /// read-modify-write never loses a concurrent write to the same unit.
    rmw: RwLock<()>,
    /// Written since the last flush: a `close` then flushes the device.
    dirty: AtomicBool,
}

impl DiskFs {
    pub(crate) fn new(
        dev: Arc<dyn BlockDev>,
        name: OsString,
        writable: bool,
        uncached: bool,
    ) -> Self {
        let size = dev.size();
        let bs = dev.block_size();
        let minimum = u64::from(bs.minimum.max(1));
        // A chunk is a whole number of units, at least one.
        let maximum = (u64::from(bs.maximum).max(minimum) / minimum) * minimum;
        let blocks = allocated_bytes(&*dev, size).div_ceil(512);
        DiskFs {
            dev,
            size,
            name,
            writable,
            uncached,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            time: SystemTime::now(),
            blocks,
            minimum,
            maximum,
            rmw: RwLock::new(()),
            dirty: AtomicBool::new(false),
        }
    }

    fn dir_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file_attr(&self) -> FileAttr {
        FileAttr {
            ino: FILE,
            size: self.size,
            blocks: self.blocks,
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind: FileType::RegularFile,
            perm: if self.writable { 0o644 } else { 0o444 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Fill `buf` from `offset` (inside the device), in chunks the device
    /// takes, through an aligned bounce buffer when `offset` or the length
    /// is not a multiple of the device's unit.
    pub(crate) fn read_exact(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        let len = buf.len() as u64;
        let m = self.minimum;
        if offset.is_multiple_of(m) && (len.is_multiple_of(m) || offset + len == self.size) {
            let mut done = 0usize;
            while done < buf.len() {
                let n = (buf.len() - done).min(self.maximum as usize);
                self.dev
                    .read_at(&mut buf[done..done + n], offset + done as u64)?;
                done += n;
            }
            return Ok(());
        }
        let start = offset - offset % m;
        let end = (offset + len).div_ceil(m).saturating_mul(m).min(self.size);
        let mut bounce = vec![0u8; (end - start) as usize];
        self.read_exact(&mut bounce, start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
        Ok(())
    }

    /// Write all of `data` at `offset` (inside the device).
    pub(crate) fn write_exact(&self, data: &[u8], offset: u64) -> synth::Result<()> {
        let len = data.len() as u64;
        let m = self.minimum;
        if offset.is_multiple_of(m) && (len.is_multiple_of(m) || offset + len == self.size) {
            let _shared = self.rmw.read().unwrap_or_else(|p| p.into_inner());
            let mut done = 0usize;
            while done < data.len() {
                let n = (data.len() - done).min(self.maximum as usize);
                self.dev
                    .write_at(&data[done..done + n], offset + done as u64)?;
                done += n;
            }
            return Ok(());
        }
        let _alone = self.rmw.write().unwrap_or_else(|p| p.into_inner());
        let start = offset - offset % m;
        let end = (offset + len).div_ceil(m).saturating_mul(m).min(self.size);
        let mut bounce = vec![0u8; (end - start) as usize];
        self.read_exact(&mut bounce, start)?;
        let skip = (offset - start) as usize;
        bounce[skip..skip + data.len()].copy_from_slice(data);
        let mut done = 0usize;
        while done < bounce.len() {
            let n = (bounce.len() - done).min(self.maximum as usize);
            self.dev
                .write_at(&bounce[done..done + n], start + done as u64)?;
            done += n;
        }
        Ok(())
    }

    /// `lseek(SEEK_DATA / SEEK_HOLE)` from `offset`: the first byte at or
    /// after it that may hold data (`hole == false`) or reads as zeros
    /// (`hole == true`), from the device's extents. Zero extents count as
    /// holes (they read as zeros, which is all SEEK_HOLE promises; lseek(2)).
    /// Past the end: ENXIO; no data after `offset`: ENXIO; no hole: the
    /// size (the implicit hole at the end). A device that cannot describe a
    /// range is answered as data there (always safe: a reader copies it).
    pub(crate) fn seek(&self, offset: u64, hole: bool) -> Result<u64, Errno> {
        if offset >= self.size {
            return Err(Errno::ENXIO);
        }
        let mut pos = offset;
        let mut list = ExtentList::new(pos);
        while pos < self.size {
            list.reset(pos, ExtentList::DEFAULT_LIMIT);
            if let Err(e) = self.dev.extents(pos, self.size - pos, &mut list) {
                log::warn!("extents at {pos}: {e:#}; answering lseek as data there");
                return Ok(if hole { self.size } else { pos });
            }
            if list.covered() == 0 {
                return Ok(if hole { self.size } else { pos });
            }
            for (at, e) in list.iter_offsets() {
                if at >= self.size {
                    break;
                }
                if (e.kind == ExtentKind::Data) != hole {
                    return Ok(at.max(offset));
                }
            }
            pos = list.end();
        }
        if hole {
            Ok(self.size)
        } else {
            Err(Errno::ENXIO)
        }
    }

    fn flush_if_dirty(&self) -> synth::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.dev.flush() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

thread_local! {
    /// Each request loop's read buffer, reused: a fresh 1 MiB buffer per
    /// request would be zeroed (or page-faulted in) every time.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on a buffer of `len` bytes (contents unspecified: the caller
/// fills all of it): this thread's reused one up to [`MAX_IO`], a
/// temporary one beyond (never kept, so one odd request does not pin
/// memory).
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    if len > MAX_IO as usize {
        return f(&mut vec![0u8; len]);
    }
    READ_BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        // Never nested; if it were, a temporary buffer is still right.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// Bytes the device stores data for, from its extents (`st_blocks`, which
/// `du` shows and `cp --sparse=auto` uses to decide whether to look for
/// holes). At most [`BLOCKS_CALLS`] calls: whatever is left counts as data.
fn allocated_bytes(dev: &dyn BlockDev, size: u64) -> u64 {
    let mut pos = 0;
    let mut data = 0;
    let mut list = ExtentList::new(0);
    for _ in 0..BLOCKS_CALLS {
        if pos >= size {
            return data;
        }
        list.reset(pos, ExtentList::DEFAULT_LIMIT);
        if dev.extents(pos, size - pos, &mut list).is_err() || list.covered() == 0 {
            break;
        }
        for (at, e) in list.iter_offsets() {
            if e.kind == ExtentKind::Data && at < size {
                data += e.len.min(size - at);
            }
        }
        pos = list.end();
    }
    data + size.saturating_sub(pos)
}

impl Filesystem for DiskFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB writes (and through max_pages, reads); a kernel that takes
        // less keeps its own limit.
        let _ = config.set_max_write(MAX_IO);
        // Readahead as large as the kernel allows, up to a request.
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Direct I/O of one large request split into several FUSE requests
        // that run in parallel; big writes are asked for by fuser already.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == self.name {
            reply.entry(&TTL, &self.file_attr(), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT => reply.attr(&TTL, &self.dir_attr()),
            FILE => reply.attr(&TTL, &self.file_attr()),
            _ => reply.error(Errno::ENOENT),
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
        let attr = match ino {
            INodeNo::ROOT => self.dir_attr(),
            FILE => self.file_attr(),
            _ => return reply.error(Errno::ENOENT),
        };
        // The disk's size is fixed (a truncate, an O_TRUNC open), and so are
        // its owner and mode; setting the times changes nothing and is
        // accepted, as `touch` and `cp -p` expect.
        if size.is_some_and(|s| s != attr.size) || mode.is_some() || uid.is_some() || gid.is_some()
        {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    // The directory holds the disk and nothing else: no new names, and the
    // disk's own cannot go (EPERM, "not permitted", rather than fuser's
    // ENOSYS, "not implemented").
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
        reply.error(Errno::EPERM);
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
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        let writes = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        if writes && !self.writable {
            return reply.error(Errno::EROFS);
        }
        // A read-only disk never changes under the page cache: keep it
        // across opens. A writable one changes only through this mount,
        // whose writes the cache sees, unless another exporter writes it
        // too: then no cache at all. Direct writes may run in parallel (the
        // device takes concurrent writes).
        let f = if self.uncached {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else if self.writable {
            FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(0), f);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        // At or past the end: nothing, as for a file; across it: short.
        if offset >= self.size {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(self.size - offset);
        if len > MAX_REQUEST {
            return reply.error(Errno::EINVAL);
        }
        with_buffer(len as usize, |buf| match self.read_exact(buf, offset) {
            Ok(()) => reply.data(buf),
            Err(e) => {
                log::warn!("read of {len} bytes at {offset}: {e:#}");
                reply.error(errno_of(&e));
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        // The file cannot grow: past its end is a full disk, as on a
        // block device; a write across the end is short.
        if offset >= self.size {
            return reply.error(Errno::ENOSPC);
        }
        let n = (data.len() as u64).min(self.size - offset) as usize;
        self.dirty.store(true, Ordering::Release);
        match self.write_exact(&data[..n], offset) {
            Ok(()) => reply.written(n as u32),
            Err(e) => {
                log::warn!("write of {n} bytes at {offset}: {e:#}");
                reply.error(errno_of(&e));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // On every close(): only when something was written since, so that
        // readers' closes cost nothing.
        answer(reply, self.flush_if_dirty(), || "flush".into());
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if !self.writable {
            return reply.ok();
        }
        self.dirty.store(false, Ordering::Release);
        let result = self.dev.flush();
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        answer(reply, result, || "fsync".into());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (FILE, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            // The offset given is the next entry's index.
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    // No extended attributes. ENOSYS (rather than ENODATA) makes the
    // kernel stop asking (fs/fuse/xattr.c `no_getxattr`), e.g. for
    // `security.capability` before every write; answered here only to keep
    // fuser from logging each as "not implemented".
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // A regular file has no block-device ioctls (BLKGETSIZE64, BLKSSZGET...,
    // which e2fsck and mkfs probe): ENOTTY, as for a file on any other
    // filesystem, and the tools use stat and lseek instead.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(self.size.div_ceil(4096), 0, 0, 2, 0, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            // The file cannot grow.
            return reply.error(Errno::EFBIG);
        }
        let flags = match mode {
            // Allocate: every byte of the disk is there already.
            0 | FALLOC_FL_KEEP_SIZE => return reply.ok(),
            // Punch a hole (a loop device's discard, fstrim): reads zeros
            // after, so zeroing that may deallocate, never a plain trim.
            m if m == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE => ZeroFlags {
                may_trim: true,
                fast: false,
            },
            m if m & !FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE => ZeroFlags::default(),
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        self.dirty.store(true, Ordering::Release);
        answer(reply, self.dev.write_zeroes(offset, length, flags), || {
            format!("fallocate({mode:#x}) of {length} bytes at {offset}")
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if ino != FILE {
            return reply.error(Errno::EINVAL);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        // SEEK_SET/CUR/END never reach us (the kernel answers them).
        let answer = match whence {
            SEEK_DATA => self.seek(offset, false),
            SEEK_HOLE => self.seek(offset, true),
            _ => Err(Errno::EINVAL),
        };
        match answer.and_then(|o| i64::try_from(o).map_err(|_| Errno::EOVERFLOW)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }
}
