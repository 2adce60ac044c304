//! `disksynth ext4 DIR`: an ext4 filesystem synthesized from a host directory.
//!
//! Every image is checked by e2fsprogs, independently of the generator: `e2fsck -fn` must be
//! clean, `debugfs rdump` must extract the tree byte for byte (`diff -r --no-dereference`, which
//! compares symlink targets too), and `debugfs stat` of every inode must show the host's type,
//! mode, owner, link count, size and nanosecond mtime (atime is stored as the mtime, so it is
//! not compared). debugfs does not dump fifos, sockets or devices and adds `lost+found`: those
//! are checked with `debugfs stat` alone. Served images are compared with `-o` output
//! (`qemu-img compare`) and driven with qemu-io, nbdcopy and nbdinfo. Extended attributes and
//! ACLs are checked with `debugfs ea_list` and, through a loop mount (as root), with `getfattr`,
//! `getfacl` and `getcap` against the host; names that are not UTF-8 through both as well.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use disksynth_tests::ext4_util::{
    debugfs, debugfs_stat, debugfs_stat_many, dumpe2fs_header, e2fsck_clean, rdump, read_image,
    set_mtime_ns, walk_meta, InodeStat, BLOCK,
};
use disksynth_tests::generator::{
    assert_reproducible, build_image, build_image_fails, cmp_files, generator_cmd, output_with,
    qemu_img_identical, FUTURE_MTIME, LATEST_VOLUME_TIME,
};
use disksynth_tests::trees::{
    build_awkward_tree, build_deep_dirs, build_wide_dir, chmod, diff_snapshots, is_root, long_name,
    make_dir, mknod, snapshot, write_file,
};
use disksynth_tests::{
    nbdcopy_to, nbdinfo_map, nbdinfo_size, qemu_io, qemu_io_readonly, random_bytes, require_tool,
    run, run_ok, tempdir, write_sparse_file, Output, Server, CMD_TIMEOUT, MIB,
};

const GIB: u64 = 1 << 30;

// ------------------------------------------------------------------------------------------------
// Running disksynth ext4

/// `disksynth ext4 TREE ARGS...` with `SOURCE_DATE_EPOCH` removed from the environment.
fn ext4_cmd(tree: &Path, args: &[&str]) -> Command {
    generator_cmd("ext4", tree, args)
}

/// `disksynth ext4 TREE ARGS... -o IMG`, which must succeed.
fn build(tree: &Path, img: &Path, args: &[&str]) -> Output {
    build_image("ext4", tree, img, args)
}

/// `disksynth ext4 TREE ARGS... -o IMG`, which must fail cleanly, leaving no IMG.
fn build_fails(tree: &Path, img: &Path, args: &[&str]) -> Output {
    build_image_fails("ext4", tree, img, args)
}

fn tree_in(dir: &Path, build_tree: impl FnOnce(&Path)) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    build_tree(&tree);
    tree
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

// ------------------------------------------------------------------------------------------------
// Host metadata helpers

/// The `debugfs stat` type name of a host file type.
fn kind_name(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character special"
    } else {
        "block special"
    }
}

/// Image path of a tree-relative path.
fn image_path(rel: &str) -> String {
    format!("/{rel}")
}

/// Compares `debugfs stat` of every host entry in `host` (tree-relative path → lstat) that
/// `select` accepts with the host: type, mode, owner (`owner` overrides the host's), size,
/// link count (names in the tree; directories 2 + subdirectories, the root one more for
/// lost+found), nanosecond mtime, fast-symlink targets, device numbers, and that hard links
/// share one inode. Returns the stats by path.
fn check_inodes(
    img: &Path,
    tree: &Path,
    host: &BTreeMap<String, fs::Metadata>,
    owner: Option<(u32, u32)>,
    select: impl Fn(&str) -> bool,
) -> BTreeMap<String, InodeStat> {
    // Names per host inode, counted over the whole tree.
    let mut names: HashMap<(u64, u64), Vec<&str>> = HashMap::new();
    let mut subdirs: HashMap<&str, u64> = HashMap::new();
    for (rel, m) in host {
        if !m.is_dir() {
            names.entry((m.dev(), m.ino())).or_default().push(rel);
        } else if !rel.is_empty() {
            let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
            *subdirs.entry(parent).or_default() += 1;
        }
    }
    let paths: Vec<&String> = host.keys().filter(|p| select(p)).collect();
    let image_paths: Vec<String> = paths.iter().map(|p| image_path(p)).collect();
    let stats = debugfs_stat_many(img, &image_paths);
    let mut problems = Vec::new();
    let mut by_path = BTreeMap::new();
    for (rel, stat) in paths.iter().zip(stats) {
        let m = &host[rel.as_str()];
        let stat = match stat {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{rel:?}: not in the image ({e})"));
                continue;
            }
        };
        let mut bad = |what: &str, want: String, got: String| {
            if want != got {
                problems.push(format!("{rel:?}: {what}: host {want}, image {got}"));
            }
        };
        bad("type", kind_name(m).into(), stat.kind.clone());
        bad(
            "mode",
            format!("{:o}", m.mode() & 0o7777),
            format!("{:o}", stat.mode),
        );
        let (uid, gid) = owner.unwrap_or((m.uid(), m.gid()));
        bad("uid", uid.to_string(), stat.uid.to_string());
        bad("gid", gid.to_string(), stat.gid.to_string());
        bad(
            "mtime",
            format!("{}.{:09}", m.mtime(), m.mtime_nsec()),
            format!("{}.{:09}", stat.mtime.0, stat.mtime.1),
        );
        let links = if m.is_dir() {
            2 + subdirs.get(rel.as_str()).copied().unwrap_or(0) + u64::from(rel.is_empty())
        } else {
            names[&(m.dev(), m.ino())].len() as u64
        };
        bad("links", links.to_string(), stat.links.to_string());
        if m.is_file() || m.file_type().is_symlink() {
            bad("size", m.len().to_string(), stat.size.to_string());
        }
        if m.file_type().is_symlink() {
            let target = fs::read_link(tree.join(rel)).unwrap();
            let target = target.as_os_str().as_bytes();
            // ext4 keeps targets shorter than 60 bytes in the inode ("fast" symlinks).
            if target.len() < 60 {
                bad(
                    "fast symlink target",
                    format!("{:?}", Some(String::from_utf8_lossy(target))),
                    format!("{:?}", stat.fast_link),
                );
            } else {
                bad(
                    "slow symlink",
                    "a target in a data block".into(),
                    if stat.fast_link.is_none() && stat.blockcount > 0 {
                        "a target in a data block".into()
                    } else {
                        format!("{:?}, blockcount {}", stat.fast_link, stat.blockcount)
                    },
                );
            }
        }
        {
            use std::os::unix::fs::FileTypeExt;
            let ft = m.file_type();
            if ft.is_char_device() || ft.is_block_device() {
                let rdev = m.rdev();
                let want = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
                bad(
                    "device",
                    format!("{want:?}"),
                    format!("{:?}", stat.device.unwrap_or((u32::MAX, u32::MAX))),
                );
            }
        }
        by_path.insert(rel.to_string(), stat);
    }
    // Hard links: one inode per host inode; distinct host inodes get distinct inodes.
    let mut inode_of: HashMap<(u64, u64), (u64, &str)> = HashMap::new();
    let mut owner_of: HashMap<u64, (u64, u64)> = HashMap::new();
    for (rel, stat) in &by_path {
        let m = &host[rel.as_str()];
        let key = (m.dev(), m.ino());
        match inode_of.get(&key) {
            Some(&(ino, first)) if ino != stat.inode => problems.push(format!(
                "{rel:?} and {first:?} are hard links on the host but inodes {} and {ino} in the image",
                stat.inode
            )),
            Some(_) => {}
            None => {
                inode_of.insert(key, (stat.inode, rel));
            }
        }
        if let Some(other) = owner_of.insert(stat.inode, key) {
            if other != key {
                problems.push(format!(
                    "{rel:?} shares inode {} with a different host file",
                    stat.inode
                ));
            }
        }
    }
    let n = problems.len();
    problems.truncate(40);
    assert!(
        n == 0,
        "{n} inode mismatches in {}:\n{}",
        img.display(),
        problems.join("\n")
    );
    by_path
}

/// `debugfs rdump` of every top-level entry except those in `skip`, then `diff -r
/// --no-dereference` against the host tree (bytes of every file, every symlink target, every
/// name), ignoring the `skip` names.
fn rdump_and_diff(img: &Path, tree: &Path, work: &Path, skip: &[&str]) {
    let out = work.join("rdump");
    let mut sources: Vec<String> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !skip.contains(&n.as_str()))
        .map(|n| image_path(&n))
        .collect();
    sources.sort();
    rdump(img, &sources, &out);
    let mut diff = Command::new("diff");
    diff.args(["-r", "--no-dereference"]);
    for s in skip {
        diff.arg("-x").arg(s);
    }
    let res = run(diff.arg(tree).arg(&out), CMD_TIMEOUT);
    assert!(
        res.status.success(),
        "the rdump extraction differs from the host tree\n{}",
        res.describe()
    );
}

/// Checks that `extents` cover every byte of `data` (host ranges) and that the mapped blocks
/// hold the host file's bytes; returns the number of mapped bytes.
fn check_sparse_file(img: &Path, host_file: &Path, stat: &InodeStat, data: &[(u64, u64)]) -> u64 {
    let size = fs::metadata(host_file).unwrap().len();
    assert_eq!(stat.size, size, "{}: size", host_file.display());
    let host = File::open(host_file).unwrap();
    let mut mapped = 0;
    for e in &stat.extents {
        let start = e.logical * BLOCK;
        assert!(
            start < size,
            "extent {e:?} beyond the end of a {size}-byte file"
        );
        let len = (e.len * BLOCK).min(size - start);
        let mut want = vec![0u8; len as usize];
        host.read_exact_at(&mut want, start).unwrap();
        let got = read_image(img, e.physical * BLOCK, len as usize);
        assert!(
            want == got,
            "{}: extent {e:?} does not hold the host bytes at {start}",
            host_file.display()
        );
        mapped += e.len * BLOCK;
    }
    for &(off, len) in data {
        for block in (off / BLOCK)..(off + len).div_ceil(BLOCK) {
            assert!(
                stat.extents
                    .iter()
                    .any(|e| block >= e.logical && block < e.logical + e.len),
                "{}: data block {block} is not mapped; extents {:?}",
                host_file.display(),
                stat.extents
            );
        }
    }
    mapped
}

// ------------------------------------------------------------------------------------------------
// The full tree

/// Special values for some mtimes (seconds, nanoseconds): before 1970, after 2038 (the ext4 extra
/// epoch bits), after 2106, the epoch itself.
const ODD_TIMES: &[(&str, i64, u32)] = &[
    ("times/1969", -1_000_001, 876_543_211),
    ("times/2096", 4_000_000_000, 500_000_000),
    ("times/2286", 10_000_000_000, 1),
    ("times/epoch", 0, 0),
];

/// The sparse 1 GiB file and its data ranges (64 KiB aligned).
const SPARSE: &str = "special/sparse-1g.bin";
const SPARSE_DATA: &[(u64, u64)] = &[
    (0, 64 * 1024),
    (512 * MIB, 128 * 1024),
    (GIB - 64 * 1024, 64 * 1024),
];

/// Everything ext4 can hold: the awkward FAT names and sizes, 255-byte ASCII and UTF-8 names,
/// names beyond the BMP, names differing only in case, 20,000 entries in one directory, empty
/// files and directories, deep directories, hard-link groups (one reaching outside the tree,
/// one of empty files, one of a symlink), fast (< 60 bytes, 59 at the boundary) and slow (60,
/// 300, 4095 bytes) symlinks, dangling/absolute/directory symlinks, modes with setuid, setgid and
/// sticky bits, a fifo, a socket, device nodes (as root), owners other than the caller (as root),
/// and nanosecond mtimes set on every entry. Non-dumpable entries (fifo, socket, devices) and the
/// sparse 1 GiB file live in `special/`.
fn build_full_tree(root: &Path, outside: &Path) {
    build_awkward_tree(root);
    write_file(root, &long_name(255), b"255 bytes of name\n");
    let utf8_255 = "é".repeat(127) + "x";
    assert_eq!(utf8_255.len(), 255);
    write_file(root, &utf8_255, b"255 bytes of UTF-8\n");
    write_file(root, "emoji 😀 🎉 𝄞.txt", b"beyond the BMP\n");
    write_file(root, "case/Makefile", b"upper\n");
    write_file(root, "case/makefile", b"lower\n");
    write_file(root, " leading space", b"x");
    write_file(root, "trailing.dot.", b"y");
    write_file(root, "back\\slash$dollar", b"z");
    build_wide_dir(root, "wide", 20_000, 32);
    build_deep_dirs(root, 12);
    make_dir(root, "empty-dirs/a/b/c");
    make_dir(root, "empty-dirs/d");
    write_file(root, "empty-file", b"");

    // Hard links.
    write_file(root, "hard/a", &random_bytes(77, 10_000));
    fs::hard_link(root.join("hard/a"), root.join("hard/b")).unwrap();
    fs::hard_link(root.join("hard/a"), root.join("Sub Dir/a-third-name")).unwrap();
    write_file(root, "hard/empty1", b"");
    fs::hard_link(root.join("hard/empty1"), root.join("hard/empty2")).unwrap();
    write_file(
        root,
        "hard/outside-linked",
        b"one name in the tree, one outside\n",
    );
    fs::hard_link(root.join("hard/outside-linked"), outside).unwrap();

    // Symlinks.
    let links = make_dir(root, "links");
    let symlink = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, links.join(name))
            .unwrap_or_else(|e| panic!("symlink {name} -> {target:?}: {e}"));
    };
    symlink("../README.TXT", "fast");
    symlink(&"f".repeat(59), "fast-59");
    symlink(&"s".repeat(60), "slow-60");
    symlink(&"dir/".repeat(75), "slow-300");
    symlink(&"t".repeat(4095), "slow-4095");
    symlink("no/such/file", "dangling");
    symlink("/etc/passwd", "absolute");
    symlink("../Sub Dir", "to-dir");
    symlink("../日本語のファイル名.txt", "unicode");
    fs::hard_link(links.join("fast"), links.join("fast-hardlink")).unwrap();

    // Modes.
    let modes: &[(&str, u32)] = &[
        ("modes/0600", 0o600),
        ("modes/0755", 0o755),
        ("modes/0444", 0o444),
        ("modes/4755-setuid", 0o4755),
        ("modes/2755-setgid", 0o2755),
        ("modes/6711", 0o6711),
    ];
    for &(rel, mode) in modes {
        chmod(&write_file(root, rel, rel.as_bytes()), mode);
    }
    chmod(&make_dir(root, "modes/1777-sticky"), 0o1777);
    write_file(root, "modes/0700-private/inside", b"private\n");
    chmod(&root.join("modes/0700-private"), 0o700);
    chmod(&make_dir(root, "modes/2775-setgid-dir"), 0o2775);

    for &(rel, _, _) in ODD_TIMES {
        write_file(root, rel, rel.as_bytes());
    }

    // Specials and the sparse file.
    let special = make_dir(root, "special");
    mknod(
        &special.join("fifo"),
        rustix::fs::FileType::Fifo,
        0o640,
        0,
        0,
    );
    drop(std::os::unix::net::UnixListener::bind(special.join("socket")).unwrap());
    write_sparse_file(&root.join(SPARSE), GIB, SPARSE_DATA);
    if is_root() {
        use rustix::fs::FileType::{BlockDevice, CharacterDevice};
        mknod(&special.join("null"), CharacterDevice, 0o666, 1, 3);
        mknod(&special.join("sda1"), BlockDevice, 0o660, 8, 1);
        // The largest numbers ext4's new encoding holds (12-bit major, 20-bit minor).
        mknod(
            &special.join("big-dev"),
            CharacterDevice,
            0o600,
            4095,
            1_048_575,
        );
        // Owners other than root, including ids beyond 16 bits (i_uid_high/i_gid_high).
        let own = |rel: &str, uid, gid| {
            std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
        };
        own("hard/a", 1000, 1000);
        own("modes/0600", 1234, 5678);
        own("modes/4755-setuid", 100_000, 200_000);
        own("links/dangling", 4321, 8765);
        own("special/fifo", 70_000, 70_001);
        own("case", 2000, 3000);
        own("wide/entry-00042-with-a-longer-name.dat", 65_536, 65_537);
    }

    // Nanosecond mtimes on every entry, children before parents, the root last.
    let mut paths: Vec<String> = walk_meta(root).into_keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count() + usize::from(!p.is_empty())));
    for (i, rel) in paths.iter().enumerate() {
        let (secs, nsec) = ODD_TIMES
            .iter()
            .find(|t| t.0 == rel)
            .map(|t| (t.1, t.2))
            .unwrap_or((
                1_600_000_000 + 997 * i as i64,
                ((i * 7_919 + 123) % 1_000_000_000) as u32,
            ));
        set_mtime_ns(&root.join(rel), secs, nsec);
    }
}

#[test]
fn full_tree_is_fsck_clean_and_extracts_identically_with_every_inode_attribute() {
    require_tool!("e2fsck", "debugfs", "dumpe2fs", "diff");
    let dir = tempdir();
    let outside = dir.path().join("outside-link");
    let tree = tree_in(dir.path(), |t| build_full_tree(t, &outside));
    let img = dir.path().join("full.img");
    // The tree holds mtimes up to 2286; without SOURCE_DATE_EPOCH the superblock would take
    // the newest (see future_mtimes_do_not_put_the_superblock_in_the_future).
    let mut cmd = ext4_cmd(&tree, &[]);
    cmd.env("SOURCE_DATE_EPOCH", "1700000000");
    output_with(cmd, &img);

    e2fsck_clean(&img);
    let sb = dumpe2fs_header(&img);
    let features = sb.get("Filesystem features").cloned().unwrap_or_default();
    for f in [
        "has_journal",
        "extent",
        "dir_index",
        "filetype",
        "metadata_csum",
        "large_file",
    ] {
        assert!(
            features.split_whitespace().any(|x| x == f),
            "feature {f} missing: {features}"
        );
    }
    assert_eq!(sb.get("Block size").map(String::as_str), Some("4096"));

    // Contents, names and symlink targets.
    rdump_and_diff(&img, &tree, dir.path(), &["special"]);

    // Every inode's attributes (a sample of the 20,000-entry directory: debugfs looks names
    // up linearly).
    let host = walk_meta(&tree);
    let stats = check_inodes(&img, &tree, &host, None, |p| {
        !p.starts_with("wide/")
            || p.ends_with("00000-with-a-longer-name.dat")
            || p.ends_with("19999-with-a-longer-name.dat")
            || p.contains("-00042-")
            || p.contains("37-with")
    });
    assert!(stats.len() > 300, "only {} inodes compared", stats.len());

    // The 20,000-entry directory is hashed (EXT4_INDEX_FL) and lists every name.
    let wide = &stats["wide"];
    assert!(wide.flags & 0x1000 != 0, "wide/ is not hashed: {wide:?}");
    let ls = run_ok(debugfs().args(["-R", "ls /wide"]).arg(&img)).stdout_str();
    let listed = ls.matches("-with-a-longer-name.dat").count();
    assert_eq!(listed, 20_000, "debugfs ls /wide");

    // lost+found: a 0700 directory owned by root; the root directory counts it.
    let lf = debugfs_stat(&img, "/lost+found");
    assert_eq!(
        (lf.kind.as_str(), lf.mode, lf.links, lf.uid, lf.gid),
        ("directory", 0o700, 2, 0, 0),
        "{lf:?}"
    );
    assert_eq!(
        stats[""].links,
        host[""].nlink() + 1,
        "root links (lost+found adds one)"
    );

    // The sparse 1 GiB file: only its data blocks are allocated, inside the filesystem and in
    // the output image.
    let sparse = &stats[SPARSE];
    let mapped = check_sparse_file(&img, &tree.join(SPARSE), sparse, SPARSE_DATA);
    assert!(
        mapped <= 4 * MIB,
        "{mapped} bytes mapped for 256 KiB of data"
    );
    assert!(
        sparse.blockcount * 512 <= 4 * MIB + 64 * 1024,
        "blockcount {} for a sparse file",
        sparse.blockcount
    );
    let alloc = allocated(&img);
    assert!(
        alloc < 256 * MIB,
        "the output image allocates {alloc} bytes: the sparse 1 GiB file was materialized?"
    );
    // The hard link that also has a name outside the tree counts only the name inside.
    assert_eq!(stats["hard/outside-linked"].links, 1);
    assert_eq!(stats["hard/a"].links, 3);
}

#[test]
fn future_mtimes_do_not_put_the_superblock_in_the_future() {
    require_tool!("e2fsck");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "old.txt", b"old\n");
        write_file(t, "from-2096.txt", b"future\n");
        set_mtime_ns(&t.join("old.txt"), 1_500_000_000, 0);
        set_mtime_ns(&t.join("from-2096.txt"), 4_000_000_000, 0);
        set_mtime_ns(t, 1_500_000_000, 0);
    });
    let img = dir.path().join("f.img");
    build(&tree, &img, &[]);
    // The file keeps its time; the filesystem's own times must not make e2fsck complain
    // ("Superblock last write time ... is in the future").
    assert_eq!(
        debugfs_stat(&img, "/from-2096.txt").mtime,
        (4_000_000_000, 0)
    );
    e2fsck_clean(&img);
}

#[test]
fn reproducible_without_source_date_epoch_with_a_file_from_2038_and_over_nbd() {
    require_tool!("e2fsck", "dumpe2fs", "debugfs", "nbdcopy");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "today.txt", b"today\n");
        write_file(t, "sub/from-2038.txt", b"later\n");
        set_mtime_ns(&t.join("sub/from-2038.txt"), FUTURE_MTIME, 123_456_789);
        set_mtime_ns(&t.join("sub"), FUTURE_MTIME, 0);
    });
    // Built twice a second apart (the volume time and the UUID derived from it once followed
    // the clock for such a tree), and served: the same bytes every time.
    let img = assert_reproducible("ext4", &tree, dir.path(), &[]);
    e2fsck_clean(&img);
    // The filesystem's own times: the newest mtime clamped to the release date, not now.
    let h = dumpe2fs_header(&img);
    assert_eq!(h["Filesystem created"], "Tue Dec  1 00:00:00 2026", "{h:?}");
    assert_eq!(
        debugfs_stat(&img, "/lost+found").mtime.0,
        LATEST_VOLUME_TIME
    );
    assert_eq!(
        debugfs_stat(&img, "/sub/from-2038.txt").mtime,
        (FUTURE_MTIME, 123_456_789)
    );
}

// ------------------------------------------------------------------------------------------------
// Files of 4 GiB and more

#[test]
fn files_of_4gib_and_more_keep_their_size_and_data() {
    require_tool!("e2fsck", "debugfs");
    let dir = tempdir();
    let k64 = 64 * 1024;
    let big_data = [(0, k64), (4 * GIB - k64, 2 * k64), (5 * GIB - k64, k64)];
    let tree = tree_in(dir.path(), |t| {
        write_sparse_file(&t.join("5g.bin"), 5 * GIB, &big_data);
        write_sparse_file(&t.join("4g.bin"), 4 * GIB, &[(4 * GIB - k64, k64)]);
        // 4 GiB - 1: the largest size a 32-bit i_size holds.
        run_ok(
            Command::new("truncate")
                .args(["-s", "4294967295"])
                .arg(t.join("4g-1.bin")),
        );
        let f = fs::OpenOptions::new()
            .write(true)
            .open(t.join("4g-1.bin"))
            .unwrap();
        f.write_all_at(b"last byte ->!", 4 * GIB - 14).unwrap();
    });
    let img = dir.path().join("big.img");
    build(&tree, &img, &[]);
    e2fsck_clean(&img);
    let names = ["5g.bin", "4g.bin", "4g-1.bin"];
    let paths: Vec<String> = names.iter().map(|n| image_path(n)).collect();
    let stats = debugfs_stat_many(&img, &paths);
    let data: [&[(u64, u64)]; 3] = [&big_data, &[(4 * GIB - k64, k64)], &[(4 * GIB - 14, 13)]];
    for ((name, stat), data) in names.iter().zip(stats).zip(data) {
        let stat = stat.unwrap_or_else(|e| panic!("{name}: {e}"));
        check_sparse_file(&img, &tree.join(name), &stat, data);
    }
    let alloc = allocated(&img);
    assert!(
        alloc < 32 * MIB,
        "{alloc} bytes allocated for 14 GiB of mostly sparse files"
    );
}

// ------------------------------------------------------------------------------------------------
// Serving, determinism, free space

/// A small tree with every kind of entry (for the serving and determinism tests).
fn small_tree(t: &Path) {
    build_awkward_tree(t);
    write_file(t, "hard/a", &random_bytes(3, 5000));
    fs::hard_link(t.join("hard/a"), t.join("hard/b")).unwrap();
    std::os::unix::fs::symlink("../README.TXT", t.join("hard/fast")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), t.join("slow")).unwrap();
    mknod(&t.join("fifo"), rustix::fs::FileType::Fifo, 0o644, 0, 0);
    write_sparse_file(&t.join("sparse.bin"), 64 * MIB, &[(32 * MIB, 64 * 1024)]);
}

#[test]
fn served_export_equals_output_image_builds_are_identical_and_free_space_is_holes() {
    require_tool!("qemu-img", "nbdinfo", "e2fsck", "debugfs", "cmp");
    let dir = tempdir();
    let tree = tree_in(dir.path(), small_tree);
    let img = dir.path().join("a.img");
    let img2 = dir.path().join("b.img");
    let out = build(&tree, &img, &["--size", "256M", "-v"]);
    let log = out.stderr_str();
    assert!(
        log.contains("scanned in ") && log.contains(" ms, laid out in ") && log.contains(" ms)"),
        "-v does not report the scan and layout times\n{}",
        out.describe()
    );
    build(&tree, &img2, &["--size", "256M"]);
    cmp_files(&img, &img2);
    assert_eq!(fs::metadata(&img).unwrap().len(), 256 * MIB);
    e2fsck_clean(&img);

    let server = Server::disksynth_unix(
        dir.path(),
        &["ext4", tree.to_str().unwrap(), "--size", "256M"],
    );
    assert_eq!(nbdinfo_size(server.uri()), 256 * MIB);
    qemu_img_identical(server.uri(), &img);
    // Two open host files at most: the same bytes.
    let dir2 = tempdir();
    let pooled = Server::disksynth_unix(
        dir2.path(),
        &[
            "ext4",
            tree.to_str().unwrap(),
            "--size",
            "256M",
            "--max-open-files",
            "2",
        ],
    );
    qemu_img_identical(pooled.uri(), &img);
    drop(pooled);

    // Free space (and the empty journal) are holes; file data never reads as zero.
    let map = nbdinfo_map(server.uri());
    let sb = dumpe2fs_header(&img);
    let free: u64 = sb["Free blocks"].parse().unwrap();
    let holes: u64 = map.iter().filter(|x| x.kind & 1 != 0).map(|x| x.len).sum();
    assert!(
        holes + MIB >= free * BLOCK,
        "{holes} bytes of holes but {free} free blocks; map {map:?}"
    );
    let host = walk_meta(&tree);
    let files: Vec<&String> = host.keys().filter(|p| host[p.as_str()].is_file()).collect();
    let stats = debugfs_stat_many(
        &img,
        &files.iter().map(|p| image_path(p)).collect::<Vec<_>>(),
    );
    for (path, stat) in files.iter().zip(stats) {
        let stat = stat.unwrap();
        for e in &stat.extents {
            // The file's bytes in this extent (not the rest of its last block).
            let bytes = (e.len * BLOCK).min(stat.size - e.logical * BLOCK);
            let (s, end) = (e.physical * BLOCK, e.physical * BLOCK + bytes);
            if let Some(x) = map
                .iter()
                .find(|x| x.kind & 2 != 0 && x.offset < end && x.end() > s)
            {
                panic!("{path:?} data {s}..{end} reported as zero by {x:?}");
            }
        }
    }
    // -o leaves holes unallocated: a 256 MiB image of well under 16 MiB.
    let alloc = allocated(&img);
    assert!(alloc < 16 * MIB, "-o allocated {alloc} bytes");
}

#[test]
fn same_tree_copied_in_another_order_gives_the_same_image() {
    require_tool!("cmp");
    let dir = tempdir();
    let make = |root: &Path, reverse: bool| {
        let mut files: Vec<(String, Vec<u8>)> = (0..200)
            .map(|i| {
                (
                    format!("d{}/f{i:03}.bin", i % 7),
                    random_bytes(i as u64, i * 37),
                )
            })
            .collect();
        if reverse {
            files.reverse();
        }
        for (rel, data) in &files {
            write_file(root, rel, data);
        }
        std::os::unix::fs::symlink("d1/f001.bin", root.join("link")).unwrap();
        fs::hard_link(root.join("d0/f000.bin"), root.join("d2/hard")).unwrap();
        let mut paths: Vec<String> = walk_meta(root).into_keys().collect();
        paths.sort();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(p.matches('/').count() + usize::from(!p.is_empty()))
        });
        for (i, rel) in paths.iter().enumerate() {
            set_mtime_ns(&root.join(rel), 1_700_000_000 + i as i64, i as u32 * 1000);
        }
    };
    let a = dir.path().join("one/tree");
    let b = dir.path().join("two/tree");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    make(&a, false);
    make(&b, true);
    // Names, contents, modes, owners and mtimes are equal; host inode numbers, creation order
    // and ctimes are not (a copy or an unpacked archive cannot keep them). Reproducible builds
    // copy or unpack their input, so the image must not depend on them.
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for (tree, img) in [(&a, &ia), (&b, &ib)] {
        let mut cmd = ext4_cmd(tree, &[]);
        cmd.env("SOURCE_DATE_EPOCH", "1700000000");
        output_with(cmd, img);
    }
    let same = run(Command::new("cmp").arg(&ia).arg(&ib), CMD_TIMEOUT);
    if !same.status.success() {
        let uuid = |img: &Path| dumpe2fs_header(img)["Filesystem UUID"].clone();
        let times = |img: &Path| {
            let out = run_ok(debugfs().args(["-R", "stat /d0/f000.bin"]).arg(img));
            out.stdout_str()
                .lines()
                .filter(|l| l.contains("time:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ")
        };
        panic!(
            "two copies of one tree give different images: {}\n\
             UUID {} vs {}\n/d0/f000.bin: {}\n          vs: {}",
            same.stdout_str().trim(),
            uuid(&ia),
            uuid(&ib),
            times(&ia),
            times(&ib)
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Options

#[test]
fn uuid_label_and_source_date_epoch_are_in_the_superblock() {
    require_tool!("dumpe2fs", "debugfs", "e2fsck");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "a.txt", b"a\n");
        write_file(t, "sub/b.txt", b"b\n");
        for rel in ["a.txt", "sub/b.txt", "sub", ""] {
            set_mtime_ns(&t.join(rel), 1_500_000_000, 0);
        }
        set_mtime_ns(&t.join("sub/b.txt"), 1_600_000_000, 0);
    });
    let img = |n: &str| dir.path().join(n);
    let hdr = |n: &str| {
        let h = dumpe2fs_header(&img(n));
        e2fsck_clean(&img(n));
        h
    };

    // Default: a UUID derived from the tree, the newest mtime as the filesystem's time.
    build(&tree, &img("d1"), &[]);
    build(&tree, &img("d2"), &[]);
    let (h1, h2) = (hdr("d1"), hdr("d2"));
    assert_eq!(h1["Filesystem UUID"], h2["Filesystem UUID"]);
    assert_eq!(h1["Filesystem volume name"], "<none>");
    assert_eq!(
        h1["Filesystem created"], "Sun Sep 13 12:26:40 2020",
        "{h1:?}"
    );
    assert_eq!(
        debugfs_stat(&img("d1"), "/lost+found").mtime.0,
        1_600_000_000
    );

    // Another tree (one mtime changed) gets another UUID.
    set_mtime_ns(&tree.join("a.txt"), 1_500_000_001, 0);
    build(&tree, &img("d3"), &[]);
    assert_ne!(hdr("d3")["Filesystem UUID"], h1["Filesystem UUID"]);

    // --uuid and --label.
    let uuid = "0b9f4f8e-35d5-4d63-9c3e-5a1d2f7e8a10";
    build(&tree, &img("l"), &["--uuid", uuid, "--label", "root-Ünï"]);
    let h = hdr("l");
    assert_eq!(h["Filesystem UUID"], uuid);
    assert_eq!(h["Filesystem volume name"], "root-Ünï");
    build(&tree, &img("l16"), &["--label", "sixteen-bytes-ok"]);
    assert_eq!(hdr("l16")["Filesystem volume name"], "sixteen-bytes-ok");
    build_fails(&tree, &img("l17"), &["--label", "seventeen-bytes-x"]);
    build_fails(&tree, &img("u"), &["--uuid", "not-a-uuid"]);

    // SOURCE_DATE_EPOCH: the filesystem's own times, not the files'.
    let mut cmd = ext4_cmd(&tree, &[]);
    cmd.env("SOURCE_DATE_EPOCH", "1000000000");
    output_with(cmd, &img("sde"));
    let h = hdr("sde");
    assert_eq!(h["Filesystem created"], "Sun Sep  9 01:46:40 2001", "{h:?}");
    assert_eq!(
        debugfs_stat(&img("sde"), "/lost+found").mtime.0,
        1_000_000_000
    );
    assert_eq!(
        debugfs_stat(&img("sde"), "/sub/b.txt").mtime,
        (1_600_000_000, 0)
    );
    assert_eq!(
        debugfs_stat(&img("sde"), "/a.txt").mtime,
        (1_500_000_001, 0)
    );
}

#[test]
fn owner_root_makes_every_inode_root_owned_and_keep_keeps_the_host_ids() {
    require_tool!("debugfs", "e2fsck");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "mine.txt", b"mine\n");
        write_file(t, "sub/other.txt", b"other\n");
        std::os::unix::fs::symlink("mine.txt", t.join("link")).unwrap();
        mknod(&t.join("fifo"), rustix::fs::FileType::Fifo, 0o600, 0, 0);
        if is_root() {
            for (rel, uid, gid) in [
                ("mine.txt", 1000, 1000),
                ("sub/other.txt", 123_456, 654_321),
                ("sub", 42, 43),
                ("link", 7, 8),
                ("fifo", 9, 10),
            ] {
                std::os::unix::fs::lchown(t.join(rel), Some(uid), Some(gid)).unwrap();
            }
        }
    });
    let host = walk_meta(&tree);
    let keep = dir.path().join("keep.img");
    let root = dir.path().join("root.img");
    build(&tree, &keep, &[]);
    build(&tree, &root, &["--owner", "root"]);
    e2fsck_clean(&keep);
    e2fsck_clean(&root);
    check_inodes(&keep, &tree, &host, None, |_| true);
    check_inodes(&root, &tree, &host, Some((0, 0)), |_| true);
    let lf = debugfs_stat(&root, "/lost+found");
    assert_eq!((lf.uid, lf.gid), (0, 0));
    build_fails(&tree, &dir.path().join("bad.img"), &["--owner", "nobody"]);
}

#[test]
fn too_small_or_unaligned_sizes_are_clear_errors_and_the_needed_size_works() {
    require_tool!("e2fsck", "debugfs", "diff");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "big.bin", &random_bytes(9, 20 * MIB as usize));
        write_file(t, "small/one.txt", b"1\n");
    });
    let img = dir.path().join("x.img");

    // Default size: whole MiB, at least the data.
    build(&tree, &img, &[]);
    let len = fs::metadata(&img).unwrap().len();
    assert!(len & (MIB - 1) == 0 && len > 20 * MIB, "default size {len}");
    fs::remove_file(&img).unwrap();

    let out = build_fails(&tree, &img, &["--size", "16M"]);
    let err = out.stderr_str();
    let needed = err
        .split("needs at least ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no 'needs at least N bytes'\n{}", out.describe()));
    assert!(needed > 20 * MIB, "needs at least {needed}");
    // The size it names works and holds the tree.
    build(&tree, &img, &["--size", &needed.to_string()]);
    assert_eq!(fs::metadata(&img).unwrap().len(), needed);
    e2fsck_clean(&img);
    rdump_and_diff(&img, &tree, dir.path(), &[]);
    fs::remove_file(&img).unwrap();

    // Not a multiple of 4 KiB.
    let out = build_fails(&tree, &img, &["--size", "33554433"]);
    let err = out.stderr_str();
    assert!(
        err.contains("4096") || err.contains("4 KiB") || err.contains("4K"),
        "the error does not say sizes are multiples of 4 KiB\n{}",
        out.describe()
    );

    // A tiny tree gets the 16 MiB minimum.
    let tiny = dir.path().join("tiny");
    write_file(&tiny, "t", b"t");
    build(&tiny, &img, &[]);
    assert_eq!(fs::metadata(&img).unwrap().len(), 16 * MIB);
}

/// Names and symlink targets are bytes in ext4: names that are not UTF-8 (one in a directory
/// big enough to be hashed, where the kernel finds entries by the hash of their bytes) and fast
/// and slow symlink targets that are not UTF-8 come out exactly, through debugfs and through the
/// kernel.
#[test]
fn names_and_symlink_targets_that_are_not_utf8_are_stored_as_bytes() {
    require_tool!("e2fsck", "debugfs", "diff", "mount", "umount");
    let dir = tempdir();
    let b = |bytes: &[u8]| OsStr::from_bytes(bytes).to_os_string();
    let hashed: Vec<std::ffi::OsString> = (0..400)
        .map(|i| b(&[&b"n\xe9\xff-"[..], format!("{i:03}").as_bytes()].concat()))
        .collect();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "ok.txt", b"ok");
        let bytes = make_dir(t, "bytes");
        fs::write(bytes.join(b(b"caf\xe9")), b"latin-1").unwrap();
        fs::create_dir(bytes.join(b(b"dir-\xff"))).unwrap();
        fs::write(bytes.join(b(b"dir-\xff")).join("inner"), b"inner").unwrap();
        std::os::unix::fs::symlink(b(b"t\xff\xfe"), bytes.join("fast")).unwrap();
        std::os::unix::fs::symlink(b(&[0xe9; 100]), bytes.join("slow")).unwrap();
        let big = make_dir(&bytes, "hashed");
        for n in &hashed {
            fs::write(big.join(n), n.as_bytes()).unwrap();
        }
    });
    let img = dir.path().join("bytes.img");
    build(&tree, &img, &[]);
    e2fsck_clean(&img);
    let hashed_stat = debugfs_stat(&img, "/bytes/hashed");
    assert_ne!(
        hashed_stat.flags & 0x1000,
        0,
        "/bytes/hashed is not a hashed directory"
    );
    // debugfs shows a name's bytes that are not printable as \xNN, a fast link's target raw.
    let ls = disksynth_tests::ext4_util::debugfs_script(&img, &["ls /bytes".to_string()]);
    assert!(
        ls.stdout_str().contains("caf\\xe9") && ls.stdout_str().contains("dir-\\xff"),
        "{}",
        ls.describe()
    );
    let stat = disksynth_tests::ext4_util::debugfs_script(&img, &["stat /bytes/fast".into()]);
    assert!(
        {
            let want = b"Fast link dest: \"t\xff\xfe\"";
            stat.stdout.windows(want.len()).any(|w| w == want)
        },
        "{}",
        stat.describe()
    );
    // debugfs extracts them byte for byte (diff compares names and symlink targets).
    let out = dir.path().join("rdump");
    rdump(&img, &["/bytes".to_string()], &out);
    let res = run(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(tree.join("bytes"))
            .arg(out.join("bytes")),
        CMD_TIMEOUT,
    );
    assert!(res.status.success(), "{}", res.describe());

    // The kernel finds every name (the hashed ones by their hash) and reads the same bytes.
    let Some(mnt) = disksynth_tests::ext4_util::LoopMount::new(&img) else {
        return;
    };
    let names = |d: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&mnt.dir.join("bytes")), names(&tree.join("bytes")));
    for n in &hashed {
        assert_eq!(
            fs::read(mnt.dir.join("bytes/hashed").join(n)).unwrap(),
            n.as_bytes(),
            "{n:?}"
        );
    }
    for link in ["fast", "slow"] {
        assert_eq!(
            fs::read_link(mnt.dir.join("bytes").join(link)).unwrap(),
            fs::read_link(tree.join("bytes").join(link)).unwrap()
        );
    }
    let res = run(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(tree.join("bytes"))
            .arg(mnt.dir.join("bytes")),
        CMD_TIMEOUT,
    );
    assert!(res.status.success(), "{}", res.describe());
}

// ------------------------------------------------------------------------------------------------
// Extended attributes and ACLs

/// `setfattr ARGS PATH`, `setfacl ARGS PATH`, `setcap ARGS PATH`: must succeed.
fn set_attr(tool: &str, args: &[&str], path: &Path) {
    run_ok(Command::new(tool).args(args).arg(path));
}

/// A tree with what a root filesystem carries in extended attributes: SELinux labels,
/// `trusted.*` (overlayfs), `user.*`, a file capability, access ACLs with named users and
/// groups, a directory's default ACL, a value big enough for an xattr block, many attributes,
/// labelled fast and slow symlinks, a hard link, and the root directory's own attributes.
/// Returns the tree-relative paths (`""` is the root) worth checking.
fn build_xattr_tree(t: &Path) -> Vec<&'static str> {
    write_file(t, "etc/hostname", b"husky\n");
    write_file(t, "bin/ping", b"\x7fELF (not really)");
    write_file(t, "big", b"");
    write_file(t, "many", b"");
    write_file(t, "shared", b"one inode, two names");
    fs::hard_link(t.join("shared"), t.join("etc/shared-link")).unwrap();
    make_dir(t, "srv/acl-dir");
    write_file(t, "plain", b"no attributes");
    std::os::unix::fs::symlink("hostname", t.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("s".repeat(100), t.join("etc/slow-link")).unwrap();
    mknod(&t.join("dev-fifo"), rustix::fs::FileType::Fifo, 0o600, 0, 0);

    let f = |rel: &str| t.join(rel);
    set_attr("setfattr", &["-n", "user.root", "-v", "top"], t);
    set_attr(
        "setfattr",
        &[
            "-n",
            "security.selinux",
            "-v",
            "system_u:object_r:root_t:s0",
        ],
        t,
    );
    set_attr(
        "setfattr",
        &["-n", "user.mime_type", "-v", "text/plain"],
        &f("etc/hostname"),
    );
    set_attr(
        "setfattr",
        &["-n", "trusted.overlay.opaque", "-v", "y"],
        &f("etc/hostname"),
    );
    set_attr(
        "setfattr",
        &["-n", "security.selinux", "-v", "system_u:object_r:etc_t:s0"],
        &f("etc/hostname"),
    );
    set_attr("setfacl", &["-m", "u:1234:rw,g:4321:r"], &f("etc/hostname"));
    set_attr("setcap", &["cap_net_raw+ep"], &f("bin/ping"));
    set_attr("setfacl", &["-m", "u:1000:rwx,g:100:rx"], &f("srv/acl-dir"));
    set_attr(
        "setfacl",
        &["-d", "-m", "u:1000:rwx,g:100:rx,o::-"],
        &f("srv/acl-dir"),
    );
    set_attr(
        "setfattr",
        &["-n", "user.big", "-v", &"B".repeat(3000)],
        &f("big"),
    );
    for i in 0..60 {
        let (n, v) = (format!("user.attr{i:02}"), format!("value-{i}"));
        set_attr("setfattr", &["-n", &n, "-v", &v], &f("many"));
    }
    set_attr("setfattr", &["-n", "user.shared", "-v", "s"], &f("shared"));
    for link in ["etc/link", "etc/slow-link"] {
        set_attr(
            "setfattr",
            &["-h", "-n", "trusted.link", "-v", "t"],
            &f(link),
        );
        set_attr(
            "setfattr",
            &[
                "-h",
                "-n",
                "security.selinux",
                "-v",
                "system_u:object_r:bin_t:s0",
            ],
            &f(link),
        );
    }
    // Symlinks with an xattr block too: a fast symlink's target is in the inode, and the kernel
    // tells it from a slow one by i_blocks less the xattr block.
    set_attr(
        "setfattr",
        &["-h", "-n", "trusted.big", "-v", &"L".repeat(200)],
        &f("etc/link"),
    );
    set_attr(
        "setfattr",
        &["-h", "-n", "trusted.big", "-v", &"L".repeat(200)],
        &f("etc/slow-link"),
    );
    set_attr(
        "setfattr",
        &[
            "-n",
            "security.selinux",
            "-v",
            "system_u:object_r:fifo_t:s0",
        ],
        &f("dev-fifo"),
    );
    vec![
        "dev-fifo",
        "",
        "etc",
        "etc/hostname",
        "bin/ping",
        "big",
        "many",
        "shared",
        "etc/shared-link",
        "srv/acl-dir",
        "plain",
        "etc/link",
        "etc/slow-link",
    ]
}

/// `TOOL ARGS -R .` run in `dir`, split into its per-file blocks (`# file: NAME` headers), so
/// that directory order does not matter; `lost+found` is left out.
fn per_file_dump(tool: &str, args: &[&str], dir: &Path) -> BTreeMap<String, String> {
    let out = run_ok(
        Command::new(tool)
            .args(args)
            .arg("-R")
            .arg(".")
            .current_dir(dir),
    );
    out.stdout_str()
        .split("\n\n")
        .filter_map(|block| {
            let (head, body) = block.trim().split_once('\n').unwrap_or((block.trim(), ""));
            let name = head.strip_prefix("# file: ")?.to_string();
            (!name.contains("lost+found")).then(|| (name, body.to_string()))
        })
        .collect()
}

/// Every attribute is in the image as debugfs reads it (names, lengths, ACLs in ext4's format,
/// values that overflow the inode in an xattr block), `e2fsck` checks their checksums, and
/// through the kernel `getfattr`, `getfacl` and `getcap` give what they give on the host.
/// `--no-xattrs` leaves every attribute out.
#[test]
fn xattrs_capabilities_and_acls_are_kept_and_read_back_through_the_kernel() {
    require_tool!(
        "setfattr", "getfattr", "setfacl", "getfacl", "setcap", "getcap", "e2fsck", "debugfs",
        "cmp", "mount", "umount"
    );
    if !is_root() {
        // trusted.* and file capabilities can only be set (and trusted.* read) by root.
        eprintln!("SKIPPED: trusted.* attributes and capabilities need root");
        return;
    }
    let dir = tempdir();
    let mut paths = Vec::new();
    let tree = tree_in(dir.path(), |t| paths = build_xattr_tree(t));
    let img = dir.path().join("x.img");
    build(&tree, &img, &[]);
    e2fsck_clean(&img);
    let again = dir.path().join("again.img");
    build(&tree, &again, &[]);
    cmp_files(&img, &again);

    // debugfs: every host attribute, with ext4's length for it.
    let image_paths: Vec<String> = paths.iter().map(|p| image_path(p)).collect();
    let lists = disksynth_tests::ext4_util::debugfs_ea_lists(&img, &image_paths);
    for (rel, got) in paths.iter().zip(&lists) {
        let want: BTreeMap<String, usize> =
            disksynth_tests::ext4_util::host_xattrs(&tree.join(rel))
                .iter()
                .map(|(n, v)| {
                    let len = disksynth_tests::ext4_util::ext4_xattr_len(n, v);
                    (String::from_utf8_lossy(n).into_owned(), len)
                })
                .collect();
        assert_eq!(
            got, &want,
            "{rel:?}: attributes in the image (left) and on the host"
        );
    }
    assert!(lists[paths.iter().position(|p| *p == "bin/ping").unwrap()]
        .contains_key("security.capability"));
    assert!(
        lists[paths.iter().position(|p| *p == "srv/acl-dir").unwrap()]
            .contains_key("system.posix_acl_default")
    );
    // The big value and the many small ones take an xattr block (8 sectors; the files are
    // empty); a file without attributes has none.
    for (rel, blocks) in [("/big", 8), ("/many", 8), ("/plain", 8)] {
        let stat = debugfs_stat(&img, rel);
        let want = if rel == "/plain" { 0 } else { blocks };
        assert_eq!(
            stat.blockcount,
            want + stat.size.div_ceil(BLOCK) * 8,
            "{rel}"
        );
    }

    // --no-xattrs: none at all, and still clean.
    let bare = dir.path().join("bare.img");
    build(&tree, &bare, &["--no-xattrs"]);
    e2fsck_clean(&bare);
    for (rel, got) in paths
        .iter()
        .zip(disksynth_tests::ext4_util::debugfs_ea_lists(
            &bare,
            &image_paths,
        ))
    {
        assert!(
            got.is_empty(),
            "{rel:?} has attributes under --no-xattrs: {got:?}"
        );
    }

    // The kernel reads what the host has.
    let Some(mnt) = disksynth_tests::ext4_util::LoopMount::new(&img) else {
        return;
    };
    let getfattr = ["-d", "-m", "-", "-e", "hex", "-h", "--absolute-names"];
    let host_attrs = per_file_dump("getfattr", &getfattr, &tree);
    // Every checked path but the plain file and the bare `etc` directory has attributes.
    assert_eq!(host_attrs.len(), paths.len() - 2, "{host_attrs:#?}");
    assert_eq!(
        per_file_dump("getfattr", &getfattr, &mnt.dir),
        host_attrs,
        "getfattr in the mounted image (left) and on the host"
    );
    let host_acls = per_file_dump("getfacl", &["-n", "-p"], &tree);
    let acl_dir = &host_acls["./srv/acl-dir"];
    assert!(
        acl_dir.contains("user:1000:rwx") && acl_dir.contains("default:group:100:r-x"),
        "{acl_dir}"
    );
    assert_eq!(
        per_file_dump("getfacl", &["-n", "-p"], &mnt.dir),
        host_acls,
        "getfacl in the mounted image (left) and on the host"
    );
    let getcap =
        |root: &Path| run_ok(Command::new("getcap").arg("bin/ping").current_dir(root)).stdout_str();
    for link in ["etc/link", "etc/slow-link"] {
        assert_eq!(
            fs::read_link(mnt.dir.join(link)).unwrap(),
            fs::read_link(tree.join(link)).unwrap(),
            "{link}"
        );
    }
    let cap = getcap(&mnt.dir);
    assert!(cap.contains("cap_net_raw"), "getcap in the image: {cap:?}");
    assert_eq!(getcap(&mnt.dir), getcap(&tree));
}

/// Attributes that cannot fit an inode and one 4 KiB block (possible on a host filesystem with
/// larger xattr storage, such as tmpfs) are an error naming the file; `--no-xattrs` builds.
#[test]
fn xattrs_too_big_for_ext4_are_an_error_naming_the_file_and_no_xattrs_builds() {
    require_tool!("e2fsck");
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("SKIPPED: no /dev/shm");
        return;
    };
    let tree = tree_in(shm.path(), |t| {
        write_file(t, "crowded", b"x");
    });
    for i in 0..3 {
        let r = rustix::fs::setxattr(
            tree.join("crowded"),
            format!("user.v{i}").as_str(),
            &[b'v'; 2000],
            rustix::fs::XattrFlags::empty(),
        );
        if let Err(e) = r {
            eprintln!("SKIPPED: /dev/shm holds no user xattrs ({e})");
            return;
        }
    }
    let dir = tempdir();
    let img = dir.path().join("x.img");
    let out = build_fails(&tree, &img, &[]);
    let err = out.stderr_str();
    assert!(
        err.contains("crowded") && err.contains("--no-xattrs") && err.contains("4 KiB"),
        "{}",
        out.describe()
    );
    build(&tree, &img, &["--no-xattrs"]);
    e2fsck_clean(&img);
}

// ------------------------------------------------------------------------------------------------
// Writes and host changes

#[test]
fn rw_writes_are_read_back_and_never_reach_the_host_tree() {
    require_tool!("qemu-io", "qemu-img", "nbdcopy", "debugfs", "e2fsck");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "keep.txt", &random_bytes(5, 10_000));
        write_file(t, "gone.txt", b"to be deleted\n");
        write_file(t, "sub/inner.bin", &random_bytes(6, 70_000));
    });
    let before = snapshot(&tree, false);
    let meta_before: Vec<(i64, i64)> = walk_meta(&tree)
        .values()
        .map(|m| (m.mtime(), m.mtime_nsec()))
        .collect();

    let server = Server::disksynth_unix(dir.path(), &["ext4", tree.to_str().unwrap(), "--rw"]);
    let img0 = dir.path().join("img0");
    nbdcopy_to(server.uri(), &img0);
    let keep = debugfs_stat(&img0, "/keep.txt");
    let ks = keep.extents[0].physical * BLOCK;
    let free = free_block(&img0) * BLOCK;

    // Overwrite file data and free space; read back.
    qemu_io(
        server.uri(),
        &[
            &format!("write -P 0xab {ks} 4096"),
            &format!("write -P 0xcd {free} 8192"),
            &format!("read -P 0xab {ks} 4096"),
            &format!("read -P 0xcd {free} 8192"),
        ],
    );
    let img1 = dir.path().join("img1");
    nbdcopy_to(server.uri(), &img1);
    let dumped = dir.path().join("keep.dump");
    run_ok(
        debugfs()
            .arg("-R")
            .arg(format!("dump /keep.txt {}", dumped.display()))
            .arg(&img1),
    );
    let got = fs::read(&dumped).unwrap();
    assert!(
        got[..4096].iter().all(|&b| b == 0xab),
        "write not visible in keep.txt"
    );
    assert_eq!(&got[4096..], &before_file(&before, "keep.txt")[4096..]);

    // A filesystem-level change made with debugfs -w, written through NBD, read back anew.
    let newfile = dir.path().join("new.txt");
    fs::write(&newfile, b"written through the overlay\n").unwrap();
    run_ok(
        debugfs()
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} new.txt", newfile.display()))
            .arg(&img1),
    );
    run_ok(debugfs().args(["-w", "-R", "rm /gone.txt"]).arg(&img1));
    e2fsck_clean(&img1);
    run_ok(Command::new("nbdcopy").arg(&img1).arg(server.uri()));
    qemu_img_identical(server.uri(), &img1);
    let img2 = dir.path().join("img2");
    nbdcopy_to(server.uri(), &img2);
    e2fsck_clean(&img2);
    let ls = run_ok(debugfs().args(["-R", "ls /"]).arg(&img2)).stdout_str();
    assert!(ls.contains("new.txt") && !ls.contains("gone.txt"), "{ls}");
    let cat = run_ok(debugfs().args(["-R", "cat /new.txt"]).arg(&img2));
    assert_eq!(cat.stdout, b"written through the overlay\n");

    // The host tree is untouched: names, contents, symlinks, mtimes.
    drop(server);
    let after = snapshot(&tree, false);
    let d = diff_snapshots(&before, &after, 20);
    assert!(d.is_empty(), "the host tree changed: {d:#?}");
    let meta_after: Vec<(i64, i64)> = walk_meta(&tree)
        .values()
        .map(|m| (m.mtime(), m.mtime_nsec()))
        .collect();
    assert_eq!(meta_before, meta_after, "host mtimes changed");
}

/// Two free blocks in a row (debugfs `ffb`), far from the start; returns the first.
fn free_block(img: &Path) -> u64 {
    let out = run_ok(debugfs().args(["-R", "ffb 2 2048"]).arg(img));
    out.stdout_str()
        .split("Free blocks found:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no free block\n{}", out.describe()))
}

fn before_file<'a>(
    snap: &'a BTreeMap<String, disksynth_tests::trees::Node>,
    rel: &str,
) -> &'a [u8] {
    match &snap[rel] {
        disksynth_tests::trees::Node::File(d) => d,
        other => panic!("{rel}: {other:?}"),
    }
}

#[test]
fn host_file_changed_after_start_up_gives_eio_naming_it_and_others_still_read() {
    require_tool!("qemu-io", "nbdcopy", "debugfs");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "victim.bin", &random_bytes(1, 256 * 1024));
        write_file(t, "same-size.bin", &random_bytes(2, 128 * 1024));
        write_file(t, "untouched.bin", &[0x5a; 64 * 1024]);
    });
    let mut server = Server::disksynth_unix(dir.path(), &["ext4", tree.to_str().unwrap()]);
    let img = dir.path().join("served.img");
    nbdcopy_to(server.uri(), &img);
    let paths = ["/victim.bin", "/same-size.bin", "/untouched.bin"].map(String::from);
    let stats: Vec<InodeStat> = debugfs_stat_many(&img, &paths)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let at = |s: &InodeStat| s.extents[0].physical * BLOCK;

    // Grown: reads fail rather than serve a mix.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(tree.join("victim.bin"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    let eio = |offset: u64, name: &str| {
        let out = qemu_io_readonly(server.uri(), &[&format!("read {offset} 65536")]);
        let all = format!("{}{}", out.stdout_str(), out.stderr_str());
        assert!(
            all.contains("Input/output error"),
            "read of the changed {name} did not fail with EIO\n{}",
            out.describe()
        );
        assert!(
            server.wait_stderr_contains(name, Duration::from_secs(5)),
            "the server log does not name {name}:\n{}",
            server.stderr_text()
        );
    };
    eio(at(&stats[0]), "victim.bin");

    // Rewritten in place with the same size (only the mtime tells): the same.
    fs::write(tree.join("same-size.bin"), random_bytes(3, 128 * 1024)).unwrap();
    set_mtime_ns(&tree.join("same-size.bin"), 1_234_567_890, 5);
    eio(at(&stats[1]), "same-size.bin");

    // Metadata and the untouched file are still served.
    assert!(
        server.is_running(),
        "server died:\n{}",
        server.stderr_text()
    );
    let out = qemu_io_readonly(
        server.uri(),
        &[
            "read 0 65536",
            &format!("read -P 0x5a {} 65536", at(&stats[2])),
        ],
    );
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        out.status.success() && !all.contains("failed") && !all.contains("error"),
        "{}",
        out.describe()
    );
}

// ------------------------------------------------------------------------------------------------
// The checkers themselves

#[test]
fn checkers_accept_a_mke2fs_image_and_catch_wrong_attributes_and_corruption() {
    require_tool!("mke2fs", "e2fsck", "debugfs", "diff");
    let dir = tempdir();
    // mke2fs -d (e2fsprogs 1.47.0) keeps whole seconds between 1970 and 2038 only.
    let tree = tree_in(dir.path(), |t| {
        build_awkward_tree(t);
        write_file(t, "hard/a", b"linked\n");
        fs::hard_link(t.join("hard/a"), t.join("hard/b")).unwrap();
        std::os::unix::fs::symlink("../README.TXT", t.join("hard/fast")).unwrap();
        std::os::unix::fs::symlink("y".repeat(100), t.join("slow")).unwrap();
        mknod(&t.join("fifo"), rustix::fs::FileType::Fifo, 0o644, 0, 0);
        let mut paths: Vec<String> = walk_meta(t).into_keys().collect();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(p.matches('/').count() + usize::from(!p.is_empty()))
        });
        for (i, rel) in paths.iter().enumerate() {
            set_mtime_ns(&t.join(rel), 1_500_000_000 + i as i64, 0);
        }
        // mke2fs gives the root directory its own (fake) time.
        set_mtime_ns(t, 1_500_000_000, 0);
    });
    let img = dir.path().join("mke2fs.img");
    run_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("32M")
            .env("E2FSPROGS_FAKE_TIME", "1500000000"),
    );
    e2fsck_clean(&img);
    rdump_and_diff(&img, &tree, dir.path(), &["fifo"]);
    let host = walk_meta(&tree);
    check_inodes(&img, &tree, &host, None, |_| true);

    // A wrong mtime and a wrong mode are caught by check_inodes; a wrong link count by e2fsck.
    let bad = dir.path().join("bad.img");
    fs::copy(&img, &bad).unwrap();
    run_ok(
        debugfs()
            .args(["-w", "-R", "set_inode_field /hard/fast mtime 0x12345678"])
            .arg(&bad),
    );
    run_ok(
        debugfs()
            .args(["-w", "-R", "set_inode_field /slow mode 0120700"])
            .arg(&bad),
    );
    let err = std::panic::catch_unwind(|| check_inodes(&bad, &tree, &host, None, |_| true))
        .expect_err("check_inodes accepted a wrong mtime and mode");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("\"hard/fast\": mtime") && msg.contains("\"slow\": mode"),
        "{msg}"
    );
    run_ok(
        debugfs()
            .args(["-w", "-R", "set_inode_field /hard/a links_count 5"])
            .arg(&bad),
    );
    assert!(
        std::panic::catch_unwind(|| e2fsck_clean(&bad)).is_err(),
        "e2fsck_clean accepted a wrong link count"
    );
}
