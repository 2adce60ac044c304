//! Host files that a generator maps into an image, opened lazily through a
//! bounded pool of file descriptors.
//!
//! A directory with 100,000 files must not need 100,000 open descriptors, and
//! start-up must not open anything (it costs `stat` calls only). So a
//! [`HostFile`] is just a path plus the identity the scan saw
//! ([`ScannedFile`]: device, inode, size, mtime, change time); its descriptor is opened on
//! first read and kept in a [`FilePool`], an LRU with a fixed capacity. An
//! evicted descriptor that a request is still using (for `sendfile`, say)
//! stays open until that request drops its `Arc`.
//!
//! The tree belongs to someone else, who may change it while we serve it. So
//! a host file is opened with `O_NONBLOCK` (a FIFO swapped in cannot hang the
//! reading thread in `open(2)`), `O_NOCTTY`, and `O_NOFOLLOW` unless the scan
//! followed a symlink at that very path (a symlink swapped in is not
//! followed to `/etc/shadow`). The open descriptor must then be a regular
//! file with the scan's device, inode, size and mtime, or nothing is read
//! from it: the read fails with [`ErrorKind::Io`](crate::ErrorKind) naming
//! the file, so a client gets `EIO` and never someone else's bytes, nor a mix
//! of old layout and new bytes. Size and mtime are checked again every time
//! the descriptor is handed out. (A write racing with a read cannot be caught
//! this way; nothing short of a snapshot can. A file shrinking mid-read is
//! caught by the reader, which gets fewer bytes than the layout promised.)

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{Mode, OFlags};

use crate::{Error, Result};

/// Descriptors a pool keeps open when the caller does not say.
pub const DEFAULT_POOL_FDS: usize = 512;

/// A bounded LRU of open host files, shared by all [`HostFile`]s of a
/// generator (and by all connections).
#[derive(Debug)]
pub struct FilePool {
    capacity: usize,
    next_id: AtomicU64,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Open files by `HostFile` id, with the tick of their last use.
    open: HashMap<u64, (Arc<File>, u64)>,
    /// The same entries by last-use tick, oldest first: eviction is a
    /// pop, not a scan (`-o` of 100,000 files misses on every file). It
    /// holds exactly one entry per open file.
    by_use: BTreeMap<u64, u64>,
    tick: u64,
    opens: u64,
}

impl PoolState {
    /// Mark `id` (open) as used now.
    fn touch(&mut self, id: u64) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.open.get_mut(&id)?;
        let (file, old) = (file.clone(), std::mem::replace(used, tick));
        self.by_use.remove(&old);
        self.by_use.insert(tick, id);
        Some(file)
    }
}

impl FilePool {
    /// A pool keeping at most `capacity` descriptors open; 0 means
    /// [`DEFAULT_POOL_FDS`].
    pub fn new(capacity: usize) -> Arc<FilePool> {
        Arc::new(FilePool {
            capacity: if capacity == 0 {
                DEFAULT_POOL_FDS
            } else {
                capacity
            },
            next_id: AtomicU64::new(0),
            state: Mutex::new(PoolState::default()),
        })
    }

    /// Descriptors currently held open by the pool.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Entries of the use index (always [`FilePool::open_count`]; for tests).
    pub fn index_len(&self) -> usize {
        self.lock().by_use.len()
    }

    /// How many times a file was opened (a miss), for tests and stats.
    pub fn opens(&self) -> u64 {
        self.lock().opens
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is a cache; a panic mid-update leaves at worst an entry
        // too many, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, host: &HostFile) -> Result<Arc<File>> {
        if let Some(file) = self.lock().touch(host.id) {
            return Ok(file);
        }
        // Open and check outside the lock: a slow filesystem must not stall
        // every other file's reads.
        let file = Arc::new(host.open_checked()?);
        let mut st = self.lock();
        st.opens += 1;
        if let Some(file) = st.touch(host.id) {
            // Another thread opened it meanwhile; ours closes on drop.
            return Ok(file);
        }
        while st.open.len() >= self.capacity {
            let Some((_, victim)) = st.by_use.pop_first() else {
                break;
            };
            st.open.remove(&victim);
        }
        st.tick += 1;
        let tick = st.tick;
        st.open.insert(host.id, (file.clone(), tick));
        st.by_use.insert(tick, host.id);
        Ok(file)
    }
}

/// What the scan saw of a host file: what it must still be when served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedFile {
    /// Device of the inode (`st_dev`).
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status change time (seconds, nanoseconds): anyone can put size and
    /// mtime back (`touch -r`), nobody can put the change time back, so a
    /// file rewritten in place after the scan (holes found by `SEEK_DATA`
    /// moved, bytes changed) is caught too. A `chmod` or a new hard link
    /// counts as a change as well: such a file is refused rather than
    /// trusted.
    pub ctime: (i64, i64),
    /// The path's last component is a symlink the scan followed (the
    /// fields above are its target's); otherwise it is opened with
    /// `O_NOFOLLOW`.
    pub follow_link: bool,
}

/// What a host file looked like just before a read. A file truncated and
/// restored, or rewritten in place, while the read ran may hand the reader
/// zeros or a mix of old and new bytes with a full count; its change time
/// moved meanwhile (or its size or mtime did), so comparing the stamp after
/// the read tells a torn read from a good one. (Linux 6.13+ gives the change
/// time fine-grained resolution once it has been looked at, so a change in
/// the same clock tick is seen too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The check a reader of a host file runs after reading: see [`FileStamp`].
#[derive(Debug, Clone)]
pub struct ReadCheck {
    host: Arc<HostFile>,
    stamp: FileStamp,
}

impl ReadCheck {
    /// `Ok` if `file` (as handed out with this check) did not change since
    /// the check was made; otherwise the bytes read from it must not be
    /// used: an `Io` error naming the file.
    pub fn verify(&self, file: &File) -> Result<()> {
        let meta = file.metadata().map_err(|e| {
            Error::io(
                format!("checking host file {}", self.host.path.display()),
                e,
            )
        })?;
        let now = FileStamp::of(&meta);
        if now == self.stamp {
            return Ok(());
        }
        Err(self
            .host
            .changed("it changed while it was being read".to_string()))
    }

    /// The host file checked.
    pub fn host(&self) -> &HostFile {
        &self.host
    }
}

/// A regular host file mapped into an image: its path and what the scan
/// saw of it.
#[derive(Debug)]
pub struct HostFile {
    id: u64,
    path: PathBuf,
    scanned: ScannedFile,
    pool: Arc<FilePool>,
}

impl HostFile {
    /// A host file expected to be, whenever it is read, the very file the
    /// scan saw.
    pub fn new(pool: &Arc<FilePool>, path: PathBuf, scanned: ScannedFile) -> Arc<HostFile> {
        Arc::new(HostFile {
            id: pool.next_id.fetch_add(1, Ordering::Relaxed),
            path,
            scanned,
            pool: pool.clone(),
        })
    }

    /// The host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size the layout was computed for.
    pub fn size(&self) -> u64 {
        self.scanned.size
    }

    /// The open file, after checking it still has the size and mtime the
    /// layout was computed for (its device and inode were checked when it
    /// was opened).
    pub fn open(&self) -> Result<Arc<File>> {
        Ok(self.open_stamped()?.0)
    }

    /// [`HostFile::open`], and a [`ReadCheck`] to run once the bytes have
    /// been read: they count only if the file did not change meanwhile.
    pub fn open_for_read(self: &Arc<Self>) -> Result<(Arc<File>, ReadCheck)> {
        let (file, stamp) = self.open_stamped()?;
        Ok((
            file,
            ReadCheck {
                host: self.clone(),
                stamp,
            },
        ))
    }

    fn open_stamped(&self) -> Result<(Arc<File>, FileStamp)> {
        let file = self.pool.get(self)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("checking host file {}", self.path.display()), e))?;
        self.check_size_mtime(&meta)?;
        Ok((file, FileStamp::of(&meta)))
    }

    /// Open the path without side effects a swapped-in file could cause,
    /// and check it is the file the scan saw.
    fn open_checked(&self) -> Result<File> {
        let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if !self.scanned.follow_link {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = rustix::fs::open(&self.path, flags, Mode::empty()).map_err(|e| {
            if e == rustix::io::Errno::LOOP && !self.scanned.follow_link {
                self.changed("it is now a symbolic link".into())
            } else {
                Error::io(
                    format!("opening host file {}", self.path.display()),
                    std::io::Error::from(e),
                )
            }
        })?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("checking host file {}", self.path.display()), e))?;
        if !meta.file_type().is_file() {
            return Err(self.changed("it is no longer a regular file".into()));
        }
        if (meta.dev(), meta.ino()) != (self.scanned.dev, self.scanned.ino) {
            return Err(self.changed(format!(
                "device/inode {}/{} -> {}/{}: another file took its place",
                self.scanned.dev,
                self.scanned.ino,
                meta.dev(),
                meta.ino()
            )));
        }
        self.check_size_mtime(&meta)?;
        Ok(file)
    }

    fn check_size_mtime(&self, meta: &std::fs::Metadata) -> Result<()> {
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let ctime = (meta.ctime(), meta.ctime_nsec());
        if meta.len() != self.scanned.size || mtime != self.scanned.mtime {
            return Err(self.changed(format!(
                "size {} -> {}, mtime {}.{:09} -> {}.{:09}",
                self.scanned.size,
                meta.len(),
                self.scanned.mtime.0,
                self.scanned.mtime.1,
                mtime.0,
                mtime.1
            )));
        }
        if ctime != self.scanned.ctime {
            return Err(self.changed(format!(
                "change time {}.{:09} -> {}.{:09}: modified, or its size and mtime put back",
                self.scanned.ctime.0, self.scanned.ctime.1, ctime.0, ctime.1
            )));
        }
        Ok(())
    }

    /// The error for a file that no longer matches the layout.
    pub fn changed(&self, what: String) -> Error {
        Error::io(
            format!(
                "host file {} changed after start-up ({what}); refusing to serve it",
                self.path.display()
            ),
            std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;
    use crate::{Backing, BlockDev, ErrorKind, RegionMapBuilder};

    fn host(pool: &Arc<FilePool>, dir: &Path, name: &str, data: &[u8]) -> Arc<HostFile> {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        HostFile::new(pool, path, scanned(&m))
    }

    fn scanned(m: &std::fs::Metadata) -> ScannedFile {
        ScannedFile {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            follow_link: false,
        }
    }

    #[test]
    fn pool_never_holds_more_than_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(3);
        let files: Vec<_> = (0..10)
            .map(|i| host(&pool, dir.path(), &format!("f{i}"), &[i as u8; 100]))
            .collect();
        let mut b = RegionMapBuilder::new();
        for (i, f) in files.iter().enumerate() {
            b.push(
                &format!("f{i}"),
                100,
                Backing::Host {
                    file: f.clone(),
                    offset: 0,
                },
            )
            .unwrap();
        }
        let map = b.finish();
        let mut buf = vec![0u8; 1000];
        for _ in 0..3 {
            map.read_at(&mut buf, 0).unwrap();
            assert!(pool.open_count() <= 3, "{} fds open", pool.open_count());
        }
        for (i, chunk) in buf.chunks(100).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == i as u8),
                "file {i} read wrong bytes"
            );
        }
        assert_eq!(
            pool.opens(),
            30,
            "a 3-slot LRU cycling over 10 files misses every time"
        );
    }

    #[test]
    fn pool_reuses_recently_used_files() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "a", b"hello");
        for _ in 0..100 {
            f.open().unwrap();
        }
        assert_eq!(pool.opens(), 1);
    }

    #[test]
    fn a_file_that_changed_size_fails_with_io_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "grows.bin", &[7u8; 4096]);
        let mut b = RegionMapBuilder::new();
        b.push(
            "grows",
            4096,
            Backing::Host {
                file: f.clone(),
                offset: 0,
            },
        )
        .unwrap();
        let map = b.finish();
        let mut buf = vec![0u8; 4096];
        map.read_at(&mut buf, 0).unwrap();
        std::fs::write(dir.path().join("grows.bin"), [8u8; 5000]).unwrap();
        let err = map.read_at(&mut buf, 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("grows.bin"), "{err}");
        let mut chunks = Vec::new();
        let err = map.read_chunks(0, 4096, &mut chunks).unwrap_err();
        assert!(err.to_string().contains("changed after start-up"), "{err}");
    }

    #[test]
    fn a_missing_file_fails_with_io_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "gone.bin", b"x");
        std::fs::remove_file(dir.path().join("gone.bin")).unwrap();
        let err = f.open().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("gone.bin"), "{err}");
    }

    /// Give `path` the mtime of `m` (as `touch -r` would).
    fn set_mtime_of(path: &Path, m: &std::fs::Metadata) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(m.modified().unwrap())
            .unwrap();
    }

    /// A host file, and a function that swaps something else in at its path
    /// with the same size and mtime (as `touch -r` would).
    fn swap_keeping_times(path: &Path, make: impl FnOnce(&Path)) {
        let m = std::fs::metadata(path).unwrap();
        let side = path.with_extension("old");
        std::fs::rename(path, &side).unwrap();
        make(path);
        let times = std::fs::FileTimes::new()
            .set_modified(m.modified().unwrap())
            .set_accessed(m.accessed().unwrap());
        if std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_file()
        {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_times(times)
                .unwrap();
        }
    }

    fn assert_refused(f: &HostFile, what: &str) {
        let t0 = std::time::Instant::now();
        let err = f.open().unwrap_err();
        assert!(t0.elapsed().as_secs() < 5, "{what}: open hung");
        assert_eq!(err.kind(), ErrorKind::Io, "{what}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&*f.path().to_string_lossy()), "{what}: {msg}");
    }

    #[test]
    fn a_symlink_swapped_in_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let secret = dir.path().join("secret");
        std::fs::write(&secret, [0x5Eu8; 4096]).unwrap();
        let f = host(&pool, dir.path(), "public", &[1u8; 4096]);
        // Same size and mtime as the scanned file.
        let m = std::fs::metadata(f.path()).unwrap();
        set_mtime_of(&secret, &m);
        swap_keeping_times(f.path(), |p| {
            std::os::unix::fs::symlink(&secret, p).unwrap()
        });
        assert_refused(&f, "symlink");
        assert!(f.open().unwrap_err().to_string().contains("symbolic link"));
    }

    #[test]
    fn a_followed_symlink_must_still_lead_to_the_scanned_file() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let target = dir.path().join("target");
        std::fs::write(&target, b"right").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let m = std::fs::metadata(&link).unwrap();
        let scanned = ScannedFile {
            follow_link: true,
            ..scanned(&m)
        };
        let f = HostFile::new(&pool, link.clone(), scanned);
        assert!(f.open().is_ok());
        // Re-pointed at another file of the same size and mtime.
        let other = dir.path().join("other");
        std::fs::write(&other, b"wrong").unwrap();
        set_mtime_of(&other, &m);
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let f = HostFile::new(&pool, link, scanned);
        assert_refused(&f, "re-pointed symlink");
    }

    #[test]
    fn a_fifo_swapped_in_neither_hangs_nor_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "f", &[1u8; 100]);
        swap_keeping_times(f.path(), |p| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap()
        });
        assert_refused(&f, "fifo");
    }

    #[test]
    fn a_device_node_swapped_in_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mknod of a device node needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "f", &[1u8; 100]);
        swap_keeping_times(f.path(), |p| {
            // /dev/zero: reading it would serve zeros as data.
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::CharacterDevice,
                Mode::from_raw_mode(0o644),
                rustix::fs::makedev(1, 5),
            )
            .unwrap()
        });
        assert_refused(&f, "device node");
        assert!(f.open().unwrap_err().to_string().contains("regular file"));
    }

    #[test]
    fn another_file_renamed_over_it_is_refused_even_with_the_same_times() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "f", &[1u8; 100]);
        let m = std::fs::metadata(f.path()).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, [2u8; 100]).unwrap();
        set_mtime_of(&other, &m);
        std::fs::rename(&other, f.path()).unwrap();
        assert_refused(&f, "rename over");
        assert!(f.open().unwrap_err().to_string().contains("inode"));
        // A refused file is not kept in the pool.
        assert_eq!(pool.open_count(), 0);
    }

    #[test]
    fn a_file_rewritten_in_place_with_size_and_mtime_put_back_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let f = host(&pool, dir.path(), "f", &[1u8; 100]);
        let m = std::fs::metadata(f.path()).unwrap();
        // Change time moves on at the kernel's granularity: make sure it can.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let w = std::fs::File::options().write(true).open(f.path()).unwrap();
        w.write_all_at(&[2u8; 100], 0).unwrap();
        w.set_modified(m.modified().unwrap()).unwrap();
        let err = f.open().unwrap_err();
        assert!(err.to_string().contains("change time"), "{err}");
    }

    #[test]
    fn the_use_index_stays_as_small_as_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(3);
        let files: Vec<_> = (0..20)
            .map(|i| host(&pool, dir.path(), &format!("f{i}"), b"x"))
            .collect();
        for round in 0..50 {
            for (i, f) in files.iter().enumerate() {
                if (i + round) % 3 != 0 {
                    f.open().unwrap();
                }
                f.open().unwrap();
            }
            assert!(pool.open_count() <= 3);
            assert_eq!(pool.index_len(), pool.open_count(), "round {round}");
        }
    }
}
