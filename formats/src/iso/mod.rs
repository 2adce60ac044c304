//! ISO 9660 images synthesized from a host directory (ECMA-119, with Rock
//! Ridge and Joliet).
//!
//! [`build`] turns a scanned [`tree::Tree`] (scanned without following
//! symlinks, so Rock Ridge can keep them) into a [`synth::RegionMap`]:
//! volume descriptors, path tables, directory records and Rock Ridge
//! continuation areas are bytes in memory; file contents are 2048-aligned
//! regions backed by lazily opened host files (files of 4 GiB or more take
//! several extents); padding and the holes of sparse host files are holes.
//!
//! - [`names`]: host names → ISO 9660 level 3 and Joliet identifiers;
//! - `layout`: the tree → directory records per namespace, sizes, places;
//! - `susp`: Rock Ridge entries and continuation areas;
//! - `record`, `descriptor`: the on-disk structures;
//! - `image`: the plan → bytes and the region map.
//!
//! ```no_run
//! use formats::iso::{build, IsoOptions};
//! let tree = tree::scan("./dir".as_ref(), &tree::ScanOptions::default()).unwrap();
//! let image = build(&tree, &IsoOptions::default()).unwrap();
//! println!("{} blocks of 2048 bytes", image.blocks);
//! ```

mod descriptor;
pub mod eltorito;
mod image;
mod layout;
pub mod names;
mod record;
mod susp;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use image::{build, IsoImage};
pub use names::volume_id_from_name;

/// What to build.
#[derive(Debug, Clone)]
pub struct IsoOptions {
    /// Volume identifier: d-characters (`A-Z 0-9 _`; lower case is made
    /// upper case), at most 32. `CDROM` if `None`.
    pub volume_id: Option<String>,
    /// Rock Ridge: POSIX names, modes, owners, times, symlinks, devices.
    pub rock_ridge: bool,
    /// Joliet: UCS-2 names up to 64 characters for Windows.
    pub joliet: bool,
    /// The volume's times (descriptors, not files), e.g.
    /// `SOURCE_DATE_EPOCH`; if `None`, the newest mtime in the tree clamped
    /// to the release date (never the clock: see `time::default_volume_time`).
    pub timestamp: Option<i64>,
    /// Open host files kept at most (0 = [`synth::DEFAULT_POOL_FDS`]).
    pub max_open_files: usize,
    /// El Torito BIOS boot image (no emulation): a file of the tree, by its
    /// path relative to the top directory.
    pub boot: Option<PathBuf>,
    /// Virtual 512-byte sectors the BIOS loads from `boot` (default 4).
    pub boot_load_size: Option<u16>,
    /// Patch the boot-info table (bytes 8..64) of `boot`, as isolinux needs
    /// (`-boot-info-table` of mkisofs).
    pub boot_info_table: bool,
    /// El Torito UEFI boot image (a FAT image file of the tree), by its path
    /// relative to the top directory.
    pub efi_boot: Option<PathBuf>,
    /// A synthesized El Torito UEFI boot image (e.g. a FAT image the FAT
    /// generator built from a directory), placed after the files and listed
    /// in no directory. Exclusive with `efi_boot`.
    pub efi_image: Option<std::sync::Arc<dyn synth::BlockDev>>,
    /// Put partition tables in the system area so the same image works as a
    /// disk (USB stick). Without an EFI image: an MBR whose partition 1
    /// covers the whole image. With one: a GUID partition table (ISO 9660
    /// data as basic-data partitions around the EFI system partition, the
    /// backup table in the volume's last 33 sectors) and a hybrid MBR
    /// mirroring it.
    pub hybrid: bool,
    /// The loader's MBR boot code for `hybrid` images (isolinux's
    /// `isohdpfx.bin`): BIOSes then boot the `boot` image from a USB stick.
    /// Without it the MBR holds our "not bootable" stub.
    pub hybrid_boot_code: Option<Vec<u8>>,
}

impl Default for IsoOptions {
    fn default() -> Self {
        IsoOptions {
            volume_id: None,
            rock_ridge: true,
            joliet: true,
            timestamp: None,
            max_open_files: 0,
            boot: None,
            boot_load_size: None,
            boot_info_table: true,
            efi_boot: None,
            efi_image: None,
            hybrid: false,
            hybrid_boot_code: None,
        }
    }
}

/// Why an ISO image cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IsoError {
    /// The volume identifier is not d-characters or too long.
    #[error("volume identifier {id:?}: {reason}")]
    VolumeId {
        /// The identifier given.
        id: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Path table records number directories with 16 bits (§9.4.4).
    #[error("{0} directories; ISO 9660 path tables hold at most 65535")]
    TooManyDirs(usize),
    /// More than 2^32 logical blocks (8 TiB).
    #[error("the image would exceed 2^32 blocks of 2048 bytes (8 TiB)")]
    TooLarge,
    /// A boot image named by `--boot`/`--efi-boot` is not a regular file of
    /// the tree, or cannot be read.
    #[error("boot image {path}: {reason}")]
    BootImage {
        /// The path given (relative to the top directory).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The hybrid image's GUID partition table cannot be laid out.
    #[error("hybrid partition table: {0}")]
    Gpt(#[from] crate::partition::GptError),
    /// Assembling the region map failed (a bug if it happens).
    #[error("building the image: {0}")]
    Region(#[from] synth::Error),
}

/// The volume identifier to record: `opts.volume_id` upper-cased and
/// checked, or `CDROM`.
fn volume_id(opts: &IsoOptions) -> Result<String, IsoError> {
    let Some(id) = &opts.volume_id else {
        return Ok("CDROM".to_string());
    };
    let err = |reason| IsoError::VolumeId {
        id: id.clone(),
        reason,
    };
    let up = id.to_ascii_uppercase();
    if up.is_empty() {
        return Err(err("empty"));
    }
    if up.len() > 32 {
        return Err(err("longer than 32 characters"));
    }
    if !up
        .bytes()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
    {
        return Err(err(
            "only letters, digits and _ are allowed (ECMA-119 d-characters)",
        ));
    }
    Ok(up)
}
