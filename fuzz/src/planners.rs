//! The FAT, ISO 9660 and ext4 generators fed generated trees and options.
//!
//! Input: options first, then the tree (see [`crate::gen`]). Each harness runs the generator's
//! `build` (the plan, and the region map of metadata it assembles) and reads a few metadata
//! sectors back from the map. No file data exists: a read that reaches a host file fails, which
//! is fine. Errors are expected; panics are bugs.

use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use formats::ext4::{Ext4Options, Owner};
use formats::fat::{FatOptions, FatType, FloppyFormat, Partitioning};
use formats::iso::IsoOptions;
use synth::{BlockDev, ExtentList, RegionMap};
use tree::{Node, NodeKind, Tree};

use crate::gen::{self, Shape};

/// Nodes per tree: enough for wide directories (FAT's 65536-entry limit is reached with long
/// names), few enough for hundreds of runs a second.
pub const MAX_NODES: usize = 5000;
/// Levels per tree: past what a Linux path can name (4096 bytes, two per level).
pub const MAX_DEPTH: usize = 2100;

/// A size option: mostly automatic, sometimes anything, sometimes near the limits.
fn size_option(u: &mut Unstructured<'_>) -> Result<Option<u64>> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 | 1 => None,
        2 => Some(u.arbitrary()?),
        3 => Some(u64::from(u.arbitrary::<u32>()?) << u.int_in_range(0u32..=12)?),
        _ => Some(u64::from(u.int_in_range(0u32..=1 << 20)?) * 4096),
    })
}

fn opt_string(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    Ok(if u.ratio(1u8, 4)? {
        Some(u.arbitrary()?)
    } else {
        None
    })
}

fn opt_timestamp(u: &mut Unstructured<'_>) -> Result<Option<i64>> {
    Ok(if u.ratio(1u8, 4)? {
        Some(u.arbitrary()?)
    } else {
        None
    })
}

/// Read the start of the map, its end, and a few places the input picks; list its extents.
fn read_back(map: &RegionMap, u: &mut Unstructured<'_>) {
    let size = map.size();
    let mut buf = vec![0u8; size.min(64 << 10) as usize];
    let _ = map.read_at(&mut buf, 0);
    let tail = size.min(4096);
    let mut buf = vec![0u8; tail as usize];
    let _ = map.read_at(&mut buf, size - tail);
    let mut sector = [0u8; 512];
    for _ in 0..4 {
        let Ok(at) = u.arbitrary::<u64>() else { break };
        if size >= 512 {
            let _ = map.read_at(&mut sector, at % (size - 511));
        }
    }
    let mut extents = ExtentList::with_limit(0, 256);
    let _ = map.extents(0, size, &mut extents);
}

/// Files of the tree by relative path (for boot images).
fn file_paths(tree: &Tree) -> Vec<PathBuf> {
    fn walk(n: &Node, at: &mut PathBuf, out: &mut Vec<PathBuf>) {
        for c in n.children() {
            at.push(&c.name);
            match c.kind {
                NodeKind::File => out.push(at.clone()),
                NodeKind::Dir(_) if out.len() < 64 => walk(c, at, out),
                _ => {}
            }
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(&tree.root, &mut PathBuf::new(), &mut out);
    out
}

fn boot_path(u: &mut Unstructured<'_>, files: &[PathBuf]) -> Result<Option<PathBuf>> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 | 1 => None,
        2 if !files.is_empty() => Some(u.choose(files)?.clone()),
        _ => Some(PathBuf::from(u.arbitrary::<String>()?)),
    })
}

/// FAT options from the input.
pub fn fat_options(u: &mut Unstructured<'_>) -> Result<FatOptions> {
    Ok(FatOptions {
        size: size_option(u)?,
        fat_type: *u.choose(&[
            None,
            None,
            Some(FatType::Fat12),
            Some(FatType::Fat16),
            Some(FatType::Fat32),
        ])?,
        label: opt_string(u)?,
        partition: *u.choose(&[Partitioning::Mbr, Partitioning::None])?,
        hidden_sectors: if u.arbitrary()? {
            Some(u.arbitrary()?)
        } else {
            None
        },
        floppy: *u.choose(&[
            None,
            None,
            None,
            Some(FloppyFormat::F1440),
            Some(FloppyFormat::F2880),
        ])?,
        serial: u.arbitrary()?,
        timestamp: opt_timestamp(u)?,
        max_open_files: 0,
        strict_names: u.arbitrary()?,
    })
}

/// FAT: its scan follows symlinks and drops specials, so the tree has neither.
pub fn fat(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let Ok(opts) = fat_options(&mut u) else {
        return;
    };
    let shape = Shape {
        links_and_specials: false,
        xattrs: false,
        max_nodes: MAX_NODES,
        max_depth: MAX_DEPTH,
    };
    let Ok(tree) = gen::tree(&mut u, shape) else {
        return;
    };
    if let Ok(img) = formats::fat::build(&tree, &opts) {
        read_back(&img.map, &mut u);
    }
}

/// ISO options from the input (boot images are files of the tree, or any path).
pub fn iso_options(u: &mut Unstructured<'_>, tree: &Tree) -> Result<IsoOptions> {
    let files = file_paths(tree);
    let efi_image: Option<Arc<dyn BlockDev>> = if u.ratio(1u8, 8)? {
        let size = u64::from(u.arbitrary::<u16>()?) * u.int_in_range(1u64..=512)?;
        Some(Arc::new(sources::ZeroDev::new(size)))
    } else {
        None
    };
    Ok(IsoOptions {
        volume_id: opt_string(u)?,
        rock_ridge: !u.ratio(1u8, 4)?,
        joliet: !u.ratio(1u8, 4)?,
        timestamp: opt_timestamp(u)?,
        max_open_files: 0,
        boot: boot_path(u, &files)?,
        boot_load_size: if u.arbitrary()? {
            Some(u.arbitrary()?)
        } else {
            None
        },
        boot_info_table: u.arbitrary()?,
        efi_boot: if efi_image.is_some() {
            None
        } else {
            boot_path(u, &files)?
        },
        efi_image,
        hybrid: u.arbitrary()?,
        hybrid_boot_code: if u.ratio(1u8, 4)? {
            let len = u.int_in_range(0usize..=1024)?;
            Some(vec![0xEB; len])
        } else {
            None
        },
    })
}

/// ISO 9660 with Rock Ridge (symlinks, devices) and Joliet, El Torito and hybrid tables.
pub fn iso(input: &[u8]) {
    let mut u = Unstructured::new(input);
    // The options name files of the tree, so the tree comes first here; its generator stops at
    // a 0 op, leaving the rest for the options.
    let shape = Shape {
        links_and_specials: true,
        xattrs: false,
        max_nodes: MAX_NODES,
        max_depth: MAX_DEPTH,
    };
    let Ok(tree) = gen::tree(&mut u, shape) else {
        return;
    };
    let Ok(opts) = iso_options(&mut u, &tree) else {
        return;
    };
    if let Ok(img) = formats::iso::build(&tree, &opts) {
        read_back(&img.map, &mut u);
    }
}

/// ext4 images at least this big are not built (see [`ext4`]).
pub const EXT4_SLOW: u64 = 64 << 30;
/// The largest ext4 image the generator makes (no `64bit` feature): 16 TiB.
pub const EXT4_MAX: u64 = 16 << 40;

/// ext4 options from the input.
pub fn ext4_options(u: &mut Unstructured<'_>) -> Result<Ext4Options> {
    Ok(Ext4Options {
        size: size_option(u)?,
        label: opt_string(u)?,
        uuid: u.arbitrary()?,
        owner: *u.choose(&[Owner::Keep, Owner::Root])?,
        timestamp: opt_timestamp(u)?,
        max_open_files: 0,
    })
}

/// ext4: every kind of entry, hard links, extended attributes and ACLs.
pub fn ext4(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let Ok(opts) = ext4_options(&mut u) else {
        return;
    };
    let shape = Shape {
        links_and_specials: true,
        xattrs: true,
        max_nodes: MAX_NODES,
        max_depth: MAX_DEPTH,
    };
    let Ok(tree) = gen::tree(&mut u, shape) else {
        return;
    };
    // The engine's work and memory grow with the filesystem (bitmaps, group descriptors): a
    // 4 TiB image takes seconds. Past 16 TiB it refuses at once, so only the middle is skipped.
    let slow = |bytes: u64| (EXT4_SLOW..=EXT4_MAX).contains(&bytes);
    if opts.size.is_some_and(slow) || slow(tree.stats.bytes) {
        return;
    }
    if let Ok(img) = formats::ext4::build(&tree, &opts) {
        read_back(&img.map, &mut u);
    }
}
