//! Errors of reading, decoding and packing `.xz` images.

use std::path::PathBuf;

/// Why an `.xz` image cannot be opened or packed. Offsets are byte offsets
/// in the compressed file unless said otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XzError {
    /// Reading the compressed source failed.
    #[error("reading {len} bytes at offset {offset} of the compressed image: {source}")]
    Read {
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The source's error.
        #[source]
        source: synth::Error,
    },

    /// The file ends before a structure it announces (or is too small to
    /// hold even one Stream).
    #[error("truncated .xz image ({size} bytes): {what}")]
    Truncated {
        /// Size of the compressed file.
        size: u64,
        /// What is missing.
        what: String,
    },

    /// A structure does not parse or fails its CRC32.
    #[error("corrupt .xz image at offset {offset}: {what}")]
    Corrupt {
        /// Offset of the bad structure (or field).
        offset: u64,
        /// What is wrong.
        what: String,
    },

    /// A feature of the format this reader does not implement.
    #[error("unsupported .xz image at offset {offset}: {what}")]
    Unsupported {
        /// Offset of the structure using it.
        offset: u64,
        /// What it is.
        what: String,
    },

    /// A Block too big to serve with bounded memory (every read of it
    /// decodes all of it).
    #[error(
        "block {block} of the .xz image (uncompressed bytes {uncompressed_offset}..{}, \
         {compressed_size} bytes compressed at offset {compressed_offset}) holds \
         {uncompressed_size} bytes, more than the {max_block}-byte limit: repack with \
         `disksynth pack IN OUT --block-size 16M` or `xz --block-size=16MiB`, or allow big blocks",
        uncompressed_offset + uncompressed_size
    )]
    BlockTooBig {
        /// Index of the Block in the image.
        block: usize,
        /// Where its Block Header starts.
        compressed_offset: u64,
        /// Its total compressed size.
        compressed_size: u64,
        /// Where its bytes start on the device.
        uncompressed_offset: u64,
        /// How many bytes it decodes to.
        uncompressed_size: u64,
        /// The limit ([`super::XzOptions::max_block`]).
        max_block: u64,
    },

    /// The Index lists more Blocks (or Streams) than the index memory
    /// budget holds ([`super::XzOptions::max_index`]): refused before
    /// anything is allocated for them.
    #[error(
        "the .xz index lists {blocks} blocks in {streams} stream(s) (Index at offset {offset}): \
         that takes {needed} bytes of memory ({} per block), more than the {budget}-byte \
         index budget: raise the budget (`disksynth xz --max-index`) or repack with bigger \
         blocks (`disksynth pack IN OUT --block-size 16M`)",
        super::index::INDEX_BYTES_PER_BLOCK
    )]
    IndexTooBig {
        /// Offset of the Index whose Number of Records (§4.2) went over.
        offset: u64,
        /// Blocks counted so far, that Index's included.
        blocks: u64,
        /// Streams counted so far, that one included.
        streams: u64,
        /// Bytes they would take.
        needed: u64,
        /// The budget.
        budget: u64,
    },

    /// Decoding one Block failed.
    #[error(
        "block {block} of the .xz image (compressed bytes {compressed_offset}..{}, \
         uncompressed bytes {uncompressed_offset}..{}): {what}",
        compressed_offset + compressed_size, uncompressed_offset + uncompressed_size
    )]
    Decode {
        /// Index of the Block in the image.
        block: usize,
        /// Where its Block Header starts.
        compressed_offset: u64,
        /// Its total compressed size.
        compressed_size: u64,
        /// Where its bytes start on the device.
        uncompressed_offset: u64,
        /// How many bytes it decodes to.
        uncompressed_size: u64,
        /// What went wrong.
        what: String,
    },

    /// A host file of [`super::pack()`] could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// liblzma refused the encoder options or failed while encoding.
    #[error("liblzma encoder: {what}")]
    Encode {
        /// What liblzma said.
        what: String,
    },

    /// Bad options for [`super::pack()`] or [`super::XzDev::open`].
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// [`super::pack::pack_with`] was stopped by its caller (a signal).
    #[error("interrupted")]
    Interrupted,
}

impl XzError {
    pub(crate) fn corrupt(offset: u64, what: impl Into<String>) -> Self {
        XzError::Corrupt {
            offset,
            what: what.into(),
        }
    }
}
