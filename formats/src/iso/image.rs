//! From a plan to bytes and a region map (the layout is drawn in
//! `layout.rs`). Only metadata is in memory; file extents are `Host`
//! regions, and the system area, sector padding and whole-sector holes of
//! sparse host files are `Zero` regions, which block status reports as
//! holes.

use std::path::PathBuf;
use std::sync::Arc;

use log::warn;
use synth::{Backing, BlockDev, FilePool, RegionMap, RegionMapBuilder};
use tree::{Node, Tree};

use super::descriptor::{terminator, Descriptor};
use super::eltorito;
use super::layout::{parts, Child, Flat, Namespace, Target};
use super::record::{
    date7, encode_path_record, DirRecord, FLAG_DIR, FLAG_MULTI_EXTENT, MAX_EXTENT, SECTOR,
};
use super::susp::Continuation;
use super::{volume_id, IsoError, IsoOptions};
use crate::par::par_map;

/// The system area: logical sectors 0-15 (ECMA-119 §6.2.1), zeros here.
const SYSTEM_AREA: u64 = 16;

/// A built ISO 9660 image.
#[derive(Debug)]
pub struct IsoImage {
    /// The image, ready to serve or write.
    pub map: RegionMap,
    /// Volume space size in 2048-byte logical blocks.
    pub blocks: u32,
    /// The volume identifier recorded.
    pub volume_id: String,
    /// Entries whose Joliet names were shortened to 64 characters.
    pub joliet_shortened: usize,
    /// The pool the image's host files are read through.
    pub pool: Arc<FilePool>,
}

/// Build the ISO 9660 image of `tree`.
pub fn build(tree: &Tree, opts: &IsoOptions) -> Result<IsoImage, IsoError> {
    let vol_id = volume_id(opts)?;
    // Volume dates (ECMA-119 §8.4.26-29) and the hybrid GUID seed: never
    // the clock, so the same tree gives the same bytes on every run.
    let time = opts
        .timestamp
        .unwrap_or_else(|| crate::time::default_volume_time(tree));
    let flat = Flat::new(tree, opts.rock_ridge);
    let (mut iso, _) = Namespace::new(&flat, false)?;
    let joliet = if opts.joliet {
        let (ns, shortened) = Namespace::new(&flat, true)?;
        for p in &shortened {
            warn!("{p}: Joliet name shortened to 64 characters (Rock Ridge keeps it whole)");
        }
        Some((ns, shortened.len()))
    } else {
        None
    };

    // El Torito boot images: files of the tree, found by path.
    let find_boot = |rel: &Option<PathBuf>| -> Result<Option<usize>, IsoError> {
        let Some(rel) = rel else { return Ok(None) };
        let want = tree.root.path.join(rel);
        flat.files
            .iter()
            .position(|(f, _)| f.path == want)
            .map(Some)
            .ok_or_else(|| IsoError::BootImage {
                path: rel.clone(),
                reason: "not a regular file in the directory".into(),
            })
    };
    // A hard-linked boot image is patched in its first name's extent.
    let bios = find_boot(&opts.boot)?.map(|i| flat.link_of[i].unwrap_or(i));
    let efi_file = find_boot(&opts.efi_boot)?;
    if efi_file.is_some() && opts.efi_image.is_some() {
        return Err(IsoError::BootImage {
            path: opts.efi_boot.clone().unwrap_or_default(),
            reason: "give either an EFI image file or a synthesized one, not both".into(),
        });
    }
    // An empty EFI image is no FAT filesystem, and it would make an empty EFI system partition
    // (its last sector before its first) in a hybrid image's tables.
    let efi_bytes = match (efi_file, &opts.efi_image) {
        (Some(i), _) => Some(flat.files[i].0.meta.size),
        (None, Some(dev)) => Some(dev.size()),
        (None, None) => None,
    };
    if efi_bytes == Some(0) {
        return Err(IsoError::BootImage {
            path: opts
                .efi_boot
                .clone()
                .unwrap_or_else(|| PathBuf::from("(the synthesized EFI image)")),
            reason: "empty; an EFI boot image is a FAT filesystem image".into(),
        });
    }
    let booting = bios.is_some() || efi_file.is_some() || opts.efi_image.is_some();

    // Logical blocks: descriptors (PVD, El Torito boot record at 17,
    // Joliet SVD, terminator), the boot catalog, path tables,
    // continuation areas, directories, files.
    let descriptors = 2 + u64::from(joliet.is_some()) + u64::from(booting);
    let mut next = SYSTEM_AREA + descriptors;
    let catalog_lba = next;
    if booting {
        next += 1;
    }
    let table_blocks = |ns: &Namespace| u64::from(ns.path_table_size).div_ceil(SECTOR);
    let iso_tables = (next, next + table_blocks(&iso));
    next += 2 * table_blocks(&iso);
    let joliet_tables = joliet.as_ref().map(|(ns, _)| {
        let t = (next, next + table_blocks(ns));
        next += 2 * table_blocks(ns);
        t
    });
    let mut ce = Continuation::new(u32::try_from(next).map_err(|_| IsoError::TooLarge)?);
    if opts.rock_ridge {
        iso.add_rock_ridge(&flat, &mut ce);
    }
    let ce_start = next;
    next += u64::from(ce.sectors());
    next = iso.place(&flat, next)?;
    let mut joliet = joliet;
    if let Some((ns, _)) = &mut joliet {
        next = ns.place(&flat, next)?;
    }
    let mut file_extent = Vec::with_capacity(flat.files.len());
    for (i, (f, _)) in flat.files.iter().enumerate() {
        if let Some(first) = flat.link_of[i] {
            file_extent.push(file_extent[first]);
            continue;
        }
        let blocks = f.meta.size.div_ceil(SECTOR);
        // Empty files point at block 0 with length 0, as mkisofs does.
        file_extent.push(if blocks == 0 { 0 } else { next });
        next += blocks;
    }
    // A synthesized EFI image goes after the files; it is in no directory
    // (firmware finds it through the boot catalog and the hybrid MBR).
    let efi_virtual = opts.efi_image.as_ref().map(|dev| {
        let at = next;
        next += dev.size().div_ceil(SECTOR);
        (at, dev.size())
    });
    // The EFI image: (first block, bytes).
    let efi = efi_virtual.or(efi_file.map(|i| (file_extent[i], flat.files[i].0.meta.size)));
    // With an EFI image, a hybrid image also gets a GUID partition table;
    // its backup copy needs the last 33 sectors, which the volume includes
    // (as xorriso's images do), so the volume size is the disk size.
    let data_blocks = next;
    let gpt_tail = opts.hybrid && efi.is_some();
    if gpt_tail {
        next += (crate::partition::gpt::table_sectors(512) * 512).div_ceil(SECTOR);
    }
    let blocks = u32::try_from(next).map_err(|_| IsoError::TooLarge)?;

    let mut b = RegionMapBuilder::new();
    let mut backup_gpt = None;
    if opts.hybrid {
        let code = match (&opts.hybrid_boot_code, bios) {
            (Some(code), Some(i)) => Some(isohybrid_code(code, file_extent[i], flat.files[i].0)?),
            (Some(_), None) => {
                return Err(IsoError::BootImage {
                    path: PathBuf::from("--hybrid-mbr"),
                    reason: "the MBR boot code loads the BIOS boot image; give --boot too".into(),
                })
            }
            (None, _) => None,
        };
        let hybrid = Hybrid {
            blocks: u64::from(blocks),
            data_blocks,
            efi,
            seed: hybrid_seed(&vol_id, blocks, time, &tree.root.path, &flat),
        };
        b.push_bytes("hybrid MBR", hybrid.mbr(code.as_ref()).to_vec())?;
        if let Some(gpt) = hybrid.gpt() {
            b.push_bytes("GPT header and entries", gpt.primary()?)?;
            backup_gpt = Some(gpt.backup()?);
        }
    }
    // The system area (§6.2.1), unused without a hybrid MBR or GPT.
    let unused = (SYSTEM_AREA * SECTOR).saturating_sub(b.position());
    b.push("system area (unused)", unused, Backing::Zero)?;
    let desc = |joliet: bool, ns: &Namespace, tables: (u64, u64), id: &str| {
        let root = &ns.dirs[0];
        Descriptor {
            joliet,
            volume_id: id,
            volume_blocks: blocks,
            path_table_size: ns.path_table_size,
            path_tables: (tables.0 as u32, tables.1 as u32),
            root: (root.extent, root.sectors * SECTOR as u32),
            time,
        }
        .encode()
    };
    b.push_bytes(
        "primary volume descriptor",
        desc(false, &iso, iso_tables, &vol_id),
    )?;
    if booting {
        b.push_bytes(
            "El Torito boot record",
            eltorito::boot_record(catalog_lba as u32),
        )?;
    }
    if let (Some((ns, _)), Some(t)) = (&joliet, joliet_tables) {
        // Joliet keeps the identifier as given (16 UCS-2 characters).
        let id = opts.volume_id.as_deref().unwrap_or(&vol_id);
        b.push_bytes("Joliet volume descriptor", desc(true, ns, t, id))?;
    }
    b.push_bytes("volume descriptor set terminator", terminator())?;
    if booting {
        let bios_image = bios.map(|i| eltorito::BootImage {
            lba: file_extent[i] as u32,
            sectors: opts.boot_load_size.unwrap_or(4),
        });
        // UEFI firmware loads the whole image; the count is informational
        // and saturates for images over 32 MiB.
        let efi_image = efi.map(|(lba, size)| eltorito::BootImage {
            lba: lba as u32,
            sectors: size.div_ceil(512).min(0xFFFF) as u16,
        });
        let catalog = eltorito::catalog(bios_image, efi_image);
        b.push_bytes("El Torito boot catalog", catalog)?;
    }
    debug_assert_eq!(b.position(), iso_tables.0 * SECTOR);
    push_path_tables(&mut b, &iso, false)?;
    if let Some((ns, _)) = &joliet {
        push_path_tables(&mut b, ns, true)?;
    }
    debug_assert_eq!(b.position(), ce_start * SECTOR);
    b.push_bytes("Rock Ridge continuation areas", ce.into_bytes())?;
    push_dirs(&mut b, "directory", &iso, &flat, &file_extent)?;
    if let Some((ns, _)) = &joliet {
        push_dirs(&mut b, "Joliet directory", ns, &flat, &file_extent)?;
    }

    let pool = FilePool::new(opts.max_open_files);
    for (i, ((f, _), &extent)) in flat.files.iter().zip(&file_extent).enumerate() {
        if flat.link_of[i].is_some() {
            continue; // a hard link: its first name's extent holds the data
        }
        if bios == Some(i) && opts.boot_info_table {
            push_patched_boot(&mut b, f, extent)?;
        } else if f.meta.size > 0 {
            push_file(&mut b, &pool, f, extent * SECTOR)?;
        }
    }
    if let (Some(dev), Some((at, size))) = (&opts.efi_image, efi_virtual) {
        b.pad_to(at * SECTOR)?;
        b.push(
            "EFI boot image (synthesized)",
            size,
            Backing::Dev {
                dev: dev.clone(),
                offset: 0,
            },
        )?;
    }
    if let Some(backup) = backup_gpt {
        b.pad_to(u64::from(blocks) * SECTOR - backup.len() as u64)?;
        b.push_bytes("backup GPT entries and header", backup)?;
    }
    b.pad_to(u64::from(blocks) * SECTOR)?;
    let map = b.finish();
    debug_assert_eq!(synth::BlockDev::size(&map), u64::from(blocks) * SECTOR);
    Ok(IsoImage {
        map,
        blocks,
        volume_id: vol_id,
        joliet_shortened: joliet.map_or(0, |(_, n)| n),
        pool,
    })
}

/// The type L and type M path tables of `ns` (§9.4), each whole sectors.
fn push_path_tables(
    b: &mut RegionMapBuilder,
    ns: &Namespace<'_>,
    joliet: bool,
) -> Result<(), IsoError> {
    for big_endian in [false, true] {
        let mut t = Vec::with_capacity(ns.path_table_size as usize);
        encode_path_record(&mut t, &[0], ns.dirs[0].extent, 1, big_endian);
        for &d in &ns.order {
            for r in &ns.dirs[d].recs {
                if let Target::Entry(Child::Dir(j)) = r.target {
                    encode_path_record(
                        &mut t,
                        &r.ident,
                        ns.dirs[j].extent,
                        ns.number[d],
                        big_endian,
                    );
                }
            }
        }
        // Records of each directory's children follow the BFS order, so
        // this is the path table order.
        debug_assert_eq!(t.len(), ns.path_table_size as usize);
        t.resize(t.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
        let name = match (joliet, big_endian) {
            (false, false) => "path table (L)",
            (false, true) => "path table (M)",
            (true, false) => "Joliet path table (L)",
            (true, true) => "Joliet path table (M)",
        };
        b.push_bytes(name, t)?;
    }
    Ok(())
}

/// Every directory of `ns`, in placement order, a region each named
/// `NAME /path`.
fn push_dirs(
    b: &mut RegionMapBuilder,
    name: &str,
    ns: &Namespace<'_>,
    flat: &Flat<'_>,
    file_extent: &[u64],
) -> Result<(), IsoError> {
    debug_assert_eq!(b.position(), u64::from(ns.dirs[0].extent) * SECTOR);
    let dirs = par_map(&ns.order, |_, &d| dir_bytes(ns, d, flat, file_extent));
    // One region per directory, named by its path in the image for people
    // (the web view); the same bytes, in the same order.
    let root = &flat.dirs[0].node.path;
    for (&d, bytes) in ns.order.iter().zip(dirs) {
        let host = &flat.dirs[d].node.path;
        let inside = host.strip_prefix(root).unwrap_or(host);
        let label = if inside.as_os_str().is_empty() {
            format!("{name} / (root)")
        } else {
            format!("{name} /{}", inside.display())
        };
        b.push_bytes(&label, bytes)?;
    }
    Ok(())
}

/// The records of directory `d` (§9.1, §6.8.1.1: none straddles a
/// sector; the rest of a sector is zeros).
fn dir_bytes(ns: &Namespace<'_>, d: usize, flat: &Flat<'_>, file_extent: &[u64]) -> Vec<u8> {
    let dir = &ns.dirs[d];
    let size_of = |j: usize| ns.dirs[j].sectors * SECTOR as u32;
    let mut out = Vec::with_capacity(dir.sectors as usize * SECTOR as usize);
    let mut push = |r: DirRecord<'_>| {
        let len = super::record::record_len(r.ident.len(), r.su.len());
        let s = SECTOR as usize;
        if out.len() % s + len > s {
            out.resize(out.len().div_ceil(s) * s, 0);
        }
        r.encode(&mut out);
    };
    for r in &dir.recs {
        let (ident, su) = (&r.ident[..], &r.su[..]);
        let dir_rec = |j: usize, node: &Node| DirRecord {
            extent: ns.dirs[j].extent,
            size: size_of(j),
            time: date7(node.meta.mtime.secs),
            flags: FLAG_DIR,
            ident,
            su,
        };
        match r.target {
            Target::Dot => push(dir_rec(d, flat.dirs[d].node)),
            Target::DotDot => {
                let p = flat.dirs[d].parent;
                push(dir_rec(p, flat.dirs[p].node));
            }
            Target::Entry(Child::Dir(j)) => push(dir_rec(j, flat.dirs[j].node)),
            Target::Entry(Child::File(j)) => {
                // §6.5.1, §9.1.6: a file of several extents has one record
                // per extent, all but the last flagged.
                let node = flat.files[j].0;
                let size = node.meta.size;
                let n = parts(size);
                for k in 0..n {
                    let len = (size - k * MAX_EXTENT).min(MAX_EXTENT);
                    push(DirRecord {
                        extent: if size == 0 {
                            0
                        } else {
                            (file_extent[j] + k * (MAX_EXTENT / SECTOR)) as u32
                        },
                        size: len as u32,
                        time: date7(node.meta.mtime.secs),
                        flags: if k + 1 < n { FLAG_MULTI_EXTENT } else { 0 },
                        ident,
                        su,
                    });
                }
            }
            Target::Entry(Child::Other(node, _)) => push(DirRecord {
                extent: 0,
                size: 0,
                time: date7(node.meta.mtime.secs),
                flags: 0,
                ident,
                su,
            }),
        }
    }
    debug_assert!(out.len() <= dir.sectors as usize * SECTOR as usize);
    out.resize(dir.sectors as usize * SECTOR as usize, 0);
    out
}

/// The partition tables of a `--hybrid` image, which also works as a disk
/// (USB stick).
struct Hybrid {
    /// Volume size in logical blocks (GPT backup included).
    blocks: u64,
    /// End of the ISO 9660 data (first block of the GPT backup area).
    data_blocks: u64,
    /// The EFI boot image: (first block, bytes).
    efi: Option<(u64, u64)>,
    /// 16 bytes derived from what the image holds, for the GUIDs and the
    /// disk signature (reproducible builds).
    seed: [u8; 16],
}

/// 512-byte sectors per 2048-byte logical block.
const PER_BLOCK: u64 = SECTOR / 512;
/// The BIOS partition type isohybrid gives the ISO 9660 region.
const ISO_MBR_TYPE: u8 = 0x17;

impl Hybrid {
    /// Without an EFI image, an MBR as isohybrid lays it out: partition 1,
    /// active, type 0x17, from sector 0 over the whole image (so the
    /// partition itself mounts as ISO 9660).
    ///
    /// With one, a hybrid MBR beside the GPT: a 0xEE entry over the GPT
    /// (UEFI firmware and Linux then use the GPT, UEFI 2.10 §5.2.3), the
    /// ISO 9660 region(s) (active, type 0x17) and the EFI system partition
    /// (0xEF) mirroring the GPT's, so BIOSes that want an active partition
    /// and MBR-only firmware still boot. Entries never overlap.
    fn mbr(&self, code: Option<&[u8; 440]>) -> [u8; 512] {
        use crate::partition::mbr::{encode_with_code, MbrPartition};
        let sectors = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        // What an entry can describe: nothing past 2^32 sectors (2 TiB); the GPT has the rest.
        let within = |start: u32, n: u64| sectors(n).min(u32::MAX - start);
        let mut parts = Vec::new();
        match self.gpt_ranges() {
            None => parts.push(MbrPartition {
                kind: ISO_MBR_TYPE,
                start: 0,
                sectors: sectors(self.blocks * PER_BLOCK),
                active: true,
            }),
            Some(ranges) => {
                parts.push(MbrPartition {
                    kind: crate::partition::mbr::PROTECTIVE_TYPE,
                    start: 1,
                    sectors: sectors(ranges[0].1 - 1),
                    active: false,
                });
                let first_iso = ranges.iter().position(|r| r.0 == Region::Iso);
                for (i, &(kind, first, last)) in ranges.iter().enumerate() {
                    parts.push(MbrPartition {
                        kind: if kind == Region::Esp {
                            0xEF
                        } else {
                            ISO_MBR_TYPE
                        },
                        start: sectors(first),
                        sectors: within(sectors(first), last - first + 1),
                        active: Some(i) == first_iso,
                    });
                }
            }
        }
        let signature = u32::from_le_bytes(self.seed[..4].try_into().expect("4 bytes"));
        match code {
            Some(c) => encode_with_code(&parts, signature, c),
            None => crate::partition::mbr::encode(&parts, signature),
        }
    }

    /// The GPT partitions as (kind, first sector, last sector): the ISO
    /// 9660 data after the system area, split around the EFI image when it
    /// is one of the files (GPT partitions may not overlap, §5.3.3).
    fn gpt_ranges(&self) -> Option<Vec<(Region, u64, u64)>> {
        let (efi_lba, efi_bytes) = self.efi?;
        let first = SYSTEM_AREA * PER_BLOCK;
        let end = self.data_blocks * PER_BLOCK; // exclusive
        let (efi_first, efi_end) = (
            efi_lba * PER_BLOCK,
            efi_lba * PER_BLOCK + efi_bytes.div_ceil(512),
        );
        let mut r = Vec::new();
        if efi_first > first {
            r.push((Region::Iso, first, efi_first - 1));
        }
        r.push((Region::Esp, efi_first, efi_end - 1));
        if efi_end < end {
            r.push((Region::Iso, efi_end, end - 1));
        }
        Some(r)
    }

    fn gpt(&self) -> Option<crate::partition::Gpt> {
        use crate::partition::types::{BASIC_DATA, ESP};
        use crate::partition::{derive_guid, Gpt, GptPartition};
        let ranges = self.gpt_ranges()?;
        // Each GUID hashes the seed with its own number.
        let guid = |n: u8| derive_guid(&self.seed, n, b"");
        // Bit 60: read-only (the ISO 9660 regions are never written).
        const READ_ONLY: u64 = 1 << 60;
        Some(Gpt {
            sector_size: 512,
            disk_guid: guid(0),
            disk_sectors: self.blocks * PER_BLOCK,
            partitions: ranges
                .iter()
                .enumerate()
                .map(|(i, &(kind, first, last))| GptPartition {
                    kind: if kind == Region::Esp { ESP } else { BASIC_DATA },
                    guid: guid(i as u8 + 1),
                    first,
                    last,
                    attributes: if kind == Region::Esp { 0 } else { READ_ONLY },
                    name: if kind == Region::Esp {
                        "EFI System"
                    } else {
                        "ISO9660"
                    }
                    .into(),
                })
                .collect(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Iso,
    Esp,
}

/// 16 bytes that change with what the image holds (volume id, size, time,
/// every path, size and mtime), stable across builds and toolchains. Paths
/// are taken relative to the top directory: where the tree sits on the host
/// (or how it was named on the command line) is not in the image.
fn hybrid_seed(
    vol_id: &str,
    blocks: u32,
    time: i64,
    root: &std::path::Path,
    flat: &Flat<'_>,
) -> [u8; 16] {
    let mut h = crate::hash::StableHasher::new();
    let mut feed = |bytes: &[u8]| h.update(bytes);
    feed(vol_id.as_bytes());
    feed(&blocks.to_le_bytes());
    feed(&time.to_le_bytes());
    for (f, _) in &flat.files {
        let rel = f.path.strip_prefix(root).unwrap_or(&f.path);
        feed(rel.as_os_str().as_encoded_bytes());
        feed(&[0]);
        feed(&f.meta.size.to_le_bytes());
        feed(&f.meta.mtime.secs.to_le_bytes());
    }
    h.finish()
}

/// The loader's MBR boot code for BIOS booting from a USB stick (isolinux's
/// `isohdpfx.bin`, as `isohybrid` and `xorriso -isohybrid-mbr` use it): its
/// first 432 bytes, then at 432 the boot image's address in 512-byte
/// sectors (u64, little-endian), which the code loads and jumps to.
fn isohybrid_code(code: &[u8], boot_lba: u64, boot: &Node) -> Result<[u8; 440], IsoError> {
    if code.len() < 432 || code.len() > 512 {
        return Err(IsoError::BootImage {
            path: PathBuf::from("--hybrid-mbr"),
            reason: format!(
                "{} bytes; MBR boot code (e.g. isohdpfx.bin) is 432 to 512 bytes",
                code.len()
            ),
        });
    }
    let mut out = [0u8; 440];
    out[..432].copy_from_slice(&code[..432]);
    out[432..440].copy_from_slice(&(boot_lba * PER_BLOCK).to_le_bytes());
    // isolinux.bin marks itself hybrid-capable with this word after the
    // boot-info table; without it the MBR code's jump lands elsewhere.
    let mut head = [0u8; 68];
    let ok = std::fs::File::open(&boot.path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
        .is_ok()
        && head[64..68] == 0x7078_C0FBu32.to_le_bytes();
    if !ok {
        warn!(
            "{}: no isohybrid signature at byte 64; BIOS booting from a disk through the --hybrid-mbr code may fail",
            boot.path.display()
        );
    }
    Ok(out)
}

/// The BIOS boot image with its boot-info table patched: read once at
/// start-up (boot loaders are small) and served from memory, so the
/// patched bytes are what every client and `-o` see.
fn push_patched_boot(b: &mut RegionMapBuilder, node: &Node, extent: u64) -> Result<(), IsoError> {
    const MAX_BOOT: u64 = 64 << 20;
    let err = |reason: String| IsoError::BootImage {
        path: node.path.clone(),
        reason,
    };
    if node.meta.size > MAX_BOOT {
        return Err(err(format!(
            "{} bytes; a boot image with a boot-info table is read into memory, at most 64 MiB",
            node.meta.size
        )));
    }
    let mut bytes = std::fs::read(&node.path).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 != node.meta.size {
        return Err(err("changed size while the image was being built".into()));
    }
    eltorito::patch_boot_info(&mut bytes, SYSTEM_AREA as u32, extent as u32);
    bytes.resize(bytes.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    debug_assert_eq!(b.position(), extent * SECTOR);
    b.push_bytes("El Torito boot image (patched)", bytes)?;
    Ok(())
}

/// A file's extent at byte `start`: `Host` regions for its data, `Zero`
/// for whole-sector holes of a sparse host file and the padding to the
/// sector end.
fn push_file(
    b: &mut RegionMapBuilder,
    pool: &Arc<FilePool>,
    node: &Node,
    start: u64,
) -> Result<(), IsoError> {
    // 4 KiB-aligned ranges from a 2048-aligned start: holes are whole
    // sectors.
    crate::sparse::push_host_data(b, pool, node, start)?;
    b.pad_to(start + node.meta.size.div_ceil(SECTOR) * SECTOR)?;
    Ok(())
}
