//! L2 table entries (qcow2.txt "L2 table entry", "Standard Cluster
//! Descriptor", "Compressed Clusters Descriptor", "Extended L2 Entries").

/// Bit 62: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// Standard descriptor bits 9-55: the host cluster offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Standard descriptor bit 0: reads as zeros (v3 without extended L2).
const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// Where the bytes of (part of) a guest cluster come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Unallocated: the backing file's bytes, or zeros without one.
    Unallocated,
    /// Reads as zeros (allocated as zeros in this image: the backing file
    /// is not read).
    Zero,
    /// The bytes at this host offset (of the start of the range).
    Data(u64),
    /// The whole cluster is compressed: its data starts at `offset` and
    /// spans at most `len` bytes of the file.
    Compressed { offset: u64, len: u64 },
}

/// One L2 entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The whole cluster maps one way (host offsets are of its start).
    Whole(Mapping),
    /// Extended L2: per-subcluster status over one host cluster.
    Sub {
        /// Host cluster offset (0 when none is allocated).
        host: u64,
        /// Bits 0-31 of the bitmap: allocated subclusters.
        alloc: u32,
        /// Bits 32-63: subclusters that read as zeros.
        zero: u32,
    },
}

/// What decoding an entry needs to know about the image.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub cluster_bits: u32,
    pub version: u32,
    pub extended: bool,
}

impl Layout {
    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    pub fn entry_size(&self) -> u64 {
        if self.extended {
            16
        } else {
            8
        }
    }

    /// Entries per L2 table (one cluster).
    pub fn l2_entries(&self) -> u64 {
        (1u64 << self.cluster_bits) / self.entry_size()
    }
}

/// Decode an entry (`word` is the first 64 bits, `bitmap` the second with
/// extended L2 entries, else 0). Errors say what is wrong with it.
pub fn decode(word: u64, bitmap: u64, l: &Layout) -> Result<Entry, String> {
    let cluster = 1u64 << l.cluster_bits;
    if word & COMPRESSED != 0 {
        // x = 62 - (cluster_bits - 8): offset in bits 0..x-1, additional
        // 512-byte sectors in bits x..61. The data runs from the offset to
        // the end of the last sector ("beyond the sector containing the
        // offset"). The extended bitmap of a compressed cluster is
        // reserved: ignored.
        let x = 62 - (l.cluster_bits - 8);
        let offset = word & ((1u64 << x) - 1);
        let sectors = (word >> x) & ((1u64 << (l.cluster_bits - 8)) - 1);
        let len = (sectors + 1) * 512 - (offset & 511);
        if offset >> 56 != 0 {
            return Err(format!(
                "compressed cluster offset {offset:#x} uses bits past 55"
            ));
        }
        return Ok(Entry::Whole(Mapping::Compressed { offset, len }));
    }
    let host = word & OFFSET_MASK;
    if !host.is_multiple_of(cluster) {
        return Err(format!(
            "data cluster offset {host:#x} is not aligned to the {cluster}-byte cluster size"
        ));
    }
    if l.extended {
        let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
        if alloc & zero != 0 {
            return Err(format!(
                "subclusters {:#010x} are both allocated and zero",
                alloc & zero
            ));
        }
        if host == 0 && alloc != 0 {
            return Err("allocated subclusters without a host cluster".into());
        }
        return Ok(match (alloc, zero) {
            (0, 0) => Entry::Whole(Mapping::Unallocated),
            (0, z) if z == u32::MAX => Entry::Whole(Mapping::Zero),
            (a, _) if a == u32::MAX => Entry::Whole(Mapping::Data(host)),
            _ => Entry::Sub { host, alloc, zero },
        });
    }
    if l.version >= 3 && word & ZERO != 0 {
        return Ok(Entry::Whole(Mapping::Zero));
    }
    if host == 0 {
        return Ok(Entry::Whole(Mapping::Unallocated));
    }
    Ok(Entry::Whole(Mapping::Data(host)))
}
