//! The image header (qcow2.txt "Header", "Additional fields") and its
//! feature bits.

use super::error::QcowError;
use super::extensions::Extensions;

/// "QFI\xfb" (Header, bytes 0-3).
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Bytes of a version 2 header (Header: "For version 2, the header is
/// exactly 72 bytes").
pub const V2_HEADER_LEN: u32 = 72;
/// Smallest version 3 header: through `header_length` (bytes 100-103).
pub const V3_MIN_HEADER_LEN: u32 = 104;

/// Smallest and largest `cluster_bits` served: 512 B (the spec's minimum)
/// to 2 MiB (QEMU's implementation limit, so every image QEMU makes).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;

/// incompatible_features bits (Header bytes 72-79).
pub mod incompatible {
    /// Bit 0: dirty (refcounts may be inconsistent).
    pub const DIRTY: u64 = 1 << 0;
    /// Bit 1: corrupt (any structure may be corrupt).
    pub const CORRUPT: u64 = 1 << 1;
    /// Bit 2: guest clusters live in an external data file.
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// Bit 3: `compression_type` is not zlib.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// Bit 4: extended L2 entries (subclusters).
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this reader knows how to honour or refuse by name.
    pub const KNOWN: u64 = DIRTY | CORRUPT | EXTERNAL_DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// How compressed clusters are compressed (Header byte 104,
/// `compression_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// 0: zlib's raw deflate (no zlib header, 4 KiB window).
    Deflate,
    /// 1: zstd.
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Deflate => "deflate",
            Compression::Zstd => "zstd",
        })
    }
}

/// The header fields (all big-endian on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3 (bytes 4-7).
    pub version: u32,
    /// Where the backing file name is, 0 for none (bytes 8-15).
    pub backing_file_offset: u64,
    /// Its length (bytes 16-19).
    pub backing_file_size: u32,
    /// log2 of the cluster size (bytes 20-23).
    pub cluster_bits: u32,
    /// Virtual disk size (bytes 24-31).
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS (bytes 32-35).
    pub crypt_method: u32,
    /// Entries in the active L1 table (bytes 36-39).
    pub l1_size: u32,
    /// Where it starts (bytes 40-47).
    pub l1_table_offset: u64,
    /// bytes 48-55 (unused for reading).
    pub refcount_table_offset: u64,
    /// bytes 56-59 (unused for reading).
    pub refcount_table_clusters: u32,
    /// bytes 60-63 (internal snapshots do not change the active layer).
    pub nb_snapshots: u32,
    /// bytes 64-71.
    pub snapshots_offset: u64,
    /// bytes 72-79 (0 for version 2).
    pub incompatible_features: u64,
    /// bytes 80-87 (0 for version 2).
    pub compatible_features: u64,
    /// bytes 88-95 (0 for version 2).
    pub autoclear_features: u64,
    /// bytes 96-99 (4 for version 2).
    pub refcount_order: u32,
    /// bytes 100-103 (72 for version 2).
    pub header_length: u32,
    /// byte 104 when `header_length` > 104, else deflate.
    pub compression_type: u8,
}

/// The big-endian u32 at `at` (the caller checked the bounds).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

/// The big-endian u64 at `at` (the caller checked the bounds).
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

impl Header {
    /// Parse the header at the start of `first` (the first bytes of the
    /// file: at least the header, at most the first cluster). Checks the
    /// magic, the version, the cluster size and the header length; the
    /// features are checked by [`Header::check_features`].
    pub fn parse(first: &[u8]) -> Result<Header, QcowError> {
        if first.len() < 4 || first[..4] != MAGIC {
            return Err(QcowError::NotQcow2);
        }
        if first.len() < V2_HEADER_LEN as usize {
            return Err(QcowError::corrupt(
                0,
                format!(
                    "the file ends after {} bytes, inside the header",
                    first.len()
                ),
            ));
        }
        let version = be32(first, 4);
        if version != 2 && version != 3 {
            return Err(QcowError::refused(
                format!("qcow2 version {version}"),
                "only versions 2 and 3 exist",
            ));
        }
        let cluster_bits = be32(first, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(QcowError::corrupt(
                20,
                format!(
                    "cluster_bits {cluster_bits}: clusters must be 512 B to 2 MiB (cluster_bits 9 to 21)"
                ),
            ));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(first, 8),
            backing_file_size: be32(first, 16),
            cluster_bits,
            size: be64(first, 24),
            crypt_method: be32(first, 32),
            l1_size: be32(first, 36),
            l1_table_offset: be64(first, 40),
            refcount_table_offset: be64(first, 48),
            refcount_table_clusters: be32(first, 56),
            nb_snapshots: be32(first, 60),
            snapshots_offset: be64(first, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
        };
        if version == 3 {
            if first.len() < V3_MIN_HEADER_LEN as usize {
                return Err(QcowError::corrupt(
                    0,
                    format!(
                        "the file ends after {} bytes, inside the version 3 header",
                        first.len()
                    ),
                ));
            }
            h.incompatible_features = be64(first, 72);
            h.compatible_features = be64(first, 80);
            h.autoclear_features = be64(first, 88);
            h.refcount_order = be32(first, 96);
            h.header_length = be32(first, 100);
            // "at least 104 bytes and must be a multiple of 8"; the header
            // lives in the first cluster ("The first cluster of a qcow2
            // image contains the file header").
            if h.header_length < V3_MIN_HEADER_LEN
                || !h.header_length.is_multiple_of(8)
                || u64::from(h.header_length) > h.cluster_size()
            {
                return Err(QcowError::corrupt(
                    100,
                    format!(
                        "header_length {} (must be a multiple of 8, from 104 to the cluster size {})",
                        h.header_length,
                        h.cluster_size()
                    ),
                ));
            }
            if first.len() < h.header_length as usize {
                return Err(QcowError::corrupt(
                    100,
                    format!(
                        "header_length {} but the file ends after {} bytes",
                        h.header_length,
                        first.len()
                    ),
                ));
            }
            // Additional fields: present only when header_length covers them.
            if h.header_length > 104 {
                h.compression_type = first[104];
            }
        }
        Ok(h)
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are extended (incompatible bit 4).
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & incompatible::EXTENDED_L2 != 0
    }

    /// The compression of compressed clusters, or why it is refused
    /// ("compression_type": non-zero only with incompatible bit 3).
    pub fn compression(&self) -> Result<Compression, QcowError> {
        let bit = self.incompatible_features & incompatible::COMPRESSION_TYPE != 0;
        match (bit, self.compression_type) {
            (false, 0) => Ok(Compression::Deflate),
            (true, 1) => Ok(Compression::Zstd),
            (true, 0) => Err(QcowError::corrupt(
                104,
                "the compression type bit is set but compression_type is 0 (zlib)",
            )),
            (false, t) => Err(QcowError::corrupt(
                104,
                format!(
                    "compression_type {t} without the compression type incompatible feature bit"
                ),
            )),
            (true, t) => Err(QcowError::refused(
                format!("compression type {t}"),
                "only 0 (zlib/deflate) and 1 (zstd) are defined",
            )),
        }
    }

    /// Refuse what this reader cannot serve faithfully, naming the
    /// feature: encryption, an external data file, the dirty and corrupt
    /// bits, unknown incompatible bits (named from the image's feature
    /// name table when it has one). Compatible and autoclear bits are
    /// ignored, as the spec allows ("An implementation can safely ignore
    /// any unknown bits"; autoclear bits only constrain writers).
    pub fn check_features(&self, ext: &Extensions) -> Result<(), QcowError> {
        use incompatible::*;
        if self.crypt_method != 0 || ext.encryption_header {
            let method = match self.crypt_method {
                1 => "AES".to_string(),
                2 => "LUKS".to_string(),
                m => format!("method {m}"),
            };
            return Err(QcowError::refused(
                format!("encryption ({method})"),
                "encrypted images cannot be served; decrypt it first \
                 (qemu-img convert --object secret,... --image-opts ... -O qcow2)",
            ));
        }
        let f = self.incompatible_features;
        if f & EXTERNAL_DATA_FILE != 0 {
            let name = ext
                .external_data_file
                .as_deref()
                .map(|n| format!(" ({n:?})"))
                .unwrap_or_default();
            return Err(QcowError::refused(
                format!("an external data file{name}"),
                "its guest clusters live in another file; serve that raw file instead \
                 (when the raw external data bit is set) or convert the image",
            ));
        }
        if f & CORRUPT != 0 {
            return Err(QcowError::refused(
                "the corrupt bit",
                "QEMU found the image inconsistent; repair it with `qemu-img check -r all`",
            ));
        }
        if f & DIRTY != 0 {
            return Err(QcowError::refused(
                "the dirty bit",
                "the image was not closed cleanly (or is open in a writer now); \
                 check it with `qemu-img check -r all` once nothing writes to it",
            ));
        }
        let unknown = f & !KNOWN;
        if unknown != 0 {
            let bit = unknown.trailing_zeros();
            let name = ext
                .feature_names
                .iter()
                .find(|n| n.kind == 0 && u32::from(n.bit) == bit)
                .map(|n| format!(" {:?}", n.name))
                .unwrap_or_default();
            return Err(QcowError::refused(
                format!("incompatible feature bit {bit}{name}"),
                "an unknown incompatible feature changes how the image must be read",
            ));
        }
        Ok(())
    }
}
