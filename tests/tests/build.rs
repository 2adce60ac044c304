//! `disksynth build`: whole disks composed from generators, checked with the tools that own each
//! layer: sgdisk -v and sfdisk --json (the table; the report's offsets equal sfdisk's), fsck.fat +
//! mtools and e2fsck + debugfs (each partition, extracted and compared with its tree), qemu-img
//! compare (NBD bytes equal the `-o` bytes), and bad specs refused with one clear error each.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use disksynth_tests::ext4_util::{e2fsck_clean, rdump, read_image};
use disksynth_tests::generator::{cmp_files, qemu_img_identical};
use disksynth_tests::trees::{is_root, set_all_mtimes, write_file};
use disksynth_tests::{disksynth, require_tool, run, run_ok, tempdir, Output, Server, CMD_TIMEOUT};
use serde_json::Value;

/// An ESP tree, a small root tree and a raw blob under `root`.
fn trees(root: &Path) {
    write_file(root, "esp/EFI/BOOT/BOOTX64.EFI", &vec![0xE5u8; 300_000]);
    write_file(root, "esp/loader/loader.conf", b"timeout 3\n");
    write_file(root, "rootfs/etc/hostname", b"composed\n");
    write_file(root, "rootfs/usr/bin/tool", &vec![0x7Fu8; 1_000_000]);
    write_file(
        root,
        "rootfs/var/lib/data.bin",
        &(0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    );
    std::os::unix::fs::symlink("../usr/bin/tool", root.join("rootfs/etc/tool-link")).unwrap();
    write_file(root, "blob.bin", &vec![0xB1u8; 3 * 4096]);
}

const SPEC: &str = r#"
[disk]
table = "gpt"
seed = "e2e-42"

[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = "esp"
size = "64M"
fs_label = "ESP"

[[partition]]
label = "root"
type = "root-x86-64"
fs = "ext4"
source = "rootfs"
size = "auto+20%"
fs_label = "root"
attributes = ["grow-fs"]

[[partition]]
label = "blob"
type = "linux-generic"
raw = "blob.bin"

[[partition]]
label = "scratch"
type = "linux-generic"
fs = "empty"
size = "8M"
"#;

fn build(spec_dir: &Path, spec: &str, args: &[&str]) -> Output {
    let path = spec_dir.join("disk.toml");
    fs::write(&path, spec).unwrap();
    let mut cmd = disksynth();
    cmd.arg("build")
        .arg(&path)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH");
    run(&mut cmd, CMD_TIMEOUT)
}

fn build_ok(spec_dir: &Path, spec: &str, args: &[&str]) -> Output {
    let out = build(spec_dir, spec, args);
    assert!(
        out.status.success(),
        "disksynth build failed\n{}",
        out.describe()
    );
    out
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Copy `len` bytes at `offset` of `img` into a new file.
fn extract(img: &Path, offset: u64, len: u64, to: &Path) -> PathBuf {
    fs::write(to, read_image(img, offset, len as usize)).unwrap();
    to.to_path_buf()
}

#[test]
fn a_gpt_disk_from_a_spec_is_what_sgdisk_sfdisk_fsck_and_the_trees_say() {
    require_tool!("sgdisk", "sfdisk", "fsck.fat", "mcopy", "e2fsck", "debugfs", "diff");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let img = d.join("disk.img");
    build_ok(
        d,
        SPEC,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));

    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(
        v.stdout_str().contains("No problems found"),
        "{}",
        v.describe()
    );

    let sf = run_ok(Command::new("sfdisk").arg("--json").arg(&img));
    let sf: Value = serde_json::from_slice(&sf.stdout).unwrap();
    let table = &sf["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let sparts = table["partitions"].as_array().unwrap();
    let rparts = r["partitions"].as_array().unwrap();
    assert_eq!(sparts.len(), 4);
    assert_eq!(rparts.len(), 4);
    for (s, p) in sparts.iter().zip(rparts) {
        assert_eq!(
            s["start"].as_u64().unwrap() * 512,
            p["offset"].as_u64().unwrap(),
            "{p}"
        );
        assert_eq!(
            s["size"].as_u64().unwrap() * 512,
            p["size"].as_u64().unwrap(),
            "{p}"
        );
        assert_eq!(s["name"], p["label"], "{p}");
        assert_eq!(
            s["type"].as_str().unwrap().to_ascii_uppercase(),
            p["type_guid"].as_str().unwrap().to_ascii_uppercase(),
            "{p}"
        );
        assert_eq!(
            s["uuid"].as_str().unwrap().to_ascii_uppercase(),
            p["guid"].as_str().unwrap().to_ascii_uppercase(),
            "{p}"
        );
    }
    assert_eq!(
        sparts[0]["type"].as_str().unwrap().to_ascii_uppercase(),
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    );
    assert_eq!(rparts[0]["size"].as_u64().unwrap(), 64 << 20);
    assert_eq!(rparts[3]["size"].as_u64().unwrap(), 8 << 20);
    // grow-fs is GPT attribute bit 59.
    assert_eq!(rparts[1]["attributes"], format!("0x{:016x}", 1u64 << 59));

    // The ESP: fsck.fat clean, hidden sectors = its start, mtools gives the tree back.
    let esp_at = rparts[0]["offset"].as_u64().unwrap();
    let esp = extract(&img, esp_at, 64 << 20, &d.join("esp.part"));
    let f = run(Command::new("fsck.fat").arg("-n").arg(&esp), CMD_TIMEOUT);
    assert!(f.status.success(), "{}", f.describe());
    let bpb = read_image(&esp, 28, 4);
    assert_eq!(
        u64::from(u32::from_le_bytes(bpb.try_into().unwrap())),
        esp_at / 512
    );
    let out = d.join("esp-out");
    fs::create_dir(&out).unwrap();
    run_ok(
        Command::new("mcopy")
            .arg("-s")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI")
            .arg("::/loader")
            .arg(&out),
    );
    let diff = run(
        Command::new("diff").arg("-r").arg(d.join("esp")).arg(&out),
        CMD_TIMEOUT,
    );
    assert!(diff.status.success(), "{}", diff.describe());

    // The root: e2fsck clean, debugfs gives the tree back, the partition is 20% larger.
    let root_at = rparts[1]["offset"].as_u64().unwrap();
    let root_len = rparts[1]["size"].as_u64().unwrap();
    let root = extract(&img, root_at, root_len, &d.join("root.part"));
    e2fsck_clean(&root);
    let out = d.join("root-out");
    rdump(&root, &["/etc".into(), "/usr".into(), "/var".into()], &out);
    let diff = run(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(d.join("rootfs"))
            .arg(&out),
        CMD_TIMEOUT,
    );
    assert!(diff.status.success(), "{}", diff.describe());
    assert_eq!(r["partitions"][1]["filesystem"]["type"], "ext4");

    // The blob: its bytes, mapped.
    let blob_at = rparts[2]["offset"].as_u64().unwrap();
    assert_eq!(
        read_image(&img, blob_at, 3 * 4096),
        fs::read(d.join("blob.bin")).unwrap()
    );
    // Scratch: zeros.
    let s_at = rparts[3]["offset"].as_u64().unwrap();
    assert!(read_image(&img, s_at, 8 << 20).iter().all(|&b| b == 0));
}

#[test]
fn the_same_spec_gives_the_same_bytes_from_a_copy_elsewhere_and_over_nbd() {
    require_tool!("qemu-img");
    let a = tempdir();
    let b = tempdir();
    trees(a.path());
    trees(b.path());
    // A copy keeps mtimes (cp -a, rsync -t, a checkout with SOURCE_DATE_EPOCH-like times); paths,
    // inode numbers, ctimes and directory sizes differ: the bytes do not.
    set_all_mtimes(a.path(), 1_700_000_000);
    set_all_mtimes(b.path(), 1_700_000_000);
    let spec = SPEC.replace("seed = \"e2e-42\"\n", "");
    build_ok(
        a.path(),
        &spec,
        &["-o", a.path().join("disk.img").to_str().unwrap()],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build_ok(
        b.path(),
        &spec,
        &["-o", b.path().join("disk.img").to_str().unwrap()],
    );
    cmp_files(&a.path().join("disk.img"), &b.path().join("disk.img"));

    let spec_path = a.path().join("disk.toml");
    let mut cmd = disksynth();
    cmd.arg("build")
        .arg(&spec_path)
        .arg("-U")
        .arg(a.path().join("sock"))
        .env_remove("SOURCE_DATE_EPOCH");
    let server = Server::spawn(cmd);
    qemu_img_identical(server.uri(), &a.path().join("disk.img"));
}

#[test]
fn part_flags_build_the_same_disk_as_the_equivalent_spec() {
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let spec = r#"
[disk]
seed = "flags"
[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = "esp"
size = "64M"
[[partition]]
label = "root-x86-64"
type = "root-x86-64"
fs = "ext4"
source = "rootfs"
"#;
    build_ok(d, spec, &["-o", d.join("a.img").to_str().unwrap()]);
    let mut cmd = disksynth();
    cmd.current_dir(d)
        .args(["build", "--table", "gpt", "--seed", "flags"])
        .args([
            "--part",
            "esp:fat:esp:64M",
            "--part",
            "root-x86-64:ext4:rootfs",
        ])
        .args(["-o", "b.img"])
        .env_remove("SOURCE_DATE_EPOCH");
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    cmp_files(&d.join("a.img"), &d.join("b.img"));
}

#[test]
fn mbr_and_hybrid_tables_are_what_sfdisk_and_sgdisk_read() {
    require_tool!("sfdisk", "sgdisk");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    for table in ["mbr", "hybrid"] {
        let spec = format!(
            "[disk]\ntable = \"{table}\"\nseed = \"m\"\n[[partition]]\nlabel = \"esp\"\ntype = \"esp\"\nfs = \"fat\"\nsource = \"esp\"\nsize = \"64M\"\nbootable = true\n[[partition]]\nlabel = \"root\"\ntype = \"linux-generic\"\nfs = \"ext4\"\nsource = \"rootfs\"\n"
        );
        let img = d.join(format!("{table}.img"));
        let json = d.join(format!("{table}.json"));
        build_ok(
            d,
            &spec,
            &[
                "-o",
                img.to_str().unwrap(),
                "--json",
                json.to_str().unwrap(),
            ],
        );
        let r = report(&json);
        if table == "mbr" {
            let sf = run_ok(Command::new("sfdisk").arg("--json").arg(&img));
            let sf: Value = serde_json::from_slice(&sf.stdout).unwrap();
            let t = &sf["partitiontable"];
            assert_eq!(t["label"], "dos", "{sf}");
            let p = t["partitions"].as_array().unwrap();
            assert_eq!(p.len(), 2);
            assert_eq!(p[0]["type"], "ef");
            assert_eq!(p[0]["bootable"], true);
            assert_eq!(p[1]["type"], "83");
            for (s, q) in p.iter().zip(r["partitions"].as_array().unwrap()) {
                assert_eq!(
                    s["start"].as_u64().unwrap() * 512,
                    q["offset"].as_u64().unwrap()
                );
            }
        } else {
            let v = run_ok(Command::new("sgdisk").arg("-v").arg(&img));
            assert!(
                v.stdout_str().contains("No problems found"),
                "{}",
                v.describe()
            );
            // The MBR mirrors the partitions beside the 0xEE entry.
            let mbr = read_image(&img, 446, 64);
            let types: Vec<u8> = (0..4).map(|i| mbr[16 * i + 4]).collect();
            assert!(types.contains(&0xEE), "{types:x?}");
            assert!(types.contains(&0xEF), "{types:x?}");
            assert!(types.contains(&0x83), "{types:x?}");
        }
    }
}

#[test]
fn a_4096_byte_sector_disk_reads_right_through_a_4k_loop_device() {
    require_tool!("sgdisk", "sfdisk", "losetup");
    if !is_root() {
        eprintln!("SKIPPED: losetup needs root");
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let spec = SPEC.replace("seed = \"e2e-42\"", "seed = \"4k\"\nsector_size = 4096");
    let img = d.join("4k.img");
    build_ok(
        d,
        &spec,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));
    let l = run_ok(
        Command::new("losetup")
            .args(["-b", "4096", "-r", "-f", "--show"])
            .arg(&img),
    );
    let dev = l.stdout_str().trim().to_string();
    let v = run(Command::new("sgdisk").arg("-v").arg(&dev), CMD_TIMEOUT);
    let sf = run(Command::new("sfdisk").arg("--json").arg(&dev), CMD_TIMEOUT);
    run(Command::new("losetup").arg("-d").arg(&dev), CMD_TIMEOUT);
    assert!(
        v.stdout_str().contains("No problems found"),
        "{}",
        v.describe()
    );
    let sf: Value = serde_json::from_slice(&sf.stdout).unwrap();
    assert_eq!(sf["partitiontable"]["sectorsize"], 4096, "{sf}");
    for (s, q) in sf["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["partitions"].as_array().unwrap())
    {
        assert_eq!(
            s["start"].as_u64().unwrap() * 4096,
            q["offset"].as_u64().unwrap()
        );
    }
}

#[test]
fn bad_specs_are_refused_with_one_clear_error_each() {
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let part = |extra: &str| {
        format!("[[partition]]\nlabel = \"esp\"\ntype = \"esp\"\nfs = \"fat\"\nsource = \"esp\"\n{extra}")
    };
    let cases: Vec<(String, &str)> = vec![
        (format!("{}colour = \"red\"\n", part("")), "unknown field `colour`"),
        (part("").replace("source = \"esp\"", "source = \"missing-dir\""), "missing-dir"),
        (part("size = \"200K\"\n"), "needs"),
        (format!("{}{}", part(""), part("")), "two partitions are labelled \"esp\""),
        ("[disk]\nsize = \"10M\"\n".to_string() + &part("size = \"64M\"\n"), "need"),
        (part("").replace("type = \"esp\"", "type = \"no-such-type\""), "no-such-type"),
        ("[[partition]]\nlabel = \"b\"\ntype = \"linux-generic\"\nraw = \"blob.bin\"\nsize = \"4K\"\n".into(), "needs"),
        // Whole-disk options of a generator need a disk that is that filesystem.
        (part("floppy = \"1.44M\"\n"), "need [disk] table = \"none\""),
        (part("hybrid = true\n"), "hybrid does not apply"),
        ("[disk]\ntable = \"none\"\n".to_string() + &part("floppy = \"1.44M\"\npartition = \"mbr\"\n"), "a floppy has no partition table"),
        (part("serial = \"xyz\"\n"), "serial"),
        (part("fat = 13\n"), "fat"),
        ("[[partition]]\nlabel = \"r\"\ntype = \"linux-generic\"\nfs = \"ext4\"\nsource = \"rootfs\"\nowner = \"nobody\"\n".into(), "owner"),
        ("[[partition]]\nlabel = \"r\"\ntype = \"linux-generic\"\nfs = \"ext4\"\nsource = \"rootfs\"\nuuid = \"1234\"\n".into(), "not a UUID"),
        // A sized disk too small for a growing last partition says how many bytes it needs.
        ("[disk]\nsize = \"2M\"\n".to_string() + &part("size = \"min:1M\"\n"), "bytes in all"),
    ];
    for (spec, want) in cases {
        let img = d.join("bad.img");
        let out = build(d, &spec, &["-o", img.to_str().unwrap()]);
        let err = out.stderr_str();
        assert!(
            !out.status.success(),
            "accepted:\n{spec}\n{}",
            out.describe()
        );
        assert!(err.contains(want), "{spec}\nwanted {want:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line, please:\n{err}");
        assert!(!img.exists());
    }
}

#[test]
fn remaining_takes_the_rest_of_a_sized_disk_and_source_lists_are_laid_in_order() {
    require_tool!("sgdisk", "e2fsck", "debugfs");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    write_file(d, "over/hostname", b"overridden\n");
    write_file(d, "over/extra.conf", b"x=1\n");
    let spec = r#"
[disk]
size = "256M"
seed = "rem"
[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = "esp"
size = "64M"
[[partition]]
label = "root"
type = "root-x86-64"
fs = "ext4"
source = ["rootfs", "over:/etc"]
size = "remaining"
"#;
    let img = d.join("disk.img");
    build_ok(
        d,
        spec,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));
    assert_eq!(r["size"].as_u64().unwrap(), 256 << 20);
    assert_eq!(fs::metadata(&img).unwrap().len(), 256 << 20);
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(
        v.stdout_str().contains("No problems found"),
        "{}",
        v.describe()
    );
    let root = &r["partitions"][1];
    let (at, len) = (
        root["offset"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
    );
    // The rest of the disk, short of the backup table and alignment: less than 1 MiB is left.
    assert!(at + len <= (256 << 20) - 33 * 512);
    assert!((256 << 20) - (at + len) < 2 << 20, "{r}");
    let part = extract(&img, at, len, &d.join("root.part"));
    e2fsck_clean(&part);
    let out = d.join("etc-out");
    rdump(&part, &["/etc".into()], &out);
    assert_eq!(fs::read(out.join("etc/hostname")).unwrap(), b"overridden\n");
    assert_eq!(fs::read(out.join("etc/extra.conf")).unwrap(), b"x=1\n");
    assert!(out.join("etc/tool-link").symlink_metadata().is_ok());
}

#[test]
fn a_built_disk_served_rw_takes_writes_in_the_overlay_and_never_touches_the_trees() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let before = fs::read(d.join("blob.bin")).unwrap();
    fs::write(d.join("disk.toml"), SPEC).unwrap();
    let mut cmd = disksynth();
    cmd.arg("build")
        .arg(d.join("disk.toml"))
        .args(["--rw", "--dir"])
        .arg(d)
        .arg("-U")
        .arg(d.join("sock"));
    let server = Server::spawn(cmd);
    // Write over the whole disk's first MiB (protective MBR and GPT) and into the blob.
    let out = disksynth_tests::qemu_io(server.uri(), &["write -P 0x42 0 1M", "read -P 0x42 0 1M"]);
    assert_eq!(
        disksynth_tests::qemu_io_transfers(&out).len(),
        2,
        "{}",
        out.describe()
    );
    assert_eq!(fs::read(d.join("blob.bin")).unwrap(), before);
}

#[test]
fn inspect_reads_a_built_disk_and_a_disk_sfdisk_partitioned() {
    require_tool!("sfdisk", "mkfs.fat");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let img = d.join("disk.img");
    build_ok(
        d,
        SPEC,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));
    let out = run_ok(disksynth().arg("inspect").arg("--json").arg(&img));
    let i: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(i["table"], "gpt");
    assert_eq!(i["disk_guid"], r["disk_guid"]);
    assert_eq!(i["problems"].as_array().unwrap().len(), 0, "{i}");
    for (a, b) in i["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["partitions"].as_array().unwrap())
    {
        for key in ["offset", "size", "label", "type_guid", "guid", "attributes"] {
            assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
        }
    }
    assert_eq!(i["partitions"][0]["filesystem"]["type"], "vfat");
    assert_eq!(
        i["partitions"][0]["filesystem"]["uuid"],
        r["partitions"][0]["filesystem"]["uuid"]
    );
    assert_eq!(i["partitions"][1]["filesystem"]["type"], "ext4");
    assert_eq!(
        i["partitions"][1]["filesystem"]["uuid"],
        r["partitions"][1]["filesystem"]["uuid"]
    );

    // A table another tool wrote, with a filesystem another tool made.
    let peer = d.join("peer.img");
    fs::File::create(&peer).unwrap().set_len(64 << 20).unwrap();
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&peer)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=40960, type=c, bootable\nstart=43008, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let part = d.join("p1.img");
    fs::File::create(&part)
        .unwrap()
        .set_len(40960 * 512)
        .unwrap();
    run_ok(
        Command::new("mkfs.fat")
            .args(["-F", "16", "-n", "PEERFAT", "-i", "1234ABCD"])
            .arg(&part),
    );
    let bytes = fs::read(&part).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&peer).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 2048 * 512).unwrap();
    let out = run_ok(disksynth().arg("inspect").arg("--json").arg(&peer));
    let i: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(i["table"], "mbr", "{i}");
    let p = i["partitions"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["offset"], 2048 * 512);
    assert_eq!(p[0]["mbr_type"], "0x0c");
    assert_eq!(p[0]["bootable"], true);
    assert_eq!(p[0]["filesystem"]["type"], "vfat");
    assert_eq!(p[0]["filesystem"]["uuid"], "1234-ABCD");
    assert_eq!(p[0]["filesystem"]["label"], "PEERFAT");
    assert_eq!(p[1]["offset"], 43008 * 512);
    assert_eq!(p[1]["filesystem"], Value::Null);
}

#[test]
fn iso_partitions_take_the_iso_options_el_torito_included() {
    require_tool!("xorriso");
    let dir = tempdir();
    let d = dir.path();
    write_file(d, "media/boot/loader.bin", &vec![0x90u8; 4096]);
    write_file(d, "media/README.TXT", b"hello\n");
    let spec = r#"
[disk]
seed = "iso"
[[partition]]
label = "media"
type = "basic-data"
fs = "iso"
source = "media"
fs_label = "MEDIA_1"
boot = "boot/loader.bin"
boot_load_size = 4
no_joliet = true
"#;
    let img = d.join("disk.img");
    build_ok(
        d,
        spec,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));
    let p = &r["partitions"][0];
    assert_eq!(p["filesystem"]["label"], "MEDIA_1");
    let part = extract(
        &img,
        p["offset"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
        &d.join("p.iso"),
    );
    let out = run(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(&part)
            .args(["-report_el_torito", "plain", "-pvd_info"])
            .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(out.status.success(), "{}", out.describe());
    assert!(text.contains("El Torito boot img :   1  BIOS"), "{text}");
    assert!(text.contains("MEDIA_1"), "{text}");
    assert!(!text.contains("Joliet"), "--no-joliet: {text}");
    // An ISO option on an ext4 partition is refused.
    let bad = spec.replace("fs = \"iso\"", "fs = \"ext4\"");
    let out = build(d, &bad, &["-o", d.join("bad.img").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("does not apply"),
        "{}",
        out.describe()
    );
}

#[test]
fn remote_and_xz_partitions_are_read_lazily_into_the_disk() {
    require_tool!("xz");
    let dir = tempdir();
    let d = dir.path();
    let raw: Vec<u8> = (0..3u32 << 20).map(|i| (i % 249) as u8 + 1).collect();
    fs::write(d.join("img.raw"), &raw).unwrap();
    run_ok(
        disksynth()
            .args(["pack"])
            .arg(d.join("img.raw"))
            .arg(d.join("img.raw.xz"))
            .args(["--block-size", "1M"]),
    );
    let server = disksynth_tests::httpd::FaultServer::start(raw.clone());
    let spec = format!(
        "[disk]\nseed = \"remote\"\n[[partition]]\nlabel = \"packed\"\ntype = \"linux-generic\"\nxz = \"img.raw.xz\"\n[[partition]]\nlabel = \"web\"\ntype = \"linux-generic\"\nsource = \"{}\"\n",
        server.url()
    );
    let img = d.join("disk.img");
    build_ok(
        d,
        &spec,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));
    for p in r["partitions"].as_array().unwrap() {
        let at = p["offset"].as_u64().unwrap();
        assert_eq!(p["size"].as_u64().unwrap(), raw.len() as u64, "{p}");
        assert!(read_image(&img, at, raw.len()) == raw, "{p}: bytes differ");
    }
}

#[test]
fn every_filesystem_key_reaches_its_filesystem() {
    require_tool!("debugfs", "e2fsck");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let spec = r#"
[disk]
table = "gpt"
seed = "keys"
align = "4K"
[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = "esp"
size = "min:40M"
fat = 32
serial = "1234ABCD"
fs_label = "EFIBOOT"
strict_names = true
guid = "11111111-2222-4333-8444-555555555555"
[[partition]]
label = "root"
type = "root-x86-64"
fs = "ext4"
source = "rootfs"
owner = "root"
uuid = "01234567-89ab-4def-8123-456789abcdef"
fs_label = "rootfs"
no_xattrs = true
"#;
    let img = d.join("disk.img");
    build_ok(
        d,
        spec,
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    let r = report(&d.join("r.json"));
    let esp = &r["partitions"][0];
    let root = &r["partitions"][1];
    assert_eq!(esp["guid"], "11111111-2222-4333-8444-555555555555");
    assert!(esp["size"].as_u64().unwrap() >= 40 << 20);
    // align = 4K: the first partition starts right after the GPT, on a 4 KiB boundary.
    assert_eq!(esp["offset"].as_u64().unwrap() % 4096, 0);
    assert!(esp["offset"].as_u64().unwrap() < 1 << 20, "{esp}");
    let out = run_ok(disksynth().arg("inspect").arg("--json").arg(&img));
    let i: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(i["partitions"][0]["filesystem"]["uuid"], "1234-ABCD");
    assert_eq!(i["partitions"][0]["filesystem"]["label"], "EFIBOOT");
    assert_eq!(
        read_image(&img, esp["offset"].as_u64().unwrap() + 82, 5),
        b"FAT32"
    );
    assert_eq!(
        i["partitions"][1]["filesystem"]["uuid"],
        "01234567-89ab-4def-8123-456789abcdef"
    );
    assert_eq!(i["partitions"][1]["filesystem"]["label"], "rootfs");
    let part = extract(
        &img,
        root["offset"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
        &d.join("root.part"),
    );
    e2fsck_clean(&part);
    let st = disksynth_tests::ext4_util::debugfs_stat(&part, "/etc/hostname");
    assert_eq!((st.uid, st.gid), (0, 0), "owner = root");

    // table = "none": the disk is the one filesystem.
    let none = "[disk]\ntable = \"none\"\n[[partition]]\nlabel = \"only\"\ntype = \"linux-generic\"\nfs = \"ext4\"\nsource = \"rootfs\"\n";
    let img = d.join("none.img");
    build_ok(d, none, &["-o", img.to_str().unwrap()]);
    e2fsck_clean(&img);
    let out = run_ok(disksynth().arg("inspect").arg("--json").arg(&img));
    let i: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(i["table"], Value::Null);
    assert_eq!(i["filesystem"]["type"], "ext4");
}

/// `floppy`, `ext4` and `iso` are one-partition specs (`table = "none"`) built by the same code as
/// every `build` partition: each subcommand's image equals the spec's, byte for byte, whole-disk
/// options (FAT's MBR and floppy formats, ISO hybrid tables with a synthesized EFI image) included.
#[test]
fn every_generator_subcommand_is_the_one_partition_spec_with_its_options() {
    require_tool!("cmp", "fsck.fat", "e2fsck", "xorriso");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    write_file(d, "small/readme.txt", b"a floppy\n");
    write_file(d, "small/sub/data.bin", &vec![7u8; 20_000]);
    let sub = |args: &[&str], out: &Path| {
        let mut cmd = disksynth();
        cmd.args(args)
            .arg("-o")
            .arg(out)
            .env_remove("SOURCE_DATE_EPOCH");
        let o = run(&mut cmd, CMD_TIMEOUT);
        assert!(o.status.success(), "{}", o.describe());
    };
    let d_s = d.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["floppy".into(), format!("{d_s}/esp"), "--label".into(), "ESP".into()],
            "fs = \"fat\"\nsource = \"esp\"\nfs_label = \"ESP\"\npartition = \"mbr\"\n".into(),
        ),
        (
            vec!["floppy".into(), format!("{d_s}/small"), "--floppy".into(), "1.44M".into(), "--serial".into(), "1234-abcd".into()],
            "fs = \"fat\"\nsource = \"small\"\nfloppy = \"1.44M\"\nserial = \"1234ABCD\"\n".into(),
        ),
        (
            vec!["floppy".into(), format!("{d_s}/esp"), "--partition".into(), "none".into(), "--size".into(), "40M".into(), "--fat".into(), "32".into()],
            "fs = \"fat\"\nsource = \"esp\"\nsize = \"40M\"\nfat = 32\n".into(),
        ),
        (
            vec!["ext4".into(), format!("{d_s}/rootfs"), "--label".into(), "root".into(), "--owner".into(), "root".into()],
            "fs = \"ext4\"\nsource = \"rootfs\"\nfs_label = \"root\"\nowner = \"root\"\n".into(),
        ),
        (
            vec!["ext4".into(), format!("{d_s}/rootfs"), "--size".into(), "48M".into(), "--uuid".into(), "0b9f4f8e-35d5-4d63-9c3e-5a1d2f7e8a10".into()],
            "fs = \"ext4\"\nsource = \"rootfs\"\nsize = \"48M\"\nuuid = \"0b9f4f8e-35d5-4d63-9c3e-5a1d2f7e8a10\"\n".into(),
        ),
        (
            vec!["iso".into(), format!("{d_s}/rootfs"), "--volid".into(), "LIVE".into(), "--efi-boot-dir".into(), format!("{d_s}/esp"), "--hybrid".into()],
            "fs = \"iso\"\nsource = \"rootfs\"\nfs_label = \"LIVE\"\nefi_boot_dir = \"esp\"\nhybrid = true\n".into(),
        ),
    ];
    for (i, (args, keys)) in cases.iter().enumerate() {
        let a = d.join(format!("sub{i}.img"));
        let b = d.join(format!("spec{i}.img"));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        sub(&argv, &a);
        let spec = format!("[disk]\ntable = \"none\"\n\n[[partition]]\nlabel = \"it\"\ntype = \"linux-generic\"\n{keys}");
        build_ok(d, &spec, &["-o", b.to_str().unwrap()]);
        cmp_files(&a, &b);
        assert!(fs::metadata(&a).unwrap().len() > 0);
    }
    // And what they built is what their checkers accept.
    run_ok(Command::new("fsck.fat").arg("-n").arg(d.join("spec1.img")));
    e2fsck_clean(&d.join("spec3.img"));
    let x = run_ok(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(d.join("spec5.img"))
            .args(["-report_el_torito", "plain"]),
    );
    assert!(x.stdout_str().contains("UEFI"), "{}", x.describe());
}

/// With a disk size and no `remaining` partition, the last partition grows to fill the disk
/// (unless its size is fixed, then the rest is free space).
#[test]
fn a_sized_disk_grows_its_last_partition_unless_that_size_is_fixed() {
    require_tool!("sfdisk", "e2fsck");
    let dir = tempdir();
    let d = dir.path();
    trees(d);
    let spec = |root_size: &str| {
        format!(
            "[disk]\nsize = \"128M\"\nseed = \"grow\"\n[[partition]]\nlabel = \"esp\"\ntype = \"esp\"\nfs = \"fat\"\nsource = \"esp\"\nsize = \"32M\"\n[[partition]]\nlabel = \"root\"\ntype = \"root-x86-64\"\nfs = \"ext4\"\nsource = \"rootfs\"\n{root_size}"
        )
    };
    let img = d.join("grow.img");
    let json = d.join("grow.json");
    build_ok(
        d,
        &spec(""),
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let r = report(&json);
    let root = &r["partitions"][1];
    let (at, len) = (
        root["offset"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
    );
    assert!(at + len <= (128 << 20) - 33 * 512, "{r}");
    assert!(
        (128 << 20) - (at + len) < 2 << 20,
        "the last partition did not grow: {r}"
    );
    let part = extract(&img, at, len, &d.join("root.part"));
    e2fsck_clean(&part);
    // The filesystem fills its partition.
    let dumpe2fs = run_ok(Command::new("dumpe2fs").arg("-h").arg(&part));
    let blocks: u64 = dumpe2fs
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Block count");
    assert_eq!(blocks * 4096, len / 4096 * 4096);
    let sf: Value =
        serde_json::from_str(&run_ok(Command::new("sfdisk").arg("--json").arg(&img)).stdout_str())
            .unwrap();
    assert_eq!(
        sf["partitiontable"]["partitions"][1]["size"]
            .as_u64()
            .unwrap()
            * 512,
        len
    );

    // A fixed last size stays as it is.
    build_ok(
        d,
        &spec("size = \"16M\"\n"),
        &[
            "-o",
            img.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let r = report(&json);
    assert_eq!(r["partitions"][1]["size"].as_u64().unwrap(), 16 << 20);
    assert_eq!(r["size"].as_u64().unwrap(), 128 << 20);
}
