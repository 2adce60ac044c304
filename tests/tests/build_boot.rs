//! The boot proof of `disksynth build`: a whole GPT disk built from a TOML spec, an EFI system
//! partition (FAT) holding GRUB, a kernel and an initramfs beside an ext4 root made from a small
//! Debian tree, boots in qemu with OVMF (TCG), served over NBD (`-U`) and written with `-o`,
//! until the init the kernel runs from that root prints its marker with the root mounted from the
//! disk's second partition. The tree is prepared once, outside the checkout, by
//! `tests/scripts/prepare-rootfs.sh` (scripts/test.sh runs it); see `disksynth_tests::rootfs`.

use disksynth_tests::generator::output_with;
use disksynth_tests::rootfs::{self, boot_linux};
use disksynth_tests::{disksynth, require_tool, tempdir, unix_uri, Server};

#[test]
fn built_disk_served_over_nbd_boots_linux_to_its_init() {
    let Some(root) = rootfs::require() else {
        return;
    };
    let dir = tempdir();
    let esp = root.esp_dir(dir.path());
    let spec = rootfs::write_disk_spec(dir.path(), &esp, &root);
    let sock = dir.path().join("sock");
    let mut cmd = disksynth();
    cmd.arg("build").arg(&spec).arg("-U").arg(&sock);
    let server = Server::spawn(cmd);
    let boot = boot_linux(dir.path(), &unix_uri(&sock));
    eprintln!(
        "disksynth build -U: booted to the marker in {:?}",
        boot.elapsed
    );
    drop(server);
}

#[test]
fn built_disk_image_file_boots_linux_to_its_init() {
    let Some(root) = rootfs::require() else {
        return;
    };
    let dir = tempdir();
    let esp = root.esp_dir(dir.path());
    let spec = rootfs::write_disk_spec(dir.path(), &esp, &root);
    let img = dir.path().join("disk.img");
    let mut cmd = disksynth();
    cmd.arg("build").arg(&spec);
    output_with(cmd, &img);
    let boot = boot_linux(dir.path(), img.to_str().unwrap());
    eprintln!(
        "disksynth build -o: booted to the marker in {:?}",
        boot.elapsed
    );
}

/// The same disk assembled from pieces that do not need `disksynth build`: the FAT and ext4
/// generators' `-o` images in a GPT that sgdisk writes. It checks the boot harness (root tree,
/// initramfs, GRUB configuration, kernel command line, marker) independently of `build`'s
/// partitioning: when the tests above fail, this one tells a broken harness from a broken
/// `build`. Not run by default: a third 30-second boot that proves nothing new while they pass
/// (`cargo test -p disksynth-tests --test e2e build_boot -- --include-ignored`).
#[test]
#[ignore = "diagnostic for the build boot tests; run with --include-ignored"]
fn gpt_disk_assembled_from_floppy_and_ext4_images_boots_linux_to_its_init() {
    require_tool!("sgdisk");
    let Some(root) = rootfs::require() else {
        return;
    };
    let dir = tempdir();
    let esp = root.esp_dir(dir.path());
    let disk = rootfs::assemble_gpt_disk(dir.path(), &esp, &root.dir);
    let boot = boot_linux(dir.path(), disk.to_str().unwrap());
    eprintln!(
        "assembled GPT disk: booted to the marker in {:?}",
        boot.elapsed
    );
}
