//! `--fuse DIR`: the disk as DIR/disk through FUSE, read by the kernel's own clients (a loop
//! mount of ext4, e2fsck, cp --sparse, qemu-img, dd with O_DIRECT) and compared with the `-o`
//! image of the same disk. Every test leaves no mount behind: [`FuseDisk`] unmounts lazily on
//! drop whatever happened, loop mounts are guards too.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use disksynth_tests::ext4_util::{e2fsck_clean, LoopMount};
use disksynth_tests::generator::{build_image, cmp_files, qemu_img_identical};
use disksynth_tests::trees::{chmod, diff_snapshots, is_root, set_mtime, snapshot, write_file};
use disksynth_tests::{
    disksynth, random_bytes, require_tool, run, run_ok, seek_map, tempdir, write_sparse_file,
    Output, Server, Signal, CMD_TIMEOUT, MIB,
};
use rustix::fs::{seek, SeekFrom};
use rustix::io::Errno;

/// Whether FUSE mounts work here: /dev/fuse, and root or fusermount3. Under CI=true (root, a
/// kernel with FUSE) a missing piece is a failure.
fn fuse_ready() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && (is_root() || disksynth_tests::tool_available("fusermount3"));
    if !ok {
        assert!(
            !disksynth_tests::in_ci(),
            "FUSE is not usable here (/dev/fuse and root or fusermount3)"
        );
        eprintln!("SKIPPED: FUSE is not usable here (/dev/fuse and root or fusermount3)");
    }
    ok
}

/// Whether `dir` is a mountpoint now (per /proc/mounts).
fn mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    let dir = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*dir))
}

/// `disksynth ARGS... --fuse DIR/m`, running: stdout line 1 is the file's path. Dropping it
/// stops the server with SIGTERM and lazily unmounts DIR/m if it is still mounted (a failed
/// test must not leave a mount behind).
struct FuseDisk {
    server: Server,
    mnt: PathBuf,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl FuseDisk {
    fn start(args: &[&str]) -> FuseDisk {
        Self::start_with(args, &[])
    }

    /// With `after` given after `--fuse DIR/m`.
    fn start_with(args: &[&str], after: &[&str]) -> FuseDisk {
        let dir = tempdir();
        let mnt = dir.path().join("m");
        fs::create_dir(&mnt).expect("creating the mountpoint");
        let mut cmd = disksynth();
        cmd.args(args).arg("--fuse").arg(&mnt).args(after);
        // Stdout line 1: the file's path, or with -U/--serve the NBD URI (printed after the
        // mount, so the file is there either way).
        let server = Server::spawn(cmd);
        let file = mnt.join("disk");
        FuseDisk {
            server,
            mnt,
            file,
            _dir: dir,
        }
    }

    fn stop(&mut self, sig: Signal) -> ExitStatus {
        self.server.stop_with(sig)
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        self.server.signal(Signal::TERM);
        let _ = self.server.wait_exit(Duration::from_secs(10));
        if mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// A small tree with awkward sizes, modes and mtimes (nanoseconds too).
fn build_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    write_file(root, "a.txt", b"hello\n");
    write_file(root, "empty", b"");
    write_file(root, "bin/tool", &random_bytes(1, 70_001));
    write_file(
        root,
        "big/one-mib-plus-three",
        &random_bytes(2, MIB as usize + 3),
    );
    write_file(root, "big/4096", &random_bytes(3, 4096));
    write_file(root, "private/secret", b"s3cret");
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    chmod(&root.join("bin/tool"), 0o755);
    chmod(&root.join("private/secret"), 0o600);
    chmod(&root.join("private"), 0o700);
    chmod(&root.join("a.txt"), 0o640);
    // Children first: setting a file's time does not touch its directory's, creating does.
    let mut paths: Vec<_> = [
        "a.txt",
        "empty",
        "bin/tool",
        "big/one-mib-plus-three",
        "big/4096",
        "private/secret",
        "link",
        "bin",
        "big",
        "private",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    paths.push(root.to_path_buf());
    for (i, p) in paths.iter().enumerate() {
        set_mtime(p, 1_500_000_000 + 86_400 * i as i64);
    }
    disksynth_tests::ext4_util::set_mtime_ns(&root.join("a.txt"), 1_234_567_890, 123_456_789);
}

/// The mounted tree equals the host tree: names, bytes, symlink targets, and every entry's
/// type, permission bits and mtime (to the nanosecond).
fn assert_same_tree(host: &Path, mounted: &Path) {
    let mut got = snapshot(mounted, false);
    got.remove("lost+found");
    let diff = diff_snapshots(&snapshot(host, false), &got, 20);
    assert!(diff.is_empty(), "trees differ:\n{}", diff.join("\n"));
    let host_meta = disksynth_tests::ext4_util::walk_meta(host);
    for (rel, want) in &host_meta {
        let have = fs::symlink_metadata(mounted.join(rel)).unwrap();
        assert_eq!(have.mode(), want.mode(), "mode of {rel:?}");
        assert_eq!(
            (have.mtime(), have.mtime_nsec()),
            (want.mtime(), want.mtime_nsec()),
            "mtime of {rel:?}"
        );
    }
}

#[test]
fn ext4_through_fuse_loop_mounts_as_the_host_tree_and_equals_the_image() {
    require_tool!("mount", "umount", "qemu-img", "cmp");
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let tree = dir.path().join("tree");
    build_tree(&tree);
    let img = dir.path().join("ext4.img");
    build_image("ext4", &tree, &img, &[]);

    let disk = FuseDisk::start(&["ext4", tree.to_str().unwrap()]);
    assert_eq!(
        Path::new(disk.server.uri()),
        disk.file,
        "stdout line 1 is the file"
    );
    assert!(mounted(&disk.mnt));
    let meta = fs::metadata(&disk.file).unwrap();
    assert_eq!(meta.len(), fs::metadata(&img).unwrap().len());
    assert_eq!(
        meta.mode() & 0o777,
        0o444,
        "a read-only disk is a read-only file"
    );

    // The same bytes as -o writes, per qemu-img and cmp.
    qemu_img_identical(disk.file.to_str().unwrap(), &img);
    cmp_files(&disk.file, &img);

    // The kernel mounts it through a loop device and sees the host tree.
    let Some(mnt) = LoopMount::new(&disk.file) else {
        return;
    };
    assert_same_tree(&tree, &mnt.dir);
}

#[test]
fn rw_through_fuse_takes_a_loop_mounted_writer_and_stays_fsck_clean() {
    require_tool!("mount", "umount", "e2fsck");
    if !fuse_ready() || !is_root() {
        return;
    }
    let dir = tempdir();
    let tree = dir.path().join("tree");
    build_tree(&tree);
    let before = snapshot(&tree, false);
    let disk = FuseDisk::start(&["ext4", tree.to_str().unwrap(), "--rw", "--size", "64M"]);
    assert_eq!(
        fs::metadata(&disk.file).unwrap().mode() & 0o777,
        0o644,
        "a writable disk is a writable file"
    );

    let new = random_bytes(9, 300_001);
    {
        let Some(rw) = LoopMount::new_rw(&disk.file) else {
            return;
        };
        fs::write(rw.dir.join("new.bin"), &new).unwrap();
        fs::create_dir(rw.dir.join("newdir")).unwrap();
        fs::remove_file(rw.dir.join("a.txt")).unwrap();
        fs::write(rw.dir.join("big/4096"), b"overwritten").unwrap();
        rw.unmount();
    }
    // e2fsck reads the file through FUSE: the writes made a consistent filesystem.
    e2fsck_clean(&disk.file);
    let Some(ro) = LoopMount::new(&disk.file) else {
        return;
    };
    assert_eq!(fs::read(ro.dir.join("new.bin")).unwrap(), new);
    assert!(ro.dir.join("newdir").is_dir());
    assert!(!ro.dir.join("a.txt").exists());
    assert_eq!(fs::read(ro.dir.join("big/4096")).unwrap(), b"overwritten");
    drop(ro);
    // The writes went to the overlay, never to the host tree.
    let diff = diff_snapshots(&before, &snapshot(&tree, false), 10);
    assert!(
        diff.is_empty(),
        "the host tree changed:\n{}",
        diff.join("\n")
    );
}

#[test]
fn cp_sparse_keeps_the_holes_the_extents_report() {
    require_tool!("cp", "du");
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let src = dir.path().join("sparse.img");
    // Data at 0, 5 MiB and the last 64 KiB of 24 MiB; holes between.
    write_sparse_file(
        &src,
        24 * MIB,
        &[(0, MIB), (5 * MIB, 2 * MIB), (24 * MIB - 65536, 65536)],
    );
    let img = dir.path().join("out.img");
    let out = run(
        disksynth().arg("file").arg(&src).arg("-o").arg(&img),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.describe());

    let disk = FuseDisk::start(&["file", src.to_str().unwrap()]);
    // lseek(SEEK_DATA/SEEK_HOLE) on the FUSE file finds what the -o image holds.
    let map = seek_map(&disk.file);
    assert_eq!(
        map,
        seek_map(&img),
        "SEEK_DATA/SEEK_HOLE map of the FUSE file"
    );
    assert_eq!(
        map.iter()
            .filter(|e| e.kind == 0)
            .map(|e| e.len)
            .sum::<u64>(),
        3 * MIB + 65536,
        "{map:?}"
    );

    let copy = dir.path().join("copy.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&disk.file)
            .arg(&copy),
    );
    cmp_files(&copy, &img);
    assert_eq!(seek_map(&copy), seek_map(&img));
    let du = |p: &Path| -> String {
        let out = run_ok(Command::new("du").arg("-k").arg(p));
        out.stdout_str()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(du(&copy), du(&img), "du of the copy and of the -o image");
}

#[test]
fn two_readers_at_once_direct_and_buffered_read_the_same_bytes() {
    require_tool!("dd", "cmp");
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let src = dir.path().join("data.img");
    fs::write(&src, random_bytes(4, 24 * MIB as usize)).unwrap();
    let disk = FuseDisk::start(&["file", src.to_str().unwrap()]);
    let out = dir.path().join("direct.img");
    let (a, b) = std::thread::scope(|s| {
        let direct = s.spawn(|| {
            run(
                Command::new("dd")
                    .arg(format!("if={}", disk.file.display()))
                    .arg(format!("of={}", out.display()))
                    .args(["bs=1M", "iflag=direct", "status=none"]),
                CMD_TIMEOUT,
            )
        });
        let buffered = s.spawn(|| run(Command::new("cmp").arg(&disk.file).arg(&src), CMD_TIMEOUT));
        (direct.join().unwrap(), buffered.join().unwrap())
    });
    assert!(a.status.success(), "{}", a.describe());
    assert!(b.status.success(), "{}", b.describe());
    cmp_files(&out, &src);
}

#[test]
fn reads_at_the_limits_are_whole_or_short_at_the_end_and_seek_past_it_is_enxio() {
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let src = dir.path().join("odd.img");
    // An odd size: the end is not on a page or sector boundary.
    let size = 3 * MIB as usize + 4097;
    let bytes = random_bytes(5, size);
    fs::write(&src, &bytes).unwrap();
    let disk = FuseDisk::start(&["file", src.to_str().unwrap()]);
    let f = File::open(&disk.file).unwrap();
    let size = size as u64;

    let read = |len: usize, off: u64| -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        // read_at may return less than asked only at the end: loop until 0.
        while got < len {
            let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        buf
    };
    let at = |off: u64, len: usize| bytes[off as usize..off as usize + len].to_vec();
    assert_eq!(read(1, 0), at(0, 1), "1 byte at 0");
    assert_eq!(read(1, 12345), at(12345, 1), "1 byte at 12345");
    assert_eq!(read(1, size - 1), at(size - 1, 1), "the last byte");
    let big = MIB as usize + 1;
    assert_eq!(read(big, 4095), at(4095, big), "1 MiB + 1 at 4095");
    assert_eq!(read(big, 0), at(0, big), "1 MiB + 1 at 0");
    // Across the end: short, the rest of the file only.
    assert_eq!(read(10_000, size - 100), at(size - 100, 100));
    // At and after the end: nothing.
    assert!(read(4096, size).is_empty());
    assert!(read(1, size + 1).is_empty());
    assert!(read(MIB as usize, 1 << 40).is_empty());

    // O_DIRECT: 1 MiB + 4 KiB at an aligned offset.
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&disk.file)
        .unwrap();
    let mut aligned = vec![0u8; MIB as usize + 8192];
    // O_DIRECT wants a page-aligned buffer: take the aligned slice of a larger one.
    let skip = aligned.as_ptr().align_offset(4096);
    let buf = &mut aligned[skip..skip + MIB as usize + 4096];
    let n = direct.read_at(buf, 8192).unwrap();
    assert!(n > 0, "O_DIRECT read returned nothing");
    assert_eq!(&buf[..n], &at(8192, n)[..]);

    // SEEK_DATA / SEEK_HOLE: all data here; past the end ENXIO (lseek(2)).
    assert_eq!(seek(&f, SeekFrom::Data(0)), Ok(0));
    assert_eq!(seek(&f, SeekFrom::Hole(0)), Ok(size));
    assert_eq!(seek(&f, SeekFrom::Data(size - 1)), Ok(size - 1));
    assert_eq!(seek(&f, SeekFrom::Data(size)), Err(Errno::NXIO));
    assert_eq!(seek(&f, SeekFrom::Data(size + 4096)), Err(Errno::NXIO));
    assert_eq!(seek(&f, SeekFrom::Hole(size + 1)), Err(Errno::NXIO));

    // A read-only disk refuses to be opened for writing.
    let e = OpenOptions::new().write(true).open(&disk.file).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::ROFS.raw_os_error()), "{e}");
    let e = File::create(disk.mnt.join("new")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::ROFS.raw_os_error()), "{e}");
}

#[test]
fn writes_at_the_limits_land_exactly_and_the_size_is_fixed() {
    require_tool!("dd", "cmp");
    if !fuse_ready() {
        return;
    }
    let size = 8 * MIB;
    let disk = FuseDisk::start(&["memory", &size.to_string()]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.file)
        .unwrap();
    let mut expect = vec![0u8; size as usize];
    let mut put = |data: &[u8], off: u64| {
        f.write_all_at(data, off).unwrap();
        expect[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    put(b"x", 0);
    put(b"yz", 4095);
    put(&random_bytes(6, MIB as usize + 1), 3 * MIB + 17);
    put(b"end", size - 3);
    // O_DIRECT, 1 MiB + 4 KiB, through dd.
    let dir = tempdir();
    let chunk = dir.path().join("chunk");
    let data = random_bytes(7, MIB as usize + 4096);
    fs::write(&chunk, &data).unwrap();
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", chunk.display()))
            .arg(format!("of={}", disk.file.display()))
            .args([
                "bs=1052672",
                "seek=5",
                "oflag=direct",
                "conv=notrunc,fsync",
                "status=none",
            ]),
    );
    let off = 5 * data.len();
    expect[off..off + data.len()].copy_from_slice(&data);
    f.sync_all().unwrap();

    let want = dir.path().join("want");
    fs::write(&want, &expect).unwrap();
    cmp_files(&disk.file, &want);

    // Past the end: no space, as on a block device; across it: short.
    let e = f.write_at(b"!", size).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::NOSPC.raw_os_error()), "{e}");
    assert_eq!(f.write_at(b"1234", size - 2).unwrap(), 2);
    // The size is the disk's: no truncate, no growing.
    let e = f.set_len(size / 2).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::PERM.raw_os_error()), "{e}");
    assert_eq!(fs::metadata(&disk.file).unwrap().len(), size);
    // The directory holds the disk only: no new names, the disk stays.
    for e in [
        File::create(disk.mnt.join("new")).unwrap_err(),
        fs::create_dir(disk.mnt.join("d")).unwrap_err(),
        fs::remove_file(&disk.file).unwrap_err(),
        fs::rename(&disk.file, disk.mnt.join("other")).unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(Errno::PERM.raw_os_error()), "{e}");
    }
    assert!(disk.file.exists());
}

#[test]
fn sigterm_sigint_and_an_outside_umount_stop_it_and_exit_zero() {
    require_tool!("umount");
    if !fuse_ready() {
        return;
    }
    for sig in [Signal::TERM, Signal::INT] {
        let mut disk = FuseDisk::start(&["pattern", "1M"]);
        assert!(mounted(&disk.mnt));
        let st = disk.stop(sig);
        assert!(
            st.success(),
            "{sig:?}: {st:?}\n{}",
            disk.server.stderr_text()
        );
        assert!(!mounted(&disk.mnt), "{sig:?}: still mounted");
    }
    // Unmounted from outside: the server notices and exits.
    let mut disk = FuseDisk::start(&["pattern", "1M"]);
    run_ok(Command::new("umount").arg(&disk.mnt));
    let st = disk.server.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}\n{}",
        disk.server.stderr_text()
    );
    assert!(disk.server.stderr_text().contains("unmounted from outside"));
}

#[test]
fn a_signal_while_the_file_is_open_detaches_and_serves_it_until_closed() {
    if !fuse_ready() {
        return;
    }
    let mut disk = FuseDisk::start(&["pattern", "1M"]);
    let f = File::open(&disk.file).unwrap();
    disk.server.signal(Signal::TERM);
    assert!(
        disk.server
            .wait_stderr_contains("detached", Duration::from_secs(10)),
        "{}",
        disk.server.stderr_text()
    );
    assert!(!mounted(&disk.mnt), "detached, so gone from the namespace");
    // The open file still reads (pattern: each 8-byte word is its own offset, big-endian).
    let mut word = [0u8; 8];
    f.read_exact_at(&mut word, 4096).unwrap();
    assert_eq!(u64::from_be_bytes(word), 4096);
    assert!(disk.server.is_running(), "exited while the file was open");
    drop(f);
    let st = disk.server.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}\n{}",
        disk.server.stderr_text()
    );
}

#[test]
fn run_gets_the_file_as_fuse_and_unmounts_when_it_exits() {
    require_tool!("cmp");
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let src = dir.path().join("data.img");
    fs::write(&src, random_bytes(8, 2 * MIB as usize + 5)).unwrap();
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let _guard = UnmountGuard(&mnt);
    let captive = |cmd: &str, extra: &[&str]| {
        let out = run(
            disksynth()
                .arg("file")
                .arg(&src)
                .arg("--fuse")
                .arg(&mnt)
                .args(extra)
                .arg("--run")
                .arg(cmd)
                .env("IMG", &src),
            CMD_TIMEOUT,
        );
        assert!(!mounted(&mnt), "still mounted after `{cmd}`");
        out
    };
    let out = captive(
        r#"test "$fuse" = "$(dirname "$IMG")/m/disk" && cmp "$fuse" "$IMG""#,
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    let out = captive("exit 3", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", out.describe());
    // Both exporters: the command gets the NBD URI and the file.
    require_tool!("nbdinfo");
    let sock = dir.path().join("sock");
    let out = captive(
        r#"test "$(nbdinfo --size "$uri")" = "$(stat -c %s "$fuse")" && cmp "$fuse" "$IMG""#,
        &["-U", sock.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", out.describe());
}

#[test]
fn a_command_that_leaves_a_loop_device_attached_does_not_hang_the_unmount() {
    require_tool!("losetup");
    if !fuse_ready() || !is_root() {
        return;
    }
    let dir = tempdir();
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let _guard = UnmountGuard(&mnt);
    let mut cmd = disksynth();
    cmd.args(["pattern", "4M", "--fuse"])
        .arg(&mnt)
        .args(["--run", r#"losetup --find --show --read-only "$fuse""#]);
    let out = run(&mut cmd, CMD_TIMEOUT);
    let loopdev = out.stdout_str().trim().to_string();
    // Detach the loop device whatever happened (its backing file is the detached mount).
    let detach = || {
        if loopdev.starts_with("/dev/loop") {
            let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
        }
    };
    if !out.status.success() {
        detach();
        panic!("{}", out.describe());
    }
    // --run ended with the mount busy (the loop device holds the file): it was detached and
    // served a few seconds more, then the server exited (`run` returned) rather than hang.
    detach();
    assert!(!mounted(&mnt));
    assert!(out.stderr_str().contains("detached"), "{}", out.describe());
}

#[test]
fn fuse_refuses_bad_mountpoints_names_and_combinations() {
    let dir = tempdir();
    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    let fails = |args: &[&str], want: &str| {
        let out = run(disksynth().args(args), CMD_TIMEOUT);
        assert!(!out.status.success(), "{}", out.describe());
        assert!(
            out.stderr_str().contains(want),
            "expected {want:?}\n{}",
            out.describe()
        );
        assert!(!out.stderr_str().contains("panicked"), "{}", out.describe());
    };
    let missing = dir.path().join("missing");
    fails(
        &["pattern", "1M", "--fuse", missing.to_str().unwrap()],
        "no such directory",
    );
    fails(
        &["pattern", "1M", "--fuse", file.to_str().unwrap()],
        "not a directory",
    );
    let d = dir.path().to_str().unwrap();
    fails(
        &["pattern", "1M", "--fuse", d, "--fuse-name", "a/b"],
        "is not a file name",
    );
    fails(
        &["pattern", "1M", "--fuse", d, "--fuse-name", ".."],
        "is not a file name",
    );
    fails(
        &["pattern", "1M", "--fuse", d, "-o", "x.img"],
        "not --fuse and -o",
    );
    fails(&["pattern", "1M", "--fuse-name", "x", "-U", "s"], "--fuse");
    // Options of the NBD server alone would be ignored: refused, before anything is mounted.
    for opt in [
        &["--tls", "require"][..],
        &["--exit-last"],
        &["--max-connections", "2"],
    ] {
        let mut args = vec!["pattern", "1M", "--fuse", d];
        args.extend_from_slice(opt);
        fails(&args, "add -U PATH or --serve");
    }
}

#[test]
fn a_dead_mount_left_by_sigkill_is_named_with_the_fix() {
    if !fuse_ready() {
        return;
    }
    let mut disk = FuseDisk::start(&["pattern", "1M"]);
    disk.server.signal(Signal::KILL);
    assert!(disk.server.wait_exit(Duration::from_secs(10)).is_some());
    // SIGKILL cannot unmount: the mount stays, dead (ENOTCONN).
    assert!(mounted(&disk.mnt));
    let out = run(
        disksynth().args(["pattern", "1M", "--fuse"]).arg(&disk.mnt),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("a dead FUSE mount is there")
            && out.stderr_str().contains("umount"),
        "{}",
        out.describe()
    );
    // FuseDisk's drop unmounts it.
}

/// Unmounts DIR lazily on drop if it is still mounted (for tests that mount without
/// [`FuseDisk`]).
struct UnmountGuard<'a>(&'a Path);

impl Drop for UnmountGuard<'_> {
    fn drop(&mut self) {
        if mounted(self.0) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
}

/// Runs `disksynth pattern 1M --fuse MNT --run SCRIPT` as user nobody in a private mount
/// namespace whose /dev/fuse is a node of `mode`: whether unprivileged FUSE is allowed is the
/// device's mode (fusermount3 opens it with the user's own rights), and containers differ (a
/// device passed through 0600; udev's default rule makes it 0666). The host's /dev/fuse is
/// left as it is, and the namespace's mounts end with it. `SCRIPT` runs in the namespace, and
/// after it disksynth's exit status and whether MNT is still mounted there are printed.
fn fuse_as_nobody(mode: u32, script: &str) -> Output {
    let dir = tempdir();
    chmod(dir.path(), 0o755);
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let nobody = rustix::process::Uid::from_raw(65534);
    let nogroup = rustix::process::Gid::from_raw(65534);
    rustix::fs::chown(&mnt, Some(nobody), Some(nogroup)).unwrap();
    let node = dir.path().join("fuse");
    // Every path is ours (tempdir), so single quotes need no escaping; checked anyway.
    let quote = |p: &Path| {
        let p = p.to_str().unwrap();
        assert!(!p.contains('\''), "{p}");
        format!("'{p}'")
    };
    let outer = format!(
        "set -e; mknod -m {mode:o} {node} c 10 229; mount --bind {node} /dev/fuse; \
         set +e; runuser -u nobody -- {bin} pattern 1M --fuse {mnt} --run \"$0\"; \
         echo \"exit=$?\"; grep -c ' {mnt_raw} ' /proc/mounts || true",
        node = quote(&node),
        bin = quote(&disksynth_tests::disksynth_bin()),
        mnt = quote(&mnt),
        mnt_raw = mnt.display(),
    );
    run(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(outer)
            .arg(script),
        CMD_TIMEOUT,
    )
}

#[test]
fn an_unprivileged_user_mounts_through_fusermount3() {
    require_tool!("runuser", "fusermount3", "unshare", "mknod");
    if !fuse_ready() || !is_root() {
        return;
    }
    let out = fuse_as_nobody(
        0o666,
        r#"stat -c '%U %s' "$fuse" && grep -F "$(dirname "$fuse") fuse.disksynth" /proc/mounts"#,
    );
    assert!(out.status.success(), "{}", out.describe());
    let text = out.stdout_str();
    assert!(text.starts_with("nobody 1048576\n"), "{}", out.describe());
    // Mounted by fusermount3 on behalf of uid 65534, not by root.
    assert!(text.contains("user_id=65534"), "{}", out.describe());
    assert!(text.contains("exit=0\n"), "{}", out.describe());
    assert!(
        text.ends_with("\n0\n"),
        "still mounted after --run: {}",
        out.describe()
    );
}

#[test]
fn a_system_that_keeps_fuse_for_root_is_named_in_the_error() {
    require_tool!("runuser", "fusermount3", "unshare", "mknod");
    if !fuse_ready() || !is_root() {
        return;
    }
    let out = fuse_as_nobody(0o600, "echo ran");
    let text = out.stdout_str();
    assert!(!text.contains("ran"), "{}", out.describe());
    assert!(text.contains("exit=1\n"), "{}", out.describe());
    assert!(text.ends_with("\n0\n"), "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains("/dev/fuse is closed to this user: FUSE is for root only on this system"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_host_file_changed_under_the_disk_reads_as_eio_not_as_other_bytes() {
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let tree = dir.path().join("tree");
    build_tree(&tree);
    let disk = FuseDisk::start(&["ext4", tree.to_str().unwrap()]);
    // The file the image was planned around changes size and bytes.
    fs::write(
        tree.join("big/one-mib-plus-three"),
        random_bytes(10, 3 * MIB as usize),
    )
    .unwrap();
    let e = fs::read(&disk.file).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::IO.raw_os_error()), "{e}");
    // The server is still there and still serves the rest.
    let f = File::open(&disk.file).unwrap();
    let mut sb = [0u8; 2];
    f.read_exact_at(&mut sb, 1024 + 0x38).unwrap();
    assert_eq!(sb, [0x53, 0xef], "the ext4 superblock magic");
}

#[test]
fn beside_an_nbd_server_each_exporter_reads_what_the_other_wrote() {
    require_tool!("qemu-io");
    if !fuse_ready() {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("sock");
    let disk = FuseDisk::start(&["memory", "8M", "-U", sock.to_str().unwrap()]);
    let uri = disk.server.uri().to_string();
    assert!(uri.starts_with("nbd+unix://"), "{uri}");
    // Held open throughout: its reads must not come from a page cache the NBD writes bypass.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.file)
        .unwrap();
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, MIB).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    disksynth_tests::qemu_io(&uri, &["write -P 0xab 1M 4k"]);
    f.read_exact_at(&mut buf, MIB).unwrap();
    assert!(
        buf[..4096].iter().all(|&b| b == 0xab),
        "the NBD write is read through FUSE"
    );
    assert!(buf[4096..].iter().all(|&b| b == 0));
    // And the other way.
    f.write_all_at(&[0xcd; 4096], 2 * MIB).unwrap();
    f.sync_all().unwrap();
    disksynth_tests::qemu_io(&uri, &["read -P 0xcd 2M 4k", "read -P 0 0 1M"]);
}
