//! Trees for the planners, generated from fuzz input: odd names (any bytes but `/` and NUL, up
//! to 255 of them, case and 8.3 clashes, long and non-UTF-8 ones), sizes from 0 to 2^64 - 1
//! (no data is ever read), deep chains of directories, wide directories, hard links, symlinks,
//! device nodes, fifos and sockets, extended attributes and POSIX ACLs, and extreme metadata.
//!
//! The trees keep the invariants a scan gives: children sorted bytewise with unique names that
//! are neither `.` nor `..`; a hard link's nodes share their metadata; `stats` counts the tree.
//! Paths point below a directory that does not exist: a generator that opens a file gets an
//! error, which is fine (only panics are bugs). `st_blocks` always covers the size, so no
//! generator probes a file for holes.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use arbitrary::{Result, Unstructured};
use tree::{Meta, Node, NodeKind, Timestamp, Tree, TreeStats, Xattr};

/// Where the generated tree claims to live (never created).
pub const ROOT: &str = "/nonexistent/disksynth-fuzz";

/// Longest path a scan can give (`PATH_MAX` with its NUL): it reads directories by path, and a
/// longer one fails with `ENAMETOOLONG`.
pub const PATH_MAX: usize = 4095;

/// Whether `path/name` is a path a scan could give.
fn fits(path: &Path, name: &OsString) -> bool {
    path.as_os_str().len() + 1 + name.len() <= PATH_MAX
}

/// What the generated tree may hold.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Symlinks, devices, fifos and sockets (not for FAT: its scan follows links and drops
    /// specials).
    pub links_and_specials: bool,
    /// Extended attributes (ext4).
    pub xattrs: bool,
    /// Nodes at most (the planners are O(n); this bounds one run's time).
    pub max_nodes: usize,
    /// Directory levels at most.
    pub max_depth: usize,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;

/// Names a fuzzer would take long to find: device names, 8.3 and case clashes, dots, Joliet's
/// and ISO's limits, multi-byte UTF-8, invalid UTF-8.
const NAMES: &[&[u8]] = &[
    b"a",
    b"A",
    b"README.TXT",
    b"readme.txt",
    b"Makefile",
    b"makefile",
    b"CON",
    b"nul.txt",
    b"a.b.c.d",
    b".hidden",
    b"...",
    b"trailing. ",
    b"sp ace",
    b"LONGFILENAME.EXTENSION",
    b"longfilename~1.ext",
    b"LONGFI~1.EXT",
    b"x:y*z?\"<>|\\",
    b"\xc3\xa9t\xc3\xa9",
    b"\xe2\x82\xac\xf0\x9f\x92\xbe",
    b"\xff\xfe\x80",
    b"lost+found",
    b"boot.catalog",
    b"\x01\x1f\x7f",
    b"a;1",
    b"DIR.;1",
];

/// Extended attribute names, whole or as prefixes.
const XATTR_NAMES: &[&[u8]] = &[
    b"user.",
    b"trusted.",
    b"security.",
    b"security.capability",
    b"security.selinux",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"system.",
    b"system.data",
    b"os2.",
    b"",
];

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    shape: Shape,
    nodes: usize,
    next_ino: u64,
    /// Files made so far (for hard links): their metadata.
    files: Vec<Meta>,
    /// Hard links made to each entry of `files`.
    links: Vec<u64>,
}

/// A tree from `u` (ends early, with what it has, when the input runs out).
pub fn tree(u: &mut Unstructured<'_>, shape: Shape) -> Result<Tree> {
    let mut g = Gen {
        u,
        shape,
        nodes: 1,
        next_ino: 2,
        files: Vec::new(),
        links: Vec::new(),
    };
    let meta = g.meta(S_IFDIR, 0)?;
    let xattrs = g.xattrs()?;
    let children = g.dir(Path::new(ROOT), 1)?;
    let mut root = Node {
        name: OsString::new(),
        path: PathBuf::from(ROOT),
        followed_link: false,
        meta,
        kind: NodeKind::Dir(children),
        xattrs,
    };
    // nlink of hard-linked files: the links in the tree, and maybe more outside it.
    fix_nlink(&mut root, &g.files, &g.links);
    let stats = count(&root);
    Ok(Tree { root, stats })
}

fn fix_nlink(n: &mut Node, files: &[Meta], links: &[u64]) {
    match &mut n.kind {
        NodeKind::Dir(c) => c.iter_mut().for_each(|c| fix_nlink(c, files, links)),
        NodeKind::File => {
            if let Some(i) = files.iter().position(|m| m.ino == n.meta.ino) {
                n.meta.nlink = n.meta.nlink.max(links[i] + 1);
            }
        }
        _ => {}
    }
}

/// What a scan would count.
pub fn count(n: &Node) -> TreeStats {
    fn walk(n: &Node, st: &mut TreeStats) {
        st.xattrs += n.xattrs.len() as u64;
        match &n.kind {
            NodeKind::Dir(c) => {
                st.dirs += 1;
                c.iter().for_each(|c| walk(c, st));
            }
            NodeKind::File => {
                st.files += 1;
                st.bytes = st.bytes.saturating_add(n.meta.size);
            }
            NodeKind::Symlink { .. } => st.symlinks += 1,
            NodeKind::Special => st.specials += 1,
        }
    }
    let mut st = TreeStats::default();
    walk(n, &mut st);
    st
}

impl Gen<'_, '_> {
    fn room(&self) -> bool {
        self.nodes < self.shape.max_nodes && !self.u.is_empty()
    }

    fn dir(&mut self, path: &Path, depth: usize) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        if depth > self.shape.max_depth {
            return Ok(out);
        }
        while self.room() {
            // 0 ends the directory.
            let op = self.u.int_in_range(0u8..=9)?;
            match op {
                0 => break,
                1 | 2 => {
                    let name = self.name()?;
                    let size = self.size()?;
                    let n = self.file(path, name, size)?;
                    out.push(n);
                }
                3 | 4 => {
                    let name = self.name()?;
                    if !fits(path, &name) {
                        continue;
                    }
                    let p = path.join(&name);
                    let meta = self.meta(S_IFDIR, 0)?;
                    let xattrs = self.xattrs()?;
                    self.nodes += 1;
                    let children = self.dir(&p, depth + 1)?;
                    out.push(Node {
                        name,
                        path: p,
                        followed_link: false,
                        meta,
                        kind: NodeKind::Dir(children),
                        xattrs,
                    });
                }
                5 if self.shape.links_and_specials => {
                    let name = self.name()?;
                    let len = self.u.int_in_range(0usize..=4200)?;
                    let target: Vec<u8> = if self.u.ratio(1u8, 4)? {
                        // Long targets without spending input.
                        b"../".repeat(len / 3)
                    } else {
                        self.u.bytes(len.min(self.u.len()))?.to_vec()
                    };
                    let target: Vec<u8> = target.into_iter().filter(|&b| b != 0).collect();
                    let meta = self.meta(S_IFLNK, target.len() as u64)?;
                    out.push(self.node(
                        path,
                        name,
                        meta,
                        NodeKind::Symlink {
                            target: OsString::from_vec(target).into(),
                        },
                    )?);
                }
                6 if self.shape.links_and_specials => {
                    let name = self.name()?;
                    let fmt = *self.u.choose(&[S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK])?;
                    let mut meta = self.meta(fmt, 0)?;
                    meta.rdev = if self.u.arbitrary()? {
                        self.u.arbitrary()?
                    } else {
                        // makedev(major, minor) as glibc encodes it.
                        let (ma, mi): (u16, u32) = (self.u.arbitrary()?, self.u.arbitrary()?);
                        let (ma, mi) = (u64::from(ma), u64::from(mi));
                        (ma & 0xfff) << 8 | (ma & !0xfff) << 32 | (mi & 0xff) | (mi & !0xff) << 12
                    };
                    out.push(self.node(path, name, meta, NodeKind::Special)?);
                }
                7 if !self.files.is_empty() => {
                    // A hard link to an earlier file.
                    let name = self.name()?;
                    let i = self.u.choose_index(self.files.len())?;
                    let meta = self.files[i];
                    self.links[i] += 1;
                    out.push(self.node(path, name, meta, NodeKind::File)?);
                }
                8 => {
                    // Many files in one directory: names from a pattern.
                    let n = self.u.int_in_range(1usize..=3000)?;
                    let stem = self.name()?.into_vec();
                    let size = self.size()?;
                    for i in 0..n {
                        if self.nodes >= self.shape.max_nodes {
                            break;
                        }
                        let mut name = stem.clone();
                        name.extend_from_slice(format!("{i}").as_bytes());
                        name.truncate(255);
                        let n = self.file(path, OsString::from_vec(name), size)?;
                        out.push(n);
                    }
                }
                9 => {
                    // A chain of single directories: deep trees from little input.
                    let n = self.u.int_in_range(1usize..=self.shape.max_depth)?;
                    let name = self.name()?;
                    if !fits(path, &name) {
                        continue;
                    }
                    out.push(self.chain(path, name, n, depth)?);
                }
                _ => {}
            }
        }
        // What a scan gives: sorted, unique names.
        out.sort_by(|a, b| a.name.as_encoded_bytes().cmp(b.name.as_encoded_bytes()));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn chain(&mut self, path: &Path, name: OsString, n: usize, depth: usize) -> Result<Node> {
        let meta = self.meta(S_IFDIR, 0)?;
        // Built iteratively: the generator must not be what overflows the stack.
        let levels = n
            .min(self.shape.max_depth + 1 - depth.min(self.shape.max_depth))
            .min((PATH_MAX - path.as_os_str().len()) / (name.len() + 1))
            .max(1);
        let mut paths = Vec::with_capacity(levels);
        let mut p = path.join(&name);
        for _ in 0..levels {
            paths.push(p.clone());
            p.push(&name);
        }
        self.nodes += levels;
        let last = paths.pop().unwrap_or_else(|| path.join(&name));
        let leaf_children = if self.room() {
            self.dir(&last, depth + levels)?
        } else {
            Vec::new()
        };
        // Every level its own inode: a scan never sees a directory twice.
        let level_meta = |g: &mut Self| {
            let m = Meta {
                ino: g.next_ino,
                ..meta
            };
            g.next_ino += 1;
            m
        };
        let mut node = Node {
            name: name.clone(),
            path: last,
            followed_link: false,
            meta: level_meta(self),
            kind: NodeKind::Dir(leaf_children),
            xattrs: Vec::new(),
        };
        while let Some(p) = paths.pop() {
            node = Node {
                name: name.clone(),
                path: p,
                followed_link: false,
                meta: level_meta(self),
                kind: NodeKind::Dir(vec![node]),
                xattrs: Vec::new(),
            };
        }
        Ok(node)
    }

    fn file(&mut self, path: &Path, name: OsString, size: u64) -> Result<Node> {
        let meta = self.meta(S_IFREG, size)?;
        self.files.push(meta);
        self.links.push(0);
        self.node(path, name, meta, NodeKind::File)
    }

    fn node(&mut self, path: &Path, name: OsString, meta: Meta, kind: NodeKind) -> Result<Node> {
        self.nodes += 1;
        // Cut to what fits under PATH_MAX (the parent always leaves room for a byte or more).
        let room = PATH_MAX.saturating_sub(path.as_os_str().len() + 1).max(1);
        let mut name = name.into_vec();
        name.truncate(room);
        if name == b"." || name == b".." {
            name = b"n".to_vec();
        }
        let name = OsString::from_vec(name);
        let xattrs = self.xattrs()?;
        Ok(Node {
            path: path.join(&name),
            name,
            followed_link: false,
            meta,
            kind,
            xattrs,
        })
    }

    fn name(&mut self) -> Result<OsString> {
        let mut name: Vec<u8> = match self.u.int_in_range(0u8..=3)? {
            0 => self.u.choose(NAMES)?.to_vec(),
            1 => {
                // Long: a repeated byte, up to NAME_MAX and past the formats' limits.
                let len = self.u.int_in_range(1usize..=255)?;
                let b = *self.u.choose(b"aZ9._~ \xc3")?;
                vec![b; len]
            }
            _ => {
                let len = self.u.int_in_range(1usize..=24)?;
                self.u.bytes(len.min(self.u.len()))?.to_vec()
            }
        };
        for b in &mut name {
            if *b == b'/' || *b == 0 {
                *b = b'_';
            }
        }
        name.truncate(255);
        if name.is_empty() || name == b"." || name == b".." {
            name.insert(0, b'n');
        }
        Ok(OsString::from_vec(name))
    }

    fn size(&mut self) -> Result<u64> {
        Ok(match self.u.int_in_range(0u8..=7)? {
            0 => 0,
            1 => u64::from(self.u.arbitrary::<u8>()?),
            2 => u64::from(self.u.arbitrary::<u16>()?),
            3 => u64::from(self.u.arbitrary::<u32>()?),
            4 => self.u.arbitrary()?,
            5 => {
                // Near a power of two: FAT's 4 GiB, ISO's 4 GiB extents, ext4's extent lengths.
                let p = self.u.int_in_range(9u32..=63)?;
                let d = i64::from(self.u.int_in_range(-2i8..=2)?);
                (1u64 << p).wrapping_add_signed(d)
            }
            _ => u64::from(self.u.int_in_range(0u32..=70_000)?),
        })
    }

    fn time(&mut self) -> Result<Timestamp> {
        let secs = match self.u.int_in_range(0u8..=3)? {
            0 => self.u.arbitrary()?,
            1 => i64::from(self.u.arbitrary::<i32>()?),
            2 => *self.u.choose(&[
                0,
                -1,
                i64::MIN,
                i64::MAX,
                315_532_800,   // 1980, FAT's epoch
                4_354_819_199, // 2107-12-31, past FAT's last
                2_147_483_647,
                2_147_483_648,
                17_179_869_184, // ext4's extra epoch bits run out
                -2_208_988_800, // 1900, ISO's year bias
            ])?,
            _ => 1_700_000_000 + i64::from(self.u.arbitrary::<u16>()?),
        };
        let nanos = self.u.int_in_range(0u32..=999_999_999)?;
        Ok(Timestamp { secs, nanos })
    }

    fn meta(&mut self, fmt: u32, size: u64) -> Result<Meta> {
        let perm = u32::from(self.u.arbitrary::<u16>()?) & 0o7777;
        let ino = self.next_ino;
        self.next_ino += 1;
        let (uid, gid) = if self.u.ratio(1u8, 3)? {
            (self.u.arbitrary()?, self.u.arbitrary()?)
        } else {
            (0, 0)
        };
        Ok(Meta {
            mode: fmt & S_IFMT | perm,
            uid,
            gid,
            size,
            mtime: self.time()?,
            atime: self.time()?,
            ctime: self.time()?,
            dev: 1,
            ino,
            nlink: 1 + u64::from(self.u.int_in_range(0u8..=2)?),
            rdev: 0,
            // Never sparse: no generator probes a file that does not exist.
            blocks: size.div_ceil(512),
        })
    }

    fn xattrs(&mut self) -> Result<Vec<Xattr>> {
        if !self.shape.xattrs || !self.u.ratio(1u8, 4)? {
            return Ok(Vec::new());
        }
        let n = self.u.int_in_range(1usize..=6)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut name = self.u.choose(XATTR_NAMES)?.to_vec();
            if self.u.arbitrary()? {
                let len = self.u.int_in_range(0usize..=16)?;
                name.extend(
                    self.u
                        .bytes(len.min(self.u.len()))?
                        .iter()
                        .filter(|&&b| b != 0),
                );
            }
            let value = match self.u.int_in_range(0u8..=3)? {
                0 => self.acl()?,
                1 => {
                    // Big values, cheaply: ext4 holds at most one 4 KiB block's worth.
                    let len = self.u.int_in_range(0usize..=tree::XATTR_MAX)?;
                    vec![self.u.arbitrary::<u8>()?; len]
                }
                _ => {
                    let len = self.u.int_in_range(0usize..=64)?;
                    self.u.bytes(len.min(self.u.len()))?.to_vec()
                }
            };
            out.push(Xattr { name, value });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    /// A POSIX ACL in the kernel's xattr format (version 2, then tag/perm/id entries), with
    /// tags and ids that may or may not make sense.
    fn acl(&mut self) -> Result<Vec<u8>> {
        let version: u32 = if self.u.ratio(7u8, 8)? {
            2
        } else {
            self.u.arbitrary()?
        };
        let mut v = version.to_le_bytes().to_vec();
        let n = self.u.int_in_range(0usize..=12)?;
        for _ in 0..n {
            let tag: u16 = if self.u.ratio(7u8, 8)? {
                *self.u.choose(&[0x01, 0x02, 0x04, 0x08, 0x10, 0x20])?
            } else {
                self.u.arbitrary()?
            };
            let perm: u16 = self.u.arbitrary()?;
            let id: u32 = if self.u.arbitrary()? {
                self.u.arbitrary()?
            } else {
                u32::MAX
            };
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        if self.u.ratio(1u8, 8)? {
            v.truncate(self.u.int_in_range(0..=v.len())?);
        }
        Ok(v)
    }
}
