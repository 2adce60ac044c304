//! Random access to block-indexed `.xz` images, and a packer that makes
//! them (xz-file-format-1.2.x).
//!
//! An `.xz` file is one or more Streams (§2.1), each a sequence of
//! independently compressed Blocks (§3) followed by an Index (§4) that
//! lists every Block's compressed and uncompressed size. Reading the
//! Indexes from the end of the file therefore maps any uncompressed offset
//! to one Block, which decodes on its own: a disk image compressed with
//! `xz --block-size=16MiB` (or `xz -T0`, or [`pack()`]) can be served
//! without decompressing what nobody reads.
//!
//! - `vli`: multibyte integers (§1.2);
//! - `stream`: Stream Header, Stream Footer and Stream Padding (§2.1, §2.2);
//! - [`index`]: the Index of every Stream, read backwards from the end of
//!   the file into an [`XzIndex`] (16 bytes per Block, within a budget);
//! - [`parse`]: the parsers of the above over byte slices, for fuzzing;
//! - `block`: decoding one Block (§3) with liblzma's block decoder, its
//!   Block Header checked against the Index before anything is allocated
//!   for it;
//! - `cache`: decoded Blocks shared by all readers (byte budget, LRU,
//!   single flight);
//! - [`mod@dev`]: [`XzDev`], the read-only [`synth::BlockDev`] over it all;
//! - [`mod@pack`]: the multithreaded encoder that makes such images.
//!
//! ```
//! use std::sync::Arc;
//! use formats::xz::{XzDev, XzOptions};
//! use synth::BlockDev;
//!
//! /// The first sector of a compressed disk image (any device: a file, HTTP...).
//! fn first_sector(compressed: Arc<dyn BlockDev>) -> Result<[u8; 512], Box<dyn std::error::Error>> {
//!     let disk = XzDev::open(compressed, &XzOptions::default())?;
//!     let mut sector = [0u8; 512];
//!     disk.read_at(&mut sector, 0)?;
//!     Ok(sector)
//! }
//! ```

mod block;
mod cache;
pub mod dev;
mod error;
pub mod index;
pub mod pack;
pub mod parse;
mod stream;
mod vli;

#[cfg(test)]
mod tests;

pub use dev::{XzDev, XzOptions, XzStats};
pub use error::XzError;
pub use index::{XzBlock, XzIndex, DEFAULT_MAX_INDEX, INDEX_BYTES_PER_BLOCK};
pub use pack::{pack, pack_with, PackInput, PackOptions, PackOutput, PackStats};

/// The integrity check of a Stream's Blocks (§2.1.1.2 Stream Flags, §3.4
/// Check). Only the four types liblzma implements are accepted: a reserved
/// type could not be verified, and unverified bytes are never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// No check (type 0x00).
    None,
    /// CRC32 (type 0x01, 4 bytes).
    Crc32,
    /// CRC64 (type 0x04, 8 bytes).
    Crc64,
    /// SHA-256 (type 0x0A, 32 bytes).
    Sha256,
}

impl Check {
    /// The Check type of §2.1.1.2, or `None` for a reserved one.
    pub fn from_id(id: u8) -> Option<Check> {
        match id {
            0x00 => Some(Check::None),
            0x01 => Some(Check::Crc32),
            0x04 => Some(Check::Crc64),
            0x0A => Some(Check::Sha256),
            _ => None,
        }
    }

    /// The 4-bit Check type stored in the Stream Flags.
    pub fn id(self) -> u8 {
        match self {
            Check::None => 0x00,
            Check::Crc32 => 0x01,
            Check::Crc64 => 0x04,
            Check::Sha256 => 0x0A,
        }
    }

    /// Size of the Check field at the end of each Block (§3.4).
    pub fn size(self) -> u64 {
        match self {
            Check::None => 0,
            Check::Crc32 => 4,
            Check::Crc64 => 8,
            Check::Sha256 => 32,
        }
    }

    /// The name `xz --check=` uses.
    pub fn name(self) -> &'static str {
        match self {
            Check::None => "none",
            Check::Crc32 => "crc32",
            Check::Crc64 => "crc64",
            Check::Sha256 => "sha256",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
