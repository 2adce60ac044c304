//! The `.xz` parsers over byte slices, on their own: what [`super::XzIndex`]
//! and [`super::XzDev`] run on bytes a file chooses, exposed for fuzzing
//! and tools.
//!
//! Every function here is total: any input gives a value or an
//! [`XzError`], never a panic or an overflow, in time linear in the input
//! and without allocating more than a constant (the Block Header's filter
//! options).

use super::block::Header;
use super::error::XzError;
use super::index::XzBlock;
use super::{stream, vli};

pub use super::index::{parse_index, IndexSummary, Record};
pub use super::stream::Footer;

/// A multibyte integer (§1.2) at the start of `buf`: its value and length.
pub fn vli(buf: &[u8]) -> Result<(u64, usize), &'static str> {
    vli::decode(buf)
}

/// The Stream Footer (§2.1.2) `buf`, found at file offset `offset`.
pub fn stream_footer(buf: &[u8; 12], offset: u64) -> Result<Footer, XzError> {
    stream::parse_footer(buf, offset)
}

/// Check the Stream Header (§2.1.1) `buf` at `offset` against the flags of
/// its Stream's `footer` (§2.1.2.3).
pub fn stream_header(buf: &[u8; 12], offset: u64, footer: &Footer) -> Result<(), XzError> {
    stream::check_header(buf, offset, footer)
}

/// Parse the Block Header (§3.1) at the start of `buf` (at least the
/// header; more is ignored) with liblzma and check it against `block`, its
/// Index Record: the sizes it declares, its filter chain and the memory
/// decoding would take. Returns the header's size in bytes.
pub fn block_header(buf: &[u8], block: &XzBlock) -> Result<usize, XzError> {
    Header::parse(buf, block)
        .map(|h| h.size())
        .map_err(|what| XzError::corrupt(block.compressed_offset, what))
}
