//! The data filters (`--filter offset|truncate|partition|cow|cache|readahead`) with real
//! clients (qemu-img, qemu-io, nbdinfo, nbdcopy), against nbdkit's filters of the same name and
//! against the bytes cut out of the image by hand, and with a real origin (nginx) for the
//! cache and read-ahead.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use disksynth_tests::generator::{cmp_files, qemu_img_identical};
use disksynth_tests::nginx::Nginx;
use disksynth_tests::{
    nbdinfo_map, nbdinfo_size, qemu_io, qemu_io_unchecked, random_bytes, require_tool, run, run_ok,
    tempdir, write_sparse_file, Server, CMD_TIMEOUT, MIB,
};

/// `disksynth ARGS --filter F... -U DIR/NAME.sock`, in its own socket.
fn serve(dir: &Path, name: &str, args: &[&str], filters: &[&str]) -> Server {
    let sub = dir.join(name);
    fs::create_dir_all(&sub).unwrap();
    let mut all: Vec<&str> = args.to_vec();
    for f in filters {
        all.push("--filter");
        all.push(f);
    }
    Server::disksynth_unix(&sub, &all)
}

/// nbdkit ARGS in its own socket directory.
fn nbdkit(dir: &Path, name: &str, args: &[&str]) -> Server {
    let sub = dir.join(name);
    fs::create_dir_all(&sub).unwrap();
    Server::nbdkit(&sub, args)
}

/// Bytes `[offset, offset+len)` of `file` written to a file of their own (what `dd skip=
/// count=` would cut out).
fn cut(file: &Path, offset: u64, len: u64, to: &Path) -> PathBuf {
    let src = fs::File::open(file).unwrap();
    let mut buf = vec![0u8; len as usize];
    src.read_exact_at(&mut buf, offset).unwrap();
    fs::write(to, &buf).unwrap();
    to.to_path_buf()
}

/// `qemu-img compare` of two NBD exports (or files).
fn same(a: &str, b: &str) {
    let out = run_ok(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", a, b]));
    assert!(
        out.stdout_str().contains("Images are identical"),
        "{}",
        out.describe()
    );
}

/// A 64 MiB image, sparse, with random data in each partition region (and holes inside them).
fn disk_with(dir: &Path, sfdisk_script: &str) -> PathBuf {
    let img = dir.join("disk.img");
    write_sparse_file(&img, 64 * MIB, &[]);
    let script = dir.join("sfdisk.script");
    fs::write(&script, sfdisk_script).unwrap();
    let out = run(
        Command::new("sh")
            .args([
                "-c",
                r#"sfdisk --no-reread --no-tell-kernel -q "$1" < "$2""#,
                "sh",
            ])
            .arg(&img)
            .arg(&script),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "sfdisk: {}", out.describe());
    // Data at 1 MiB steps from 1 MiB on, 300 KiB each: every partition gets some, with holes
    // between (tables live in the first MiB and the last sectors, left alone).
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    for k in 1..62u64 {
        f.write_all_at(&random_bytes(k, 300 << 10), k * MIB + 4096 * k)
            .unwrap();
    }
    img
}

#[test]
fn partition_of_a_gpt_disk_is_the_bytes_nbdkit_and_the_table_say() {
    require_tool!("sfdisk", "qemu-img", "nbdkit", "nbdinfo");
    let dir = tempdir();
    // Sectors: p1 at 2048 (8 MiB), p2 at 20480 (20 MiB), p3 at 63488 to the end of the usable
    // area.
    let img = disk_with(
        dir.path(),
        "label: gpt\nstart=2048, size=16384\nstart=20480, size=40960\nstart=63488, size=65536\n",
    );
    let path = img.to_str().unwrap();
    for (n, start, sectors) in [
        (1u64, 2048u64, 16384u64),
        (2, 20480, 40960),
        (3, 63488, 65536),
    ] {
        let (ours, theirs) = partition_both(dir.path(), path, n);
        assert_eq!(nbdinfo_size(ours.uri()), sectors * 512);
        same(ours.uri(), theirs.uri());
        let piece = cut(
            &img,
            start * 512,
            sectors * 512,
            &dir.path().join(format!("p{n}.raw")),
        );
        qemu_img_identical(ours.uri(), &piece);
        // Extents seen through the window: the file's holes, shifted, as nbdkit sees them.
        assert_eq!(
            nbdinfo_map(ours.uri()),
            nbdinfo_map(theirs.uri()),
            "partition {n}"
        );
    }
}

/// Partition `n` of the image at `path`, served by disksynth's and by nbdkit's partition filter.
fn partition_both(dir: &Path, path: &str, n: u64) -> (Server, Server) {
    let ours = serve(
        dir,
        &format!("p{n}"),
        &["file", path],
        &[&format!("partition:{n}")],
    );
    let theirs = nbdkit(
        dir,
        &format!("k{n}"),
        &[
            "--filter=partition",
            "file",
            path,
            &format!("partition={n}"),
        ],
    );
    (ours, theirs)
}

#[test]
fn logical_partitions_of_an_mbr_disk_are_numbered_from_5_like_nbdkit() {
    require_tool!("sfdisk", "qemu-img", "nbdkit");
    let dir = tempdir();
    let img = disk_with(
        dir.path(),
        "label: dos\nstart=2048, size=8192, type=83\nstart=12288, size=110000, type=5\n\
         start=14336, size=16384, type=83\nstart=32768, size=40000, type=83\n",
    );
    let path = img.to_str().unwrap();
    for n in [1, 5, 6] {
        let (ours, theirs) = partition_both(dir.path(), path, n);
        assert_eq!(
            nbdinfo_size(ours.uri()),
            nbdinfo_size(theirs.uri()),
            "partition {n}"
        );
        same(ours.uri(), theirs.uri());
    }
    // Partition 7 does not exist: the server refuses to start, naming those there are.
    let out = run(
        disksynth_tests::disksynth().args([
            "file",
            path,
            "--filter",
            "partition:7",
            "-o",
            "/dev/null",
        ]),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    let err = out.stderr_str();
    assert!(
        err.contains("no partition 7") && err.contains("5 (") && err.contains("6 ("),
        "{err}"
    );
}

#[test]
fn partition_refuses_a_disk_without_a_table() {
    let dir = tempdir();
    let img = dir.path().join("blank.img");
    write_sparse_file(&img, 4 * MIB, &[]);
    let out = run(
        disksynth_tests::disksynth().args([
            "file",
            img.to_str().unwrap(),
            "--filter",
            "partition:1",
            "-o",
            "/dev/null",
        ]),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("no partition table"),
        "{}",
        out.describe()
    );
}

#[test]
fn offset_and_truncate_agree_with_nbdkit() {
    require_tool!("qemu-img", "nbdkit", "nbdinfo");
    let dir = tempdir();
    let img = dir.path().join("odd.img");
    // 3 MiB + 12345 bytes: data, a hole, data to the ragged end.
    let f = fs::File::create(&img).unwrap();
    f.set_len(3 * MIB + 12345).unwrap();
    f.write_all_at(&random_bytes(2, MIB as usize), 0).unwrap();
    f.write_all_at(&random_bytes(3, (MIB + 12345) as usize), 2 * MIB)
        .unwrap();
    drop(f);
    let path = img.to_str().unwrap();
    let cases: [(&str, &[&str]); 4] = [
        (
            "offset:1000,len=2M",
            &["--filter=offset", "file", path, "offset=1000", "range=2M"],
        ),
        ("offset:1M", &["--filter=offset", "file", path, "offset=1M"]),
        (
            "truncate:round-up=1M",
            &["--filter=truncate", "file", path, "round-up=1M"],
        ),
        (
            "truncate:1M",
            &["--filter=truncate", "file", path, "truncate=1M"],
        ),
    ];
    for (i, (ours, theirs)) in cases.iter().enumerate() {
        let a = serve(dir.path(), &format!("o{i}"), &["file", path], &[ours]);
        let b = nbdkit(dir.path(), &format!("k{i}"), theirs);
        assert_eq!(nbdinfo_size(a.uri()), nbdinfo_size(b.uri()), "{ours}");
        same(a.uri(), b.uri());
    }
    // Grown: the new tail is a hole in the map, after the file's last data.
    let grown = serve(dir.path(), "grown", &["file", path], &["truncate:8M"]);
    let map = nbdinfo_map(grown.uri());
    let last = map.last().unwrap();
    assert_eq!((last.end(), last.kind & 1), (8 * MIB, 1), "{map:?}");
    assert!(last.offset <= 3 * MIB + 12345, "{map:?}");
}

#[test]
fn truncate_over_cow_takes_zeros_but_not_data_past_the_old_end() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let img = dir.path().join("small.img");
    fs::write(&img, random_bytes(5, MIB as usize)).unwrap();
    let before = fs::read(&img).unwrap();
    // truncate outermost, over a copy-on-write overlay over the (read-only) file.
    let s = serve(
        dir.path(),
        "t",
        &["file", img.to_str().unwrap()],
        &["truncate:2M", "cow"],
    );
    // Spanning the old end with data: refused, and nothing of it lands.
    let out = qemu_io_unchecked(s.uri(), &["write -P 0x11 960K 128K"]);
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(text.contains("No space left on device"), "{text}");
    qemu_io(s.uri(), &["read -P 0 1M 1M"]);
    // Zeros past the end are what is there already; data before it lands in the overlay.
    qemu_io(
        s.uri(),
        &["write -z 1M 64K", "write -P 0x22 0 4K", "read -P 0x22 0 4K"],
    );
    assert_eq!(
        fs::read(&img).unwrap(),
        before,
        "the file beneath was written"
    );
}

#[test]
fn cow_is_shared_by_clients_and_never_writes_beneath() {
    require_tool!("qemu-io", "nbdinfo");
    let dir = tempdir();
    let img = dir.path().join("base.img");
    fs::write(&img, random_bytes(9, 4 * MIB as usize)).unwrap();
    let before = fs::read(&img).unwrap();
    let pages = dir.path().join("pages");
    fs::create_dir(&pages).unwrap();
    let cow = format!("cow:dir={},max-disk=1M", pages.display());
    let s = serve(dir.path(), "c", &["file", img.to_str().unwrap()], &[&cow]);
    let json = run_ok(Command::new("nbdinfo").args(["--json", s.uri()])).stdout_str();
    assert!(json.contains("\"is_read_only\": false"), "{json}");
    qemu_io(s.uri(), &["write -P 0xab 1M 64K"]);
    // Another connection sees the write (one overlay for the export).
    qemu_io(s.uri(), &["read -P 0xab 1M 64K"]);
    // The budget: 1 MiB of pages, 64 KiB used; another 1 MiB does not fit.
    let out = qemu_io_unchecked(s.uri(), &["write -P 0xcd 2M 1M"]);
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(text.contains("No space left on device"), "{text}");
    assert_eq!(
        fs::read(&img).unwrap(),
        before,
        "the file beneath was written"
    );
    // The overlay's temp file is unlinked at once: nothing is left in DIR.
    assert_eq!(fs::read_dir(&pages).unwrap().count(), 0);
}

/// An origin serving a 12 MiB random image, and the image.
fn origin(dir: &Path) -> (Nginx, Vec<u8>) {
    let www = dir.join("www");
    fs::create_dir_all(&www).unwrap();
    let data = random_bytes(77, 12 * MIB as usize);
    fs::write(www.join("disk.raw"), &data).unwrap();
    (Nginx::serve(&www, &dir.join("nginx"), ""), data)
}

#[test]
fn cache_serves_reconnects_and_restarts_without_the_origin() {
    require_tool!("nginx", "nbdcopy");
    let dir = tempdir();
    let (web, data) = origin(dir.path());
    let url = web.url("disk.raw");
    let cache_dir = dir.path().join("cache");
    let cache = format!("cache:dir={},size=16M", cache_dir.display());
    // The source's own read-ahead off, so every byte the cache misses is a request.
    let args = ["http", url.as_str(), "--readahead", "0"];
    let copy = dir.path().join("copy.raw");
    let reference = dir.path().join("ref.raw");
    fs::write(&reference, &data).unwrap();
    {
        let s = serve(dir.path(), "s1", &args, &[&cache]);
        run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&copy));
        cmp_files(&copy, &reference);
        let first = Nginx::traffic(&web.access_log(), "disk.raw");
        // A reconnect: nothing more from the origin.
        fs::remove_file(&copy).unwrap();
        run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&copy));
        cmp_files(&copy, &reference);
        assert_eq!(Nginx::traffic(&web.access_log(), "disk.raw"), first);
    }
    // The cache file holds at most size= bytes.
    let held = fs::metadata(cache_dir.join("default.cache")).unwrap().len();
    assert!(held <= 16 * MIB, "{held}");
    // A restart (the origin is needed to open the source: its size and identity), then the
    // origin goes away: every byte still comes, from the cache file.
    let s = serve(dir.path(), "s2", &args, &[&cache]);
    drop(web);
    fs::remove_file(&copy).unwrap();
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&copy));
    cmp_files(&copy, &reference);
}

#[test]
fn cache_smaller_than_the_disk_still_serves_every_byte() {
    require_tool!("nginx", "qemu-img");
    let dir = tempdir();
    let (web, data) = origin(dir.path());
    let url = web.url("disk.raw");
    let reference = dir.path().join("ref.raw");
    fs::write(&reference, &data).unwrap();
    let cache = format!(
        "cache:dir={},size=1M,block=64K",
        dir.path().join("c").display()
    );
    let s = serve(
        dir.path(),
        "s",
        &["http", &url, "--readahead", "0"],
        &[&cache],
    );
    // Twice over: the second pass evicts and refetches, never serving a stale slot.
    qemu_img_identical(s.uri(), &reference);
    qemu_img_identical(s.uri(), &reference);
    let held = fs::metadata(dir.path().join("c/default.cache"))
        .unwrap()
        .len();
    assert!(held <= MIB, "{held}");
}

#[test]
fn readahead_turns_small_sequential_reads_into_few_origin_requests() {
    require_tool!("nginx", "nbdcopy");
    let dir = tempdir();
    let (web, data) = origin(dir.path());
    let url = web.url("disk.raw");
    let reference = dir.path().join("ref.raw");
    fs::write(&reference, &data).unwrap();
    // One connection, one 64 KiB request at a time: a sequential reader.
    let sequential = |uri: &str, to: &Path| {
        run_ok(
            Command::new("nbdcopy")
                .args(["--connections=1", "--requests=1", "--request-size=65536"])
                .arg(uri)
                .arg(to),
        );
    };
    let plain = serve(
        dir.path(),
        "plain",
        &["http", &url, "--readahead", "0"],
        &[],
    );
    let a = dir.path().join("a.raw");
    sequential(plain.uri(), &a);
    cmp_files(&a, &reference);
    let without = Nginx::traffic(&web.access_log(), "disk.raw");
    drop(plain);
    let ra = serve(
        dir.path(),
        "ra",
        &["http", &url, "--readahead", "0"],
        &["readahead:size=2M"],
    );
    let b = dir.path().join("b.raw");
    sequential(ra.uri(), &b);
    cmp_files(&b, &reference);
    let total = Nginx::traffic(&web.access_log(), "disk.raw");
    let with = total.requests - without.requests;
    // 192 reads of 64 KiB: without, one request each; with, windows growing to 2 MiB.
    assert!(without.requests >= 192, "{without:?}");
    assert!(
        with * 4 < without.requests,
        "{with} requests with readahead, {without:?} without"
    );
    // Nothing fetched twice: the bytes sent are the image (plus what opening the source reads).
    let bytes = total.bytes - without.bytes;
    assert!(bytes < data.len() as u64 + 4 * MIB, "{bytes}");
    // Several connections with requests in parallel (nbdcopy's default) still get every byte
    // right through the shared windows.
    let c = dir.path().join("c.raw");
    run_ok(Command::new("nbdcopy").arg(ra.uri()).arg(&c));
    cmp_files(&c, &reference);
}

#[test]
fn one_partition_of_a_remote_qcow2_cached_with_writes_in_an_overlay() {
    require_tool!("sfdisk", "qemu-img", "qemu-io", "nginx");
    let dir = tempdir();
    let raw = disk_with(
        dir.path(),
        "label: gpt\nstart=2048, size=16384\nstart=20480, size=40960\n",
    );
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(www.join("disk.qcow2")),
    );
    let web = Nginx::serve(&www, &dir.path().join("nginx"), "");
    let url = web.url("disk.qcow2");
    let cache = format!("cache:dir={},size=32M", dir.path().join("cache").display());
    // Outermost first: writes land in the overlay, over partition 2, over the cache, over the
    // remote image.
    let s = serve(
        dir.path(),
        "s",
        &["qcow2", &url],
        &["cow", "partition:2", &cache],
    );
    let want = cut(&raw, 20480 * 512, 40960 * 512, &dir.path().join("p2.raw"));
    qemu_img_identical(s.uri(), &want);
    qemu_io(s.uri(), &["write -P 0x77 1M 64K"]);
    qemu_io(s.uri(), &["read -P 0x77 1M 64K"]);
    // The origin goes away: what was read is in the cache, what was written in the overlay.
    drop(web);
    let got = dir.path().join("got.raw");
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&got));
    let mut expected = fs::read(&want).unwrap();
    expected[MIB as usize..(MIB + 65536) as usize].fill(0x77);
    assert!(fs::read(&got).unwrap() == expected, "bytes differ");
}

#[test]
fn writes_through_the_cache_reach_the_file_and_are_what_later_reads_see() {
    require_tool!("qemu-io", "qemu-img");
    let dir = tempdir();
    let img = dir.path().join("rw.img");
    fs::write(&img, random_bytes(11, 4 * MIB as usize)).unwrap();
    let cache = format!("cache:dir={},size=8M", dir.path().join("c").display());
    let path = img.to_str().unwrap();
    {
        let s = serve(dir.path(), "rw1", &["file", path, "--rw"], &[&cache]);
        // Read everything (cached), then overwrite part of a cached block, zero another.
        qemu_img_identical(s.uri(), &img);
        qemu_io(s.uri(), &["write -P 0x3c 100000 5000", "write -z 2M 64K"]);
        // Another connection reads the new bytes, not the cached old ones.
        qemu_io(s.uri(), &["read -P 0x3c 100000 5000", "read -P 0 2M 64K"]);
        qemu_img_identical(s.uri(), &img);
    }
    // After a restart the cache agrees with the file.
    let s = serve(dir.path(), "rw2", &["file", path, "--rw"], &[&cache]);
    qemu_img_identical(s.uri(), &img);
    qemu_io(s.uri(), &["read -P 0x3c 100000 5000"]);
}

#[test]
fn a_spec_partition_can_be_one_partition_of_another_disk_image() {
    require_tool!("sfdisk", "qemu-img");
    let dir = tempdir();
    // The inner disk: GPT, partition 2 at sector 20480, 20 MiB.
    let inner = disk_with(
        dir.path(),
        "label: gpt\nstart=2048, size=16384\nstart=20480, size=40960\n",
    );
    let spec = dir.path().join("outer.toml");
    fs::write(
        &spec,
        format!(
            "[disk]\ntable = \"mbr\"\nseed = \"filters\"\n\n[[partition]]\nlabel = \"copy\"\n\
             type = \"linux-generic\"\nraw = \"{}\"\nfilters = [\"partition:2\"]\n",
            inner.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("outer.img");
    run_ok(
        disksynth_tests::disksynth()
            .arg("build")
            .arg(&spec)
            .arg("-o")
            .arg(&out),
    );
    // The outer disk's first partition (where sfdisk says it is) holds exactly the inner
    // disk's partition 2.
    let dump = run_ok(Command::new("sfdisk").args(["--dump"]).arg(&out)).stdout_str();
    let line = dump
        .lines()
        .find(|l| l.contains("start="))
        .unwrap_or_else(|| panic!("no partition in {dump}"));
    let field = |k: &str| -> u64 {
        let v = line.split(k).nth(1).unwrap().split(',').next().unwrap();
        v.trim().parse().unwrap()
    };
    let (start, sectors) = (field("start="), field("size="));
    assert_eq!(sectors * 512, 40960 * 512, "{line}");
    let got = cut(
        &out,
        start * 512,
        sectors * 512,
        &dir.path().join("got.raw"),
    );
    let want = cut(
        &inner,
        20480 * 512,
        40960 * 512,
        &dir.path().join("want.raw"),
    );
    cmp_files(&got, &want);
}
