//! `-o FILE`: the whole device as a sparse raw image, written atomically; `-o -` to stdout.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use disksynth_tests::{
    disksynth, pattern, random_bytes, run, run_ok, tempdir, write_sparse_file, CMD_TIMEOUT, MIB,
};

fn assert_sparse_gib(mode: &str) {
    let dir = tempdir();
    let out = dir.path().join("out.img");
    run_ok(disksynth().args([mode, "1G", "-o"]).arg(&out));
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 1 << 30, "{mode} 1G -o: size");
    assert!(
        meta.blocks() * 512 <= MIB,
        "{mode} 1G -o allocated {} bytes",
        meta.blocks() * 512
    );
    let entries: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["out.img"], "{mode} 1G -o left other files behind");
}

#[test]
fn output_of_memory_1g_is_sparse() {
    assert_sparse_gib("memory");
}

#[test]
fn output_of_zero_1g_is_sparse() {
    assert_sparse_gib("zero");
}

#[test]
fn output_of_pattern_equals_pattern() {
    let dir = tempdir();
    let out = dir.path().join("p.img");
    run_ok(disksynth().args(["pattern", "4M", "-o"]).arg(&out));
    assert!(
        fs::read(&out).unwrap() == pattern(0, 4 * MIB as usize),
        "pattern 4M -o differs"
    );
}

#[test]
fn output_file_appears_only_when_complete() {
    let dir = tempdir();
    let out = dir.path().join("big.img");
    let size = 128 * MIB;
    let mut child = disksynth()
        .args(["pattern", "128M", "-o"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CMD_TIMEOUT;
    let mut incomplete = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pattern 128M -o took longer than {CMD_TIMEOUT:?}");
        }
        if let Ok(mut f) = fs::File::open(&out) {
            // Whenever the name is visible its content must be final: full size, last word set.
            let len = f.metadata().unwrap().len();
            let mut last = [0u8; 8];
            let ok = len == size
                && f.seek(SeekFrom::Start(size - 8)).is_ok()
                && f.read_exact(&mut last).is_ok()
                && last == (size - 8).to_be_bytes();
            if !ok {
                incomplete.push(len);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(status.success(), "pattern 128M -o failed: {status}");
    assert!(
        incomplete.is_empty(),
        "saw {out:?} before it was complete (sizes {incomplete:?})"
    );
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
}

#[test]
fn output_of_sparse_file_is_identical_and_stays_sparse() {
    let dir = tempdir();
    let src = dir.path().join("sparse.img");
    write_sparse_file(&src, 64 * MIB, &[(4 * MIB, MIB), (40 * MIB, 512 * 1024)]);
    let copy = dir.path().join("copy.img");

    run_ok(disksynth().arg("file").arg(&src).arg("-o").arg(&copy));

    assert!(
        fs::read(&copy).unwrap() == fs::read(&src).unwrap(),
        "copy differs from source"
    );
    let (src_blocks, copy_blocks) = (
        fs::metadata(&src).unwrap().blocks(),
        fs::metadata(&copy).unwrap().blocks(),
    );
    assert!(
        copy_blocks <= src_blocks + 128,
        "copy allocates {} bytes, source {}",
        copy_blocks * 512,
        src_blocks * 512
    );
}

#[test]
fn output_to_stdout_equals_the_file() {
    let dir = tempdir();
    let src = dir.path().join("disk.img");
    let data = random_bytes(4, 3 * MIB as usize + 4096);
    fs::write(&src, &data).unwrap();

    let out = run(
        disksynth().arg("file").arg(&src).args(["-o", "-"]),
        CMD_TIMEOUT,
    );

    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "-o - output differs from the file");
}

#[test]
fn output_to_stdout_of_sparse_file_includes_the_zeros() {
    let dir = tempdir();
    let src = dir.path().join("sparse.img");
    write_sparse_file(&src, 8 * MIB, &[(MIB, 64 * 1024)]);
    let out = run(
        disksynth().arg("file").arg(&src).args(["-o", "-"]),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout == fs::read(&src).unwrap(),
        "-o - of a sparse file differs from it"
    );
}

/// `-o /dev/null` writes into the device; it must not be replaced by a regular file (renaming a
/// temp file over it would break every program on the machine).
#[test]
fn output_to_a_character_device_writes_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let null = std::path::Path::new("/dev/null");
    if !fs::metadata(null).unwrap().file_type().is_char_device() {
        panic!("/dev/null is not a character device on this machine (scripts/test.sh repairs it)");
    }
    run_ok(disksynth().args(["pattern", "4M", "-o", "/dev/null"]));
    assert!(
        fs::metadata(null).unwrap().file_type().is_char_device(),
        "-o /dev/null replaced the device"
    );
}

/// `-o /dev/loopN` (as `-o /dev/sdX` for a USB stick): every byte is written, holes included,
/// because the device keeps its old contents where nothing is written; a device smaller than
/// the image is refused before anything is written.
#[test]
fn output_to_a_block_device_overwrites_every_byte() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempdir();
    let backing = dir.path().join("disk.raw");
    fs::write(&backing, vec![0xEE; 8 * MIB as usize]).unwrap();
    let attach = run(
        std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing),
        CMD_TIMEOUT,
    );
    if !attach.status.success() {
        // Attaching a loop device is a privilege of the machine (root, /dev/loop*), not a tool.
        eprintln!(
            "SKIPPED: losetup cannot attach here: {}",
            attach.stderr_str()
        );
        return;
    }
    let loopdev = attach.stdout_str().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(loopdev.clone());

    // An all-hole image: the device's old 0xEE bytes must all become zeros.
    run_ok(disksynth().args(["zero", "6M", "-o", &loopdev]));
    assert!(fs::metadata(&loopdev)
        .unwrap()
        .file_type()
        .is_block_device());
    let mut got = vec![0u8; 8 * MIB as usize];
    fs::File::open(&loopdev)
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert!(
        got[..6 * MIB as usize].iter().all(|&b| b == 0),
        "the image's zeros were not written over the old contents"
    );
    assert!(
        got[6 * MIB as usize..].iter().all(|&b| b == 0xEE),
        "bytes past the image were touched"
    );

    run_ok(disksynth().args(["pattern", "8M", "-o", &loopdev]));
    fs::File::open(&loopdev)
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert!(
        got == pattern(0, 8 * MIB as usize),
        "pattern 8M on the loop device differs"
    );

    let too_big = run(
        disksynth().args(["zero", "9M", "-o", &loopdev]),
        CMD_TIMEOUT,
    );
    assert!(
        !too_big.status.success(),
        "a 9 MiB image fit an 8 MiB device"
    );
    assert!(
        too_big
            .stderr_str()
            .contains("the device holds 8388608 bytes"),
        "unclear error: {}",
        too_big.stderr_str()
    );
    fs::File::open(&loopdev)
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert!(
        got == pattern(0, 8 * MIB as usize),
        "a refused write changed the device"
    );
}
