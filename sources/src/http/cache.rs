//! An optional on-disk cache of fetched ranges, kept across runs.
//!
//! Two files per remote file, named by a hash of URL and validator:
//! `HASH.img`, a sparse file of the remote's size holding the fetched
//! chunks at their own offsets, and `HASH.map`, a sidecar with a header
//! (magic, state, chunk size, size, the full URL + validator key) and a
//! bitmap of the chunks present. Chunks (1 MiB) are always fetched whole.
//!
//! Consistency: the sidecar is marked "in use" (and synced) before any
//! chunk is written, and marked "clean" with its bitmap only after the data
//! file is synced on drop. A crash leaves it "in use", and the next open
//! starts from an empty cache: a bit is never trusted for bytes that may not
//! have reached the disk. The key is compared in full, so a hash collision
//! only costs a refetch. The sidecar is `flock`ed: a second process serving
//! the same file runs without the cache rather than share it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{flock, FlockOperation};

use super::readahead::Fill;
use super::HttpError;

/// Cache granularity: fetched and recorded whole.
pub(crate) const CHUNK: u64 = 1 << 20;
/// At most this many missing chunks are fetched by one request (bounded
/// memory: the fetch goes through a buffer before reaching the file).
const MAX_RUN: u64 = 8;
/// Largest file cached: a 16 MiB bitmap.
const MAX_CACHED: u64 = (16 << 20) * 8 * CHUNK;
const MAGIC: &[u8; 8] = b"DSHTTPC1";
const CLEAN: u8 = 0;
const IN_USE: u8 = 1;
/// magic, state + padding, chunk, size, key length.
const HEADER: usize = 8 + 8 + 8 + 8 + 8;

/// The on-disk cache of one device.
#[derive(Debug)]
pub(crate) struct DiskCache {
    data: File,
    map: File,
    data_path: PathBuf,
    key: String,
    size: u64,
    present: Mutex<Vec<u8>>,
    /// Set after the first failed write, so the log gets one warning.
    write_failed: AtomicBool,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl DiskCache {
    /// Open (or create) the cache of the remote file identified by `url` and
    /// `validator` in `dir`.
    pub(crate) fn open(
        dir: &Path,
        url: &str,
        validator: &str,
        size: u64,
    ) -> Result<DiskCache, HttpError> {
        let cache_err = |path: &Path, what: &str, e: io::Error| HttpError::Cache {
            path: path.to_owned(),
            reason: format!("{what}: {e}"),
        };
        // The bitmap lives in memory: a remote file of exabytes (NBD allows
        // up to 8 EiB) would want a terabyte of it.
        if size > MAX_CACHED {
            return Err(HttpError::Cache {
                path: dir.to_owned(),
                reason: format!(
                    "a {size}-byte file is too large to cache (at most {} TiB)",
                    MAX_CACHED >> 40
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| cache_err(dir, "creating the directory", e))?;
        let key = format!("{url}\n{validator}");
        let name = format!("{:016x}", fnv1a64(key.as_bytes()));
        let map_path = dir.join(format!("{name}.map"));
        let data_path = dir.join(format!("{name}.img"));
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| cache_err(p, "opening", e))
        };
        let mut map = open(&map_path)?;
        flock(&map, FlockOperation::NonBlockingLockExclusive).map_err(|e| HttpError::Cache {
            path: map_path.clone(),
            reason: format!("in use by another process ({e})"),
        })?;
        let data = open(&data_path)?;
        let bitmap_len = size.div_ceil(CHUNK).div_ceil(8) as usize;

        let mut old = Vec::new();
        map.read_to_end(&mut old)
            .map_err(|e| cache_err(&map_path, "reading", e))?;
        let data_len = data
            .metadata()
            .map_err(|e| cache_err(&data_path, "stat", e))?
            .len();
        let present = match parse_map(&old, &key, size, bitmap_len) {
            Some(bits) if data_len == size => bits,
            _ => {
                // Unknown, stale or left by a crash: start empty, and drop
                // the old bytes so the sparse file does not keep them.
                data.set_len(0)
                    .map_err(|e| cache_err(&data_path, "truncating", e))?;
                vec![0u8; bitmap_len]
            }
        };
        data.set_len(size)
            .map_err(|e| cache_err(&data_path, "sizing", e))?;
        let cache = DiskCache {
            data,
            map,
            data_path,
            key,
            size,
            present: Mutex::new(present),
            write_failed: AtomicBool::new(false),
        };
        // Mark in use before any chunk can be written.
        cache
            .write_map(IN_USE)
            .map_err(|e| cache_err(&map_path, "writing", e))?;
        let n = cache
            .lock()
            .iter()
            .map(|b| b.count_ones() as u64)
            .sum::<u64>();
        log::info!(
            "HTTP cache {}: {n} of {} chunks present",
            cache.data_path.display(),
            size.div_ceil(CHUNK)
        );
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.present.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self, state: u8) -> io::Result<()> {
        let bits = self.lock().clone();
        let mut buf = Vec::with_capacity(HEADER + self.key.len() + bits.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[state, 0, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(&CHUNK.to_le_bytes());
        buf.extend_from_slice(&self.size.to_le_bytes());
        buf.extend_from_slice(&(self.key.len() as u64).to_le_bytes());
        buf.extend_from_slice(self.key.as_bytes());
        buf.extend_from_slice(&bits);
        self.map.set_len(0)?;
        self.map.write_all_at(&buf, 0)?;
        self.map.sync_data()
    }

    fn has(&self, chunk: u64) -> bool {
        self.lock()[(chunk / 8) as usize] & (1 << (chunk % 8)) != 0
    }

    /// Fill `buf` with the bytes at `offset`: present chunks from the file,
    /// missing ones fetched whole through `fetch` and stored.
    pub(crate) fn read(
        &self,
        buf: &mut [u8],
        offset: u64,
        fetch: &Fill<'_>,
    ) -> Result<(), HttpError> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let first = pos / CHUNK;
            let present = self.has(first);
            let mut next = first + 1;
            while next * CHUNK < end
                && self.has(next) == present
                && (present || next - first < MAX_RUN)
            {
                next += 1;
            }
            let run_end = (next * CHUNK).min(end);
            let out = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if present {
                if let Err(e) = self.data.read_exact_at(out, pos) {
                    log::warn!(
                        "HTTP cache {}: read failed ({e}); fetching from the origin",
                        self.data_path.display()
                    );
                    fetch(pos, out)?;
                }
            } else {
                let fstart = first * CHUNK;
                let fend = (next * CHUNK).min(self.size);
                let mut tmp = vec![0u8; (fend - fstart) as usize];
                fetch(fstart, &mut tmp)?;
                self.store(fstart, &tmp, first..next);
                out.copy_from_slice(&tmp[(pos - fstart) as usize..(run_end - fstart) as usize]);
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Fetch and store every missing chunk of `len` bytes at `offset`
    /// (the NBD `CACHE` command).
    pub(crate) fn prefetch(
        &self,
        offset: u64,
        len: u64,
        fetch: &Fill<'_>,
    ) -> Result<(), HttpError> {
        let end = (offset + len).min(self.size);
        let mut chunk = offset / CHUNK;
        while chunk * CHUNK < end {
            if self.has(chunk) {
                chunk += 1;
                continue;
            }
            let mut next = chunk + 1;
            while next * CHUNK < end && !self.has(next) && next - chunk < MAX_RUN {
                next += 1;
            }
            let fstart = chunk * CHUNK;
            let mut tmp = vec![0u8; ((next * CHUNK).min(self.size) - fstart) as usize];
            fetch(fstart, &mut tmp)?;
            self.store(fstart, &tmp, chunk..next);
            chunk = next;
        }
        Ok(())
    }

    /// Write fetched chunks, then mark them present. A failed write only
    /// costs the cache (and is logged once).
    fn store(&self, at: u64, bytes: &[u8], chunks: std::ops::Range<u64>) {
        if let Err(e) = self.data.write_all_at(bytes, at) {
            if !self.write_failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "HTTP cache {}: write failed ({e}); serving without caching",
                    self.data_path.display()
                );
            }
            return;
        }
        let mut bits = self.lock();
        for c in chunks {
            bits[(c / 8) as usize] |= 1 << (c % 8);
        }
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        // Data first: "clean" must never describe bytes still in flight.
        let r = self.data.sync_data().and_then(|()| self.write_map(CLEAN));
        if let Err(e) = r {
            log::warn!(
                "HTTP cache {}: not saved ({e}); it will start empty next time",
                self.data_path.display()
            );
        }
    }
}

/// The bitmap of a sidecar that is clean and describes this very file.
fn parse_map(buf: &[u8], key: &str, size: u64, bitmap_len: usize) -> Option<Vec<u8>> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
    };
    if buf.get(..8)? != MAGIC || buf[8] != CLEAN {
        return None;
    }
    if word(16)? != CHUNK || word(24)? != size || word(32)? != key.len() as u64 {
        return None;
    }
    let key_end = HEADER + key.len();
    if buf.get(HEADER..key_end)? != key.as_bytes() {
        return None;
    }
    let bits = buf.get(key_end..)?;
    (bits.len() == bitmap_len).then(|| bits.to_vec())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn byte(off: u64) -> u8 {
        (off % 253) as u8
    }

    fn source(calls: &AtomicUsize) -> impl Fn(u64, &mut [u8]) -> Result<(), HttpError> + '_ {
        move |off, buf| {
            calls.fetch_add(1, Ordering::SeqCst);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = byte(off + i as u64);
            }
            Ok(())
        }
    }

    fn check(buf: &[u8], offset: u64) {
        let bad = buf
            .iter()
            .enumerate()
            .position(|(i, &b)| b != byte(offset + i as u64));
        assert_eq!(bad, None, "read at {offset}");
    }

    #[test]
    fn chunks_persist_across_opens_and_keys_separate() {
        let dir = tempfile::tempdir().unwrap();
        let size = 5 * CHUNK + 1234;
        let calls = AtomicUsize::new(0);
        let fetch = source(&calls);
        {
            let c = DiskCache::open(dir.path(), "http://h/x", "\"e1\"", size).unwrap();
            let mut buf = vec![0u8; 3000];
            c.read(&mut buf, CHUNK - 1000, &fetch).unwrap();
            check(&buf, CHUNK - 1000);
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "two missing chunks, one fetch"
            );
            c.read(&mut buf, CHUNK + 5, &fetch).unwrap();
            check(&buf, CHUNK + 5);
            let mut tail = vec![0u8; 2000];
            c.read(&mut tail, size - 2000, &fetch).unwrap();
            check(&tail, size - 2000);
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            // Same process, second opener: refused rather than shared.
            assert!(DiskCache::open(dir.path(), "http://h/x", "\"e1\"", size).is_err());
        }
        let c = DiskCache::open(dir.path(), "http://h/x", "\"e1\"", size).unwrap();
        let mut all = vec![0u8; 2 * CHUNK as usize];
        c.read(&mut all, 0, &fetch).unwrap();
        check(&all, 0);
        let mut tail = vec![0u8; 1234];
        c.read(&mut tail, 5 * CHUNK, &fetch).unwrap();
        check(&tail, 5 * CHUNK);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "served from disk");
        drop(c);
        // A new validator is another file: nothing present.
        let c = DiskCache::open(dir.path(), "http://h/x", "\"e2\"", size).unwrap();
        let mut buf = vec![0u8; 10];
        c.read(&mut buf, 0, &fetch).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_sidecar_left_in_use_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let fetch = source(&calls);
        let c = DiskCache::open(dir.path(), "u", "v", 3 * CHUNK).unwrap();
        let mut buf = vec![0u8; 100];
        c.read(&mut buf, 0, &fetch).unwrap();
        // Simulate a crash: the sidecar stays "in use"; drop the lock only.
        let map = c.map.try_clone().unwrap();
        std::mem::forget(c);
        flock(&map, FlockOperation::Unlock).unwrap();
        drop(map);
        let c = DiskCache::open(dir.path(), "u", "v", 3 * CHUNK).unwrap();
        c.read(&mut buf, 0, &fetch).unwrap();
        check(&buf, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn exabyte_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let e = DiskCache::open(dir.path(), "u", "v", i64::MAX as u64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large to cache"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn prefetch_fills_missing_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let fetch = source(&calls);
        let c = DiskCache::open(dir.path(), "u", "v", 20 * CHUNK).unwrap();
        c.prefetch(CHUNK / 2, 10 * CHUNK, &fetch).unwrap();
        // Chunks 0..=10 in runs of at most MAX_RUN.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let mut buf = vec![0u8; 11 * CHUNK as usize];
        c.read(&mut buf, 0, &fetch).unwrap();
        check(&buf, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
