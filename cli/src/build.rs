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
use formats::partition::{self, DiskOptions, DiskReport, Guid, PartType, PartitionSpec, TableKind};
use serde_json::json;
use synth::BlockDev;

use crate::generators::{scan_with, source_date_epoch};
use crate::size::Size;
use crate::spec::{Content, PartSize, PartSpec, Sources, Spec};

/// Filesystem sizes are whole 4 KiB blocks (ext4's block; a whole number of sectors).
const FS_UNIT: u64 = 4096;

/// What one partition's filesystem turned out to be, for the report.
#[derive(Debug, Clone, Default)]
struct FsInfo {
    kind: &'static str,
    uuid: Option<String>,
    label: Option<String>,
}

/// A partition's content at its first, natural size.
enum Prepared {
    Fat {
        tree: tree::Tree,
        natural: u64,
    },
    Ext4 {
        tree: tree::Tree,
        natural: u64,
    },
    Iso {
        dev: Arc<dyn BlockDev>,
        info: FsInfo,
    },
    Empty,
    Raw {
        dev: Arc<dyn BlockDev>,
    },
}

impl Prepared {
    fn natural(&self) -> u64 {
        match self {
            Prepared::Fat { natural, .. } | Prepared::Ext4 { natural, .. } => *natural,
            Prepared::Iso { dev, .. } | Prepared::Raw { dev } => dev.size(),
            Prepared::Empty => 0,
        }
    }
}

/// The disk, and the report `--json` writes.
pub(crate) struct Built {
    pub dev: Arc<dyn BlockDev>,
    pub report: serde_json::Value,
}

/// Stable 128-bit hash (two FNV-1a 64 lanes): identifiers derived from the seed must be the same
/// on every machine and every Rust release, which `std`'s hasher does not promise.
fn hash128(parts: &[&[u8]]) -> [u8; 16] {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for p in parts {
        for &byte in p.iter().chain(&[0xFF]) {
            a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
            b = (b ^ u64::from(byte.rotate_left(3))).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn round_up(n: u64, unit: u64) -> u64 {
    n.div_ceil(unit) * unit
}

fn uuid_text(u: &[u8; 16]) -> String {
    u.iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{}{b:02x}",
                if [4, 6, 8, 10].contains(&i) { "-" } else { "" }
            )
        })
        .collect()
}

fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.is_ascii() {
        bail!("{s:?} is not a UUID (32 hex digits, dashes allowed)");
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{s:?} is not a UUID"))?;
    }
    Ok(out)
}

fn table_kind(t: &str) -> TableKind {
    match t {
        "mbr" => TableKind::Mbr,
        "hybrid" => TableKind::Hybrid,
        "none" => TableKind::None,
        _ => TableKind::Gpt,
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

/// Scan and build each filesystem once at its natural size.
fn prepare(p: &PartSpec, epoch: Option<i64>) -> Result<Prepared> {
    Ok(match &p.content {
        Content::Fat(dir) => {
            let tree = scan_sources(
                dir,
                &tree::ScanOptions {
                    follow_symlinks: true,
                    ..Default::default()
                },
            )?;
            let image = formats::fat::build(&tree, &fat_options(p, None, 0, epoch)?)
                .with_context(|| format!("building the FAT filesystem of {}", shown(dir)))?;
            Prepared::Fat {
                natural: image.map.size(),
                tree,
            }
        }
        Content::Ext4(dir) => {
            let tree = scan_sources(
                dir,
                &tree::ScanOptions {
                    follow_symlinks: false,
                    xattrs: !p.fs.no_xattrs,
                },
            )?;
            let image = formats::ext4::build(&tree, &ext4_options(p, None, None, epoch)?)
                .with_context(|| format!("building the ext4 filesystem of {}", shown(dir)))?;
            Prepared::Ext4 {
                natural: image.map.size(),
                tree,
            }
        }
        Content::Iso(dir) => {
            let tree = scan_sources(dir, &tree::ScanOptions::default())?;
            let opts = formats::iso::IsoOptions {
                volume_id: Some(match &p.fs.fs_label {
                    Some(v) => v.clone(),
                    None => formats::iso::volume_id_from_name(&p.label),
                }),
                rock_ridge: !p.fs.no_rock_ridge,
                joliet: !p.fs.no_joliet,
                timestamp: epoch,
                ..Default::default()
            };
            let image = formats::iso::build(&tree, &opts)
                .with_context(|| format!("building the ISO 9660 image of {}", shown(dir)))?;
            let info = FsInfo {
                kind: "iso9660",
                uuid: None,
                label: Some(image.volume_id.clone()),
            };
            Prepared::Iso {
                dev: Arc::new(image.map),
                info,
            }
        }
        Content::Empty => Prepared::Empty,
        Content::Raw(path) => {
            let dev = sources::FileDev::open(path, false)
                .with_context(|| format!("opening raw = {}", path.display()))?;
            Prepared::Raw { dev: Arc::new(dev) }
        }
    })
}

fn fat_options(
    p: &PartSpec,
    size: Option<u64>,
    hidden_sectors: u32,
    epoch: Option<i64>,
) -> Result<formats::fat::FatOptions> {
    let fat_type = match p.fs.fat {
        None => None,
        Some(12) => Some(formats::fat::FatType::Fat12),
        Some(16) => Some(formats::fat::FatType::Fat16),
        Some(32) => Some(formats::fat::FatType::Fat32),
        Some(n) => bail!("partition {:?}: fat = {n}: use 12, 16 or 32", p.label),
    };
    let serial = match &p.fs.serial {
        Some(s) => Some(
            u32::from_str_radix(s, 16)
                .with_context(|| format!("partition {:?}: serial {s:?} is not hex", p.label))?,
        ),
        None => None,
    };
    Ok(formats::fat::FatOptions {
        size,
        fat_type,
        label: p.fs.fs_label.clone(),
        partition: formats::fat::Partitioning::None,
        hidden_sectors: Some(hidden_sectors),
        serial,
        timestamp: epoch,
        strict_names: p.fs.strict_names,
        ..Default::default()
    })
}

fn ext4_options(
    p: &PartSpec,
    size: Option<u64>,
    uuid: Option<[u8; 16]>,
    epoch: Option<i64>,
) -> Result<formats::ext4::Ext4Options> {
    let owner = match p.fs.owner.as_deref() {
        None | Some("keep") => formats::ext4::Owner::Keep,
        Some("root") => formats::ext4::Owner::Root,
        Some(o) => bail!("partition {:?}: owner = {o:?}: use keep or root", p.label),
    };
    let uuid = match (&p.fs.uuid, uuid) {
        (Some(u), _) => Some(parse_uuid(u).with_context(|| format!("partition {:?}", p.label))?),
        (None, u) => u,
    };
    Ok(formats::ext4::Ext4Options {
        size,
        label: p.fs.fs_label.clone(),
        uuid,
        owner,
        timestamp: epoch,
        ..Default::default()
    })
}

/// The size a partition gets, before any `remaining` share is known (`None` for that one).
fn target_size(p: &PartSpec, prep: &Prepared, align: u64) -> Result<Option<u64>> {
    let natural = prep.natural();
    let resizable = matches!(prep, Prepared::Fat { .. } | Prepared::Ext4 { .. });
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
    Ok(Some(size))
}

/// Build the disk a spec describes.
pub(crate) fn build(spec: &Spec) -> Result<Built> {
    let t0 = std::time::Instant::now();
    let epoch = source_date_epoch()?;
    let prepared: Vec<Prepared> = spec
        .partitions
        .iter()
        .map(|p| prepare(p, epoch).with_context(|| format!("partition {:?}", p.label)))
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
                if let Prepared::Fat { tree, .. } | Prepared::Ext4 { tree, .. } = prep {
                    parts.push(tree.stats.bytes.to_le_bytes().to_vec());
                    parts.push(tree.stats.files.to_le_bytes().to_vec());
                }
            }
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            hash128(&refs).to_vec()
        }
    };
    let derived = |label: &str, what: &str| hash128(&[&seed, label.as_bytes(), what.as_bytes()]);

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
    if let Some(i) = sizes.iter().position(Option::is_none) {
        // The remaining partition gets what a disk of the given size has left.
        // Plan with the remaining partition at one sector, then give it the slack.
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
        let share = (total + spec.sector_size).saturating_sub(need) / spec.align * spec.align;
        let share = share / FS_UNIT * FS_UNIT;
        if share == 0 {
            bail!(
                "the disk of {} ({total} bytes) has no room for the remaining partition {:?}: the others and the table need {need} bytes",
                Size(total),
                spec.partitions[i].label
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
            Prepared::Fat { tree, .. } => {
                let mut o = fat_options(p, Some(size), (start / 512) as u32, epoch)?;
                if o.serial.is_none() && spec.seed.is_some() {
                    let h = derived(&p.label, "fat-serial");
                    o.serial = Some(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
                }
                let image = formats::fat::build(&tree, &o)
                    .with_context(|| format!("partition {:?}: building its FAT", p.label))?;
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
            Prepared::Ext4 { tree, .. } => {
                let uuid = spec.seed.as_ref().map(|_| {
                    let mut u = derived(&p.label, "ext4-uuid");
                    // RFC 9562 version 8, variant 10.
                    u[6] = (u[6] & 0x0f) | 0x80;
                    u[8] = (u[8] & 0x3f) | 0x80;
                    u
                });
                let o = ext4_options(p, Some(round_up(size, FS_UNIT)), uuid, epoch)?;
                let image = formats::ext4::build(&tree, &o)
                    .with_context(|| format!("partition {:?}: building its ext4", p.label))?;
                let info = FsInfo {
                    kind: "ext4",
                    uuid: Some(uuid_text(&image.uuid)),
                    label: p.fs.fs_label.clone(),
                };
                (Arc::new(image.map), info)
            }
            Prepared::Iso { dev, info } => (dev, info),
            Prepared::Empty => (
                Arc::new(sources::ZeroDev::new(size)) as Arc<dyn BlockDev>,
                FsInfo::default(),
            ),
            Prepared::Raw { dev } => (
                dev,
                FsInfo {
                    kind: "raw",
                    ..FsInfo::default()
                },
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
