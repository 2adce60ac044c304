//! The Index (§4) of every Stream of an `.xz` file, read backwards from the
//! end of the file (§2.1.2 Stream Footer → §4 Index → §2.1.1 Stream Header,
//! skipping §2.2 Stream Padding between Streams) into one [`XzIndex`].
//!
//! The source may be a remote file, so it is read in a few large windows
//! from the end: the footer, Index and previous Stream's tail usually come
//! in one read, each Stream Header in one more. Blocks themselves are never
//! read here.

use synth::BlockDev;

use super::error::XzError;
use super::stream::{self, Footer, HEADER_SIZE};
use super::vli::{self, VLI_MAX};
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
        self.uncompressed_offset + self.uncompressed_size
    }
}

/// The Blocks of every Stream of an `.xz` file, in uncompressed order.
#[derive(Debug, Clone)]
pub struct XzIndex {
    blocks: Vec<XzBlock>,
    streams: usize,
    compressed_size: u64,
    uncompressed_size: u64,
}

/// Bytes fetched per read while walking backwards: enough for the footer
/// and Index of a multi-terabyte image with 16 MiB Blocks in one read
/// (a Record takes 6 to 8 bytes), small enough not to matter over HTTP.
const WINDOW: u64 = 256 << 10;

/// Largest Index accepted: 256 MiB is over 30 million Records, a 500 TiB
/// image in 16 MiB Blocks.
const MAX_INDEX: u64 = 256 << 20;

fn round_up4(n: u64) -> u64 {
    (n + 3) & !3
}

/// The last bytes read from the source, so that walking backwards through
/// footer, Index, padding and headers costs few `read_at` calls.
struct Window<'a> {
    src: &'a dyn BlockDev,
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// The `len` bytes at `offset` (within the file), reading a window
    /// that ends there and reaches `WINDOW` bytes back if they are not
    /// already here.
    fn get(&mut self, offset: u64, len: u64) -> Result<&[u8], XzError> {
        let end = offset + len;
        let have_end = self.start + self.buf.len() as u64;
        if offset < self.start || end > have_end {
            let start = offset.min(end.saturating_sub(WINDOW));
            let n = usize::try_from(end - start).map_err(|_| XzError::Unsupported {
                offset,
                what: format!("a {len}-byte structure does not fit in memory"),
            })?;
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
pub(super) struct Record {
    pub unpadded_size: u64,
    pub uncompressed_size: u64,
}

/// Parse a whole Index field (`buf`, found at `offset`): Index Indicator,
/// Number of Records, the Records, Index Padding and CRC32 (§4.1-§4.5).
pub(super) fn parse_index(buf: &[u8], offset: u64) -> Result<Vec<Record>, XzError> {
    // §4.1: the Index starts with a 0x00 byte (where a Block would start
    // with its nonzero Block Header Size).
    if buf.len() < 8 || buf[0] != 0x00 {
        return Err(XzError::corrupt(
            offset,
            "no Index where the Stream Footer's Backward Size says it starts",
        ));
    }
    // §4.5: the CRC32 covers everything before it. Checked before parsing
    // so that a wrong Backward Size reads as such, not as a bad Record.
    let body = &buf[..buf.len() - 4];
    let crc_at = buf.len() - 4;
    let stored = u32::from_le_bytes([
        buf[crc_at],
        buf[crc_at + 1],
        buf[crc_at + 2],
        buf[crc_at + 3],
    ]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(XzError::corrupt(
            offset + crc_at as u64,
            format!("Index CRC32 is {stored:#010x}, the Index hashes to {actual:#010x}"),
        ));
    }

    let mut pos = 1usize;
    let next = |what: &str, pos: &mut usize| -> Result<u64, XzError> {
        let (v, n) = vli::decode(&body[*pos..])
            .map_err(|e| XzError::corrupt(offset + *pos as u64, format!("Index {what}: {e}")))?;
        *pos += n;
        Ok(v)
    };
    // §4.2 Number of Records. Each Record takes at least two bytes, which
    // bounds the count by the Index size before anything is allocated.
    let count = next("Number of Records", &mut pos)?;
    if count > (body.len() as u64) / 2 {
        return Err(XzError::corrupt(
            offset + 1,
            format!("the Index claims {count} Records in {} bytes", buf.len()),
        ));
    }
    let mut records = Vec::with_capacity(count as usize);
    for i in 0..count {
        let at = offset + pos as u64;
        // §4.3.1: "the actual minimum value for Unpadded Size is five"
        // and it must leave room for the Block Padding to a multiple of 4.
        let unpadded_size = next("Unpadded Size", &mut pos)?;
        if !(5..=(VLI_MAX & !3)).contains(&unpadded_size) {
            return Err(XzError::corrupt(
                at,
                format!("Index Record {i}: invalid Unpadded Size {unpadded_size}"),
            ));
        }
        let uncompressed_size = next("Uncompressed Size", &mut pos)?;
        records.push(Record {
            unpadded_size,
            uncompressed_size,
        });
    }
    // §4.4: zero bytes up to a multiple of four, then the CRC32.
    let padded = round_up4(pos as u64) as usize;
    if padded != body.len() {
        return Err(XzError::corrupt(
            offset + pos as u64,
            format!(
                "the Index Records end at byte {pos} of an Index of {} bytes (Backward Size wrong?)",
                buf.len()
            ),
        ));
    }
    if let Some(bad) = body[pos..].iter().position(|&b| b != 0) {
        return Err(XzError::corrupt(
            offset + (pos + bad) as u64,
            "nonzero Index Padding",
        ));
    }
    Ok(records)
}

impl XzIndex {
    /// Read the Indexes of every Stream from the end of `src`, the bytes of
    /// an `.xz` file. Reads a few large windows, never the Blocks.
    pub fn read(src: &dyn BlockDev) -> Result<XzIndex, XzError> {
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
        // Streams from last to first, each with its Records.
        let mut streams: Vec<(u64, Check, Vec<Record>)> = Vec::new();
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
                    if streams.is_empty() {
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
            let (start, records) = Self::read_stream(&mut win, footer_at, &footer)?;
            streams.push((start, footer.check, records));
            pos = start;
            if pos == 0 {
                break;
            }
        }

        let stream_count = streams.len();
        let mut blocks = Vec::new();
        let mut uncompressed = 0u64;
        for (n, (start, check, records)) in streams.into_iter().rev().enumerate() {
            let mut at = start + HEADER_SIZE;
            for r in records {
                let end = uncompressed
                    .checked_add(r.uncompressed_size)
                    .filter(|&e| e <= VLI_MAX)
                    .ok_or_else(|| {
                        XzError::corrupt(
                            at,
                            "the uncompressed sizes add up to more than 2^63 bytes",
                        )
                    })?;
                blocks.push(XzBlock {
                    compressed_offset: at,
                    unpadded_size: r.unpadded_size,
                    uncompressed_offset: uncompressed,
                    uncompressed_size: r.uncompressed_size,
                    check,
                    stream: n,
                });
                uncompressed = end;
                at += round_up4(r.unpadded_size);
            }
        }
        Ok(XzIndex {
            streams: stream_count,
            blocks,
            compressed_size: size,
            uncompressed_size: uncompressed,
        })
    }

    /// Read the Index before the footer at `footer_at` and check the
    /// Stream Header it leads to; returns where the Stream starts.
    fn read_stream(
        win: &mut Window<'_>,
        footer_at: u64,
        footer: &Footer,
    ) -> Result<(u64, Vec<Record>), XzError> {
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
        // §2.1.2.2 allows Indexes of up to 16 GiB; the CRC32 guards against
        // damage, not against a hostile file making us allocate that much.
        if footer.index_size > MAX_INDEX {
            return Err(XzError::Unsupported {
                offset: index_at,
                what: format!(
                    "an Index of {} bytes (more than {} MiB: tens of millions of Blocks)",
                    footer.index_size,
                    MAX_INDEX >> 20
                ),
            });
        }
        let records = parse_index(win.get(index_at, footer.index_size)?, index_at)?;
        let blocks_size = records
            .iter()
            .try_fold(0u64, |sum, r| sum.checked_add(round_up4(r.unpadded_size)));
        let start = blocks_size
            .and_then(|b| index_at.checked_sub(b))
            .and_then(|at| at.checked_sub(HEADER_SIZE))
            .ok_or_else(|| {
                XzError::corrupt(
                    index_at,
                    format!(
                        "the Index lists {} Blocks that do not fit in the {index_at} bytes before it",
                        records.len()
                    ),
                )
            })?;
        stream::check_header(&win.get12(start)?, start, footer)?;
        Ok((start, records))
    }

    /// Every Block, in uncompressed (and file) order.
    pub fn blocks(&self) -> &[XzBlock] {
        &self.blocks
    }

    /// The Block holding uncompressed byte `offset` (never an empty one),
    /// by binary search; `None` past the end.
    pub fn block_for(&self, offset: u64) -> Option<usize> {
        let i = self
            .blocks
            .partition_point(|b| b.uncompressed_end() <= offset);
        (i < self.blocks.len()).then_some(i)
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
        self.streams
    }

    /// The largest uncompressed Block size (0 without Blocks).
    pub fn largest_block(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.uncompressed_size)
            .max()
            .unwrap_or(0)
    }
}
