//! `disksynth iso --boot/--efi-boot`: El Torito boot catalogs checked by xorriso, and the
//! boot-info table patched into the virtual image checked against the El Torito / mkisofs layout.

use std::fs;
use std::path::Path;

use disksynth_tests::generator::{build_image, build_image_fails};
use disksynth_tests::{random_bytes, require_tool, run, tempdir, CMD_TIMEOUT};

const SECTOR: usize = 2048;

/// A tree with a BIOS loader, a UEFI FAT image made by `disksynth floppy`, and a plain file.
fn boot_tree(root: &Path) -> Vec<u8> {
    let loader = random_bytes(7, 20_000);
    fs::create_dir_all(root.join("isolinux")).unwrap();
    fs::write(root.join("isolinux/isolinux.bin"), &loader).unwrap();
    fs::write(root.join("readme.txt"), b"boot me\n").unwrap();
    let efi_src = root.parent().unwrap().join("efi-src");
    fs::create_dir_all(efi_src.join("EFI/BOOT")).unwrap();
    fs::write(efi_src.join("EFI/BOOT/BOOTX64.EFI"), random_bytes(8, 5000)).unwrap();
    build_image(
        "floppy",
        &efi_src,
        &root.join("efiboot.img"),
        &["--partition", "none"],
    );
    loader
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn bios_and_uefi_boot_images_are_in_the_catalog_with_a_patched_boot_info_table() {
    require_tool!("xorriso");
    let dir = tempdir();
    let root = dir.path().join("tree");
    let loader = boot_tree(&root);
    let img = dir.path().join("boot.iso");
    build_image(
        "iso",
        &root,
        &img,
        &[
            "--boot",
            "isolinux/isolinux.bin",
            "--efi-boot",
            "efiboot.img",
        ],
    );

    let out = run(
        disksynth_tests::command(
            "xorriso",
            [
                "-indev",
                img.to_str().unwrap(),
                "-report_el_torito",
                "plain",
            ],
        )
        .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    let report = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(out.status.success(), "{}", out.describe());
    let line = |prefix: &str, n: &str| {
        report
            .lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].trim_start().starts_with(n))
            .unwrap_or_else(|| panic!("no {prefix:?} {n} line in:\n{report}"))
            .to_string()
    };
    let bios = line("El Torito boot img :", "1");
    assert!(bios.contains("BIOS") && bios.contains("none"), "{bios}");
    let efi = line("El Torito boot img :", "2");
    assert!(efi.contains("UEFI"), "{efi}");
    assert!(line("El Torito img path :", "1").contains("/isolinux/isolinux.bin"));
    assert!(line("El Torito img path :", "2").contains("/efiboot.img"));
    assert!(
        line("El Torito img opts :", "1").contains("boot-info-table"),
        "xorriso did not recognise the boot-info table:\n{report}"
    );

    // The BIOS entry's LBA and load size, read from the catalog the boot record points at.
    let iso = fs::read(&img).unwrap();
    let record = &iso[17 * SECTOR..18 * SECTOR];
    assert_eq!(&record[1..6], b"CD001");
    assert_eq!(&record[7..30], b"EL TORITO SPECIFICATION");
    let catalog = le32(record, 0x47) as usize * SECTOR;
    let entry = &iso[catalog + 32..catalog + 64];
    assert_eq!(entry[0], 0x88, "initial entry bootable");
    assert_eq!(u16::from_le_bytes([entry[6], entry[7]]), 4, "load size");
    let lba = le32(entry, 8) as usize;

    // mkisofs' boot-info table: PVD block, image block, length, sum of the words from 64 on.
    let image = &iso[lba * SECTOR..lba * SECTOR + loader.len()];
    let sum = loader[64..].chunks(4).fold(0u32, |a, w| {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        a.wrapping_add(u32::from_le_bytes(b))
    });
    assert_eq!(le32(image, 8), 16, "PVD block");
    assert_eq!(le32(image, 12) as usize, lba, "image block");
    assert_eq!(le32(image, 16) as usize, loader.len(), "image length");
    assert_eq!(le32(image, 20), sum, "checksum");
    assert!(image[..8] == loader[..8] && image[64..] == loader[64..]);
    assert_eq!(
        fs::read(root.join("isolinux/isolinux.bin")).unwrap(),
        loader,
        "the host boot image must not be modified"
    );
}

#[test]
fn boot_image_outside_the_tree_is_a_clear_error() {
    let dir = tempdir();
    let root = dir.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("a.txt"), b"x").unwrap();
    let out = build_image_fails(
        "iso",
        &root,
        &dir.path().join("x.iso"),
        &["--boot", "isolinux/missing.bin"],
    );
    assert!(
        out.stderr_str().contains("missing.bin"),
        "{}",
        out.describe()
    );
}

#[test]
fn hybrid_image_has_an_mbr_whose_efi_partition_is_the_efi_boot_image() {
    require_tool!("xorriso");
    require_tool!("fsck.fat");
    let dir = tempdir();
    let root = dir.path().join("tree");
    boot_tree(&root);
    let img = dir.path().join("hybrid.iso");
    build_image(
        "iso",
        &root,
        &img,
        &["--efi-boot", "efiboot.img", "--hybrid"],
    );
    let iso = fs::read(&img).unwrap();
    assert_eq!(&iso[510..512], &[0x55, 0xAA], "MBR signature");
    let entry = |n: usize| &iso[446 + 16 * n..446 + 16 * (n + 1)];
    assert_eq!((entry(0)[0], entry(0)[4]), (0x80, 0x17), "partition 1");
    assert_eq!(le32(entry(0), 8), 0);
    assert_eq!(
        le32(entry(0), 12) as usize,
        iso.len() / 512,
        "partition 1 covers the image"
    );
    assert_eq!(entry(1)[4], 0xEF, "partition 2 is an EFI system partition");
    let start = le32(entry(1), 8) as usize * 512;
    let len = le32(entry(1), 12) as usize * 512;
    let efi = fs::read(root.join("efiboot.img")).unwrap();
    assert_eq!(len, efi.len());
    assert!(
        iso[start..start + len] == efi[..],
        "partition 2 holds efiboot.img"
    );
    let part = dir.path().join("esp.img");
    fs::write(&part, &iso[start..start + len]).unwrap();
    let fsck = run(
        &mut disksynth_tests::command("fsck.fat", ["-n", part.to_str().unwrap()]),
        CMD_TIMEOUT,
    );
    assert!(fsck.status.success(), "{}", fsck.describe());
    // xorriso sees the same partition table and still reads the ISO.
    let out = run(
        disksynth_tests::command(
            "xorriso",
            [
                "-indev",
                img.to_str().unwrap(),
                "-report_system_area",
                "plain",
            ],
        )
        .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    let report = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("MBR partition path") && l.contains("/efiboot.img")),
        "{report}"
    );
}

#[test]
fn efi_image_synthesized_from_a_directory_is_the_uefi_entry_and_the_esp() {
    require_tool!("mcopy");
    require_tool!("fsck.fat");
    let dir = tempdir();
    let root = dir.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("readme.txt"), b"x").unwrap();
    let efi_dir = dir.path().join("efi");
    fs::create_dir_all(efi_dir.join("EFI/BOOT")).unwrap();
    let loader = random_bytes(9, 7000);
    fs::write(efi_dir.join("EFI/BOOT/BOOTX64.EFI"), &loader).unwrap();
    let img = dir.path().join("e.iso");
    build_image(
        "iso",
        &root,
        &img,
        &["--efi-boot-dir", efi_dir.to_str().unwrap(), "--hybrid"],
    );
    let iso = fs::read(&img).unwrap();
    // The catalog's UEFI entry and MBR partition 2 point at the same bytes.
    let catalog = le32(&iso[17 * SECTOR..18 * SECTOR], 0x47) as usize * SECTOR;
    assert_eq!((iso[catalog + 64], iso[catalog + 65]), (0x91, 0xEF));
    let lba = le32(&iso[catalog + 96..catalog + 128], 8) as usize;
    let p2 = &iso[446 + 16..446 + 32];
    assert_eq!(p2[4], 0xEF);
    assert_eq!(le32(p2, 8) as usize * 512, lba * SECTOR);
    let len = le32(p2, 12) as usize * 512;
    let esp = dir.path().join("esp.img");
    fs::write(&esp, &iso[lba * SECTOR..lba * SECTOR + len]).unwrap();
    let fsck = run(
        &mut disksynth_tests::command("fsck.fat", ["-n", esp.to_str().unwrap()]),
        CMD_TIMEOUT,
    );
    assert!(fsck.status.success(), "{}", fsck.describe());
    let out = dir.path().join("BOOTX64.EFI");
    let mc = run(
        &mut disksynth_tests::command(
            "mcopy",
            [
                "-n",
                "-i",
                esp.to_str().unwrap(),
                "::/EFI/BOOT/BOOTX64.EFI",
                out.to_str().unwrap(),
            ],
        ),
        CMD_TIMEOUT,
    );
    assert!(mc.status.success(), "{}", mc.describe());
    assert_eq!(fs::read(&out).unwrap(), loader);
}
