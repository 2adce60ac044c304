//! The boot proof's pieces: the cached Debian root filesystem (built once, outside the checkout,
//! by `tests/scripts/prepare-rootfs.sh`), an EFI system partition directory holding GRUB, its
//! configuration, the kernel and the initramfs, a GPT disk assembled from separately built
//! partition images, and a UEFI boot of such a disk until the guest's init prints [`MARKER`].
//!
//! ```no_run
//! use disksynth_tests::{rootfs, tempdir};
//! # fn t() {
//! let Some(root) = rootfs::require() else { return };
//! let dir = tempdir();
//! let esp = root.esp_dir(dir.path());
//! let disk = rootfs::assemble_gpt_disk(dir.path(), &esp, &root.dir);
//! let boot = rootfs::boot_linux(dir.path(), &disk.display().to_string());
//! eprintln!("booted in {:?}", boot.elapsed);
//! # }
//! ```

use std::env;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::generator::build_image;
use crate::qemu_boot::{boot, require_files, Boot, BootOptions, Firmware, OVMF_CODE, OVMF_VARS};
use crate::{run_ok, tool_available};

/// What `/sbin/disksynth-init` prints once the kernel has mounted the root and run it; the rest
/// of its line is `kernel=RELEASE root=DEVICE fstype=TYPE`.
pub const MARKER: &str = "DISKSYNTH-BOOT-OK";

/// Debian's monolithic GRUB for UEFI (package grub-efi-amd64-bin): every module built in, and an
/// early configuration that reads `grub.cfg` beside the binary.
pub const GRUB_EFI: &str = "/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi";

/// The kernel command line: the root is found by its GPT partition name (the initramfs resolves
/// it with blkid), the marker script is init, and a panic, or an initramfs that has not found the
/// root after 30 s (its default wait), reboots at once, which `-no-reboot` turns into qemu
/// exiting: a visible failure well within [`LINUX_BOOT_TIMEOUT`]. `quiet`: under TCG every line
/// on the emulated serial port costs time (the kernel's usual few hundred lines are about 10 s of
/// a 30 s boot); errors, panics and the init's own output still appear. No `rootdelay=`: with it
/// the boot took its full length longer here.
pub const KERNEL_CMDLINE: &str =
    "root=PARTLABEL=root ro console=ttyS0 init=/sbin/disksynth-init panic=-1 quiet";

/// A Linux boot that has not printed the marker by then fails (OVMF, GRUB and the kernel under
/// TCG take about 25 s on an idle machine here, 45 s or more on a busy one).
pub const LINUX_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where prepared root filesystems are kept: `$DISKSYNTH_TEST_CACHE`, else
/// `/var/cache/disksynth-tests` (the same rule as the script's).
pub fn cache_dir() -> PathBuf {
    env::var_os("DISKSYNTH_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/disksynth-tests"))
}

/// `ROOTFS_NAME` of `tests/scripts/prepare-rootfs.sh` (e.g. `rootfs-bookworm-v1`): the script is
/// the one place that names the recipe's version.
pub fn rootfs_name() -> String {
    let script = crate::script("prepare-rootfs.sh");
    let text =
        fs::read_to_string(&script).unwrap_or_else(|e| panic!("reading {}: {e}", script.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("readonly ROOTFS_NAME="))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `readonly ROOTFS_NAME=` line in {}", script.display()))
}

/// The prepared root filesystem: `cache_dir()/rootfs_name()`.
pub fn rootfs_path() -> PathBuf {
    cache_dir().join(rootfs_name())
}

/// A prepared root filesystem and the kernel and initramfs in its `/boot`.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The tree (the ext4 partition's source).
    pub dir: PathBuf,
    /// `boot/vmlinuz-*`.
    pub kernel: PathBuf,
    /// `boot/initrd.img-*`, made to mount an ext4 root on virtio-blk.
    pub initrd: PathBuf,
}

fn skip_or_fail(why: &str) -> Option<Rootfs> {
    if crate::in_ci() {
        panic!("{why} (CI=true makes this a failure)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The prepared root filesystem, when it and everything a UEFI boot needs (qemu, OVMF, GRUB) are
/// there. Otherwise the caller returns: under `CI=true` this panics (scripts/test.sh prepares the
/// tree and installs the packages), else it prints SKIPPED and returns `None`.
pub fn require() -> Option<Rootfs> {
    if !tool_available("qemu-system-x86_64") {
        return skip_or_fail("required tool \"qemu-system-x86_64\" is not installed");
    }
    if !require_files(&[OVMF_CODE, OVMF_VARS, GRUB_EFI]) {
        return None;
    }
    let dir = rootfs_path();
    if !dir.join("sbin/disksynth-init").is_file() {
        return skip_or_fail(&format!(
            "the boot tests' root filesystem {} is missing: run tests/scripts/prepare-rootfs.sh \
             as root (scripts/test.sh does)",
            dir.display()
        ));
    }
    // The tree is root's (0700 directories, 0640 files): only root can read all of it.
    if !rustix::process::geteuid().is_root() {
        return skip_or_fail("the boot tests read a root-owned tree: run them as root");
    }
    let one = |prefix: &str| {
        let mut found: Vec<PathBuf> = fs::read_dir(dir.join("boot"))
            .unwrap_or_else(|e| panic!("reading {}/boot: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {prefix}* in {}/boot: {found:?}",
            dir.display()
        );
        found.remove(0)
    };
    let kernel = one("vmlinuz-");
    let initrd = one("initrd.img-");
    Some(Rootfs {
        dir,
        kernel,
        initrd,
    })
}

impl Rootfs {
    /// Makes `work/esp`, the EFI system partition's tree: GRUB as the removable-media loader
    /// `EFI/BOOT/BOOTX64.EFI`, its `grub.cfg` beside it (booting `/vmlinuz` with `/initrd.img`
    /// and [`KERNEL_CMDLINE`], no menu), and copies of the cached kernel and initramfs. Copies,
    /// not hard links: a link would change the cached files' change time, which a disksynth
    /// serving the root tree in a parallel test rightly treats as a changed file.
    pub fn esp_dir(&self, work: &Path) -> PathBuf {
        let esp = work.join("esp");
        let boot = esp.join("EFI/BOOT");
        fs::create_dir_all(&boot).expect("creating the ESP tree");
        fs::copy(GRUB_EFI, boot.join("BOOTX64.EFI")).expect("copying GRUB");
        fs::copy(&self.kernel, esp.join("vmlinuz")).expect("copying the kernel");
        fs::copy(&self.initrd, esp.join("initrd.img")).expect("copying the initramfs");
        fs::write(
            boot.join("grub.cfg"),
            format!(
                "set timeout=0\n\
                 echo \"disksynth: GRUB loads linux from $root\"\n\
                 linux /vmlinuz {KERNEL_CMDLINE}\n\
                 initrd /initrd.img\n\
                 boot\n"
            ),
        )
        .expect("writing grub.cfg");
        esp
    }
}

/// Size of the EFI system partition the boot tests use.
pub const ESP_SIZE: u64 = 64 << 20;

const MIB: u64 = 1 << 20;

/// The boot disk made without `disksynth build`, from pieces: `disksynth floppy ESP --partition
/// none --size 64M -o`, `disksynth ext4 ROOTFS --owner root --label root -o`, a GPT written by
/// `sgdisk` (partition 1 `esp` of type EF00 at 1 MiB, partition 2 `root` of type 8304 right
/// after it) and the two images copied into their partitions (all-zero MiBs left as holes).
/// Returns `work/assembled.img`.
pub fn assemble_gpt_disk(work: &Path, esp: &Path, root: &Path) -> PathBuf {
    let esp_img = work.join("esp.img");
    let root_img = work.join("root.img");
    build_image(
        "floppy",
        esp,
        &esp_img,
        &["--partition", "none", "--size", "64M"],
    );
    build_image(
        "ext4",
        root,
        &root_img,
        &["--owner", "root", "--label", "root"],
    );
    let esp_len = fs::metadata(&esp_img).unwrap().len();
    assert_eq!(esp_len, ESP_SIZE);
    let root_len = fs::metadata(&root_img).unwrap().len().div_ceil(MIB) * MIB;
    let esp_start = MIB;
    let root_start = esp_start + esp_len;
    // 1 MiB after the root for the backup GPT.
    let disk = work.join("assembled.img");
    let total = root_start + root_len + MIB;
    fs::File::create(&disk)
        .and_then(|f| f.set_len(total))
        .expect("creating the disk image");
    let sectors = |bytes: u64| bytes / 512;
    let part = |n: u32, start: u64, len: u64| {
        format!("{n}:{}:{}", sectors(start), sectors(start + len) - 1)
    };
    run_ok(&mut crate::command(
        "sgdisk",
        [
            "-n",
            &part(1, esp_start, esp_len),
            "-t",
            "1:EF00",
            "-c",
            "1:esp",
            "-n",
            &part(2, root_start, root_len),
            "-t",
            "2:8304",
            "-c",
            "2:root",
            disk.to_str().unwrap(),
        ],
    ));
    copy_into(&esp_img, &disk, esp_start);
    copy_into(&root_img, &disk, root_start);
    disk
}

/// `dd if=FROM of=TO seek=AT conv=notrunc,sparse`, in bytes.
fn copy_into(from: &Path, to: &Path, at: u64) {
    let mut src = fs::File::open(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .open(to)
        .unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = at;
    loop {
        let mut len = 0;
        while len < buf.len() {
            match src
                .read(&mut buf[len..])
                .expect("reading a partition image")
            {
                0 => break,
                n => len += n,
            }
        }
        if len == 0 {
            break;
        }
        if buf[..len].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(pos)).unwrap();
            dst.write_all(&buf[..len])
                .expect("writing into the disk image");
        }
        pos += len as u64;
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `work/disk.toml`, the `disksynth build` spec of the boot disk: GPT, an ESP (FAT, 64 MiB) from
/// `esp` and an ext4 root from the cached tree (partition names `esp` and `root`, as
/// [`KERNEL_CMDLINE`] expects).
pub fn write_disk_spec(work: &Path, esp: &Path, root: &Rootfs) -> PathBuf {
    let spec = format!(
        r#"[disk]
table = "gpt"
seed = "boot-test"

[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = {}
size = "64M"

[[partition]]
label = "root"
type = "root-x86-64"
fs = "ext4"
source = {}
owner = "root"
"#,
        toml_str(esp.to_str().expect("UTF-8 path")),
        toml_str(root.dir.to_str().expect("UTF-8 path"))
    );
    let path = work.join("disk.toml");
    fs::write(&path, spec).expect("writing the disk spec");
    path
}

/// Boots `file` (a qemu `file=` value: an image path or an `nbd+unix://` URI) as a virtio disk
/// under OVMF until the guest's init prints [`MARKER`] with its ext4 root on the disk's second
/// partition, within [`LINUX_BOOT_TIMEOUT`]; qemu is killed afterwards. Panics with the console
/// otherwise.
pub fn boot_linux(work: &Path, file: &str) -> Boot {
    // snapshot=on: the export is read-only; any write (none is expected) stays in qemu.
    boot_linux_drive(
        work,
        &format!("if=virtio,format=raw,snapshot=on,file={file}"),
    )
}

/// [`boot_linux`] with a `-drive` value.
pub fn boot_linux_drive(work: &Path, drive: &str) -> Boot {
    boot_linux_with(work, &["-drive".to_string(), drive.to_string()])
}

/// [`boot_linux`] with any qemu arguments that make the boot disk a virtio disk (e.g. `-blockdev`
/// nodes of qemu's own https driver under its qcow2 driver, and a `-device virtio-blk-pci`).
pub fn boot_linux_with(work: &Path, disk_args: &[String]) -> Boot {
    let result = try_boot_linux_with(work, disk_args, LINUX_BOOT_TIMEOUT);
    assert!(
        result.found,
        "no `{MARKER} ... {LINUX_ROOT_SEEN}` within {LINUX_BOOT_TIMEOUT:?} booting {}; console:\n{}",
        disk_args.join(" "),
        result.text
    );
    result
}

/// What the marker line says once the root is mounted from the disk's second partition.
const LINUX_ROOT_SEEN: &str = "root=/dev/vda2 fstype=ext4";

/// [`boot_linux_with`] within `timeout`, returning the boot whether or not the marker came
/// (`found`), for a caller that judges it itself.
pub fn try_boot_linux_with(work: &Path, disk_args: &[String], timeout: Duration) -> Boot {
    let options = BootOptions {
        timeout,
        memory_mib: 512,
        debugcon: false,
    };
    // The serial port reaches the log byte by byte: wait for the end of the line, not the marker.
    boot(
        work,
        Firmware::Uefi,
        disk_args,
        &[MARKER, LINUX_ROOT_SEEN],
        &options,
    )
}
