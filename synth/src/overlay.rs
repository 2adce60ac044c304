//! A copy-on-write overlay: writes land in a sparse page store, reads see
//! through to the inner device wherever nothing was written. Clients of a
//! generated disk write here and never touch the host tree.
//!
//! The store keeps fixed-size pages in a `BTreeMap` (range queries make
//! extents and reads of sparse stores cheap), either in memory or in an
//! unlinked temporary file at the page's own offset (the temp file stays as
//! sparse as the overlay). A page is `Mem` (bytes here), `Stored` (bytes in
//! the temp file) or `Zero` (reads zeros, nothing stored). With no inner
//! device at all the overlay is a blank sparse disk: the `memory` source.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};

use crate::dev::{BlockDev, BlockSize, Caps, Holds, Named, ReadChunk, ZeroFlags};
use crate::error::{check_range, Error, ErrorKind, Result};
use crate::extent::{ExtentKind, ExtentList};

/// Where an overlay keeps written pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverlayStore {
    /// In process memory.
    #[default]
    Memory,
    /// In an unlinked temporary file (in `$TMPDIR`), sparse.
    TempFile,
}

/// Settings of a [`CowOverlay`].
#[derive(Debug, Clone)]
pub struct OverlayOptions {
    /// Where pages live.
    pub store: OverlayStore,
    /// Page size in bytes: a power of two between 512 and 1 MiB.
    pub page_size: u64,
    /// Directory of the temp file ([`OverlayStore::TempFile`]); `$TMPDIR`
    /// if `None`.
    pub temp_dir: Option<PathBuf>,
    /// Space shared with other overlays: written pages are charged to it,
    /// and a write that would exceed it fails with `NoSpace`.
    pub quota: Option<Arc<SpaceQuota>>,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            store: OverlayStore::Memory,
            page_size: 32 * 1024,
            temp_dir: None,
            quota: None,
        }
    }
}

/// A byte budget several overlays draw from (e.g. all of tmpdisk's
/// clients): what their written pages take, at most `limit`.
#[derive(Debug)]
pub struct SpaceQuota {
    limit: u64,
    used: AtomicU64,
}

impl SpaceQuota {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        SpaceQuota {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Charge `n` bytes if they fit.
    pub fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    /// Charge `n` bytes already spent, even past the limit.
    pub fn force_take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// The error of a write the budget has no room for.
    pub fn used_up(&self) -> Error {
        Error::new(
            ErrorKind::NoSpace,
            format!("the disk budget of {} bytes is used up", self.limit),
        )
    }

    /// Give `n` charged bytes back.
    pub fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

#[derive(Debug, Clone)]
enum Page {
    Mem(Bytes),
    Stored,
    Zero,
}

/// One run of a read, as planned under the lock and served after it.
#[derive(Debug)]
enum Run {
    /// Nothing written: the inner device (or zeros).
    Inner,
    /// Written as zeros.
    Zero,
    /// Written bytes in memory (a reference, no copy).
    Mem(Bytes),
    /// Written bytes in the temp file, at the same offset.
    Stored,
}

/// A writable copy-on-write view of an inner device (or of zeros).
#[derive(Debug)]
pub struct CowOverlay {
    inner: Option<Arc<dyn BlockDev>>,
    size: u64,
    page: u64,
    file: Option<Arc<File>>,
    quota: Option<Arc<SpaceQuota>>,
    pages: RwLock<BTreeMap<u64, Page>>,
}

impl CowOverlay {
    /// Writable view over `inner`; writes never reach `inner`.
    pub fn new(inner: Arc<dyn BlockDev>, opts: OverlayOptions) -> Result<Self> {
        let size = inner.size();
        Self::build(Some(inner), size, opts)
    }

    /// A blank sparse writable disk of `size` bytes.
    pub fn blank(size: u64, opts: OverlayOptions) -> Result<Self> {
        Self::build(None, size, opts)
    }

    fn build(inner: Option<Arc<dyn BlockDev>>, size: u64, opts: OverlayOptions) -> Result<Self> {
        let page = opts.page_size;
        if !page.is_power_of_two() || !(512..=1 << 20).contains(&page) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("overlay page size {page} is not a power of two between 512 and 1 MiB"),
            ));
        }
        let file = match opts.store {
            OverlayStore::Memory => None,
            OverlayStore::TempFile => {
                // Unlinked at once: nothing is left behind, even if the
                // process is killed.
                let f = match &opts.temp_dir {
                    Some(dir) => tempfile::tempfile_in(dir),
                    None => tempfile::tempfile(),
                };
                Some(Arc::new(f.map_err(|e| {
                    Error::io("creating the overlay temp file", e)
                })?))
            }
        };
        Ok(CowOverlay {
            inner,
            size,
            page,
            file,
            quota: opts.quota,
            pages: RwLock::new(BTreeMap::new()),
        })
    }

    /// Number of pages holding written data (for tests and stats).
    pub fn pages_in_use(&self) -> usize {
        self.read_pages()
            .values()
            .filter(|p| !matches!(p, Page::Zero))
            .count()
    }

    fn read_pages(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Page>> {
        // A panic while holding the lock cannot leave a page half-updated
        // (pages are replaced whole), so a poisoned lock is still usable.
        self.pages.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_pages(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Page>> {
        self.pages.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Length of page `p` (the last page may be short).
    fn page_len(&self, p: u64) -> u64 {
        self.page.min(self.size - p * self.page)
    }

    /// Read `buf` from the inner device (or zeros), not looking at pages.
    fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.inner {
            Some(inner) => inner.read_at(buf, offset),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn store_file(&self) -> &File {
        self.file
            .as_deref()
            .expect("Stored pages exist only with a temp file")
    }

    /// Walk `len` bytes at `offset` as runs: `None` for see-through gaps,
    /// `Some(page)` for a stored page, each with (device offset, length).
    fn walk<F>(&self, pages: &BTreeMap<u64, Page>, offset: u64, len: u64, mut f: F) -> Result<()>
    where
        F: FnMut(Option<(u64, &Page)>, u64, u64) -> Result<()>,
    {
        let end = offset + len;
        if len == 0 {
            return Ok(());
        }
        let first = offset / self.page;
        let last = (end - 1) / self.page;
        let mut pos = offset;
        for (&p, page) in pages.range(first..=last) {
            let pstart = p * self.page;
            if pstart > pos {
                f(None, pos, pstart - pos)?;
                pos = pstart;
            }
            let n = (pstart + self.page).min(end) - pos;
            f(Some((p, page)), pos, n)?;
            pos += n;
        }
        if pos < end {
            f(None, pos, end - pos)?;
        }
        Ok(())
    }

    /// What `len` bytes at `offset` are made of now, as `(offset, length,
    /// run)`; adjacent see-through runs are merged. Only this takes the
    /// lock: the bytes are read after it is let go. (A write racing with the
    /// read lands before or after it, as NBD allows for overlapping
    /// requests in flight.)
    fn plan(&self, offset: u64, len: u64) -> Vec<(u64, u64, Run)> {
        let pages = self.read_pages();
        let mut runs: Vec<(u64, u64, Run)> = Vec::new();
        let _ = self.walk(&pages, offset, len, |page, at, n| {
            let run = match page {
                None => Run::Inner,
                Some((_, Page::Zero)) => Run::Zero,
                Some((p, Page::Mem(b))) => {
                    let i = (at - p * self.page) as usize;
                    Run::Mem(b.slice(i..i + n as usize))
                }
                Some((_, Page::Stored)) => Run::Stored,
            };
            match (runs.last_mut(), &run) {
                (Some((_, ln, Run::Inner)), Run::Inner)
                | (Some((_, ln, Run::Zero)), Run::Zero)
                | (Some((_, ln, Run::Stored)), Run::Stored) => *ln += n,
                _ => runs.push((at, n, run)),
            }
            Ok(())
        });
        runs
    }

    /// The current bytes of page `p` as an owned buffer (for a partial
    /// update), taking it out of the map. An unwritten page is read from
    /// the inner device: from `prefetched` (read before the lock was
    /// taken) when there.
    fn take_page_bytes(
        &self,
        pages: &mut BTreeMap<u64, Page>,
        p: u64,
        prefetched: &mut Vec<(u64, BytesMut)>,
    ) -> Result<BytesMut> {
        let plen = self.page_len(p) as usize;
        let start = p * self.page;
        match pages.remove(&p) {
            Some(Page::Mem(b)) => Ok(b
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]))),
            Some(Page::Zero) => Ok(BytesMut::zeroed(plen)),
            Some(Page::Stored) => {
                let mut v = BytesMut::zeroed(plen);
                self.store_file()
                    .read_exact_at(&mut v, start)
                    .map_err(|e| Error::io("reading the overlay temp file", e).at(start))?;
                Ok(v)
            }
            None => {
                if let Some(i) = prefetched.iter().position(|(q, _)| *q == p) {
                    return Ok(prefetched.swap_remove(i).1);
                }
                let mut v = BytesMut::zeroed(plen);
                self.read_inner(&mut v, start)?;
                Ok(v)
            }
        }
    }

    /// The inner bytes of the partially covered pages at the ends of `len`
    /// bytes at `offset` that nothing was written to yet, read before the
    /// write lock is taken (the device beneath may be slow).
    fn prefetch_partial(&self, offset: u64, len: u64) -> Result<Vec<(u64, BytesMut)>> {
        if self.inner.is_none() {
            return Ok(Vec::new());
        }
        let end = offset + len;
        let mut ends = vec![offset / self.page, (end - 1) / self.page];
        ends.dedup();
        let partial: Vec<u64> = {
            let pages = self.read_pages();
            ends.into_iter()
                .filter(|&p| {
                    let (ps, pl) = (p * self.page, self.page_len(p));
                    let whole = offset <= ps && ps + pl <= end;
                    !whole && !pages.contains_key(&p)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(partial.len());
        for p in partial {
            let mut v = BytesMut::zeroed(self.page_len(p) as usize);
            self.read_inner(&mut v, p * self.page)?;
            out.push((p, v));
        }
        Ok(out)
    }

    /// Whether page `p` holds written data (and so is charged).
    fn holds_data(pages: &BTreeMap<u64, Page>, p: u64) -> bool {
        matches!(pages.get(&p), Some(Page::Mem(_) | Page::Stored))
    }

    /// Charge, all at once, the pages `len` bytes at `offset` will newly
    /// store (whole pages only if `whole_pages_store`): a write that does
    /// not fit fails before anything changes. Returns the pages charged.
    fn precharge(
        &self,
        pages: &BTreeMap<u64, Page>,
        offset: u64,
        len: u64,
        whole_pages_store: bool,
    ) -> Result<Vec<u64>> {
        let Some(q) = &self.quota else {
            return Ok(Vec::new());
        };
        let end = offset + len;
        let mut charged = Vec::new();
        let mut need = 0;
        for p in offset / self.page..=(end - 1) / self.page {
            let (ps, pl) = (p * self.page, self.page_len(p));
            let whole = offset <= ps && ps + pl <= end;
            if (whole && !whole_pages_store) || Self::holds_data(pages, p) {
                continue;
            }
            need += pl;
            charged.push(p);
        }
        if q.try_take(need) {
            Ok(charged)
        } else {
            Err(q.used_up().at(offset))
        }
    }

    /// Give page `p`'s charge back.
    fn refund(&self, p: u64) {
        if let Some(q) = &self.quota {
            q.give(self.page_len(p));
        }
    }

    /// Store `data` as the whole content of page `p`.
    fn put_page(&self, pages: &mut BTreeMap<u64, Page>, p: u64, data: Bytes) -> Result<()> {
        match &self.file {
            None => {
                pages.insert(p, Page::Mem(data));
            }
            Some(f) => {
                f.write_all_at(&data, p * self.page)
                    .map_err(|e| Error::io("writing the overlay temp file", e).at(p * self.page))?;
                pages.insert(p, Page::Stored);
            }
        }
        Ok(())
    }

    /// Make page `p` read as zeros without storing anything.
    fn zero_page(&self, pages: &mut BTreeMap<u64, Page>, p: u64) {
        if Self::holds_data(pages, p) {
            self.refund(p);
        }
        if let (Some(f), Some(Page::Stored)) = (&self.file, pages.get(&p)) {
            // Give the space back; failure only costs disk space.
            let _ = rustix::fs::fallocate(
                f,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                p * self.page,
                self.page_len(p),
            );
        }
        if self.inner.is_none() {
            pages.remove(&p);
        } else {
            pages.insert(p, Page::Zero);
        }
    }

    /// Apply `op` to every page overlapped by `len` bytes at `offset`:
    /// whole pages get `whole(p)`, partial pages `part(buf, at, n)` on
    /// their current bytes.
    fn update<W, P>(
        &self,
        offset: u64,
        len: u64,
        whole_pages_store: bool,
        whole: W,
        part: P,
    ) -> Result<()>
    where
        W: FnMut(&mut BTreeMap<u64, Page>, Range<u64>, u64) -> Result<()>,
        P: FnMut(&mut [u8], usize, u64),
    {
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let mut prefetched = self.prefetch_partial(offset, len)?;
        let mut pages = self.write_pages();
        let charged = self.precharge(&pages, offset, len, whole_pages_store)?;
        let result = self.update_locked(&mut pages, offset, len, &mut prefetched, whole, part);
        if result.is_err() {
            // Pages a failed update did not get to store give their charge
            // back.
            for p in charged {
                if !Self::holds_data(&pages, p) {
                    self.refund(p);
                }
            }
        }
        result
    }

    fn update_locked<W, P>(
        &self,
        pages: &mut BTreeMap<u64, Page>,
        offset: u64,
        len: u64,
        prefetched: &mut Vec<(u64, BytesMut)>,
        mut whole: W,
        mut part: P,
    ) -> Result<()>
    where
        W: FnMut(&mut BTreeMap<u64, Page>, Range<u64>, u64) -> Result<()>,
        P: FnMut(&mut [u8], usize, u64),
    {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let p = pos / self.page;
            let pstart = p * self.page;
            let plen = self.page_len(p);
            let n = (pstart + plen).min(end) - pos;
            if pos == pstart && n == plen {
                // The run of whole pages from here, in one call (one pwrite
                // into the temp file for a big write).
                let mut last = p + 1;
                while last * self.page < end && last * self.page + self.page_len(last) <= end {
                    last += 1;
                }
                whole(pages, p..last, pos)?;
                pos = (last * self.page).min(self.size);
                continue;
            } else {
                let mut buf = self.take_page_bytes(pages, p, prefetched)?;
                part(&mut buf, (pos - pstart) as usize, pos);
                self.put_page(pages, p, buf.freeze())?;
            }
            pos += n;
        }
        Ok(())
    }
}

impl BlockDev for CowOverlay {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        // Plan under the lock, read without it: the device beneath may be
        // slow (HTTP, xz), and one slow read must not stall every writer
        // (and, behind a waiting writer, every reader).
        let plan = self.plan(offset, buf.len() as u64);
        for (at, n, run) in plan {
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            match run {
                Run::Inner => self.read_inner(dst, at)?,
                Run::Zero => dst.fill(0),
                Run::Mem(b) => dst.copy_from_slice(&b),
                Run::Stored => self
                    .store_file()
                    .read_exact_at(dst, at)
                    .map_err(|e| Error::io("reading the overlay temp file", e).at(at))?,
            }
        }
        Ok(())
    }

    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        check_range(offset, len, self.size)?;
        for (at, n, run) in self.plan(offset, len) {
            match run {
                Run::Inner => match &self.inner {
                    None => out.push(ReadChunk::Zero(n)),
                    Some(inner) => {
                        if !inner.read_chunks(at, n, out)? {
                            let mut v = vec![0u8; n as usize];
                            inner.read_at(&mut v, at)?;
                            out.push(ReadChunk::Bytes(v.into()));
                        }
                    }
                },
                Run::Zero => out.push(ReadChunk::Zero(n)),
                Run::Mem(b) => out.push(ReadChunk::Bytes(b)),
                Run::Stored => {
                    let file = self
                        .file
                        .clone()
                        .expect("Stored pages exist only with a temp file");
                    out.push(ReadChunk::File {
                        file,
                        offset: at,
                        len: n,
                        check: None,
                    });
                }
            }
        }
        Ok(true)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.update(
            offset,
            buf.len() as u64,
            true,
            |pages, run, at| {
                if let Some(f) = &self.file {
                    // The whole run straight from the request buffer to the
                    // temp file, in one pwrite.
                    let i = (at - offset) as usize;
                    let bytes: u64 = run.clone().map(|p| self.page_len(p)).sum();
                    f.write_all_at(&buf[i..i + bytes as usize], at)
                        .map_err(|e| Error::io("writing the overlay temp file", e).at(at))?;
                    for p in run {
                        pages.insert(p, Page::Stored);
                    }
                    return Ok(());
                }
                for p in run {
                    let i = (p * self.page - offset) as usize;
                    let src = &buf[i..i + self.page_len(p) as usize];
                    // Each page is its own allocation, so overwriting a page
                    // nobody is reading right now is a copy in place: no
                    // allocation and no free on the hot path. (Slicing one
                    // buffer per write into pages made every overwrite an
                    // mmap/munmap pair for big writes, and kept whole old
                    // buffers alive while any page of them survived.)
                    if let Some(Page::Mem(b)) = pages.get_mut(&p) {
                        match std::mem::take(b).try_into_mut() {
                            Ok(mut m) if m.len() == src.len() => {
                                m.copy_from_slice(src);
                                *b = m.freeze();
                            }
                            // A reader still holds the old page: leave it
                            // to them and store a fresh copy.
                            _ => *b = Bytes::copy_from_slice(src),
                        }
                        continue;
                    }
                    self.put_page(pages, p, Bytes::copy_from_slice(src))?;
                }
                Ok(())
            },
            |page, i, at| {
                let src_start = (at - offset) as usize;
                let n = (page.len() - i).min(buf.len() - src_start);
                page[i..i + n].copy_from_slice(&buf[src_start..src_start + n]);
            },
        )
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        // Trim is advisory: only whole pages are dropped.
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let first = offset.div_ceil(self.page);
        let mut pages = self.write_pages();
        let mut p = first;
        while p * self.page < end && p * self.page + self.page_len(p) <= end {
            self.zero_page(&mut pages, p);
            p += 1;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> Result<()> {
        // Zeroing whole pages stores nothing, so it is always fast.
        self.update(
            offset,
            len,
            false,
            |pages, run, _| {
                for p in run {
                    self.zero_page(pages, p);
                }
                Ok(())
            },
            |page, i, at| {
                let n = (page.len() - i).min((offset + len - at) as usize);
                page[i..i + n].fill(0);
            },
        )
    }

    fn flush(&self) -> Result<()> {
        // Overlay data is thrown away with the process: nothing to persist.
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        match &self.inner {
            Some(inner) => inner.cache(offset, len),
            None => Ok(()),
        }
    }

    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        check_range(offset, len, self.size)?;
        for (at, n, run) in self.plan(offset, len) {
            if out.is_full() {
                break;
            }
            match run {
                Run::Inner => match &self.inner {
                    None => out.push(n, ExtentKind::Hole),
                    Some(inner) => {
                        let mut sub = ExtentList::new(at);
                        while sub.covered() < n && !out.is_full() && !sub.is_full() {
                            let before = sub.covered();
                            inner.extents(sub.end(), n - before, &mut sub)?;
                            if sub.covered() == before {
                                sub.push(n - before, ExtentKind::Data);
                            }
                        }
                        sub.truncate_to(at + n);
                        for e in sub.as_slice() {
                            out.push(e.len, e.kind);
                        }
                        if sub.covered() < n {
                            // A partial answer: nothing after the gap.
                            out.close();
                        }
                    }
                },
                Run::Zero => out.push(n, ExtentKind::Hole),
                Run::Mem(_) | Run::Stored => out.push(n, ExtentKind::Data),
            }
        }
        Ok(())
    }

    /// What the device beneath holds: the overlay's written pages are
    /// what clients wrote, which a watcher of the writes knows better (the
    /// web view counts them as they happen, without this lock).
    fn describe(&self, offset: u64, len: u64, out: &mut Vec<Named>) -> Result<()> {
        check_range(offset, len, self.size)?;
        match &self.inner {
            Some(inner) => inner.describe(offset, len, out),
            None => {
                if len > 0 {
                    out.push(Named {
                        offset,
                        len,
                        holds: Holds::Free("blank disk".into()),
                        within: None,
                    });
                }
                Ok(())
            }
        }
    }

    fn caps(&self) -> Caps {
        let passthrough = self
            .inner
            .as_ref()
            .map_or(Caps::empty(), |i| i.caps() & Caps::CACHE);
        Caps::WRITE
            | Caps::FLUSH
            | Caps::TRIM
            | Caps::ZERO
            | Caps::FAST_ZERO
            | Caps::EXTENTS
            | passthrough
    }

    fn block_size(&self) -> BlockSize {
        self.inner
            .as_ref()
            .map_or_else(BlockSize::default, |i| i.block_size())
    }
}

impl Drop for CowOverlay {
    fn drop(&mut self) {
        // Everything written goes away with the overlay: its charge too.
        if let Some(q) = &self.quota {
            let pages = self.pages.get_mut().unwrap_or_else(|p| p.into_inner());
            let held: u64 = pages
                .iter()
                .filter(|(_, pg)| matches!(pg, Page::Mem(_) | Page::Stored))
                .map(|(&p, _)| self.page.min(self.size - p * self.page))
                .sum();
            q.give(held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Backing, RegionMapBuilder};
    use crate::testing::check_dev;

    fn base() -> (Arc<dyn BlockDev>, Vec<u8>) {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8 + 1).collect();
        let mut b = RegionMapBuilder::new();
        b.push_bytes("data", data.clone()).unwrap();
        b.push("zeros", 31_000, Backing::Zero).unwrap();
        let mut expected = data;
        expected.resize(131_000, 0);
        (Arc::new(b.finish()), expected)
    }

    fn opts(store: OverlayStore) -> OverlayOptions {
        OverlayOptions {
            store,
            page_size: 4096,
            ..OverlayOptions::default()
        }
    }

    #[test]
    fn quota_charges_written_pages_and_gives_them_back() {
        for store in [OverlayStore::Memory, OverlayStore::TempFile] {
            let quota = Arc::new(SpaceQuota::new(3 * 4096));
            let dir = tempfile::tempdir().unwrap();
            let ov = CowOverlay::blank(
                1 << 20,
                OverlayOptions {
                    quota: Some(quota.clone()),
                    temp_dir: Some(dir.path().to_path_buf()),
                    ..opts(store)
                },
            )
            .unwrap();
            ov.write_at(&[1; 4096], 0).unwrap();
            ov.write_at(&[2; 100], 4096 + 10).unwrap(); // a partial page
            ov.write_at(&[3; 4096], 0).unwrap(); // rewrites cost nothing
            assert_eq!(quota.used(), 2 * 4096, "{store:?}");
            let err = ov.write_at(&[4; 8192], 65536).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NoSpace, "{store:?}");
            // A refused write stores nothing.
            let mut buf = [9u8; 8192];
            ov.read_at(&mut buf, 65536).unwrap();
            assert_eq!(buf, [0; 8192]);
            ov.write_at(&[5; 50], 8192 + 1).unwrap(); // the third page fits
            assert_eq!(quota.used(), 3 * 4096);
            ov.trim(0, 4096).unwrap();
            assert_eq!(quota.used(), 2 * 4096);
            ov.write_zeroes(4096, 4096, ZeroFlags::default()).unwrap();
            assert_eq!(quota.used(), 4096);
            drop(ov);
            assert_eq!(quota.used(), 0, "{store:?}");
            // The temp file was in temp_dir, unlinked.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    fn exercise(ov: &CowOverlay, expected: &mut [u8]) {
        let mut w = |off: usize, data: &[u8]| {
            ov.write_at(data, off as u64).unwrap();
            expected[off..off + data.len()].copy_from_slice(data);
        };
        w(0, &[0xEE; 10]);
        w(4090, &[0x11; 20]);
        w(8192, &[0x22; 8192]);
        w(130_990, &[0x33; 10]);
        ov.write_zeroes(20_000, 10_000, ZeroFlags::default())
            .unwrap();
        expected[20_000..30_000].fill(0);
        ov.write_zeroes(
            5,
            3,
            ZeroFlags {
                may_trim: true,
                fast: true,
            },
        )
        .unwrap();
        expected[5..8].fill(0);
    }

    #[test]
    fn memory_overlay_passes_conformance() {
        let (inner, mut expected) = base();
        let ov = CowOverlay::new(inner, opts(OverlayStore::Memory)).unwrap();
        exercise(&ov, &mut expected);
        let bounds: Vec<u64> = (0..32).map(|i| i * 4096).collect();
        check_dev(&ov, &expected, &bounds);
    }

    #[test]
    fn tempfile_overlay_passes_conformance() {
        let (inner, mut expected) = base();
        let ov = CowOverlay::new(inner, opts(OverlayStore::TempFile)).unwrap();
        exercise(&ov, &mut expected);
        let bounds: Vec<u64> = (0..32).map(|i| i * 4096).collect();
        check_dev(&ov, &expected, &bounds);
    }

    #[test]
    fn overlay_over_a_fragmented_map_never_calls_data_zero() {
        // Like a FAT image: zeros, a boot sector, zeros, a FAT, zeros, file
        // data. With REQ_ONE (limit 1) the see-through answer used to merge
        // a later zero run into the first, over the boot sector.
        let mut b = RegionMapBuilder::new();
        let mut expected = Vec::new();
        for (i, (zeros, data)) in [(10_000u64, 512u64), (3_000, 1_000), (20_000, 7_000), (5, 5)]
            .into_iter()
            .enumerate()
        {
            b.push("gap", zeros, Backing::Zero).unwrap();
            expected.resize(expected.len() + zeros as usize, 0);
            let bytes = vec![i as u8 + 1; data as usize];
            b.push_bytes("data", bytes.clone()).unwrap();
            expected.extend_from_slice(&bytes);
        }
        b.push("tail", 9_000, Backing::Zero).unwrap();
        expected.resize(expected.len() + 9_000, 0);
        let map: Arc<dyn BlockDev> = Arc::new(b.finish());
        for store in [OverlayStore::Memory, OverlayStore::TempFile] {
            let ov = CowOverlay::new(map.clone(), opts(store)).unwrap();
            let mut expected = expected.clone();
            ov.write_at(&[0xAB; 100], 40_000).unwrap();
            expected[40_000..40_100].fill(0xAB);
            let bounds: Vec<u64> = (0..=14).map(|i| i * 4096).collect();
            check_dev(&ov, &expected, &bounds);
        }
    }

    /// An inner device whose reads of its first page block until released.
    #[derive(Debug)]
    struct SlowDev {
        gate: std::sync::Mutex<bool>,
        cv: std::sync::Condvar,
        entered: std::sync::atomic::AtomicBool,
    }

    impl BlockDev for SlowDev {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            if offset < 4096 {
                self.entered.store(true, Ordering::SeqCst);
                let mut open = self.gate.lock().unwrap();
                while !*open {
                    open = self.cv.wait(open).unwrap();
                }
            }
            buf.fill(7);
            Ok(())
        }
    }

    #[test]
    fn a_slow_read_beneath_stalls_no_writer_and_no_other_reader() {
        for store in [OverlayStore::Memory, OverlayStore::TempFile] {
            let slow = Arc::new(SlowDev {
                gate: std::sync::Mutex::new(false),
                cv: std::sync::Condvar::new(),
                entered: std::sync::atomic::AtomicBool::new(false),
            });
            let ov = Arc::new(CowOverlay::new(slow.clone(), opts(store)).unwrap());
            let reader = {
                let ov = ov.clone();
                std::thread::spawn(move || {
                    let mut b = [0u8; 100];
                    ov.read_at(&mut b, 0).unwrap();
                    b
                })
            };
            while !slow.entered.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // The slow read is in progress: writes (whole and partial pages,
            // which read the page beneath first) and reads elsewhere finish.
            let t0 = std::time::Instant::now();
            ov.write_at(&[1u8; 8192], 8192).unwrap();
            ov.write_at(&[2u8; 10], 20_000).unwrap();
            let mut b = [0u8; 20];
            ov.read_at(&mut b, 19_995).unwrap();
            assert_eq!(b[..5], [7; 5]);
            assert_eq!(b[5..15], [2; 10]);
            ov.write_zeroes(65536, 4096, ZeroFlags::default()).unwrap();
            let mut list = ExtentList::new(8192);
            ov.extents(8192, 8192, &mut list).unwrap();
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "{store:?}"
            );
            assert!(!reader.is_finished(), "the slow read was not slow");
            *slow.gate.lock().unwrap() = true;
            slow.cv.notify_all();
            assert_eq!(reader.join().unwrap(), [7u8; 100]);
        }
    }

    #[test]
    fn a_big_write_to_the_temp_file_store_lands_whole() {
        let (inner, mut expected) = base();
        let ov = CowOverlay::new(inner, opts(OverlayStore::TempFile)).unwrap();
        // Partial first page, eleven whole pages, partial last page.
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        ov.write_at(&data, 3000).unwrap();
        expected[3000..53_000].copy_from_slice(&data);
        let bounds: Vec<u64> = (0..32).map(|i| i * 4096).collect();
        check_dev(&ov, &expected, &bounds);
    }

    #[test]
    fn blank_overlay_reports_holes_and_frees_trimmed_pages() {
        let ov = CowOverlay::blank(1 << 20, opts(OverlayStore::Memory)).unwrap();
        ov.write_at(&[1u8; 8192], 65536).unwrap();
        assert_eq!(ov.pages_in_use(), 2);
        let mut out = ExtentList::new(0);
        ov.extents(0, 1 << 20, &mut out).unwrap();
        let kinds: Vec<(u64, ExtentKind)> = out.iter_offsets().map(|(o, e)| (o, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, ExtentKind::Hole),
                (65536, ExtentKind::Data),
                (73728, ExtentKind::Hole)
            ]
        );
        ov.trim(65536, 8192).unwrap();
        assert_eq!(ov.pages_in_use(), 0);
    }

    #[test]
    fn overlay_never_writes_the_inner_device() {
        let (inner, expected) = base();
        let ov = CowOverlay::new(inner.clone(), opts(OverlayStore::Memory)).unwrap();
        ov.write_at(&[0u8; 50_000], 1000).unwrap();
        let mut buf = vec![0u8; expected.len()];
        inner.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, expected);
    }

    #[test]
    fn write_past_end_fails_and_changes_nothing() {
        let ov = CowOverlay::blank(10_000, opts(OverlayStore::Memory)).unwrap();
        let err = ov.write_at(&[1u8; 100], 9_950).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfBounds);
        assert_eq!(ov.pages_in_use(), 0);
    }

    #[test]
    fn bad_page_size_is_rejected() {
        let o = OverlayOptions {
            page_size: 3000,
            ..Default::default()
        };
        assert_eq!(
            CowOverlay::blank(1, o).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
