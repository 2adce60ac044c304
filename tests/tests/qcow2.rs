//! `disksynth qcow2` against qemu's own reading of the same images: every byte equals
//! `qemu-img convert -O raw`, and block status (`nbdinfo --map` of the export) agrees with
//! `qemu-img map --output=json` of the image — locally, over nginx, through a backing chain;
//! refusals name the feature; a corrupt table fails only the reads that need it.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use disksynth_tests::generator::cmp_files;
use disksynth_tests::nginx::Nginx;
use disksynth_tests::{
    disksynth, nbdinfo_map, qemu_io_readonly, random_bytes, require_tool, run, run_ok, tempdir,
    Extent, Server, CMD_TIMEOUT, MIB,
};

/// A 12 MiB sparse raw disk: random data, text, zeros written out, holes, and a data
/// sector alone in a hole.
fn raw_image(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(12 * MIB).unwrap();
    f.write_all_at(&random_bytes(1, 2 * MIB as usize), 0)
        .unwrap();
    let mut text = Vec::new();
    let mut n = 0;
    while text.len() < 3 * MIB as usize {
        n += 1;
        text.extend_from_slice(format!("line {n} of a text file in a disk image\n").as_bytes());
    }
    text.truncate(3 * MIB as usize);
    f.write_all_at(&text, 2 * MIB).unwrap();
    // Zeros written out (allocated in the raw file, not in the qcow2).
    f.write_all_at(&vec![0u8; MIB as usize], 5 * MIB).unwrap();
    // 6..8 MiB: a hole. One sector of data in the next hole.
    f.write_all_at(&[0xC3; 512], 8 * MIB + 4096).unwrap();
    f.write_all_at(&random_bytes(2, MIB as usize + 1000), 10 * MIB)
        .unwrap();
}

fn qemu_img(args: &[&str]) {
    run_ok(Command::new("qemu-img").args(args));
}

/// `qemu-img convert -O raw` of a qcow2 image: what the export must equal.
fn reference(qcow2: &Path, out: &Path) {
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        qcow2.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

/// `qemu-img map --output=json` as NBD base:allocation kinds: data 0, zeros 2 (allocated
/// as zeros somewhere in the chain), unallocated everywhere 3 (hole).
fn qemu_map(qcow2: &Path) -> Vec<Extent> {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "qcow2"])
            .arg(qcow2),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let kind = if e["data"].as_bool().unwrap() {
                0
            } else if e["present"].as_bool().unwrap_or(true) {
                2
            } else {
                3
            };
            Extent {
                offset: e["start"].as_u64().unwrap(),
                len: e["length"].as_u64().unwrap(),
                kind,
            }
        })
        .collect()
}

/// The two maps say the same of every byte.
fn assert_maps_agree(ours: &[Extent], qemu: &[Extent], what: &str) {
    let end = |m: &[Extent]| m.last().map_or(0, |e| e.end());
    assert_eq!(end(ours), end(qemu), "{what}: map lengths");
    let (mut i, mut j, mut at) = (0, 0, 0);
    while i < ours.len() && j < qemu.len() {
        assert_eq!(
            ours[i].kind, qemu[j].kind,
            "{what}: at {at}, disksynth says {:?}, qemu-img map {:?}",
            ours[i], qemu[j]
        );
        at = ours[i].end().min(qemu[j].end());
        if ours[i].end() == at {
            i += 1;
        }
        if qemu[j].end() == at {
            j += 1;
        }
    }
}

/// Serve `source` (a path or URL of `qcow2`) with `disksynth qcow2 ... extra`, and check its
/// bytes and block status against qemu's reading of `qcow2`.
fn check_served(dir: &Path, source: &str, qcow2: &Path, extra: &[&str]) {
    let work = dir.join(format!("s{}", fs::read_dir(dir).unwrap().count()));
    fs::create_dir(&work).unwrap();
    let expected = work.join("expected.raw");
    reference(qcow2, &expected);
    let mut args = vec!["qcow2", source];
    args.extend_from_slice(extra);
    let server = Server::disksynth_unix(&work, &args);
    let copy = work.join("copy.raw");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    cmp_files(&copy, &expected);
    let what = format!("{source} {extra:?}");
    assert_maps_agree(&nbdinfo_map(server.uri()), &qemu_map(qcow2), &what);
}

#[test]
fn qcow2_variants_equal_qemu_img_convert_and_map() {
    require_tool!("qemu-img", "nbdcopy", "nbdinfo", "cmp");
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    raw_image(&raw);
    let variants: &[&[&str]] = &[
        &[],
        &["-c"],
        &["-c", "-o", "compression_type=zstd"],
        &["-o", "extended_l2=on"],
        &["-c", "-o", "extended_l2=on"],
        &["-o", "cluster_size=64k"],
        &["-o", "cluster_size=2M"],
        &["-c", "-o", "cluster_size=2M"],
        &["-o", "cluster_size=512"],
        &["-c", "-o", "cluster_size=512"],
        &["-o", "compat=0.10"],
        &["-c", "-o", "compat=0.10"],
    ];
    for (i, v) in variants.iter().enumerate() {
        let q = dir.path().join(format!("v{i}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(v);
        args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
        qemu_img(&args);
        check_served(dir.path(), q.to_str().unwrap(), &q, &[]);
    }
}

#[test]
fn compressed_qcow2_over_nginx() {
    require_tool!("qemu-img", "nbdcopy", "nbdinfo", "nginx", "cmp");
    let dir = tempdir();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    let raw = dir.path().join("disk.raw");
    raw_image(&raw);
    let web = Nginx::serve(&www, &dir.path().join("nginx"), "");
    for (name, opts) in [
        ("z.qcow2", "compression_type=zlib"),
        ("zstd.qcow2", "compression_type=zstd"),
    ] {
        let q = www.join(name);
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            opts,
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        check_served(dir.path(), &web.url(name), &q, &[]);
    }
    // A backing chain over HTTP too: the top image and its base both remote.
    let top = www.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "z.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 200k"])
            .arg(&top),
    );
    check_served(
        dir.path(),
        &web.url("top.qcow2"),
        &top,
        &["--backing", &web.url("z.qcow2")],
    );
}

#[test]
fn backing_chain_with_data_and_zero_writes() {
    require_tool!("qemu-img", "qemu-io", "nbdcopy", "nbdinfo", "cmp");
    let dir = tempdir();
    let d = dir.path();
    let raw = d.join("disk.raw");
    raw_image(&raw);
    let base = d.join("base.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        mid.to_str().unwrap(),
    ]);
    run_ok(
        Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                "write -P 0x55 100k 300k",
                "-c",
                "write -z 2M 1M",
            ])
            .arg(&mid),
    );
    // The top is bigger than its chain: past the base, zeros.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
        "14M",
    ]);
    run_ok(
        Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                "write -P 0x66 3M 64k",
                "-c",
                "write -z 0 64k",
                "-c",
                "write -P 0x77 13M 4k",
            ])
            .arg(&top),
    );
    let (m, b) = (mid.to_str().unwrap(), base.to_str().unwrap());
    check_served(
        d,
        top.to_str().unwrap(),
        &top,
        &["--backing", m, "--backing", b],
    );
    check_served(d, mid.to_str().unwrap(), &mid, &["--backing", b]);

    // A raw backing file (format from the image's backing format extension).
    let over_raw = d.join("over-raw.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "disk.raw",
        "-F",
        "raw",
        over_raw.to_str().unwrap(),
    ]);
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x11 6M 64k"])
            .arg(&over_raw),
    );
    let work = d.join("raw-backing");
    fs::create_dir(&work).unwrap();
    let expected = work.join("expected.raw");
    reference(&over_raw, &expected);
    let server = Server::disksynth_unix(
        &work,
        &[
            "qcow2",
            over_raw.to_str().unwrap(),
            "--backing",
            raw.to_str().unwrap(),
        ],
    );
    let copy = work.join("copy.raw");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    cmp_files(&copy, &expected);

    // Without --backing: refused, naming the backing file and the option.
    let out = run(
        disksynth()
            .args(["qcow2", top.to_str().unwrap(), "-o"])
            .arg(d.join("x.raw")),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    let err = out.stderr_str();
    assert!(
        err.contains("backing file \"mid.qcow2\"") && err.contains("--backing"),
        "{err}"
    );
    // Half a chain: the missing link is named too.
    let out = run(
        disksynth()
            .args(["qcow2", top.to_str().unwrap(), "--backing", m, "-o"])
            .arg(d.join("x.raw")),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("backing file \"base.qcow2\""),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn encrypted_and_otherwise_refused_images_name_the_feature() {
    require_tool!("qemu-img");
    let dir = tempdir();
    let d = dir.path();
    let enc = d.join("enc.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=123456",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        enc.to_str().unwrap(),
        "4M",
    ]);
    let out = run(
        disksynth()
            .args(["qcow2", enc.to_str().unwrap(), "-o"])
            .arg(d.join("x.raw")),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("encryption (LUKS)"),
        "{}",
        out.stderr_str()
    );

    // The dirty bit (incompatible feature bit 0, header bytes 72-79) set by hand.
    let dirty = d.join("dirty.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", dirty.to_str().unwrap(), "4M"]);
    let f = fs::OpenOptions::new().write(true).open(&dirty).unwrap();
    f.write_all_at(&1u64.to_be_bytes(), 72).unwrap();
    let out = run(
        disksynth()
            .args(["qcow2", dirty.to_str().unwrap(), "-o"])
            .arg(d.join("x.raw")),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("dirty bit"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn corrupt_l2_entry_fails_that_read_only() {
    require_tool!("qemu-img", "qemu-io");
    let dir = tempdir();
    let d = dir.path();
    let raw = d.join("disk.raw");
    raw_image(&raw);
    let q = d.join("c.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    // L1 entry 0 (header bytes 40-47: the L1 table offset) → the L2 table; point the entry
    // of guest cluster 3 (64 KiB clusters) past the end of the file.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&q)
        .unwrap();
    let mut w = [0u8; 8];
    f.read_exact_at(&mut w, 40).unwrap();
    let l1 = u64::from_be_bytes(w);
    f.read_exact_at(&mut w, l1).unwrap();
    let l2 = u64::from_be_bytes(w) & 0x00ff_ffff_ffff_fe00;
    f.write_all_at(&(1u64 << 63 | 1 << 45).to_be_bytes(), l2 + 3 * 8)
        .unwrap();
    drop(f);
    let mut server = Server::disksynth_unix(d, &["qcow2", q.to_str().unwrap()]);
    let bad = qemu_io_readonly(server.uri(), &["read 196608 4096"]);
    let text = format!("{}{}", bad.stdout_str(), bad.stderr_str());
    assert!(text.contains("Input/output error"), "{}", bad.describe());
    // Other reads still work, the server keeps running.
    let expected = fs::read(&raw).unwrap();
    let good = qemu_io_readonly(
        server.uri(),
        &[&format!("read -P {} 4 1", expected[4]), "read -P 0 7M 64k"],
    );
    let text = format!("{}{}", good.stdout_str(), good.stderr_str());
    assert!(
        good.status.success() && !text.contains("failed"),
        "{}",
        good.describe()
    );
    assert!(server.is_running());
    // Logged by the worker that answered; wait for it rather than race it.
    assert!(
        server.wait_stderr_contains("past the end of the image file", Duration::from_secs(5)),
        "{}",
        server.stderr_text()
    );
}

/// `disksynth image` tells the format by its magic, never the name: a raw disk, a compressed
/// qcow2, a block-indexed xz of each (the qcow2 inside served as qcow2) and a qcow2 with a
/// backing chain, local and over nginx, each equal byte for byte to `qemu-img convert -O raw`
/// (xz: to what was packed), and a qcow2's block status equal to `qemu-img map`'s.
#[test]
fn image_serves_raw_xz_qcow2_and_qcow2_in_xz_by_their_magic() {
    require_tool!("qemu-img", "nbdcopy", "nbdinfo", "nginx", "cmp");
    let dir = tempdir();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    let raw = www.join("disk.img");
    raw_image(&raw);
    let q = www.join("cloud.img"); // a qcow2 named like Ubuntu's
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    for (from, to) in [("cloud.img", "cloud.img.xz"), ("disk.img", "disk.xz")] {
        run_ok(
            disksynth()
                .args(["pack", "--block-size", "1M"])
                .arg(www.join(from))
                .arg(www.join(to)),
        );
    }
    let top = www.join("top");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "cloud.img",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    run_ok(
        Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                "write -P 0x5a 3M 100k",
                "-c",
                "write -z 0 64k",
            ])
            .arg(&top),
    );
    let web = Nginx::serve(&www, &dir.path().join("nginx"), "");
    let expected_top = dir.path().join("top.raw");
    reference(&top, &expected_top);
    let cases: Vec<(String, Vec<String>, &Path, Option<&Path>)> = vec![
        ("disk.img".into(), vec![], &raw, None),
        ("cloud.img".into(), vec![], &raw, Some(&q)),
        ("cloud.img.xz".into(), vec![], &raw, None),
        ("disk.xz".into(), vec![], &raw, None),
        (
            "top".into(),
            vec!["cloud.img".into()],
            &expected_top,
            Some(&top),
        ),
    ];
    for remote in [false, true] {
        for (name, backing, expected, qcow2) in &cases {
            let at = |n: &str| {
                if remote {
                    web.url(n)
                } else {
                    www.join(n).to_str().unwrap().to_string()
                }
            };
            let work = dir.path().join(format!("w-{remote}-{name}"));
            fs::create_dir(&work).unwrap();
            let source = at(name);
            let mut args = vec!["image".to_string(), source.clone()];
            for b in backing {
                args.extend(["--backing".to_string(), at(b)]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let server = Server::disksynth_unix(&work, &args);
            let copy = work.join("copy.raw");
            run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
            cmp_files(&copy, expected);
            if let Some(q) = qcow2 {
                assert_maps_agree(&nbdinfo_map(server.uri()), &qemu_map(q), &source);
            }
        }
    }
}

/// Formats without random access, or that disksynth does not read, are refused by name with
/// what to convert them to; so is a --backing for an image that has none.
#[test]
fn image_refuses_other_formats_with_advice() {
    require_tool!("qemu-img", "gzip");
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    raw_image(&raw);
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for (fmt, name) in [
        ("vmdk", "d.vmdk"),
        ("vhdx", "d.vhdx"),
        ("vdi", "d.vdi"),
        ("vpc", "d.vhd"),
    ] {
        qemu_img(&["convert", "-O", fmt, raw.to_str().unwrap(), &p(name)]);
    }
    run_ok(Command::new("gzip").arg("-k").arg(&raw));
    for (name, says) in [
        ("d.vmdk", "VMDK"),
        ("d.vhdx", "VHDX"),
        ("d.vdi", "VDI"),
        ("d.vhd", "VHD"),
        ("disk.raw.gz", "gzip"),
    ] {
        let out = run(
            disksynth().args(["image", &p(name), "-o", &p("out")]),
            CMD_TIMEOUT,
        );
        assert!(!out.status.success(), "{name} was served");
        let err = out.stderr_str();
        assert!(
            err.contains(says) && err.contains("convert"),
            "{name}: {err}"
        );
        assert!(!dir.path().join("out").exists(), "{name}: output written");
    }
    let out = run(
        disksynth().args([
            "image",
            &p("disk.raw"),
            "--backing",
            &p("d.vmdk"),
            "-o",
            &p("out"),
        ]),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("has no backing file"),
        "{}",
        out.stderr_str()
    );
}
