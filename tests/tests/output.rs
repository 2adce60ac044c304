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

/// A spawned `disksynth` with stderr captured, killed by its pid if the test ends first.
struct Running {
    child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn spawn(cmd: &mut std::process::Command) -> Running {
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running {
            child,
            stderr: Some(stderr),
        }
    }

    fn signal(&self, sig: disksynth_tests::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// The exit status and stderr, within `timeout` (else killed, and the test fails).
    fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let err = self.stderr.take().unwrap().join().unwrap();
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("disksynth did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// SIGINT/SIGTERM ~300 ms into `-o FILE` of a 20 GiB pattern (data to write): exit 128 + the
/// signal within about a second, one line saying the file was not written, no temp file left,
/// no target created.
fn interrupted_output(sig: disksynth_tests::Signal, code: i32) {
    let dir = tempdir();
    let out = dir.path().join("big.img");
    let running = Running::spawn(disksynth().args(["pattern", "20G", "-o"]).arg(&out));
    // The temp file exists while it runs (the interruption really has something to clean up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names_in(dir.path())
        .iter()
        .any(|n| n.starts_with(".big.img."))
    {
        assert!(Instant::now() < deadline, "no temp file while writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    running.signal(sig);
    let sent = Instant::now();
    let (status, stderr) = running.finish(Duration::from_secs(30));
    let took = sent.elapsed();
    assert_eq!(
        status.code(),
        Some(code),
        "{sig:?}: {status}, stderr {stderr:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "{sig:?} took {took:?} to stop -o"
    );
    assert_eq!(
        stderr.trim_end(),
        format!("disksynth: interrupted; {} not written", out.display()),
        "{sig:?}: want one line"
    );
    assert_eq!(names_in(dir.path()), Vec::<String>::new(), "left behind");
}

#[test]
fn sigint_during_output_exits_130_and_leaves_nothing() {
    interrupted_output(disksynth_tests::Signal::INT, 130);
}

#[test]
fn sigterm_during_output_exits_143_and_leaves_nothing() {
    interrupted_output(disksynth_tests::Signal::TERM, 143);
}

/// A FIFO target is written in place: after SIGINT it is still the FIFO, and the line says the
/// output is incomplete. The same for `/dev/null`.
#[test]
fn sigint_during_output_to_a_fifo_or_device_says_incomplete() {
    let dir = tempdir();
    let fifo = dir.path().join("pipe");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = fs::File::open(fifo).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            while let Ok(k) = f.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            n
        })
    };
    for target in [fifo.as_path(), std::path::Path::new("/dev/null")] {
        let running = Running::spawn(disksynth().args(["pattern", "20G", "-o"]).arg(target));
        std::thread::sleep(Duration::from_millis(300));
        running.signal(disksynth_tests::Signal::INT);
        let (status, stderr) = running.finish(Duration::from_secs(30));
        assert_eq!(status.code(), Some(130), "{target:?}: {status} {stderr:?}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "disksynth: interrupted; {} is incomplete (it is written in place)",
                target.display()
            )
        );
    }
    let got = reader.join().unwrap();
    assert!(got > 0 && got < 20 << 30, "the FIFO got {got} bytes");
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(names_in(dir.path()), ["pipe"]);
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

/// SIGINT while `-o` waits on a stalled HTTP read (nothing checks the flag): after the grace
/// period the signal thread removes our temp file itself, prints the same line, exits 130.
#[test]
fn sigint_while_a_read_is_stuck_still_removes_the_temp_file() {
    use disksynth_tests::httpd::{Fault, FaultServer};
    let server = FaultServer::start(random_bytes(5, 16 << 20));
    server.fail_next(1000, Fault::Stall(Duration::from_secs(60)));
    let dir = tempdir();
    let out = dir.path().join("remote.img");
    let running = Running::spawn(
        disksynth()
            .args(["http", &server.url(), "--timeout", "60", "-o"])
            .arg(&out),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !names_in(dir.path())
        .iter()
        .any(|n| n.starts_with(".remote.img."))
    {
        assert!(Instant::now() < deadline, "-o never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    running.signal(disksynth_tests::Signal::INT);
    let sent = Instant::now();
    let (status, stderr) = running.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{status} {stderr:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(
        stderr.trim_end(),
        format!("disksynth: interrupted; {} not written", out.display())
    );
    assert_eq!(names_in(dir.path()), Vec::<String>::new(), "left behind");
}

/// SIGINT during `-o -`: 130, and the line says stdout is incomplete.
#[test]
fn sigint_during_output_to_stdout_says_incomplete() {
    let mut running = Running::spawn(
        disksynth()
            .args(["pattern", "20G", "-o", "-"])
            .stdout(std::process::Stdio::piped()),
    );
    let mut stdout = running.child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    std::thread::sleep(Duration::from_millis(300));
    running.signal(disksynth_tests::Signal::INT);
    let (status, stderr) = running.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{status} {stderr:?}");
    assert_eq!(
        stderr.trim_end(),
        "disksynth: interrupted; the output on stdout is incomplete"
    );
    let got = drain.join().unwrap().unwrap();
    assert!(got > 0 && got < 20 << 30, "{got} bytes on stdout");
}

/// `disksynth pattern 20G -o - | head -c 1M`: head gets its MiB, disksynth exits promptly with
/// 141 (as `cat` killed by SIGPIPE) and prints nothing.
#[test]
fn output_to_a_closed_pipe_exits_quietly() {
    let mut running = Running::spawn(
        disksynth()
            .args(["pattern", "20G", "-o", "-"])
            .stdout(std::process::Stdio::piped()),
    );
    let stdout = running.child.stdout.take().unwrap();
    let head = std::process::Command::new("head")
        .args(["-c", "1M"])
        .stdin(stdout)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let head_out = head.wait_with_output().unwrap();
    assert_eq!(head_out.stdout.len(), MIB as usize);
    assert!(head_out.stdout == pattern(0, MIB as usize));
    let (status, stderr) = running.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(141), "{status}");
    assert_eq!(stderr, "", "a closed pipe is not an error to report");
}

/// Bytes with no zero among them: a hole or a missing tail read as zeros shows.
fn nonzero_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = random_bytes(seed, len);
    for b in &mut v {
        *b |= 1;
    }
    v
}

const BIG: usize = 64 << 20;

/// Put the big file back whole: all of `data` (the bytes past `from` rewritten), mtime `t0`.
/// Size first, so until the data is written the tail is a hole (zeros) in a file of the right
/// size; size and mtime end as they were, so only a copy-time check can tell.
fn set_intact(
    path: &std::path::Path,
    data: &[u8],
    from: usize,
    t0: std::time::SystemTime,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(BIG as u64)?;
    f.write_all_at(&data[from..], from as u64)?;
    f.set_modified(t0)
}

/// Cut the big file to `len` bytes, mtime `t`.
fn set_cut(path: &std::path::Path, len: usize, t: std::time::SystemTime) -> std::io::Result<()> {
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len as u64)?;
    f.set_modified(t)
}

/// `disksynth KIND TREE -o OUT` (or `-o -`) while another thread cuts and restores a 64 MiB file
/// of the tree in place, many times: every run either exits 0 with exactly the image of one
/// state the file rests in (intact, cut to half, cut by 1 MiB: each built beforehand), or fails
/// naming the file, leaving no output file and no temp file. Never a success with wrong bytes.
/// (A run could legitimately succeed on a passing state, say half rewritten, only if the
/// mutator stalled there for a whole run; its mtime is then "now", the scan sees that, and the
/// image matches no reference: a false alarm, not seen in practice.)
fn changing_file_never_gives_a_wrong_image(kind: &str, to_stdout: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let src = tempdir();
    let refs = tempdir();
    let outdir = tempdir();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("small.txt"), "a small file beside the big one\n").unwrap();
    let big = tree.join("big.bin");
    let data = Arc::new(nonzero_bytes(12, BIG));
    fs::write(&big, &*data).unwrap();
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    // (length, mtime) of the cut states.
    let cuts = [
        (BIG / 2, t0 + Duration::from_secs(86_400)),
        (BIG - MIB as usize, t0 + Duration::from_secs(2 * 86_400)),
    ];
    let cmd = |target: &std::path::Path| {
        let mut c = disksynth();
        c.arg(kind)
            .arg(&tree)
            .arg("-o")
            .arg(target)
            .env("SOURCE_DATE_EPOCH", "1700000000");
        c
    };
    let mut references = Vec::new();
    for (i, &(len, t)) in cuts.iter().enumerate() {
        set_cut(&big, len, t).unwrap();
        let r = refs.path().join(format!("cut{i}.img"));
        run_ok(&mut cmd(&r));
        references.push(fs::read(&r).unwrap());
    }
    set_intact(&big, &data, 0, t0).unwrap();
    let r = refs.path().join("intact.img");
    run_ok(&mut cmd(&r));
    references.push(fs::read(&r).unwrap());
    drop(refs);

    let stop = Arc::new(AtomicBool::new(false));
    let mutator = {
        let (stop, big, data) = (stop.clone(), big.clone(), data.clone());
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut cycles = 0u64;
            let mut seed = 7u64;
            // An error ends the loop (a failed test's directory is gone).
            while !stop.load(Ordering::Relaxed) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                // A storm: the tail cut and put back as fast as it goes, for ~50 ms.
                let storm = Instant::now();
                let (len, t) = cuts[1];
                while storm.elapsed() < Duration::from_millis(50) {
                    set_cut(&big, len, t)?;
                    set_intact(&big, &data, len, t0)?;
                    cycles += 1;
                }
                // A rest cut to half, then whole again.
                let (len, t) = cuts[0];
                set_cut(&big, len, t)?;
                std::thread::sleep(Duration::from_millis(seed >> 61));
                set_intact(&big, &data, len, t0)?;
                // Sometimes long enough for a whole run to see only the intact file.
                std::thread::sleep(Duration::from_millis((seed >> 56) % 4 * 120));
                cycles += 1;
            }
            Ok(cycles)
        })
    };

    let target = outdir.path().join("out.img");
    let (mut ok, mut failed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    while ok + failed < 30 && Instant::now() < deadline {
        let out = if to_stdout {
            run(&mut cmd(std::path::Path::new("-")), CMD_TIMEOUT)
        } else {
            run(&mut cmd(&target), CMD_TIMEOUT)
        };
        if out.status.success() {
            let image = if to_stdout {
                out.stdout.clone()
            } else {
                fs::read(&target).unwrap()
            };
            let matched = references.iter().position(|r| *r == image);
            assert!(
                matched.is_some(),
                "run {}: exit 0 with an image matching no state of the file\n{}",
                ok + failed,
                out.describe()
            );
            if !to_stdout {
                fs::remove_file(&target).unwrap();
            }
            ok += 1;
        } else {
            assert!(
                out.stderr_str().contains("big.bin"),
                "the failure does not name the file\n{}",
                out.describe()
            );
            failed += 1;
        }
        assert_eq!(names_in(outdir.path()), Vec::<String>::new());
    }
    stop.store(true, Ordering::Relaxed);
    let cycles = mutator.join().unwrap().unwrap();
    eprintln!(
        "{kind} (stdout: {to_stdout}): {ok} exact images, {failed} refused, {cycles} mutations"
    );
    assert!(ok + failed >= 10, "only {} runs in time", ok + failed);
    assert!(
        failed > 0,
        "the file never changed under a run: the test proves nothing"
    );
}

#[test]
fn changing_host_file_never_gives_a_wrong_floppy_image() {
    changing_file_never_gives_a_wrong_image("floppy", false);
}

#[test]
fn changing_host_file_never_gives_a_wrong_floppy_image_on_stdout() {
    changing_file_never_gives_a_wrong_image("floppy", true);
}

#[test]
fn changing_host_file_never_gives_a_wrong_ext4_image() {
    changing_file_never_gives_a_wrong_image("ext4", false);
}

#[test]
fn changing_host_file_never_gives_a_wrong_iso_image() {
    changing_file_never_gives_a_wrong_image("iso", false);
}
