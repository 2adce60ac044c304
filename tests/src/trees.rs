//! Host directory trees for the `floppy` tests: building them (files, empty dirs, mtimes, awkward
//! names, wide and deep directories) and snapshotting/comparing them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::data::random_bytes;

/// Writes `data` to `root/rel`, creating parent directories.
pub fn write_file(root: &Path, rel: &str, data: &[u8]) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    fs::write(&path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Creates the directory `root/rel` (and its parents).
pub fn make_dir(root: &Path, rel: &str) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    path
}

/// Sets the access and modification time of `path` (not following symlinks) to `secs` seconds
/// since the Unix epoch (UTC); negative and far-future values are allowed.
pub fn set_mtime(path: &Path, secs: i64) {
    use rustix::fs::{utimensat, AtFlags, Timestamps, CWD};
    let ts = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// The mtime of `path` (following symlinks) in whole seconds since the epoch.
pub fn mtime_of(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mtime()
}

/// Sets every entry below `root` (directories included, `root` excluded) to `secs`, deepest first
/// so that setting a child does not disturb its parent afterwards.
pub fn set_all_mtimes(root: &Path, secs: i64) {
    let mut paths: Vec<PathBuf> = snapshot_paths(root);
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in paths {
        set_mtime(&root.join(p), secs);
    }
}

fn snapshot_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let entry = entry.expect("directory entry");
            let child = rel.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out
}

/// One node of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file and its contents.
    File(Vec<u8>),
    /// A symlink (only in snapshots that do not follow links) and its target.
    Symlink(PathBuf),
    /// Anything else (fifo, socket, device).
    Other,
}

/// Every entry below `root` (relative path, `/`-separated, lossy UTF-8 → node). With `follow`
/// symlinks are followed (a dangling or looping link becomes [`Node::Other`]), without they are
/// recorded as [`Node::Symlink`].
pub fn snapshot(root: &Path, follow: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let entry = entry.expect("directory entry");
            let child = rel.join(entry.file_name());
            let path = root.join(&child);
            let meta = if follow {
                fs::metadata(&path).or_else(|_| fs::symlink_metadata(&path))
            } else {
                fs::symlink_metadata(&path)
            }
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            let ft = meta.file_type();
            let node = if ft.is_dir() {
                // Bounded depth: a followed symlink loop must not recurse forever.
                if depth < 64 {
                    stack.push((child.clone(), depth + 1));
                }
                Node::Dir
            } else if ft.is_file() {
                Node::File(
                    fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
                )
            } else if ft.is_symlink() {
                Node::Symlink(fs::read_link(&path).expect("readlink"))
            } else {
                Node::Other
            };
            out.insert(child.to_string_lossy().into_owned(), node);
        }
    }
    out
}

/// Human-readable differences between two snapshots (empty when equal); at most `max` lines.
pub fn diff_snapshots(
    expected: &BTreeMap<String, Node>,
    got: &BTreeMap<String, Node>,
    max: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, node) in expected {
        match got.get(path) {
            None => out.push(format!("missing: {path:?} ({})", describe(node))),
            Some(g) if g != node => out.push(format!(
                "differs: {path:?}: expected {}, got {}",
                describe(node),
                describe(g)
            )),
            Some(_) => {}
        }
    }
    for (path, node) in got {
        if !expected.contains_key(path) {
            out.push(format!("unexpected: {path:?} ({})", describe(node)));
        }
    }
    let n = out.len();
    if n > max {
        out.truncate(max);
        out.push(format!("... and {} more", n - max));
    }
    out
}

fn describe(node: &Node) -> String {
    match node {
        Node::Dir => "directory".into(),
        Node::File(d) => format!("file of {} bytes", d.len()),
        Node::Symlink(t) => format!("symlink -> {}", t.display()),
        Node::Other => "special file".into(),
    }
}

/// Total size of the regular files in a snapshot.
pub fn snapshot_bytes(snap: &BTreeMap<String, Node>) -> u64 {
    snap.values()
        .map(|n| match n {
            Node::File(d) => d.len() as u64,
            _ => 0,
        })
        .sum()
}

/// Sizes that straddle sector (512), 2K, 4K and 64K boundaries, plus a few odd ones.
pub const AWKWARD_SIZES: &[usize] = &[
    0, 1, 511, 512, 513, 2047, 2048, 2049, 4095, 4096, 4097, 32767, 32768, 32769, 65536, 65537,
    1_048_579,
];

/// Names FAT can store as VFAT long names (and Linux as file names), most of them not a plain
/// upper case 8.3 name: long, unicode (BMP only: mtools cannot show the rest), 8.3-illegal but
/// LFN-legal characters, dots, lower and mixed case.
pub const AWKWARD_NAMES: &[&str] = &[
    "README.TXT",
    "lower.txt",
    "MiXeD.TxT",
    "UPPER_NO_EXT",
    "no_extension",
    "archive.tar.gz",
    "photo.jpeg",
    ".hidden",
    ".hidden-empty",
    "dots...in...name",
    "a+b=c;d,e[f].txt",
    "with space.txt",
    "#hash & percent% (paren) 'quote' {brace} ~tilde@at!^.txt",
    "A very long file name with spaces, commas and more than sixty-four characters in total.txt",
    "Ünïcödé naïve café.txt",
    "日本語のファイル名.txt",
    "Ελληνικά κείμενα",
    "Кириллица.doc",
    "ß.txt",
    "日本",
    "é",
];

/// A long name (LFN maximum is 255 UTF-16 units) of `len` ASCII characters ending in `.bin`.
pub fn long_name(len: usize) -> String {
    let mut s: String = (0..len - 4)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    s.push_str(".bin");
    s
}

/// Builds the "awkward" tree under `root`: every name in [`AWKWARD_NAMES`] (with distinct random
/// contents, some empty) at the top and in a subdirectory, files of [`AWKWARD_SIZES`], a 240
/// character name, twelve names sharing one 8.3 alias prefix, names that differ only in case in
/// different directories, empty files and empty (nested) directories. Returns the total size of
/// the file data.
pub fn build_awkward_tree(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut put = |rel: &str, data: Vec<u8>| {
        total += data.len() as u64;
        write_file(root, rel, &data);
    };
    for (i, name) in AWKWARD_NAMES.iter().enumerate() {
        let len = if name.contains("empty") {
            0
        } else {
            100 + i * 37
        };
        put(name, random_bytes(1000 + i as u64, len));
        put(
            &format!("Sub Dir/{name}"),
            random_bytes(2000 + i as u64, len * 3),
        );
    }
    for (i, &size) in AWKWARD_SIZES.iter().enumerate() {
        put(
            &format!("sizes/size-{size}.dat"),
            random_bytes(3000 + i as u64, size),
        );
    }
    put(&long_name(240), random_bytes(4000, 333));
    for i in 1..=12 {
        put(
            &format!("aliases/longfilename-{i:02}.txt"),
            format!("alias {i}\n").into_bytes(),
        );
    }
    // Same names, different case, in different directories: fine on FAT.
    put("case1/Makefile", b"upper M\n".to_vec());
    put("case2/makefile", b"lower m\n".to_vec());
    put("case1/docs/Index.html", b"<p>1</p>\n".to_vec());
    put("case2/DOCS/index.HTML", b"<p>2</p>\n".to_vec());
    put("empty.txt", Vec::new());
    put("case1/empty", Vec::new());
    make_dir(root, "emptydir");
    make_dir(root, "nested/empty/inner");
    make_dir(root, "Empty Long Directory Name");
    total
}

/// `count` files of `bytes_each` random bytes (seeded by index) in `root/rel`, named
/// `entry-NNNNN-with-a-longer-name.dat` (each needs a long name).
pub fn build_wide_dir(root: &Path, rel: &str, count: usize, bytes_each: usize) {
    let dir = make_dir(root, rel);
    for i in 0..count {
        fs::write(
            dir.join(format!("entry-{i:05}-with-a-longer-name.dat")),
            random_bytes(10_000 + i as u64, bytes_each),
        )
        .expect("writing a wide-dir entry");
    }
}

/// `levels` nested directories `root/level-01/level-02/...`, with a small file in every level and
/// `leaf.txt` at the bottom. Returns the relative path of the deepest directory.
pub fn build_deep_dirs(root: &Path, levels: usize) -> String {
    let mut rel = String::new();
    for i in 1..=levels {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&format!("level-{i:02}"));
        write_file(
            root,
            &format!("{rel}/f{i}.txt"),
            format!("depth {i}\n").as_bytes(),
        );
    }
    write_file(root, &format!("{rel}/leaf.txt"), b"bottom\n");
    rel
}

/// Whether the tests run as root (needed to create device nodes and keep other owners).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `chmod MODE PATH`, panicking with the path on failure.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `mknod PATH` of `kind` with `mode` and device `major:minor` (root only for devices).
pub fn mknod(path: &Path, kind: rustix::fs::FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_diff_see_contents_and_kinds() {
        let dir = crate::tempdir();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for r in [&a, &b] {
            write_file(r, "x/y.txt", b"same");
            make_dir(r, "empty");
        }
        write_file(&b, "x/y.txt", b"diff");
        write_file(&b, "extra", b"");
        let d = diff_snapshots(&snapshot(&a, false), &snapshot(&b, false), 10);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("x/y.txt") && d[1].contains("extra"), "{d:?}");
    }

    #[test]
    fn set_mtime_sets_seconds_before_1980_and_after_2107() {
        let dir = crate::tempdir();
        let f = write_file(dir.path(), "f", b"");
        for t in [0i64, 315_532_800, 5_000_000_000] {
            set_mtime(&f, t);
            assert_eq!(mtime_of(&f), t);
        }
    }

    #[test]
    fn long_name_has_the_requested_length() {
        assert_eq!(long_name(240).len(), 240);
        assert!(long_name(240).ends_with(".bin"));
    }
}
