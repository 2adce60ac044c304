//! Golden checks: the partition tables the FAT and ISO generators write are
//! byte for byte what they were before `formats::partition` existed. The
//! CRC-32s were taken from images built by the earlier `disksynth` (commit
//! 1dcde2d) from the same tree:
//!
//! ```text
//! SOURCE_DATE_EPOCH=1700000000 disksynth floppy tree --serial 12345678 -o fat.img
//! SOURCE_DATE_EPOCH=1700000000 disksynth iso tree --volid GOLDEN --hybrid [--efi-boot efi.img] -o iso.img
//! ```
//!
//! The ISO hybrid values were retaken once, deliberately, when GUIDs and the hybrid seed moved
//! from four CRC-32s (32 bits of entropy in disguise) to the 128-bit stable hash
//! (`formats::hash`): only the derived GUIDs, the MBR signature and the table CRCs over them changed; every other byte
//! of those images is what the earlier `disksynth` wrote.

use std::fs::{self, File, FileTimes};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use formats::fat::FatOptions;
use formats::iso::IsoOptions;
use synth::BlockDev;

const EPOCH: i64 = 1_700_000_000;

fn golden_tree(root: &Path) -> tree::Tree {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("a.txt"), b"hello\n").unwrap();
    fs::write(root.join("sub/b.bin"), vec![0x5Au8; 70_000]).unwrap();
    fs::write(root.join("efi.img"), vec![0x11u8; 100_000]).unwrap();
    let t = FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(EPOCH as u64));
    for p in ["a.txt", "sub/b.bin", "efi.img", "sub", ""] {
        let path = root.join(p);
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        File::open(&path).unwrap().set_times(t).unwrap();
    }
    tree::scan(
        root,
        &tree::ScanOptions {
            follow_symlinks: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn crc(dev: &dyn BlockDev, offset: u64, len: u64) -> u32 {
    let mut buf = vec![0u8; len as usize];
    dev.read_at(&mut buf, offset).unwrap();
    crc32fast::hash(&buf)
}

#[test]
fn fat_with_mbr_is_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("tree");
    let tree = golden_tree(&root);
    let img = formats::fat::build(
        &tree,
        &FatOptions {
            serial: Some(0x1234_5678),
            timestamp: Some(EPOCH),
            ..FatOptions::default()
        },
    )
    .unwrap();
    let size = img.map.size();
    assert_eq!(size, 2 << 20);
    assert_eq!(crc(&img.map, 0, 1 << 20), 0xce5f_cd35, "MBR and padding");
    assert_eq!(crc(&img.map, 0, size), 0x2347_42bc, "whole image");
}

#[test]
fn iso_hybrid_tables_are_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("tree");
    let tree = golden_tree(&root);
    // The whole image also holds Rock Ridge owners: the CRCs were taken as root.
    let root_user = rustix::process::geteuid().is_root();
    for (efi, size, head, tail, whole) in [
        (
            true,
            253_952,
            0x82f6_6204u32,
            0x9577_8c1du32,
            0x1e63_7a45u32,
        ),
        (false, 231_424, 0x9b78_95bd, 0x7a8c_d5c8, 0xc415_dc66),
    ] {
        let img = formats::iso::build(
            &tree,
            &IsoOptions {
                volume_id: Some("GOLDEN".into()),
                timestamp: Some(EPOCH),
                hybrid: true,
                efi_boot: efi.then(|| "efi.img".into()),
                ..IsoOptions::default()
            },
        )
        .unwrap();
        assert_eq!(img.map.size(), size);
        assert_eq!(
            crc(&img.map, 0, 34 * 512),
            head,
            "MBR and primary GPT (efi {efi})"
        );
        assert_eq!(
            crc(&img.map, size - 33 * 512, 33 * 512),
            tail,
            "backup GPT (efi {efi})"
        );
        if root_user {
            assert_eq!(crc(&img.map, 0, size), whole, "whole image (efi {efi})");
        }
    }
}
