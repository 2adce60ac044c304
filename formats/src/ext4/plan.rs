//! From a tree to declarations: every entry in pre-order with its parent,
//! its name (bytes, as ext4 stores them) and what it becomes in ext4 — a
//! directory, a file (dense or with data ranges), another name for an
//! earlier inode, a symlink or a special inode — and its extended
//! attributes. Also what the layout estimate needs to know (block counts),
//! the UUID and the filesystem time. No bytes.
//!
//! Declaration order is the inode order, and the engine allocates
//! directories and then file data in inode order, so pre-order keeps a
//! directory's files together on disk and the same tree gives the same
//! image.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

use mkext4::SpecialKind;
use tree::{Node, NodeKind, Tree};

use super::layout::Content;
use super::xattr::{self, Attr};
use super::{Ext4Error, Ext4Options, Owner};
use crate::par::par_map;
use crate::sparse;

/// Longest symlink target stored in the inode itself (a "fast" symlink);
/// longer ones take a block (ext4 wiki, "Symbolic Links").
const FAST_SYMLINK_MAX: usize = 59;

/// One declared entry.
#[derive(Debug)]
pub(crate) struct Entry<'t> {
    /// The host entry.
    pub node: &'t Node,
    /// Index of the parent directory in [`Plan::entries`]; `None` is the root.
    pub parent: Option<usize>,
    /// The entry's name.
    pub name: &'t [u8],
    /// What it becomes.
    pub what: What<'t>,
    /// Its extended attributes (none for a [`What::Link`], whose inode has
    /// them).
    pub xattrs: Vec<Attr>,
}

/// What an [`Entry`] becomes.
#[derive(Debug)]
pub(crate) enum What<'t> {
    /// A directory.
    Dir,
    /// A regular file; `data` lists its data ranges if it is sparse.
    File { data: Option<Vec<(u64, u64)>> },
    /// Another name for the inode of an earlier entry.
    Link { first: usize },
    /// A symbolic link.
    Symlink { target: &'t [u8] },
    /// A device node, fifo or socket.
    Special(SpecialKind),
}

/// The declarations of a tree.
#[derive(Debug)]
pub(crate) struct Plan<'t> {
    /// Every entry but the root, in pre-order.
    pub entries: Vec<Entry<'t>>,
    /// The root directory's extended attributes.
    pub root_xattrs: Vec<Attr>,
    /// What must fit.
    pub content: Content,
    /// Files declared with holes.
    pub sparse_files: usize,
}

impl<'t> Plan<'t> {
    /// Plan `tree`.
    pub fn new(tree: &'t Tree) -> Result<Plan<'t>, Ext4Error> {
        let mut plan = Plan {
            entries: Vec::with_capacity((tree.stats.files + tree.stats.dirs) as usize),
            content: Content::default(),
            sparse_files: 0,
            root_xattrs: xattr::of(&tree.root)?,
        };
        let mut first_of: HashMap<(u64, u64), usize> = HashMap::new();
        plan.walk(&tree.root, None, &mut first_of)?;
        plan.find_holes()?;
        plan.count();
        Ok(plan)
    }

    fn walk(
        &mut self,
        dir: &'t Node,
        parent: Option<usize>,
        first_of: &mut HashMap<(u64, u64), usize>,
    ) -> Result<(), Ext4Error> {
        for node in dir.children() {
            let name = node.name.as_bytes();
            let index = self.entries.len();
            // Hard links: the first name of an inode declares it, later
            // names link to it (regular files, symlinks and specials alike).
            if !node.is_dir() && node.meta.nlink > 1 {
                let key = (node.meta.dev, node.meta.ino);
                if let Some(&first) = first_of.get(&key) {
                    self.entries.push(Entry {
                        node,
                        parent,
                        name,
                        what: What::Link { first },
                        xattrs: Vec::new(),
                    });
                    continue;
                }
                first_of.insert(key, index);
            }
            let what = match &node.kind {
                NodeKind::Dir(_) => What::Dir,
                NodeKind::File => What::File { data: None },
                NodeKind::Symlink { target } => What::Symlink {
                    target: target.as_os_str().as_bytes(),
                },
                NodeKind::Special => What::Special(special(node)?),
            };
            self.entries.push(Entry {
                node,
                parent,
                name,
                what,
                xattrs: xattr::of(node)?,
            });
            if node.is_dir() {
                self.walk(node, Some(index), first_of)?;
            }
        }
        Ok(())
    }

    /// Ask the host for the data ranges of files that may be sparse (few,
    /// usually none; on all cores when there are many, as on compressing
    /// filesystems where `st_blocks` is small for every file).
    fn find_holes(&mut self) -> Result<(), Ext4Error> {
        let candidates: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                matches!(e.what, What::File { .. }) && sparse::maybe_sparse(&e.node.meta)
            })
            .collect();
        let found = par_map(&candidates, |_, &i| {
            let node = self.entries[i].node;
            sparse::data_ranges(&node.path, node.meta.size).map_err(|source| Ext4Error::Sparse {
                path: node.path.clone(),
                source,
            })
        });
        for (i, ranges) in candidates.into_iter().zip(found) {
            let ranges = ranges?;
            let size = self.entries[i].node.meta.size;
            if ranges != [(0, size)] {
                self.sparse_files += 1;
                self.entries[i].what = What::File { data: Some(ranges) };
            }
        }
        Ok(())
    }

    /// Fill in [`Plan::content`].
    fn count(&mut self) {
        let c = &mut self.content;
        // Inodes 1..=10 (the root is 2) and lost+found (11), with its 4 blocks.
        c.inodes = 11;
        c.blocks = 4;
        // One xattr block for each inode whose attributes overflow it.
        let attr_sets =
            std::iter::once(&self.root_xattrs).chain(self.entries.iter().map(|e| &e.xattrs));
        for attrs in attr_sets.filter(|a| !a.is_empty()) {
            if xattr::needs_block(attrs) {
                c.blocks = c.blocks.saturating_add(1);
            }
        }
        // Directory entry bytes per directory (index = entry index + 1, 0 = root).
        let mut dir_bytes = vec![0u64; self.entries.len() + 1];
        dir_bytes[0] = rec_len("lost+found".len());
        for (i, e) in self.entries.iter().enumerate() {
            dir_bytes[e.parent.map_or(0, |p| p + 1)] += rec_len(e.name.len());
            match &e.what {
                What::Link { .. } => {}
                What::Dir => c.inodes += 1,
                What::File { data } => {
                    c.inodes += 1;
                    let ranges = match data {
                        Some(r) => r.clone(),
                        None if e.node.meta.size > 0 => vec![(0, e.node.meta.size)],
                        None => Vec::new(),
                    };
                    c.file_blocks(&ranges);
                }
                What::Symlink { target } => {
                    c.inodes += 1;
                    if target.len() > FAST_SYMLINK_MAX {
                        c.blocks = c.blocks.saturating_add(1);
                    }
                }
                What::Special(_) => c.inodes += 1,
            }
            if !matches!(e.what, What::Dir) {
                dir_bytes[i + 1] = u64::MAX;
            }
        }
        for bytes in dir_bytes.into_iter().filter(|&b| b != u64::MAX) {
            c.dir_blocks(bytes);
        }
    }
}

/// Bytes of a directory entry with a name of `len` bytes (ext4 wiki,
/// "Linear (Classic) Directories": 8-byte header, name, 4-byte aligned).
fn rec_len(len: usize) -> u64 {
    (8 + len as u64).next_multiple_of(4)
}

/// The engine's kind for a device node, fifo or socket.
fn special(node: &Node) -> Result<SpecialKind, Ext4Error> {
    const S_IFMT: u32 = 0o170_000;
    let rdev = node.meta.rdev;
    // Linux's dev_t encoding (glibc gnu_dev_major/minor).
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let dev = |block: bool| -> Result<SpecialKind, Ext4Error> {
        if major > 0xfff || minor > 0xf_ffff {
            return Err(Ext4Error::DeviceNumber {
                path: node.path.clone(),
                major,
                minor,
            });
        }
        let (major, minor) = (major as u32, minor as u32);
        Ok(if block {
            SpecialKind::Block { major, minor }
        } else {
            SpecialKind::Char { major, minor }
        })
    };
    match node.meta.mode & S_IFMT {
        0o020_000 => dev(false),
        0o060_000 => dev(true),
        0o010_000 => Ok(SpecialKind::Fifo),
        _ => Ok(SpecialKind::Socket),
    }
}

/// The engine's metadata for `node` under `opts`.
/// Earliest and latest seconds an inode's times hold (32-bit seconds, sign-extended, plus two
/// epoch bits in the `_extra` fields): 1901-12-13 to 2446-05-10. The kernel clamps times to this
/// range (`EXT4_EXTRA_TIMESTAMP_MIN`/`MAX`), and so do we: the engine would wrap a time outside
/// it (modulo 2^34 seconds), and overflow near the ends of `i64`.
pub(crate) const TIME_RANGE: (i64, i64) = (i32::MIN as i64, (1 << 34) - 1 + i32::MIN as i64);

pub(crate) fn meta(node: &Node, opts: &Ext4Options) -> mkext4::Meta {
    let (uid, gid) = match opts.owner {
        Owner::Keep => (node.meta.uid, node.meta.gid),
        Owner::Root => (0, 0),
    };
    let ts = |t: tree::Timestamp| (t.secs.clamp(TIME_RANGE.0, TIME_RANGE.1), t.nanos);
    let mut m = mkext4::Meta::new(
        (node.meta.mode & 0o7777) as u16,
        uid,
        gid,
        ts(node.meta.mtime),
    );
    // atime and ctime are left at mtime: serving the image reads the host
    // files, which moves their atime, and every copy, `tar x` or checkout
    // of a tree gives it new ctimes; the same tree must give the same bytes.
    m.ctime = Some(ts(node.meta.mtime));
    m
}

/// The filesystem time (superblock mkfs/write/check times, `lost+found`,
/// reserved inodes; it also feeds the derived UUID and so every checksum):
/// `opts.timestamp`, else the newest mtime in the tree clamped to the
/// release date baked into the source ([`crate::time::default_volume_time`]),
/// never the clock: the same tree gives the same bytes on every run, and a
/// superblock is never "in the future" (which makes e2fsck want to fix
/// it). Within what the superblock's 32-bit fields hold.
pub(crate) fn epoch(tree: &Tree, opts: &Ext4Options) -> i64 {
    opts.timestamp
        .unwrap_or_else(|| crate::time::default_volume_time(tree))
        .clamp(0, i64::from(u32::MAX))
}

/// A UUID from everything that shapes the image: names, kinds, sizes,
/// times, modes, owners, link targets and the options (FNV-1a, 128-bit,
/// so it is stable across Rust versions and machines). Marked as an
/// RFC 9562 version 8 ("custom") UUID.
pub(crate) fn derive_uuid(tree: &Tree, opts: &Ext4Options, size: u64, epoch: i64) -> [u8; 16] {
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    fn walk(n: &Node, eat: &mut dyn FnMut(&[u8])) {
        let m = &n.meta;
        eat(n.name.as_encoded_bytes());
        eat(&[0]);
        // Only what the image holds: not host ctimes, link counts (which
        // count links outside the tree) or directory sizes (which depend
        // on the host filesystem).
        let size = if n.is_dir() { 0 } else { m.size };
        for v in [size, u64::from(m.mode), u64::from(m.uid), u64::from(m.gid)] {
            eat(&v.to_le_bytes());
        }
        eat(&m.mtime.secs.to_le_bytes());
        eat(&m.mtime.nanos.to_le_bytes());
        eat(&m.rdev.to_le_bytes());
        // Only when there are any, so trees without xattrs (or scanned
        // with --no-xattrs) keep the UUIDs they always had.
        if !n.xattrs.is_empty() {
            eat(&[0xfe]);
            for x in &n.xattrs {
                eat(&x.name);
                eat(&[0]);
                eat(&(x.value.len() as u64).to_le_bytes());
                eat(&x.value);
            }
        }
        if let NodeKind::Symlink { target } = &n.kind {
            eat(target.as_os_str().as_encoded_bytes());
            eat(&[0]);
        }
        for c in n.children() {
            walk(c, eat);
        }
        eat(&[0xff]);
    }
    walk(&tree.root, &mut eat);
    eat(opts.label.as_deref().unwrap_or("").as_bytes());
    eat(&[0]);
    eat(opts.owner.to_string().as_bytes());
    eat(&size.to_le_bytes());
    eat(&epoch.to_le_bytes());
    let mut uuid = h.to_be_bytes();
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}
