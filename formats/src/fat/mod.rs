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
//! let tree = tree::scan("./dir".as_ref(), &tree::ScanOptions { follow_symlinks: true, ..Default::default() }).unwrap();
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

impl FatType {
    /// The MBR partition type of a volume of this type: 0x01 (FAT12),
    /// 0x0E (FAT16, LBA), 0x0C (FAT32, LBA).
    pub fn mbr_type(self) -> u8 {
        match self {
            FatType::Fat12 => 0x01,
            FatType::Fat16 => 0x0E,
            FatType::Fat32 => 0x0C,
        }
    }
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
    /// `BPB_HiddSec` of a whole-disk volume (`partition` is
    /// [`Partitioning::None`]) that will be placed in a partition of another
    /// disk: the sectors preceding the partition, i.e. its start in 512-byte
    /// sectors (Microsoft FAT specification, §3.1 "BPB_HiddSec: count of
    /// hidden sectors preceding the partition that contains this FAT
    /// volume"). `None`: 0. Ignored with an MBR (there it is the MBR
    /// partition's start) and for floppies (0).
    pub hidden_sectors: Option<u32>,
    /// A standard floppy instead of a sized disk.
    pub floppy: Option<FloppyFormat>,
    /// Volume serial; derived from the tree's metadata if `None`.
    pub serial: Option<u32>,
    /// Every timestamp set to this Unix time (`SOURCE_DATE_EPOCH`).
    pub timestamp: Option<i64>,
    /// Open host files kept at most (0 = [`synth::DEFAULT_POOL_FDS`]).
    pub max_open_files: usize,
    /// Two host names FAT sees as one (`Makefile` and `makefile`; `a:b` and
    /// `a_b`) are an error (`--strict-names`) instead of the later one being
    /// renamed `makefile~2` with a warning.
    pub strict_names: bool,
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
    /// The partition table cannot be laid out (a bug if it happens).
    #[error("partition table: {0}")]
    Partition(#[from] crate::partition::PartitionError),
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use synth::BlockDev;

    use super::*;

    fn tree_of(dir: &Path) -> tree::Tree {
        tree::scan(
            dir,
            &tree::ScanOptions {
                follow_symlinks: true,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// A directory with one sparse file of `size` bytes.
    fn with_file(size: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::File::create(d.path().join("data.bin"))
            .unwrap()
            .set_len(size)
            .unwrap();
        d
    }

    fn read_all(map: &synth::RegionMap) -> Vec<u8> {
        let mut v = vec![0u8; map.size() as usize];
        map.read_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn automatic_type_follows_the_amount_of_data() {
        for (size, want) in [
            (100_000u64, FatType::Fat12),
            (20 << 20, FatType::Fat16),
            (1 << 30, FatType::Fat32),
        ] {
            let d = with_file(size);
            let img = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
            assert_eq!(img.geometry.fat_type, want, "{size} bytes of data");
            let (lo, hi) = want.cluster_range();
            assert!((lo..=hi).contains(&img.geometry.clusters));
            assert_eq!(
                img.map.size() % (1 << 20),
                0,
                "automatic sizes are whole MiB"
            );
        }
    }

    #[test]
    fn too_small_size_says_what_is_needed() {
        let d = with_file(5 << 20);
        let opts = FatOptions {
            size: Some(4 << 20),
            ..FatOptions::default()
        };
        let e = build(&tree_of(d.path()), &opts).unwrap_err();
        assert!(e.to_string().contains("needs at least"), "{e}");
    }

    #[test]
    fn file_of_4_gib_is_refused_and_4_gib_minus_1_is_not() {
        let d = with_file(1 << 32);
        let e = build(&tree_of(d.path()), &FatOptions::default()).unwrap_err();
        assert!(e.to_string().contains("data.bin"), "{e}");
        let d = with_file((1 << 32) - 1);
        let img = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
        assert_eq!(img.geometry.fat_type, FatType::Fat32);
    }

    #[test]
    fn forced_type_that_cannot_hold_the_data_is_an_error() {
        let d = with_file(200 << 20);
        let opts = FatOptions {
            fat_type: Some(FatType::Fat12),
            ..FatOptions::default()
        };
        assert!(build(&tree_of(d.path()), &opts).is_err());
    }

    #[test]
    fn hidden_sectors_are_the_partition_start() {
        let d = with_file(1000);
        let hidden = |opts: &FatOptions| {
            let img = build(&tree_of(d.path()), opts).unwrap();
            let mut bpb = [0u8; 4];
            img.map.read_at(&mut bpb, img.volume_offset + 28).unwrap();
            (u32::from_le_bytes(bpb), img.geometry.hidden_sectors)
        };
        let none = FatOptions {
            partition: Partitioning::None,
            ..FatOptions::default()
        };
        assert_eq!(hidden(&none), (0, 0));
        let placed = FatOptions {
            hidden_sectors: Some(4096),
            ..none
        };
        assert_eq!(hidden(&placed), (4096, 4096));
        // With our own MBR it is that partition's start.
        let mbr = FatOptions {
            hidden_sectors: Some(4096),
            ..FatOptions::default()
        };
        assert_eq!(hidden(&mbr), (2048, 2048));
    }

    #[test]
    fn floppy_has_the_standard_size_and_no_partition_table() {
        let d = with_file(1000);
        let opts = FatOptions {
            floppy: Some(FloppyFormat::F1440),
            ..FatOptions::default()
        };
        let img = build(&tree_of(d.path()), &opts).unwrap();
        assert_eq!(img.map.size(), 1_474_560);
        let bytes = read_all(&img.map);
        assert_eq!(bytes[21], 0xF0, "media byte");
        assert_eq!(u16::from_le_bytes([bytes[24], bytes[25]]), 18);
        assert_eq!(&bytes[54..62], b"FAT12   ");
        let big = with_file(2 << 20);
        let e = build(&tree_of(big.path()), &opts).unwrap_err();
        assert!(e.to_string().contains("1.44M floppy is too small"), "{e}");
    }

    #[test]
    fn same_tree_same_bytes_and_serial_follows_content() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.txt"), b"hello").unwrap();
        fs::create_dir(d.path().join("Sub Dir")).unwrap();
        fs::write(d.path().join("Sub Dir/b"), b"").unwrap();
        let a = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
        let b = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
        assert!(read_all(&a.map) == read_all(&b.map));
        fs::write(d.path().join("c.txt"), b"more").unwrap();
        let c = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
        assert_ne!(a.serial, c.serial);
    }

    #[test]
    fn directory_sizes_on_the_host_do_not_change_the_image() {
        // ext4 directories grow with entries and never shrink: the same tree, after files came
        // and went, has a bigger directory (on tmpfs the size shrinks back and this is moot).
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("kept.txt"), b"kept").unwrap();
        let mtime = fs::metadata(&sub).unwrap().modified().unwrap();
        let a = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
        for i in 0..300 {
            fs::write(
                sub.join(format!("temporary-file-with-a-long-name-{i}")),
                b"",
            )
            .unwrap();
        }
        for i in 0..300 {
            fs::remove_file(sub.join(format!("temporary-file-with-a-long-name-{i}"))).unwrap();
        }
        fs::File::open(&sub).unwrap().set_modified(mtime).unwrap();
        let b = build(&tree_of(d.path()), &FatOptions::default()).unwrap();
        assert_eq!(a.serial, b.serial);
        assert!(read_all(&a.map) == read_all(&b.map));
    }

    #[test]
    fn empty_file_has_cluster_0_and_dotdot_of_a_top_dir_is_0() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("SUB")).unwrap();
        fs::write(d.path().join("SUB/EMPTY"), b"").unwrap();
        let opts = FatOptions {
            fat_type: Some(FatType::Fat32),
            partition: Partitioning::None,
            ..FatOptions::default()
        };
        let img = build(&tree_of(d.path()), &opts).unwrap();
        let g = img.geometry;
        let bytes = read_all(&img.map);
        // Root (cluster 2) holds SUB at entry 0; SUB is the next cluster.
        let root = g.cluster_offset(2) as usize;
        assert_eq!(&bytes[root..root + 11], b"SUB        ");
        let sub_cluster = u16::from_le_bytes([bytes[root + 26], bytes[root + 27]]) as u32;
        let sub = g.cluster_offset(sub_cluster) as usize;
        assert_eq!(&bytes[sub..sub + 11], b".          ");
        assert_eq!(&bytes[sub + 32..sub + 43], b"..         ");
        assert_eq!(
            &bytes[sub + 32 + 26..sub + 32 + 28],
            &[0, 0],
            "'..' to the root is 0"
        );
        assert_eq!(&bytes[sub + 64..sub + 75], b"EMPTY      ");
        assert_eq!(&bytes[sub + 64 + 20..sub + 64 + 22], &[0, 0]);
        assert_eq!(
            &bytes[sub + 64 + 26..sub + 64 + 32],
            &[0; 6],
            "empty file: cluster 0, size 0"
        );
        // FSInfo: free = clusters - 2 used (root, SUB); next free = 4.
        assert_eq!(
            u32::from_le_bytes(bytes[512 + 488..512 + 492].try_into().unwrap()),
            g.clusters - 2
        );
        assert_eq!(
            u32::from_le_bytes(bytes[512 + 492..512 + 496].try_into().unwrap()),
            4
        );
        // Backup boot sector at sector 6.
        assert!(bytes[..512] == bytes[6 * 512..7 * 512]);
    }

    #[test]
    fn case_collision_is_an_error_naming_both_only_with_strict_names() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("Foo"), b"").unwrap();
        fs::write(d.path().join("foo"), b"").unwrap();
        let strict = FatOptions {
            strict_names: true,
            ..FatOptions::default()
        };
        let e = build(&tree_of(d.path()), &strict).unwrap_err();
        let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(msg.contains("\"Foo\" and \"foo\""), "{msg}");
        build(&tree_of(d.path()), &FatOptions::default()).expect("renamed by default");
    }

    /// The root directory's short entries of a FAT12/16 superfloppy of
    /// `dir`, with the long name in front of each: (long name, short, attr).
    fn root_entries(dir: &Path) -> Vec<(String, [u8; 11], u8)> {
        use layout::SECTOR;
        let opts = FatOptions {
            fat_type: Some(FatType::Fat16),
            partition: Partitioning::None,
            ..FatOptions::default()
        };
        let img = build(&tree_of(dir), &opts).unwrap();
        let bytes = read_all(&img.map);
        let g = img.geometry;
        let root = &bytes[(g.root_start() * SECTOR) as usize..(g.data_start() * SECTOR) as usize];
        let mut out = Vec::new();
        let mut long: Vec<Vec<u16>> = Vec::new();
        for e in root.chunks_exact(32).take_while(|e| e[0] != 0) {
            if e[11] == 0x0F {
                let units = (1..11)
                    .step_by(2)
                    .chain((14..26).step_by(2))
                    .chain((28..32).step_by(2))
                    .map(|o| u16::from_le_bytes([e[o], e[o + 1]]))
                    .take_while(|&u| u != 0 && u != 0xFFFF)
                    .collect();
                long.push(units);
                continue;
            }
            let name: Vec<u16> = long.drain(..).rev().flatten().collect();
            let short: [u8; 11] = e[..11].try_into().unwrap();
            let shown = if name.is_empty() {
                names::short_display(&short)
            } else {
                String::from_utf16(&name).unwrap()
            };
            out.push((shown, short, e[11]));
        }
        out
    }

    #[test]
    fn case_collisions_are_stored_under_unique_names() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "Makefile", "makefile", "README", "readme", "ReadMe", "a:b", "a_b",
        ] {
            fs::write(d.path().join(n), n).unwrap();
        }
        let got: Vec<String> = root_entries(d.path()).into_iter().map(|e| e.0).collect();
        // The tree's bytewise order: the first of each group keeps its name.
        assert_eq!(
            got,
            [
                "Makefile",
                "README",
                "ReadMe~2",
                "a_b",
                "a_b~2",
                "makefile~2",
                "readme~3"
            ]
        );
    }

    #[test]
    fn files_without_write_bits_are_read_only_and_directories_are_not() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        for (n, mode) in [
            ("ro", 0o444),
            ("rw", 0o644),
            ("owner-w", 0o200),
            ("none", 0),
        ] {
            fs::write(d.path().join(n), n).unwrap();
            fs::set_permissions(d.path().join(n), fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::create_dir(d.path().join("rodir")).unwrap();
        fs::set_permissions(d.path().join("rodir"), fs::Permissions::from_mode(0o555)).unwrap();
        let attrs: Vec<(String, u8)> = root_entries(d.path())
            .into_iter()
            .map(|e| (e.0, e.2))
            .collect();
        assert_eq!(
            attrs,
            [
                ("none".to_string(), 0x21),
                ("owner-w".to_string(), 0x20),
                ("ro".to_string(), 0x21),
                ("rodir".to_string(), 0x10),
                ("rw".to_string(), 0x20),
            ]
        );
        fs::set_permissions(d.path().join("rodir"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn free_space_is_reported_as_holes() {
        let d = with_file(0);
        let img = build(
            &tree_of(d.path()),
            &FatOptions {
                size: Some(64 << 20),
                ..FatOptions::default()
            },
        )
        .unwrap();
        let mut ex = synth::ExtentList::new(0);
        img.map.extents(0, img.map.size(), &mut ex).unwrap();
        let data: u64 = ex
            .as_slice()
            .iter()
            .filter(|e| e.kind == synth::ExtentKind::Data)
            .map(|e| e.len)
            .sum();
        assert!(
            data < 1 << 20,
            "{data} bytes reported as data in a nearly empty 64 MiB disk"
        );
    }
}

#[cfg(test)]
mod conformance {
    use super::*;

    /// A FAT image and an overlay on it pass the device conformance check
    /// (extent walks with limits 1, 2 and the default from every region
    /// start: every zero or hole extent reads zeros).
    #[test]
    fn fat_images_and_overlays_on_them_pass_conformance() {
        let d = crate::testutil::sample_dir();
        let tree = tree::scan(
            d.path(),
            &tree::ScanOptions {
                follow_symlinks: true,
                ..Default::default()
            },
        )
        .unwrap();
        let image = build(&tree, &FatOptions::default()).unwrap();
        // A write into a hole and one over the boot sector's neighbourhood.
        let end = synth::BlockDev::size(&image.map) as usize - 5000;
        crate::testutil::check_image_and_overlay(
            image.map,
            &[(end, 100, 9), ((1 << 20) + 600, 10, 8)],
        );
    }
}
