//! [`XzDev`]: the uncompressed bytes of a block-indexed `.xz` image as a
//! read-only [`BlockDev`], decoding only the Blocks that are read.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use synth::{check_range, BlockDev, BlockSize, Caps, Error, ErrorKind, ExtentKind, ExtentList};
use synth::{ReadChunk, Result};

use super::block::{self, Header};
use super::cache::{all_zero, BlockCache, Decoded, Failure};
use super::error::XzError;
use super::index::{XzBlock, XzIndex};

/// How an [`XzDev`] serves its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XzOptions {
    /// Bytes of decoded Blocks kept for all readers together (LRU).
    pub cache_bytes: u64,
    /// Largest uncompressed Block accepted: every read of a Block decodes
    /// all of it, into a buffer of its size.
    pub max_block: u64,
    /// Serve Blocks bigger than `max_block` anyway (with a warning).
    pub allow_big_blocks: bool,
    /// Decode the next Block in the background during sequential reads.
    pub readahead: bool,
    /// Most memory the index may take ([`super::index::INDEX_BYTES_PER_BLOCK`]
    /// per Block): a file listing more Blocks is refused before anything
    /// is allocated for them.
    pub max_index: u64,
}

impl Default for XzOptions {
    fn default() -> Self {
        XzOptions {
            cache_bytes: 256 << 20,
            max_block: 64 << 20,
            allow_big_blocks: false,
            readahead: true,
            max_index: super::index::DEFAULT_MAX_INDEX,
        }
    }
}

/// What an [`XzDev`] has done so far (for logs, benchmarks and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XzStats {
    /// Blocks decoded (read-aheads included, failures included).
    pub decodes: u64,
    /// Decodes that failed.
    pub decode_failures: u64,
    /// Block lookups answered from the cache (or the known-zero flags).
    pub cache_hits: u64,
    /// Block lookups that waited for another thread's decode of the Block.
    pub waits: u64,
    /// Read-aheads started.
    pub readaheads: u64,
    /// Blocks evicted to stay within the budget.
    pub evictions: u64,
    /// Decoded bytes cached now.
    pub cached_bytes: u64,
    /// Most bytes held at once by cached Blocks and decodes in progress
    /// (their input and output buffers): at most the budget, unless one
    /// Block alone is bigger.
    pub peak_bytes: u64,
    /// Blocks cached now.
    pub cached_blocks: usize,
    /// Blocks known to decode to zeros.
    pub zero_blocks: usize,
}

/// Read-aheads decoding at the same time, at most: one is enough to stay
/// ahead of one sequential reader; two cover a reader that crosses two
/// Blocks in one request.
const MAX_READAHEADS: usize = 2;

/// Blocks decoding to more than this are refused even with
/// `allow_big_blocks` (each is decoded into memory whole).
pub const HARD_MAX_BLOCK: u64 = 4 << 30;

/// Last Blocks of recent reads remembered to recognise sequential streams:
/// several clients (or one reading at several places) each keep theirs.
const RECENT_READS: usize = 16;

/// A read-only block device over the bytes of an `.xz` file (any
/// [`BlockDev`]: a host file, an HTTP resource...). One per image, shared
/// by every connection: its cache of decoded Blocks is one.
pub struct XzDev {
    inner: Arc<Inner>,
}

struct Inner {
    src: Arc<dyn BlockDev>,
    index: XzIndex,
    cache: BlockCache,
    readahead: bool,
    /// [`XzOptions::max_block`]: Blocks within it (and its compressed
    /// limit) are read and decoded in one piece.
    max_block: u64,
    /// The last Block a read touched, to detect sequential access.
    /// The last Block of each recent read, newest last.
    recent: Mutex<VecDeque<usize>>,
    readaheads_in_flight: AtomicUsize,
    readaheads: AtomicU64,
}

/// Compressed size beyond which a Block counts as big whatever its
/// uncompressed size: LZMA2 stores incompressible data in chunks of at
/// most 64 KiB with a 3-byte header, so real Blocks stay far below this;
/// bigger ones are corrupt Indexes that would make us allocate that much.
fn compressed_limit(max_block: u64) -> u64 {
    max_block
        .saturating_add(max_block / 8)
        .saturating_add(1 << 16)
}

/// Whether Block `b` is within `max_block`, compressed and uncompressed:
/// sizes the options vouch for, allocated whole before decoding.
fn within(b: &XzBlock, max_block: u64) -> bool {
    b.uncompressed_size <= max_block && b.total_size() <= compressed_limit(max_block)
}

impl XzDev {
    /// Read the Indexes of `src` (an `.xz` file) and serve its content.
    /// Fails on a corrupt or truncated file, and on Blocks bigger than
    /// `opts.max_block` unless `opts.allow_big_blocks`.
    pub fn open(src: Arc<dyn BlockDev>, opts: &XzOptions) -> std::result::Result<XzDev, XzError> {
        if opts.max_block == 0 {
            return Err(XzError::InvalidOption(
                "the largest accepted block size must not be zero".into(),
            ));
        }
        let index = XzIndex::read_with(&*src, opts.max_index)?;
        // A larger max_block would let Blocks past the hard limit in
        // without even the big-block check below.
        let max_block = opts.max_block.min(HARD_MAX_BLOCK);
        let big = |b: &XzBlock| !within(b, max_block);
        let bigs = index.blocks().filter(big).count();
        if let Some((i, b)) = index.blocks().enumerate().find(|(_, b)| big(b)) {
            let err = XzError::BlockTooBig {
                block: i,
                compressed_offset: b.compressed_offset,
                compressed_size: b.total_size(),
                uncompressed_offset: b.uncompressed_offset,
                uncompressed_size: b.uncompressed_size,
                max_block,
            };
            // Even when allowed, a Block is decoded into memory whole: past
            // this no machine we serve from should try.
            let beyond_any = index.largest_block() > HARD_MAX_BLOCK;
            if !opts.allow_big_blocks || beyond_any {
                return Err(err);
            }
            log::warn!(
                "{bigs} of {} blocks exceed the block size limit ({err}); serving them anyway: \
                 each read of one decodes all of it, into memory",
                index.block_count()
            );
        }
        let blocks = index.block_count();
        Ok(XzDev {
            inner: Arc::new(Inner {
                src,
                cache: BlockCache::new(opts.cache_bytes, blocks),
                index,
                readahead: opts.readahead,
                max_block,
                recent: Mutex::new(VecDeque::with_capacity(RECENT_READS)),
                readaheads_in_flight: AtomicUsize::new(0),
                readaheads: AtomicU64::new(0),
            }),
        })
    }

    /// The Blocks of the image.
    pub fn index(&self) -> &XzIndex {
        &self.inner.index
    }

    /// Counters since the device was opened.
    pub fn stats(&self) -> XzStats {
        let c = self.inner.cache.counters();
        let usage = self.inner.cache.usage();
        XzStats {
            decodes: c.decodes.load(Ordering::Relaxed),
            decode_failures: c.failures.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            readaheads: self.inner.readaheads.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            cached_bytes: usage.bytes,
            peak_bytes: usage.peak,
            cached_blocks: usage.blocks,
            zero_blocks: usage.zero_blocks,
        }
    }
}

impl fmt::Debug for XzDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XzDev")
            .field("size", &self.inner.index.uncompressed_size())
            .field("blocks", &self.inner.index.block_count())
            .field("streams", &self.inner.index.stream_count())
            .field("source", &self.inner.src)
            .finish()
    }
}

/// A block-sized buffer in its own anonymous mapping, so that memory goes
/// back to the system the moment the cache drops the block. (Vec buffers
/// of many MiB from several threads made glibc keep freed blocks in its
/// arenas: the process grew to 2-3× the cache budget.) Pre-faulted in one
/// call, which is cheaper than a page fault per 4 KiB while decoding.
fn anon_buffer(len: usize) -> std::result::Result<memmap2::MmapMut, String> {
    memmap2::MmapOptions::new()
        .len(len.max(1))
        .populate()
        .map_anon()
        .map_err(|e| format!("allocating {len} bytes: {e}"))
}

impl Inner {
    /// Fetch Block `i`'s compressed bytes and decode them, checking its
    /// Block Header against the Index before allocating for its output.
    fn decode(&self, i: usize) -> std::result::Result<Decoded, Failure> {
        let b = self.index.block(i);
        let failure = |kind, what: String| Failure {
            kind,
            message: XzError::Decode {
                block: i,
                compressed_offset: b.compressed_offset,
                compressed_size: b.total_size(),
                uncompressed_offset: b.uncompressed_offset,
                uncompressed_size: b.uncompressed_size,
                what,
            }
            .to_string(),
        };
        let read = |buf: &mut [u8], at: u64| {
            self.src
                .read_at(buf, b.compressed_offset + at)
                .map_err(|e| format!("reading the compressed bytes: {e:#}"))
        };
        if !within(&b, self.max_block) {
            // Allowed past --max-block: the sizes are the Index's word
            // only. The header (at most 1 KiB) is read and checked alone,
            // then the Block streams through a buffer that grows with what
            // really comes out.
            let mut head = [0u8; block::MAX_HEADER_SIZE];
            let head = &mut head[..b.total_size().min(block::MAX_HEADER_SIZE as u64) as usize];
            read(head, 0).map_err(|e| failure(ErrorKind::Io, e))?;
            let header = Header::parse(head, &b).map_err(|e| failure(ErrorKind::Corrupt, e))?;
            let data = header
                .decode_streaming(read)
                .map_err(|e| failure(ErrorKind::Corrupt, e))?;
            return Ok(if all_zero(&data) {
                Decoded::Zero
            } else {
                Decoded::Data(Bytes::from(data))
            });
        }
        // Both sizes are within the limits (a few tens of MiB): one read,
        // one decode.
        let len = b.total_size() as usize;
        let out_len = b.uncompressed_size as usize;
        let mut raw = anon_buffer(len).map_err(|e| failure(ErrorKind::Io, e))?;
        read(&mut raw[..len], 0).map_err(|e| failure(ErrorKind::Io, e))?;
        let header = Header::parse(&raw[..len], &b).map_err(|e| failure(ErrorKind::Corrupt, e))?;
        let mut data = anon_buffer(out_len).map_err(|e| failure(ErrorKind::Io, e))?;
        header
            .decode_buffer(&raw[..len], &mut data[..out_len])
            .map_err(|what| failure(ErrorKind::Corrupt, what))?;
        drop(raw);
        Ok(if all_zero(&data[..out_len]) {
            Decoded::Zero
        } else {
            Decoded::Data(Bytes::from_owner(data).slice(..out_len))
        })
    }

    /// Block `i` through the cache.
    fn block(&self, i: usize) -> Result<Decoded> {
        let b = self.index.block(i);
        let cost = b.uncompressed_size.saturating_add(b.total_size());
        self.cache
            .get(i, cost, || self.decode(i))
            .map_err(|f| Error::new(f.kind, f.message).at(b.uncompressed_offset))
    }

    /// Note that a read touched Blocks `first..=last`; when it continues a
    /// recent read (of any client) into the next Block, decode the Block
    /// after it in the background.
    fn note_access(self: &Arc<Self>, first: usize, last: usize) {
        if !self.readahead {
            return;
        }
        let sequential = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let seq = recent
                .iter()
                .any(|&prev| prev + 1 == first || (prev == first && last > first));
            if let Some(i) = recent.iter().position(|&b| b == first || b + 1 == first) {
                recent.remove(i);
            }
            if recent.len() == RECENT_READS {
                recent.pop_front();
            }
            recent.push_back(last);
            seq
        };
        if !sequential {
            return;
        }
        // Skip empty Blocks (§4.3.2 allows them), but not forever: a
        // crafted Index may hold millions of them.
        let index = &self.index;
        let Some((next, b)) = (last + 1..index.block_count())
            .take(64)
            .map(|i| (i, index.block(i)))
            .find(|(_, b)| b.uncompressed_size > 0)
        else {
            return;
        };
        // A Block the cache would not keep would be decoded twice.
        if b.uncompressed_size > self.cache.budget() || self.cache.is_present(next) {
            return;
        }
        // Never make a client's decode wait for a guess.
        if !self
            .cache
            .has_room(b.uncompressed_size.saturating_add(b.total_size()))
        {
            return;
        }
        if self.readaheads_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_READAHEADS {
            self.readaheads_in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.readaheads.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("xz-readahead".into())
            .spawn(move || {
                if let Err(e) = inner.block(next) {
                    // The reader that wants it will decode it again and
                    // report the error then.
                    log::debug!("read-ahead: {e:#}");
                }
                inner.readaheads_in_flight.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            log::debug!("read-ahead thread: {e:#}");
            self.readaheads_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Call `each(block, decoded, offset in block, len)` for the Blocks
    /// covering `len > 0` bytes at `offset` (already bounds-checked).
    fn for_each(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        mut each: impl FnMut(&Decoded, usize, usize),
    ) -> Result<()> {
        let index = &self.index;
        let end = offset + len;
        let (Some(first), Some(last)) =
            (self.index.block_for(offset), self.index.block_for(end - 1))
        else {
            return Err(Error::out_of_bounds(
                offset,
                len,
                self.index.uncompressed_size(),
            ));
        };
        self.note_access(first, last);
        // From one non-empty Block to the next by binary search: a crafted
        // Index may put millions of empty Blocks (§4.3.2 allows them)
        // between two.
        let mut at = offset;
        while at < end {
            let Some(i) = index.block_for(at) else {
                break;
            };
            let b = index.block(i);
            let within = at - b.uncompressed_offset;
            let n = (end.min(b.uncompressed_end()) - at) as usize;
            each(&self.block(i)?, within as usize, n);
            at += n as u64;
        }
        debug_assert_eq!(at, end);
        Ok(())
    }
}

impl BlockDev for XzDev {
    fn size(&self) -> u64 {
        self.inner.index.uncompressed_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        self.inner
            .for_each(offset, buf.len() as u64, |decoded, within, n| {
                let out = &mut buf[done..done + n];
                match decoded {
                    Decoded::Zero => out.fill(0),
                    Decoded::Data(data) => out.copy_from_slice(&data[within..within + n]),
                }
                done += n;
            })
    }

    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(true);
        }
        // Slices of the cached Blocks: the exporter sends them without a
        // copy, and zero Blocks as zeros.
        let mut chunks = Vec::new();
        self.inner.for_each(offset, len, |decoded, within, n| {
            chunks.push(match decoded {
                Decoded::Zero => ReadChunk::Zero(n as u64),
                Decoded::Data(data) => ReadChunk::Bytes(data.slice(within..within + n)),
            });
        })?;
        out.append(&mut chunks);
        Ok(true)
    }

    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let index = &self.inner.index;
        let end = offset + len;
        let mut at = offset;
        // Non-empty Blocks only, found by binary search (see for_each).
        while at < end && !out.is_full() {
            let Some(i) = index.block_for(at) else {
                break;
            };
            let b = index.block(i);
            let n = end.min(b.uncompressed_end()) - at;
            // Only Blocks seen to decode to zeros are holes; nothing is
            // decoded to answer this.
            let kind = if self.inner.cache.is_zero(i) {
                ExtentKind::Hole
            } else {
                ExtentKind::Data
            };
            out.push(n, kind);
            at += n;
        }
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let index = &self.inner.index;
        // Decode the Blocks of the range, but no more than the cache keeps:
        // beyond that, caching would evict what it just decoded. Non-empty
        // Blocks only, found by binary search (see for_each).
        let mut budget = self.inner.cache.budget();
        let mut at = offset;
        while at < offset + len {
            let Some(i) = index.block_for(at) else {
                break;
            };
            let b = index.block(i);
            if b.uncompressed_size > budget {
                break;
            }
            self.inner.block(i)?;
            budget -= b.uncompressed_size;
            at = b.uncompressed_end();
        }
        Ok(())
    }

    fn caps(&self) -> Caps {
        // Read-only and the same bytes for every connection.
        Caps::EXTENTS | Caps::CACHE | Caps::MULTI_CONN
    }

    fn block_size(&self) -> BlockSize {
        // Requests of a whole (small) Block are the cheapest; past 2 MiB a
        // bigger preferred size only makes clients read more than needed.
        let largest = self.inner.index.largest_block().clamp(4096, 2 << 20);
        BlockSize {
            minimum: 1,
            preferred: 1 << (63 - largest.leading_zeros()),
            maximum: BlockSize::default().maximum,
        }
    }
}
