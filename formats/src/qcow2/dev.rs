//! [`QcowDev`]: the guest-visible disk of a qcow2 image as a read-only
//! [`BlockDev`], reading only the tables and clusters that are asked for.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use synth::{check_range, BlockDev, BlockSize, Caps, Error, ErrorKind, ExtentKind, ExtentList};
use synth::{ReadChunk, Result};

use super::compressed;
use super::error::QcowError;
use super::extensions::{self, Extensions};
use super::header::{Compression, Header, MAX_CLUSTER_BITS};
use super::l1::L1Table;
use super::l2::{self, Entry, Layout, Mapping, SUBCLUSTERS};
use crate::cache::{Failure, SharedCache};

/// How a [`QcowDev`] serves its image.
#[derive(Debug, Clone)]
pub struct QcowOptions {
    /// Bytes of L2 tables and decompressed clusters kept for all readers
    /// together (LRU).
    pub cache_bytes: u64,
    /// The device unallocated clusters read from, when the image has a
    /// backing file (required then, refused otherwise).
    pub backing: Option<Arc<dyn BlockDev>>,
    /// Most memory the L1 table may take: a bigger one is refused before
    /// anything is allocated for it (QEMU's own limit is 32 MiB).
    pub max_l1: u64,
}

impl Default for QcowOptions {
    fn default() -> Self {
        QcowOptions {
            cache_bytes: 64 << 20,
            backing: None,
            max_l1: 32 << 20,
        }
    }
}

/// What the image header says (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QcowInfo {
    /// 2 or 3.
    pub version: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Guest-visible size.
    pub size: u64,
    /// Size of the image file.
    pub file_size: u64,
    /// The backing file name stored in the image.
    pub backing_file: Option<String>,
    /// The backing file format name extension.
    pub backing_format: Option<String>,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Extended L2 entries (32 subclusters per cluster).
    pub extended_l2: bool,
    /// L1 entries read (covering the disk).
    pub l1_entries: usize,
    /// Internal snapshots (not served; only the active layer is).
    pub snapshots: u32,
}

/// What a [`QcowDev`] has done so far (for logs, benchmarks and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QcowStats {
    /// L2 tables read from the file.
    pub l2_loads: u64,
    /// Compressed clusters decompressed (failures included).
    pub decompressions: u64,
    /// Loads (L2 tables, clusters) that failed.
    pub failures: u64,
    /// Table and cluster lookups answered from the cache.
    pub cache_hits: u64,
    /// Lookups that waited for another thread's load.
    pub waits: u64,
    /// Entries evicted to stay within the budget.
    pub evictions: u64,
    /// Reads of the image file (tables, data runs, compressed runs).
    pub file_reads: u64,
    /// Bytes read from the image file.
    pub file_bytes: u64,
    /// Bytes cached now.
    pub cached_bytes: u64,
    /// Most bytes cached plus being loaded at once.
    pub peak_bytes: u64,
}

/// Compressed clusters closer than this in the file are fetched in one
/// read (the gap read and dropped): `qemu-img convert -c` writes them back
/// to back, with an L2 table or refcount block now and then in between.
const COALESCE_GAP: u64 = 64 << 10;
/// Most bytes of compressed data fetched in one read.
const MAX_COALESCED: u64 = 8 << 20;
/// Most bytes of L2 tables one `extents` call loads before answering with
/// what it has (NBD block status only has to make progress): 4 MiB is 32
/// GiB of guest disk with 64 KiB clusters...
const EXTENTS_L2_BYTES: u64 = 4 << 20;
/// ...and at most this many tables (each one request over HTTP): 8 MiB of
/// guest disk with 512-byte clusters.
const EXTENTS_L2_TABLES: u64 = 256;

/// Cache keys: L2 tables by their offset, compressed clusters by their
/// descriptor (offset and length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    L2(u64),
    Cluster(u64, u64),
}

/// One run of guest bytes mapped one way.
#[derive(Debug, Clone, Copy)]
struct Piece {
    guest: u64,
    len: u64,
    map: Mapping,
    /// For a compressed cluster: where the run starts within it.
    within: u64,
}

/// A read-only block device over a qcow2 image in any [`BlockDev`] (a
/// host file, HTTP...). One per image, shared by every connection: its
/// cache of tables and clusters is one.
pub struct QcowDev {
    inner: Arc<Inner>,
}

struct Inner {
    file: Arc<dyn BlockDev>,
    file_size: u64,
    info: QcowInfo,
    layout: Layout,
    l1: L1Table,
    backing: Option<Arc<dyn BlockDev>>,
    cache: SharedCache<Key, Bytes>,
    l2_loads: AtomicU64,
    decompressions: AtomicU64,
    file_reads: AtomicU64,
    file_bytes: AtomicU64,
}

impl QcowDev {
    /// Read the header, its extensions and the L1 table of `file` and serve
    /// the guest disk. Refuses (naming the feature) what cannot be served
    /// faithfully, and an image with a backing file unless `opts.backing`
    /// is given.
    pub fn open(
        file: Arc<dyn BlockDev>,
        opts: &QcowOptions,
    ) -> std::result::Result<Self, QcowError> {
        let file_size = file.size();
        // The header, its extensions and the backing file name are all in
        // the first cluster: read the smallest one first, then the rest.
        let mut first = vec![0u8; file_size.min(512) as usize];
        read_exact(&*file, &mut first, 0)?;
        let h = Header::parse(&first)?;
        let cluster = h.cluster_size();
        if file_size > first.len() as u64 {
            first = vec![0u8; file_size.min(cluster) as usize];
            read_exact(&*file, &mut first, 0)?;
        }
        let ext: Extensions = extensions::parse(&h, &first)?;
        h.check_features(&ext)?;
        let compression = h.compression()?;
        let backing_file = extensions::backing_file(&h, &first)?;
        debug_assert!(h.cluster_bits <= MAX_CLUSTER_BITS);
        match (&backing_file, &opts.backing) {
            (Some(name), None) => {
                return Err(QcowError::BackingNeeded {
                    name: name.clone(),
                    format: ext.backing_format.clone(),
                })
            }
            (None, Some(_)) => {
                return Err(QcowError::InvalidOption(
                    "a backing device was given but the image has no backing file".into(),
                ))
            }
            _ => {}
        }
        let layout = Layout {
            cluster_bits: h.cluster_bits,
            version: h.version,
            extended: h.extended_l2(),
        };
        let l1 = L1Table::read(&*file, &h, file_size, layout.l2_entries(), opts.max_l1)?;
        let info = QcowInfo {
            version: h.version,
            cluster_size: cluster,
            size: h.size,
            file_size,
            backing_file,
            backing_format: ext.backing_format,
            compression,
            extended_l2: layout.extended,
            l1_entries: l1.len(),
            snapshots: h.nb_snapshots,
        };
        Ok(QcowDev {
            inner: Arc::new(Inner {
                file,
                file_size,
                info,
                layout,
                l1,
                backing: opts.backing.clone(),
                cache: SharedCache::new(opts.cache_bytes),
                l2_loads: AtomicU64::new(0),
                decompressions: AtomicU64::new(0),
                file_reads: AtomicU64::new(0),
                file_bytes: AtomicU64::new(0),
            }),
        })
    }

    /// What the header says.
    pub fn info(&self) -> &QcowInfo {
        &self.inner.info
    }

    /// The backing file name stored in the image.
    pub fn backing_file(&self) -> Option<&str> {
        self.inner.info.backing_file.as_deref()
    }

    /// Counters since the device was opened.
    pub fn stats(&self) -> QcowStats {
        let i = &self.inner;
        let c = &i.cache.counters;
        let u = i.cache.usage();
        QcowStats {
            l2_loads: i.l2_loads.load(Ordering::Relaxed),
            decompressions: i.decompressions.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            file_reads: i.file_reads.load(Ordering::Relaxed),
            file_bytes: i.file_bytes.load(Ordering::Relaxed),
            cached_bytes: u.bytes,
            peak_bytes: u.peak,
        }
    }
}

fn read_exact(
    file: &dyn BlockDev,
    buf: &mut [u8],
    offset: u64,
) -> std::result::Result<(), QcowError> {
    file.read_at(buf, offset).map_err(|source| QcowError::Read {
        offset,
        len: buf.len() as u64,
        source,
    })
}

impl fmt::Debug for QcowDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QcowDev")
            .field("info", &self.inner.info)
            .field("file", &self.inner.file)
            .field("backing", &self.inner.backing)
            .finish()
    }
}

fn corrupt(what: String, guest: u64) -> Error {
    Error::corrupt(format!("corrupt qcow2 image: {what}")).at(guest)
}

fn failure_to_error(f: Failure, guest: u64) -> Error {
    Error::new(f.kind, f.message).at(guest)
}

impl Inner {
    fn cluster_size(&self) -> u64 {
        self.info.cluster_size
    }

    /// Whether `[off, off+len)` of the file may hold a table or guest
    /// data: not in the header cluster, not over the L1 table.
    fn overlaps_metadata(&self, off: u64, len: u64) -> bool {
        let end = off.saturating_add(len);
        off < self.cluster_size() || (off < self.l1.offset + self.l1.bytes && self.l1.offset < end)
    }

    /// Read `buf.len()` bytes of the file at `off`, zeros past its end
    /// (QEMU reads a short last cluster that way).
    fn read_file(&self, buf: &mut [u8], off: u64, guest: u64) -> Result<()> {
        let avail = self.file_size.saturating_sub(off).min(buf.len() as u64) as usize;
        if avail == 0 && !buf.is_empty() {
            return Err(corrupt(
                format!(
                    "host offset {off} is past the end of the image file ({} bytes)",
                    self.file_size
                ),
                guest,
            ));
        }
        self.file_reads.fetch_add(1, Ordering::Relaxed);
        self.file_bytes.fetch_add(avail as u64, Ordering::Relaxed);
        let (head, tail) = buf.split_at_mut(avail);
        self.file.read_at(head, off).map_err(|e| {
            Error::with_source(
                e.kind(),
                format!("reading {avail} bytes at offset {off} of the qcow2 image"),
                e,
            )
            .at(guest)
        })?;
        tail.fill(0);
        Ok(())
    }

    /// The L2 table at `off`, through the cache.
    fn l2_table(&self, off: u64, guest: u64) -> Result<Bytes> {
        let cs = self.cluster_size();
        if !off.is_multiple_of(cs)
            || off.checked_add(cs).is_none_or(|e| e > self.file_size)
            || self.overlaps_metadata(off, cs)
        {
            return Err(corrupt(
                format!(
                    "L2 table offset {off} is unaligned, past the end of the file ({} bytes) \
                     or over the header or L1 table",
                    self.file_size
                ),
                guest,
            ));
        }
        self.cache
            .get(
                Key::L2(off),
                cs,
                || {
                    self.l2_loads.fetch_add(1, Ordering::Relaxed);
                    let mut t = vec![0u8; cs as usize];
                    self.read_file(&mut t, off, guest).map_err(|e| Failure {
                        kind: e.kind(),
                        message: format!("{e:#}"),
                    })?;
                    Ok(Bytes::from(t))
                },
                |_| true,
            )
            .map_err(|f| failure_to_error(f, guest))
    }

    /// Map `len` bytes at guest `offset` into `out`, merging runs that map
    /// the same way. Stops early (returning where) after `max_l2` table
    /// loads, when given.
    fn plan(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<Piece>,
        max_l2: Option<usize>,
    ) -> Result<u64> {
        let cs = self.cluster_size();
        let bits = self.layout.cluster_bits;
        let per_l2 = self.layout.l2_entries();
        let esize = self.layout.entry_size() as usize;
        let end = offset + len;
        let mut at = offset;
        let mut tables = 0usize;
        while at < end {
            let cluster = at >> bits;
            let l1_index = cluster / per_l2;
            // Guest end of what this L1 entry maps.
            let span_end = end.min((l1_index + 1).saturating_mul(per_l2 << bits));
            let l2_off = self.l1.l2_offset(l1_index).unwrap_or(0);
            if l2_off == 0 {
                push(out, at, span_end - at, Mapping::Unallocated, 0);
                at = span_end;
                continue;
            }
            if max_l2.is_some_and(|m| tables >= m) {
                break;
            }
            tables += 1;
            let table = self.l2_table(l2_off, at)?;
            while at < span_end {
                let cluster = at >> bits;
                let i = ((cluster % per_l2) as usize) * esize;
                let word = u64::from_be_bytes(table[i..i + 8].try_into().unwrap_or([0; 8]));
                let bitmap = if self.layout.extended {
                    u64::from_be_bytes(table[i + 8..i + 16].try_into().unwrap_or([0; 8]))
                } else {
                    0
                };
                let c_start = cluster << bits;
                let c_end = span_end.min(c_start + cs);
                let entry = l2::decode(word, bitmap, &self.layout).map_err(|e| {
                    corrupt(format!("L2 entry of guest cluster at {c_start}: {e}"), at)
                })?;
                match entry {
                    Entry::Whole(Mapping::Data(host)) => {
                        if self.overlaps_metadata(host, cs) {
                            return Err(corrupt(
                                format!("data cluster at {host} overlaps the header or L1 table"),
                                at,
                            ));
                        }
                        push(out, at, c_end - at, Mapping::Data(host + (at - c_start)), 0);
                    }
                    Entry::Whole(m @ Mapping::Compressed { offset, .. }) => {
                        if offset < cs || offset >= self.file_size {
                            return Err(corrupt(
                                format!(
                                    "compressed cluster at {offset} is in the header or past \
                                     the end of the file ({} bytes)",
                                    self.file_size
                                ),
                                at,
                            ));
                        }
                        push(out, at, c_end - at, m, at - c_start);
                    }
                    Entry::Whole(m) => push(out, at, c_end - at, m, 0),
                    Entry::Sub { host, alloc, zero } => {
                        if host != 0 && self.overlaps_metadata(host, cs) {
                            return Err(corrupt(
                                format!("data cluster at {host} overlaps the header or L1 table"),
                                at,
                            ));
                        }
                        let sub = cs / u64::from(SUBCLUSTERS);
                        while at < c_end {
                            let s = ((at - c_start) / sub) as u32;
                            let s_end = c_end.min(c_start + u64::from(s + 1) * sub);
                            let m = if alloc & (1 << s) != 0 {
                                Mapping::Data(host + (at - c_start))
                            } else if zero & (1 << s) != 0 {
                                Mapping::Zero
                            } else {
                                Mapping::Unallocated
                            };
                            push(out, at, s_end - at, m, 0);
                            at = s_end;
                        }
                    }
                }
                at = c_end;
            }
        }
        Ok(at)
    }

    /// A compressed cluster's bytes, through the cache. `raw` holds its
    /// compressed bytes when the caller fetched them already.
    fn cluster(&self, offset: u64, len: u64, raw: Option<&[u8]>, guest: u64) -> Result<Bytes> {
        let cs = self.cluster_size();
        self.cache
            .get(
                Key::Cluster(offset, len),
                cs + len,
                || {
                    let fetched;
                    let input = match raw {
                        Some(r) => r,
                        None => {
                            let n = len.min(self.file_size.saturating_sub(offset));
                            let mut buf = vec![0u8; n as usize];
                            self.read_file(&mut buf, offset, guest)
                                .map_err(|e| Failure {
                                    kind: e.kind(),
                                    message: format!("{e:#}"),
                                })?;
                            fetched = buf;
                            &fetched
                        }
                    };
                    self.decompressions.fetch_add(1, Ordering::Relaxed);
                    let out = compressed::decompress(self.info.compression, input, cs as usize)
                        .map_err(|e| Failure {
                            kind: ErrorKind::Corrupt,
                            message: format!(
                                "corrupt qcow2 image: compressed cluster at offset {offset} \
                                 (guest offset {}): {e}",
                                guest - guest % cs
                            ),
                        })?;
                    Ok(Bytes::from(out))
                },
                |_| true,
            )
            .map_err(|f| failure_to_error(f, guest))
    }

    /// Fetch the compressed clusters of `pieces` that are not cached yet,
    /// those close together in the file in one read each.
    fn prefetch_compressed(&self, pieces: &[Piece]) -> Result<()> {
        // (file start, file end, guest, offset, len) of each missing cluster.
        let mut missing: Vec<(u64, u64, u64, u64, u64)> = Vec::new();
        for p in pieces {
            if let Mapping::Compressed { offset, len } = p.map {
                let end = (offset + len).min(self.file_size);
                // Pieces come in guest order, one per cluster: a cluster
                // can only repeat right after itself.
                if !self.cache.contains(Key::Cluster(offset, len))
                    && !missing.last().is_some_and(|m| m.3 == offset && m.4 == len)
                {
                    missing.push((offset, end, p.guest, offset, len));
                }
            }
        }
        if missing.len() < 2 {
            // One cluster: `cluster` reads it itself.
            return Ok(());
        }
        let mut i = 0;
        while i < missing.len() {
            let (start, mut end) = (missing[i].0, missing[i].1);
            let mut j = i + 1;
            while j < missing.len() {
                let (s, e) = (missing[j].0, missing[j].1);
                if s < start || s > end + COALESCE_GAP || e.max(end) - start > MAX_COALESCED {
                    break;
                }
                end = end.max(e);
                j += 1;
            }
            if j - i >= 2 {
                let mut span = vec![0u8; (end - start) as usize];
                self.read_file(&mut span, start, missing[i].2)?;
                let group = &missing[i..j];
                let decompress = |k: usize| {
                    let (s, e, guest, offset, len) = group[k];
                    let raw = &span[(s - start) as usize..(e - start) as usize];
                    // A failure here is reported by the read that needs it.
                    let _ = self.cluster(offset, len, Some(raw), guest);
                };
                crate::par::par_for(group.len(), decompress);
            }
            i = j;
        }
        Ok(())
    }

    /// The bytes of `len > 0` bytes at `offset` as chunks: slices of
    /// cached clusters, zeros as zeros (the exporter sends them as holes),
    /// the rest read into buffers of their own.
    fn chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<()> {
        let mut pieces = Vec::new();
        self.plan(offset, len, &mut pieces, None)?;
        self.prefetch_compressed(&pieces)?;
        for p in &pieces {
            let n = p.len as usize;
            out.push(match p.map {
                Mapping::Zero => ReadChunk::Zero(p.len),
                Mapping::Unallocated if self.backing.is_none() => ReadChunk::Zero(p.len),
                Mapping::Compressed { offset, len } => {
                    let data = self.cluster(offset, len, None, p.guest)?;
                    let w = p.within as usize;
                    ReadChunk::Bytes(data.slice(w..w + n))
                }
                Mapping::Data(host) => {
                    let mut b = vec![0u8; n];
                    self.read_file(&mut b, host, p.guest)?;
                    ReadChunk::Bytes(Bytes::from(b))
                }
                Mapping::Unallocated => {
                    let mut b = vec![0u8; n];
                    self.read_backing(&mut b, p.guest)?;
                    ReadChunk::Bytes(Bytes::from(b))
                }
            });
        }
        Ok(())
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut pieces = Vec::new();
        self.plan(offset, buf.len() as u64, &mut pieces, None)?;
        self.prefetch_compressed(&pieces)?;
        for p in &pieces {
            let from = (p.guest - offset) as usize;
            let out = &mut buf[from..from + p.len as usize];
            match p.map {
                Mapping::Zero => out.fill(0),
                Mapping::Data(host) => self.read_file(out, host, p.guest)?,
                Mapping::Compressed { offset, len } => {
                    let data = self.cluster(offset, len, None, p.guest)?;
                    let w = p.within as usize;
                    out.copy_from_slice(&data[w..w + out.len()]);
                }
                Mapping::Unallocated => self.read_backing(out, p.guest)?,
            }
        }
        Ok(())
    }

    /// Unallocated bytes: the backing device's, zeros past its end or
    /// without one.
    fn read_backing(&self, out: &mut [u8], guest: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            out.fill(0);
            return Ok(());
        };
        let n = b.size().saturating_sub(guest).min(out.len() as u64) as usize;
        let (head, tail) = out.split_at_mut(n);
        if n > 0 {
            b.read_at(head, guest)?;
        }
        tail.fill(0);
        Ok(())
    }
}

/// Append a run, merging it into the last one when it continues it.
fn push(out: &mut Vec<Piece>, guest: u64, len: u64, map: Mapping, within: u64) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        let merge = match (last.map, map) {
            (Mapping::Unallocated, Mapping::Unallocated) | (Mapping::Zero, Mapping::Zero) => true,
            (Mapping::Data(a), Mapping::Data(b)) => a + last.len == b,
            _ => false,
        };
        if merge && last.guest + last.len == guest {
            last.len += len;
            return;
        }
    }
    out.push(Piece {
        guest,
        len,
        map,
        within,
    });
}

impl BlockDev for QcowDev {
    fn size(&self) -> u64 {
        self.inner.info.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.inner.read(buf, offset)
    }

    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(true);
        }
        // Collected apart: nothing is appended when a piece fails.
        let mut chunks = Vec::new();
        self.inner.chunks(offset, len, &mut chunks)?;
        out.append(&mut chunks);
        Ok(true)
    }

    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let inner = &self.inner;
        let mut pieces = Vec::new();
        let max_l2 = (EXTENTS_L2_BYTES / inner.cluster_size()).clamp(1, EXTENTS_L2_TABLES) as usize;
        inner.plan(offset, len, &mut pieces, Some(max_l2))?;
        for p in &pieces {
            if out.is_full() {
                break;
            }
            match p.map {
                Mapping::Data(_) | Mapping::Compressed { .. } => out.push(p.len, ExtentKind::Data),
                Mapping::Zero => out.push(p.len, ExtentKind::Zero),
                Mapping::Unallocated => {
                    let Some(b) = &inner.backing else {
                        out.push(p.len, ExtentKind::Hole);
                        continue;
                    };
                    // The backing device's own answer where it reaches,
                    // holes past its end.
                    let in_backing = b.size().saturating_sub(p.guest).min(p.len);
                    if in_backing > 0 {
                        let mut sub = ExtentList::new(p.guest);
                        b.extents(p.guest, in_backing, &mut sub)?;
                        sub.truncate_to(p.guest + in_backing);
                        out.extend_from(&sub);
                        if sub.covered() < in_backing {
                            out.close();
                            break;
                        }
                    }
                    out.push(p.len - in_backing, ExtentKind::Hole);
                }
            }
        }
        Ok(())
    }

    fn caps(&self) -> Caps {
        // Read-only and the same bytes for every connection.
        Caps::EXTENTS | Caps::MULTI_CONN
    }

    fn block_size(&self) -> BlockSize {
        BlockSize {
            minimum: 1,
            preferred: self.inner.cluster_size().clamp(4096, 2 << 20) as u32,
            maximum: BlockSize::default().maximum,
        }
    }
}
