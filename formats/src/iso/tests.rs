//! Whole-image tests: fields at their ECMA-119 offsets, determinism,
//! multi-extent files, sector-straddling avoidance.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use synth::BlockDev;

use super::*;

fn tree_of(dir: &Path) -> tree::Tree {
    tree::scan(dir, &tree::ScanOptions::default()).unwrap()
}

fn read(img: &IsoImage, sector: u64, sectors: u64) -> Vec<u8> {
    let mut v = vec![0u8; (sectors * 2048) as usize];
    img.map.read_at(&mut v, sector * 2048).unwrap();
    v
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

/// (offset in the directory, identifier, extent, size, flags, system use)
/// of each record in the root directory of the primary (or Joliet) tree.
type Record = (usize, Vec<u8>, u32, u32, u8, Vec<u8>);

fn root_records(img: &IsoImage, joliet: bool) -> Vec<Record> {
    let pvd = read(img, if joliet { 17 } else { 16 }, 1);
    let (extent, size) = (le32(&pvd[158..]), le32(&pvd[166..]));
    let dir = read(img, u64::from(extent), u64::from(size) / 2048);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < dir.len() {
        let len = dir[pos] as usize;
        if len == 0 {
            pos = (pos / 2048 + 1) * 2048;
            continue;
        }
        let r = &dir[pos..pos + len];
        let id_len = r[32] as usize;
        let su_start = 33 + id_len + usize::from(id_len.is_multiple_of(2));
        out.push((
            pos,
            r[33..33 + id_len].to_vec(),
            le32(&r[2..]),
            le32(&r[10..]),
            r[25],
            r[su_start..].to_vec(),
        ));
        pos += len;
    }
    out
}

#[test]
fn same_tree_same_bytes_and_volume_time_from_the_option() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("a.txt"), b"hello").unwrap();
    fs::create_dir(d.path().join("Sub Dir")).unwrap();
    fs::write(d.path().join("Sub Dir/b"), b"").unwrap();
    symlink("a.txt", d.path().join("link")).unwrap();
    let opts = IsoOptions {
        timestamp: Some(1_700_000_000),
        ..IsoOptions::default()
    };
    let a = build(&tree_of(d.path()), &opts).unwrap();
    let b = build(&tree_of(d.path()), &opts).unwrap();
    let all = |i: &IsoImage| read(i, 0, u64::from(i.blocks));
    assert!(all(&a) == all(&b));
    let pvd = read(&a, 16, 1);
    assert_eq!(&pvd[..6], b"\x01CD001");
    assert_eq!(&pvd[40..45], b"CDROM");
    assert_eq!(&pvd[813..829], b"2023111422132000");
    assert_eq!(le32(&pvd[80..]), a.blocks);
    assert_eq!(read(&a, 18, 1)[0], 255, "terminator after the Joliet SVD");
    // File data is 2048-aligned and mapped from the host file.
    let recs = root_records(&a, false);
    let file = recs.iter().find(|r| r.1 == b"A.TXT;1").unwrap();
    assert_eq!(&read(&a, u64::from(file.2), 1)[..6], b"hello\0");
}

#[test]
fn default_volume_time_is_the_newest_mtime_at_most_the_release_date_and_place_free() {
    let d = tempfile::tempdir().unwrap();
    let one = d.path().join("one");
    fs::create_dir(&one).unwrap();
    fs::write(one.join("a.txt"), b"hello").unwrap();
    let future = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_147_558_400);
    fs::File::options()
        .write(true)
        .open(one.join("a.txt"))
        .unwrap()
        .set_modified(future)
        .unwrap();
    let opts = IsoOptions {
        hybrid: true,
        ..IsoOptions::default()
    };
    let a = build(&tree_of(&one), &opts).unwrap();
    // 2038 in the tree, 2026-12-01 (crate::time::LATEST_VOLUME_TIME) on the volume.
    assert_eq!(&read(&a, 16, 1)[813..829], b"2026120100000000");
    let all = |i: &IsoImage| read(i, 0, u64::from(i.blocks));
    let bytes_a = all(&a);
    // The same tree elsewhere: the same bytes (the MBR signature is derived from the content,
    // with paths relative to the top directory).
    let two = d.path().join("elsewhere");
    fs::rename(&one, &two).unwrap();
    let b = build(&tree_of(&two), &opts).unwrap();
    assert!(bytes_a == all(&b));
}

#[test]
fn root_dot_starts_with_sp_and_entries_carry_their_full_names() {
    let d = tempfile::tempdir().unwrap();
    let long = "n".repeat(250);
    fs::write(d.path().join(&long), b"x").unwrap();
    let img = build(&tree_of(d.path()), &IsoOptions::default()).unwrap();
    let recs = root_records(&img, false);
    assert_eq!(recs[0].1, [0]);
    assert_eq!(&recs[0].5[..7], &[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
    assert_eq!(recs[1].1, [1]);
    // The long name's NM entries do not fit: the record ends with a CE.
    let su = &recs[2].5;
    assert!(su.windows(2).any(|w| w == b"CE"), "{su:?}");
}

#[test]
fn records_are_sorted_and_never_straddle_a_sector() {
    let d = tempfile::tempdir().unwrap();
    for i in (0..300).rev() {
        fs::write(
            d.path().join(format!("file-{i:03}-with-a-longer-name.txt")),
            b"",
        )
        .unwrap();
    }
    let img = build(&tree_of(d.path()), &IsoOptions::default()).unwrap();
    for joliet in [false, true] {
        let recs = root_records(&img, joliet);
        assert_eq!(recs.len(), 302);
        for r in &recs {
            let len = record::record_len(r.1.len(), r.5.len());
            assert!(r.0 % 2048 + len <= 2048, "record at {} of {len} bytes", r.0);
        }
        let ids: Vec<&Vec<u8>> = recs[2..].iter().map(|r| &r.1).collect();
        let mut sorted = ids.clone();
        sorted.sort_by(|a, b| record::cmp_ident(a, b));
        assert_eq!(ids, sorted);
        assert!(recs.last().unwrap().0 > 2048, "spans several sectors");
    }
}

#[test]
fn files_of_4_gib_or_more_take_several_extents() {
    let d = tempfile::tempdir().unwrap();
    let size = (5u64 << 30) + 1;
    fs::File::create(d.path().join("huge"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let img = build(&tree_of(d.path()), &IsoOptions::default()).unwrap();
    let recs: Vec<Record> = root_records(&img, false)
        .into_iter()
        .filter(|r| r.1 == b"HUGE.;1")
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].3 as u64, record::MAX_EXTENT);
    assert_eq!(recs[0].4, record::FLAG_MULTI_EXTENT);
    assert_eq!(recs[1].3 as u64, size - record::MAX_EXTENT);
    assert_eq!(recs[1].4, 0);
    assert_eq!(
        u64::from(recs[1].2),
        u64::from(recs[0].2) + record::MAX_EXTENT / 2048
    );
    assert_eq!(img.map.size(), u64::from(img.blocks) * 2048);
    assert_eq!(
        u64::from(img.blocks),
        u64::from(recs[0].2) + size.div_ceil(2048)
    );
}

#[test]
fn files_larger_than_any_volume_are_refused_at_once() {
    // Found by fuzz/ (iso_plan): a sparse file of 10 EB (tmpfs, XFS and btrfs allow them) was
    // laid out one 4 GiB directory record at a time, billions of them, before the volume was
    // found too large.
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("huge"), b"x").unwrap();
    let mut t = tree_of(d.path());
    let start = std::time::Instant::now();
    for size in [12_111_099_472_872_389_695, u64::MAX, layout::MAX_VOLUME + 1] {
        let tree::NodeKind::Dir(files) = &mut t.root.kind else {
            unreachable!()
        };
        files[0].meta.size = size;
        files[0].meta.blocks = size.div_ceil(512);
        for joliet in [false, true] {
            let opts = IsoOptions {
                joliet,
                ..IsoOptions::default()
            };
            let e = build(&t, &opts).unwrap_err();
            assert!(matches!(e, IsoError::TooLarge), "{e}");
        }
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn empty_efi_images_are_refused() {
    // Found by fuzz/ (iso_plan): an empty EFI image made a hybrid image's EFI system partition
    // end before it began (an overflow, or in a release build a GPT entry whose last sector
    // precedes its first).
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("efi.img"), b"").unwrap();
    let t = tree_of(d.path());
    let empty: std::sync::Arc<dyn BlockDev> =
        std::sync::Arc::new(synth::RegionMapBuilder::new().finish());
    for hybrid in [false, true] {
        for opts in [
            IsoOptions {
                efi_boot: Some("efi.img".into()),
                hybrid,
                ..IsoOptions::default()
            },
            IsoOptions {
                efi_image: Some(empty.clone()),
                hybrid,
                ..IsoOptions::default()
            },
        ] {
            let e = build(&t, &opts).unwrap_err();
            assert!(matches!(e, IsoError::BootImage { .. }), "{e}");
            assert!(e.to_string().contains("empty"), "{e}");
        }
    }
}

#[test]
fn hybrid_images_past_2_tib_keep_their_mbr_entries_within_it() {
    // Found by fuzz/ (iso_plan): a 4 TiB EFI image in a hybrid image gave an MBR entry whose
    // end overflowed 32 bits.
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("efi.img"), b"x").unwrap();
    let mut t = tree_of(d.path());
    let tree::NodeKind::Dir(files) = &mut t.root.kind else {
        unreachable!()
    };
    files[0].meta.size = 4 << 40;
    files[0].meta.blocks = (4 << 40) / 512;
    let opts = IsoOptions {
        efi_boot: Some("efi.img".into()),
        hybrid: true,
        ..IsoOptions::default()
    };
    let img = build(&t, &opts).unwrap();
    let mbr = read(&img, 0, 1);
    for e in mbr[446..510].chunks(16).filter(|e| e[4] != 0) {
        let start = u64::from(le32(&e[8..12]));
        let count = u64::from(le32(&e[12..16]));
        assert!(start + count <= 1 << 32, "{e:02x?}");
    }
}

#[test]
fn without_rock_ridge_symlinks_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), b"").unwrap();
    symlink("f", d.path().join("link")).unwrap();
    let opts = IsoOptions {
        rock_ridge: false,
        joliet: false,
        ..IsoOptions::default()
    };
    let img = build(&tree_of(d.path()), &opts).unwrap();
    let recs = root_records(&img, false);
    let ids: Vec<&[u8]> = recs.iter().map(|r| &r.1[..]).collect();
    assert_eq!(ids, [&[0u8][..], &[1], b"F.;1"]);
    assert!(recs.iter().all(|r| r.5.is_empty()));
    assert_eq!(read(&img, 17, 1)[0], 255, "no Joliet SVD");
}

#[test]
fn bad_volume_ids_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for id in ["", "a-b", &"A".repeat(33)] {
        let opts = IsoOptions {
            volume_id: Some(id.to_string()),
            ..IsoOptions::default()
        };
        assert!(build(&tree_of(d.path()), &opts).is_err(), "{id:?}");
    }
}

#[test]
fn iso_images_and_overlays_on_them_pass_conformance() {
    let d = crate::testutil::sample_dir();
    let img = build(&tree_of(d.path()), &IsoOptions::default()).unwrap();
    crate::testutil::check_image_and_overlay(img.map, &[(40_000, 3000, 9)]);
}
