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
