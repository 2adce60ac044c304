//! Unit tests: the virtual image against the engine's own materialized
//! image, hard links, determinism, sizes. (`e2fsck`/`debugfs` checks live
//! in the end-to-end tests.)

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::Path;

use mkext4::reader::Fs;
use mkext4::sink::VecSink;
use synth::BlockDev;

use super::image::{content_of, seal};
use super::plan::{Plan, What};
use super::*;

fn tree_of(dir: &Path) -> tree::Tree {
    tree::scan(dir, &tree::ScanOptions::default()).unwrap()
}

fn read_all(map: &synth::RegionMap) -> Vec<u8> {
    let mut buf = vec![0u8; map.size() as usize];
    map.read_at(&mut buf, 0).unwrap();
    buf
}

/// A small tree with every kind of entry.
fn sample() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fs::create_dir_all(p.join("etc/deep/er")).unwrap();
    fs::create_dir(p.join("empty")).unwrap();
    fs::write(p.join("empty-file"), b"").unwrap();
    fs::write(p.join("etc/hostname"), b"husky\n").unwrap();
    fs::write(p.join("etc/deep/er/block"), vec![7u8; 4096]).unwrap();
    let odd: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
    fs::write(p.join("odd"), &odd).unwrap();
    fs::hard_link(p.join("odd"), p.join("etc/odd-link")).unwrap();
    symlink("hostname", p.join("etc/fast")).unwrap();
    symlink("x".repeat(200), p.join("etc/slow")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    // Sparse: a hole, 3 bytes of data, a hole, data, a hole at the end.
    let f = fs::File::create(p.join("sparse")).unwrap();
    f.set_len(1 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"abc", 64 << 10).unwrap();
    f.write_all_at(&[9u8; 5000], 512 << 10).unwrap();
    d
}

/// The engine's own output for the same plan, file data filled from the
/// host files.
fn materialized(tree: &tree::Tree, opts: &Ext4Options) -> Vec<u8> {
    let plan = Plan::new(tree).unwrap();
    let sealed = seal(tree, &plan, opts).unwrap();
    let mut sink = VecSink::default();
    let mut w = sealed.layout.writer(&mut sink).unwrap();
    for (i, e) in plan.entries.iter().enumerate() {
        let What::File { data } = &e.what else {
            continue;
        };
        if sealed.layout.extents(sealed.handles[i]).is_empty() {
            continue;
        }
        let bytes = fs::read(&e.node.path).unwrap();
        let mut data_bytes = Vec::new();
        match data {
            Some(ranges) => {
                for &(off, len) in ranges {
                    data_bytes.extend_from_slice(&bytes[off as usize..(off + len) as usize]);
                }
            }
            None => data_bytes = bytes,
        }
        w.fill(sealed.handles[i], &mut data_bytes.as_slice().by_ref())
            .unwrap();
    }
    w.finish().unwrap();
    sink.buf
}

#[test]
fn virtual_image_equals_the_engines_materialized_image() {
    let d = sample();
    let t = tree_of(d.path());
    let opts = Ext4Options::default();
    let image = build(&t, &opts).unwrap();
    assert_eq!(image.sparse_files, 1);
    let virt = read_all(&image.map);
    let real = materialized(&t, &opts);
    assert_eq!(virt.len(), real.len());
    let first_diff = virt.iter().zip(&real).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "virtual and materialized images differ");
    let starts: Vec<u64> = image.map.regions().iter().map(|r| r.start).collect();
    synth::testing::check_dev(&image.map, &real, &starts);
}

#[test]
fn files_links_and_holes_read_back() {
    let d = sample();
    let image = build(&tree_of(d.path()), &Ext4Options::default()).unwrap();
    let bytes = read_all(&image.map);
    let fs = Fs::open(&bytes[..]).unwrap();
    let odd = fs.resolve("/odd").unwrap();
    assert_eq!(fs.resolve("/etc/odd-link").unwrap(), odd, "same inode");
    assert_eq!(fs.inode(odd).unwrap().links_count, 2);
    assert_eq!(
        fs.read_file(odd).unwrap(),
        fs::read(d.path().join("odd")).unwrap()
    );
    let sparse = fs.resolve("/sparse").unwrap();
    assert_eq!(
        fs.read_file(sparse).unwrap(),
        fs::read(d.path().join("sparse")).unwrap()
    );
    // 2 data blocks (the 3 bytes, the 5000 bytes take 2): 3 blocks of 8 sectors.
    assert_eq!(fs.inode(sparse).unwrap().blocks, 3 * 8);
    let slow = fs.resolve("/etc/slow").unwrap();
    assert_eq!(fs.symlink_target(slow).unwrap(), "x".repeat(200).as_bytes());
    assert!(fs.resolve("/lost+found").is_ok());
    assert!(fs.verify().unwrap().is_empty());
}

#[test]
fn same_tree_same_bytes_and_uuid_follows_content() {
    let d = sample();
    let opts = Ext4Options::default();
    let a = build(&tree_of(d.path()), &opts).unwrap();
    let b = build(&tree_of(d.path()), &opts).unwrap();
    assert_eq!(a.uuid, b.uuid);
    assert!(read_all(&a.map) == read_all(&b.map), "two builds differ");
    fs::write(d.path().join("etc/hostname"), b"beagle\n").unwrap();
    let c = build(&tree_of(d.path()), &opts).unwrap();
    assert_ne!(a.uuid, c.uuid);
    let fixed = Ext4Options {
        uuid: Some([0x42; 16]),
        ..Ext4Options::default()
    };
    assert_eq!(build(&tree_of(d.path()), &fixed).unwrap().uuid, [0x42; 16]);
}

#[test]
fn too_small_size_says_what_is_needed_and_that_size_works() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("big"), vec![1u8; 40 << 20]).unwrap();
    let t = tree_of(d.path());
    let small = Ext4Options {
        size: Some(32 << 20),
        ..Ext4Options::default()
    };
    let needed = match build(&t, &small) {
        Err(Ext4Error::TooSmall { needed, .. }) => needed,
        r => panic!("expected TooSmall, got {r:?}"),
    };
    assert!(needed > 40 << 20, "{needed}");
    let exact = Ext4Options {
        size: Some(needed),
        ..Ext4Options::default()
    };
    assert_eq!(build(&t, &exact).unwrap().size, needed);
    let e = build(&t, &small).unwrap_err().to_string();
    assert!(e.contains("needs at least"), "{e}");
}

#[test]
fn sizes_that_are_not_whole_blocks_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let opts = Ext4Options {
        size: Some((64 << 20) + 512),
        ..Ext4Options::default()
    };
    let e = build(&tree_of(d.path()), &opts).unwrap_err();
    assert!(matches!(e, Ext4Error::BadSize { .. }), "{e}");
}

/// Files of `sizes` bytes, as a host filesystem that allows them would give (tmpfs, XFS and
/// btrfs take sparse files of exabytes), named f0, f1, ...; no host file is ever read.
fn tree_with_sizes(sizes: &[u64]) -> (tempfile::TempDir, tree::Tree) {
    let d = tempfile::tempdir().unwrap();
    for i in 0..sizes.len() {
        fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
    }
    let mut t = tree_of(d.path());
    let tree::NodeKind::Dir(files) = &mut t.root.kind else {
        unreachable!()
    };
    for (f, &size) in files.iter_mut().zip(sizes) {
        f.meta.size = size;
        // Fully allocated: nothing probes the host file for holes.
        f.meta.blocks = size.div_ceil(512);
    }
    (d, t)
}

#[test]
fn files_of_exabytes_are_refused_at_once() {
    // Found by fuzz/ (ext4_plan): the size estimate counted the backup superblocks of the
    // 10^11 groups such a file needs one by one (hours), and four such files overflowed the
    // block count.
    let start = std::time::Instant::now();
    for sizes in [&[14_113_384_210_639_212_731][..], &[1 << 62; 5][..]] {
        let (_d, t) = tree_with_sizes(sizes);
        for size in [None, Some(1 << 30)] {
            let opts = Ext4Options {
                size,
                ..Ext4Options::default()
            };
            let e = build(&t, &opts).unwrap_err();
            assert!(matches!(e, Ext4Error::BadSize { .. }), "{e}");
            assert!(e.to_string().contains("16 TiB"), "{e}");
        }
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn times_beyond_what_an_inode_holds_are_clamped() {
    // Found by fuzz/ (ext4_plan): a host time near the end of i64 overflowed in the engine's
    // timestamp encoding, and any time past 2446 was stored modulo 2^34 seconds.
    let (_d, mut t) = tree_with_sizes(&[0, 0, 0, 0]);
    let tree::NodeKind::Dir(files) = &mut t.root.kind else {
        unreachable!()
    };
    let (min, max) = plan::TIME_RANGE;
    let cases = [(i64::MAX, max), (i64::MIN, min), (max + 1, max), (max, max)];
    for (f, (secs, _)) in files.iter_mut().zip(cases) {
        f.meta.mtime.secs = secs;
    }
    let image = build(&t, &Ext4Options::default()).unwrap();
    let bytes = read_all(&image.map);
    let fs = Fs::open(&bytes[..]).unwrap();
    for (i, (_, want)) in cases.into_iter().enumerate() {
        let inode = fs.inode(fs.resolve(&format!("/f{i}")).unwrap()).unwrap();
        let (secs, _) = mkext4::spec::Inode::timestamp(inode.mtime, inode.mtime_extra);
        assert_eq!(secs, want, "f{i}");
    }
    assert!(fs.verify().unwrap().is_empty());
}

#[test]
fn owner_root_makes_everything_root_owned() {
    let d = sample();
    let opts = Ext4Options {
        owner: Owner::Root,
        ..Ext4Options::default()
    };
    let bytes = read_all(&build(&tree_of(d.path()), &opts).unwrap().map);
    let fs = Fs::open(&bytes[..]).unwrap();
    let i = fs.inode(fs.resolve("/etc/hostname").unwrap()).unwrap();
    assert_eq!((i.uid, i.gid), (0, 0));
}

#[test]
fn big_directories_fit_the_estimate() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        fs::write(
            d.path().join(format!("a-rather-long-file-name-{i:06}")),
            b"x",
        )
        .unwrap();
    }
    let t = tree_of(d.path());
    let c = content_of(&t);
    let image = build(&t, &Ext4Options::default()).unwrap();
    assert!(image.size >= c.blocks * 4096);
    let bytes = read_all(&image.map);
    let fs = Fs::open(&bytes[..]).unwrap();
    let ino = fs.resolve("/a-rather-long-file-name-002999").unwrap();
    assert_eq!(fs.read_file(ino).unwrap(), b"x");
}

#[test]
fn xattrs_acls_and_non_utf8_names_are_stored_exactly() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    fs::write(p.join(name), b"x").unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"t\xff\xfe"), p.join("link")).unwrap();
    fs::write(p.join("f"), b"f").unwrap();
    let set = |path: &Path, n: &str, v: &[u8]| {
        rustix::fs::setxattr(path, n, v, rustix::fs::XattrFlags::empty())
    };
    if let Err(e) = set(&p.join("f"), "user.small", b"v") {
        eprintln!("SKIPPED: the temp filesystem has no user xattrs ({e})");
        return;
    }
    set(&p.join("f"), "user.big", &[0x5a; 3000]).unwrap();
    // An ACL with a named user (kernel xattr format, version 2).
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 4321),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    set(&p.join(name), "system.posix_acl_access", &acl).unwrap();
    let opts = tree::ScanOptions {
        xattrs: true,
        ..tree::ScanOptions::default()
    };
    let t = tree::scan(p, &opts).unwrap();
    let image = build(&t, &Ext4Options::default()).unwrap();
    let bytes = read_all(&image.map);
    let fs = Fs::open(&bytes[..]).unwrap();
    assert!(fs.verify().unwrap().is_empty(), "{:?}", fs.verify());
    // Names and targets are bytes.
    let cafe = fs
        .lookup(2, b"caf\xe9")
        .unwrap()
        .expect("caf\\xe9 is there");
    let link = fs.resolve("/link").unwrap();
    assert_eq!(fs.symlink_target(link).unwrap(), b"t\xff\xfe");
    // user.small in the inode, user.big in the block, both exact.
    let f = fs.resolve("/f").unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = fs
        .xattrs(f)
        .unwrap()
        .into_iter()
        .map(|x| (x.full_name().unwrap(), x.value))
        .collect();
    assert!(got.contains(&(b"user.small".to_vec(), b"v".to_vec())));
    assert!(got.contains(&(b"user.big".to_vec(), vec![0x5a; 3000])));
    assert_ne!(fs.inode(f).unwrap().file_acl, 0, "an xattr block");
    // The ACL in ext4's format: version 1, short entries but for the named user.
    let acls = fs.xattrs(cafe).unwrap();
    let a = acls
        .iter()
        .find(|x| x.name_index == 2)
        .expect("an access ACL");
    assert_eq!(
        a.value,
        [
            &[1, 0, 0, 0][..],
            &[1, 0, 6, 0],
            &[2, 0, 4, 0, 0xe1, 0x10, 0, 0],
            &[4, 0, 4, 0],
            &[0x10, 0, 4, 0],
            &[0x20, 0, 0, 0]
        ]
        .concat()
    );
    // The same tree gives the same bytes; without xattrs, none.
    let again = read_all(
        &build(&tree::scan(p, &opts).unwrap(), &Ext4Options::default())
            .unwrap()
            .map,
    );
    assert!(again == bytes, "two builds differ");
    let plain = build(&tree_of(p), &Ext4Options::default()).unwrap();
    let plain_bytes = read_all(&plain.map);
    let fs = Fs::open(&plain_bytes[..]).unwrap();
    assert!(fs.xattrs(fs.resolve("/f").unwrap()).unwrap().is_empty());
}

#[test]
fn xattrs_too_big_for_an_inode_and_a_block_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("crowded"), b"").unwrap();
    let mut t = tree_of(d.path());
    // More than a host filesystem without ea_inode holds, so made up here.
    let tree::NodeKind::Dir(children) = &mut t.root.kind else {
        unreachable!()
    };
    let xattrs: Vec<tree::Xattr> = (0..3)
        .map(|i| tree::Xattr {
            name: format!("user.v{i}").into_bytes(),
            value: vec![1; 2000],
        })
        .collect();
    children[0].xattrs = xattrs.clone();
    let e = build(&t, &Ext4Options::default()).unwrap_err();
    assert!(matches!(e, Ext4Error::XattrsTooBig { .. }), "{e}");
    assert!(e.to_string().contains("crowded"), "{e}");
    // Two fit one block: 32-byte header + 2 x (20-byte entry + 2000) + 4.
    let tree::NodeKind::Dir(children) = &mut t.root.kind else {
        unreachable!()
    };
    children[0].xattrs = xattrs[..2].to_vec();
    let image = build(&t, &Ext4Options::default()).unwrap();
    let bytes = read_all(&image.map);
    let fs = Fs::open(&bytes[..]).unwrap();
    assert_eq!(fs.xattrs(fs.resolve("/crowded").unwrap()).unwrap().len(), 2);
}

#[test]
fn namespaces_ext4_cannot_hold_are_left_out_and_malformed_acls_refused() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), b"").unwrap();
    let mut t = tree_of(d.path());
    let x = |name: &[u8], value: &[u8]| tree::Xattr {
        name: name.to_vec(),
        value: value.to_vec(),
    };
    let tree::NodeKind::Dir(children) = &mut t.root.kind else {
        unreachable!()
    };
    children[0].xattrs = vec![
        x(b"btrfs.compression", b"zstd"),
        x(b"system.data", b""),
        x(b"system.nfs4_acl", b"\0\0\0\0"),
        x(b"user.kept", b"yes"),
    ];
    let image = build(&t, &Ext4Options::default()).unwrap();
    let bytes = read_all(&image.map);
    let fs = Fs::open(&bytes[..]).unwrap();
    let got: Vec<Vec<u8>> = fs
        .xattrs(fs.resolve("/f").unwrap())
        .unwrap()
        .iter()
        .map(|e| e.full_name().unwrap())
        .collect();
    assert_eq!(got, [b"user.kept".to_vec()]);
    // An ACL the kernel would not have given: an error naming the file and the attribute.
    let tree::NodeKind::Dir(children) = &mut t.root.kind else {
        unreachable!()
    };
    children[0].xattrs = vec![x(b"system.posix_acl_access", b"\x02\0\0\0\x01")];
    let e = build(&t, &Ext4Options::default()).unwrap_err();
    assert!(matches!(e, Ext4Error::Acl { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("/f") && msg.contains("posix_acl_access"),
        "{msg}"
    );
}
