//! `disksynth xz` and `disksynth pack` against the real `xz`, and `disksynth http` / `xz URL`
//! through a real nginx on 127.0.0.1: what NBD clients read equals `xz -dc`.

use std::fs;
use std::path::Path;
use std::process::Command;

use disksynth_tests::generator::{cmp_files, qemu_img_identical};
use disksynth_tests::nginx::Nginx;
use disksynth_tests::{random_bytes, require_tool, run, run_ok, tempdir, Server, CMD_TIMEOUT, MIB};

/// A disk-like image: random data, long zero runs (whole zero blocks), and compressible text.
fn image(path: &Path, mib: u64) {
    let mut data = Vec::with_capacity((mib * MIB) as usize);
    let mut seed = 1;
    while (data.len() as u64) < mib * MIB {
        match seed % 4 {
            0 => data.extend(random_bytes(seed, 3 << 20)),
            1 => data.resize(data.len() + (5 << 20), 0),
            2 => {
                let line = format!("line {seed} of a text file in a disk image\n");
                while data.len() % (4 << 20) != 0 || data.is_empty() {
                    data.extend_from_slice(line.as_bytes());
                }
            }
            _ => data.extend(random_bytes(seed, 100_000)),
        }
        seed += 1;
    }
    data.truncate((mib * MIB) as usize);
    fs::write(path, data).unwrap();
}

/// `xz ARGS -c IN > OUT`.
fn xz_to(args: &[&str], input: &Path, out: &Path) {
    let f = fs::File::create(out).unwrap();
    let status = Command::new("xz")
        .args(args)
        .arg("-c")
        .arg(input)
        .stdout(f)
        .status()
        .unwrap();
    assert!(status.success(), "xz {args:?} failed");
}

/// `xz -dc IN > OUT`: the reference the view must equal.
fn unxz(input: &Path, out: &Path) {
    xz_to(&["-d"], input, out);
}

fn blocks_of(xz_file: &Path) -> u64 {
    let out = run_ok(Command::new("xz").args(["--robot", "-l"]).arg(xz_file));
    out.stdout_str()
        .lines()
        .find(|l| l.starts_with("file\t"))
        .and_then(|l| l.split('\t').nth(2))
        .and_then(|n| n.parse().ok())
        .expect("xz --robot -l")
}

/// Serve `source` with `disksynth xz`, copy it out with nbdcopy, compare with `expected` by
/// cmp and qemu-img compare.
fn check_served(dir: &Path, source: &str, expected: &Path, extra: &[&str]) {
    let sockdir = dir.join(format!("s{}", fs::read_dir(dir).unwrap().count()));
    fs::create_dir(&sockdir).unwrap();
    let mut args = vec!["xz", source];
    args.extend_from_slice(extra);
    let server = Server::disksynth_unix(&sockdir, &args);
    let copy = sockdir.join("copy.raw");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    cmp_files(&copy, expected);
    qemu_img_identical(server.uri(), expected);
}

#[test]
fn xz_view_equals_xz_dc_for_1_4_and_16_mib_blocks_local_and_over_nginx() {
    require_tool!("xz", "nbdcopy", "qemu-img", "nginx", "cmp");
    let dir = tempdir();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    let raw = dir.path().join("disk.raw");
    image(&raw, 40);
    let web = Nginx::serve(&www, &dir.path().join("nginx"), "");
    for (mib, name) in [(1, "b1.xz"), (4, "b4.xz"), (16, "b16.xz")] {
        let xzf = www.join(name);
        xz_to(
            &["-T1", "-3", &format!("--block-size={mib}MiB")],
            &raw,
            &xzf,
        );
        assert_eq!(blocks_of(&xzf), 40u64.div_ceil(mib));
        let reference = dir.path().join(format!("{name}.ref"));
        unxz(&xzf, &reference);
        check_served(dir.path(), xzf.to_str().unwrap(), &reference, &[]);
        check_served(dir.path(), &web.url(name), &reference, &[]);
    }
}

#[test]
fn multi_stream_and_padded_files_are_served_whole() {
    require_tool!("xz", "nbdcopy", "qemu-img", "nginx", "cmp");
    let dir = tempdir();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    image(&a, 9);
    fs::write(&b, random_bytes(99, 3 * MIB as usize + 12345)).unwrap();
    let (ax, bx) = (dir.path().join("a.xz"), dir.path().join("b.xz"));
    xz_to(&["-T1", "--block-size=2MiB"], &a, &ax);
    xz_to(&["-T1", "--block-size=1MiB", "--check=sha256"], &b, &bx);
    // Two streams with stream padding between and after them (multiples of 4 zero bytes).
    let mut joined = fs::read(&ax).unwrap();
    joined.extend([0u8; 8]);
    joined.extend(fs::read(&bx).unwrap());
    joined.extend([0u8; 4]);
    let xzf = www.join("joined.xz");
    fs::write(&xzf, joined).unwrap();
    let t = run(Command::new("xz").arg("-t").arg(&xzf), CMD_TIMEOUT);
    assert!(t.status.success(), "xz -t: {}", t.describe());
    let reference = dir.path().join("joined.ref");
    unxz(&xzf, &reference);
    assert_eq!(
        fs::metadata(&reference).unwrap().len(),
        9 * MIB + 3 * MIB + 12345
    );
    let web = Nginx::serve(&www, &dir.path().join("nginx"), "");
    check_served(dir.path(), xzf.to_str().unwrap(), &reference, &[]);
    check_served(dir.path(), &web.url("joined.xz"), &reference, &[]);
}

#[test]
fn pack_writes_an_indexed_xz_that_xz_accepts_and_the_view_serves() {
    require_tool!("xz", "nbdcopy", "cmp");
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    image(&raw, 20);
    let packed = dir.path().join("disk.raw.xz");
    run_ok(
        disksynth_tests::disksynth()
            .arg("pack")
            .arg(&raw)
            .arg(&packed)
            .args(["--block-size", "2M", "--preset", "1"]),
    );
    let t = run(Command::new("xz").arg("-t").arg(&packed), CMD_TIMEOUT);
    assert!(t.status.success(), "xz -t: {}", t.describe());
    assert_eq!(blocks_of(&packed), 10, "one block per 2 MiB");
    let reference = dir.path().join("ref.raw");
    unxz(&packed, &reference);
    cmp_files(&reference, &raw);
    check_served(dir.path(), packed.to_str().unwrap(), &raw, &[]);
    // -o of the view: the same bytes, zero blocks left as holes.
    let back = dir.path().join("back.raw");
    run_ok(
        disksynth_tests::disksynth()
            .args(["xz", packed.to_str().unwrap(), "-o"])
            .arg(&back),
    );
    cmp_files(&back, &raw);
    use std::os::unix::fs::MetadataExt;
    assert!(
        fs::metadata(&back).unwrap().blocks() * 512 < 17 * MIB,
        "zero blocks were written out"
    );
}

#[test]
fn one_huge_block_is_refused_with_the_fix_or_served_when_allowed() {
    require_tool!("xz", "nbdcopy", "cmp");
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    image(&raw, 6);
    let single = dir.path().join("single.xz");
    xz_to(&["-T1", "-1"], &raw, &single); // plain xz: one block for the whole file
    assert_eq!(blocks_of(&single), 1);
    let out = run(
        disksynth_tests::disksynth()
            .args(["xz", single.to_str().unwrap(), "--max-block", "4M", "-o"])
            .arg(dir.path().join("x.raw")),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "a 6 MiB block passed --max-block 4M");
    let err = out.stderr_str();
    assert!(
        err.contains("disksynth pack") && err.contains("--block-size"),
        "the error must say how to fix it: {err}"
    );
    check_served(
        dir.path(),
        single.to_str().unwrap(),
        &raw,
        &["--max-block", "4M", "--allow-big-blocks"],
    );
}

#[test]
fn raw_http_source_over_nginx_equals_the_file() {
    require_tool!("nbdcopy", "qemu-img", "nginx", "cmp");
    let dir = tempdir();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    let raw = www.join("disk.raw");
    image(&raw, 24);
    let web = Nginx::serve(&www, &dir.path().join("nginx"), "");
    let server = Server::disksynth_unix(dir.path(), &["http", &web.url("disk.raw")]);
    let copy = dir.path().join("copy.raw");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    cmp_files(&copy, &raw);
    qemu_img_identical(server.uri(), &raw);
    // Every request nginx saw for the image was a ranged one (206), never a whole-file 200.
    let log = web.access_log();
    assert!(
        log.iter()
            .filter(|l| l.contains("GET /disk.raw"))
            .all(|l| l.contains("\" 206 ")),
        "non-ranged GETs: {log:?}"
    );
}

/// A certificate authority and a server certificate for 127.0.0.1 signed by it (rustls, like
/// browsers, refuses a CA certificate used as the server's own).
pub(crate) fn make_ca_and_server_cert(
    dir: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.join("ca.key"),
        dir.join("ca.pem"),
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.pem"),
        dir.join("server.ext"),
    );
    let p = |x: &Path| x.to_str().unwrap().to_string();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=disksynth test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]));
    run_ok(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]));
    fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]));
    (ca, cert, key)
}

/// HTTPS with HTTP/2 (nginx offers h2 by ALPN): `--cacert` trusts an internal CA; without it
/// the certificate is refused with a clear error, never silently accepted.
#[test]
fn https_with_http2_and_an_internal_ca() {
    require_tool!("nbdcopy", "nginx", "openssl", "cmp", "xz");
    let dir = tempdir();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    let raw = www.join("disk.raw");
    image(&raw, 12);
    xz_to(
        &["-T1", "-1", "--block-size=2MiB"],
        &raw,
        &www.join("disk.raw.xz"),
    );
    let (ca, cert, key) = make_ca_and_server_cert(dir.path());
    let web = Nginx::serve_tls(&www, &dir.path().join("nginx"), &cert, &key);

    let refused = run(
        disksynth_tests::disksynth()
            .args(["http", &web.https_url("disk.raw"), "-o"])
            .arg(dir.path().join("no.raw")),
        CMD_TIMEOUT,
    );
    assert!(!refused.status.success(), "an unknown CA was trusted");
    assert!(
        refused.stderr_str().to_lowercase().contains("certificate"),
        "unclear TLS error: {}",
        refused.describe()
    );

    let ca_arg = ca.to_str().unwrap();
    let server = Server::disksynth_unix(
        dir.path(),
        &["http", &web.https_url("disk.raw"), "--cacert", ca_arg],
    );
    let copy = dir.path().join("copy.raw");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    cmp_files(&copy, &raw);
    drop(server);
    let back = dir.path().join("back.raw");
    run_ok(
        disksynth_tests::disksynth()
            .args([
                "xz",
                &web.https_url("disk.raw.xz"),
                "--cacert",
                ca_arg,
                "-o",
            ])
            .arg(&back),
    );
    cmp_files(&back, &raw);
    let log = web.access_log();
    assert!(
        log.iter().any(|l| l.contains("HTTP/2.0\" 206")),
        "HTTP/2 was not used: {log:?}"
    );
}

/// `cat disk.raw | disksynth pack - a.xz` (a pipe: size unknown) and
/// `disksynth pack disk.raw - > b.xz` (no temp file, no rename): both pass `xz -t`, hold one
/// block per 2 MiB in the index, decode with `xz -dc` to the input, and serve it with
/// `disksynth xz -o`.
#[test]
fn pack_reads_a_pipe_and_writes_stdout() {
    require_tool!("xz", "cmp", "cat");
    use std::process::Stdio;
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    image(&raw, 20);
    let from_pipe = dir.path().join("a.xz");
    let mut cat = Command::new("cat")
        .arg(&raw)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = cat.stdout.take().unwrap();
    let pack = disksynth_tests::disksynth()
        .args(["pack", "-"])
        .arg(&from_pipe)
        .args(["--block-size", "2M", "--preset", "1"])
        .stdin(pipe)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = finish(pack, CMD_TIMEOUT);
    assert_eq!(code, Some(0), "pack - a.xz: {err}");
    assert!(cat.wait().unwrap().success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&from_pipe).unwrap().permissions().mode() & 0o777,
        0o644,
        "a pipe's 0600 is not an image's mode"
    );
    let to_stdout = dir.path().join("b.xz");
    let pack = disksynth_tests::disksynth()
        .arg("pack")
        .arg(&raw)
        .args(["-", "--block-size", "2M", "--preset", "1"])
        .stdout(fs::File::create(&to_stdout).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = finish(pack, CMD_TIMEOUT);
    assert_eq!(code, Some(0), "pack disk.raw -: {err}");
    // `pack IN - | head -c 100`: quiet, 141 as `cat`.
    let mut pack = disksynth_tests::disksynth()
        .arg("pack")
        .arg(&raw)
        .args(["-", "--preset", "0", "--block-size", "1M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let head = Command::new("head")
        .args(["-c", "100"])
        .stdin(pack.stdout.take().unwrap())
        .output()
        .unwrap();
    assert_eq!(head.stdout.len(), 100);
    let (code, err) = finish(pack, CMD_TIMEOUT);
    assert_eq!((code, err.as_str()), (Some(141), ""), "pack IN - | head");
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.xz", "b.xz", "disk.raw"], "temp files left");
    for xzf in [&from_pipe, &to_stdout] {
        let t = run(Command::new("xz").arg("-t").arg(xzf), CMD_TIMEOUT);
        assert!(t.status.success(), "xz -t {xzf:?}: {}", t.describe());
        assert_eq!(blocks_of(xzf), 10, "{xzf:?}: one block per 2 MiB");
        let reference = dir.path().join("ref.raw");
        unxz(xzf, &reference);
        cmp_files(&reference, &raw);
        let back = dir.path().join("back.raw");
        run_ok(
            disksynth_tests::disksynth()
                .arg("xz")
                .arg(xzf)
                .arg("-o")
                .arg(&back),
        );
        cmp_files(&back, &raw);
        fs::remove_file(&reference).unwrap();
        fs::remove_file(&back).unwrap();
    }
    assert!(
        fs::read(&from_pipe).unwrap() == fs::read(&to_stdout).unwrap(),
        "a pipe and a file give different .xz files"
    );
}

/// Waits (bounded) for `child`; kills it (by pid) and fails if it does not exit.
fn finish(mut child: std::process::Child, timeout: std::time::Duration) -> (Option<i32>, String) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

fn signal(child: &std::process::Child, sig: disksynth_tests::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), sig).unwrap();
}

/// SIGINT ~300 ms into `disksynth pattern 20G -o - | disksynth pack - out.xz`, SIGTERM into
/// `disksynth pack big.raw out.xz` (a sparse 16 GiB file): exit 130 / 143 promptly, one line,
/// no temp file, no output. The producer of the pipe then ends quietly on the closed pipe.
#[test]
fn interrupted_pack_exits_130_or_143_and_leaves_nothing() {
    use disksynth_tests::Signal;
    use std::process::Stdio;
    use std::time::Duration;
    let dir = tempdir();
    let work = dir.path().join("out");
    fs::create_dir(&work).unwrap();
    let target = work.join("out.xz");

    let mut producer = disksynth_tests::disksynth()
        .args(["pattern", "20G", "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = producer.stdout.take().unwrap();
    let pack = disksynth_tests::disksynth()
        .args(["pack", "-"])
        .arg(&target)
        .args(["--preset", "0"])
        .stdin(pipe)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let names = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names(&work).iter().any(|n| n.starts_with(".out.xz.")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no temp file while packing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&pack, Signal::INT);
    let (code, err) = finish(pack, Duration::from_secs(10));
    assert_eq!(code, Some(130), "{err}");
    assert_eq!(
        err.trim_end(),
        format!("disksynth: interrupted; {} not written", target.display())
    );
    assert_eq!(names(&work), Vec::<String>::new());
    let (code, err) = finish(producer, Duration::from_secs(10));
    assert_eq!((code, err.as_str()), (Some(141), ""), "the producer");

    let big = dir.path().join("big.raw");
    fs::File::create(&big).unwrap().set_len(16 << 30).unwrap();
    let pack = disksynth_tests::disksynth()
        .arg("pack")
        .arg(&big)
        .arg(&target)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names(&work).iter().any(|n| n.starts_with(".out.xz.")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no temp file while packing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&pack, Signal::TERM);
    let sent = std::time::Instant::now();
    let (code, err) = finish(pack, Duration::from_secs(10));
    assert_eq!(code, Some(143), "{err}");
    assert!(sent.elapsed() < Duration::from_millis(2500), "slow to stop");
    assert_eq!(
        err.trim_end(),
        format!("disksynth: interrupted; {} not written", target.display())
    );
    assert_eq!(names(&work), Vec::<String>::new());
}

// ---- hostile .xz files and block sizes (issue 14) ----------------------------------------------

/// CRC32 (IEEE, as in xz-file-format §2.1.1.3 and §4.5).
fn crc32(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|mut c| {
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            c
        })
        .collect();
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// A multibyte integer (§1.2).
fn vli(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A crafted one-Stream .xz file (Check None): Stream Header (§2.1.1), `block` at offset 12,
/// then a hole up to the end of the `count` Blocks the Index lists, all `record` (Unpadded
/// Size, Uncompressed Size), the Index (§4) with its CRC32, and the Stream Footer (§2.1.2).
/// Written sparse: a Record's Block need not exist for the Index to list it.
fn crafted_xz(path: &Path, count: u64, record: (u64, u64), block: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let flags = [0u8, 0u8]; // §2.1.1.2: Check None
    let mut header = vec![0xFD, b'7', b'z', b'X', b'Z', 0x00];
    header.extend_from_slice(&flags);
    header.extend_from_slice(&crc32(&flags).to_le_bytes());
    let mut index = vec![0u8];
    vli(count, &mut index);
    let mut rec = Vec::new();
    vli(record.0, &mut rec);
    vli(record.1, &mut rec);
    for _ in 0..count {
        index.extend_from_slice(&rec);
    }
    while !index.len().is_multiple_of(4) {
        index.push(0);
    }
    index.extend_from_slice(&crc32(&index).to_le_bytes());
    let mut footer_fields = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    footer_fields.extend_from_slice(&flags);
    let mut file = fs::File::create(path).unwrap();
    file.write_all(&header).unwrap();
    file.write_all(block).unwrap();
    file.seek(SeekFrom::Start(12 + count * ((record.0 + 3) & !3)))
        .unwrap();
    file.write_all(&index).unwrap();
    file.write_all(&crc32(&footer_fields).to_le_bytes())
        .unwrap();
    file.write_all(&footer_fields).unwrap();
    file.write_all(b"YZ").unwrap();
}

/// `VmHWM` (peak resident memory) of a running process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// `prlimit --as=LIMIT disksynth ARGS`: an allocation of an untrusted size fails there
/// instead of succeeding quietly on a big machine. Few malloc arenas (each reserves 64 MiB of
/// address space).
fn disksynth_limited(limit: u64, args: &[&str]) -> disksynth_tests::Output {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={limit}"))
        .arg("--")
        .arg(disksynth_tests::disksynth_bin())
        .args(args)
        .env("MALLOC_ARENA_MAX", "2");
    run(&mut cmd, CMD_TIMEOUT)
}

/// An Index listing 8 million 2-byte Records (Blocks of 5 bytes, 1 byte each; it used to cost
/// 64 bytes of memory per Record, 512 MiB here): over the default 64 MiB `--max-index` it is
/// refused at once, naming the count, the budget and the option; within a raised budget it
/// is served in 16 bytes per Block, and reading a Block that is not there fails cleanly.
#[test]
fn index_of_millions_of_tiny_blocks_is_refused_or_held_in_16_bytes_each() {
    require_tool!("prlimit", "nbdinfo", "nbdcopy");
    const N: u64 = 8_000_000;
    let dir = tempdir();
    let xzf = dir.path().join("tiny.xz");
    crafted_xz(&xzf, N, (5, 1), &[]);
    let xzs = xzf.to_str().unwrap();

    let out = disksynth_limited(512 << 20, &["xz", xzs, "-o", "/dev/null"]);
    let err = out.stderr_str();
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        err.contains("8000000 blocks")
            && err.contains("67108864-byte index budget")
            && err.contains("--max-index"),
        "{}",
        out.describe()
    );

    let server = Server::disksynth_unix(dir.path(), &["xz", xzs, "--max-index", "200M"]);
    let size = run_ok(Command::new("nbdinfo").arg("--size").arg(server.uri()));
    assert_eq!(size.stdout_str().trim(), N.to_string());
    let peak = peak_rss(server.pid());
    eprintln!(
        "{N} blocks: server peak RSS {} MiB ({:.1} bytes per block in all)",
        peak >> 20,
        peak as f64 / N as f64
    );
    // 128 MB of index, plus the binary and its threads.
    assert!(
        peak < 16 * N + (80 << 20),
        "peak RSS {} MiB for {N} blocks",
        peak >> 20
    );
    let copy = run(
        Command::new("nbdcopy")
            .arg(server.uri())
            .arg(dir.path().join("copy.raw")),
        CMD_TIMEOUT,
    );
    assert!(!copy.status.success(), "blocks of zeros decoded?");
    let mut server = server;
    assert!(server.is_running(), "{}", server.stderr_text());
    let log = server.stderr_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// A Block Header (§3.1) with one LZMA2 filter (§3.1.5, 4 KiB dictionary) and, if given, its
/// Uncompressed Size (§3.1.4), followed by LZMA2 data: one 64 KiB uncompressed chunk of 0x55
/// and the end marker. Returns the Block (padded) and its Unpadded Size.
fn lzma2_block(uncompressed: Option<u64>) -> (Vec<u8>, u64) {
    let mut h = vec![0u8, 0u8];
    if let Some(u) = uncompressed {
        h[1] |= 0x80;
        vli(u, &mut h);
    }
    h.extend_from_slice(&[0x21, 0x01, 0x00]);
    while !h.len().is_multiple_of(4) {
        h.push(0);
    }
    h[0] = (h.len() / 4) as u8; // (size / 4) - 1 with the 4-byte CRC32 to come
    let crc = crc32(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0x01, 0xFF, 0xFF]);
    h.extend(std::iter::repeat_n(0x55u8, 1 << 16));
    h.push(0x00);
    let unpadded = h.len() as u64;
    while !h.len().is_multiple_of(4) {
        h.push(0);
    }
    (h, unpadded)
}

/// An Index Record claiming a 4 GiB Block, served with --allow-big-blocks: the Block Header
/// is checked against the claim, and a header that declares no size decodes into a buffer
/// that grows with what comes out. Both fail on the first read, under a 1 GiB address-space
/// limit (it used to map and fault in the claimed 4 GiB first: "Cannot allocate memory" under
/// the limit, a 4 GiB peak RSS without it).
#[test]
fn huge_block_claims_fail_on_the_block_not_on_memory() {
    require_tool!("prlimit", "nbdcopy");
    const CLAIM: u64 = 4 << 30;
    let dir = tempdir();
    for (declared, needle) in [
        (
            Some(65536),
            "the Block Header says 65536 uncompressed bytes, the Index 4294967296",
        ),
        (None, "decoding failed"),
    ] {
        let (block, unpadded) = lzma2_block(declared);
        let xzf = dir.path().join("claim.xz");
        crafted_xz(&xzf, 1, (unpadded, CLAIM), &block);
        let xzs = xzf.to_str().unwrap();
        let out_raw = dir.path().join("out.raw");
        let out = disksynth_limited(
            1 << 30,
            &[
                "xz",
                xzs,
                "--allow-big-blocks",
                "-o",
                out_raw.to_str().unwrap(),
            ],
        );
        let err = out.stderr_str();
        assert!(!out.status.success(), "{}", out.describe());
        assert!(
            err.contains(needle) && !err.contains("allocat"),
            "{needle}: {}",
            out.describe()
        );

        let sock = dir.path().join("s");
        let _ = fs::remove_dir_all(&sock);
        fs::create_dir(&sock).unwrap();
        let mut server = Server::disksynth_unix(&sock, &["xz", xzs, "--allow-big-blocks"]);
        let copy = run(
            Command::new("nbdcopy").arg(server.uri()).arg("null:"),
            CMD_TIMEOUT,
        );
        assert!(!copy.status.success(), "a 4 GiB claim was served");
        assert!(server.is_running(), "{}", server.stderr_text());
        let peak = peak_rss(server.pid());
        assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
        assert!(
            server.stderr_text().contains(needle),
            "{}",
            server.stderr_text()
        );
    }
}

/// `pack --block-size 1T` used to say only "Cannot allocate memory": past the 4 GiB that
/// `disksynth xz` serves it is refused with the fix, and a block size the memory cannot hold
/// `threads` times over is refused before the encoder starts, saying how much it needs.
#[test]
fn pack_refuses_block_sizes_it_cannot_serve_or_hold() {
    require_tool!("prlimit");
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    fs::write(&raw, random_bytes(5, 1 << 20)).unwrap();
    let xzf = dir.path().join("disk.raw.xz");
    let out = run(
        disksynth_tests::disksynth()
            .arg("pack")
            .arg(&raw)
            .arg(&xzf)
            .args(["--block-size", "1T"]),
        CMD_TIMEOUT,
    );
    let err = out.stderr_str();
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        err.contains("1 TiB") && err.contains("4 GiB") && err.contains("--block-size 16M"),
        "{}",
        out.describe()
    );

    let out = disksynth_limited(
        2 << 30,
        &[
            "pack",
            raw.to_str().unwrap(),
            xzf.to_str().unwrap(),
            "--block-size",
            "1G",
            "--threads",
            "2",
        ],
    );
    let err = out.stderr_str();
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        err.contains("blocks of 1 GiB on 2 thread(s)")
            && err.contains("of memory, more than the")
            && err.contains("available")
            && err.contains("smaller --block-size"),
        "{}",
        out.describe()
    );
    assert!(!err.contains("allocate"), "{}", out.describe());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "output left");
}
