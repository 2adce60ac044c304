//! Disks from `formats::partition` checked by real partitioning tools:
//! `sgdisk -v` (clean), `sfdisk --json` (offsets, sizes, types, GUIDs and
//! names equal the report), `fdisk -l`, `fsck.fat -n` on a FAT partition,
//! and 4096-byte sectors through a loop device (`losetup -b 4096`, root).
//! A missing tool skips a test, unless `CI=true` (as `require_tool!` in
//! `tests/src/lib.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use formats::fat::{FatOptions, Partitioning};
use formats::partition::{
    self, attribute_bit, DiskOptions, DiskReport, PartType, PartitionSpec, TableKind,
};
use synth::{BlockDev, RegionMapBuilder};

const MIB: u64 = 1 << 20;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn tool_available(tool: &str) -> bool {
    [
        "/usr/sbin",
        "/sbin",
        "/usr/bin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(tool).exists())
}

macro_rules! require_tool {
    ($($tool:expr),+ $(,)?) => {
        $(
            if !tool_available($tool) {
                if in_ci() {
                    panic!("required tool {:?} is missing (CI=true makes this a failure)", $tool);
                }
                eprintln!("SKIPPED: required tool {:?} is not installed", $tool);
                return;
            }
        )+
    };
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// Every byte of `dev` into `path` (what `-o` writes).
fn write_image(dev: &dyn BlockDev, path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(dev.size()).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < dev.size() {
        let n = (dev.size() - at).min(MIB) as usize;
        dev.read_at(&mut buf[..n], at).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            f.write_all_at(&buf[..n], at).unwrap();
        }
        at += n as u64;
    }
}

/// A raw content: a pattern then zeros.
fn raw(len: u64, seed: u8) -> Arc<dyn BlockDev> {
    let mut b = RegionMapBuilder::new();
    let data = len.min(64 << 10);
    b.push_bytes(
        "data",
        (0..data)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    b.pad_to(len).unwrap();
    Arc::new(b.finish())
}

fn spec(label: &str, kind: &str, content: Arc<dyn BlockDev>, size: u64) -> PartitionSpec {
    PartitionSpec {
        label: label.into(),
        kind: PartType::parse(kind).unwrap(),
        content,
        size,
        attributes: 0,
        guid: None,
        bootable: false,
    }
}

/// A small directory tree and its 8 MiB FAT volume for a partition that
/// starts at byte `start` (hidden sectors).
fn fat_volume(dir: &Path, start: u64) -> Arc<dyn BlockDev> {
    let src = dir.join("tree");
    std::fs::create_dir_all(src.join("EFI/BOOT")).unwrap();
    std::fs::write(src.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4Du8; 70_000]).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from a partition\n").unwrap();
    let tree = tree::scan(
        &src,
        &tree::ScanOptions {
            follow_symlinks: true,
            ..Default::default()
        },
    )
    .unwrap();
    let image = formats::fat::build(
        &tree,
        &FatOptions {
            size: Some(8 * MIB),
            partition: Partitioning::None,
            hidden_sectors: Some((start / 512) as u32),
            timestamp: Some(1_700_000_000),
            ..FatOptions::default()
        },
    )
    .unwrap();
    assert_eq!(image.map.size(), 8 * MIB);
    Arc::new(image.map)
}

fn sfdisk_json(target: &str) -> serde_json::Value {
    let text = run_ok("sfdisk", &["--json", target]);
    let start = text.find('{').expect("JSON from sfdisk");
    serde_json::from_str(&text[start..text.rfind('}').unwrap() + 1]).unwrap()
}

/// `sfdisk --json` agrees with the report on every partition.
fn check_sfdisk(target: &str, report: &DiskReport, label: &str) {
    let j = sfdisk_json(target);
    let t = &j["partitiontable"];
    assert_eq!(t["label"], label, "{j}");
    let ss = report.sector_size;
    if let Some(s) = t.get("sectorsize") {
        assert_eq!(s.as_u64(), Some(ss));
    }
    match label {
        "gpt" => assert_eq!(
            t["id"].as_str().unwrap(),
            report.disk_guid.unwrap().to_string()
        ),
        _ => assert_eq!(
            t["id"].as_str().unwrap(),
            format!("0x{:08x}", report.mbr_signature.unwrap())
        ),
    }
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), report.partitions.len(), "{j}");
    for (p, r) in parts.iter().zip(&report.partitions) {
        assert_eq!(p["start"].as_u64().unwrap() * ss, r.offset, "{p}");
        assert_eq!(p["size"].as_u64().unwrap() * ss, r.size, "{p}");
        if label == "gpt" {
            assert_eq!(
                p["type"].as_str().unwrap(),
                r.type_guid.unwrap().to_string(),
                "{p}"
            );
            assert_eq!(p["uuid"].as_str().unwrap(), r.guid.unwrap().to_string());
            assert_eq!(p["name"].as_str().unwrap_or(""), r.label);
        } else {
            let ty = u8::from_str_radix(p["type"].as_str().unwrap(), 16).unwrap();
            assert_eq!(Some(ty), r.mbr_type, "{p}");
        }
    }
}

fn sgdisk_clean(target: &str) {
    let text = run_ok("sgdisk", &["-v", target]);
    assert!(
        text.contains("No problems found"),
        "sgdisk -v {target}:\n{text}"
    );
}

fn img_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn gpt_disk_with_fat_esp_passes_sgdisk_sfdisk_fdisk_fsck() {
    require_tool!("sgdisk", "sfdisk", "fdisk", "fsck.fat");
    let dir = tempfile::tempdir().unwrap();
    let opts = DiskOptions {
        table: TableKind::Gpt,
        seed: b"peer test".to_vec(),
        ..DiskOptions::default()
    };
    let sizes = [8 * MIB, 3 * MIB, MIB];
    let plan = partition::plan(&opts, &sizes).unwrap();
    let esp = fat_volume(dir.path(), plan.starts[0]);
    let mut root = spec("root", "root-x86-64", raw(3 * MIB - 4096 + 17, 1), 3 * MIB);
    root.attributes = attribute_bit("grow-fs").unwrap() | attribute_bit("read-only").unwrap();
    let mut esp_spec = spec("EFI System", "esp", esp, 8 * MIB);
    esp_spec.attributes = attribute_bit("required").unwrap();
    let disk = partition::build(
        &opts,
        vec![esp_spec, root, spec("swap", "swap", raw(5000, 2), MIB)],
    )
    .unwrap();
    assert_eq!(disk.map.size(), plan.disk_size);
    let starts: Vec<u64> = disk.report.partitions.iter().map(|p| p.offset).collect();
    assert_eq!(starts, plan.starts);
    let img = img_path(&dir, "gpt.img");
    write_image(&disk.map, &img);
    let target = img.to_str().unwrap();
    sgdisk_clean(target);
    check_sfdisk(target, &disk.report, "gpt");
    let j = sfdisk_json(target);
    let attrs = j["partitiontable"]["partitions"][1]["attrs"]
        .as_str()
        .unwrap_or("");
    assert!(attrs.contains("59") && attrs.contains("60"), "{attrs}");
    let fdisk = run_ok("fdisk", &["-l", target]);
    assert!(fdisk.contains("Disklabel type: gpt"), "{fdisk}");
    assert!(fdisk.contains("EFI System"), "{fdisk}");

    // The FAT partition on its own: clean, and its BPB knows where it is.
    let fat = img_path(&dir, "esp.img");
    let mut bytes = vec![0u8; (8 * MIB) as usize];
    disk.map.read_at(&mut bytes, plan.starts[0]).unwrap();
    assert_eq!(
        u32::from_le_bytes(bytes[28..32].try_into().unwrap()) as u64,
        plan.starts[0] / 512,
        "BPB_HiddSec"
    );
    std::fs::write(&fat, &bytes).unwrap();
    run_ok("fsck.fat", &["-n", fat.to_str().unwrap()]);
}

#[test]
fn mbr_disk_passes_sfdisk_fdisk() {
    require_tool!("sfdisk", "fdisk", "fsck.fat");
    let dir = tempfile::tempdir().unwrap();
    let opts = DiskOptions {
        table: TableKind::Mbr,
        seed: b"mbr peer".to_vec(),
        size: Some(16 * MIB),
        ..DiskOptions::default()
    };
    let plan = partition::plan(&opts, &[8 * MIB, 2 * MIB, MIB, MIB]).unwrap();
    let mut fat = spec("", "0x0c", fat_volume(dir.path(), plan.starts[0]), 8 * MIB);
    fat.bootable = true;
    let disk = partition::build(
        &opts,
        vec![
            fat,
            spec("", "linux-generic", raw(MIB + 1, 3), 2 * MIB),
            spec("", "swap", raw(10, 4), MIB),
            spec("", "xbootldr", raw(MIB, 5), MIB),
        ],
    )
    .unwrap();
    assert_eq!(disk.map.size(), 16 * MIB);
    let img = img_path(&dir, "mbr.img");
    write_image(&disk.map, &img);
    let target = img.to_str().unwrap();
    check_sfdisk(target, &disk.report, "dos");
    let j = sfdisk_json(target);
    assert_eq!(j["partitiontable"]["partitions"][0]["bootable"], true);
    let fdisk = run_ok("fdisk", &["-l", target]);
    assert!(fdisk.contains("Disklabel type: dos"), "{fdisk}");
    let mut bytes = vec![0u8; (8 * MIB) as usize];
    disk.map.read_at(&mut bytes, plan.starts[0]).unwrap();
    let fat_img = img_path(&dir, "fat.img");
    std::fs::write(&fat_img, &bytes).unwrap();
    run_ok("fsck.fat", &["-n", fat_img.to_str().unwrap()]);
}

#[test]
fn hybrid_disk_passes_sgdisk_sfdisk_fdisk() {
    require_tool!("sgdisk", "sfdisk", "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let opts = DiskOptions {
        table: TableKind::Hybrid,
        seed: b"hybrid peer".to_vec(),
        ..DiskOptions::default()
    };
    let mut esp = spec("EFI", "esp", raw(MIB, 6), 2 * MIB);
    esp.bootable = true;
    let disk = partition::build(
        &opts,
        vec![
            spec("BIOS", "bios-boot", raw(1000, 7), MIB),
            esp,
            spec("root", "linux-generic", raw(MIB, 8), 2 * MIB),
        ],
    )
    .unwrap();
    let img = img_path(&dir, "hybrid.img");
    write_image(&disk.map, &img);
    let target = img.to_str().unwrap();
    sgdisk_clean(target);
    check_sfdisk(target, &disk.report, "gpt");
    // The MBR side: the 0xEE entry and the two mirrored partitions.
    let fdisk = run_ok("fdisk", &["-l", "-t", "dos", target]);
    assert!(fdisk.contains("Disklabel type: dos"), "{fdisk}");
    let lines: Vec<&str> = fdisk.lines().filter(|l| l.starts_with(target)).collect();
    assert_eq!(lines.len(), 3, "{fdisk}");
    assert!(lines[0].contains(" ee "), "{fdisk}");
    assert!(
        lines[1].contains('*') && lines[1].contains(" ef "),
        "{fdisk}"
    );
    assert!(lines[2].contains(" 83 "), "{fdisk}");
}

/// Detaches the loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn gpt_with_4096_byte_sectors_on_a_loop_device() {
    require_tool!("losetup", "sgdisk", "sfdisk");
    if !rustix::process::geteuid().is_root() {
        if in_ci() {
            panic!("attaching a loop device needs root (CI=true makes this a failure)");
        }
        eprintln!("SKIPPED: attaching a loop device needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for table in [TableKind::Gpt, TableKind::Hybrid, TableKind::Mbr] {
        let opts = DiskOptions {
            table,
            sector_size: 4096,
            seed: b"4k".to_vec(),
            ..DiskOptions::default()
        };
        let disk = partition::build(
            &opts,
            vec![
                spec("data", "linux-generic", raw(MIB + 4096, 9), 2 * MIB),
                spec("swap", "swap", raw(4096, 10), MIB),
            ],
        )
        .unwrap();
        let img = img_path(&dir, &format!("4k-{table}.img"));
        write_image(&disk.map, &img);
        let out = run(
            "losetup",
            &["-b", "4096", "-f", "--show", img.to_str().unwrap()],
        );
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if in_ci() {
                panic!("losetup failed: {err}");
            }
            eprintln!("SKIPPED: losetup failed (no loop devices here?): {err}");
            return;
        }
        let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
        if table != TableKind::Mbr {
            sgdisk_clean(&dev.0);
        }
        let label = if table == TableKind::Mbr {
            "dos"
        } else {
            "gpt"
        };
        check_sfdisk(&dev.0, &disk.report, label);
        drop(dev);
    }
}
