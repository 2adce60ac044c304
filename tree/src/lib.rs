//! A host directory as the filesystem generators see it: names, kinds and
//! metadata, gathered with `readdir` and `stat` only — no file is opened
//! and no data is read, so scanning costs O(metadata). Extended attributes
//! (`llistxattr`/`lgetxattr`) are read only when asked for
//! ([`ScanOptions::xattrs`], ext4): one more system call per entry, and a
//! path-based one (there is no `llistxattrat` before Linux 6.13), which
//! about doubles the scan time of a tree whose entries have no attributes.
//!
//! FAT, ISO 9660 and ext4 all start from a [`Tree`]. It lives in its own
//! crate so that `formats` (which may only depend on `synth`) and the CLI can
//! share it; reading file data later goes through `synth::HostFile`.
//!
//! ```no_run
//! let tree = tree::scan("./dir".as_ref(), &tree::ScanOptions::default()).unwrap();
//! println!("{} files, {} bytes", tree.stats.files, tree.stats.bytes);
//! ```
//!
//! Children are sorted by name (bytewise), and so are extended attributes,
//! so the same directory always gives the same tree and the generators
//! give the same bytes.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use log::warn;

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Follow symbolic links (FAT has no symlinks, so its generator asks
    /// for this): a link becomes what it points to; dangling links and
    /// links back into their own ancestors are skipped with a warning.
    pub follow_symlinks: bool,
    /// Read every entry's extended attributes into [`Node::xattrs`]
    /// (`user.*`, `trusted.*` — visible to root only —, `security.*`, and
    /// POSIX ACLs as `system.posix_acl_*` in the kernel's xattr format).
    /// Symlinks are not followed for this unless `follow_symlinks` is set.
    /// A host filesystem without xattr support gives none.
    pub xattrs: bool,
}

/// The largest extended attribute value or name list Linux has
/// (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX` in include/uapi/linux/limits.h).
pub const XATTR_MAX: usize = 65536;

/// One extended attribute of a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// The full name with its namespace prefix (`user.mime_type`,
    /// `security.capability`, `system.posix_acl_access`), as bytes.
    pub name: Vec<u8>,
    /// The value, as the kernel's xattr API gives it.
    pub value: Vec<u8>,
}

/// A scanned directory tree.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The top directory (its name is empty).
    pub root: Node,
    /// Counts over the whole tree.
    pub stats: TreeStats,
}

/// Counts over a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symbolic links kept as links.
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub specials: u64,
    /// Extended attributes read (see [`ScanOptions::xattrs`]).
    pub xattrs: u64,
    /// Bytes in regular files.
    pub bytes: u64,
}

/// One entry of a tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// The entry's name in its directory (empty for the root).
    pub name: OsString,
    /// Where it is on the host (through any followed links).
    pub path: PathBuf,
    /// The last component of `path` is a symbolic link the scan followed
    /// (`meta` is its target's): whoever opens `path` later must follow it
    /// too, and must check it still leads to the same inode.
    pub followed_link: bool,
    /// What `stat` said at scan time.
    pub meta: Meta,
    /// What it is.
    pub kind: NodeKind,
    /// Extended attributes, sorted by name (empty unless the scan asked
    /// for them).
    pub xattrs: Vec<Xattr>,
}

/// The kind of a [`Node`].
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A directory and its entries, sorted by name.
    Dir(Vec<Node>),
    /// A regular file of `meta.size` bytes.
    File,
    /// A symbolic link (only when links are not followed).
    Symlink {
        /// The link's target, as stored.
        target: PathBuf,
    },
    /// A device node, fifo or socket (only kept when links are not
    /// followed, i.e. for formats that can hold them).
    Special,
}

/// A point in time, as `stat` gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds, 0..1e9.
    pub nanos: u32,
}

/// The metadata a generator may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files and symlinks).
    pub size: u64,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last access.
    pub atime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Device of the inode (for hard-link and loop detection).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Hard-link count.
    pub nlink: u64,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Allocated 512-byte blocks (`st_blocks`): fewer than `size` needs
    /// means the file may be sparse.
    pub blocks: u64,
}

impl Meta {
    fn from_std(m: &Metadata) -> Meta {
        let ts = |secs: i64, nanos: i64| Timestamp {
            secs,
            nanos: nanos.clamp(0, 999_999_999) as u32,
        };
        Meta {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: ts(m.mtime(), m.mtime_nsec()),
            atime: ts(m.atime(), m.atime_nsec()),
            ctime: ts(m.ctime(), m.ctime_nsec()),
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            rdev: m.rdev(),
            blocks: m.blocks(),
        }
    }
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The top path is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// A file the image must hold cannot be read by us.
    #[error("{0}: permission denied (the image could not serve this file)")]
    Unreadable(PathBuf),
    /// An extended attribute value (or the list of names) is larger than
    /// Linux allows; the host filesystem is not one the kernel's xattr
    /// API can read completely.
    #[error("{path}: extended attribute {name} is larger than 64 KiB")]
    XattrTooBig {
        /// The entry.
        path: PathBuf,
        /// The attribute, or "list" for the list of names.
        name: String,
    },
    /// Reading an extended attribute failed.
    #[error("{path}: reading extended attribute {name}: {source}")]
    Xattr {
        /// The entry.
        path: PathBuf,
        /// The attribute, or "list" for the list of names.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `stat`, `readdir` or similar failed.
    #[error("{path}: {source}")]
    Io {
        /// What we were looking at.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Scan the directory `root`.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Tree, ScanError> {
    let meta = fs::metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory(root.to_path_buf()));
    }
    let mut stats = TreeStats {
        dirs: 1,
        ..TreeStats::default()
    };
    let mut ancestors = HashSet::new();
    ancestors.insert((meta.dev(), meta.ino()));
    let children = scan_dir(root, opts, &mut ancestors, &mut stats)?;
    let xattrs = if opts.xattrs {
        read_xattrs(root, true, &mut Vec::new())?
    } else {
        Vec::new()
    };
    stats.xattrs += xattrs.len() as u64;
    Ok(Tree {
        root: Node {
            name: OsString::new(),
            path: root.to_path_buf(),
            followed_link: false,
            meta: Meta::from_std(&meta),
            kind: NodeKind::Dir(children),
            xattrs,
        },
        stats,
    })
}

/// How many directory levels may still fan out to threads. Scanning is
/// `statx`-bound kernel work, so spreading subdirectories over the cores
/// roughly divides the time; one level of fan-out (found where a directory
/// first has several subdirectories) is enough for that.
const FAN_OUT_LEVELS: u32 = 1;

fn scan_dir(
    dir: &Path,
    opts: &ScanOptions,
    ancestors: &mut HashSet<(u64, u64)>,
    stats: &mut TreeStats,
) -> Result<Vec<Node>, ScanError> {
    scan_dir_fan(dir, opts, ancestors, stats, 0)
}

fn scan_dir_fan(
    dir: &Path,
    opts: &ScanOptions,
    ancestors: &mut HashSet<(u64, u64)>,
    stats: &mut TreeStats,
    fan_out: u32,
) -> Result<Vec<Node>, ScanError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        // `DirEntry::metadata` is an `fstatat` relative to the open
        // directory: no path walk per entry, which is most of the cost of
        // scanning 100,000 files.
        let lmeta = entry.metadata().map_err(io_err(&entry.path()))?;
        entries.push((entry.file_name(), entry.path(), lmeta));
    }
    entries.sort_unstable_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    let mut nodes = Vec::with_capacity(entries.len());
    // One buffer for every xattr call in this directory (see `read_xattrs`).
    let mut xattr_buf = Vec::new();
    // Subdirectories are filled in after this loop: (index in `nodes`, key).
    let mut subdirs: Vec<(usize, (u64, u64))> = Vec::new();
    for (name, path, lmeta) in entries {
        let is_link = lmeta.file_type().is_symlink();
        let meta = if is_link && opts.follow_symlinks {
            match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    let why = if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                        "a symlink loop"
                    } else {
                        "a dangling symlink"
                    };
                    warn!("{}: skipped, {why} ({e})", path.display());
                    continue;
                }
            }
        } else {
            lmeta
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            let key = (meta.dev(), meta.ino());
            if ancestors.contains(&key) {
                warn!(
                    "{}: skipped, a symlink to one of its own parent directories (a loop)",
                    path.display()
                );
                continue;
            }
            stats.dirs += 1;
            subdirs.push((nodes.len(), key));
            NodeKind::Dir(Vec::new())
        } else if ft.is_file() {
            // Root reads everything; anyone else asks the kernel, which
            // also knows about ACLs.
            if !is_root() && rustix::fs::access(&path, rustix::fs::Access::READ_OK).is_err() {
                return Err(ScanError::Unreadable(path));
            }
            stats.files += 1;
            stats.bytes += meta.size();
            NodeKind::File
        } else if ft.is_symlink() {
            stats.symlinks += 1;
            NodeKind::Symlink {
                target: fs::read_link(&path).map_err(io_err(&path))?,
            }
        } else if opts.follow_symlinks {
            // Only the FAT-style scan follows links, and those formats
            // cannot hold device nodes, fifos or sockets either.
            let what = if ft.is_fifo() {
                "a fifo"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a device node"
            };
            warn!(
                "{}: skipped, {what} cannot be stored in this format",
                path.display()
            );
            continue;
        } else {
            stats.specials += 1;
            NodeKind::Special
        };
        let xattrs = if opts.xattrs {
            // A followed link stands for its target, and so do its xattrs.
            read_xattrs(&path, is_link && opts.follow_symlinks, &mut xattr_buf)?
        } else {
            Vec::new()
        };
        stats.xattrs += xattrs.len() as u64;
        nodes.push(Node {
            name,
            path,
            followed_link: is_link && opts.follow_symlinks,
            meta: Meta::from_std(&meta),
            kind,
            xattrs,
        });
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if fan_out < FAN_OUT_LEVELS && subdirs.len() >= 2 && threads > 1 {
        fill_parallel(&mut nodes, &subdirs, opts, ancestors, stats, threads)?;
    } else {
        for &(i, key) in &subdirs {
            ancestors.insert(key);
            // A lone subdirectory does not use up the fan-out: the tree's
            // breadth may be one level further down (./rootfs/usr/...).
            let next = if subdirs.len() == 1 {
                fan_out
            } else {
                FAN_OUT_LEVELS
            };
            let children = scan_dir_fan(&nodes[i].path, opts, ancestors, stats, next);
            ancestors.remove(&key);
            nodes[i].kind = NodeKind::Dir(children?);
        }
    }
    Ok(nodes)
}

/// Scan the subdirectories `subdirs` of `nodes` on up to `threads`
/// threads; results and the first error (in name order) are as if scanned
/// one after the other.
fn fill_parallel(
    nodes: &mut [Node],
    subdirs: &[(usize, (u64, u64))],
    opts: &ScanOptions,
    ancestors: &HashSet<(u64, u64)>,
    stats: &mut TreeStats,
    threads: usize,
) -> Result<(), ScanError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    type Scanned = (usize, Result<Vec<Node>, ScanError>, TreeStats);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Scanned>> = Mutex::new(Vec::with_capacity(subdirs.len()));
    let paths: Vec<&Path> = subdirs
        .iter()
        .map(|&(i, _)| nodes[i].path.as_path())
        .collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(subdirs.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(_, key)) = subdirs.get(k) else {
                    break;
                };
                let mut anc = ancestors.clone();
                anc.insert(key);
                let mut st = TreeStats::default();
                let r = scan_dir_fan(paths[k], opts, &mut anc, &mut st, FAN_OUT_LEVELS);
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((k, r, st));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_unstable_by_key(|r| r.0);
    for (k, r, st) in results {
        nodes[subdirs[k].0].kind = NodeKind::Dir(r?);
        stats.files += st.files;
        stats.dirs += st.dirs;
        stats.symlinks += st.symlinks;
        stats.specials += st.specials;
        stats.xattrs += st.xattrs;
        stats.bytes += st.bytes;
    }
    Ok(())
}

/// The extended attributes of `path` (of what it points to if `follow`),
/// sorted by name. `buf` is scratch space shared by the calls for one
/// directory: it starts at 4 KiB (most entries have no or few attributes:
/// one `llistxattr` answers) and grows to [`XATTR_MAX`] when a list or a
/// value is longer, past which nothing can be (`ERANGE` there is an error).
/// An attribute removed between the list and the read is left out, as if
/// listed a moment later; a filesystem without xattr support has none.
fn read_xattrs(path: &Path, follow: bool, buf: &mut Vec<u8>) -> Result<Vec<Xattr>, ScanError> {
    use rustix::io::Errno;
    if buf.is_empty() {
        buf.resize(4096, 0);
    }
    // Run `call` on `buf`, growing it once to the largest size on ERANGE.
    let with_buf =
        |buf: &mut Vec<u8>, call: &dyn Fn(&mut [u8]) -> rustix::io::Result<usize>| match call(
            &mut buf[..],
        ) {
            Err(Errno::RANGE) if buf.len() < XATTR_MAX => {
                buf.resize(XATTR_MAX, 0);
                call(&mut buf[..])
            }
            r => r,
        };
    let err = |name: &[u8], e: Errno| {
        let name = String::from_utf8_lossy(name).into_owned();
        if e == Errno::RANGE || e == Errno::TOOBIG {
            ScanError::XattrTooBig {
                path: path.to_path_buf(),
                name,
            }
        } else {
            ScanError::Xattr {
                path: path.to_path_buf(),
                name,
                source: e.into(),
            }
        }
    };
    let listed = with_buf(buf, &|b| {
        if follow {
            rustix::fs::listxattr(path, b)
        } else {
            rustix::fs::llistxattr(path, b)
        }
    });
    let len = match listed {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err(b"list", e)),
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<Vec<u8>> = buf[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let cname = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name);
        let got = with_buf(buf, &|b| {
            if follow {
                rustix::fs::getxattr(path, cname, b)
            } else {
                rustix::fs::lgetxattr(path, cname, b)
            }
        });
        match got {
            Ok(n) => out.push(Xattr {
                value: buf[..n].to_vec(),
                name,
            }),
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(err(&name, e)),
        }
    }
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
}

impl Tree {
    /// Lay `other` over this tree at `at` (a path inside it, `/` for the top): entries of `other`
    /// replace entries of the same name, except that a directory over a directory merges into
    /// it. Directories on the way to `at` that do not exist are made, with `other`'s top
    /// directory's metadata. What a disk spec's `source = ["./rootfs", "./overlay:/etc"]` does.
    pub fn merge(&mut self, other: Tree, at: &Path) -> Result<(), MergeError> {
        let mut node = &mut self.root;
        for comp in at.components() {
            let name = match comp {
                std::path::Component::RootDir | std::path::Component::CurDir => continue,
                std::path::Component::Normal(n) => n.to_os_string(),
                _ => return Err(MergeError::BadPath(at.to_path_buf())),
            };
            let NodeKind::Dir(children) = &mut node.kind else {
                return Err(MergeError::NotADirectory(at.to_path_buf()));
            };
            let i = match children
                .binary_search_by(|c| c.name.as_encoded_bytes().cmp(name.as_encoded_bytes()))
            {
                Ok(i) => i,
                Err(i) => {
                    children.insert(
                        i,
                        Node {
                            name: name.clone(),
                            path: other.root.path.clone(),
                            followed_link: false,
                            meta: other.root.meta,
                            kind: NodeKind::Dir(Vec::new()),
                            xattrs: Vec::new(),
                        },
                    );
                    i
                }
            };
            node = &mut children[i];
            if !node.is_dir() {
                return Err(MergeError::NotADirectory(at.to_path_buf()));
            }
        }
        let NodeKind::Dir(theirs) = other.root.kind else {
            unreachable!("a scanned tree's top is a directory");
        };
        merge_children(node, theirs);
        self.stats = count(&self.root);
        Ok(())
    }
}

fn merge_children(into: &mut Node, theirs: Vec<Node>) {
    let NodeKind::Dir(ours) = &mut into.kind else {
        return;
    };
    for t in theirs {
        match ours.binary_search_by(|c| c.name.as_encoded_bytes().cmp(t.name.as_encoded_bytes())) {
            Ok(i) if ours[i].is_dir() && t.is_dir() => {
                let NodeKind::Dir(grand) = t.kind else {
                    unreachable!()
                };
                merge_children(&mut ours[i], grand);
            }
            Ok(i) => ours[i] = t,
            Err(i) => ours.insert(i, t),
        }
    }
}

fn count(n: &Node) -> TreeStats {
    let mut st = TreeStats::default();
    fn walk(n: &Node, st: &mut TreeStats) {
        st.xattrs += n.xattrs.len() as u64;
        match &n.kind {
            NodeKind::Dir(c) => {
                st.dirs += 1;
                c.iter().for_each(|c| walk(c, st));
            }
            NodeKind::File => {
                st.files += 1;
                st.bytes += n.meta.size;
            }
            NodeKind::Symlink { .. } => st.symlinks += 1,
            NodeKind::Special => st.specials += 1,
        }
    }
    walk(n, &mut st);
    st
}

/// Why a tree cannot be laid over another.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The place is not a plain path inside the tree.
    #[error("{0}: not a path inside the tree (no `..`)")]
    BadPath(PathBuf),
    /// Something on the way is not a directory.
    #[error("{0}: not a directory in the tree below")]
    NotADirectory(PathBuf),
}

impl Node {
    /// The entries of a directory (empty for anything else).
    pub fn children(&self) -> &[Node] {
        match &self.kind {
            NodeKind::Dir(c) => c,
            _ => &[],
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn names(n: &Node) -> Vec<String> {
        n.children()
            .iter()
            .map(|c| c.name.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn merge_lays_a_tree_over_another_at_a_path() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("etc/ssh")).unwrap();
        std::fs::write(a.path().join("etc/hostname"), b"base").unwrap();
        std::fs::write(a.path().join("etc/ssh/keep"), b"k").unwrap();
        std::fs::write(a.path().join("top"), b"t").unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(b.path().join("ssh")).unwrap();
        std::fs::write(b.path().join("hostname"), b"over").unwrap();
        std::fs::write(b.path().join("ssh/new"), b"n").unwrap();
        let mut t = scan(a.path(), &ScanOptions::default()).unwrap();
        let o = scan(b.path(), &ScanOptions::default()).unwrap();
        t.merge(o.clone(), Path::new("/etc")).unwrap();
        let etc = &t.root.children()[0];
        assert_eq!(names(etc), ["hostname", "ssh"]);
        assert_eq!(etc.children()[0].path, b.path().join("hostname"));
        assert_eq!(names(&etc.children()[1]), ["keep", "new"]);
        assert_eq!(t.stats.files, 4);
        // A path that does not exist yet is made.
        t.merge(o, Path::new("opt/extra")).unwrap();
        assert_eq!(names(&t.root), ["etc", "opt", "top"]);
        assert_eq!(t.stats.files, 6);
        let again = scan(b.path(), &ScanOptions::default()).unwrap();
        assert!(t.merge(again, Path::new("top/x")).is_err());
    }

    #[test]
    fn scan_sorts_entries_and_counts() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("b"), b"12345").unwrap();
        fs::write(d.path().join("a"), b"").unwrap();
        fs::create_dir(d.path().join("c")).unwrap();
        fs::write(d.path().join("c/x"), b"xyz").unwrap();
        let t = scan(d.path(), &ScanOptions::default()).unwrap();
        assert_eq!(names(&t.root), ["a", "b", "c"]);
        assert_eq!(names(&t.root.children()[2]), ["x"]);
        assert_eq!(
            t.stats,
            TreeStats {
                files: 3,
                dirs: 2,
                bytes: 8,
                ..TreeStats::default()
            }
        );
    }

    #[test]
    fn scan_follows_links_and_skips_loops_and_dangling_links() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), b"data").unwrap();
        symlink("sub/f", d.path().join("link-to-file")).unwrap();
        symlink("..", d.path().join("sub/up")).unwrap();
        symlink("nowhere", d.path().join("dangling")).unwrap();
        symlink("self", d.path().join("self")).unwrap();
        let opts = ScanOptions {
            follow_symlinks: true,
            ..ScanOptions::default()
        };
        let t = scan(d.path(), &opts).unwrap();
        assert_eq!(names(&t.root), ["link-to-file", "sub"]);
        assert!(matches!(t.root.children()[0].kind, NodeKind::File));
        assert_eq!(t.root.children()[0].meta.size, 4);
        assert_eq!(names(&t.root.children()[1]), ["f"]);
    }

    #[test]
    fn scan_keeps_links_when_not_following() {
        let d = tempfile::tempdir().unwrap();
        symlink("nowhere", d.path().join("dangling")).unwrap();
        let t = scan(d.path(), &ScanOptions::default()).unwrap();
        match &t.root.children()[0].kind {
            NodeKind::Symlink { target } => assert_eq!(target, Path::new("nowhere")),
            k => panic!("expected a symlink, got {k:?}"),
        }
    }

    #[test]
    fn scan_of_a_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"").unwrap();
        let e = scan(&f, &ScanOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn xattrs_are_read_sorted_only_when_asked_and_not_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        symlink("f", d.path().join("link")).unwrap();
        // Set in an order that is not the sorted one.
        for (name, value) in [("user.b", &b"2"[..]), ("user.a", b"1\0bin")] {
            if let Err(e) = rustix::fs::setxattr(&f, name, value, rustix::fs::XattrFlags::empty()) {
                eprintln!("SKIPPED: the temp filesystem has no user xattrs ({e})");
                return;
            }
        }
        rustix::fs::setxattr(d.path(), "user.top", b"t", rustix::fs::XattrFlags::empty()).unwrap();
        let plain = scan(d.path(), &ScanOptions::default()).unwrap();
        assert!(plain.root.children().iter().all(|c| c.xattrs.is_empty()));
        assert_eq!(plain.stats.xattrs, 0);
        let opts = ScanOptions {
            xattrs: true,
            ..ScanOptions::default()
        };
        let t = scan(d.path(), &opts).unwrap();
        let got: Vec<(&[u8], &[u8])> = t.root.children()[0]
            .xattrs
            .iter()
            .map(|x| (&x.name[..], &x.value[..]))
            .collect();
        assert_eq!(got, [(&b"user.a"[..], &b"1\0bin"[..]), (b"user.b", b"2")]);
        // The link itself has none (user.* cannot be set on a symlink);
        // its target's are not its own.
        assert_eq!(t.root.children()[1].name, "link");
        assert!(t.root.children()[1].xattrs.is_empty());
        assert_eq!(t.root.xattrs[0].name, b"user.top");
        assert_eq!(t.stats.xattrs, 3);
    }

    #[test]
    fn xattr_values_and_lists_longer_than_4_kib_are_read_whole() {
        // tmpfs holds user xattrs of any size up to the kernel's limit;
        // ext4 without ea_inode would not.
        let Ok(d) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("SKIPPED: no /dev/shm");
            return;
        };
        let f = d.path().join("f");
        fs::write(&f, b"").unwrap();
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let flags = rustix::fs::XattrFlags::empty();
        if let Err(e) = rustix::fs::setxattr(&f, "user.big", &big, flags) {
            eprintln!("SKIPPED: /dev/shm has no user xattrs ({e})");
            return;
        }
        // A list of names longer than the first 4 KiB buffer.
        let names: Vec<String> = (0..100)
            .map(|i| format!("user.{i:03}{}", "n".repeat(40)))
            .collect();
        for n in &names {
            rustix::fs::setxattr(&f, n.as_str(), b"v", flags).unwrap();
        }
        let opts = ScanOptions {
            xattrs: true,
            ..ScanOptions::default()
        };
        let t = scan(d.path(), &opts).unwrap();
        let x = &t.root.children()[0].xattrs;
        assert_eq!(x.len(), 101);
        assert_eq!(x[0].name, names[0].as_bytes(), "sorted");
        assert_eq!(x[100].name, b"user.big");
        assert_eq!(x[100].value, big);
    }
}
