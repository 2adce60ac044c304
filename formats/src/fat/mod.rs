//! FAT12/16/32 volumes synthesized from a host directory.
//!
//! [`build`] turns a scanned [`tree::Tree`] into a [`synth::RegionMap`]: boot
//! sector, FATs and directories are built in memory, file contents are
//! regions backed by lazily opened host files, free clusters are holes. The
//! steps, each in its own module:
//!
//! - [`names`]: host names → VFAT long names and unique 8.3 aliases;
//! - [`plan`]: directories and files → entry counts, geometry
//!   ([`layout`]: FAT type by cluster count, sizes, alignment), cluster
//!   allocation — pure, no bytes;
//! - [`image`]: the plan → bytes ([`boot_sector`], [`dir_entry`], the FAT
//!   table) and the region map.
//!
//! ```no_run
//! use formats::fat::{build, FatOptions};
//! let tree = tree::scan("./dir".as_ref(), &tree::ScanOptions { follow_symlinks: true }).unwrap();
//! let image = build(&tree, &FatOptions::default()).unwrap();
//! println!("{:?} with {} clusters", image.geometry.fat_type, image.geometry.clusters);
//! ```

pub mod boot_sector;
pub mod dir_entry;
mod image;
pub mod layout;
pub mod names;
mod plan;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use image::{build, FatImage};

/// FAT12, FAT16 or FAT32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FatType {
    /// 12-bit FAT entries, fewer than 4085 clusters.
    Fat12,
    /// 16-bit FAT entries, 4085..65525 clusters.
    Fat16,
    /// 28-bit FAT entries, 65525 clusters or more.
    Fat32,
}

impl fmt::Display for FatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

impl FromStr for FatType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim_start_matches(['f', 'F', 'a', 'A', 't', 'T']) {
            "12" => Ok(FatType::Fat12),
            "16" => Ok(FatType::Fat16),
            "32" => Ok(FatType::Fat32),
            _ => Err(format!("{s:?} is not a FAT type (12, 16 or 32)")),
        }
    }
}

/// Standard floppy formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloppyFormat {
    /// 3½" high density: 2880 sectors, 18 per track, 2 heads.
    F1440,
    /// 3½" extended density: 5760 sectors, 36 per track, 2 heads.
    F2880,
}

impl FromStr for FloppyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().trim_end_matches('B') {
            "1.44M" | "1440K" | "1.44" | "1440" => Ok(FloppyFormat::F1440),
            "2.88M" | "2880K" | "2.88" | "2880" => Ok(FloppyFormat::F2880),
            _ => Err(format!("{s:?} is not a floppy format (1.44M or 2.88M)")),
        }
    }
}

/// How the volume sits on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioning {
    /// An MBR with one partition starting at 1 MiB.
    #[default]
    Mbr,
    /// The volume is the whole disk (a "superfloppy").
    None,
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct FatOptions {
    /// Disk size in bytes; automatic (data + metadata + slack) if `None`.
    pub size: Option<u64>,
    /// Force a FAT type; chosen from the size if `None`.
    pub fat_type: Option<FatType>,
    /// Volume label (up to 11 characters legal in 8.3 names).
    pub label: Option<String>,
    /// MBR or whole-disk volume (ignored for floppies, which have none).
    pub partition: Partitioning,
    /// A standard floppy instead of a sized disk.
    pub floppy: Option<FloppyFormat>,
    /// Volume serial; derived from the tree's metadata if `None`.
    pub serial: Option<u32>,
    /// Every timestamp set to this Unix time (`SOURCE_DATE_EPOCH`).
    pub timestamp: Option<i64>,
    /// Open host files kept at most (0 = [`synth::DEFAULT_POOL_FDS`]).
    pub max_open_files: usize,
}

/// Why a FAT image cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FatError {
    /// FAT file sizes are 32-bit.
    #[error("{path}: {size} bytes; a FAT file holds at most 4294967295 bytes (4 GiB - 1)")]
    FileTooLarge {
        /// The host file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A name in a directory cannot be stored.
    #[error("in {dir}: {source}")]
    Name {
        /// The host directory.
        dir: PathBuf,
        /// What is wrong with the name.
        #[source]
        source: names::NameError,
    },
    /// FAT names are Unicode; this one is not valid UTF-8.
    #[error("{0}: the name is not valid UTF-8, so it has no FAT long name")]
    NonUtf8(PathBuf),
    /// A directory with more entries than FAT allows.
    #[error("{path}: needs {entries} directory entries; a FAT directory holds at most 65536 (long names take several each)")]
    DirTooLarge {
        /// The host directory.
        path: PathBuf,
        /// 32-byte entries it needs.
        entries: u64,
    },
    /// `--size` (or a floppy) is too small for the tree.
    #[error("{what} is too small: this tree needs at least {needed} bytes ({})", human(*needed))]
    TooSmall {
        /// What was too small ("--size 10M", "a 1.44M floppy").
        what: String,
        /// Bytes needed.
        needed: u64,
    },
    /// No geometry fits the request.
    #[error("{0}")]
    Impossible(String),
    /// The label is not a valid FAT label.
    #[error("volume label {label:?}: {reason}")]
    Label {
        /// The label given.
        label: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Assembling the region map failed (a bug if it happens).
    #[error("building the image: {0}")]
    Region(#[from] synth::Error),
}

/// `n` bytes in the largest binary unit that keeps a short number.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
