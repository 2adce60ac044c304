//! The plan of an ISO 9660 image: which entries it holds, their directory
//! records in each namespace (ISO 9660 with Rock Ridge, and Joliet), and
//! where everything goes. Pure: no I/O and, except the System Use fields,
//! no bytes.
//!
//! ```text
//!  sector 0        16    17         18     19 ..
//!  | system area | PVD | Joliet SVD | term | path tables: ISO L, ISO M, Joliet L, Joliet M |
//!  | Rock Ridge continuation areas | ISO directories | Joliet directories |
//!  | file 1 | file 2 (multi-extent if >= 4 GiB) | ... |  (every piece 2048-aligned)
//! ```
//! Directories come in path table order (breadth first, §9.4), files in
//! tree order; the two namespaces share the file extents.

use std::collections::HashMap;

use std::os::unix::ffi::OsStrExt;

use tree::{Node, NodeKind, Tree};

use super::names::{iso_idents, joliet_idents};
use super::record::{cmp_ident, path_record_len, record_len, su_room, MAX_EXTENT, SECTOR};
use super::susp::{self, Continuation};
use super::IsoError;
use crate::par::par_map;

/// An entry of a flattened directory.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Child<'t> {
    /// A directory: index in [`Flat::dirs`].
    Dir(usize),
    /// A regular file: index in [`Flat::files`].
    File(usize),
    /// A symlink or special file (kept only with Rock Ridge), and its
    /// file serial number.
    Other(&'t Node, u32),
}

/// A directory of the tree.
#[derive(Debug)]
pub(crate) struct Dir<'t> {
    pub node: &'t Node,
    /// Index of the parent (the root is its own parent).
    pub parent: usize,
    pub children: Vec<Child<'t>>,
    /// File serial number for Rock Ridge `PX`.
    pub ino: u32,
    /// Subdirectories, for the link count.
    pub subdirs: u32,
}

/// The tree as the image holds it: directories depth first (root at 0),
/// regular files in tree order.
#[derive(Debug)]
pub(crate) struct Flat<'t> {
    pub dirs: Vec<Dir<'t>>,
    /// Regular files and their file serial numbers.
    pub files: Vec<(&'t Node, u32)>,
    /// For each file: the index of the first file that is the same host
    /// inode (a hard link), whose extent it shares, or `None`.
    pub link_of: Vec<Option<usize>>,
    /// For each first file of an inode: how many names it has in the tree.
    pub nlink: Vec<u32>,
    /// First file index of each multiply-linked host inode.
    seen: HashMap<(u64, u64), usize>,
}

impl<'t> Flat<'t> {
    /// Flatten `tree`; symlinks and special files only if `keep_others`.
    pub(crate) fn new(tree: &'t Tree, keep_others: bool) -> Self {
        let mut flat = Flat {
            dirs: Vec::new(),
            files: Vec::new(),
            link_of: Vec::new(),
            nlink: Vec::new(),
            seen: HashMap::new(),
        };
        let mut ino = 0u32;
        flat.add(&tree.root, 0, keep_others, &mut ino);
        flat
    }

    fn add(&mut self, node: &'t Node, parent: usize, keep_others: bool, ino: &mut u32) -> usize {
        let i = self.dirs.len();
        *ino += 1;
        self.dirs.push(Dir {
            node,
            parent,
            children: Vec::new(),
            ino: *ino,
            subdirs: 0,
        });
        let mut children = Vec::with_capacity(node.children().len());
        for c in node.children() {
            match c.kind {
                NodeKind::Dir(_) => children.push(Child::Dir(self.add(c, i, keep_others, ino))),
                NodeKind::File => {
                    // Hard links share one extent (directory records may
                    // point at the same blocks, ECMA-119 §6.8.1) and one
                    // Rock Ridge serial number with the right link count.
                    let j = self.files.len();
                    children.push(Child::File(j));
                    let first = (c.meta.nlink > 1)
                        .then(|| *self.seen.entry((c.meta.dev, c.meta.ino)).or_insert(j))
                        .filter(|&f| f != j);
                    match first {
                        Some(f) => {
                            self.files.push((c, self.files[f].1));
                            self.nlink[f] += 1;
                        }
                        None => {
                            *ino += 1;
                            self.files.push((c, *ino));
                        }
                    }
                    self.link_of.push(first);
                    self.nlink.push(1);
                }
                NodeKind::Symlink { .. } | NodeKind::Special if keep_others => {
                    *ino += 1;
                    children.push(Child::Other(c, *ino));
                }
                NodeKind::Symlink { .. } | NodeKind::Special => log::warn!(
                    "{}: skipped, ISO 9660 without Rock Ridge cannot hold symlinks or special files",
                    c.path.display()
                ),
            }
        }
        self.dirs[i].subdirs = children
            .iter()
            .filter(|c| matches!(c, Child::Dir(_)))
            .count() as u32;
        self.dirs[i].children = children;
        i
    }

    fn node(&self, c: Child<'t>) -> &'t Node {
        match c {
            Child::Dir(j) => self.dirs[j].node,
            Child::File(j) => self.files[j].0,
            Child::Other(n, _) => n,
        }
    }
}

/// What a directory record describes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'t> {
    /// `.` of its directory.
    Dot,
    /// `..` of its directory.
    DotDot,
    /// An entry.
    Entry(Child<'t>),
}

/// One directory record (several for a multi-extent file).
#[derive(Debug)]
pub(crate) struct Rec<'t> {
    pub ident: Box<[u8]>,
    pub target: Target<'t>,
    /// The System Use field (Rock Ridge), empty without.
    pub su: Box<[u8]>,
}

/// A directory in one namespace.
#[derive(Debug, Default)]
pub(crate) struct NsDir<'t> {
    /// `.`, `..`, then the entries in §9.3 order.
    pub recs: Vec<Rec<'t>>,
    /// Logical blocks it takes.
    pub sectors: u32,
    /// Its first logical block.
    pub extent: u32,
}

/// The directory hierarchy in one namespace (ISO 9660 or Joliet).
#[derive(Debug)]
pub(crate) struct Namespace<'t> {
    /// By index in [`Flat::dirs`].
    pub dirs: Vec<NsDir<'t>>,
    /// Directories in path table order (§9.4): breadth first, each level
    /// by parent number, then by identifier.
    pub order: Vec<usize>,
    /// Path table directory number of each directory (1-based, §9.4.4).
    pub number: Vec<u16>,
    /// Bytes in one path table.
    pub path_table_size: u32,
}

/// Bytes in the largest volume: 2^32 logical blocks (§8.4.8, a 32-bit Volume Space Size).
pub(crate) const MAX_VOLUME: u64 = (1 << 32) * SECTOR;

/// How many directory records a file of `size` bytes needs (§6.5.1:
/// extents of at most [`MAX_EXTENT`] bytes).
pub(crate) fn parts(size: u64) -> u64 {
    size.div_ceil(MAX_EXTENT).max(1)
}

impl<'t> Namespace<'t> {
    /// The ISO 9660 (`joliet == false`) or Joliet namespace of `flat`,
    /// records sorted, no System Use fields yet. Returns the host paths of
    /// entries whose Joliet names had to be shortened too.
    pub(crate) fn new(flat: &Flat<'t>, joliet: bool) -> Result<(Self, Vec<String>), IsoError> {
        let per_dir = par_map(&flat.dirs, |_, d| {
            let kids: Vec<Child<'t>> = d
                .children
                .iter()
                .copied()
                .filter(|c| !(joliet && matches!(c, Child::Other(..))))
                .collect();
            let names: Vec<_> = kids
                .iter()
                .map(|&c| (flat.node(c).name.as_os_str(), matches!(c, Child::Dir(_))))
                .collect();
            let (idents, short) = if joliet {
                joliet_idents(&names)
            } else {
                (iso_idents(&names), Vec::new())
            };
            let short: Vec<String> = short
                .into_iter()
                .map(|i| flat.node(kids[i]).path.display().to_string())
                .collect();
            let mut recs: Vec<Rec<'t>> = idents
                .into_iter()
                .zip(kids)
                .map(|(ident, c)| Rec {
                    ident: ident.into(),
                    target: Target::Entry(c),
                    su: Box::default(),
                })
                .collect();
            // §9.3 order. Joliet identifiers are UCS-2 units.
            if joliet {
                let units = |b: &[u8]| -> Vec<u16> {
                    b.chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect()
                };
                let mut keyed: Vec<(Vec<u16>, Rec<'t>)> =
                    recs.into_iter().map(|r| (units(&r.ident), r)).collect();
                keyed.sort_by(|a, b| cmp_ident(&a.0, &b.0));
                recs = keyed.into_iter().map(|(_, r)| r).collect();
            } else {
                recs.sort_by(|a, b| cmp_ident(&a.ident, &b.ident));
            }
            let dots = [(0u8, Target::Dot), (1, Target::DotDot)].map(|(id, target)| Rec {
                ident: Box::new([id]),
                target,
                su: Box::default(),
            });
            let mut all = Vec::with_capacity(recs.len() + 2);
            all.extend(dots);
            all.extend(recs);
            (
                NsDir {
                    recs: all,
                    ..NsDir::default()
                },
                short,
            )
        });
        let mut shortened = Vec::new();
        let dirs: Vec<NsDir<'t>> = per_dir
            .into_iter()
            .map(|(d, s)| {
                shortened.extend(s);
                d
            })
            .collect();
        let mut order = vec![0usize];
        let mut number = vec![0u16; dirs.len()];
        let mut path_table_size = path_record_len(1);
        let mut i = 0;
        while i < order.len() {
            let d = order[i];
            number[d] = u16::try_from(i + 1).map_err(|_| IsoError::TooManyDirs(dirs.len()))?;
            for r in &dirs[d].recs {
                if let Target::Entry(Child::Dir(j)) = r.target {
                    order.push(j);
                    path_table_size += path_record_len(r.ident.len());
                }
            }
            i += 1;
        }
        let path_table_size = path_table_size as u32;
        Ok((
            Namespace {
                dirs,
                order,
                number,
                path_table_size,
            },
            shortened,
        ))
    }

    /// Fill in the Rock Ridge System Use fields, overflow into `ce`. The
    /// entries are built per directory on all cores; placing them (which
    /// assigns continuation areas) is in path table order.
    pub(crate) fn add_rock_ridge(&mut self, flat: &Flat<'t>, ce: &mut Continuation) {
        let entries = par_map(&self.order, |_, &d| {
            let recs = &self.dirs[d].recs;
            recs.iter()
                .map(|r| rock_ridge(flat, d, r.target))
                .collect::<Vec<_>>()
        });
        for (&d, per_rec) in self.order.iter().zip(entries) {
            for (r, e) in self.dirs[d].recs.iter_mut().zip(per_rec) {
                r.su = ce.place(e, su_room(r.ident.len())).into();
            }
        }
    }

    /// Size every directory (records never straddle a sector, §6.8.1.1)
    /// and place them from logical block `start` in path table order;
    /// returns the next free block.
    pub(crate) fn place(&mut self, flat: &Flat<'t>, start: u64) -> Result<u64, IsoError> {
        let mut next = start;
        for &d in &self.order {
            let dir = &mut self.dirs[d];
            let mut pos = 0u64;
            for r in &dir.recs {
                let len = record_len(r.ident.len(), r.su.len()) as u64;
                let n = match r.target {
                    Target::Entry(Child::File(j)) => {
                        let size = flat.files[j].0.meta.size;
                        // No volume holds more (its blocks are numbered with 32 bits): refuse
                        // it before counting its records, one per 4 GiB (a sparse file of
                        // exabytes took billions of rounds of the loop below).
                        if size > MAX_VOLUME {
                            return Err(IsoError::TooLarge);
                        }
                        parts(size)
                    }
                    _ => 1,
                };
                for _ in 0..n {
                    if pos % SECTOR + len > SECTOR {
                        pos = pos.div_ceil(SECTOR) * SECTOR;
                    }
                    pos += len;
                }
            }
            let sectors = pos.div_ceil(SECTOR);
            dir.sectors = u32::try_from(sectors).map_err(|_| IsoError::TooLarge)?;
            dir.extent = u32::try_from(next).map_err(|_| IsoError::TooLarge)?;
            next += sectors;
        }
        Ok(next)
    }
}

/// The Rock Ridge entries of a record in directory `d` describing
/// `target`: `SP` (root `.` only), `PX`, `TF`, `PN`, `SL`, `NM`, and `ER`
/// last in the root's `.` (it goes to a continuation area).
fn rock_ridge<'t>(flat: &Flat<'t>, d: usize, target: Target<'t>) -> Vec<Vec<u8>> {
    let dir = &flat.dirs[d];
    let mut entries = Vec::with_capacity(4);
    let node = match target {
        Target::Dot => {
            if d == 0 {
                entries.push(susp::sp()); // SUSP §5.3: first in the root's "."
            }
            dir.node
        }
        Target::DotDot => flat.dirs[dir.parent].node,
        Target::Entry(c) => flat.node(c),
    };
    let m = &node.meta;
    let (nlink, ino) = match target {
        Target::Dot => (2 + dir.subdirs, dir.ino),
        Target::DotDot => {
            let p = &flat.dirs[dir.parent];
            (2 + p.subdirs, p.ino)
        }
        Target::Entry(Child::Dir(j)) => (2 + flat.dirs[j].subdirs, flat.dirs[j].ino),
        Target::Entry(Child::File(j)) => {
            (flat.nlink[flat.link_of[j].unwrap_or(j)], flat.files[j].1)
        }
        Target::Entry(Child::Other(_, ino)) => (1, ino),
    };
    entries.push(susp::px(m.mode, nlink, m.uid, m.gid, ino));
    entries.push(susp::tf(m.mtime.secs));
    if let Target::Entry(_) = target {
        let fmt = m.mode & 0o170000;
        if fmt == 0o020000 || fmt == 0o060000 {
            entries.push(susp::pn(m.rdev));
        }
        if let NodeKind::Symlink { target } = &node.kind {
            // Rock Ridge holds targets of any length (Linux reads them
            // whole), but libisofs caps them at 1024 bytes.
            if target.as_os_str().len() > 1024 {
                log::warn!(
                    "{}: symlink target of {} bytes; xorriso/libisofs refuse targets over 1024 bytes",
                    node.path.display(),
                    target.as_os_str().len()
                );
            }
            entries.extend(susp::sl(target));
        }
        entries.extend(susp::nm(node.name.as_bytes()));
    }
    if d == 0 && matches!(target, Target::Dot) {
        entries.push(susp::er());
    }
    entries
}
