//! How big an ext4 filesystem must be to hold a tree: pure arithmetic over
//! block counts, mirroring the engine's geometry (4 KiB blocks, 32768
//! blocks per group, flex_bg of 16, sparse_super backups, 256-byte inodes,
//! mke2fs's journal size tiers).
//!
//! ```text
//!  block 0                                              (ext4 wiki, "Disk Layout")
//!  | 1024 pad + superblock | GDT | flex_bg: 16 block bitmaps, 16 inode bitmaps, 16 inode tables |
//!  | journal | lost+found | directories (inode order) | file data (inode order) | free ...
//!  group 1: | backup superblock + GDT | data or free ...          (groups 1, 3^n, 5^n, 7^n)
//!  group 16: | flex_bg metadata of groups 16..31 | ...
//! ```
//! The estimate errs on the large side; the engine's seal is the judge,
//! and `image` grows the size when the estimate was short.

/// ext4 block size used throughout.
pub const BLOCK: u64 = 4096;
/// Blocks per group (one bitmap block's worth of bits).
const BLOCKS_PER_GROUP: u64 = 32768;
/// Longest initialized extent (ext4 wiki, "Extent Tree": 2^15 blocks).
const MAX_EXTENT: u64 = 32768;
/// Extent entries in one 4 KiB tree node (12-byte header, 12-byte entries).
const EXTENTS_PER_NODE: u64 = 340;
/// Usable bytes of a directory block (the 12-byte checksum tail excluded).
const DIR_USABLE: u64 = BLOCK - 12;
/// The longest directory entry (255-byte name): what packing may waste per block.
const DIR_WASTE: u64 = 264;
/// The engine writes only 32-bit block numbers (no `64bit` feature).
pub const MAX_BLOCKS: u64 = u32::MAX as u64 - 1;
/// Smallest filesystem the engine builds: a 1024-block journal may take at
/// most a quarter.
const MIN_BLOCKS: u64 = 4096;

/// What a tree needs, apart from the per-group metadata and the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Content {
    /// Inodes in use, the reserved ones (1..=11) included.
    pub inodes: u64,
    /// Blocks of file data, directories, slow symlinks, extent-tree nodes
    /// and `lost+found`.
    pub blocks: u64,
}

impl Content {
    /// Count a file with data `ranges` (byte offset, length).
    /// Counts saturate: a tree of files of exabytes (sparse, on a host filesystem that allows
    /// them) must come out as "too big", not wrap around to a small filesystem.
    pub fn file_blocks(&mut self, ranges: &[(u64, u64)]) {
        let mut runs = 0u64;
        for &(_, len) in ranges {
            let n = len.div_ceil(BLOCK);
            self.blocks = self.blocks.saturating_add(n);
            // An allocation may also break at each group's metadata.
            runs = runs.saturating_add(2 * n.div_ceil(MAX_EXTENT) + 1);
        }
        self.blocks = self.blocks.saturating_add(tree_blocks(runs));
    }

    /// Count a directory whose entries (without "." and "..") take `bytes`.
    pub fn dir_blocks(&mut self, bytes: u64) {
        let per_block = DIR_USABLE - DIR_WASTE;
        let blocks = if bytes < BLOCK - 24 {
            // Linear, with "." and ".." (12 bytes each).
            (bytes + 24).div_ceil(per_block).max(1)
        } else {
            // Hashed (ext4 wiki, "Hash Tree Directories"): a root block,
            // full leaves, and index nodes of ~510 entries when the root
            // cannot point at every leaf.
            let leaves = bytes.div_ceil(per_block);
            1 + leaves
                + if leaves > 500 {
                    leaves.div_ceil(500)
                } else {
                    0
                }
        };
        self.blocks = self
            .blocks
            .saturating_add(blocks + tree_blocks(2 * blocks.div_ceil(MAX_EXTENT) + 1));
    }
}

/// Extent-tree blocks for a file of `runs` extents: none up to the 4 that
/// fit the inode, else leaves and (rarely) one index level.
fn tree_blocks(runs: u64) -> u64 {
    if runs <= 4 {
        return 0;
    }
    let leaves = runs.div_ceil(EXTENTS_PER_NODE);
    leaves
        + if leaves > 4 {
            leaves.div_ceil(EXTENTS_PER_NODE)
        } else {
            0
        }
}

/// Inodes to ask for in a filesystem of `blocks` holding `used`: mke2fs's
/// one per 16 KiB, or the tree's plus an eighth for a `--rw` client when
/// that is more; never more than a group's bitmap can track.
pub fn inodes_for(blocks: u64, used: u64) -> u64 {
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
    (blocks * BLOCK / 16384)
        .max(used + used / 8 + 16)
        .min(groups * BLOCKS_PER_GROUP)
}

/// mke2fs's journal size tiers (`ext2fs_default_journal_size`), in blocks.
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..=32767 => 1024,
        32768..=262143 => 4096,
        262144..=524287 => 8192,
        524288..=4194303 => 16384,
        4194304..=8388607 => 32768,
        8388608..=16777215 => 65536,
        16777216..=33554431 => 131072,
        _ => 262144,
    }
}

/// Blocks that hold no file or directory data in a filesystem of `blocks`
/// with `inodes` inodes: superblocks and GDTs, bitmaps, inode tables,
/// the journal, plus room for the inode tables' placement.
fn overhead(blocks: u64, inodes: u64) -> u64 {
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
    let ipg = inodes
        .div_ceil(groups)
        .next_multiple_of(16)
        .clamp(16, 32768);
    let itable = ipg / 16;
    let gdt = (groups * 32).div_ceil(BLOCK);
    let backups = (1..groups).filter(|&g| has_backup(g)).count() as u64;
    (1 + gdt) * (1 + backups) + groups * (2 + itable) + journal_blocks(blocks)
        // An inode table must be contiguous; placing one may skip a
        // backup superblock's neighbourhood.
        + itable + gdt + 16
}

/// sparse_super: groups 0, 1 and powers of 3, 5 and 7 hold backups.
fn has_backup(g: u64) -> bool {
    fn power_of(mut n: u64, base: u64) -> bool {
        while n > 1 && n.is_multiple_of(base) {
            n /= base;
        }
        n == 1
    }
    g == 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
}

/// The fewest blocks holding `content` plus `spare` free blocks, in whole
/// MiB; `None` if that is more than ext4 here can address.
pub fn min_blocks(content: Content, spare: u64) -> Option<u64> {
    let want = content.blocks.saturating_add(spare);
    let mut b = want.max(MIN_BLOCKS);
    for _ in 0..64 {
        // `b` only grows, so past the limit nothing fits; and the group arithmetic below must
        // not run for a size no ext4 here can have (for a sparse file of exabytes it counted
        // the backup superblocks of billions of groups, one by one).
        if b > MAX_BLOCKS {
            return None;
        }
        let inodes = inodes_for(b, content.inodes);
        if inodes < content.inodes {
            // More inodes than the groups can hold: add groups.
            b = content.inodes.div_ceil(BLOCKS_PER_GROUP) * BLOCKS_PER_GROUP;
            continue;
        }
        let need = (want + overhead(b, inodes))
            .max(MIN_BLOCKS)
            .max(4 * journal_blocks(b));
        if need <= b {
            let b = b.next_multiple_of(256);
            return (b <= MAX_BLOCKS).then_some(b);
        }
        b = need;
    }
    None
}

/// Free blocks to leave in an automatically sized filesystem: a
/// sixteenth of the content plus 1 MiB, so a `--rw` client has room.
pub fn slack(content: Content) -> u64 {
    content.blocks / 16 + 256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_follow_sparse_super() {
        let g: Vec<u64> = (0..50).filter(|&g| has_backup(g)).collect();
        assert_eq!(g, [1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn empty_tree_needs_the_smallest_filesystem() {
        let c = Content {
            inodes: 12,
            blocks: 5,
        };
        assert_eq!(min_blocks(c, 0), Some(MIN_BLOCKS));
    }

    #[test]
    fn many_inodes_need_enough_groups() {
        let c = Content {
            inodes: 100_000,
            blocks: 1000,
        };
        let b = min_blocks(c, 0).unwrap();
        assert!(
            b.div_ceil(BLOCKS_PER_GROUP) * BLOCKS_PER_GROUP >= 100_000,
            "{b}"
        );
        assert!(inodes_for(b, 100_000) >= 100_000);
    }

    #[test]
    fn large_dirs_are_hashed_and_counted_generously() {
        let mut c = Content::default();
        c.dir_blocks(20_000 * 20);
        assert!(c.blocks > 20_000 * 20 / 4084, "{}", c.blocks);
    }
}
