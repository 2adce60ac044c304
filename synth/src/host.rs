//! Host files that a generator maps into an image, opened lazily through a
//! bounded pool of file descriptors.
//!
//! A directory with 100,000 files must not need 100,000 open descriptors, and
//! start-up must not open anything (it costs `stat` calls only). So a
//! [`HostFile`] is just a path plus the size and mtime seen at scan time; its
//! descriptor is opened on first read and kept in a [`FilePool`], an LRU with
//! a fixed capacity. An evicted descriptor that a request is still using (for
//! `sendfile`, say) stays open until that request drops its `Arc`.
//!
//! Every time a file is handed out its `fstat` is compared with what the scan
//! saw: a file that changed size or mtime since start-up fails with
//! [`ErrorKind::Io`](crate::ErrorKind) naming the file, so a client gets `EIO`
//! and never a mix of old layout and new bytes. (A write racing with a read
//! cannot be caught this way; nothing short of a snapshot can.)

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// pop, not a scan (`-o` of 100,000 files misses on every file).
    by_use: BTreeMap<u64, u64>,
    tick: u64,
    opens: u64,
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
        {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some((file, used)) = st.open.get_mut(&host.id) {
                let (file, old) = (file.clone(), std::mem::replace(used, tick));
                st.by_use.remove(&old);
                st.by_use.insert(tick, host.id);
                return Ok(file);
            }
        }
        // Open outside the lock: a slow filesystem must not stall every
        // other file's reads.
        let file = Arc::new(
            File::open(&host.path)
                .map_err(|e| Error::io(format!("opening host file {}", host.path.display()), e))?,
        );
        let mut st = self.lock();
        st.opens += 1;
        if st.open.len() >= self.capacity {
            // Evict the least recently used. A linear scan is fine: it runs
            // only on a miss, which costs an open(2) anyway, and the pool is
            // a few hundred entries.
            if let Some(&victim) = st
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id)
            {
                st.open.remove(&victim);
            }
        }
        st.tick += 1;
        let tick = st.tick;
        let file = st.open.entry(host.id).or_insert((file, tick)).0.clone();
        Ok(file)
    }
}

/// A regular host file mapped into an image: its path and the size and
/// mtime it had when the layout was computed.
#[derive(Debug)]
pub struct HostFile {
    id: u64,
    path: PathBuf,
    size: u64,
    mtime: (i64, i64),
    pool: Arc<FilePool>,
}

impl HostFile {
    /// A host file expected to keep `size` bytes and the mtime
    /// (`seconds`, `nanoseconds`) it had at scan time.
    pub fn new(pool: &Arc<FilePool>, path: PathBuf, size: u64, mtime: (i64, i64)) -> Arc<HostFile> {
        Arc::new(HostFile {
            id: pool.next_id.fetch_add(1, Ordering::Relaxed),
            path,
            size,
            mtime,
            pool: pool.clone(),
        })
    }

    /// The host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size the layout was computed for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The open file, after checking it still has the size and mtime the
    /// layout was computed for.
    pub fn open(&self) -> Result<Arc<File>> {
        let file = self.pool.get(self)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("checking host file {}", self.path.display()), e))?;
        let mtime = (meta.mtime(), meta.mtime_nsec());
        if meta.len() != self.size || mtime != self.mtime {
            return Err(self.changed(format!(
                "size {} -> {}, mtime {}.{:09} -> {}.{:09}",
                self.size,
                meta.len(),
                self.mtime.0,
                self.mtime.1,
                mtime.0,
                mtime.1
            )));
        }
        Ok(file)
    }

    /// The error for a file that no longer matches the layout.
    pub fn changed(&self, what: String) -> Error {
        Error::io(
            format!(
                "host file {} changed after start-up ({what}); refusing to serve mixed data",
                self.path.display()
            ),
            std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::{Backing, BlockDev, ErrorKind, RegionMapBuilder};

    fn host(pool: &Arc<FilePool>, dir: &Path, name: &str, data: &[u8]) -> Arc<HostFile> {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        HostFile::new(pool, path, m.len(), (m.mtime(), m.mtime_nsec()))
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
}
