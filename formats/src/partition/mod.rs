//! Partitioned disks: one place for partition tables, shared by every
//! generator and by whole disks composed from several of them.
//!
//! - [`gpt`]: the GUID partition table (UEFI 2.10 §5.3): headers, entry
//!   array, CRCs, 512- and 4096-byte sectors; [`Guid`].
//! - [`mbr`]: the DOS master boot record (UEFI 2.10 §5.2.1), the protective
//!   MBR of a GPT disk (§5.2.3).
//! - [`types`]: partition type names ([`PartType`]) and GPT attribute names
//!   ([`attribute_bit`]).
//! - [`plan`] and [`build`] (`layout.rs`): where partitions go and the
//!   [`synth::RegionMap`] of a disk whose partitions are other devices
//!   (`Backing::Dev`), padding after each content a `Zero` region (a hole).
//!
//! ```text
//!  GPT:    [PMBR][hdr][array ....][pad][part 1 ....][pad][part 2 ..][pad][array ....][hdr]
//!  MBR:    [MBR][pad to align][part 1 ........][pad][part 2 .....][pad]
//!  None:   [the one partition's content .......][pad]
//! ```
//! The FAT generator's `--partition mbr` goes through [`build`]; the ISO's
//! hybrid tables (which describe regions *inside* the ISO 9660 volume) use
//! [`gpt::Gpt`], [`mbr::encode_with_code`] and [`derive_guid`] directly.

pub mod gpt;
mod layout;
pub mod mbr;
mod read;
pub mod types;

use std::fmt;
use std::sync::Arc;

use synth::BlockDev;

pub use gpt::{Gpt, GptError, GptPartition, Guid};
pub use layout::{build, plan, table_overhead};
pub use mbr::MbrPartition;
pub use read::{detect_filesystem, inspect, uuid_text, FoundFs, FoundPartition, Inspection};
pub use types::{attribute_bit, PartType};

/// Which partition table a disk gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// A GUID partition table behind a protective MBR.
    Gpt,
    /// A DOS MBR with up to four primary partitions.
    Mbr,
    /// A GPT plus an MBR mirroring up to the first three partitions that
    /// have an MBR type (and a 0xEE entry over the GPT before them).
    Hybrid,
    /// No table: exactly one partition, the disk is its content.
    None,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
            TableKind::Hybrid => "hybrid",
            TableKind::None => "none",
        })
    }
}

/// One partition to place.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// GPT partition name (at most 36 UTF-16 code units).
    pub label: String,
    /// Its type.
    pub kind: PartType,
    /// The filesystem or raw bytes; `content.size() <= size`.
    pub content: Arc<dyn BlockDev>,
    /// Bytes reserved for it, a multiple of the sector size; what follows
    /// the content reads as zeros (a hole).
    pub size: u64,
    /// GPT attribute bits ([`attribute_bit`]).
    pub attributes: u64,
    /// Unique partition GUID; derived from the seed and the label if `None`.
    pub guid: Option<Guid>,
    /// The MBR active flag.
    pub bootable: bool,
}

/// How the disk is laid out.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Table kind.
    pub table: TableKind,
    /// Logical block size: 512 or 4096.
    pub sector_size: u64,
    /// Partition start alignment in bytes (e.g. 1 MiB), a multiple of the
    /// sector size (0: the sector size).
    pub align: u64,
    /// Disk size; `None`: exactly what the partitions need (plus the backup
    /// GPT). `Some` must hold them.
    pub size: Option<u64>,
    /// What the disk GUID, partition GUIDs and MBR disk signature are
    /// derived from (with the labels).
    pub seed: Vec<u8>,
    /// The disk GUID; derived from the seed if `None`.
    pub disk_guid: Option<Guid>,
    /// The MBR disk signature (MBR and hybrid tables); derived from the seed
    /// if `None`. A GPT's protective MBR has 0 unless this is given (UEFI
    /// 2.10 §5.2.3: unused). Ignored without a table.
    pub mbr_signature: Option<u32>,
    /// MBR boot code; default: the "not bootable" stub ([`crate::bootstub`]).
    pub mbr_boot_code: Option<[u8; 440]>,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            table: TableKind::Gpt,
            sector_size: 512,
            align: 1 << 20,
            size: None,
            seed: Vec::new(),
            disk_guid: None,
            mbr_signature: None,
            mbr_boot_code: None,
        }
    }
}

/// Where partitions of given sizes go ([`plan`]); all in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Start of each partition.
    pub starts: Vec<u64>,
    /// The disk size.
    pub disk_size: u64,
    /// First byte a partition may use (after the primary table).
    pub first_usable: u64,
    /// End (exclusive) of the last byte a partition may use (before the
    /// backup GPT).
    pub last_usable_end: u64,
}

/// A built disk.
#[derive(Debug)]
pub struct Disk {
    /// The disk, ready to serve or write.
    pub map: synth::RegionMap,
    /// What was laid out.
    pub report: DiskReport,
}

/// What a disk holds, for listings and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    /// Table kind.
    pub table: TableKind,
    /// Logical block size.
    pub sector_size: u64,
    /// Disk size in bytes.
    pub size: u64,
    /// The GPT disk GUID (GPT and hybrid tables).
    pub disk_guid: Option<Guid>,
    /// The MBR disk signature (MBR and hybrid tables, or given).
    pub mbr_signature: Option<u32>,
    /// The partitions in table order.
    pub partitions: Vec<PartitionReport>,
}

/// One partition of a [`DiskReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    /// 1-based number (the GPT entry, or the MBR entry for MBR tables).
    pub number: u32,
    /// Its GPT name.
    pub label: String,
    /// Start in bytes.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT type (GPT and hybrid tables, and `None` tables if the type has one).
    pub type_guid: Option<Guid>,
    /// MBR type (MBR tables, mirrored hybrid entries, `None` tables).
    pub mbr_type: Option<u8>,
    /// Unique partition GUID (GPT and hybrid tables).
    pub guid: Option<Guid>,
    /// GPT attribute bits.
    pub attributes: u64,
}

/// Why a disk cannot be laid out. Every message says what is wrong and, for
/// sizes, how many bytes are needed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// Not a partition type name, GUID or MBR byte.
    #[error("{0:?} is not a partition type: give a name (esp, root, usr, home, swap, linux-generic, basic-data, bios-boot, ...), a GUID or an MBR type byte such as 0x0c")]
    UnknownType(String),
    /// Not a GPT attribute name or bit number.
    #[error("{0:?} is not a GPT attribute: required, no-block-io, legacy-bios-bootable, grow-fs, read-only, no-auto, or a bit number 0-63")]
    UnknownAttribute(String),
    /// Sector size other than 512 or 4096.
    #[error("sector size {0}: must be 512 or 4096 bytes")]
    SectorSize(u64),
    /// Alignment not a multiple of the sector size.
    #[error("alignment {align}: must be a multiple of the {sector_size}-byte sector size")]
    Align {
        /// The alignment given.
        align: u64,
        /// The sector size.
        sector_size: u64,
    },
    /// A size that is not whole sectors.
    #[error("{what} of {bytes} bytes is not a multiple of the {sector_size}-byte sector size ({} bytes more would be)", sector_size - bytes % sector_size)]
    NotWholeSectors {
        /// What ("partition 2 (root) size", "disk size").
        what: String,
        /// The size given.
        bytes: u64,
        /// The sector size.
        sector_size: u64,
    },
    /// An empty partition.
    #[error("{}: size 0; a partition needs at least one sector", part(*number, label))]
    Empty {
        /// 1-based number.
        number: usize,
        /// Its label.
        label: String,
    },
    /// Content larger than the room reserved for it.
    #[error("{}: the content is {content} bytes but only {size} are reserved ({} bytes more needed)", part(*number, label), content - size)]
    ContentTooLarge {
        /// 1-based number.
        number: usize,
        /// Its label.
        label: String,
        /// Content bytes.
        content: u64,
        /// Bytes reserved.
        size: u64,
    },
    /// More partitions than the table holds.
    #[error("{count} partitions: a{} {table} table holds at most {max}", if *table == TableKind::Mbr { "n" } else { "" })]
    TooMany {
        /// The table kind.
        table: TableKind,
        /// Partitions given.
        count: usize,
        /// The most it holds.
        max: usize,
    },
    /// A disk without a table holds exactly one partition.
    #[error("a disk without a partition table holds exactly one partition, not {0}")]
    NotOne(usize),
    /// The disk size cannot hold the partitions and the table.
    #[error("a disk of {size} bytes is too small: the partitions and the table need {needed} bytes ({} more)", needed - size)]
    DiskTooSmall {
        /// The disk size given.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// An MBR entry's start or length does not fit its 32-bit field.
    #[error("{}: {what} of {bytes} bytes does not fit an MBR's 32-bit sector fields (at most {max} bytes with {sector_size}-byte sectors; {} bytes too many)", part(*number, label), bytes - max)]
    MbrLimit {
        /// 1-based number.
        number: usize,
        /// Its label.
        label: String,
        /// "start" or "size".
        what: &'static str,
        /// The value in bytes.
        bytes: u64,
        /// The largest value that fits.
        max: u64,
        /// The sector size.
        sector_size: u64,
    },
    /// A GPT entry needs a type GUID.
    #[error("{}: type {kind} has no GPT type GUID, which a {table} table needs", part(*number, label))]
    NoGptType {
        /// 1-based number.
        number: usize,
        /// Its label.
        label: String,
        /// The type given.
        kind: String,
        /// The table kind.
        table: TableKind,
    },
    /// An MBR entry needs a type byte.
    #[error("{}: type {kind} has no MBR type byte, which an MBR table needs (give one such as 0x83, or use a GPT)", part(*number, label))]
    NoMbrType {
        /// 1-based number.
        number: usize,
        /// Its label.
        label: String,
        /// The type given.
        kind: String,
    },
    /// A GPT name longer than the entry holds.
    #[error("partition {number}: name {label:?} is {units} UTF-16 code units; a GPT entry holds at most 36")]
    Label {
        /// 1-based number.
        number: usize,
        /// The label.
        label: String,
        /// Its length in UTF-16 code units.
        units: usize,
    },
    /// Sizes past 64 bits.
    #[error("the partitions add up to more than 2^64 bytes")]
    Overflow,
    /// The table itself refused the layout (a bug if it happens).
    #[error("GUID partition table: {0}")]
    Gpt(#[from] GptError),
    /// Assembling the region map failed.
    #[error("building the disk: {0}")]
    Region(#[from] synth::Error),
}

/// "partition 2 (root)", or "partition 2" without a label.
fn part(number: usize, label: &str) -> String {
    if label.is_empty() {
        format!("partition {number}")
    } else {
        format!("partition {number} ({label})")
    }
}

/// The one GUID derivation of disksynth's tables: a version-4-format GUID
/// ([`Guid::from_hash`]) from the stable 128-bit hash ([`crate::hash`]) of
/// `n`, `seed` and `what`. The ISO's hybrid tables use `what = b""` and `n` =
/// 0 for the disk, 1, 2, ... for its partitions; [`build`] uses `n` = 0 with
/// `b"disk"` and `n` = 1 with each label.
pub fn derive_guid(seed: &[u8], n: u8, what: &[u8]) -> Guid {
    Guid::from_hash(crate::hash::hash128(&[b"disksynth guid", &[n], seed, what]))
}

#[cfg(test)]
mod tests;
