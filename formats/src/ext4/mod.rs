//! ext4 filesystems synthesized from a host directory.
//!
//! [`build`] turns a scanned [`tree::Tree`] (scanned without following
//! symlinks, so links, fifos, sockets and device nodes are kept, and with
//! [`tree::ScanOptions::xattrs`] for extended attributes and ACLs) into a
//! [`synth::RegionMap`]: superblocks, group descriptors, bitmaps, inode
//! tables, directories, extent trees and the journal are bytes in memory,
//! file contents are regions backed by lazily opened host files, and free
//! space, holes of sparse files and the journal body are `Zero` regions.
//!
//! The on-disk encoding (the ext4 wiki's "Disk Layout" page) is done by the
//! `mkext4` engine, pinned to an exact version so the same tree always
//! gives the same bytes (vendored, with a bytes API for names that are not
//! UTF-8: `vendor/mkext4/VENDORED.md`). It declares a namespace, seals the complete
//! physical layout, and then emits every metadata byte before any file data
//! through a `RegionSink`; we record those emissions as regions and map each
//! file's final data extents (`Layout::extents`) onto its host file instead
//! of copying the data. The engine stays behind this module's interface
//! (`build`, [`Ext4Options`], [`Ext4Image`]) so it can be replaced.
//!
//! - [`plan`]: tree → declarations (names, hard-link groups, sparse data
//!   ranges), the UUID, the filesystem time;
//! - [`layout`]: how big the filesystem must be (pure arithmetic);
//! - `xattr`: which extended attributes ext4 holds, POSIX ACLs in ext4's
//!   format, whether they fit the inode and one block;
//! - [`image`]: declarations → sealed layout → region map;
//! - `crate::sparse`: data ranges of sparse host files (`SEEK_DATA`/`SEEK_HOLE`).
//!
//! ```no_run
//! use formats::ext4::{build, Ext4Options};
//! let scan = tree::ScanOptions { xattrs: true, ..Default::default() };
//! let tree = tree::scan("./rootfs".as_ref(), &scan).unwrap();
//! let image = build(&tree, &Ext4Options::default()).unwrap();
//! println!("{} inodes in {} bytes", image.used_inodes, image.size);
//! ```

mod image;
pub mod layout;
mod names;
mod plan;
mod xattr;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use image::{build, Ext4Image};

use crate::fat::human;

/// Who owns the files in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    /// The host uid/gid of each entry.
    #[default]
    Keep,
    /// Everything owned by 0:0, as image builders want.
    Root,
}

impl FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(Owner::Keep),
            "root" => Ok(Owner::Root),
            _ => Err(format!("{s:?} is not an owner policy (keep or root)")),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Owner::Keep => "keep",
            Owner::Root => "root",
        })
    }
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct Ext4Options {
    /// Filesystem size in bytes (a multiple of 4 KiB); automatic (data +
    /// metadata + slack, in whole MiB) if `None`.
    pub size: Option<u64>,
    /// Volume label, at most 16 bytes.
    pub label: Option<String>,
    /// Filesystem UUID; derived from the tree's metadata if `None`.
    pub uuid: Option<[u8; 16]>,
    /// Keep host owners or make everything root's.
    pub owner: Owner,
    /// Filesystem-level time (superblock times, `lost+found`, reserved
    /// inodes), e.g. `SOURCE_DATE_EPOCH`; if `None`, the newest mtime in the
    /// tree clamped to the release date (never the clock). File times are
    /// always the host's.
    pub timestamp: Option<i64>,
    /// Open host files kept at most (0 = [`synth::DEFAULT_POOL_FDS`]).
    pub max_open_files: usize,
}

/// Why an ext4 image cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4Error {
    /// A POSIX ACL the host gave cannot be converted to ext4's format.
    #[error("{path}: extended attribute {name}: {reason}")]
    Acl {
        /// The host entry.
        path: PathBuf,
        /// `system.posix_acl_access` or `system.posix_acl_default`.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An inode's extended attributes do not fit the inode and one 4 KiB
    /// block (ext4 without the `ea_inode` feature holds no more).
    #[error(
        "{path}: its {count} extended attributes ({bytes} bytes of names and values) do not fit \
         an ext4 inode and one 4 KiB xattr block (--no-xattrs leaves all attributes out)"
    )]
    XattrsTooBig {
        /// The host entry.
        path: PathBuf,
        /// How many attributes it has.
        count: usize,
        /// Their names and values, in bytes.
        bytes: usize,
    },
    /// A device number ext4's inode cannot hold (major > 4095 or minor > 2^20 - 1).
    #[error("{path}: device number {major}:{minor} does not fit an ext4 inode")]
    DeviceNumber {
        /// The device node.
        path: PathBuf,
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
    /// `--size` cannot hold the tree.
    #[error("size {size} ({}) is too small: this tree needs at least {needed} bytes ({})", human(*size), human(*needed))]
    TooSmall {
        /// What was asked for.
        size: u64,
        /// What the tree needs.
        needed: u64,
    },
    /// A size ext4 (as built here) cannot have.
    #[error("size {size}: {reason}")]
    BadSize {
        /// What was asked for.
        size: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The label does not fit the superblock.
    #[error("volume label {0:?} is longer than 16 bytes")]
    Label(String),
    /// Finding the data ranges of a sparse host file failed.
    #[error("{path}: finding its data ranges: {source}")]
    Sparse {
        /// The host file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine refused an entry.
    #[error("{path}: {source}")]
    Declare {
        /// The host entry.
        path: PathBuf,
        /// The engine's reason.
        #[source]
        source: mkext4::Error,
    },
    /// The engine failed to lay out or emit the filesystem.
    #[error("laying out the filesystem: {0}")]
    Engine(#[source] mkext4::Error),
    /// The engine's output did not tile the image (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// Assembling the region map failed.
    #[error("building the image: {0}")]
    Region(#[from] synth::Error),
}
