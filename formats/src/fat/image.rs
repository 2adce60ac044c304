//! From a plan to bytes and a region map.
//!
//! ```text
//!  disk:   [MBR][pad to 1 MiB][ volume .................................... ][pad]
//!          (with an MBR, `partition::build` puts the volume's own map in a
//!          `Dev` region; without, the volume map is the disk)
//!  volume: [reserved: boot, FSInfo, backups][FAT 1][FAT 2][root (12/16)][dirs][files][free]
//!  FAT n:  [used entries: Bytes][unused entries: Zero]     (both FATs share the bytes)
//!  files:  [Host file][Zero to the cluster end] ...
//! ```
//! Only what the plan allocated is materialized; free clusters, FAT tails
//! and padding are `Zero` regions, which block status reports as holes.

use std::sync::Arc;

use bytes::Bytes;
use log::warn;
use synth::{Backing, FilePool, RegionMap, RegionMapBuilder};
use tree::{Node, Tree};

use super::boot_sector::{self, BootInfo};
use super::dir_entry::{
    self, FatTime, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_READ_ONLY, ATTR_VOLUME_ID,
};
use super::layout::{Geometry, SECTOR};
use super::names;
use super::plan::{Child, Plan};
use super::{FatError, FatOptions, FatType, Partitioning};
use crate::partition::{self, DiskOptions, PartType, PartitionSpec, TableKind};

/// A built FAT image.
#[derive(Debug)]
pub struct FatImage {
    /// The image, ready to serve or write.
    pub map: RegionMap,
    /// The volume's geometry.
    pub geometry: Geometry,
    /// Byte offset of the volume (1 MiB with an MBR, else 0).
    pub volume_offset: u64,
    /// Data clusters in use.
    pub used_clusters: u32,
    /// The volume serial number.
    pub serial: u32,
    /// The pool the image's host files are read through.
    pub pool: Arc<FilePool>,
}

/// Build the FAT image of `tree`.
pub fn build(tree: &Tree, opts: &FatOptions) -> Result<FatImage, FatError> {
    let label = encode_label(opts.label.as_deref())?;
    let plan = Plan::new(tree, opts)?;
    for p in &plan.replaced {
        warn!(
            "{}: characters FAT cannot store (\\ / : * ? \" < > | or control characters) were replaced by _",
            p.display()
        );
    }
    for r in &plan.renamed {
        let name = r.path.file_name().unwrap_or_default().to_string_lossy();
        let why = if name.to_uppercase() == r.first.to_uppercase() {
            "FAT names are case-insensitive"
        } else {
            "FAT sees one name (characters it cannot store become _, case and trailing dots and spaces are ignored)"
        };
        warn!(
            "{}: stored as {:?}: {why} and {:?} is in the same directory (--strict-names makes this an error)",
            r.path.display(),
            r.stored,
            r.first,
        );
    }
    let g = plan.geometry;
    let serial = opts.serial.unwrap_or_else(|| derive_serial(tree, opts, &g));
    let time = |n: &Node| match opts.timestamp {
        Some(t) => FatTime::from_unix(t, 0),
        None => FatTime::from_unix(n.meta.mtime.secs, n.meta.mtime.nanos),
    };
    let pool = FilePool::new(opts.max_open_files);

    // The volume's own map; offsets below are from the volume's start.
    let mut b = RegionMapBuilder::new();

    // Reserved area: boot sector (and FAT32's FSInfo and backups).
    let info = BootInfo {
        serial,
        label: label.unwrap_or(*b"NO NAME    "),
        root_cluster: if g.fat_type == FatType::Fat32 {
            plan.dirs[0].cluster
        } else {
            0
        },
        drive: if opts.floppy.is_some() { 0x00 } else { 0x80 },
    };
    let boot = boot_sector::encode(&g, &info);
    let mut reserved = vec![0u8; g.reserved_sectors as usize * SECTOR as usize];
    reserved[..512].copy_from_slice(&boot);
    if g.fat_type == FatType::Fat32 {
        let free = g.clusters - (plan.next_free - 2);
        let next = if free == 0 {
            0xFFFF_FFFF
        } else {
            plan.next_free
        };
        let fsinfo = boot_sector::fsinfo(free, next);
        reserved[512..1024].copy_from_slice(&fsinfo);
        reserved[6 * 512..7 * 512].copy_from_slice(&boot);
        reserved[7 * 512..8 * 512].copy_from_slice(&fsinfo);
    }
    // Named sector by sector for people (the web view); the same bytes.
    let reserved = Bytes::from(reserved);
    let named: &[(usize, &str)] = if g.fat_type == FatType::Fat32 {
        &[
            (0, "boot sector"),
            (1, "FSInfo sector"),
            (2, "reserved sectors"),
            (6, "backup boot sector"),
            (7, "backup FSInfo sector"),
            (8, "reserved sectors"),
        ]
    } else {
        &[(0, "boot sector"), (1, "reserved sectors")]
    };
    for (i, &(first, name)) in named.iter().enumerate() {
        let end = named
            .get(i + 1)
            .map_or(reserved.len(), |n| n.0 * SECTOR as usize);
        let start = first * SECTOR as usize;
        if start < end && end <= reserved.len() {
            b.push_bytes(name, reserved.slice(start..end))?;
        }
    }

    // Two identical FATs; only the used prefix is in memory.
    let fat = Bytes::from(fat_table(&plan));
    for n in 0..2u32 {
        debug_assert_eq!(b.position(), g.fat_start(n) * SECTOR);
        let name = if n == 0 { "FAT 1" } else { "FAT 2" };
        b.push(name, fat.len() as u64, Backing::Bytes(fat.clone()))?;
        // The rest of the FAT: entries of free clusters, zeros.
        let unused = (g.fat_start(n + 1) * SECTOR).saturating_sub(b.position());
        b.push(&format!("{name} (free entries)"), unused, Backing::Zero)?;
    }

    // Directories.
    let dir_bytes: Vec<Vec<u8>> = (0..plan.dirs.len())
        .map(|i| dir_bytes(&plan, i, label.filter(|_| i == 0), &time))
        .collect();
    if g.fat_type != FatType::Fat32 {
        let mut root = dir_bytes[0].clone();
        root.resize((g.root_sectors() * SECTOR) as usize, 0);
        b.push_bytes("root directory", root)?;
    }
    debug_assert_eq!(b.position(), g.data_start() * SECTOR);
    let cs = g.cluster_bytes();
    for (i, (d, mut bytes)) in plan.dirs.iter().zip(dir_bytes).enumerate() {
        if i == 0 && g.fat_type != FatType::Fat32 {
            continue;
        }
        debug_assert_eq!(b.position(), g.cluster_offset(d.cluster));
        bytes.resize((u64::from(d.clusters) * cs) as usize, 0);
        // Named by its path in the image, as people look for it.
        let inside = d
            .node
            .path
            .strip_prefix(&tree.root.path)
            .unwrap_or(&d.node.path);
        let name = if inside.as_os_str().is_empty() {
            "root directory".to_string()
        } else {
            format!("directory /{}", inside.display())
        };
        b.push_bytes(&name, bytes)?;
    }
    for f in &plan.files {
        if f.clusters == 0 {
            continue;
        }
        let start = g.cluster_offset(f.cluster);
        crate::sparse::push_host_data(&mut b, &pool, f.node, start)?;
        b.pad_to(start + u64::from(f.clusters) * cs)?;
    }
    let vol = plan.volume_offset;
    let map = if opts.floppy.is_none() && opts.partition == Partitioning::Mbr {
        b.pad_to(g.volume_bytes())?;
        let disk = partition::build(
            &DiskOptions {
                table: TableKind::Mbr,
                sector_size: SECTOR,
                align: vol,
                size: Some(plan.disk_size),
                mbr_signature: Some(serial),
                ..DiskOptions::default()
            },
            vec![PartitionSpec {
                label: String::new(),
                kind: PartType {
                    gpt: Some(partition::types::BASIC_DATA),
                    mbr: Some(g.fat_type.mbr_type()),
                },
                content: Arc::new(b.finish()),
                size: g.volume_bytes(),
                attributes: 0,
                guid: None,
                bootable: false,
            }],
        )?;
        debug_assert_eq!(disk.report.partitions[0].offset, vol);
        disk.map
    } else {
        b.pad_to(plan.disk_size)?;
        b.finish()
    };
    debug_assert_eq!(synth::BlockDev::size(&map), plan.disk_size);
    Ok(FatImage {
        map,
        geometry: g,
        volume_offset: vol,
        used_clusters: plan.next_free - 2,
        serial,
        pool,
    })
}

/// The used prefix of a FAT, whole sectors. Entries 0 and 1 hold the media
/// byte and the end-of-chain mark with the "clean" bits set (MS FAT spec
/// §4.2); every directory and file is one contiguous chain.
fn fat_table(plan: &Plan<'_>) -> Vec<u8> {
    let t = plan.geometry.fat_type;
    let entries = u64::from(plan.next_free);
    let len = t.fat_bytes(entries).div_ceil(SECTOR) * SECTOR;
    let mut fat = vec![0u8; len as usize];
    let eoc = match t {
        FatType::Fat12 => 0xFFF,
        FatType::Fat16 => 0xFFFF,
        FatType::Fat32 => 0x0FFF_FFFF,
    };
    let media = u32::from(plan.geometry.media) | (eoc & !0xFF);
    let mut set = |n: u32, v: u32| match t {
        FatType::Fat12 => {
            let i = (n as usize * 3) / 2;
            if n.is_multiple_of(2) {
                fat[i] = v as u8;
                fat[i + 1] = (fat[i + 1] & 0xF0) | ((v >> 8) as u8 & 0x0F);
            } else {
                fat[i] = (fat[i] & 0x0F) | ((v << 4) as u8);
                fat[i + 1] = (v >> 4) as u8;
            }
        }
        FatType::Fat16 => {
            fat[n as usize * 2..n as usize * 2 + 2].copy_from_slice(&(v as u16).to_le_bytes())
        }
        FatType::Fat32 => fat[n as usize * 4..n as usize * 4 + 4].copy_from_slice(&v.to_le_bytes()),
    };
    set(0, media);
    set(1, eoc);
    let runs = plan
        .dirs
        .iter()
        .map(|d| (d.cluster, d.clusters))
        .chain(plan.files.iter().map(|f| (f.cluster, f.clusters)));
    for (start, n) in runs {
        if n == 0 {
            continue;
        }
        for c in start..start + n - 1 {
            set(c, c + 1);
        }
        set(start + n - 1, eoc);
    }
    fat
}

/// The entries of directory `i`: `.` and `..` (not in the root), the
/// volume label (root only), then each child's LFN entries and short entry.
fn dir_bytes(
    plan: &Plan<'_>,
    i: usize,
    label: Option<[u8; 11]>,
    time: &dyn Fn(&Node) -> FatTime,
) -> Vec<u8> {
    let d = &plan.dirs[i];
    let mut out = Vec::with_capacity((d.entries * 32) as usize);
    let t = time(d.node);
    if i != 0 {
        // MS FAT spec §6.7: ".." of a directory whose parent is the root
        // holds cluster 0, also on FAT32.
        let parent = if d.parent == 0 {
            0
        } else {
            plan.dirs[d.parent].cluster
        };
        out.extend_from_slice(&dir_entry::encode(
            b".          ",
            ATTR_DIRECTORY,
            d.cluster,
            0,
            t,
        ));
        out.extend_from_slice(&dir_entry::encode(
            b"..         ",
            ATTR_DIRECTORY,
            parent,
            0,
            t,
        ));
    }
    if let Some(l) = label {
        out.extend_from_slice(&dir_entry::encode(&l, ATTR_VOLUME_ID, 0, 0, t));
    }
    for (name, child) in d.names.iter().zip(&d.children) {
        if let Some(long) = &name.long {
            for e in names::lfn_entries(long, &name.short) {
                out.extend_from_slice(&e);
            }
        }
        let e = match *child {
            Child::Dir(j) => {
                let c = &plan.dirs[j];
                dir_entry::encode(&name.short, ATTR_DIRECTORY, c.cluster, 0, time(c.node))
            }
            Child::File(j) => {
                let f = &plan.files[j];
                let size = f.node.meta.size as u32;
                dir_entry::encode(
                    &name.short,
                    file_attr(f.node),
                    f.cluster,
                    size,
                    time(f.node),
                )
            }
        };
        out.extend_from_slice(&e);
    }
    debug_assert_eq!(
        out.len() as u64,
        d.entries * 32,
        "{}",
        plan.dir_path(i).display()
    );
    out
}

/// A file's `DIR_Attr` (MS FAT spec §6 "Directory Structure"): ARCHIVE, as
/// every writer sets on a new file, plus READ_ONLY when the host file has no
/// write bit at all (mode & 0o222 == 0), so a file nobody may write stays
/// that way. Directories never get READ_ONLY: Windows ignores it on
/// directories (Explorer uses it to mark folders with a customised view)
/// and Linux's vfat does too unless mounted with `rodir`, so it would say
/// nothing reliable.
fn file_attr(n: &Node) -> u8 {
    if n.meta.mode & 0o222 == 0 {
        ATTR_ARCHIVE | ATTR_READ_ONLY
    } else {
        ATTR_ARCHIVE
    }
}

/// The label as the 11 space-padded bytes FAT stores: upper case, only
/// characters legal in short names.
fn encode_label(label: Option<&str>) -> Result<Option<[u8; 11]>, FatError> {
    let Some(l) = label else { return Ok(None) };
    let err = |reason| FatError::Label {
        label: l.to_string(),
        reason,
    };
    let up = l.to_ascii_uppercase();
    if up.is_empty() || up.trim().is_empty() {
        return Err(err("empty"));
    }
    if up.len() > 11 {
        return Err(err("longer than 11 characters"));
    }
    if !up
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b" !#$%&'()-@^_`{}~".contains(&c))
    {
        return Err(err(
            "only letters, digits, spaces and ! # $ % & ' ( ) - @ ^ _ ` { } ~ are allowed",
        ));
    }
    let mut out = [b' '; 11];
    out[..up.len()].copy_from_slice(up.as_bytes());
    Ok(Some(out))
}

/// A serial that depends only on what the image holds: names, file sizes,
/// times, read-only attributes and the geometry (FNV-1a, stable across
/// builds and platforms). Not directory sizes: they depend on the host
/// filesystem (and on entries deleted long ago), not on the tree.
fn derive_serial(tree: &Tree, opts: &FatOptions, g: &Geometry) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    fn walk(n: &Node, eat: &mut dyn FnMut(&[u8]), ts: Option<i64>) {
        eat(n.name.as_encoded_bytes());
        eat(&[0]);
        let size = if n.is_dir() { 0 } else { n.meta.size };
        eat(&size.to_le_bytes());
        eat(&ts.unwrap_or(n.meta.mtime.secs).to_le_bytes());
        // The attribute is in the image; a byte only for read-only files.
        if !n.is_dir() && file_attr(n) & ATTR_READ_ONLY != 0 {
            eat(b"R");
        }
        for c in n.children() {
            walk(c, eat, ts);
        }
        eat(&[1]);
    }
    walk(&tree.root, &mut eat, opts.timestamp);
    eat(opts.label.as_deref().unwrap_or("").as_bytes());
    eat(&g.total_sectors.to_le_bytes());
    eat(&[g.sectors_per_cluster as u8]);
    (h ^ (h >> 32)) as u32
}
