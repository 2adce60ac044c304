//! The Index (§4) of every Stream of an `.xz` file, read backwards from the
//! end of the file (§2.1.2 Stream Footer → §4 Index → §2.1.1 Stream Header,
//! skipping §2.2 Stream Padding between Streams) into one [`XzIndex`].
//!
//! The source may be a remote file, so it is read in a few large windows
//! from the end: the footer, Index and previous Stream's tail usually come
//! in one read, each Stream Header in one more. Blocks themselves are never
//! read here.
//!
//! The Index is also the one part of a file whose size decides how much
//! memory we hold for as long as the image is served, and a Record takes as
//! little as two bytes (§4.3): a crafted file lists tens of millions of
//! Blocks in a few tens of MiB. So the Index is parsed as it is read, in
//! windows (never held whole), the Records go straight into two arrays of
//! 8 bytes per Block ([`INDEX_BYTES_PER_BLOCK`]), and the number of Records
//! (§4.2) is checked against a budget before anything is allocated for
//! them.

use synth::BlockDev;

use super::error::XzError;
use super::stream::{self, Footer, HEADER_SIZE};
use super::vli::{Vli, VLI_MAX};
use super::Check;

/// One Block (§3) of the image: where its compressed bytes are and which
/// uncompressed bytes they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XzBlock {
    /// Offset of its Block Header in the compressed file.
    pub compressed_offset: u64,
    /// Block Header + Compressed Data + Check, without Block Padding
    /// (§4.3.1 Unpadded Size).
    pub unpadded_size: u64,
    /// Offset of its first byte in the uncompressed image (all Streams
    /// concatenated).
    pub uncompressed_offset: u64,
    /// How many bytes it decodes to (§4.3.2 Uncompressed Size).
    pub uncompressed_size: u64,
    /// Its Stream's integrity check.
    pub check: Check,
    /// Which Stream it belongs to (0 = first in the file).
    pub stream: usize,
}

impl XzBlock {
    /// Bytes the Block takes in the file: the Unpadded Size rounded up to
    /// a multiple of four by Block Padding (§3.3).
    pub fn total_size(&self) -> u64 {
        round_up4(self.unpadded_size)
    }

    /// Offset just past its last uncompressed byte.
    pub fn uncompressed_end(&self) -> u64 {
        self.uncompressed_offset
            .saturating_add(self.uncompressed_size)
    }
}

/// Memory an [`XzIndex`] holds per Block: two `u64` offsets, from which
/// every size is a difference.
pub const INDEX_BYTES_PER_BLOCK: u64 = 16;

/// Memory an [`XzIndex`] holds per Stream.
pub const INDEX_BYTES_PER_STREAM: u64 = std::mem::size_of::<StreamEntry>() as u64;

/// Default index memory budget ([`XzIndex::read_with`],
/// [`super::XzOptions::max_index`]): 64 MiB is four million Blocks, a
/// 64 TiB image in 16 MiB Blocks or 4 TiB in the 1 MiB Blocks of
/// `xz -T0 -0`.
pub const DEFAULT_MAX_INDEX: u64 = 64 << 20;

/// The Blocks of every Stream of an `.xz` file, in uncompressed order.
///
/// Stored compactly ([`INDEX_BYTES_PER_BLOCK`] per Block): Block `i`'s
/// sizes are the differences between its offsets and Block `i + 1`'s (or
/// its Stream's Index, or the image's end). [`XzIndex::block`] rebuilds the
/// full [`XzBlock`].
#[derive(Clone)]
pub struct XzIndex {
    /// Per Block, in file order: the offset of its Block Header, with the
    /// size of its Block Padding (0-3, §3.3) in the two low bits. Those
    /// bits are free: a Stream starts at a multiple of four (§2.2) and its
    /// 12-byte Header (§2.1.1) and padded Blocks keep every Block Header
    /// on one.
    starts: Vec<u64>,
    /// Per Block: the offset of its first uncompressed byte.
    offsets: Vec<u64>,
    /// Per Stream, in file order.
    streams: Vec<StreamEntry>,
    compressed_size: u64,
    uncompressed_size: u64,
    largest_block: u64,
}

impl std::fmt::Debug for XzIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the millions of offsets a big index holds.
        f.debug_struct("XzIndex")
            .field("blocks", &self.block_count())
            .field("streams", &self.stream_count())
            .field("compressed_size", &self.compressed_size)
            .field("uncompressed_size", &self.uncompressed_size)
            .finish()
    }
}

/// A Stream in [`XzIndex`]: its first Block and where its Blocks end.
#[derive(Debug, Clone, Copy)]
struct StreamEntry {
    /// Index of its first Block (that of the next Stream if it has none).
    first_block: u64,
    /// Offset of its Index field (where its last Block ends), with its
    /// Check in the two low bits ([`check_code`]): the Index follows
    /// padded Blocks (§3.3) or the Stream Header (§2.1.1), so it starts at
    /// a multiple of four.
    index_and_check: u64,
}

impl StreamEntry {
    fn index_at(self) -> u64 {
        self.index_and_check & !3
    }

    fn check(self) -> Check {
        match self.index_and_check & 3 {
            0 => Check::None,
            1 => Check::Crc32,
            2 => Check::Crc64,
            _ => Check::Sha256,
        }
    }
}

/// The two-bit code of a Check in [`StreamEntry::index_and_check`].
fn check_code(check: Check) -> u64 {
    match check {
        Check::None => 0,
        Check::Crc32 => 1,
        Check::Crc64 => 2,
        Check::Sha256 => 3,
    }
}

/// Bytes fetched per read while walking backwards: enough for the footer
/// and Index of a multi-terabyte image with 16 MiB Blocks in one read
/// (a Record takes 6 to 8 bytes), small enough not to matter over HTTP.
/// Larger Indexes are read (and parsed) in pieces of this size.
const WINDOW: u64 = 256 << 10;

/// The smallest Index (§4): Indicator, Number of Records (0), Padding to
/// four bytes, CRC32.
const MIN_INDEX: u64 = 8;

fn round_up4(n: u64) -> u64 {
    // Callers pass at most VLI_MAX, but a bare `(n + 3) & !3` would
    // overflow on anything within 3 of u64::MAX.
    n.saturating_add(3) & !3
}

/// The last bytes read from the source, so that walking backwards through
/// footer, Index, padding and headers costs few `read_at` calls.
struct Window<'a> {
    src: &'a dyn BlockDev,
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// The `len` (at most [`WINDOW`]) bytes at `offset` (within the file),
    /// reading a window that ends there and reaches `WINDOW` bytes back if
    /// they are not already here.
    fn get(&mut self, offset: u64, len: u64) -> Result<&[u8], XzError> {
        debug_assert!(len <= WINDOW);
        let end = offset.saturating_add(len);
        let have_end = self.start + self.buf.len() as u64;
        if offset < self.start || end > have_end {
            let start = offset.min(end.saturating_sub(WINDOW));
            // At most WINDOW + len bytes: fits any usize we build for.
            let n = (end - start) as usize;
            let mut buf = vec![0u8; n];
            self.src
                .read_at(&mut buf, start)
                .map_err(|source| XzError::Read {
                    offset: start,
                    len: n as u64,
                    source,
                })?;
            self.start = start;
            self.buf = buf;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.buf[at..at + len as usize])
    }

    fn get12(&mut self, offset: u64) -> Result<[u8; 12], XzError> {
        let mut out = [0u8; 12];
        out.copy_from_slice(self.get(offset, 12)?);
        Ok(out)
    }
}

/// One Record of an Index (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// §4.3.1 Unpadded Size: Block Header + Compressed Data + Check.
    pub unpadded_size: u64,
    /// §4.3.2 Uncompressed Size.
    pub uncompressed_size: u64,
}

/// What a whole, valid Index field says about its Stream's Blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexSummary {
    /// §4.2 Number of Records.
    pub records: u64,
    /// Bytes the Blocks take in the file, Block Padding included (§3.3):
    /// how far before the Index the Stream Header is (minus its 12 bytes).
    pub blocks_size: u64,
    /// Sum of the Uncompressed Sizes (at most 2^63 - 1).
    pub uncompressed_size: u64,
}

/// Where a parsed Index's Records go.
pub(super) trait RecordSink {
    /// The Number of Records (§4.2), checked against the Index size,
    /// before any Record. An error stops the parse at once (a budget).
    fn count(&mut self, records: u64) -> Result<(), XzError>;
    /// The next valid Record: at most `records` of them.
    fn record(&mut self, record: Record);
}

impl<F: FnMut(Record)> RecordSink for F {
    fn count(&mut self, _: u64) -> Result<(), XzError> {
        Ok(())
    }

    fn record(&mut self, record: Record) {
        self(record)
    }
}

/// Where [`IndexParser`] is in the Index (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// §4.1 Index Indicator.
    Indicator,
    /// §4.2 Number of Records.
    Count,
    /// §4.3.1 of Record `n`.
    Unpadded,
    /// §4.3.2 of Record `n`.
    Uncompressed,
    /// §4.4 Index Padding.
    Padding,
    /// Past a structural error: the rest is only hashed.
    Failed,
}

/// A streaming parser of one Index field (§4): fed its bytes in pieces of
/// any size, it keeps a few counters whatever the number of Records, and
/// hands each valid Record to a [`RecordSink`].
///
/// Errors up to the Number of Records (a missing Indicator, a count the
/// Index size cannot hold) are reported at once: nothing else of the Index
/// can be trusted, and its size can be anything up to 16 GiB (§2.1.2.2).
/// A bad Record, padding or sum is reported at the end, after the CRC32
/// (§4.5): when that fails too, the Index is damaged (or the Backward Size
/// wrong), which says more than "invalid Unpadded Size".
pub(super) struct IndexParser {
    /// File offset of the Index (for messages).
    offset: u64,
    /// Its size (the Stream Footer's Backward Size, §2.1.2.2).
    size: u64,
    /// Bytes fed so far.
    pos: u64,
    field: Field,
    vli: Vli,
    /// Where the multibyte integer being decoded started.
    field_at: u64,
    count: u64,
    done: u64,
    unpadded: u64,
    summary: IndexSummary,
    crc: crc32fast::Hasher,
    stored_crc: [u8; 4],
    /// Where (in the Index) the last Record ends, once it has.
    records_end: u64,
    /// The first structural error, reported after the CRC32.
    first_error: Option<XzError>,
}

impl IndexParser {
    /// A parser of the `size`-byte Index at file offset `offset`.
    pub fn new(offset: u64, size: u64) -> Result<IndexParser, XzError> {
        // §4: at least 8 bytes; §2.1.2.2: a multiple of four.
        if size < MIN_INDEX || !size.is_multiple_of(4) {
            return Err(XzError::corrupt(
                offset,
                format!("an Index of {size} bytes (Backward Size wrong?)"),
            ));
        }
        Ok(IndexParser {
            offset,
            size,
            pos: 0,
            field: Field::Indicator,
            vli: Vli::default(),
            field_at: 0,
            count: 0,
            done: 0,
            unpadded: 0,
            summary: IndexSummary::default(),
            crc: crc32fast::Hasher::new(),
            stored_crc: [0; 4],
            records_end: 0,
            first_error: None,
        })
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.pos
    }

    /// Feed the next bytes of the Index (at most [`Self::remaining`]).
    pub fn push(&mut self, chunk: &[u8], sink: &mut impl RecordSink) -> Result<(), XzError> {
        let crc_at = self.size - 4;
        let remaining = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        let chunk = &chunk[..chunk.len().min(remaining)];
        // §4.5: the CRC32 covers everything before the CRC32 field.
        let body_len = crc_at.saturating_sub(self.pos).min(chunk.len() as u64) as usize;
        let (body, crc) = chunk.split_at(body_len);
        self.crc.update(body);
        for &byte in body {
            if self.field != Field::Failed {
                if let Err(e) = self.step(byte, sink) {
                    if self.field == Field::Failed {
                        self.first_error.get_or_insert(e);
                    } else {
                        return Err(e);
                    }
                }
            }
            self.pos += 1;
        }
        for &byte in crc {
            self.stored_crc[(self.pos - crc_at) as usize] = byte;
            self.pos += 1;
        }
        Ok(())
    }

    /// One byte of the fields before the CRC32. An error with `field`
    /// set to `Failed` is deferred; any other is reported at once.
    fn step(&mut self, byte: u8, sink: &mut impl RecordSink) -> Result<(), XzError> {
        let at = self.offset.saturating_add(self.pos);
        let field = self.field;
        if field == Field::Indicator {
            // §4.1: the Index starts with a 0x00 byte (where a Block would
            // start with its nonzero Block Header Size).
            if byte != 0 {
                return Err(XzError::corrupt(
                    at,
                    "no Index where the Stream Footer's Backward Size says it starts",
                ));
            }
            self.field = Field::Count;
            return Ok(());
        }
        if field == Field::Padding {
            // §4.4: zero bytes up to a multiple of four; the CRC32 field
            // follows at once, so more than three bytes of them means the
            // Records ended early.
            if self.pos >= round_up4(self.records_end) {
                return self.fail(self.records_end_error());
            }
            if byte != 0 {
                return self.fail(XzError::corrupt(at, "nonzero Index Padding"));
            }
            return Ok(());
        }
        if !self.vli.is_partial() {
            self.field_at = at;
        }
        let what = match field {
            Field::Count => "Number of Records",
            Field::Unpadded => "Unpadded Size",
            _ => "Uncompressed Size",
        };
        let value = match self.vli.push(byte) {
            Ok(None) => return Ok(()),
            Ok(Some(v)) => v,
            Err(e) => {
                let err = XzError::corrupt(self.field_at, format!("Index {what}: {e}"));
                return if field == Field::Count {
                    Err(err)
                } else {
                    self.fail(err)
                };
            }
        };
        match field {
            Field::Count => {
                // §4.2. A Record takes 2 to 18 bytes (two multibyte
                // integers, §4.3), so the Index size bounds the count both
                // ways: checked before anything is allocated for the
                // Records or read past this point.
                let header = self.pos + 1;
                let least = header
                    .saturating_add(value.saturating_mul(2))
                    .saturating_add(4);
                let most = header
                    .saturating_add(value.saturating_mul(18))
                    .saturating_add(3 + 4);
                if least > self.size || most < self.size {
                    return Err(XzError::corrupt(
                        self.field_at,
                        format!(
                            "the Index claims {value} Records in {} bytes (Backward Size wrong?)",
                            self.size
                        ),
                    ));
                }
                self.count = value;
                self.summary.records = value;
                sink.count(value)?;
                self.field = self.next_record_field();
            }
            Field::Unpadded => {
                // §4.3.1: "the actual minimum value for Unpadded Size is
                // five" and it must leave room for the Block Padding to a
                // multiple of 4.
                if !(5..=(VLI_MAX & !3)).contains(&value) {
                    return self.fail(XzError::corrupt(
                        self.field_at,
                        format!("Index Record {}: invalid Unpadded Size {value}", self.done),
                    ));
                }
                self.unpadded = value;
                self.field = Field::Uncompressed;
            }
            _ => {
                let blocks = self
                    .summary
                    .blocks_size
                    .checked_add(round_up4(self.unpadded));
                let uncompressed = self
                    .summary
                    .uncompressed_size
                    .checked_add(value)
                    .filter(|&u| u <= VLI_MAX);
                let (Some(blocks), Some(uncompressed)) = (blocks, uncompressed) else {
                    return self.fail(XzError::corrupt(
                        self.field_at,
                        format!(
                            "Index Record {}: the Block sizes add up to more than 2^63 bytes",
                            self.done
                        ),
                    ));
                };
                self.summary.blocks_size = blocks;
                self.summary.uncompressed_size = uncompressed;
                sink.record(Record {
                    unpadded_size: self.unpadded,
                    uncompressed_size: value,
                });
                self.done += 1;
                self.field = self.next_record_field();
            }
        }
        Ok(())
    }

    /// After the count or a Record: the next Record, or the padding.
    fn next_record_field(&mut self) -> Field {
        if self.done < self.count {
            Field::Unpadded
        } else {
            self.records_end = self.pos + 1;
            Field::Padding
        }
    }

    fn records_end_error(&self) -> XzError {
        XzError::corrupt(
            self.offset.saturating_add(self.records_end),
            format!(
                "the Index Records end at byte {} of an Index of {} bytes (Backward Size wrong?)",
                self.records_end, self.size
            ),
        )
    }

    /// Defer `err` until the CRC32 is checked.
    fn fail(&mut self, err: XzError) -> Result<(), XzError> {
        self.field = Field::Failed;
        Err(err)
    }

    /// The Index is all fed: check the CRC32 and that the fields filled
    /// it exactly.
    pub fn finish(self) -> Result<IndexSummary, XzError> {
        if self.remaining() != 0 {
            return Err(XzError::corrupt(
                self.offset.saturating_add(self.pos),
                format!(
                    "the Index ends after {} of its {} bytes",
                    self.pos, self.size
                ),
            ));
        }
        let crc_at = self.size - 4;
        let stored = u32::from_le_bytes(self.stored_crc);
        let actual = self.crc.clone().finalize();
        if stored != actual {
            return Err(XzError::corrupt(
                self.offset.saturating_add(crc_at),
                format!("Index CRC32 is {stored:#010x}, the Index hashes to {actual:#010x}"),
            ));
        }
        if let Some(e) = self.first_error {
            return Err(e);
        }
        if self.field != Field::Padding {
            return Err(XzError::corrupt(
                self.offset.saturating_add(crc_at),
                format!(
                    "the Index Records run past the end of an Index of {} bytes (Backward Size wrong?)",
                    self.size
                ),
            ));
        }
        if round_up4(self.records_end) != crc_at {
            return Err(self.records_end_error());
        }
        Ok(self.summary)
    }
}

/// Parse a whole Index field (`buf`, found at file offset `offset`): Index
/// Indicator, Number of Records, the Records, Index Padding and CRC32
/// (§4.1-§4.5), handing each Record to `each` in order. Total: any `buf`
/// gives a summary or an error, in time linear in its length and without
/// allocating.
pub fn parse_index(
    buf: &[u8],
    offset: u64,
    each: &mut dyn FnMut(Record),
) -> Result<IndexSummary, XzError> {
    let mut parser = IndexParser::new(offset, buf.len() as u64)?;
    parser.push(buf, &mut |r| each(r))?;
    parser.finish()
}

/// Collects the Records of every Stream, last Stream first (the order
/// they are read in), into the compact arrays of an [`XzIndex`], within a
/// memory budget.
struct Builder {
    /// Per Block: Block Padding in the low bits and, while its Stream's
    /// Index is parsed, the offset from the Stream's first Block; then the
    /// offset in the file.
    starts: Vec<u64>,
    /// Per Block: the Uncompressed Size, made offsets by [`Builder::finish`].
    sizes: Vec<u64>,
    /// Per Stream, last first; `first_block` holds its number of Blocks
    /// until [`Builder::finish`].
    streams: Vec<StreamEntry>,
    budget: u64,
    /// Offset of the Index being parsed (for messages).
    index_at: u64,
    /// Where the Stream's next Block starts, from its first Block.
    next_start: u64,
}

impl Builder {
    /// Memory `blocks` Blocks in `streams` Streams take.
    fn cost(blocks: u64, streams: u64) -> u64 {
        blocks
            .saturating_mul(INDEX_BYTES_PER_BLOCK)
            .saturating_add(streams.saturating_mul(INDEX_BYTES_PER_STREAM))
    }

    fn begin_stream(&mut self, index_at: u64) -> Result<(), XzError> {
        self.index_at = index_at;
        self.next_start = 0;
        // An empty Stream costs an entry too (a file of millions of them
        // is 32 bytes each).
        let needed = Self::cost(self.starts.len() as u64, self.streams.len() as u64 + 1);
        if needed > self.budget {
            return Err(XzError::IndexTooBig {
                offset: index_at,
                blocks: self.starts.len() as u64,
                streams: self.streams.len() as u64 + 1,
                needed,
                budget: self.budget,
            });
        }
        self.streams
            .try_reserve(1)
            .map_err(|_| self.alloc_error(needed))
    }

    fn alloc_error(&self, needed: u64) -> XzError {
        XzError::Unsupported {
            offset: self.index_at,
            what: format!("cannot allocate {needed} bytes for the Index"),
        }
    }

    /// The Stream whose Index was just parsed starts at `start`: make its
    /// Blocks' offsets absolute and note where its Index is.
    fn end_stream(&mut self, start: u64, check: Check, summary: &IndexSummary) {
        let first_block = start + HEADER_SIZE;
        // Block Headers follow the 12-byte Stream Header at a multiple of
        // four (§2.1.1, §2.2): the low two bits stay the padding's.
        debug_assert_eq!(first_block % 4, 0);
        debug_assert_eq!(self.index_at % 4, 0);
        let n = summary.records as usize;
        let from = self.starts.len() - n;
        for s in &mut self.starts[from..] {
            *s += first_block;
        }
        self.streams.push(StreamEntry {
            first_block: summary.records,
            index_and_check: self.index_at | check_code(check),
        });
    }

    /// Put everything in file order and make the sizes offsets.
    fn finish(mut self, compressed_size: u64) -> Result<XzIndex, XzError> {
        // Streams were read last first, each one's Blocks in order:
        // reversing all, then each Stream's run, orders both.
        self.starts.reverse();
        self.sizes.reverse();
        self.streams.reverse();
        let mut first = 0usize;
        for st in &mut self.streams {
            let n = st.first_block as usize;
            self.starts[first..first + n].reverse();
            self.sizes[first..first + n].reverse();
            st.first_block = first as u64;
            first += n;
        }
        let mut total = 0u64;
        let mut largest = 0u64;
        for (i, s) in self.sizes.iter_mut().enumerate() {
            let size = *s;
            *s = total;
            largest = largest.max(size);
            total = total
                .checked_add(size)
                .filter(|&t| t <= VLI_MAX)
                .ok_or_else(|| {
                    XzError::corrupt(
                        self.starts[i] & !3,
                        "the uncompressed sizes add up to more than 2^63 bytes",
                    )
                })?;
        }
        // Several Streams grew the arrays by doubling; one Stream reserved
        // exactly its count.
        self.starts.shrink_to_fit();
        self.sizes.shrink_to_fit();
        self.streams.shrink_to_fit();
        Ok(XzIndex {
            starts: self.starts,
            offsets: self.sizes,
            streams: self.streams,
            compressed_size,
            uncompressed_size: total,
            largest_block: largest,
        })
    }
}

impl RecordSink for Builder {
    fn count(&mut self, records: u64) -> Result<(), XzError> {
        let blocks = (self.starts.len() as u64).saturating_add(records);
        let streams = self.streams.len() as u64 + 1;
        let needed = Self::cost(blocks, streams);
        if needed > self.budget {
            return Err(XzError::IndexTooBig {
                offset: self.index_at,
                blocks,
                streams,
                needed,
                budget: self.budget,
            });
        }
        let n = usize::try_from(records).map_err(|_| self.alloc_error(needed))?;
        self.starts
            .try_reserve(n)
            .and_then(|()| self.sizes.try_reserve(n))
            .map_err(|_| self.alloc_error(needed))
    }

    fn record(&mut self, r: Record) {
        // The parser checked 5 <= Unpadded Size <= VLI_MAX & !3 and that
        // the Stream's sizes add up within 2^63: no overflow here.
        let total = round_up4(r.unpadded_size);
        self.starts
            .push(self.next_start | (total - r.unpadded_size));
        self.sizes.push(r.uncompressed_size);
        self.next_start = self.next_start.saturating_add(total);
    }
}

impl XzIndex {
    /// Read the Indexes of every Stream from the end of `src`, the bytes of
    /// an `.xz` file, within the default budget ([`DEFAULT_MAX_INDEX`]).
    /// Reads a few large windows, never the Blocks.
    pub fn read(src: &dyn BlockDev) -> Result<XzIndex, XzError> {
        Self::read_with(src, DEFAULT_MAX_INDEX)
    }

    /// [`XzIndex::read`], refusing ([`XzError::IndexTooBig`]) an index that
    /// would take more than `max_bytes` of memory
    /// ([`INDEX_BYTES_PER_BLOCK`] per Block, [`INDEX_BYTES_PER_STREAM`]
    /// per Stream) before allocating for it.
    pub fn read_with(src: &dyn BlockDev, max_bytes: u64) -> Result<XzIndex, XzError> {
        let size = src.size();
        let truncated = |what: String| XzError::Truncated { size, what };
        if size < 2 * HEADER_SIZE {
            return Err(truncated(
                "too small for a Stream Header and a Stream Footer".into(),
            ));
        }
        // Every structure is a multiple of four bytes (§2.1, §2.2), so a
        // file whose size is not lost some bytes at the end.
        if size & 3 != 0 {
            return Err(truncated(
                "the size of an .xz file is always a multiple of four bytes".into(),
            ));
        }
        let mut win = Window {
            src,
            start: size,
            buf: Vec::new(),
        };
        let mut builder = Builder {
            starts: Vec::new(),
            sizes: Vec::new(),
            streams: Vec::new(),
            budget: max_bytes,
            index_at: 0,
            next_start: 0,
        };
        // Streams from last to first.
        let mut pos = size;
        loop {
            // §2.2 Stream Padding: zero bytes in units of four. A Stream
            // Footer ends in "YZ", so its last four bytes are never zero.
            let padding_end = pos;
            while pos >= 4 && win.get(pos - 4, 4)? == [0u8; 4] {
                pos -= 4;
            }
            if pos == 0 {
                return Err(XzError::corrupt(
                    0,
                    if builder.streams.is_empty() {
                        "the file holds only zero bytes".to_string()
                    } else {
                        format!("{padding_end} zero bytes before the first Stream Header")
                    },
                ));
            }
            if pos < 2 * HEADER_SIZE {
                return Err(XzError::corrupt(
                    0,
                    format!("{pos} bytes before offset {pos}: too few for a Stream"),
                ));
            }
            let footer_at = pos - HEADER_SIZE;
            let footer = stream::parse_footer(&win.get12(footer_at)?, footer_at)?;
            pos = Self::read_stream(&mut win, footer_at, &footer, &mut builder)?;
            if pos == 0 {
                break;
            }
        }
        builder.finish(size)
    }

    /// Read the Index before the footer at `footer_at` into `builder` and
    /// check the Stream Header it leads to; returns where the Stream
    /// starts.
    fn read_stream(
        win: &mut Window<'_>,
        footer_at: u64,
        footer: &Footer,
        builder: &mut Builder,
    ) -> Result<u64, XzError> {
        let index_at = footer_at
            .checked_sub(footer.index_size)
            .filter(|&at| at >= HEADER_SIZE)
            .ok_or_else(|| {
                XzError::corrupt(
                    footer_at + 4,
                    format!(
                        "the Stream Footer's Backward Size ({} bytes) reaches before the start of the file",
                        footer.index_size
                    ),
                )
            })?;
        builder.begin_stream(index_at)?;
        // §2.1.2.2 allows Indexes of up to 16 GiB: parsed a window at a
        // time, and the parser refuses a Number of Records the size cannot
        // hold (or the budget) in the first window.
        let mut parser = IndexParser::new(index_at, footer.index_size)?;
        let mut at = index_at;
        while parser.remaining() > 0 {
            let n = parser.remaining().min(WINDOW);
            parser.push(win.get(at, n)?, builder)?;
            at += n;
        }
        let summary = parser.finish()?;
        let start = index_at
            .checked_sub(summary.blocks_size)
            .and_then(|at| at.checked_sub(HEADER_SIZE))
            .ok_or_else(|| {
                XzError::corrupt(
                    index_at,
                    format!(
                        "the Index lists {} Blocks that do not fit in the {index_at} bytes before it",
                        summary.records
                    ),
                )
            })?;
        stream::check_header(&win.get12(start)?, start, footer)?;
        builder.end_stream(start, footer.check, &summary);
        Ok(start)
    }

    /// Number of Blocks (empty ones included).
    pub fn block_count(&self) -> usize {
        self.starts.len()
    }

    /// Block `i` (in uncompressed and file order).
    ///
    /// # Panics
    ///
    /// If `i` is not below [`XzIndex::block_count`], like indexing a slice.
    pub fn block(&self, i: usize) -> XzBlock {
        let start = self.starts[i];
        // The Stream holding it: the last one starting at or before it
        // (empty Streams start where the next one does).
        let s = self
            .streams
            .partition_point(|st| st.first_block <= i as u64)
            .saturating_sub(1);
        let stream = self.streams[s];
        let stream_end = self
            .streams
            .get(s + 1)
            .map_or(self.starts.len() as u64, |next| next.first_block);
        let end = if (i as u64) + 1 < stream_end {
            self.starts[i + 1] & !3
        } else {
            stream.index_at()
        };
        let compressed_offset = start & !3;
        let uncompressed_offset = self.offsets[i];
        let uncompressed_end = self
            .offsets
            .get(i + 1)
            .copied()
            .unwrap_or(self.uncompressed_size);
        XzBlock {
            compressed_offset,
            unpadded_size: end - compressed_offset - (start & 3),
            uncompressed_offset,
            uncompressed_size: uncompressed_end - uncompressed_offset,
            check: stream.check(),
            stream: s,
        }
    }

    /// Block `i`, or `None` past the last.
    pub fn get(&self, i: usize) -> Option<XzBlock> {
        (i < self.block_count()).then(|| self.block(i))
    }

    /// Every Block, in uncompressed (and file) order.
    pub fn blocks(&self) -> impl ExactSizeIterator<Item = XzBlock> + DoubleEndedIterator + '_ {
        (0..self.block_count()).map(|i| self.block(i))
    }

    /// The Block holding uncompressed byte `offset` (never an empty one),
    /// by binary search; `None` past the end.
    pub fn block_for(&self, offset: u64) -> Option<usize> {
        if offset >= self.uncompressed_size {
            return None;
        }
        // The last Block starting at or before `offset`: an empty Block
        // starts where the next one does, so it is never the last.
        let i = self.offsets.partition_point(|&o| o <= offset);
        Some(i.saturating_sub(1))
    }

    /// Size of the uncompressed image (all Streams).
    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    /// Size of the compressed file, Stream Padding included.
    pub fn compressed_size(&self) -> u64 {
        self.compressed_size
    }

    /// Number of Streams in the file.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The largest uncompressed Block size (0 without Blocks).
    pub fn largest_block(&self) -> u64 {
        self.largest_block
    }

    /// Bytes of memory the index holds (allocated capacity):
    /// [`INDEX_BYTES_PER_BLOCK`] per Block and [`INDEX_BYTES_PER_STREAM`]
    /// per Stream.
    pub fn heap_bytes(&self) -> usize {
        (self.starts.capacity() + self.offsets.capacity()) * std::mem::size_of::<u64>()
            + self.streams.capacity() * std::mem::size_of::<StreamEntry>()
    }
}
