//! The directory generators (FAT, ext4, ISO 9660): scan the tree, build
//! the image's region map, log what was built.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use synth::BlockDev;

use crate::args::{ExportArgs, Ext4Args, FatArgs, IsoArgs, WriteArgs};
use crate::size::Size;

/// Scan a host directory for a generator.
fn scan(dir: &Path, follow_symlinks: bool) -> Result<tree::Tree> {
    scan_with(
        dir,
        &tree::ScanOptions {
            follow_symlinks,
            ..tree::ScanOptions::default()
        },
    )
}

pub(crate) fn scan_with(dir: &Path, opts: &tree::ScanOptions) -> Result<tree::Tree> {
    tree::scan(dir, opts).with_context(|| format!("scanning {}", dir.display()))
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org), if set.
pub(crate) fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse::<i64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

/// A generated image, writable under `--rw` through an overlay whose
/// pages live in an unlinked temp file in `--dir` (clients never reach the
/// host tree, and a client writing gigabytes costs disk, not memory), with
/// `--max-disk` as the space all writes may take.
pub(crate) fn with_overlay(
    map: Arc<dyn BlockDev>,
    w: &WriteArgs,
    export: &ExportArgs,
) -> Result<Arc<dyn BlockDev>> {
    if !w.rw || export.readonly {
        return Ok(map);
    }
    let dir = w
        .overlay_dir
        .clone()
        .unwrap_or_else(crate::tmpdisk::default_dir);
    let opts = synth::OverlayOptions {
        store: synth::OverlayStore::TempFile,
        // ext4's block and the common guest page: a small write copies
        // little of the page beneath.
        page_size: 4096,
        temp_dir: Some(dir.clone()),
        quota: w.max_disk.map(|s| Arc::new(synth::SpaceQuota::new(s.0))),
    };
    let overlay = synth::CowOverlay::new(map, opts)
        .with_context(|| format!("making the --rw overlay in {}", dir.display()))?;
    Ok(Arc::new(overlay))
}

/// A FAT volume (no partition table) holding `dir`, for an ISO's UEFI
/// boot entry.
fn efi_image(dir: &Path) -> Result<Arc<dyn BlockDev>> {
    let tree = scan(dir, true)?;
    let opts = formats::fat::FatOptions {
        partition: formats::fat::Partitioning::None,
        timestamp: source_date_epoch()?,
        ..formats::fat::FatOptions::default()
    };
    let image = formats::fat::build(&tree, &opts)
        .with_context(|| format!("building the EFI boot image of {}", dir.display()))?;
    Ok(Arc::new(image.map))
}

/// Scan `dir` and build its FAT image (with an overlay under `--rw`).
pub(crate) fn floppy(dir: &Path, a: &FatArgs, export: &ExportArgs) -> Result<Arc<dyn BlockDev>> {
    use formats::fat::{FatOptions, Partitioning};
    let t0 = std::time::Instant::now();
    let tree = scan(dir, true)?;
    let timestamp = source_date_epoch()?;
    let partition = match (a.partition.as_deref(), a.floppy) {
        (Some("mbr"), Some(_)) => {
            bail!("--floppy images have no partition table; leave out --partition mbr")
        }
        (Some("none"), _) | (None, Some(_)) => Partitioning::None,
        _ => Partitioning::Mbr,
    };
    let opts = FatOptions {
        size: a.size.map(|s| s.0),
        fat_type: a.fat,
        label: a.label.clone(),
        partition,
        floppy: a.floppy,
        serial: a.serial,
        timestamp,
        max_open_files: a.max_open_files,
        strict_names: a.strict_names,
        hidden_sectors: None,
    };
    let scanned = t0.elapsed();
    let image = formats::fat::build(&tree, &opts)
        .with_context(|| format!("building a FAT disk of {}", dir.display()))?;
    let g = &image.geometry;
    log::info!(
        "{}: {} files, {} directories, {} of data; {} with {} clusters of {} ({} used), volume at {}, disk {} (scanned in {:.1} ms, laid out in {:.1} ms)",
        dir.display(),
        tree.stats.files,
        tree.stats.dirs,
        Size(tree.stats.bytes),
        g.fat_type,
        g.clusters,
        Size(g.cluster_bytes()),
        image.used_clusters,
        image.volume_offset,
        Size(image.map.size()),
        scanned.as_secs_f64() * 1000.0,
        (t0.elapsed() - scanned).as_secs_f64() * 1000.0
    );
    with_overlay(Arc::new(image.map), &a.write, export)
}

/// Scan `dir` and build its ext4 image (with an overlay under `--rw`).
pub(crate) fn ext4(dir: &Path, a: &Ext4Args, export: &ExportArgs) -> Result<Arc<dyn BlockDev>> {
    use formats::ext4::Ext4Options;
    let t0 = std::time::Instant::now();
    // Not following links: ext4 keeps symlinks, devices, fifos and sockets
    // (and their extended attributes, unless --no-xattrs).
    let tree = scan_with(
        dir,
        &tree::ScanOptions {
            follow_symlinks: false,
            xattrs: !a.no_xattrs,
        },
    )?;
    let timestamp = source_date_epoch()?;
    if let Some(t) = timestamp {
        if !(0..=i64::from(u32::MAX)).contains(&t) {
            bail!(
                "SOURCE_DATE_EPOCH={t} is outside what an ext4 superblock holds (0 to 4294967295)"
            );
        }
    }
    let opts = Ext4Options {
        size: a.size.map(|s| s.0),
        label: a.label.clone(),
        uuid: a.uuid,
        owner: a.owner,
        timestamp,
        max_open_files: a.max_open_files,
    };
    let scanned = t0.elapsed();
    let image = formats::ext4::build(&tree, &opts)
        .with_context(|| format!("building an ext4 filesystem of {}", dir.display()))?;
    let uuid: String = (image.uuid.iter().enumerate())
        .map(|(i, b)| {
            format!(
                "{}{b:02x}",
                if [4, 6, 8, 10].contains(&i) { "-" } else { "" }
            )
        })
        .collect();
    log::info!(
        "{}: {} files, {} directories, {} symlinks, {} special, {} extended attributes, {} of data ({} sparse files); ext4 {}, {} of {} inodes used, UUID {uuid}, {} regions (scanned in {:.1} ms, laid out in {:.1} ms)",
        dir.display(),
        tree.stats.files,
        tree.stats.dirs,
        tree.stats.symlinks,
        tree.stats.specials,
        tree.stats.xattrs,
        Size(tree.stats.bytes),
        image.sparse_files,
        Size(image.size),
        image.used_inodes,
        image.inodes,
        image.map.regions().len(),
        scanned.as_secs_f64() * 1000.0,
        (t0.elapsed() - scanned).as_secs_f64() * 1000.0
    );
    with_overlay(Arc::new(image.map), &a.write, export)
}

/// Scan `dir` and build its ISO 9660 image (with an overlay under `--rw`).
pub(crate) fn iso(dir: &Path, a: &IsoArgs, export: &ExportArgs) -> Result<Arc<dyn BlockDev>> {
    use formats::iso::{volume_id_from_name, IsoOptions};
    let t0 = std::time::Instant::now();
    // Not following links: Rock Ridge keeps symlinks and device nodes
    // (without it, the generator skips them).
    let tree = scan(dir, false)?;
    let volume_id = match &a.volid {
        Some(v) => v.clone(),
        None => {
            let name = std::fs::canonicalize(dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            volume_id_from_name(&name)
        }
    };
    let opts = IsoOptions {
        volume_id: Some(volume_id),
        rock_ridge: !a.no_rock_ridge,
        joliet: !a.no_joliet,
        timestamp: source_date_epoch()?,
        max_open_files: a.max_open_files,
        boot: a.boot.clone(),
        boot_load_size: Some(a.boot_load_size),
        boot_info_table: !a.no_boot_info_table,
        efi_boot: a.efi_boot.clone(),
        efi_image: match &a.efi_boot_dir {
            Some(d) => Some(efi_image(d)?),
            None => None,
        },
        hybrid: a.hybrid || a.hybrid_mbr.is_some(),
        hybrid_boot_code: match &a.hybrid_mbr {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("reading --hybrid-mbr {}", p.display()))?,
            ),
            None => None,
        },
    };
    let scanned = t0.elapsed();
    let image = formats::iso::build(&tree, &opts)
        .with_context(|| format!("building an ISO 9660 image of {}", dir.display()))?;
    log::info!(
        "{}: {} files, {} directories, {} symlinks, {} special, {} of data; ISO 9660 {:?}{}{}, {} blocks ({}), {} regions (scanned in {:.1} ms, laid out in {:.1} ms)",
        dir.display(),
        tree.stats.files,
        tree.stats.dirs,
        tree.stats.symlinks,
        tree.stats.specials,
        Size(tree.stats.bytes),
        image.volume_id,
        if opts.rock_ridge { " + Rock Ridge" } else { "" },
        if opts.joliet { " + Joliet" } else { "" },
        image.blocks,
        Size(image.map.size()),
        image.map.regions().len(),
        scanned.as_secs_f64() * 1000.0,
        (t0.elapsed() - scanned).as_secs_f64() * 1000.0
    );
    with_overlay(Arc::new(image.map), &a.write, export)
}
