//! Trust: a client is given the bytes of the disk or an error, never anything else. Block status
//! under REQ_ONE through overlays (qemu-img convert), host files that shrink while they are read
//! (all three reply styles), and host files swapped after start-up (symlink, FIFO, device node,
//! rename) by someone who owns the tree.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disksynth_tests::generator::{build_image, cmp_files};
use disksynth_tests::trees::{is_root, mknod, write_file};
use disksynth_tests::{
    python_script, qemu_io_readonly, require_tool, run, run_ok, tempdir, Server, MIB,
};

/// Offset of the first run of `len` bytes equal to `byte`, 512-aligned, in `img`.
fn find_run(img: &Path, byte: u8, len: usize) -> u64 {
    let data = fs::read(img).unwrap();
    (0..=data.len().saturating_sub(len))
        .step_by(512)
        .find(|&o| data[o..o + len].iter().all(|&b| b == byte))
        .unwrap_or_else(|| panic!("no run of {len} bytes {byte:#x} in {}", img.display()))
        as u64
}

/// `disksynth KIND DIR ARGS... -U DIR2/sock`, with `SOURCE_DATE_EPOCH` removed.
fn serve(kind: &str, tree: &Path, sockdir: &Path, args: &[&str]) -> Server {
    let mut cmd = disksynth_tests::disksynth();
    cmd.arg(kind)
        .arg(tree)
        .args(args)
        .arg("-U")
        .arg(sockdir.join("sock"))
        .env_remove("SOURCE_DATE_EPOCH");
    Server::spawn(cmd)
}

fn tree_with_files(root: &Path) {
    write_file(root, "boot/readme.txt", b"a small file\n");
    write_file(root, "data/big.bin", &vec![0x5Au8; 3 * MIB as usize + 1234]);
    write_file(root, "data/other.bin", &vec![0x22u8; 64 * 1024]);
    fs::create_dir_all(root.join("empty")).unwrap();
}

// ---- 1. data reported as a hole ----------------------------------------------------------------

/// `qemu-img convert` of a `--rw` export (qemu asks block status with REQ_ONE) equals `-o`.
#[test]
fn qemu_img_convert_of_rw_generators_equals_the_image() {
    require_tool!("qemu-img", "python3-nbd");
    for kind in ["floppy", "ext4", "iso"] {
        let dir = tempdir();
        let tree = dir.path().join("tree");
        tree_with_files(&tree);
        let reference = dir.path().join("ref.img");
        build_image(kind, &tree, &reference, &[]);
        let server = serve(kind, &tree, dir.path(), &["--rw"]);
        let out = dir.path().join("out.img");
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", server.uri()])
                .arg(&out),
        );
        cmp_files(&reference, &out);
        // The same walk one REQ_ONE answer at a time, checking each zero extent, after writes.
        let walk = run_ok(
            python_script("req_one_walk.py")
                .arg(server.uri())
                .args(["--expect", reference.to_str().unwrap()])
                .args(["--write", "4096:1000", "--write", "1048576:70000"]),
        );
        assert!(
            walk.stdout_str().contains("extents="),
            "{kind}: {}",
            walk.describe()
        );
    }
}

/// A tmpdisk disk a client has written: every REQ_ONE zero extent reads zeros on that connection.
#[test]
fn req_one_walk_of_a_written_tmpdisk_disk_tells_the_truth() {
    require_tool!("python3-nbd");
    for kind in ["ext4", "vfat"] {
        let dir = tempdir();
        let server = Server::disksynth_unix(
            dir.path(),
            &[
                "tmpdisk",
                "64M",
                "--type",
                kind,
                "--dir",
                dir.path().to_str().unwrap(),
            ],
        );
        let walk = run_ok(python_script("req_one_walk.py").arg(server.uri()).args([
            "--write",
            "0:512",
            "--write",
            "3145728:4096",
            "--write",
            "40000000:100000",
            "--write",
            "67104768:4096",
        ]));
        assert!(
            walk.stdout_str().contains("extents="),
            "{kind}: {}",
            walk.describe()
        );
    }
}

// ---- 2. a host file that shrinks while it is read ----------------------------------------------

/// After `delay`, truncates `path` to random shorter lengths and restores its bytes (byte `fill`)
/// and mtime, in a loop, until `stop`. The inode stays the same, so reads race with the shrink
/// itself.
fn shrink_loop(
    path: PathBuf,
    fill: u8,
    stop: Arc<AtomicBool>,
    delay: Duration,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let meta = fs::metadata(&path).unwrap();
        let size = meta.len();
        let mtime = meta.modified().unwrap();
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let full = vec![fill; size as usize];
        let mut rounds = 0u64;
        let mut x = 0x9E37_79B9u64;
        while !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let keep = x % size;
            f.set_len(keep).unwrap();
            std::thread::sleep(Duration::from_micros(x % 1500));
            f.write_all_at(&full[keep as usize..], keep).unwrap();
            f.set_times(fs::FileTimes::new().set_modified(mtime))
                .unwrap();
            std::thread::sleep(Duration::from_micros((x >> 20) % 3000));
            rounds += 1;
        }
        rounds
    })
}

/// `shrink_reads.py URI --style STYLE` over the run of `len` bytes of 0x5A at `at`, in a thread.
fn shrink_reads(
    uri: String,
    style: &'static str,
    at: u64,
    len: usize,
    seconds: u32,
) -> std::thread::JoinHandle<disksynth_tests::Output> {
    std::thread::spawn(move || {
        run(
            python_script("shrink_reads.py").args([
                &uri,
                "--style",
                style,
                "--offset",
                &at.to_string(),
                "--len",
                &len.to_string(),
                "--byte",
                "0x5a",
                "--count",
                "3000",
                "--seconds",
                &seconds.to_string(),
            ]),
            Duration::from_secs(90),
        )
    })
}

fn counts(text: &str) -> (u64, u64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with("ok="))
        .unwrap_or_else(|| panic!("no summary line in\n{text}"));
    let get = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (get("ok"), get("errors"), get("wrong"))
}

/// Reads racing with a file that shrinks: simple, structured and extended replies (libnbd for the
/// first two, qemu-io for extended headers) see the right bytes or an error, never zeros as data:
/// thousands of reads, before, while and after the file shrinks and is put back in a loop.
#[test]
fn a_shrinking_host_file_never_reads_as_zeros() {
    require_tool!("python3-nbd", "qemu-io");
    let dir = tempdir();
    let tree = dir.path().join("tree");
    tree_with_files(&tree);
    let reference = dir.path().join("ref.img");
    build_image("floppy", &tree, &reference, &[]);
    let len = 3 * MIB as usize;
    let at = find_run(&reference, 0x5A, len);
    let server = serve("floppy", &tree, dir.path(), &["--threads", "4"]);
    let stop = Arc::new(AtomicBool::new(false));
    // The clients start on the intact file; the shrinking starts under them. (Once the file has
    // changed, every later read fails at once: its change time is no longer the scanned one.)
    let shrinker = shrink_loop(
        tree.join("data/big.bin"),
        0x5A,
        stop.clone(),
        Duration::from_millis(700),
    );

    let simple = shrink_reads(server.uri().to_string(), "simple", at, len, 20);
    let structured = shrink_reads(server.uri().to_string(), "structured", at, len, 20);
    // qemu 10 negotiates extended headers; qemu-io checks the pattern of every read.
    let mut cmds = Vec::new();
    let mut x = 7u64;
    for _ in 0..1500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = [4096u64, 65536, 262144, MIB][(x >> 60) as usize % 4];
        let off = at + ((x >> 8) % (len as u64 - n)) / 512 * 512;
        cmds.push(format!("read -P 0x5a {off} {n}"));
    }
    let cmd_refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let q = qemu_io_readonly(server.uri(), &cmd_refs);
    let qemu_time = t0.elapsed();
    let simple = simple.join().unwrap();
    let structured = structured.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = shrinker.join().unwrap();

    let qtext = format!("{}{}", q.stdout_str(), q.stderr_str());
    let q_wrong = qtext.matches("Pattern verification failed").count();
    let q_ok = qtext.matches("read ").count() - qtext.matches("read failed").count();
    let q_err = qtext.matches("read failed").count();
    let q_brief = || {
        let lines: Vec<&str> = qtext
            .lines()
            .filter(|l| l.contains("Pattern") || l.contains("failed") && !l.contains("read failed"))
            .take(10)
            .collect();
        format!("qemu-io {}: {}", q.status, lines.join("\n"))
    };
    assert_eq!(
        q_wrong,
        0,
        "qemu-io (extended headers) read wrong bytes\n{}",
        q_brief()
    );
    let (s_ok, s_err, s_wrong) = counts(&simple.stdout_str());
    let (t_ok, t_err, t_wrong) = counts(&structured.stdout_str());
    assert_eq!(s_wrong, 0, "simple replies: {}", simple.describe());
    assert_eq!(t_wrong, 0, "structured replies: {}", structured.describe());
    eprintln!(
        "shrink rounds {rounds}; simple ok/err {s_ok}/{s_err}; structured {t_ok}/{t_err}; \
         extended (qemu-io, {qemu_time:?}) {q_ok}/{q_err}"
    );
    // The race was really run: every style saw both outcomes.
    assert!(s_ok > 0 && s_err > 0, "simple: {}", simple.describe());
    assert!(
        t_ok > 0 && t_err > 0,
        "structured: {}",
        structured.describe()
    );
    assert!(q_ok > 0 && q_err > 0, "extended: {}", q_brief());
    // The server lives on: the changed file stays refused (whole again, with its old size and
    // mtime, it is still not the file that was scanned), the rest is served.
    let other = find_run(&reference, 0x22, 64 * 1024);
    let out = qemu_io_readonly(
        server.uri(),
        &[
            &format!("read -P 0x5a {at} {len}"),
            &format!("read -P 0x22 {other} 65536"),
        ],
    );
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        text.contains("read failed: Input/output error")
            && text.contains("read 65536/65536 bytes")
            && !text.contains("Pattern verification failed"),
        "{}",
        out.describe()
    );
}

/// The same race over TLS, where file data is always copied and encrypted before the reply
/// goes out (no sendfile): a read across a shrink is an error reply, never zeros, and the
/// connection lives on.
#[test]
fn a_shrinking_host_file_never_reads_as_zeros_over_tls() {
    require_tool!("python3-nbd", "openssl");
    let dir = tempdir();
    run_ok(
        Command::new("sh")
            .arg(disksynth_tests::script("tls_pki.sh"))
            .arg(dir.path())
            .arg("pki"),
    );
    let pki = dir.path().join("pki");
    let tree = dir.path().join("tree");
    tree_with_files(&tree);
    let reference = dir.path().join("ref.img");
    build_image("floppy", &tree, &reference, &[]);
    let len = 3 * MIB as usize;
    let at = find_run(&reference, 0x5A, len);
    let pki_arg = pki.to_str().unwrap();
    let _server = serve(
        "floppy",
        &tree,
        dir.path(),
        &["--tls", "require", "--tls-certificates", pki_arg],
    );
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={pki_arg}",
        dir.path().join("sock").display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let shrinker = shrink_loop(
        tree.join("data/big.bin"),
        0x5A,
        stop.clone(),
        Duration::from_millis(700),
    );
    let simple = shrink_reads(uri.clone(), "simple", at, len, 15);
    let structured = shrink_reads(uri, "structured", at, len, 15);
    let simple = simple.join().unwrap();
    let structured = structured.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = shrinker.join().unwrap();
    let (s_ok, s_err, s_wrong) = counts(&simple.stdout_str());
    let (t_ok, t_err, t_wrong) = counts(&structured.stdout_str());
    assert_eq!(s_wrong, 0, "simple replies: {}", simple.describe());
    assert_eq!(t_wrong, 0, "structured replies: {}", structured.describe());
    eprintln!(
        "TLS: shrink rounds {rounds}; simple ok/err {s_ok}/{s_err}; structured {t_ok}/{t_err}"
    );
    assert!(rounds > 0, "the file never shrank");
    assert!(s_ok > 0 && s_err > 0, "simple: {}", simple.describe());
    assert!(
        t_ok > 0 && t_err > 0,
        "structured: {}",
        structured.describe()
    );
}

// ---- 3. a host file swapped after start-up -----------------------------------------------------

/// What the tree owner puts where `victim` was, keeping its size and mtime.
#[derive(Debug, Clone, Copy)]
enum Swap {
    SymlinkToSecret,
    Fifo,
    DeviceNode,
    RenameOver,
}

fn do_swap(swap: Swap, victim: &Path, secret: &Path, spare: &Path) {
    let m = fs::metadata(victim).unwrap();
    match swap {
        Swap::SymlinkToSecret => {
            fs::remove_file(victim).unwrap();
            std::os::unix::fs::symlink(secret, victim).unwrap();
        }
        Swap::Fifo => {
            fs::remove_file(victim).unwrap();
            mknod(victim, rustix::fs::FileType::Fifo, 0o644, 0, 0);
        }
        Swap::DeviceNode => {
            fs::remove_file(victim).unwrap();
            // /dev/zero: it would serve zeros as the file's data.
            mknod(victim, rustix::fs::FileType::CharacterDevice, 0o644, 1, 5);
        }
        Swap::RenameOver => {
            fs::rename(spare, victim).unwrap();
        }
    }
    // touch -r: the new thing (or what the link leads to) has the old size and mtime.
    let target = if matches!(swap, Swap::SymlinkToSecret) {
        secret
    } else {
        victim
    };
    if fs::metadata(target).map(|t| t.is_file()).unwrap_or(false) {
        fs::OpenOptions::new()
            .write(true)
            .open(target)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(m.modified().unwrap()))
            .unwrap();
        assert_eq!(fs::metadata(target).unwrap().len(), m.len());
        assert_eq!(fs::metadata(target).unwrap().mtime(), m.mtime());
    }
}

#[test]
fn a_host_file_swapped_after_start_up_is_never_served() {
    require_tool!("qemu-io");
    let mut swaps = vec![Swap::SymlinkToSecret, Swap::Fifo, Swap::RenameOver];
    if is_root() {
        swaps.push(Swap::DeviceNode);
    } else {
        eprintln!("SKIPPED (device node swap): mknod needs root");
    }
    for kind in ["floppy", "ext4", "iso"] {
        for &swap in &swaps {
            let dir = tempdir();
            let tree = dir.path().join("tree");
            let len = 64 * 1024;
            write_file(&tree, "victim.bin", &vec![0x11u8; len]);
            write_file(&tree, "keep.bin", &vec![0x22u8; len]);
            let secret = write_file(dir.path(), "secret", &vec![0x99u8; len]);
            let spare = write_file(dir.path(), "tree-spare", &vec![0x33u8; len]);
            let reference = dir.path().join("ref.img");
            build_image(kind, &tree, &reference, &[]);
            let victim_at = find_run(&reference, 0x11, len);
            let keep_at = find_run(&reference, 0x22, len);
            let server = serve(kind, &tree, dir.path(), &[]);
            do_swap(swap, &tree.join("victim.bin"), &secret, &spare);

            let t0 = Instant::now();
            let out = qemu_io_readonly(
                server.uri(),
                &[
                    &format!("read -P 0x11 {victim_at} {len}"),
                    &format!("read -P 0x22 {keep_at} {len}"),
                ],
            );
            let text = format!("{}{}", out.stdout_str(), out.stderr_str());
            let what = format!("{kind} {swap:?}");
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: took too long"
            );
            assert!(
                !text.contains("Pattern verification failed"),
                "{what}: wrong bytes served\n{}",
                out.describe()
            );
            assert!(
                text.contains("read failed: Input/output error"),
                "{what}: the swapped file must fail with EIO\n{}",
                out.describe()
            );
            assert!(
                text.contains(&format!("read {len}/{len} bytes at offset {keep_at}")),
                "{what}: the rest must still be served\n{}",
                out.describe()
            );
            assert!(
                server.wait_stderr_contains("victim.bin", Duration::from_secs(5)),
                "{what}: the log must name the file\n{}",
                server.stderr_text()
            );
            // The server lives on, no thread stuck: a fresh client is served.
            let again = qemu_io_readonly(server.uri(), &[&format!("read -P 0x22 {keep_at} 4096")]);
            assert!(
                again.stdout_str().contains("read 4096/4096 bytes"),
                "{what}: {}",
                again.describe()
            );
            assert!(
                !server.stderr_text().contains("panicked"),
                "{what}: {}",
                server.stderr_text()
            );
        }
    }
}

// ---- 7. client writes are bounded and live on disk ---------------------------------------------

/// `VmHWM` (peak resident memory) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in\n{status}"));
    kb * 1024
}

/// The server's open, unlinked files below `dir`, with their sizes on disk (allocated bytes).
fn unlinked_files_in(pid: u32, dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy().to_string();
        if t.starts_with(&*dir.to_string_lossy()) && t.ends_with(" (deleted)") {
            let m = fs::metadata(e.path()).unwrap();
            out.push((t, m.blocks() * 512));
        }
    }
    out
}

#[test]
fn rw_writes_go_to_an_unlinked_file_and_memory_stays_bounded() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let tree = dir.path().join("tree");
    tree_with_files(&tree);
    let before = fs::read(tree.join("data/big.bin")).unwrap();
    let spill = dir.path().join("spill");
    fs::create_dir(&spill).unwrap();
    let server = serve(
        "ext4",
        &tree,
        dir.path(),
        &["--size", "1280M", "--rw", "--dir", spill.to_str().unwrap()],
    );
    // 1 GiB of writes in 128 MiB commands, then read some of it back.
    let mut cmds: Vec<String> = (0..8)
        .map(|i| format!("write -P 0xab {} 128M", 200 * MIB + i * 128 * MIB))
        .collect();
    cmds.push(format!("read -P 0xab {} 1M", 200 * MIB));
    cmds.push(format!("read -P 0xab {} 1M", 1223 * MIB));
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let out = disksynth_tests::qemu_io(server.uri(), &refs);
    assert_eq!(
        disksynth_tests::qemu_io_transfers(&out).len(),
        10,
        "{}",
        out.describe()
    );
    let rss = peak_rss(server.pid());
    let files = unlinked_files_in(server.pid(), &spill);
    eprintln!("peak RSS {} MiB; overlay files {files:?}", rss / MIB);
    assert!(
        rss < 256 * MIB,
        "peak RSS {} MiB after 1 GiB of writes",
        rss / MIB
    );
    // The pages are in one unlinked file in --dir, which shows nothing.
    assert_eq!(fs::read_dir(&spill).unwrap().count(), 0);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].1 >= 1024 * MIB, "{files:?}");
    // The host tree was never touched.
    assert_eq!(fs::read(tree.join("data/big.bin")).unwrap(), before);
}

#[test]
fn rw_max_disk_refuses_writes_past_it_with_enospc() {
    require_tool!("qemu-io");
    for kind in ["floppy", "ext4", "iso"] {
        let dir = tempdir();
        let tree = dir.path().join("tree");
        tree_with_files(&tree);
        let server = serve(
            kind,
            &tree,
            dir.path(),
            &[
                "--rw",
                "--max-disk",
                "1M",
                "--dir",
                dir.path().to_str().unwrap(),
            ],
        );
        let out = disksynth_tests::qemu_io_unchecked(
            server.uri(),
            &[
                "write -P 0x11 0 512K",
                "write -P 0x22 1M 1M",
                "read -P 0x11 0 512K",
            ],
        );
        let text = format!("{}{}", out.stdout_str(), out.stderr_str());
        assert!(
            text.contains("wrote 524288/524288 bytes at offset 0"),
            "{kind}: {}",
            out.describe()
        );
        assert!(
            text.contains("write failed: No space left on device"),
            "{kind}: {}",
            out.describe()
        );
        assert!(
            text.contains("read 524288/524288 bytes at offset 0"),
            "{kind}: {}",
            out.describe()
        );
    }
}
