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

/// One partition as `sfdisk -J` reports it (sectors of 512 bytes).
#[derive(Debug)]
struct Part {
    start: usize,
    size: usize,
    kind: String,
    name: String,
}

/// The partition table util-linux reads from `img`: (label, partitions).
fn sfdisk(img: &Path) -> (String, Vec<Part>) {
    let out = run(
        &mut disksynth_tests::command("sfdisk", ["-J", img.to_str().unwrap()]),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.describe());
    let v: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            start: p["start"].as_u64().unwrap() as usize,
            size: p["size"].as_u64().unwrap() as usize,
            kind: p["type"].as_str().unwrap().to_string(),
            name: p["name"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    (t["label"].as_str().unwrap().to_string(), parts)
}

/// `sgdisk -v` finds nothing wrong with the GPT (CRCs, backup, placement, overlaps).
fn assert_gpt_valid(img: &Path) {
    let out = run(
        &mut disksynth_tests::command("sgdisk", ["-v", img.to_str().unwrap()]),
        CMD_TIMEOUT,
    );
    assert!(
        out.status.success() && out.stdout_str().contains("No problems found"),
        "sgdisk -v: {}",
        out.describe()
    );
}

fn fsck_fat_ok(dir: &Path, bytes: &[u8]) {
    let part = dir.join("esp-check.img");
    fs::write(&part, bytes).unwrap();
    let fsck = run(
        &mut disksynth_tests::command("fsck.fat", ["-n", part.to_str().unwrap()]),
        CMD_TIMEOUT,
    );
    assert!(fsck.status.success(), "{}", fsck.describe());
}

fn xorriso_report(img: &Path, what: &str) -> String {
    let out = run(
        disksynth_tests::command("xorriso", ["-indev", img.to_str().unwrap(), what, "plain"])
            .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    format!("{}{}", out.stdout_str(), out.stderr_str())
}

#[test]
fn hybrid_bios_image_has_one_mbr_partition_over_the_whole_image() {
    require_tool!("sfdisk", "xorriso");
    let dir = tempdir();
    let root = dir.path().join("tree");
    boot_tree(&root);
    let img = dir.path().join("hybrid.iso");
    build_image(
        "iso",
        &root,
        &img,
        &["--boot", "isolinux/isolinux.bin", "--hybrid"],
    );
    let iso = fs::read(&img).unwrap();
    let (label, parts) = sfdisk(&img);
    assert_eq!(label, "dos");
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!((parts[0].start, parts[0].size), (0, iso.len() / 512));
    assert_eq!(parts[0].kind, "17");
    assert_eq!(iso[446], 0x80, "partition 1 is active");
    assert_ne!(&iso[512..520], b"EFI PART", "no GPT without an EFI image");
    let report = xorriso_report(&img, "-report_system_area");
    assert!(
        report.contains("MBR partition      :   1   0x80  0x17"),
        "{report}"
    );
}

/// With an EFI image that is a file in the middle of the tree: a GPT that sgdisk finds valid,
/// ISO 9660 data as basic-data partitions around the EFI system partition (GPT partitions
/// may not overlap), and a hybrid MBR with the protective 0xEE entry. (The Linux kernel's own
/// reading is not checked: the test machines' kernel is built without partition support.)
#[test]
fn hybrid_uefi_image_has_a_valid_gpt_whose_esp_is_the_efi_boot_image() {
    require_tool!("xorriso", "fsck.fat", "sgdisk", "sfdisk", "cmp");
    let dir = tempdir();
    let root = dir.path().join("tree");
    boot_tree(&root);
    // Files after efiboot.img in sort order, so the ESP sits between ISO 9660 data.
    fs::write(root.join("zz-after.bin"), random_bytes(3, 300_000)).unwrap();
    let img = dir.path().join("hybrid.iso");
    let args = [
        "--boot",
        "isolinux/isolinux.bin",
        "--efi-boot",
        "efiboot.img",
        "--hybrid",
    ];
    build_image("iso", &root, &img, &args);
    let iso = fs::read(&img).unwrap();
    assert_gpt_valid(&img);
    let (label, parts) = sfdisk(&img);
    assert_eq!(label, "gpt");
    let kinds: Vec<_> = parts.iter().map(|p| p.kind.as_str()).collect();
    const BASIC: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
    const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    assert_eq!(kinds, [BASIC, ESP, BASIC], "{parts:?}");
    assert_eq!(
        parts[0].start, 64,
        "ISO 9660 data starts after the system area"
    );
    assert_eq!(parts[0].name, "ISO9660");
    let efi = fs::read(root.join("efiboot.img")).unwrap();
    let esp = &parts[1];
    assert_eq!(esp.size * 512, efi.len());
    assert!(
        iso[esp.start * 512..(esp.start + esp.size) * 512] == efi[..],
        "the ESP holds efiboot.img"
    );
    fsck_fat_ok(dir.path(), &efi);
    // The volume includes the backup GPT: ISO readers and disk tools agree on the size.
    let pvd = &iso[16 * SECTOR..17 * SECTOR];
    assert_eq!(le32(pvd, 80) as usize * SECTOR, iso.len());
    // The hybrid MBR: 0xEE over the GPT, then mirrors of the GPT partitions.
    let entry = |n: usize| &iso[446 + 16 * n..446 + 16 * (n + 1)];
    assert_eq!((entry(0)[4], le32(entry(0), 8)), (0xEE, 1));
    assert_eq!((entry(1)[0], entry(1)[4]), (0x80, 0x17));
    assert_eq!(entry(2)[4], 0xEF);
    assert_eq!(le32(entry(2), 8) as usize, esp.start);
    let report = xorriso_report(&img, "-report_system_area");
    assert!(report.contains("GPT start and size :   3"), "{report}");

    // Reproducible: a second build is the same bytes (GUIDs are derived, not random).
    let again = dir.path().join("again.iso");
    build_image("iso", &root, &again, &args);
    let cmp = run(
        &mut disksynth_tests::command("cmp", [img.to_str().unwrap(), again.to_str().unwrap()]),
        CMD_TIMEOUT,
    );
    assert!(cmp.status.success(), "{}", cmp.describe());
}

/// `--hybrid-mbr isohdpfx.bin` (isolinux's MBR code) makes BIOSes boot the El Torito image
/// from a USB stick: the code is copied and the boot image's address patched in exactly as
/// `xorriso -isohybrid-mbr` does it (xorriso recognises the layout as isohybrid).
#[test]
fn hybrid_mbr_code_is_isolinux_isohdpfx_with_the_boot_image_address() {
    require_tool!("xorriso");
    let isohdpfx = Path::new("/usr/lib/ISOLINUX/isohdpfx.bin");
    let isolinux = Path::new("/usr/lib/ISOLINUX/isolinux.bin");
    if !isohdpfx.exists() || !isolinux.exists() {
        if disksynth_tests::in_ci() {
            panic!("isolinux's files are missing (package isolinux; CI=true makes this a failure)");
        }
        eprintln!("SKIPPED: package isolinux is not installed");
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("isolinux")).unwrap();
    fs::copy(isolinux, root.join("isolinux/isolinux.bin")).unwrap();
    fs::write(root.join("data.bin"), random_bytes(5, 100_000)).unwrap();
    let img = dir.path().join("usb.iso");
    build_image(
        "iso",
        &root,
        &img,
        &[
            "--boot",
            "isolinux/isolinux.bin",
            "--hybrid-mbr",
            isohdpfx.to_str().unwrap(),
        ],
    );
    let iso = fs::read(&img).unwrap();
    let code = fs::read(isohdpfx).unwrap();
    assert!(
        iso[..432] == code[..432],
        "MBR code differs from isohdpfx.bin"
    );
    let report = xorriso_report(&img, "-report_el_torito");
    let lba: usize = report
        .lines()
        .find(|l| l.starts_with("El Torito boot img :   1  BIOS"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no BIOS boot image in {report}"));
    let patched = u64::from_le_bytes(iso[432..440].try_into().unwrap());
    assert_eq!(patched, lba as u64 * 4, "boot image address at byte 432");
    assert!(report.contains("isohybrid-suitable"), "{report}");
    let area = xorriso_report(&img, "-report_system_area");
    assert!(area.contains("MBR isohybrid"), "{area}");

    // Without --boot the code has nothing to load: a clear error.
    let out = build_image_fails(
        "iso",
        &root,
        &dir.path().join("bad.iso"),
        &["--hybrid-mbr", isohdpfx.to_str().unwrap()],
    );
    assert!(
        out.stderr_str().contains("give --boot too"),
        "{}",
        out.describe()
    );
}

#[test]
fn efi_image_synthesized_from_a_directory_is_the_uefi_entry_and_the_esp() {
    require_tool!("mcopy", "fsck.fat", "sgdisk", "sfdisk");
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
    assert_gpt_valid(&img);
    let (label, parts) = sfdisk(&img);
    assert_eq!(label, "gpt");
    let esp_part = parts
        .iter()
        .find(|p| p.kind == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        .unwrap_or_else(|| panic!("no EFI system partition in {parts:?}"));
    assert_eq!(esp_part.start * 512, lba * SECTOR);
    let len = esp_part.size * 512;
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

/// The real thing: a live-style image (isolinux for BIOS, GRUB in an ESP synthesized from a
/// directory for UEFI, isolinux's MBR code, GPT) served by disksynth over NBD boots in qemu
/// four ways: BIOS and UEFI, each as a CD (El Torito) and as a disk (USB stick: MBR code /
/// GPT ESP). The firmware and the loaders print on the serial port what they booted.
#[test]
fn live_image_boots_in_qemu_bios_and_uefi_as_cd_and_as_disk_over_nbd() {
    use disksynth_tests::qemu_boot::{boot_until, require_files, Firmware, OVMF_CODE, OVMF_VARS};
    use disksynth_tests::Server;
    require_tool!("qemu-system-x86_64");
    const ISOLINUX: &str = "/usr/lib/ISOLINUX/isolinux.bin";
    const ISOHDPFX: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
    const LDLINUX: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
    const GRUB: &str = "/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi";
    if !require_files(&[ISOLINUX, ISOHDPFX, LDLINUX, GRUB, OVMF_CODE, OVMF_VARS]) {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("live");
    fs::create_dir_all(root.join("isolinux")).unwrap();
    fs::copy(ISOLINUX, root.join("isolinux/isolinux.bin")).unwrap();
    fs::copy(LDLINUX, root.join("isolinux/ldlinux.c32")).unwrap();
    // isolinux reads its configuration (and ldlinux.c32) through ISO 9660 from our image.
    fs::write(
        root.join("isolinux/isolinux.cfg"),
        "SERIAL 0 115200\nPROMPT 0\n",
    )
    .unwrap();
    fs::write(root.join("payload.bin"), random_bytes(11, 3 << 20)).unwrap();
    let esp = dir.path().join("esp");
    fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    fs::copy(GRUB, esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();

    let server = Server::disksynth_unix(
        dir.path(),
        &[
            "iso",
            root.to_str().unwrap(),
            "--boot",
            "isolinux/isolinux.bin",
            "--efi-boot-dir",
            esp.to_str().unwrap(),
            "--hybrid-mbr",
            ISOHDPFX,
        ],
    );
    let nbd = format!("nbd+unix:///?socket={}", dir.path().join("sock").display());
    let cd = vec![
        "-drive".to_string(),
        format!("if=ide,media=cdrom,format=raw,readonly=on,file={nbd}"),
    ];
    // A hard disk must be writable for qemu's IDE: snapshot=on keeps writes in qemu.
    let disk = vec![
        "-drive".to_string(),
        format!("if=virtio,format=raw,snapshot=on,file={nbd}"),
    ];
    let bios_disk = vec![
        "-drive".to_string(),
        format!("if=ide,format=raw,snapshot=on,file={nbd}"),
    ];

    // BIOS from CD: El Torito no-emulation boot of isolinux.bin (boot-info table patched).
    let text = boot_until(
        dir.path(),
        Firmware::Bios,
        &cd,
        &["ISOLINUX", "boot:"],
        false,
    );
    assert!(
        text.contains("ISOLINUX") && text.contains("boot:"),
        "BIOS CD: {text:?}"
    );
    // BIOS from disk: the MBR code (isohdpfx) loads isolinux.bin from the address patched at
    // byte 432; our own stub would print "holds no operating system" instead.
    let text = boot_until(
        dir.path(),
        Firmware::Bios,
        &bios_disk,
        &["ISOLINUX", "boot:"],
        false,
    );
    assert!(
        text.contains("ISOLINUX") && text.contains("boot:"),
        "BIOS disk: {text:?}"
    );
    // UEFI from CD: OVMF finds the El Torito UEFI entry and starts GRUB from the ESP image.
    let text = boot_until(
        dir.path(),
        Firmware::Uefi,
        &cd,
        &["BdsDxe: starting", "Welcome to GRUB!"],
        false,
    );
    assert!(
        text.contains("DVD-ROM") && text.contains("Welcome to GRUB!"),
        "UEFI CD: {text:?}"
    );
    // UEFI from disk: OVMF reads the GPT and starts GRUB from the EFI system partition.
    let text = boot_until(
        dir.path(),
        Firmware::Uefi,
        &disk,
        &["BdsDxe: starting", "Welcome to GRUB!"],
        false,
    );
    assert!(text.contains("Welcome to GRUB!"), "UEFI disk: {text:?}");
    drop(server);
}
