//! `disksynth build`: a whole disk composed from generators, laid out by the one partitioning
//! module (`formats::partition`). Every partition is a device region of one map, so serving,
//! block status, sparse `-o` and `--rw` work exactly as for a single filesystem.
//!
//! Sizing runs in two passes: each filesystem is first built at its natural size (metadata
//! only: milliseconds), which gives `auto`, `auto+N%` and `min:` their numbers and the
//! `remaining` partition its share; then the table is planned, and FAT volumes are rebuilt
//! knowing their partition's start (BPB hidden sectors, which all three peers leave 0).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use formats::hash::hash128;
use formats::partition::{self, DiskOptions, DiskReport, Guid, PartType, PartitionSpec, TableKind};
use serde_json::json;
use synth::BlockDev;

use crate::generators::{scan_with, source_date_epoch};
use crate::spec::{Content, FsOptions, PartSize, PartSpec, Remote, Sources, Spec};
use synth::size::Size;

/// Filesystem sizes are whole 4 KiB blocks (ext4's block; a whole number of sectors).
const FS_UNIT: u64 = 4096;

/// What one partition's filesystem turned out to be, for the report.
#[derive(Debug, Clone, Default)]
struct FsInfo {
    kind: &'static str,
    uuid: Option<String>,
    label: Option<String>,
}

/// A filesystem built for a size and a place: the sizes and the partition start it was built
/// for decide whether the next pass can keep it.
struct BuiltFs {
    dev: Arc<dyn BlockDev>,
    info: FsInfo,
    /// The size asked of the generator (`None`: its own default).
    asked: Option<u64>,
    /// The partition start in 512-byte sectors (FAT BPB hidden sectors).
    hidden: u32,
    /// What was built, for the log once it is the final one.
    summary: String,
}

/// A partition's content after the first pass.
enum Prepared {
    /// A filesystem of a tree, which can be rebuilt for another size or place.
    Fs {
        tree: Box<tree::Tree>,
        first: BuiltFs,
        /// How long scanning took (for the log).
        scanned: std::time::Duration,
    },
    /// A content of its own size: an ISO image, a file, a remote or compressed image, RAM.
    Fixed {
        dev: Arc<dyn BlockDev>,
        info: FsInfo,
    },
    /// Zeros.
    Empty,
}

impl Prepared {
    fn natural(&self) -> u64 {
        match self {
            Prepared::Fs { first, .. } => first.dev.size(),
            Prepared::Fixed { dev, .. } => dev.size(),
            Prepared::Empty => 0,
        }
    }
}

/// The disk, and the report `--json` writes.
pub(crate) struct Built {
    pub dev: Arc<dyn BlockDev>,
    pub report: serde_json::Value,
}

fn round_up(n: u64, unit: u64) -> u64 {
    n.div_ceil(unit) * unit
}

fn table_kind(t: &str) -> TableKind {
    match t {
        "mbr" => TableKind::Mbr,
        "hybrid" => TableKind::Hybrid,
        "none" => TableKind::None,
        _ => TableKind::Gpt,
    }
}

/// How each filesystem scans its tree: FAT has no symlinks (they are followed); ext4 and ISO
/// (Rock Ridge) keep links and special files, ext4 also extended attributes.
fn scan_options(content: &Content, fs: &FsOptions) -> tree::ScanOptions {
    tree::ScanOptions {
        follow_symlinks: matches!(content, Content::Fat(_)),
        xattrs: matches!(content, Content::Ext4(_)) && !fs.no_xattrs,
    }
}

/// Scan the directories of a partition and lay them over each other in order.
fn scan_sources(dirs: &Sources, opts: &tree::ScanOptions) -> Result<tree::Tree> {
    let mut it = dirs.iter();
    let (first, at) = it.next().context("no source directory")?;
    let mut tree = scan_with(first, opts)?;
    if at != Path::new("/") {
        // The first directory goes below the top: an empty top with it merged in.
        let kids = std::mem::replace(&mut tree.root.kind, tree::NodeKind::Dir(Vec::new()));
        let top = tree::Tree {
            root: tree::Node {
                kind: kids,
                ..tree.root.clone()
            },
            stats: tree.stats,
        };
        tree.merge(top, at)?;
    }
    for (dir, at) in it {
        let over = scan_with(dir, opts)?;
        tree.merge(over, at)
            .with_context(|| format!("laying {} over {}", dir.display(), at.display()))?;
    }
    Ok(tree)
}

fn shown(dirs: &Sources) -> String {
    dirs.iter()
        .map(|(d, at)| {
            if at == Path::new("/") {
                d.display().to_string()
            } else {
                format!("{}:{}", d.display(), at.display())
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A FAT volume (no partition table) holding `dir`, for an ISO's UEFI boot entry.
fn efi_image(dir: &Path, epoch: Option<i64>) -> Result<Arc<dyn BlockDev>> {
    let tree = scan_with(
        dir,
        &tree::ScanOptions {
            follow_symlinks: true,
            ..Default::default()
        },
    )?;
    let opts = formats::fat::FatOptions {
        partition: formats::fat::Partitioning::None,
        timestamp: epoch,
        ..formats::fat::FatOptions::default()
    };
    let image = formats::fat::build(&tree, &opts)
        .with_context(|| format!("building the EFI boot image of {}", dir.display()))?;
    Ok(Arc::new(image.map))
}

/// The first pass: scan, and build each filesystem once (at its fixed size where that is
/// known, else at its natural size: metadata only, milliseconds).
fn prepare(p: &PartSpec, whole: bool, epoch: Option<i64>, remote: &Remote) -> Result<Prepared> {
    // A filesystem that is the disk is built at exactly the size asked; one in a partition
    // first at its natural size, which sizes `auto`, `auto+N%`, `min:` and `remaining`.
    let first_size = match p.size {
        PartSize::Fixed(n) if whole => Some(n),
        _ => None,
    };
    let prepared = prepare_content(p, first_size, epoch, remote)?;
    Ok(match prepared {
        // Layered now: the partition is sized by what its filters make of the content.
        Prepared::Fixed { dev, info } => Prepared::Fixed {
            dev: layered(p, dev)?,
            info,
        },
        other => other,
    })
}

fn prepare_content(
    p: &PartSpec,
    first_size: Option<u64>,
    epoch: Option<i64>,
    remote: &Remote,
) -> Result<Prepared> {
    Ok(match &p.content {
        Content::Fat(dirs) | Content::Ext4(dirs) => {
            let t0 = std::time::Instant::now();
            let tree = scan_sources(dirs, &scan_options(&p.content, &p.fs))?;
            let scanned = t0.elapsed();
            let first = build_fs(p, &tree, first_size, 0, epoch, None, scanned)?;
            Prepared::Fs {
                tree: Box::new(tree),
                first,
                scanned,
            }
        }
        Content::Iso(dirs) => {
            let t0 = std::time::Instant::now();
            let tree = scan_sources(dirs, &scan_options(&p.content, &p.fs))?;
            let scanned = t0.elapsed();
            let opts = iso_options(p, epoch)?;
            let image = formats::iso::build(&tree, &opts)
                .with_context(|| format!("building the ISO 9660 image of {}", shown(dirs)))?;
            log::info!(
                "{}: {}; ISO 9660 {:?}{}{}, {} blocks ({}), {} regions (scanned in {:.1} ms, laid out in {:.1} ms)",
                shown(dirs),
                tree_summary(&tree),
                image.volume_id,
                if opts.rock_ridge { " + Rock Ridge" } else { "" },
                if opts.joliet { " + Joliet" } else { "" },
                image.blocks,
                Size(image.map.size()),
                image.map.regions().len(),
                scanned.as_secs_f64() * 1000.0,
                (t0.elapsed() - scanned).as_secs_f64() * 1000.0
            );
            let info = FsInfo {
                kind: "iso9660",
                uuid: None,
                label: Some(image.volume_id.clone()),
            };
            Prepared::Fixed {
                dev: Arc::new(image.map),
                info,
            }
        }
        Content::Empty => Prepared::Empty,
        Content::Raw(path) => {
            let dev = sources::FileDev::open(path, false)
                .with_context(|| format!("opening raw = {}", path.display()))?;
            raw(Arc::new(dev))
        }
        Content::File { path, writable } => raw(Arc::new(sources::FileDev::open(path, *writable)?)),
        Content::Memory => raw(Arc::new(sources::memory(fixed_size(p)?)?)),
        Content::Pattern => raw(Arc::new(sources::PatternDev::new(fixed_size(p)?))),
        Content::Http(url) => raw(crate::remote::http(url, &remote.http)?),
        Content::Xz(src) => raw(crate::remote::xz(src, &remote.xz, &remote.http)?),
        Content::Qcow2 { source, backing } => raw(crate::remote::qcow2(
            source,
            backing,
            &remote.qcow2,
            &remote.http,
        )?),
        Content::Image { source, backing } => raw(crate::remote::image(
            source,
            backing,
            &remote.xz,
            &remote.qcow2,
            &remote.http,
        )?),
    })
}

/// A partition's `filters` over its content, outermost first (opened for the local client:
/// filters that act per client belong on the disk, `[disk] filters` or `--filter`).
fn layered(p: &PartSpec, dev: Arc<dyn BlockDev>) -> Result<Arc<dyn BlockDev>> {
    if p.filters.is_empty() {
        return Ok(dev);
    }
    let export = filters::stack(&p.filters, filters::Base::Shared(dev, p.label.clone()))
        .with_context(|| format!("partition {:?}", p.label))?;
    export
        .open()
        .with_context(|| format!("partition {:?}: opening its filters", p.label))
}

/// [`layered`] for a content laid out for its partition's size (a filesystem, zeros): its
/// filters may not change that size.
fn layered_in_place(p: &PartSpec, dev: Arc<dyn BlockDev>) -> Result<Arc<dyn BlockDev>> {
    let size = dev.size();
    let dev = layered(p, dev)?;
    if dev.size() != size {
        bail!(
            "partition {:?}: its filters make the {size}-byte content {} bytes; filters may \
             resize only contents of their own size (raw, file, image, …): give the \
             partition a size instead",
            p.label,
            dev.size()
        );
    }
    Ok(dev)
}

fn raw(dev: Arc<dyn BlockDev>) -> Prepared {
    Prepared::Fixed {
        dev,
        info: FsInfo {
            kind: "raw",
            ..FsInfo::default()
        },
    }
}

fn fixed_size(p: &PartSpec) -> Result<u64> {
    match p.size {
        PartSize::Fixed(n) => Ok(n),
        _ => bail!("partition {:?} needs a size", p.label),
    }
}

fn tree_summary(tree: &tree::Tree) -> String {
    let s = &tree.stats;
    format!(
        "{} files, {} directories, {} symlinks, {} special, {} extended attributes, {} of data",
        s.files,
        s.dirs,
        s.symlinks,
        s.specials,
        s.xattrs,
        Size(s.bytes)
    )
}

/// Build a FAT or ext4 filesystem of `tree` for a size and a partition start; the only place
/// a filesystem's options are put together (for `floppy`, `ext4` and every `build` partition).
fn build_fs(
    p: &PartSpec,
    tree: &tree::Tree,
    asked: Option<u64>,
    hidden: u32,
    epoch: Option<i64>,
    derived_id: Option<[u8; 16]>,
    scanned: std::time::Duration,
) -> Result<BuiltFs> {
    let t0 = std::time::Instant::now();
    let summary;
    let (dev, info): (Arc<dyn BlockDev>, FsInfo) = match &p.content {
        Content::Fat(dirs) => {
            let mut o = fat_options(p, asked, hidden, epoch);
            if o.serial.is_none() {
                o.serial = derived_id.map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
            }
            let image = formats::fat::build(tree, &o)
                .with_context(|| format!("building a FAT filesystem of {}", shown(dirs)))?;
            let g = &image.geometry;
            summary = format!(
                "{}: {}; {} with {} clusters of {} ({} used), volume at {}, {} (scanned in {:.1} ms, laid out in {:.1} ms)",
                shown(dirs),
                tree_summary(tree),
                g.fat_type,
                g.clusters,
                Size(g.cluster_bytes()),
                image.used_clusters,
                image.volume_offset,
                Size(image.map.size()),
                scanned.as_secs_f64() * 1000.0,
                t0.elapsed().as_secs_f64() * 1000.0
            );
            let info = FsInfo {
                kind: "vfat",
                uuid: Some(format!(
                    "{:04X}-{:04X}",
                    image.serial >> 16,
                    image.serial & 0xFFFF
                )),
                label: p.fs.fs_label.clone(),
            };
            (Arc::new(image.map), info)
        }
        Content::Ext4(dirs) => {
            let o = ext4_options(p, asked, derived_id, epoch)?;
            let image = formats::ext4::build(tree, &o)
                .with_context(|| format!("building an ext4 filesystem of {}", shown(dirs)))?;
            let uuid = partition::uuid_text(&image.uuid);
            summary = format!(
                "{}: {}; ext4 {}, {} of {} inodes used, UUID {uuid}, {} sparse files, {} regions (scanned in {:.1} ms, laid out in {:.1} ms)",
                shown(dirs),
                tree_summary(tree),
                Size(image.size),
                image.used_inodes,
                image.inodes,
                image.sparse_files,
                image.map.regions().len(),
                scanned.as_secs_f64() * 1000.0,
                t0.elapsed().as_secs_f64() * 1000.0
            );
            let info = FsInfo {
                kind: "ext4",
                uuid: Some(uuid),
                label: p.fs.fs_label.clone(),
            };
            (Arc::new(image.map), info)
        }
        other => unreachable!("build_fs of {other:?}"),
    };
    Ok(BuiltFs {
        dev,
        info,
        asked,
        hidden,
        summary,
    })
}

fn fat_options(
    p: &PartSpec,
    size: Option<u64>,
    hidden_sectors: u32,
    epoch: Option<i64>,
) -> formats::fat::FatOptions {
    let w = &p.fs.whole_disk;
    formats::fat::FatOptions {
        size,
        fat_type: p.fs.fat,
        label: p.fs.fs_label.clone(),
        partition: if w.fat_mbr {
            formats::fat::Partitioning::Mbr
        } else {
            formats::fat::Partitioning::None
        },
        floppy: w.floppy,
        hidden_sectors: Some(hidden_sectors),
        serial: p.fs.serial,
        timestamp: epoch,
        strict_names: p.fs.strict_names,
        max_open_files: p.fs.max_open_files.unwrap_or(synth::DEFAULT_POOL_FDS),
    }
}

fn ext4_options(
    p: &PartSpec,
    size: Option<u64>,
    derived_uuid: Option<[u8; 16]>,
    epoch: Option<i64>,
) -> Result<formats::ext4::Ext4Options> {
    if let Some(t) = epoch {
        if !(0..=i64::from(u32::MAX)).contains(&t) {
            bail!(
                "SOURCE_DATE_EPOCH={t} is outside what an ext4 superblock holds (0 to 4294967295)"
            );
        }
    }
    Ok(formats::ext4::Ext4Options {
        size,
        label: p.fs.fs_label.clone(),
        uuid: p.fs.uuid.or(derived_uuid),
        owner: p.fs.owner.unwrap_or_default(),
        timestamp: epoch,
        max_open_files: p.fs.max_open_files.unwrap_or(synth::DEFAULT_POOL_FDS),
    })
}

fn iso_options(p: &PartSpec, epoch: Option<i64>) -> Result<formats::iso::IsoOptions> {
    let w = &p.fs.whole_disk;
    Ok(formats::iso::IsoOptions {
        volume_id: Some(match &p.fs.fs_label {
            Some(v) => v.clone(),
            None => formats::iso::volume_id_from_name(&p.label),
        }),
        rock_ridge: !p.fs.no_rock_ridge,
        joliet: !p.fs.no_joliet,
        timestamp: epoch,
        max_open_files: p.fs.max_open_files.unwrap_or(synth::DEFAULT_POOL_FDS),
        boot: p.fs.boot.clone(),
        boot_load_size: Some(p.fs.boot_load_size.unwrap_or(4)),
        boot_info_table: !p.fs.no_boot_info_table,
        efi_boot: p.fs.efi_boot.clone(),
        efi_image: match &p.fs.efi_boot_dir {
            Some(d) => Some(efi_image(d, epoch)?),
            None => None,
        },
        hybrid: w.hybrid || w.hybrid_mbr.is_some(),
        hybrid_boot_code: match &w.hybrid_mbr {
            Some(f) => Some(
                std::fs::read(f).with_context(|| format!("reading hybrid_mbr {}", f.display()))?,
            ),
            None => None,
        },
    })
}

/// The size a partition gets, before any `remaining` share is known (`None` for that one).
fn target_size(p: &PartSpec, prep: &Prepared, align: u64) -> Result<Option<u64>> {
    let natural = prep.natural();
    let resizable = matches!(prep, Prepared::Fs { .. });
    let size = match p.size {
        PartSize::Auto => round_up(natural.max(1), FS_UNIT),
        PartSize::Fixed(n) => {
            if !resizable && n < natural {
                bail!(
                    "partition {:?} is {} ({n} bytes) but its content needs {natural} bytes",
                    p.label,
                    Size(n)
                );
            }
            n
        }
        PartSize::AutoPlus(pct) => round_up(natural * (100 + u64::from(pct)) / 100, align),
        PartSize::AtLeast(min) => round_up(natural.max(min), FS_UNIT),
        PartSize::Remaining => return Ok(None),
    };
    // A partition is whole sectors (4096 covers both sector sizes).
    Ok(Some(round_up(size, FS_UNIT)))
}

/// Build the disk a spec describes.
pub(crate) fn build(spec: &Spec) -> Result<Built> {
    let t0 = std::time::Instant::now();
    let epoch = source_date_epoch()?;
    let whole = spec.table == "none";
    let prepared: Vec<Prepared> = spec
        .partitions
        .iter()
        .map(|p| {
            let r = prepare(p, whole, epoch, &spec.remote);
            // A disk that is one filesystem or file: its errors name the directory or file.
            if whole {
                r
            } else {
                r.with_context(|| format!("partition {:?}", p.label))
            }
        })
        .collect::<Result<_>>()?;

    // The seed: given, or derived from what shapes the disk (never paths or the clock).
    let seed: Vec<u8> = match &spec.seed {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let mut parts: Vec<Vec<u8>> = vec![spec.table.as_bytes().to_vec()];
            for (p, prep) in spec.partitions.iter().zip(&prepared) {
                parts.push(p.label.as_bytes().to_vec());
                parts.push(p.kind.as_bytes().to_vec());
                parts.push(prep.natural().to_le_bytes().to_vec());
                if let Prepared::Fs { tree, .. } = prep {
                    parts.push(tree.stats.bytes.to_le_bytes().to_vec());
                    parts.push(tree.stats.files.to_le_bytes().to_vec());
                }
            }
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            hash128(&refs).to_vec()
        }
    };
    // Filesystem identifiers derive from a given seed; without one the generators derive
    // them from their trees (so `floppy`/`ext4` of a tree equal its one-partition disk).
    let derived = |label: &str, what: &str| {
        spec.seed
            .as_ref()
            .map(|_| hash128(&[&seed, label.as_bytes(), what.as_bytes()]))
    };

    if whole && spec.size.is_none() {
        // No table and no disk size: the disk is the content itself, at the size asked
        // (which need not be whole sectors: `zero 1000`, a 1001-byte file).
        let (p, prep) = (
            &spec.partitions[0],
            prepared.into_iter().next().expect("one"),
        );
        let (content, info) = whole_content(p, prep, epoch, &derived)?;
        let report = DiskReport {
            table: TableKind::None,
            sector_size: spec.sector_size,
            size: content.size(),
            disk_guid: None,
            mbr_signature: None,
            partitions: vec![partition::PartitionReport {
                number: 1,
                label: p.label.clone(),
                offset: 0,
                size: content.size(),
                type_guid: None,
                mbr_type: None,
                guid: None,
                attributes: 0,
            }],
        };
        return Ok(Built {
            report: report_json(&report, spec, &[info]),
            dev: content,
        });
    }

    let mut sizes: Vec<Option<u64>> = spec
        .partitions
        .iter()
        .zip(&prepared)
        .map(|(p, prep)| target_size(p, prep, spec.align))
        .collect::<Result<_>>()?;
    let mut opts = DiskOptions {
        table: table_kind(&spec.table),
        sector_size: spec.sector_size,
        align: spec.align,
        size: spec.size,
        seed: seed.clone(),
        disk_guid: None,
        mbr_signature: None,
        mbr_boot_code: None,
    };
    // With a disk size, the partition with size = "remaining" takes what the others and the
    // table leave; if none says so, the last one does unless its size is fixed.
    let grow = sizes.iter().position(Option::is_none).or_else(|| {
        let last = spec.partitions.len() - 1;
        (spec.size.is_some() && !matches!(spec.partitions[last].size, PartSize::Fixed(_)))
            .then_some(last)
    });
    if let Some(i) = grow {
        let own = sizes[i].take().unwrap_or(0);
        // Plan with the growing partition at one sector, then give it the slack.
        let probe: Vec<u64> = sizes
            .iter()
            .map(|s| s.unwrap_or(spec.sector_size))
            .collect();
        let need = partition::plan(
            &DiskOptions {
                size: None,
                ..opts.clone()
            },
            &probe,
        )?
        .disk_size;
        let total = spec.size.expect("validated: remaining needs a disk size");
        let slack = (total + spec.sector_size).saturating_sub(need);
        let share = if whole {
            slack / spec.sector_size * spec.sector_size
        } else {
            slack / spec.align * spec.align / FS_UNIT * FS_UNIT
        };
        if share == 0 || share < own {
            bail!(
                "the disk of {} ({total} bytes) is too small: partition {:?} needs {} bytes and the others and the table {} more ({} bytes in all)",
                Size(total),
                spec.partitions[i].label,
                own.max(1),
                need - spec.sector_size,
                need - spec.sector_size + own.max(1)
            );
        }
        sizes[i] = Some(share);
    }
    let sizes: Vec<u64> = sizes.into_iter().map(|s| s.unwrap_or(0)).collect();
    let plan = partition::plan(&opts, &sizes)?;

    // Final contents, at their sizes and places.
    let mut parts = Vec::with_capacity(prepared.len());
    let mut infos = Vec::with_capacity(prepared.len());
    for (((p, prep), &size), &start) in spec
        .partitions
        .iter()
        .zip(prepared)
        .zip(&sizes)
        .zip(&plan.starts)
    {
        let (content, info): (Arc<dyn BlockDev>, FsInfo) = match prep {
            Prepared::Fs {
                tree,
                first,
                scanned,
            } => {
                let asked = Some(size / FS_UNIT * FS_UNIT);
                let hidden = u32::try_from(start / 512).unwrap_or(u32::MAX);
                let id = derived(&p.label, id_kind(&p.content));
                let fs = if first.asked == asked && first.hidden == hidden && id.is_none() {
                    first
                } else {
                    build_fs(p, &tree, asked, hidden, epoch, id.map(uuid_v8), scanned)
                        .with_context(|| format!("partition {:?}", p.label))?
                };
                log::info!("{}", fs.summary);
                (layered_in_place(p, fs.dev)?, fs.info)
            }
            // Layered in `prepare`.
            Prepared::Fixed { dev, info } => (dev, info),
            Prepared::Empty => (
                layered_in_place(p, Arc::new(sources::ZeroDev::new(size)))?,
                FsInfo::default(),
            ),
        };
        let mut kind = PartType::parse(&p.kind)
            .with_context(|| format!("partition {:?}: type = {:?}", p.label, p.kind))?;
        if info.kind == "vfat" && kind.mbr == Some(0x07) {
            // basic-data holding FAT: the MBR byte of its FAT type (LBA forms).
            kind.mbr = Some(0x0C);
        }
        let mut attributes = 0u64;
        for a in &p.attributes {
            attributes |= partition::attribute_bit(a)
                .with_context(|| format!("partition {:?}: attribute {a:?}", p.label))?;
        }
        let guid =
            match &p.guid {
                Some(g) => Some(PartType::parse(g).ok().and_then(|t| t.gpt).with_context(
                    || format!("partition {:?}: guid {g:?} is not a GUID", p.label),
                )?),
                None => None,
            };
        parts.push(PartitionSpec {
            label: p.label.clone(),
            kind,
            content,
            size,
            attributes,
            guid,
            bootable: p.bootable,
        });
        infos.push(info);
    }
    opts.size = spec.size;
    let disk = partition::build(&opts, parts)?;
    log::info!(
        "{} disk of {} ({} partitions) composed in {:.1} ms",
        spec.table,
        Size(disk.map.size()),
        spec.partitions.len(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let report = report_json(&disk.report, spec, &infos);
    Ok(Built {
        dev: Arc::new(disk.map),
        report,
    })
}

/// What a derived identifier of a filesystem is called in the seed hash.
fn id_kind(c: &Content) -> &'static str {
    match c {
        Content::Fat(_) => "fat-serial",
        _ => "ext4-uuid",
    }
}

/// A derived filesystem UUID: RFC 9562 version 8, variant 10 (FAT uses the first 4 bytes).
fn uuid_v8(mut u: [u8; 16]) -> [u8; 16] {
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The content of a disk without a table and without a disk size: exactly what was asked.
fn whole_content(
    p: &PartSpec,
    prep: Prepared,
    epoch: Option<i64>,
    derived: &dyn Fn(&str, &str) -> Option<[u8; 16]>,
) -> Result<(Arc<dyn BlockDev>, FsInfo)> {
    Ok(match prep {
        Prepared::Fs {
            tree,
            first,
            scanned,
        } => {
            let asked = match p.size {
                PartSize::Auto | PartSize::Fixed(_) => first.asked,
                PartSize::AutoPlus(pct) => Some(round_up(
                    first.dev.size() * (100 + u64::from(pct)) / 100,
                    FS_UNIT,
                )),
                PartSize::AtLeast(min) => Some(round_up(first.dev.size().max(min), FS_UNIT)),
                PartSize::Remaining => bail!("size = \"remaining\" needs a disk size"),
            };
            let id = derived(&p.label, id_kind(&p.content));
            let fs = if asked == first.asked && id.is_none() {
                first
            } else {
                build_fs(p, &tree, asked, 0, epoch, id.map(uuid_v8), scanned)?
            };
            log::info!("{}", fs.summary);
            (fs.dev, fs.info)
        }
        Prepared::Fixed { dev, info } => {
            if let PartSize::Fixed(n) = p.size {
                if n < dev.size() {
                    bail!(
                        "partition {:?} is {} ({n} bytes) but its content needs {} bytes",
                        p.label,
                        Size(n),
                        dev.size()
                    );
                }
            }
            (dev, info)
        }
        Prepared::Empty => (
            Arc::new(sources::ZeroDev::new(fixed_size(p)?)),
            FsInfo::default(),
        ),
    })
}

fn guid_text(g: &Option<Guid>) -> serde_json::Value {
    match g {
        Some(g) => json!(g.to_string()),
        None => serde_json::Value::Null,
    }
}

fn report_json(r: &DiskReport, spec: &Spec, infos: &[FsInfo]) -> serde_json::Value {
    let parts: Vec<serde_json::Value> = r
        .partitions
        .iter()
        .zip(&spec.partitions)
        .zip(infos)
        .map(|((p, s), info)| {
            json!({
                "number": p.number,
                "label": p.label,
                "type": s.kind,
                "offset": p.offset,
                "size": p.size,
                "type_guid": guid_text(&p.type_guid),
                "mbr_type": p.mbr_type.map(|t| format!("0x{t:02x}")),
                "guid": guid_text(&p.guid),
                "attributes": format!("0x{:016x}", p.attributes),
                "filesystem": if info.kind.is_empty() { serde_json::Value::Null } else {
                    json!({ "type": info.kind, "uuid": info.uuid, "label": info.label })
                },
            })
        })
        .collect();
    json!({
        "table": spec.table,
        "sector_size": r.sector_size,
        "size": r.size,
        "disk_guid": guid_text(&r.disk_guid),
        "mbr_signature": r.mbr_signature.map(|s| format!("0x{s:08x}")),
        "partitions": parts,
    })
}

/// Write the report to `path` (`-`: stdout).
pub(crate) fn write_report(report: &serde_json::Value, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report)? + "\n";
    if path.as_os_str() == "-" {
        print!("{text}");
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing the report {}", path.display()))
}
