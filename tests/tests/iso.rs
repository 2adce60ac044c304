//! `disksynth iso DIR`: an ISO 9660 image (level 3, Rock Ridge, Joliet) synthesized from a host
//! directory.
//!
//! Every image is checked by independent readers: `isoinfo -d` (the volume descriptors),
//! `isoinfo -l` in its three views (plain ISO 9660 names, Rock Ridge `-R`, Joliet `-J`),
//! extraction with `xorriso -osirrox` (libisofs: Rock Ridge names, modes, symlink targets,
//! mtimes, fifos) and with `7z x` (7-Zip: Joliet names), compared with the host tree. xorriso
//! does not restore device nodes (and reads Rock Ridge `PN` as one raw 64-bit `dev_t`, unlike
//! mkisofs and Linux), so device nodes are checked in the `isoinfo -l -R` listing only. Served
//! images are compared with `-o` output (`qemu-img compare`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use disksynth_tests::generator::{
    assert_reproducible, build_image, build_image_fails, cmp_files, generator_cmd, output_with,
    qemu_img_identical, FUTURE_MTIME, LATEST_VOLUME_TIME,
};
use disksynth_tests::iso_util::{
    isoinfo_d, isoinfo_list, pvd_dates, read_at, sevenz_extract, utc_digits, walk_lstat,
    xorriso_cut, xorriso_extract, xorriso_lsdl, ListEntry, SECTOR,
};
use disksynth_tests::trees::{
    build_awkward_tree, build_deep_dirs, build_wide_dir, chmod, diff_snapshots, is_root, long_name,
    make_dir, mknod, set_mtime, snapshot, write_file, Node,
};
use disksynth_tests::{
    nbdinfo_size, random_bytes, require_tool, run, run_ok, tempdir, Output, Server, CMD_TIMEOUT,
    MIB,
};

const GIB: u64 = 1 << 30;

// ------------------------------------------------------------------------------------------------
// Helpers

/// `disksynth iso TREE ARGS... -o IMG`, which must succeed.
fn build(tree: &Path, img: &Path, args: &[&str]) -> Output {
    build_image("iso", tree, img, args)
}

/// A fresh directory `dir/name` filled by `build_tree`.
fn tree_named(dir: &Path, name: &str, build_tree: impl FnOnce(&Path)) -> PathBuf {
    let tree = dir.join(name);
    fs::create_dir(&tree).unwrap();
    build_tree(&tree);
    tree
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {} -> {target:?}: {e}", link.display()));
}

/// The isoinfo mode letter of a host file type (`f` is isoinfo's letter for a fifo).
fn type_letter(m: &fs::Metadata) -> char {
    let ft = m.file_type();
    if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        '-'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'f'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        's'
    }
}

/// `ls -l` permission characters of a mode (with set-uid/set-gid/sticky letters).
fn perm_string(mode: u32) -> String {
    let mut s: Vec<char> = "rwxrwxrwx"
        .chars()
        .enumerate()
        .map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' })
        .collect();
    for (bit, pos, set, unset_x) in [
        (0o4000, 2, 's', 'S'),
        (0o2000, 5, 's', 'S'),
        (0o1000, 8, 't', 'T'),
    ] {
        if mode & bit != 0 {
            s[pos] = if s[pos] == 'x' { set } else { unset_x };
        }
    }
    s.into_iter().collect()
}

fn joined(problems: &[String]) -> String {
    let n = problems.len();
    let mut shown: Vec<String> = problems.iter().take(40).cloned().collect();
    if n > 40 {
        shown.push(format!("... and {} more", n - 40));
    }
    shown.join("\n")
}

/// Whether Joliet keeps every name of `rel` as it is: at most 64 UCS-2 characters, all in the
/// BMP, none of `* / : ; ? \\` (which Joliet does not allow).
fn joliet_keeps(rel: &str) -> bool {
    rel.split('/').all(|c| {
        c.chars().count() <= 64
            && c.chars()
                .all(|ch| (ch as u32) < 0x10000 && !"*:;?\\".contains(ch))
    })
}

/// Entries per directory of a listing (`/dir/` → names).
fn by_dir(list: &BTreeMap<String, Vec<ListEntry>>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in list.keys() {
        let (dir, name) = path.rsplit_once('/').unwrap();
        out.entry(format!("{dir}/"))
            .or_default()
            .push(name.to_string());
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The full tree

/// Times for a few entries: the epoch, before 1970, after 2038, after 2106 (Rock Ridge's 7-byte
/// `TF` form holds years 1900-2155).
const ODD_TIMES: &[(&str, i64)] = &[
    ("times/epoch", 0),
    ("times/1969", -1_000_001),
    ("times/2096", 4_000_000_000),
    ("times/2150", 5_600_000_000),
];

/// Long (255 bytes, ASCII and UTF-8), unicode (beyond the BMP too) and deep (12 levels) names,
/// the awkward FAT names and sizes, 3000 entries in one directory, empty files and directories,
/// short and long (300 byte) symlinks (dangling, absolute, to a directory), modes with
/// set-uid/set-gid/sticky, a fifo, a hard link (a separate file in ISO 9660), a character device
/// (as root) and distinct mtimes everywhere.
fn build_full_tree(root: &Path) {
    build_awkward_tree(root);
    write_file(root, &long_name(255), b"255 bytes of name\n");
    let utf8_255 = "é".repeat(127) + "x";
    write_file(root, &utf8_255, b"255 bytes of UTF-8\n");
    write_file(root, "emoji 😀 🎉 𝄞.txt", b"beyond the BMP\n");
    write_file(root, "case/Makefile", b"upper\n");
    write_file(root, "case/makefile", b"lower\n");
    write_file(root, "back\\slash$dollar", b"z");
    write_file(
        root,
        "same prefix longer than sixty-four characters, number one, aaaaa.txt",
        b"1",
    );
    write_file(
        root,
        "same prefix longer than sixty-four characters, number one, bbbbb.txt",
        b"2",
    );
    write_file(root, "a.b.c.d.many.dots.tar.gz", b"dots");
    build_wide_dir(root, "wide", 3000, 16);
    build_deep_dirs(root, 12);
    make_dir(root, "empty-dirs/a/b/c");
    make_dir(root, "empty-dirs/d");
    write_file(root, "empty-file", b"");
    write_file(root, "hard/a", &random_bytes(77, 10_000));
    fs::hard_link(root.join("hard/a"), root.join("hard/b")).unwrap();

    let links = make_dir(root, "links");
    symlink("../README.TXT", &links.join("fast"));
    symlink(
        "dir/".repeat(75).trim_end_matches('/'),
        &links.join("long-300"),
    );
    symlink("no/such/file", &links.join("dangling"));
    symlink("/etc/passwd", &links.join("absolute"));
    symlink("../Sub Dir", &links.join("to-dir"));
    symlink("../日本語のファイル名.txt", &links.join("unicode"));

    for (rel, mode) in [
        ("modes/0600", 0o600),
        ("modes/0755", 0o755),
        ("modes/0444", 0o444),
        ("modes/4755-setuid", 0o4755),
        ("modes/2755-setgid", 0o2755),
    ] {
        chmod(&write_file(root, rel, rel.as_bytes()), mode);
    }
    chmod(&make_dir(root, "modes/1777-sticky"), 0o1777);
    chmod(&make_dir(root, "modes/0700-dir"), 0o700);

    let special = make_dir(root, "special");
    mknod(
        &special.join("fifo"),
        rustix::fs::FileType::Fifo,
        0o640,
        0,
        0,
    );
    if is_root() {
        mknod(
            &special.join("null-like"),
            rustix::fs::FileType::CharacterDevice,
            0o666,
            1,
            3,
        );
    }

    // Distinct mtimes, deepest first so that a child does not touch its parent afterwards.
    let meta = walk_lstat(root);
    let mut paths: Vec<&String> = meta.keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for (i, rel) in paths.iter().enumerate() {
        let t = ODD_TIMES
            .iter()
            .find(|(p, _)| p == rel)
            .map_or(1_500_000_000 + i as i64 * 7, |&(_, t)| t);
        set_mtime(&root.join(rel), t);
    }
    for (rel, t) in ODD_TIMES {
        if !root.join(rel).exists() {
            set_mtime(&write_file(root, rel, rel.as_bytes()), *t);
        }
    }
    set_mtime(&root.join("times"), 1_400_000_000);
}

/// The Rock Ridge listing (`isoinfo -l -R`) holds exactly the host tree: every path, its type,
/// rwx permissions, size and symlink target.
fn check_rock_ridge_listing(img: &Path, host: &BTreeMap<String, fs::Metadata>, tree: &Path) {
    let list = isoinfo_list(img, "-R");
    let mut problems = Vec::new();
    for (rel, m) in host {
        let path = format!("/{rel}");
        let Some(entries) = list.get(&path) else {
            problems.push(format!("{path:?}: missing from isoinfo -l -R"));
            continue;
        };
        let e = &entries[0];
        // isoinfo does not show set-uid/set-gid/sticky (xorriso's extraction checks them).
        let want = format!("{}{}", type_letter(m), perm_string(m.mode() & 0o777));
        if e.mode != want {
            problems.push(format!("{path:?}: mode {} (host {want})", e.mode));
        }
        if m.is_file() {
            let size: u64 = entries.iter().map(|e| e.size).sum();
            if size != m.len() {
                problems.push(format!("{path:?}: size {size} (host {})", m.len()));
            }
        }
        if m.file_type().is_symlink() {
            let target = fs::read_link(tree.join(rel)).unwrap();
            if e.target.as_deref() != Some(&*target.to_string_lossy()) {
                problems.push(format!(
                    "{path:?}: symlink target {:?} (host {target:?})",
                    e.target
                ));
            }
        }
    }
    for path in list.keys() {
        if !host.contains_key(&path[1..]) {
            problems.push(format!("{path:?}: in the image, not on the host"));
        }
    }
    assert!(
        problems.is_empty(),
        "isoinfo -l -R differs from the host tree:\n{}",
        joined(&problems)
    );
}

/// The plain ISO 9660 listing: level 3 identifiers (d-characters, `NAME.EXT;1` for files, at
/// most 30 characters plus `;1`, directories at most 31 without a dot), unique in each directory,
/// one per host entry (with Rock Ridge: symlinks and special files too).
fn check_iso_names(img: &Path, host: &BTreeMap<String, fs::Metadata>, with_specials: bool) {
    let list = isoinfo_list(img, "");
    let mut problems = Vec::new();
    let dchar = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    for (path, entries) in &list {
        let name = path.rsplit('/').next().unwrap();
        let is_dir = entries[0].size % SECTOR == 0 && entries[0].mode.starts_with('d');
        let ok = if is_dir {
            !name.is_empty() && name.len() <= 31 && dchar(name)
        } else {
            match name.strip_suffix(";1").and_then(|n| n.split_once('.')) {
                Some((base, ext)) => {
                    base.len() + ext.len() <= 30
                        && !(base.is_empty() && ext.is_empty())
                        && dchar(base)
                        && dchar(ext)
                }
                None => false,
            }
        };
        if !ok {
            problems.push(format!("{path:?}: not a level 3 identifier"));
        }
    }
    // isoinfo shows each identifier once per extent: uniqueness is per name, so count per dir.
    let mut host_count: BTreeMap<String, usize> = BTreeMap::new();
    for (rel, m) in host {
        if !with_specials && !m.is_file() && !m.is_dir() {
            continue;
        }
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
        *host_count.entry(format!("/{dir}")).or_default() += 1;
    }
    // Directory paths of the plain listing are ISO names; compare counts by directory depth-order
    // is not possible by name, so compare the multiset of counts.
    let mut iso_counts: Vec<usize> = by_dir(&list).values().map(Vec::len).collect();
    let mut want_counts: Vec<usize> = host_count.values().copied().collect();
    iso_counts.sort_unstable();
    want_counts.sort_unstable();
    if iso_counts != want_counts {
        problems.push(format!(
            "entries per directory: image {iso_counts:?}, host {want_counts:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "plain ISO 9660 names are wrong:\n{}",
        joined(&problems)
    );
}

/// Joliet: files and directories only, names of at most 64 UCS-2 characters, unique per
/// directory; names that fit (BMP, ≤ 64) are the host names; the others are shortened.
fn check_joliet_listing(img: &Path, host: &BTreeMap<String, fs::Metadata>) {
    let list = isoinfo_list(img, "-J");
    let mut problems = Vec::new();
    // isoinfo prints Joliet names in a single-byte charset (no UTF-8): ASCII names only;
    // 7-Zip checks the others.
    let fits = |rel: &str| joliet_keeps(rel) && rel.is_ascii();
    let strip = |p: &str| p.strip_suffix(";1").unwrap_or(p).to_string();
    let got: BTreeSet<String> = list.keys().map(|p| strip(p)).collect();
    let mut want_count = 0;
    for (rel, m) in host {
        if !m.is_file() && !m.is_dir() {
            continue;
        }
        want_count += 1;
        if fits(rel) && !got.contains(&format!("/{rel}")) {
            problems.push(format!("/{rel}: missing from isoinfo -l -J"));
        }
    }
    if got.len() != want_count {
        problems.push(format!(
            "{} Joliet paths, {want_count} files and directories on the host",
            got.len()
        ));
    }
    for (dir, names) in by_dir(&list) {
        let set: BTreeSet<&String> = names.iter().collect();
        if set.len() != names.len() {
            // Multi-extent files repeat, but by_dir keys are unique already: this is a real clash.
            problems.push(format!("{dir}: duplicate Joliet names"));
        }
        for n in names {
            if strip(&n).encode_utf16().count() > 64 {
                problems.push(format!("{dir}{n}: Joliet name longer than 64"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "isoinfo -l -J is wrong:\n{}",
        joined(&problems)
    );
}

/// What xorriso extracted equals the host tree: contents and symlink targets (`snapshot`),
/// then type, permission bits and mtime of every entry. Device nodes are skipped (xorriso
/// does not restore them).
fn check_xorriso_extraction(tree: &Path, out: &Path, host: &BTreeMap<String, fs::Metadata>) {
    let is_dev =
        |m: &fs::Metadata| m.file_type().is_char_device() || m.file_type().is_block_device();
    let mut want = snapshot(tree, false);
    want.retain(|rel, _| !host.get(rel).is_some_and(is_dev));
    let got = snapshot(out, false);
    let d = diff_snapshots(&want, &got, 30);
    assert!(d.is_empty(), "xorriso extraction differs: {d:#?}");
    let ext = walk_lstat(out);
    let mut problems = Vec::new();
    for (rel, m) in host {
        if is_dev(m) {
            continue;
        }
        let g = &ext[rel];
        if type_letter(g) != type_letter(m) {
            problems.push(format!(
                "{rel:?}: type {} (host {})",
                type_letter(g),
                type_letter(m)
            ));
        }
        if !m.file_type().is_symlink() && g.mode() & 0o7777 != m.mode() & 0o7777 {
            problems.push(format!(
                "{rel:?}: mode {:o} (host {:o})",
                g.mode() & 0o7777,
                m.mode() & 0o7777
            ));
        }
        if !m.file_type().is_symlink() && g.mtime() != m.mtime() {
            problems.push(format!("{rel:?}: mtime {} (host {})", g.mtime(), m.mtime()));
        }
    }
    assert!(
        problems.is_empty(),
        "xorriso extraction: wrong metadata:\n{}",
        joined(&problems)
    );
}

/// What 7-Zip extracted (Joliet): every file and directory whose path fits Joliet (BMP, ≤ 64
/// characters per name) with the host's bytes, the same number of entries in every directory,
/// and the same bytes in total.
fn check_7z_extraction(tree: &Path, out: &Path) {
    let want = snapshot(tree, false);
    let got = snapshot(out, false);
    let fits = joliet_keeps;
    let mut problems = Vec::new();
    let count = |snap: &BTreeMap<String, Node>| {
        let mut c: BTreeMap<usize, usize> = BTreeMap::new();
        let mut bytes = 0u64;
        for (rel, n) in snap {
            match n {
                Node::Dir => *c.entry(rel.matches('/').count()).or_default() += 1,
                Node::File(d) => {
                    *c.entry(rel.matches('/').count()).or_default() += 1;
                    bytes += d.len() as u64;
                }
                _ => {}
            }
        }
        (c, bytes)
    };
    let (want_c, want_b) = count(&want);
    let (got_c, got_b) = count(&got);
    if want_c != got_c || want_b != got_b {
        problems.push(format!(
            "entries per depth / bytes: 7z {got_c:?} / {got_b}, host {want_c:?} / {want_b}"
        ));
    }
    for (rel, n) in &want {
        if !matches!(n, Node::File(_) | Node::Dir) || !fits(rel) {
            continue;
        }
        match got.get(rel) {
            Some(g) if g == n => {}
            Some(_) => problems.push(format!("{rel:?}: differs in the 7z extraction")),
            None => problems.push(format!("{rel:?}: missing from the 7z extraction")),
        }
    }
    assert!(
        problems.is_empty(),
        "7z extraction differs:\n{}",
        joined(&problems)
    );
}

#[test]
fn full_tree_round_trips_through_isoinfo_xorriso_and_7z() {
    require_tool!("isoinfo", "xorriso", "7z");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "full-tree", build_full_tree);
    let host = walk_lstat(&tree);
    let img = dir.path().join("full.iso");
    let out = build(&tree, &img, &[]);
    // Long Joliet names are shortened with a warning naming them.
    assert!(
        out.stderr_str().contains(&long_name(255)) && out.stderr_str().contains("Joliet"),
        "no warning about the shortened Joliet name\n{}",
        out.describe()
    );
    assert_eq!(fs::metadata(&img).unwrap().len() % SECTOR, 0);

    let d = isoinfo_d(&img);
    assert_eq!(d["Volume id"], "FULL_TREE");
    assert_eq!(d["Logical block size is"], "2048");
    assert_eq!(
        d["Volume size is"].parse::<u64>().unwrap() * SECTOR,
        fs::metadata(&img).unwrap().len()
    );
    assert!(
        d[""].contains("Rock Ridge signatures version 1 found"),
        "{}",
        d[""]
    );
    assert!(d[""].contains("Joliet with UCS level 3 found"), "{}", d[""]);

    check_rock_ridge_listing(&img, &host, &tree);
    check_iso_names(&img, &host, true);
    check_joliet_listing(&img, &host);

    let x = dir.path().join("xorriso");
    xorriso_extract(&img, &x, &[]);
    check_xorriso_extraction(&tree, &x, &host);

    let z = dir.path().join("7z");
    sevenz_extract(&img, &z);
    check_7z_extraction(&tree, &z);
}

// ------------------------------------------------------------------------------------------------
// Options

#[test]
fn volume_id_defaults_to_the_directory_name_and_volid_sets_it() {
    require_tool!("isoinfo");
    let dir = tempdir();
    let img = dir.path().join("v.iso");
    let volid = |tree: &Path, args: &[&str]| {
        let _ = fs::remove_file(&img);
        build(tree, &img, args);
        isoinfo_d(&img)["Volume id"].clone()
    };
    let t = tree_named(dir.path(), "my-data.v2", |t| {
        write_file(t, "a", b"a");
    });
    assert_eq!(volid(&t, &[]), "MY_DATA_V2");
    assert_eq!(volid(&t, &["--volid", "DATA_1"]), "DATA_1");
    assert_eq!(volid(&t, &["--volid", "data"]), "DATA");
    let max = "A".repeat(32);
    assert_eq!(volid(&t, &["--volid", &max]), max);
    let t2 = tree_named(dir.path(), "日本", |t| {
        write_file(t, "a", b"a");
    });
    assert_eq!(volid(&t2, &[]), "CDROM");
    let t3 = tree_named(
        dir.path(),
        "a directory name much longer than thirty-two characters",
        |t| {
            write_file(t, "a", b"a");
        },
    );
    assert_eq!(volid(&t3, &[]), "A_DIRECTORY_NAME_MUCH_LONGER_THA");
    for bad in ["bad id", "semi;colon", &"B".repeat(33)] {
        let _ = fs::remove_file(&img);
        let out = build_image_fails("iso", &t, &img, &["--volid", bad]);
        assert!(
            out.stderr_str().contains("volume identifier"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn no_rock_ridge_and_no_joliet_leave_their_trees_out() {
    require_tool!("isoinfo", "xorriso", "7z");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "opts", |t| {
        write_file(
            t,
            "Long file name with spaces, more than sixty-four characters, aaaaa.txt",
            b"long",
        );
        write_file(t, "lower.txt", b"lower");
        write_file(t, "sub dir/日本語.txt", b"unicode");
        symlink("lower.txt", &t.join("link"));
        mknod(&t.join("fifo"), rustix::fs::FileType::Fifo, 0o644, 0, 0);
        chmod(&write_file(t, "exec.sh", b"#!/bin/sh\n"), 0o755);
    });
    let host = walk_lstat(&tree);

    // Without Rock Ridge: no RR signatures; symlinks and the fifo are left out; Joliet names
    // (what xorriso then reads) are the host names up to 64 characters; modes are not kept.
    let nr = dir.path().join("nr.iso");
    build(&tree, &nr, &["--no-rock-ridge"]);
    let d = isoinfo_d(&nr);
    assert!(!d[""].contains("Rock Ridge signatures"), "{}", d[""]);
    assert!(d[""].contains("Joliet with UCS level 3 found"), "{}", d[""]);
    check_iso_names(&nr, &host, false);
    let plain = isoinfo_list(&nr, "");
    assert!(
        plain.values().all(|e| !e[0].mode.starts_with('l')),
        "{plain:?}"
    );
    let rr = isoinfo_list(&nr, "-R");
    assert!(
        rr.keys().all(|k| k.ends_with(";1") || !k.contains('.')),
        "isoinfo -R finds Rock Ridge names: {:?}",
        rr.keys()
    );
    let x = dir.path().join("nr-x");
    xorriso_extract(&nr, &x, &[]);
    let got: BTreeSet<String> = walk_lstat(&x).into_keys().collect();
    let want: BTreeSet<String> = [
        "Long file name with spaces, more than sixty-four characters,",
        "lower.txt",
        "sub dir",
        "sub dir/日本語.txt",
        "exec.sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for w in &want {
        assert!(
            got.iter().any(|g| g.starts_with(w.as_str())),
            "{w:?} not in {got:?}"
        );
    }
    assert_eq!(fs::read(x.join("sub dir/日本語.txt")).unwrap(), b"unicode");

    // Without Joliet: no Joliet descriptor; Rock Ridge still gives everything back.
    let nj = dir.path().join("nj.iso");
    build(&tree, &nj, &["--no-joliet"]);
    let d = isoinfo_d(&nj);
    assert!(!d[""].contains("Joliet with UCS"), "{}", d[""]);
    assert!(
        d[""].contains("Rock Ridge signatures version 1 found"),
        "{}",
        d[""]
    );
    check_rock_ridge_listing(&nj, &host, &tree);
    let x = dir.path().join("nj-x");
    xorriso_extract(&nj, &x, &[]);
    check_xorriso_extraction(&tree, &x, &host);
    // 7-Zip (no Joliet to read) sees every regular file.
    let z = dir.path().join("nj-7z");
    sevenz_extract(&nj, &z);
    let files = snapshot(&z, false)
        .values()
        .filter(|n| matches!(n, Node::File(_)))
        .count();
    assert!(files >= 4, "7z extracted {files} files");

    // Neither: a plain ISO 9660 level 3 image.
    let none = dir.path().join("none.iso");
    build(&tree, &none, &["--no-rock-ridge", "--no-joliet"]);
    let d = isoinfo_d(&none);
    assert!(
        !d[""].contains("Joliet with UCS") && !d[""].contains("Rock Ridge signatures"),
        "{}",
        d[""]
    );
    check_iso_names(&none, &host, false);
    let x = dir.path().join("none-x");
    xorriso_extract(&none, &x, &[]);
    let total: u64 = walk_lstat(&x)
        .values()
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert_eq!(total, 4 + 5 + 7 + 10);
}

// ------------------------------------------------------------------------------------------------
// Big files

/// Data ranges of the sparse 4.5 GiB file: the start, across the first extent's end (4 GiB −
/// 2048, where ISO level 3 starts a second extent) and across 4 GiB, and the end.
const BIG_SIZE: u64 = 4 * GIB + GIB / 2;
const BIG_DATA: &[(u64, u64)] = &[
    (0, 64 * 1024),
    (4 * GIB - 2048 - 3000, 6000),
    (4 * GIB - 100, 300),
    (BIG_SIZE - 5000, 5000),
];

#[test]
fn a_sparse_file_over_4_gib_takes_several_extents_stays_sparse_and_reads_back() {
    require_tool!("isoinfo", "xorriso", "7z", "qemu-img");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "big", |t| {
        let f = fs::File::create(t.join("huge.bin")).unwrap();
        f.set_len(BIG_SIZE).unwrap();
        for (i, &(off, len)) in BIG_DATA.iter().enumerate() {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&random_bytes(50 + i as u64, len as usize), off)
                .unwrap();
        }
        write_file(t, "after.txt", b"a small file after the big one\n");
    });
    let img = dir.path().join("big.iso");
    build(&tree, &img, &[]);
    let meta = fs::metadata(&img).unwrap();
    assert!(meta.len() > BIG_SIZE, "image of {} bytes", meta.len());
    assert!(
        meta.blocks() * 512 < 16 * MIB,
        "-o output is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );

    // Several extents, each a whole number of sectors but the last, adding up to the size.
    let list = isoinfo_list(&img, "-R");
    let extents = &list["/huge.bin"];
    assert!(extents.len() >= 2, "{extents:?}");
    assert_eq!(extents.iter().map(|e| e.size).sum::<u64>(), BIG_SIZE);
    for w in extents.windows(2) {
        assert!(
            w[0].size % SECTOR == 0 && w[0].size < 4 * GIB,
            "{extents:?}"
        );
        assert_eq!(w[1].lba, w[0].lba + w[0].size / SECTOR, "{extents:?}");
    }
    // The bytes at each extent's place are the host's (checked straight in the image).
    let host = fs::File::open(tree.join("huge.bin")).unwrap();
    for &(off, len) in BIG_DATA {
        let mut want = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&host, &mut want, off).unwrap();
        let got = read_at(&img, extents[0].lba * SECTOR + off, len as usize);
        assert!(want == got, "image bytes at file offset {off} differ");
        // And as libisofs reads them.
        let cut = xorriso_cut(&img, "/huge.bin", off, len, &dir.path().join("cut"));
        assert!(want == cut, "xorriso -extract_cut at {off} differs");
    }
    let lsdl = xorriso_lsdl(&img, "/huge.bin");
    assert!(
        lsdl.len() == 1 && lsdl[0].contains(&format!(" {BIG_SIZE} ")),
        "{lsdl:?}"
    );
    let sz = run_ok(Command::new("7z").arg("l").arg(&img)).stdout_str();
    assert!(
        sz.lines()
            .any(|l| l.contains(&BIG_SIZE.to_string()) && l.ends_with("huge.bin")),
        "7z l does not show huge.bin with {BIG_SIZE} bytes\n{sz}"
    );
    // The file after it is intact.
    let after = xorriso_cut(&img, "/after.txt", 0, 31, &dir.path().join("cut2"));
    assert_eq!(after, b"a small file after the big one\n");

    // Served over NBD: the same bytes (holes let qemu-img skip most of the 4.5 GiB).
    let server = Server::disksynth_unix(dir.path(), &["iso", tree.to_str().unwrap()]);
    assert_eq!(nbdinfo_size(server.uri()), meta.len());
    qemu_img_identical(server.uri(), &img);
}

// ------------------------------------------------------------------------------------------------
// Exports, determinism, dates

#[test]
fn nbd_export_equals_o_output_and_builds_are_byte_identical() {
    require_tool!("qemu-img", "nbdinfo", "cmp", "cp");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "same", |t| {
        build_awkward_tree(t);
        build_deep_dirs(t, 9);
        symlink("README.TXT", &t.join("link"));
    });
    let a = dir.path().join("a.iso");
    let b = dir.path().join("b.iso");
    build(&tree, &a, &[]);
    build(&tree, &b, &[]);
    cmp_files(&a, &b);

    // A copy elsewhere with the same name and mtimes (new inodes, atimes, ctimes): same bytes.
    let other = dir.path().join("elsewhere");
    fs::create_dir(&other).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&other));
    let c = dir.path().join("c.iso");
    build(&other.join("same"), &c, &[]);
    cmp_files(&a, &c);

    let server = Server::disksynth_unix(dir.path(), &["iso", tree.to_str().unwrap()]);
    assert_eq!(nbdinfo_size(server.uri()), fs::metadata(&a).unwrap().len());
    qemu_img_identical(server.uri(), &a);
}

#[test]
fn volume_dates_are_source_date_epoch_or_the_newest_mtime_and_file_times_stay() {
    require_tool!("xorriso");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "dates", |t| {
        write_file(t, "old.txt", b"old");
        write_file(t, "sub/new.txt", b"new");
    });
    set_mtime(&tree.join("old.txt"), 1_500_000_000);
    set_mtime(&tree.join("sub/new.txt"), 1_600_000_000);
    set_mtime(&tree.join("sub"), 1_500_000_100);
    set_mtime(&tree, 1_500_000_200);
    let img = |n: &str| dir.path().join(format!("{n}.iso"));

    // Newest mtime.
    build(&tree, &img("m"), &[]);
    let [created, modified, _] = pvd_dates(&img("m"));
    assert_eq!(created, (utc_digits(1_600_000_000) + "00", 0));
    assert_eq!(modified, created);

    // SOURCE_DATE_EPOCH: volume dates only; the file times stay the host mtimes.
    let mut cmd = generator_cmd("iso", &tree, &[]);
    cmd.env("SOURCE_DATE_EPOCH", "1000000000");
    output_with(cmd, &img("sde"));
    let [created, modified, _] = pvd_dates(&img("sde"));
    assert_eq!(created, ("2001090901464000".to_string(), 0));
    assert_eq!(modified, created);
    let x = dir.path().join("x");
    xorriso_extract(&img("sde"), &x, &[]);
    for (rel, t) in [
        ("old.txt", 1_500_000_000),
        ("sub/new.txt", 1_600_000_000),
        ("sub", 1_500_000_100),
    ] {
        assert_eq!(fs::metadata(x.join(rel)).unwrap().mtime(), t, "{rel}");
    }

    // A file from the future does not date the volume in the future, nor after the release
    // date baked into disksynth (never the clock: see
    // reproducible_without_source_date_epoch_with_a_file_from_2038_and_over_nbd).
    set_mtime(&tree.join("old.txt"), 4_000_000_000);
    build(&tree, &img("f"), &[]);
    let [created, _, _] = pvd_dates(&img("f"));
    assert_eq!(created, (utc_digits(LATEST_VOLUME_TIME) + "00", 0));
}

#[test]
fn reproducible_without_source_date_epoch_with_a_file_from_2038_and_over_nbd() {
    require_tool!("xorriso", "isoinfo", "nbdcopy");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "future", |t| {
        write_file(t, "today.txt", b"today\n");
        write_file(t, "sub/from-2038.txt", b"later\n");
    });
    set_mtime(&tree.join("sub/from-2038.txt"), FUTURE_MTIME);
    set_mtime(&tree.join("sub"), FUTURE_MTIME);
    let esp = tree_named(dir.path(), "esp", |t| {
        write_file(t, "EFI/BOOT/BOOTX64.EFI", &random_bytes(4, 3000));
    });
    set_mtime(&esp.join("EFI/BOOT/BOOTX64.EFI"), FUTURE_MTIME);
    // Plain, and hybrid with a synthesized EFI image (GPT and MBR with derived GUIDs and
    // signature, a FAT volume inside): built twice a second apart, and served, the same bytes.
    let esp_arg = esp.to_str().unwrap();
    for (name, args) in [
        ("plain", vec![]),
        ("hybrid", vec!["--efi-boot-dir", esp_arg, "--hybrid"]),
    ] {
        let out = dir.path().join(name);
        fs::create_dir(&out).unwrap();
        let img = assert_reproducible("iso", &tree, &out, &args);
        let [created, modified, _] = pvd_dates(&img);
        assert_eq!(
            created,
            (utc_digits(LATEST_VOLUME_TIME) + "00", 0),
            "{name}"
        );
        assert_eq!(modified, created, "{name}");
        assert!(isoinfo_d(&img).contains_key("Volume id"), "{name}");
        let x = out.join("x");
        xorriso_extract(&img, &x, &[]);
        assert_eq!(fs::read(x.join("sub/from-2038.txt")).unwrap(), b"later\n");
        assert_eq!(
            fs::metadata(x.join("sub/from-2038.txt")).unwrap().mtime(),
            FUTURE_MTIME,
            "{name}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Host changes

#[test]
fn host_file_changed_after_start_up_gives_eio_naming_it_and_others_still_read() {
    require_tool!("qemu-io", "nbdcopy", "isoinfo");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "eio", |t| {
        write_file(t, "victim.bin", &random_bytes(1, 256 * 1024));
        write_file(t, "same-size.bin", &random_bytes(2, 128 * 1024));
        write_file(t, "untouched.bin", &[0x5a; 64 * 1024]);
    });
    let mut server = Server::disksynth_unix(dir.path(), &["iso", tree.to_str().unwrap()]);
    let img = dir.path().join("served.iso");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&img));
    let list = isoinfo_list(&img, "-R");
    let at = |name: &str| list[&format!("/{name}")][0].lba * SECTOR;
    // The descriptors (sectors 16-18) come before every file.
    assert!(["victim.bin", "same-size.bin", "untouched.bin"]
        .iter()
        .all(|n| at(n) >= 19 * SECTOR));

    let read = |server: &Server, cmds: &[String]| {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-r", "-f", "raw"]);
        for c in cmds {
            cmd.arg("-c").arg(c);
        }
        run(cmd.arg(server.uri()), CMD_TIMEOUT)
    };
    let eio = |server: &Server, name: &str| {
        let out = read(server, &[format!("read {} 65536", at(name))]);
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

    // Grown.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(tree.join("victim.bin"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"appended").unwrap();
    drop(f);
    eio(&server, "victim.bin");

    // Rewritten with the same size (only the mtime tells).
    fs::write(tree.join("same-size.bin"), random_bytes(3, 128 * 1024)).unwrap();
    set_mtime(&tree.join("same-size.bin"), 1_234_567_890);
    eio(&server, "same-size.bin");

    // Metadata and the untouched file are still served.
    assert!(
        server.is_running(),
        "server died:\n{}",
        server.stderr_text()
    );
    let out = read(
        &server,
        &[
            format!("read 0 {}", 19 * SECTOR),
            format!("read -P 0x5a {} 65536", at("untouched.bin")),
        ],
    );
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        out.status.success() && !all.contains("failed") && !all.contains("error"),
        "{}",
        out.describe()
    );
}

/// Hard links are one extent in the image (as mkisofs records them), with one Rock Ridge serial
/// number and the tree's link count: the data is stored once, and xorriso with `-hardlinks on`
/// extracts them as links again.
#[test]
fn hard_links_share_one_extent_and_extract_as_links() {
    require_tool!("isoinfo", "xorriso");
    let dir = tempdir();
    let tree = tree_named(dir.path(), "links", |t| {
        fs::create_dir(t.join("sub")).unwrap();
        fs::write(t.join("a.bin"), random_bytes(21, 1 << 20)).unwrap();
        fs::hard_link(t.join("a.bin"), t.join("sub/b.bin")).unwrap();
        fs::hard_link(t.join("a.bin"), t.join("z.bin")).unwrap();
        fs::write(t.join("other.bin"), random_bytes(22, 1000)).unwrap();
    });
    let img = dir.path().join("links.iso");
    build(&tree, &img, &[]);
    let list = isoinfo_list(&img, "-R");
    let lba = |path: &str| list[path][0].lba;
    assert_eq!(lba("/a.bin"), lba("/sub/b.bin"));
    assert_eq!(lba("/a.bin"), lba("/z.bin"));
    assert_ne!(lba("/a.bin"), lba("/other.bin"));
    assert!(
        fs::metadata(&img).unwrap().len() < (1 << 20) + (512 << 10),
        "the 1 MiB file is stored more than once"
    );
    let out = dir.path().join("out");
    // -hardlinks must come before -indev: xorriso matches links while loading the tree.
    run_ok(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-hardlinks", "on", "-indev"])
            .arg(&img)
            .args(["-extract", "/"])
            .arg(&out),
    );
    let a = fs::metadata(out.join("a.bin")).unwrap();
    assert_eq!(a.nlink(), 3, "extracted link count");
    assert_eq!(fs::metadata(out.join("sub/b.bin")).unwrap().ino(), a.ino());
    assert!(fs::read(out.join("z.bin")).unwrap() == random_bytes(21, 1 << 20));
}
