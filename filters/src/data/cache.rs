//! `cache:dir=DIR,size=SIZE[,key=NAME,block=SIZE]`: a disk-backed read
//! cache for slow sources (HTTP, S3, xz), shared by every client of the
//! export and kept across reconnects and server restarts.
//!
//! # Layout
//! Two files in `DIR`, named by `key` (default `default`):
//! - `KEY.cache` holds `size / block` *slots* of `block` bytes (64 KiB by
//!   default). It never grows past `size`: the bound is the file's layout,
//!   not a promise to punch holes (which not every filesystem keeps).
//! - `KEY.cache-map` is a 4 KiB header followed by a 16-byte entry per
//!   slot: a little-endian `u64`, `1 + ` the device block it holds (0: an
//!   empty slot), and the CRC-32 of the block's number and bytes (`u32`,
//!   then 4 zero bytes).
//!   The header holds the format, the block size, the device's size, the
//!   slot count, the identity of the device (below), the kernel's boot id
//!   and a "synced" flag.
//!
//! # Which device a cache belongs to
//! The identity is a SHA-256 of the device's size and its first and last
//! blocks, read when the stack is built. A different identity, block size
//! or slot count empties the cache. This catches a different image given
//! the same `key` (a new release of a distribution image, a different
//! disk), but not a source changed only in its middle: give each source
//! its own `key`, and change the key (or delete the files) when a source
//! is rewritten in place. Within a run the cache cannot see changes made
//! to the source by others; writes through the cache itself are always
//! seen (below).
//!
//! # Never a wrong byte
//! - A block is fetched whole from the device beneath, written to its slot,
//!   and only then is the slot's map entry written: an entry never points
//!   at bytes not yet in the file. Evicting a slot clears its entry before
//!   the slot is reused.
//! - Both writes go through the kernel's page cache, in that order, so a
//!   crash of this process cannot reorder them; a crash of the machine
//!   can. So the header records the boot id: a cache opened in a later
//!   boot is kept only if it was closed cleanly (data file synced, then
//!   "synced" set); otherwise it starts empty. The map file is `flock`ed:
//!   a second process asking for the same key is refused, not let in to
//!   interleave writes.
//! - A write, zeroing or trim passes to the device beneath and drops the
//!   cached blocks it touches, both before and after it reaches the device
//!   beneath. A global epoch, bumped each time, makes a fetch that
//!   overlapped a write discard what it read instead of storing it (it may
//!   have read the old bytes).
//! - A slot found in the map at open is checked against its CRC the first
//!   time it is read (a whole-block read of the file, once per slot per
//!   run): a torn or damaged file, or a map edited by hand, costs a
//!   refetch, not a wrong byte. Slots filled by this run are trusted.
//! - A slot being read is pinned: eviction skips it, and a dropped slot is
//!   reused only when its last reader is done.
//!
//! # Sharing and bounds
//! Concurrent misses for one block fetch it once: the first claims it, the
//! others wait for it and then read it from the cache. A miss fetches each
//! run of consecutive missing blocks in one read of the device beneath
//! (one HTTP range request rather than one per block). Eviction is CLOCK
//! (a second chance for blocks read since the hand last passed), bounded
//! to two sweeps; when every slot is pinned the block is served without
//! being stored. Memory: the map (about 64 bytes a slot, with the index)
//! and the blocks of one run being fetched (at most 8 MiB); at most
//! [`MAX_SLOTS`] slots, so at most about 64 MiB. A failure of the
//! cache files (a full disk) never fails a client's read: the bytes are
//! served from the device beneath and a warning is logged once.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustix::fs::{flock, FlockOperation, OFlags};
use sha2::{Digest, Sha256};
use synth::{check_range, BlockDev, Caps, Client, Error, ErrorKind, Layer, LayerFactory, Result};

use super::copies::{Copies, Copying};
use crate::{Below, FilterArgs, FilterError};

/// The default block: big enough that a slow source's round trip is
/// amortized, small enough that a scattered read does not fetch much it
/// will not use.
const DEFAULT_BLOCK: u64 = 64 << 10;
/// At most this many slots (64 GiB of 64 KiB blocks, 4 TiB of 4 MiB ones):
/// the in-memory map stays under about 64 MiB.
pub const MAX_SLOTS: u64 = 1 << 20;
/// Largest run of missing blocks fetched by one read of the device beneath
/// (bounded memory whatever the request).
const MAX_RUN_BYTES: u64 = 8 << 20;
/// Bytes before the map entries.
const HEADER: u64 = 4096;
/// Bytes of one map entry.
const ENTRY: u64 = 16;
const MAGIC: &[u8; 8] = b"DSBCACH1";
const VERSION: u32 = 1;

/// Cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks served from the cache file.
    pub hits: u64,
    /// Blocks fetched from the device beneath.
    pub misses: u64,
    /// Blocks stored in the cache file.
    pub stored: u64,
    /// Blocks evicted to make room.
    pub evicted: u64,
    /// Blocks dropped because a write touched them.
    pub invalidated: u64,
    /// Blocks present now.
    pub present: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The device block held (complete in the file), if any.
    block: Option<u64>,
    /// Being filled by a fetch: not present, not free.
    busy: bool,
    /// Read since the clock hand last passed.
    referenced: bool,
    /// Readers copying from the slot now.
    pins: u32,
    /// CRC-32 of the block's bytes.
    crc: u32,
    /// Known to match `crc` (filled, or checked, by this run).
    verified: bool,
}

#[derive(Debug)]
struct State {
    index: HashMap<u64, u32>,
    slots: Vec<Slot>,
    /// Slots that may be empty (checked when taken).
    free: Vec<u32>,
    hand: usize,
    /// Bumped by every write-type request, before and after it.
    epoch: u64,
    /// Blocks a fetch has claimed.
    fetching: HashSet<u64>,
}

/// A present block a read found, pinned.
#[derive(Debug, Clone, Copy)]
struct Hit {
    block: u64,
    slot: u32,
    crc: u32,
    verified: bool,
}

/// One device's cache: what every client's layer shares.
#[derive(Debug)]
struct Cache {
    block: u64,
    size: u64,
    data: File,
    map: File,
    paths: (PathBuf, PathBuf),
    state: Mutex<State>,
    /// Signalled when claimed blocks are released.
    released: Condvar,
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    evicted: AtomicU64,
    invalidated: AtomicU64,
    /// One warning per failure kind, not one per block.
    warned: AtomicBool,
}

/// The header of the map file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    block: u64,
    size: u64,
    slots: u64,
    identity: [u8; 32],
    boot: [u8; 16],
    synced: bool,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.block.to_le_bytes());
        h[24..32].copy_from_slice(&self.size.to_le_bytes());
        h[32..40].copy_from_slice(&self.slots.to_le_bytes());
        h[40..72].copy_from_slice(&self.identity);
        h[72..88].copy_from_slice(&self.boot);
        h[88] = u8::from(self.synced);
        h
    }

    fn decode(h: &[u8]) -> Option<Header> {
        let le = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        if h.len() < HEADER as usize
            || &h[..8] != MAGIC
            || u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) != VERSION
        {
            return None;
        }
        Some(Header {
            block: le(16),
            size: le(24),
            slots: le(32),
            identity: h[40..72].try_into().expect("32 bytes"),
            boot: h[72..88].try_into().expect("16 bytes"),
            synced: h[88] == 1,
        })
    }
}

/// This boot of the kernel, so a cache left by a crash in an earlier boot
/// (whose unsynced writes may be lost) is not trusted. All zeros when
/// unknown: then only a cleanly closed cache is kept.
fn boot_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = text.trim().bytes().filter(u8::is_ascii_hexdigit).collect();
        if hex.len() == 32 {
            for (i, pair) in hex.chunks(2).enumerate() {
                let s = std::str::from_utf8(pair).unwrap_or("00");
                id[i] = u8::from_str_radix(s, 16).unwrap_or(0);
            }
        }
    }
    id
}

/// The identity of `dev` for blocks of `block` bytes: its size and its
/// first and last blocks.
fn identity(dev: &dyn BlockDev, block: u64) -> Result<[u8; 32]> {
    let size = dev.size();
    let mut h = Sha256::new();
    h.update(b"disksynth cache identity\0");
    h.update(size.to_le_bytes());
    let first = block.min(size);
    let mut buf = vec![0u8; first as usize];
    dev.read_at(&mut buf, 0)?;
    h.update(&buf);
    let last = size.saturating_sub(1) / block * block;
    if size > 0 && last > 0 {
        buf.resize((size - last) as usize, 0);
        dev.read_at(&mut buf, last)?;
        h.update(&buf);
    }
    Ok(h.finalize().into())
}

/// The CRC-32 of block `b`'s number and bytes: a slot whose entry names
/// another block than it holds fails it too.
fn block_crc(b: u64, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b.to_le_bytes());
    h.update(bytes);
    h.finalize()
}

fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

impl Cache {
    /// Open (or create) the cache `key` in `dir` for `dev`.
    fn open(dir: &Path, key: &str, capacity: u64, block: u64, dev: &dyn BlockDev) -> Result<Self> {
        let size = dev.size();
        let slots = capacity / block;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating", e))?;
        let data_path = dir.join(format!("{key}.cache"));
        let map_path = dir.join(format!("{key}.cache-map"));
        // Not through a symlink, and only a regular file: in a directory
        // others can write to (a shared /var/tmp), a link planted at the
        // name would otherwise make the cache truncate and overwrite
        // whatever it points at.
        let open = |p: &Path| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(OFlags::NOFOLLOW.bits() as i32)
                .open(p)
                .map_err(|e| io_err(p, "opening (not following a symlink)", e))?;
            let meta = f.metadata().map_err(|e| io_err(p, "stat", e))?;
            if !meta.is_file() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{} is not a regular file", p.display()),
                ));
            }
            Ok(f)
        };
        let map = open(&map_path)?;
        flock(&map, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is in use by another server or another export's cache ({e}): give each \
                     its own key= or dir=",
                    map_path.display()
                ),
            )
        })?;
        let data = open(&data_path)?;
        let want = Header {
            block,
            size,
            slots,
            identity: identity(dev, block)?,
            boot: boot_id(),
            synced: false,
        };
        let mut head = vec![0u8; HEADER as usize];
        let old = match map.read_exact_at(&mut head, 0) {
            Ok(()) => Header::decode(&head),
            Err(_) => None,
        };
        let keep = old.as_ref().is_some_and(|h| {
            h.block == want.block
                && h.size == want.size
                && h.slots == want.slots
                && h.identity == want.identity
                && (h.synced || (h.boot == want.boot && want.boot != [0; 16]))
        });
        let mut entries = vec![0u8; (slots * ENTRY) as usize];
        if keep {
            // A short map (a crash while it grew) reads as empty slots.
            let mut at = 0;
            while at < entries.len() {
                match map.read_at(&mut entries[at..], HEADER + at as u64) {
                    Ok(0) => break,
                    Ok(n) => at += n,
                    Err(e) => return Err(io_err(&map_path, "reading", e)),
                }
            }
        } else {
            if old.is_some() {
                log::info!(
                    "cache {}: made for another device, block size, size or an unclean \
                     shutdown: starting empty",
                    data_path.display()
                );
            }
            // Drop the old bytes so the file does not keep them.
            data.set_len(0)
                .map_err(|e| io_err(&data_path, "truncating", e))?;
            map.set_len(0)
                .map_err(|e| io_err(&map_path, "truncating", e))?;
        }
        // "Not synced" is on disk before any slot can change.
        map.write_all_at(&want.encode(), 0)
            .and_then(|()| map.write_all_at(&entries, HEADER))
            .and_then(|()| map.sync_data())
            .map_err(|e| io_err(&map_path, "writing", e))?;
        let nblocks = size.div_ceil(block);
        let mut state = State {
            index: HashMap::new(),
            slots: vec![Slot::default(); slots as usize],
            free: Vec::new(),
            hand: 0,
            epoch: 0,
            fetching: HashSet::new(),
        };
        let mut bad = Vec::new();
        for (i, e) in entries.chunks_exact(ENTRY as usize).enumerate() {
            let v = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            let b = v.wrapping_sub(1);
            if v != 0 && b < nblocks && !state.index.contains_key(&b) {
                state.index.insert(b, i as u32);
                let s = &mut state.slots[i];
                s.block = Some(b);
                s.crc = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
            } else {
                if v != 0 {
                    bad.push(i as u64);
                }
                state.free.push(i as u32);
            }
        }
        // Entries that cannot be right (a block past the end, a block in
        // two slots) are cleared, not trusted.
        for i in bad {
            map.write_all_at(&[0; ENTRY as usize], HEADER + i * ENTRY)
                .map_err(|e| io_err(&map_path, "writing", e))?;
        }
        state.free.reverse();
        log::info!(
            "cache {}: {} of {slots} slots of {block} bytes hold blocks of the {size}-byte disk",
            data_path.display(),
            state.index.len()
        );
        Ok(Cache {
            block,
            size,
            data,
            map,
            paths: (data_path, map_path),
            state: Mutex::new(state),
            released: Condvar::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a few field writes that leave it
        // consistent; a panic elsewhere does not make it unusable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warn(&self, what: &str, e: &dyn std::fmt::Display) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cache {}: {what}: {e} (served from the disk beneath; further failures not logged)",
                self.paths.0.display()
            );
        }
    }

    /// Bytes of device block `b` (the last may be short).
    fn block_len(&self, b: u64) -> u64 {
        self.block.min(self.size - b * self.block)
    }

    /// Record in the map file what slot `i` holds (`None`: nothing).
    fn write_entry(&self, i: u32, block: Option<(u64, u32)>) -> io::Result<()> {
        let mut e = [0u8; ENTRY as usize];
        if let Some((b, crc)) = block {
            e[..8].copy_from_slice(&(b + 1).to_le_bytes());
            e[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        self.map.write_all_at(&e, HEADER + u64::from(i) * ENTRY)
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
            present: self.lock().index.len() as u64,
        }
    }

    /// A slot for a new block, marked busy; `None` when every slot is
    /// pinned or busy. Evicting clears the victim's map entry first.
    fn take_slot(&self, st: &mut State) -> Option<u32> {
        while let Some(i) = st.free.pop() {
            let s = &mut st.slots[i as usize];
            if s.block.is_none() && !s.busy && s.pins == 0 {
                s.busy = true;
                return Some(i);
            }
        }
        let n = st.slots.len();
        for _ in 0..2 * n {
            let i = st.hand;
            st.hand = (st.hand + 1) % n;
            let s = &mut st.slots[i];
            if s.busy || s.pins > 0 {
                continue;
            }
            if s.referenced {
                s.referenced = false;
                continue;
            }
            if let Some(old) = s.block.take() {
                st.index.remove(&old);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.write_entry(i as u32, None) {
                    // The entry may still name the old block: keep the slot
                    // out of use rather than risk it.
                    self.warn("clearing a map entry", &e);
                    st.slots[i].busy = true;
                    return None;
                }
            }
            st.slots[i].busy = true;
            return Some(i as u32);
        }
        None
    }

    /// Give back a slot taken but not filled.
    fn free_slot(st: &mut State, i: u32) {
        let s = &mut st.slots[i as usize];
        s.busy = false;
        s.block = None;
        if s.pins == 0 {
            st.free.push(i);
        }
    }

    /// Release claimed blocks and wake their waiters.
    fn release(&self, st: &mut State, blocks: impl IntoIterator<Item = u64>) {
        for b in blocks {
            st.fetching.remove(&b);
        }
        self.released.notify_all();
    }

    /// Store `data` (the whole of blocks `first..`) fetched when the epoch
    /// was `epoch`, then release the claims on them.
    fn store(&self, first: u64, data: &[u8], epoch: u64) {
        let count = (data.len() as u64).div_ceil(self.block);
        let blocks = first..first + count;
        let mut st = self.lock();
        if st.epoch != epoch {
            self.release(&mut st, blocks);
            return;
        }
        let mut taken = Vec::new();
        for b in blocks.clone() {
            match self.take_slot(&mut st) {
                Some(i) => taken.push((b, i)),
                None => break,
            }
        }
        drop(st);
        // The bytes reach the file before any entry names them.
        let mut written = Vec::with_capacity(taken.len());
        for &(b, i) in &taken {
            let at = ((b - first) * self.block) as usize;
            let bytes = &data[at..at + self.block_len(b) as usize];
            match self.data.write_all_at(bytes, u64::from(i) * self.block) {
                Ok(()) => written.push((b, i, block_crc(b, bytes))),
                Err(e) => self.warn("writing a block", &e),
            }
        }
        let mut st = self.lock();
        let current = st.epoch == epoch;
        for &(b, i) in &taken {
            let crc = written
                .iter()
                .find(|w| (w.0, w.1) == (b, i))
                .map(|w| w.2)
                .filter(|_| current);
            if let Some(crc) = crc {
                if let Err(e) = self.write_entry(i, Some((b, crc))) {
                    // The file still says the slot is empty (it was
                    // cleared before the slot was taken): only this run
                    // knows the block is there, which is still true.
                    self.warn("writing a map entry", &e);
                }
                st.slots[i as usize] = Slot {
                    block: Some(b),
                    busy: false,
                    referenced: false,
                    pins: 0,
                    crc,
                    verified: true,
                };
                st.index.insert(b, i);
                self.stored.fetch_add(1, Ordering::Relaxed);
            } else {
                Self::free_slot(&mut st, i);
            }
        }
        self.release(&mut st, blocks);
    }

    /// Drop the cached blocks `len` bytes at `offset` touch, and make
    /// fetches in flight discard what they read.
    fn invalidate(&self, offset: u64, len: u64) {
        let mut st = self.lock();
        st.epoch += 1;
        if len == 0 || offset >= self.size {
            return;
        }
        let last = (offset + len - 1).min(self.size - 1) / self.block;
        for b in offset / self.block..=last {
            let Some(i) = st.index.remove(&b) else {
                continue;
            };
            self.invalidated.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.write_entry(i, None) {
                // The stale entry would be trusted by the next run: wipe
                // the map (header included), so the next run starts empty.
                self.warn("clearing a map entry", &e);
                let _ = self.map.set_len(0);
            }
            let s = &mut st.slots[i as usize];
            s.block = None;
            if s.pins == 0 && !s.busy {
                st.free.push(i);
            }
        }
    }

    /// Fill `buf` with the bytes at `offset`, from the cache file where
    /// present, fetching (and storing) the rest through `next`.
    fn read(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let mut pending: Vec<u64> = (offset / self.block..=(end - 1) / self.block).collect();
        while !pending.is_empty() {
            let mut hits = Vec::new();
            let mut claimed = Vec::new();
            let mut waiting = Vec::new();
            let epoch = {
                let mut st = self.lock();
                for &b in &pending {
                    if let Some(&i) = st.index.get(&b) {
                        let s = &mut st.slots[i as usize];
                        s.pins += 1;
                        s.referenced = true;
                        hits.push(Hit {
                            block: b,
                            slot: i,
                            crc: s.crc,
                            verified: s.verified,
                        });
                    } else if st.fetching.contains(&b) {
                        waiting.push(b);
                    } else {
                        st.fetching.insert(b);
                        claimed.push(b);
                    }
                }
                st.epoch
            };
            let served = self.serve_hits(next, buf, offset, &hits);
            let fetched = self.fetch(next, buf, offset, &claimed, epoch);
            served?;
            fetched?;
            if !waiting.is_empty() {
                let mut st = self.lock();
                while waiting.iter().any(|b| st.fetching.contains(b)) {
                    st = self.released.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
            // The waited-for blocks are now present (or their fetch failed
            // or was discarded: then this request fetches them itself).
            pending = waiting;
        }
        Ok(())
    }

    /// The part of block `b` inside `[offset, offset + len)`: (its start on
    /// the device, its length).
    fn part(&self, b: u64, offset: u64, len: u64) -> (u64, u64) {
        let start = (b * self.block).max(offset);
        let stop = (b * self.block + self.block_len(b)).min(offset + len);
        (start, stop - start)
    }

    /// Copy the pinned slots `hits` (with whether each is verified and
    /// its CRC) into `buf`, then unpin them. A slot that cannot be read, or
    /// does not match its CRC, is dropped and its part read from the
    /// device beneath instead.
    fn serve_hits(
        &self,
        next: &dyn BlockDev,
        buf: &mut [u8],
        offset: u64,
        hits: &[Hit],
    ) -> Result<()> {
        let mut result = Ok(());
        // Per hit: Some(true) checked now, Some(false) failed, None as was.
        let mut checked = vec![None; hits.len()];
        let mut whole = Vec::new();
        for (k, h) in hits.iter().enumerate() {
            let (at, n) = self.part(h.block, offset, buf.len() as u64);
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            let slot_at = u64::from(h.slot) * self.block;
            let got = if h.verified {
                self.data
                    .read_exact_at(dst, slot_at + (at - h.block * self.block))
                    .map_err(|e| e.to_string())
            } else {
                whole.resize(self.block_len(h.block) as usize, 0);
                let r = self.data.read_exact_at(&mut whole, slot_at);
                match r {
                    Ok(()) if block_crc(h.block, &whole) == h.crc => {
                        let i = (at - h.block * self.block) as usize;
                        dst.copy_from_slice(&whole[i..i + n as usize]);
                        checked[k] = Some(true);
                        Ok(())
                    }
                    Ok(()) => Err("a block does not match its CRC".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            match got {
                Ok(()) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => {
                    self.warn("reading a block", &why);
                    checked[k] = Some(false);
                    if let Err(e) = next.read_at(dst, at) {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        let mut st = self.lock();
        for (h, ok) in hits.iter().zip(checked) {
            let i = h.slot;
            match ok {
                Some(true) => st.slots[i as usize].verified = true,
                Some(false) if st.index.get(&h.block) == Some(&i) => {
                    // Not trusted any more: out of the index and the map.
                    st.index.remove(&h.block);
                    st.slots[i as usize].block = None;
                    self.invalidated.fetch_add(1, Ordering::Relaxed);
                    if self.write_entry(i, None).is_err() {
                        let _ = self.map.set_len(0);
                    }
                }
                _ => {}
            }
            let s = &mut st.slots[i as usize];
            s.pins -= 1;
            if s.pins == 0 && s.block.is_none() && !s.busy {
                st.free.push(i);
            }
        }
        result
    }

    /// Fetch the claimed blocks (sorted) through `next`, a run of
    /// consecutive ones per read, copy their part of the request into
    /// `buf`, store them and release the claims.
    fn fetch(
        &self,
        next: &dyn BlockDev,
        buf: &mut [u8],
        offset: u64,
        claimed: &[u64],
        epoch: u64,
    ) -> Result<()> {
        let max_run = (MAX_RUN_BYTES / self.block).max(1);
        let mut i = 0;
        while i < claimed.len() {
            let first = claimed[i];
            let mut j = i + 1;
            while j < claimed.len()
                && claimed[j] == claimed[j - 1] + 1
                && ((j - i) as u64) < max_run
            {
                j += 1;
            }
            let last = claimed[j - 1];
            let start = first * self.block;
            let stop = last * self.block + self.block_len(last);
            let mut data = vec![0u8; (stop - start) as usize];
            let end = offset + buf.len() as u64;
            let (a, z) = (start.max(offset), stop.min(end));
            let dst = &mut buf[(a - offset) as usize..(z - offset) as usize];
            if let Err(e) = next.read_at(&mut data, start) {
                {
                    let mut st = self.lock();
                    self.release(&mut st, claimed[i..j].iter().copied());
                }
                // Whole blocks reach past the request at its ends: the
                // failure may lie only there (a bad sector next to the
                // bytes asked for), and the client must not be told its
                // read failed when its own bytes can be read.
                if (a, z) == (start, stop) {
                    let mut st = self.lock();
                    self.release(&mut st, claimed[j..].iter().copied());
                    return Err(e);
                }
                if let Err(e) = next.read_at(dst, a) {
                    let mut st = self.lock();
                    self.release(&mut st, claimed[j..].iter().copied());
                    return Err(e);
                }
                i = j;
                continue;
            }
            self.misses
                .fetch_add(j as u64 - i as u64, Ordering::Relaxed);
            dst.copy_from_slice(&data[(a - start) as usize..(z - start) as usize]);
            self.store(first, &data, epoch);
            i = j;
        }
        Ok(())
    }

    /// Mark the cache cleanly closed: its data and map synced, then the
    /// header's "synced" set (so a later boot may trust it).
    fn close(&self) {
        let slots = self.lock().slots.len() as u64;
        let mut head = vec![0u8; HEADER as usize];
        if self.map.read_exact_at(&mut head, 0).is_err() {
            return;
        }
        // A map wiped after a failed entry write stays untrusted.
        let Some(mut h) = Header::decode(&head) else {
            return;
        };
        if (h.block, h.size, h.slots) != (self.block, self.size, slots) {
            return;
        }
        h.synced = true;
        let done = self
            .data
            .sync_data()
            .and_then(|()| self.map.sync_data())
            .and_then(|()| self.map.write_all_at(&h.encode(), 0))
            .and_then(|()| self.map.sync_data());
        if let Err(e) = done {
            log::warn!(
                "cache {}: marking it closed: {e} (it will start empty after a reboot)",
                self.paths.1.display()
            );
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let s = self.stats();
        log::info!(
            "cache {}: {} hits, {} misses, {} stored, {} evicted, {} dropped by writes",
            self.paths.0.display(),
            s.hits,
            s.misses,
            s.stored,
            s.evicted,
            s.invalidated
        );
        self.close();
    }
}

/// Makes `cache` layers, all over one cache (its files and map).
#[derive(Debug)]
pub struct CacheFactory {
    cache: Arc<Cache>,
}

impl CacheFactory {
    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

pub(crate) fn build(
    args: &FilterArgs,
    below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    args.allow(&["dir", "size", "key", "block"], 0)?;
    let dir = args
        .get("dir")
        .ok_or_else(|| args.invalid("give dir=DIR, where the cache files live"))?;
    let capacity = args
        .size("size")?
        .ok_or_else(|| args.invalid("give size=SIZE, the most the cache file may hold"))?;
    let block = args.size("block")?.unwrap_or(DEFAULT_BLOCK);
    if !block.is_power_of_two() || !(4096..=(4 << 20)).contains(&block) {
        return Err(args.invalid(format!("block={block}: a power of two between 4K and 4M")));
    }
    if capacity < block {
        return Err(args.invalid(format!(
            "size={capacity} is less than one block ({block} bytes)"
        )));
    }
    if capacity / block > MAX_SLOTS {
        return Err(args.invalid(format!(
            "size={capacity} is {} blocks of {block} bytes; at most {MAX_SLOTS}: give a larger \
             block=",
            capacity / block
        )));
    }
    let key = args.get("key").unwrap_or("default");
    if !valid_key(key) {
        return Err(args.invalid(format!(
            "key={key:?}: letters, digits, '.', '_' and '-' (not first '.'), at most 64"
        )));
    }
    let Some(dev) = &below.shared else {
        return Err(args.invalid(
            "the disk beneath is made per client (a tmpdisk): there is nothing to share a cache \
             of",
        ));
    };
    let cache = Cache::open(Path::new(dir), key, capacity, block, &**dev).map_err(|e| {
        FilterError::Setup {
            filter: "cache".into(),
            source: e,
        }
    })?;
    Ok(Arc::new(CacheFactory {
        cache: Arc::new(cache),
    }))
}

impl LayerFactory for CacheFactory {
    fn name(&self) -> &str {
        "cache"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        if next.size() != self.cache.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the disk beneath is {} bytes, the cache was opened for {}",
                    next.size(),
                    self.cache.size
                ),
            ));
        }
        Ok(Arc::new(Layer::new(Copying(self.cache.clone()), next)))
    }
    fn caps(&self, next: Caps) -> Caps {
        // `cache` requests fill the cache.
        next | Caps::CACHE
    }
}

/// The cache under a client's layer: reads through the slots, hints fill
/// them, and `cache` requests are answered.
impl Copies for Cache {
    fn read(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        Cache::read(self, next, buf, offset)
    }
    fn invalidate(&self, offset: u64, len: u64) {
        Cache::invalidate(self, offset, len)
    }
    fn hint(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        // Read the range through the cache, a bounded piece at a time;
        // no more than the cache holds (the hint is advisory, and more
        // would only evict what it just fetched), so a client asking to
        // cache a whole huge disk costs at most one cache-full of reads.
        check_range(offset, len, self.size)?;
        let room = self.block * self.lock().slots.len() as u64;
        let len = len.min(room);
        let mut scratch = vec![0u8; len.min(MAX_RUN_BYTES) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(MAX_RUN_BYTES) as usize;
            self.read(next, &mut scratch[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
    fn caps(&self, next: Caps) -> Caps {
        next | Caps::CACHE
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Duration;

    use synth::testing::check_dev;
    use synth::{CowOverlay, ExtentList, OverlayOptions, ZeroFlags};

    use super::*;
    use crate::data::testutil::{
        base, below, race_writes_and_reads, sized, BadRange, Counting, SlowRw,
    };

    /// The cache `key` in `dir` over `dev`, and a client's layer over it.
    fn open(
        dir: &Path,
        capacity: u64,
        block: u64,
        dev: Arc<dyn BlockDev>,
    ) -> (Arc<Cache>, Arc<dyn BlockDev>) {
        let cache = Arc::new(Cache::open(dir, "t", capacity, block, &*dev).unwrap());
        let layer: Arc<dyn BlockDev> = Arc::new(Layer::new(Copying(cache.clone()), dev));
        (cache, layer)
    }

    fn all(dev: &dyn BlockDev) -> Vec<u8> {
        let mut v = vec![0u8; dev.size() as usize];
        dev.read_at(&mut v, 0).unwrap();
        v
    }

    /// A device that sleeps in every read, so concurrent readers overlap.
    #[derive(Debug)]
    struct Slow(Arc<Counting>);

    impl BlockDev for Slow {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            std::thread::sleep(Duration::from_millis(20));
            self.0.read_at(buf, offset)
        }
    }

    #[test]
    fn conformance_with_room_and_with_eviction() {
        let (dev, expected) = base();
        for capacity in [1 << 20, 3 * 4096, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let (cache, layer) = open(dir.path(), capacity, 4096, dev.clone());
            let edges: Vec<u64> = (1..7).map(|b| b * 4096).chain([5000]).collect();
            check_dev(&*layer, &expected, &edges);
            // Twice: the second pass reads what the first stored.
            check_dev(&*layer, &expected, &edges);
            let s = cache.stats();
            assert!(s.hits > 0, "{capacity}: {s:?}");
            assert!(s.present <= capacity / 4096, "{capacity}: {s:?}");
            let on_disk = std::fs::metadata(dir.path().join("t.cache")).unwrap().len();
            assert!(on_disk <= capacity, "{on_disk} > {capacity}");
            if capacity == 4096 {
                assert!(s.evicted > 0, "{s:?}");
            }
        }
    }

    #[test]
    fn a_second_read_comes_from_the_cache_and_a_reopen_keeps_it() {
        let (dev, expected) = base();
        let counting = Counting::new(dev);
        let inner: Arc<dyn BlockDev> = counting.clone();
        let dir = tempfile::tempdir().unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, inner.clone());
        let at_open = counting.reads();
        assert_eq!(all(&*layer), expected);
        let fetched = counting.reads() - at_open;
        // Consecutive missing blocks are fetched in one read.
        assert_eq!(fetched, 1);
        assert_eq!(all(&*layer), expected);
        assert_eq!(counting.reads() - at_open, fetched);
        assert_eq!(cache.stats().hits, 7);
        // Closed and opened again (a server restart): still there.
        drop(layer);
        drop(cache);
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, inner.clone());
        let before = counting.reads();
        assert_eq!(all(&*layer), expected);
        assert_eq!(counting.reads(), before);
        assert_eq!(cache.stats().misses, 0);
        // A small read in the middle of a block is a hit too.
        let mut b = [0u8; 3];
        layer.read_at(&mut b, 9_999).unwrap();
        assert_eq!(&b, &expected[9_999..10_002]);
        assert_eq!(counting.reads(), before);
    }

    #[test]
    fn another_device_or_block_size_or_an_unclean_earlier_boot_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, _) = base();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, dev.clone());
        all(&*layer);
        drop((cache, layer));
        // Another device under the same key: first block differs.
        let (other, other_bytes) = sized(0, 25_000);
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, other.clone());
        assert_eq!(cache.stats().present, 0);
        assert_eq!(all(&*layer), other_bytes);
        drop((cache, layer));
        // Another block size.
        let (cache, _l) = open(dir.path(), 1 << 20, 8192, other.clone());
        assert_eq!(cache.stats().present, 0);
        drop((cache, _l));
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, other.clone());
        all(&*layer);
        let present = cache.stats().present;
        assert_eq!(present, 7);
        drop((cache, layer));
        // Left unsynced by this boot (a killed process): kept.
        let map = dir.path().join("t.cache-map");
        let mut head = std::fs::read(&map).unwrap();
        head[88] = 0;
        std::fs::write(&map, &head).unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, other.clone());
        assert_eq!(cache.stats().present, present);
        drop((cache, layer));
        // Left unsynced by another boot (power lost): not trusted.
        let mut head = std::fs::read(&map).unwrap();
        head[88] = 0;
        head[72] ^= 0xFF;
        std::fs::write(&map, &head).unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, other.clone());
        assert_eq!(cache.stats().present, 0);
        assert_eq!(all(&*layer), other_bytes);
    }

    #[test]
    fn writes_through_the_cache_are_seen_and_a_hostile_map_is_not_trusted() {
        let (dev, mut expected) = base();
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, ov.clone());
        assert_eq!(all(&*layer), expected);
        layer.write_at(b"new bytes", 8190).unwrap();
        expected[8190..8199].copy_from_slice(b"new bytes");
        layer
            .write_zeroes(12_000, 5_000, ZeroFlags::default())
            .unwrap();
        expected[12_000..17_000].fill(0);
        layer.trim(0, 4096).unwrap();
        assert!(cache.stats().invalidated >= 4, "{:?}", cache.stats());
        check_dev(&*layer, &expected, &[4096, 8192, 12_000, 17_000]);
        // What the cache holds is what the device holds, after a reopen
        // too.
        drop((cache, layer));
        let (_, layer) = open(dir.path(), 1 << 20, 4096, ov.clone());
        assert_eq!(all(&*layer), expected);
        drop(layer);
        // A map naming blocks past the end, or one block twice: cleared.
        let map = dir.path().join("t.cache-map");
        let mut m = std::fs::read(&map).unwrap();
        let entry = |m: &mut Vec<u8>, slot: usize, v: u64| {
            let at = (HEADER + slot as u64 * ENTRY) as usize;
            m[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        entry(&mut m, 0, 1_000);
        entry(&mut m, 1, 3);
        entry(&mut m, 2, 3);
        std::fs::write(&map, &m).unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, ov.clone());
        assert!(cache.stats().present <= 6);
        check_dev(&*layer, &expected, &[4096]);
        // Slot 1 did not hold block 2: its CRC said so, and it was dropped.
        assert!(cache.stats().invalidated >= 1, "{:?}", cache.stats());
        drop((cache, layer));
        // Bytes of the cache file changed behind its back: refetched.
        let data = dir.path().join("t.cache");
        let mut d = std::fs::read(&data).unwrap();
        for b in d.iter_mut() {
            *b ^= 0x5A;
        }
        std::fs::write(&data, &d).unwrap();
        let (_, layer) = open(dir.path(), 1 << 20, 4096, ov.clone());
        check_dev(&*layer, &expected, &[4096]);
    }

    #[test]
    fn concurrent_misses_fetch_each_block_once() {
        let (dev, expected) = sized(0, 16 * 4096);
        let counting = Counting::new(dev);
        let slow: Arc<dyn BlockDev> = Arc::new(Slow(counting.clone()));
        let dir = tempfile::tempdir().unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, slow);
        let identity_bytes = counting.bytes();
        let barrier = Arc::new(Barrier::new(8));
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let layer = layer.clone();
                let barrier = barrier.clone();
                let expected = &expected;
                s.spawn(move || {
                    barrier.wait();
                    // Overlapping reads, each in a different order.
                    for k in 0..16u64 {
                        let b = (k * (2 * t + 1)) % 16;
                        let mut buf = vec![0u8; 6000];
                        let at = (b * 4096).min(expected.len() as u64 - 6000);
                        layer.read_at(&mut buf, at).unwrap();
                        assert_eq!(&buf[..], &expected[at as usize..at as usize + 6000]);
                    }
                });
            }
        });
        // Every block came from beneath exactly once.
        assert_eq!(counting.bytes() - identity_bytes, 16 * 4096);
        assert_eq!(cache.stats().misses, 16);
    }

    #[test]
    fn the_cache_hint_fills_and_extents_pass_through() {
        let (dev, expected) = base();
        let counting = Counting::new(dev);
        let inner: Arc<dyn BlockDev> = counting.clone();
        let dir = tempfile::tempdir().unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, inner);
        assert!(layer.caps().contains(Caps::CACHE));
        layer.cache(0, 25_000).unwrap();
        let before = counting.reads();
        // A hint past the end is refused; one bigger than the cache is cut
        // to what fits (checked below with a small cache).
        assert_eq!(
            layer.cache(20_000, 6_000).unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
        assert_eq!(all(&*layer), expected);
        assert_eq!(counting.reads(), before);
        assert_eq!(cache.stats().present, 7);
        let mut l = ExtentList::new(0);
        layer.extents(0, 25_000, &mut l).unwrap();
        assert_eq!(l.as_slice().len(), 2);
        let (dev, _) = sized(0, 64 * 4096);
        let counting = Counting::new(dev);
        let inner: Arc<dyn BlockDev> = counting.clone();
        let small = tempfile::tempdir().unwrap();
        let (_, layer) = open(small.path(), 4 * 4096, 4096, inner);
        let before = counting.bytes();
        layer.cache(0, 64 * 4096).unwrap();
        assert_eq!(counting.bytes() - before, 4 * 4096);
    }

    #[test]
    fn arguments_and_a_second_user_are_refused() {
        let (dev, _) = base();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        for (text, want) in [
            ("cache:size=1M".to_string(), "dir=".to_string()),
            (format!("cache:dir={d}"), "size=".into()),
            (
                format!("cache:dir={d},size=1K"),
                "less than one block".into(),
            ),
            (
                format!("cache:dir={d},size=1M,block=3000"),
                "power of two".into(),
            ),
            (
                format!("cache:dir={d},size=1T,block=4K"),
                "larger block".into(),
            ),
            (format!("cache:dir={d},size=1M,key=../x"), "key=".into()),
            (
                format!("cache:dir={d},size=1M,keys=x"),
                "no argument".into(),
            ),
        ] {
            let e = crate::build(&text, &below(&dev)).unwrap_err().to_string();
            assert!(e.contains(&want), "{text}: {e}");
        }
        let mut per_client = below(&dev);
        per_client.shared = None;
        let e = crate::build(&format!("cache:dir={d},size=1M"), &per_client)
            .unwrap_err()
            .to_string();
        assert!(e.contains("per client"), "{e}");
        // The same key twice at once: the second is refused.
        let text = format!("cache:dir={d},size=1M,key=one");
        let first = crate::build(&text, &below(&dev)).unwrap();
        let e = crate::build(&text, &below(&dev)).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(first);
        crate::build(&text, &below(&dev)).unwrap();
    }

    #[test]
    fn failing_reads_beneath_release_their_claims() {
        #[derive(Debug)]
        struct FailsAfter(Arc<dyn BlockDev>, AtomicU64);
        impl BlockDev for FailsAfter {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                if self.1.fetch_add(1, Ordering::SeqCst) >= 2 && offset >= 8192 {
                    return Err(Error::new(ErrorKind::Io, "origin down"));
                }
                self.0.read_at(buf, offset)
            }
        }
        let (dev, expected) = base();
        let flaky: Arc<dyn BlockDev> = Arc::new(FailsAfter(dev, AtomicU64::new(0)));
        let dir = tempfile::tempdir().unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, flaky);
        let mut buf = vec![0u8; 100];
        layer.read_at(&mut buf, 0).unwrap();
        let err = layer.read_at(&mut [0u8; 100], 9000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        // Not left claimed: a second try fails again instead of hanging,
        // and what was cached still serves.
        assert!(layer.read_at(&mut [0u8; 100], 9000).is_err());
        layer.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..], &expected[..100]);
        assert!(cache.lock().fetching.is_empty());
    }

    #[test]
    fn a_bad_range_fails_only_the_reads_that_touch_it() {
        let (dev, expected) = sized(0, 64 * 1024);
        // Bytes 20_000..20_512 cannot be read: inside block 4 (16384..20480)
        // and block 5.
        let bad: Arc<dyn BlockDev> = Arc::new(BadRange {
            inner: dev,
            bad: (20_000, 20_512),
        });
        let dir = tempfile::tempdir().unwrap();
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, bad);
        // Next to it, in the same block: served (the whole block cannot be
        // fetched, the asked bytes can).
        let mut buf = vec![0u8; 3000];
        layer.read_at(&mut buf, 16_384).unwrap();
        assert_eq!(&buf[..], &expected[16_384..19_384]);
        let mut tail = vec![0u8; 100];
        layer.read_at(&mut tail, 20_600).unwrap();
        assert_eq!(&tail[..], &expected[20_600..20_700]);
        // Touching it: an error, not zeros or old bytes.
        let err = layer.read_at(&mut buf, 19_000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        // A request spanning good blocks on both sides of it fails whole,
        // but the good blocks it fetched are kept for later.
        assert!(layer.read_at(&mut vec![0u8; 20_000], 8_192).is_err());
        assert!(cache.lock().fetching.is_empty());
        let mut good = vec![0u8; 8_192];
        layer.read_at(&mut good, 8_192).unwrap();
        assert_eq!(&good[..], &expected[8_192..16_384]);
    }

    #[test]
    fn one_slot_and_many_readers() {
        let (dev, expected) = sized(0, 32 * 4096);
        let dir = tempfile::tempdir().unwrap();
        // One slot: nearly every store evicts, and a pinned slot makes the
        // next store give up rather than wait.
        let (cache, layer) = open(dir.path(), 4096, 4096, dev);
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let (layer, expected) = (layer.clone(), &expected);
                s.spawn(move || {
                    let mut rng = synth::testing::Rng(t);
                    let mut buf = vec![0u8; 5000];
                    for _ in 0..300 {
                        let at = rng.below(expected.len() as u64 - 5000);
                        layer.read_at(&mut buf, at).unwrap();
                        assert!(buf[..] == expected[at as usize..at as usize + 5000], "{at}");
                    }
                });
            }
        });
        let s = cache.stats();
        assert!(s.present <= 1 && s.evicted > 0, "{s:?}");
        let on_disk = std::fs::metadata(dir.path().join("t.cache")).unwrap().len();
        assert!(on_disk <= 4096);
    }

    #[test]
    fn a_changed_last_block_or_size_is_another_device_and_empty_disks_work() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, mut bytes) = sized(0, 30_000);
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, dev);
        all(&*layer);
        assert_eq!(cache.stats().present, 8);
        drop((cache, layer));
        // Same first block, different last byte: another device.
        bytes[29_999] ^= 1;
        let mut b = synth::RegionMapBuilder::new();
        b.push_bytes("changed", bytes.clone()).unwrap();
        let changed: Arc<dyn BlockDev> = Arc::new(b.finish());
        let (cache, layer) = open(dir.path(), 1 << 20, 4096, changed);
        assert_eq!(cache.stats().present, 0);
        assert_eq!(all(&*layer), bytes);
        drop((cache, layer));
        // A zero-byte disk: nothing to cache, nothing to fail.
        let (empty, _) = sized(0, 0);
        let (_, layer) = open(dir.path(), 1 << 20, 4096, empty);
        check_dev(&*layer, &[], &[]);
    }

    #[test]
    fn reads_racing_writes_never_store_old_bytes() {
        let (dev, _) = sized(0, 16 * 4096);
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        let slow: Arc<dyn BlockDev> = Arc::new(SlowRw(ov));
        let dir = tempfile::tempdir().unwrap();
        // Room for half the blocks: eviction races too.
        let (cache, layer) = open(dir.path(), 8 * 4096, 4096, slow);
        race_writes_and_reads(&layer, 4096, 16);
        assert!(cache.stats().invalidated > 0 && cache.stats().hits > 0);
    }

    #[test]
    fn a_symlink_planted_at_the_cache_name_is_not_followed() {
        let (dev, _) = base();
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("t.cache-map");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = Cache::open(dir.path(), "t", 1 << 20, 4096, &*dev).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("t.cache")).unwrap();
        let e = Cache::open(dir.path(), "t", 1 << 20, 4096, &*dev).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A directory at the name.
        std::fs::remove_file(dir.path().join("t.cache")).unwrap();
        std::fs::create_dir(dir.path().join("t.cache")).unwrap();
        assert!(Cache::open(dir.path(), "t", 1 << 20, 4096, &*dev).is_err());
    }
}
