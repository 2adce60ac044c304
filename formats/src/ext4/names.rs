//! Names for the metadata the ext4 engine emits, for people reading the
//! region map (the web view, `/api/map`): "superblock", "group descriptors",
//! "block bitmap group 3", "inode table group 3", "directory /etc". The
//! engine hands over metadata as anonymous byte runs; the names are read
//! back from those bytes (superblock, group descriptors, inodes, directory
//! entries) as e2fsprogs would, so they cannot drift from what was laid
//! out. Naming never changes a byte, and anything unexpected (a field out
//! of range, bytes not in memory) leaves a run with the generic name.
//!
//! Layouts: ext4 wiki "Disk layout" (superblock at byte 1024, fields at the
//! offsets below; group descriptors in the block after the superblock's;
//! inodes; extent tree; linear directory entries).

use std::collections::HashSet;

/// A named byte range `[start, end)` of the image.
pub(super) type Span = (u64, u64, String);

/// What can be read back: the metadata bytes at an offset, if they are in
/// memory in one run.
pub(super) trait Bytes {
    fn at(&self, offset: u64, len: u64) -> Option<&[u8]>;
}

fn u16_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(i..i + 2)?.try_into().ok()?,
    )))
}

fn u32_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(i..i + 4)?.try_into().ok()?,
    )))
}

/// ext4's sparse_super rule: groups 0, 1 and powers of 3, 5 and 7 hold a
/// backup superblock and group descriptors.
fn has_backup(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&p| {
        let mut n = p;
        while n < g {
            n = n.saturating_mul(p);
        }
        n == g
    })
}

/// An extent tree's data runs `(first block, blocks)` and index blocks.
type Tree = (Vec<(u64, u64)>, Vec<u64>);

struct Fs<'a, B: Bytes> {
    bytes: &'a B,
    bs: u64,
    inode_size: u64,
    ipg: u64,
    tables: Vec<u64>,
}

impl<B: Bytes> Fs<'_, B> {
    fn inode(&self, ino: u64) -> Option<&[u8]> {
        let i = ino.checked_sub(1)?;
        let table = *self.tables.get((i / self.ipg) as usize)?;
        let at = table * self.bs + (i % self.ipg) * self.inode_size;
        self.bytes.at(at, self.inode_size.min(256))
    }

    /// The blocks of an inode's extent tree: (data runs, index blocks).
    fn extents(&self, inode: &[u8]) -> Option<Tree> {
        let flags = u32_at(inode, 0x20)?;
        if flags & 0x80000 == 0 {
            return None; // not extent-mapped (inline data): no blocks
        }
        let mut runs = Vec::new();
        let mut index = Vec::new();
        self.walk(inode.get(0x28..0x28 + 60)?, 0, &mut runs, &mut index)?;
        Some((runs, index))
    }

    fn walk(
        &self,
        node: &[u8],
        depth: u32,
        runs: &mut Vec<(u64, u64)>,
        index: &mut Vec<u64>,
    ) -> Option<()> {
        // ext4_extent_header: magic 0xF30A, entries, max, depth.
        if u16_at(node, 0)? != 0xF30A || depth > 5 {
            return None;
        }
        let entries = u16_at(node, 2)? as usize;
        let level = u16_at(node, 6)?;
        for e in 0..entries {
            let r = node.get(12 + e * 12..24 + e * 12)?;
            if level == 0 {
                // ext4_extent: ee_block, ee_len (over 32768: unwritten), start.
                let len = u16_at(r, 4)?;
                let len = if len > 32768 { len - 32768 } else { len };
                let start = u16_at(r, 6)? << 32 | u32_at(r, 8)?;
                runs.push((start, len));
            } else {
                // ext4_extent_idx: ei_block, leaf lo, leaf hi.
                let leaf = u16_at(r, 8)? << 32 | u32_at(r, 4)?;
                index.push(leaf);
                let child = self.bytes.at(leaf * self.bs, self.bs)?;
                self.walk(child, depth + 1, runs, index)?;
            }
        }
        Some(())
    }
}

/// The named spans of an image's metadata, sorted by start.
pub(super) fn spans<B: Bytes>(bytes: &B) -> Vec<Span> {
    let mut out = Vec::new();
    let _ = collect(bytes, &mut out);
    out.sort_by_key(|s| s.0);
    out
}

fn collect<B: Bytes>(bytes: &B, out: &mut Vec<Span>) -> Option<()> {
    let sb = bytes.at(1024, 1024)?;
    if u16_at(sb, 0x38)? != 0xEF53 {
        return None;
    }
    let bs = 1024u64 << u32_at(sb, 0x18)?.min(6);
    let first = u32_at(sb, 0x14)?;
    let bpg = u32_at(sb, 0x20)?.max(1);
    let ipg = u32_at(sb, 0x28)?.max(1);
    let inode_size = u16_at(sb, 0x58)?.max(128);
    let incompat = u32_at(sb, 0x60)?;
    let ro_compat = u32_at(sb, 0x64)?;
    let reserved_gdt = u16_at(sb, 0xCE)?;
    let wide = incompat & 0x80 != 0;
    let desc = if wide { u16_at(sb, 0xFE)?.max(32) } else { 32 };
    let blocks = u32_at(sb, 0x04)? | if wide { u32_at(sb, 0x150)? << 32 } else { 0 };
    let groups = blocks.saturating_sub(first).div_ceil(bpg);
    if groups == 0 || groups > 1 << 24 {
        return None;
    }
    let gdt_blocks = (groups * desc).div_ceil(bs);
    let sparse = ro_compat & 1 != 0;
    let gdt = bytes.at((first + 1) * bs, gdt_blocks * bs)?;
    let it_blocks = (ipg * inode_size).div_ceil(bs);
    let mut tables = Vec::with_capacity(groups as usize);
    for g in 0..groups {
        let start = first + g * bpg;
        if g == 0 || !sparse || has_backup(g) {
            let (sb_name, gd_name, rg_name) = if g == 0 {
                (
                    "superblock".to_string(),
                    "group descriptors".to_string(),
                    "reserved group descriptor blocks".to_string(),
                )
            } else {
                (
                    format!("backup superblock (group {g})"),
                    format!("backup group descriptors (group {g})"),
                    format!("reserved group descriptor blocks (group {g})"),
                )
            };
            let sb_at = if g == 0 { 1024 } else { start * bs };
            out.push((sb_at, sb_at + 1024, sb_name));
            if g == 0 {
                // Block 0 before and after the superblock: left for a boot loader.
                out.push((0, 1024, "boot block (unused)".into()));
                if bs > 2048 {
                    out.push((2048, bs, "superblock block (rest)".into()));
                }
            }
            let gd = (start + 1) * bs;
            out.push((gd, gd + gdt_blocks * bs, gd_name));
            let rg = gd + gdt_blocks * bs;
            if reserved_gdt > 0 {
                out.push((rg, rg + reserved_gdt * bs, rg_name));
            }
        }
        let d = gdt.get((g * desc) as usize..((g + 1) * desc) as usize)?;
        let hi = |i: usize| if desc >= 64 { u32_at(d, i) } else { Some(0) };
        let bb = hi(0x20)? << 32 | u32_at(d, 0)?;
        let ib = hi(0x24)? << 32 | u32_at(d, 4)?;
        let it = hi(0x28)? << 32 | u32_at(d, 8)?;
        out.push((bb * bs, (bb + 1) * bs, format!("block bitmap group {g}")));
        out.push((ib * bs, (ib + 1) * bs, format!("inode bitmap group {g}")));
        out.push((
            it * bs,
            (it + it_blocks) * bs,
            format!("inode table group {g}"),
        ));
        tables.push(it);
    }
    let fs = Fs {
        bytes,
        bs,
        inode_size,
        ipg,
        tables,
    };
    directories(&fs, out);
    Some(())
}

/// Every directory reached from the root (inode 2), its blocks named by
/// its path in the image; bounded by the inodes there are (each visited
/// once).
fn directories<B: Bytes>(fs: &Fs<'_, B>, out: &mut Vec<Span>) {
    let mut seen = HashSet::new();
    let mut todo: Vec<(u64, String)> = vec![(2, "/".to_string())];
    while let Some((ino, path)) = todo.pop() {
        if !seen.insert(ino) {
            continue;
        }
        let Some(inode) = fs.inode(ino) else { continue };
        let Some((runs, index)) = fs.extents(inode) else {
            continue;
        };
        let name = if path == "/" {
            "root directory".to_string()
        } else {
            format!("directory {path}")
        };
        for leaf in index {
            out.push((
                leaf * fs.bs,
                (leaf + 1) * fs.bs,
                format!("extent tree of {name}"),
            ));
        }
        for &(start, len) in &runs {
            out.push((start * fs.bs, (start + len) * fs.bs, name.clone()));
            for b in start..start + len {
                let Some(block) = fs.bytes.at(b * fs.bs, fs.bs) else {
                    continue;
                };
                entries(block, &path, &mut todo);
            }
        }
    }
}

/// The subdirectories a directory block lists (ext4_dir_entry_2: inode,
/// rec_len, name_len, file_type 2 = directory).
fn entries(block: &[u8], parent: &str, todo: &mut Vec<(u64, String)>) {
    let mut at = 0usize;
    while at + 8 <= block.len() {
        let (Some(ino), Some(rec)) = (u32_at(block, at), u16_at(block, at + 4)) else {
            return;
        };
        let name_len = usize::from(block[at + 6]);
        let kind = block[at + 7];
        if rec < 8 {
            return;
        }
        if ino != 0 && kind == 2 {
            if let Some(name) = block.get(at + 8..at + 8 + name_len) {
                if name != b"." && name != b".." {
                    let name = String::from_utf8_lossy(name);
                    let path = if parent == "/" {
                        format!("/{name}")
                    } else {
                        format!("{parent}/{name}")
                    };
                    todo.push((ino, path));
                }
            }
        }
        at += rec as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_names_its_structures_and_directories_by_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
        std::fs::write(dir.path().join("etc/ssh/config"), b"hi").unwrap();
        let tree = tree::scan(dir.path(), &Default::default()).unwrap();
        let img = crate::ext4::build(&tree, &Default::default()).unwrap();
        let names: Vec<&str> = img.map.regions().iter().map(|r| &*r.name).collect();
        for want in [
            "superblock",
            "group descriptors",
            "block bitmap group 0",
            "inode bitmap group 0",
            "inode table group 0",
            "root directory",
            "directory /etc",
            "directory /etc/ssh",
            "directory /lost+found",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
    }

    #[test]
    fn backup_groups_follow_sparse_super() {
        let g: Vec<u64> = (0..60).filter(|&g| has_backup(g)).collect();
        assert_eq!(g, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
