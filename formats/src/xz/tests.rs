//! `.xz` random access against the real `xz` command: images made by
//! `xz` (block sizes, checks, Streams, padding) read through [`XzDev`]
//! and compared with `xz -dc`; damage; the cache; [`pack`] checked by
//! `xz -t` and `xz -lvv`.
//!
//! Without `xz` the tests print SKIPPED and pass, except under CI=true,
//! where they fail (`apt-get install xz-utils`).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use synth::testing::check_dev;
use synth::{check_range, BlockDev, Error, ErrorKind, ExtentKind, ExtentList};

use super::*;

const MIB: u64 = 1 << 20;

fn have_xz(test: &str) -> bool {
    crate::testutil::have_tool("xz", "xz-utils", test)
}

macro_rules! require_xz {
    ($name:literal) => {
        if !have_xz($name) {
            return;
        }
    };
}

/// A file as a block device, counting reads and optionally failing those
/// that reach `fail_from`.
#[derive(Debug)]
struct FileDev {
    file: File,
    size: u64,
    reads: AtomicU64,
    bytes: AtomicU64,
    fail_from: Option<u64>,
}

impl FileDev {
    fn open(path: &Path) -> Arc<FileDev> {
        Self::failing(path, None)
    }

    fn failing(path: &Path, fail_from: Option<u64>) -> Arc<FileDev> {
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(FileDev {
            file,
            size,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            fail_from,
        })
    }
}

impl BlockDev for FileDev {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if self
            .fail_from
            .is_some_and(|f| offset + buf.len() as u64 > f)
        {
            return Err(Error::io(
                "test source",
                std::io::Error::other("injected failure"),
            ));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("reading the test file", e))
    }
}

use synth::testing::Rng;

/// `len` bytes cycling every MiB through random bytes, text, two MiB of
/// zeros, and half random / half zeros: with 1 MiB Blocks, Blocks 2, 3,
/// 7, 8, ... are all zeros.
fn make_data(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; len as usize];
    for (m, chunk) in data.chunks_mut(MIB as usize).enumerate() {
        match m % 5 {
            0 => chunk.iter_mut().for_each(|b| *b = rng.next() as u8),
            1 => {
                let mut line = 0u64;
                let mut text = Vec::new();
                while text.len() < chunk.len() {
                    line += 1;
                    writeln!(
                        text,
                        "line {line}: the quick brown fox {}",
                        rng.next() % 1000
                    )
                    .unwrap();
                }
                chunk.copy_from_slice(&text[..chunk.len()]);
            }
            2 | 3 => {}
            _ => {
                let half = chunk.len() / 2;
                chunk[..half].iter_mut().for_each(|b| *b = rng.next() as u8);
            }
        }
    }
    data
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

/// `xz ARGS -c input > output`.
fn xz_compress(input: &Path, output: &Path, args: &[&str]) {
    let out = File::create(output).unwrap();
    let status = Command::new("xz")
        .args(args)
        .arg("-c")
        .arg(input)
        .stdout(out)
        .status()
        .unwrap();
    assert!(status.success(), "xz {args:?} failed");
}

/// `xz -dc path`.
fn xz_decompress(path: &Path) -> Vec<u8> {
    let out = Command::new("xz").arg("-dc").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "xz -dc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A test directory with `data` compressed by `xz args`: (dir, .xz path).
fn compressed(data: &[u8], args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("data.raw");
    write(&raw, data);
    let xz = dir.path().join("data.raw.xz");
    xz_compress(&raw, &xz, args);
    (dir, xz)
}

fn open(path: &Path, opts: &XzOptions) -> XzDev {
    XzDev::open(FileDev::open(path), opts).unwrap()
}

fn block_starts(dev: &XzDev) -> Vec<u64> {
    dev.index()
        .blocks()
        .map(|b| b.uncompressed_offset)
        .collect()
}

/// The device equals `xz -dc`: boundary-straddling and random reads,
/// zero-copy chunks, extents, a full read (synth's conformance check).
fn check_against_xz(dev: &XzDev, xz: &Path) -> Vec<u8> {
    let expected = xz_decompress(xz);
    check_dev(dev, &expected, &block_starts(dev));
    expected
}

#[test]
fn reads_match_xz_with_1m_4m_and_16m_blocks() {
    require_xz!("reads_match_xz_with_1m_4m_and_16m_blocks");
    for (block, len, preset) in [
        ("1MiB", 9 * MIB + 12345, "-6"),
        ("4MiB", 9 * MIB + 12345, "-6"),
        ("16MiB", 40 * MIB + 777, "-1"),
    ] {
        let data = make_data(len, len);
        let bs = format!("--block-size={block}");
        let (_dir, xz) = compressed(&data, &[&bs, "-T1", preset]);
        let dev = open(&xz, &XzOptions::default());
        let block_bytes = match block {
            "1MiB" => MIB,
            "4MiB" => 4 * MIB,
            _ => 16 * MIB,
        };
        assert_eq!(dev.size(), len);
        assert_eq!(
            dev.index().blocks().len() as u64,
            len.div_ceil(block_bytes),
            "{block}"
        );
        assert!(dev.index().blocks().all(|b| b.check == Check::Crc64));
        let expected = check_against_xz(&dev, &xz);
        assert!(expected == data, "xz -dc differs from the input ({block})");

        // After the full read every all-zero Block is known, and reported
        // as a hole; all others are data.
        let mut list = ExtentList::new(0);
        dev.extents(0, dev.size(), &mut list).unwrap();
        let mut zero_blocks = 0;
        for b in dev.index().blocks() {
            let zero = data[b.uncompressed_offset as usize..b.uncompressed_end() as usize]
                .iter()
                .all(|&x| x == 0);
            zero_blocks += usize::from(zero);
            let (_, e) = list
                .iter_offsets()
                .find(|(off, e)| (*off..off + e.len).contains(&b.uncompressed_offset))
                .unwrap();
            let want = if zero {
                ExtentKind::Hole
            } else {
                ExtentKind::Data
            };
            assert_eq!(e.kind, want, "{block}: block at {}", b.uncompressed_offset);
        }
        assert_eq!(dev.stats().zero_blocks, zero_blocks);
        if block == "1MiB" {
            assert!(zero_blocks >= 3, "the data has whole zero MiBs");
        }
    }
}

#[test]
fn undecoded_blocks_are_data_in_extents() {
    require_xz!("undecoded_blocks_are_data_in_extents");
    let data = make_data(5 * MIB, 1);
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-1"]);
    let dev = open(&xz, &XzOptions::default());
    let mut list = ExtentList::new(0);
    dev.extents(0, dev.size(), &mut list).unwrap();
    assert_eq!(list.as_slice().len(), 1);
    assert_eq!(list.as_slice()[0].kind, ExtentKind::Data);
    assert_eq!(dev.stats().decodes, 0, "extents decode nothing");
    // Reading block 2 (all zeros) makes it a hole.
    let mut buf = vec![1u8; 100];
    dev.read_at(&mut buf, 2 * MIB + 5).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let mut list = ExtentList::new(MIB);
    dev.extents(MIB, 3 * MIB, &mut list).unwrap();
    let kinds: Vec<_> = list
        .iter_offsets()
        .map(|(o, e)| (o, e.len, e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (MIB, MIB, ExtentKind::Data),
            (2 * MIB, MIB, ExtentKind::Hole),
            (3 * MIB, MIB, ExtentKind::Data),
        ]
    );
}

#[test]
fn single_block_file() {
    require_xz!("single_block_file");
    let data = make_data(3 * MIB + 5, 7);
    // Single-threaded xz without --block-size writes one Block.
    let (_dir, xz) = compressed(&data, &["-T1", "-3"]);
    let dev = open(&xz, &XzOptions::default());
    assert_eq!(dev.index().blocks().len(), 1);
    assert_eq!(dev.index().largest_block(), 3 * MIB + 5);
    check_against_xz(&dev, &xz);
}

#[test]
fn every_check_type() {
    require_xz!("every_check_type");
    let data = make_data(3 * MIB + 100, 3);
    for (name, check) in [
        ("crc32", Check::Crc32),
        ("crc64", Check::Crc64),
        ("sha256", Check::Sha256),
        ("none", Check::None),
    ] {
        let arg = format!("--check={name}");
        let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-1", &arg]);
        let dev = open(&xz, &XzOptions::default());
        assert_eq!(dev.index().blocks().len(), 4, "{name}");
        assert!(dev.index().blocks().all(|b| b.check == check), "{name}");
        let mut all = vec![0u8; data.len()];
        dev.read_at(&mut all, 0).unwrap();
        assert!(all == data, "{name}: full read differs");
        assert!(xz_decompress(&xz) == data, "{name}: xz -dc differs");
    }
}

#[test]
fn concatenated_streams_with_padding() {
    require_xz!("concatenated_streams_with_padding");
    let dir = tempfile::tempdir().unwrap();
    let a = make_data(2 * MIB + 3, 11);
    let b = make_data(3 * MIB + 1, 12);
    let (ra, rb) = (dir.path().join("a"), dir.path().join("b"));
    write(&ra, &a);
    write(&rb, &b);
    let (xa, xb) = (dir.path().join("a.xz"), dir.path().join("b.xz"));
    xz_compress(
        &ra,
        &xa,
        &["--block-size=1MiB", "-T1", "-1", "--check=crc32"],
    );
    xz_compress(
        &rb,
        &xb,
        &["--block-size=1MiB", "-T1", "-1", "--check=sha256"],
    );
    let empty = dir.path().join("empty");
    write(&empty, b"");
    let xe = dir.path().join("empty.xz");
    xz_compress(&empty, &xe, &[]);

    // a, 4 bytes of Stream Padding, an empty Stream, b, 8 bytes of padding.
    let mut cat = std::fs::read(&xa).unwrap();
    cat.extend_from_slice(&[0; 4]);
    cat.extend_from_slice(&std::fs::read(&xe).unwrap());
    cat.extend_from_slice(&std::fs::read(&xb).unwrap());
    cat.extend_from_slice(&[0; 8]);
    let xcat = dir.path().join("cat.xz");
    write(&xcat, &cat);
    let status = Command::new("xz").arg("-t").arg(&xcat).status().unwrap();
    assert!(status.success(), "xz -t refuses the concatenation");

    let dev = open(&xcat, &XzOptions::default());
    assert_eq!(dev.index().stream_count(), 3);
    assert_eq!(dev.index().blocks().len(), 3 + 4);
    assert_eq!(dev.index().compressed_size(), cat.len() as u64);
    let checks: Vec<_> = dev.index().blocks().map(|b| (b.stream, b.check)).collect();
    assert_eq!(checks[0], (0, Check::Crc32));
    assert_eq!(checks[6], (2, Check::Sha256));
    let expected = check_against_xz(&dev, &xcat);
    assert!(expected == [a, b].concat());

    // Padding that is not a multiple of four, or before the first Stream,
    // is refused.
    let mut bad = cat.clone();
    bad.extend_from_slice(&[0; 2]);
    write(&xcat, &bad);
    assert!(XzIndex::read(&*FileDev::open(&xcat)).is_err());
    let mut bad = vec![0u8; 4];
    bad.extend_from_slice(&cat);
    write(&xcat, &bad);
    let err = XzIndex::read(&*FileDev::open(&xcat)).unwrap_err();
    assert!(err.to_string().contains("before the first Stream"), "{err}");
}

#[test]
fn empty_image() {
    require_xz!("empty_image");
    let (_dir, xz) = compressed(b"", &[]);
    let dev = open(&xz, &XzOptions::default());
    assert_eq!(dev.size(), 0);
    assert_eq!(dev.index().blocks().len(), 0);
    dev.read_at(&mut [], 0).unwrap();
    assert_eq!(
        dev.read_at(&mut [0], 0).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
}

#[test]
fn index_is_read_with_few_reads_from_the_end() {
    require_xz!("index_is_read_with_few_reads_from_the_end");
    // Random data stays big compressed: the file is far bigger than a read
    // window, and only its end and the Stream Header are read.
    let mut rng = Rng(5);
    let data: Vec<u8> = (0..6 * MIB).map(|_| rng.next() as u8).collect();
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-0"]);
    let src = FileDev::open(&xz);
    let index = XzIndex::read(&*src).unwrap();
    assert_eq!(index.blocks().len(), 6);
    let reads = src.reads.load(Ordering::Relaxed);
    let bytes = src.bytes.load(Ordering::Relaxed);
    assert!(reads <= 2, "{reads} reads");
    assert!(bytes < src.size / 4, "read {bytes} of {} bytes", src.size);

    // Blocks sorted and contiguous; block_for finds each byte's Block.
    let mut end = 0;
    for (i, b) in index.blocks().enumerate() {
        assert_eq!(b.uncompressed_offset, end);
        end = b.uncompressed_end();
        assert_eq!(index.block_for(b.uncompressed_offset), Some(i));
        assert_eq!(index.block_for(end - 1), Some(i));
        assert_eq!(b.total_size() % 4, 0);
        assert!(b.total_size() >= b.unpadded_size);
    }
    assert_eq!(index.block_for(end), None);

    // Decoding one Block reads exactly its bytes, in one call.
    let dev = XzDev::open(src.clone(), &XzOptions::default()).unwrap();
    let before = (
        src.reads.load(Ordering::Relaxed),
        src.bytes.load(Ordering::Relaxed),
    );
    let mut buf = [0u8; 10];
    dev.read_at(&mut buf, 3 * MIB + 7).unwrap();
    assert_eq!(&buf, &data[3 * MIB as usize + 7..][..10]);
    let b = index.block(3);
    assert_eq!(src.reads.load(Ordering::Relaxed) - before.0, 1);
    assert_eq!(src.bytes.load(Ordering::Relaxed) - before.1, b.total_size());
}

#[test]
fn corrupt_block_fails_alone() {
    require_xz!("corrupt_block_fails_alone");
    let data = make_data(6 * MIB, 21);
    let (dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-1"]);
    let index = XzIndex::read(&*FileDev::open(&xz)).unwrap();
    let mut bytes = std::fs::read(&xz).unwrap();
    // A byte in the middle of Block 1's Compressed Data (text), and the
    // last byte of Block 4's Check.
    let b1 = index.block(1);
    bytes[(b1.compressed_offset + b1.total_size() / 2) as usize] ^= 0x55;
    let b4 = index.block(4);
    bytes[(b4.compressed_offset + b4.unpadded_size - 1) as usize] ^= 0x01;
    let bad = dir.path().join("bad.xz");
    write(&bad, &bytes);

    let opts = XzOptions {
        readahead: false,
        ..XzOptions::default()
    };
    let dev = open(&bad, &opts);
    for (i, b) in [(1usize, b1), (4, b4)] {
        let mut buf = vec![0u8; 4096];
        let err = dev
            .read_at(&mut buf, b.uncompressed_offset + 100)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("block {i} ")), "{msg}");
        assert!(msg.contains(&b.compressed_offset.to_string()), "{msg}");
        // A read spanning into the bad Block fails too.
        let err = dev
            .read_at(&mut buf, b.uncompressed_offset - 10)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }
    // The other Blocks read fine, and failures are counted, not cached.
    for i in [0u64, 2, 3, 5] {
        let mut buf = vec![0u8; MIB as usize];
        dev.read_at(&mut buf, i * MIB).unwrap();
        assert!(buf == data[(i * MIB) as usize..((i + 1) * MIB) as usize]);
    }
    let stats = dev.stats();
    assert_eq!(stats.decode_failures, 4);
}

#[test]
fn source_failure_is_an_io_error() {
    require_xz!("source_failure_is_an_io_error");
    let data = make_data(4 * MIB, 22);
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-1"]);
    let index = XzIndex::read(&*FileDev::open(&xz)).unwrap();
    // The fetch of Block 2 fails (the Index windows may cover it: those
    // reads work).
    let b2 = index.block(2);
    #[derive(Debug)]
    struct Flaky(Arc<FileDev>, u64);
    impl BlockDev for Flaky {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
            if offset == self.1 {
                return Err(Error::io(
                    "remote",
                    std::io::Error::other("connection reset"),
                ));
            }
            self.0.read_at(buf, offset)
        }
    }
    let src = Arc::new(Flaky(FileDev::open(&xz), b2.compressed_offset));
    let dev = XzDev::open(src, &XzOptions::default()).unwrap();
    let mut buf = [0u8; 16];
    let err = dev.read_at(&mut buf, 2 * MIB + 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert!(err.to_string().contains("block 2"), "{err}");
    dev.read_at(&mut buf, 3 * MIB).unwrap();

    // A source that fails everywhere cannot even be opened.
    let err = XzDev::open(FileDev::failing(&xz, Some(0)), &XzOptions::default()).unwrap_err();
    assert!(matches!(err, XzError::Read { .. }), "{err}");
}

#[test]
fn truncated_and_damaged_ends_are_refused() {
    require_xz!("truncated_and_damaged_ends_are_refused");
    let data = make_data(3 * MIB, 31);
    let (dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-1"]);
    let good = std::fs::read(&xz).unwrap();
    let n = good.len();
    let bad = dir.path().join("bad.xz");
    let read = |bytes: &[u8]| {
        write(&bad, bytes);
        XzIndex::read(&*FileDev::open(&bad)).map(|_| ())
    };
    read(&good).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "truncated"),
        ("one byte short", good[..n - 1].to_vec(), "multiple of four"),
        (
            "four bytes short",
            good[..n - 4].to_vec(),
            "Stream Footer magic",
        ),
        (
            "half the file",
            good[..(n / 2) & !3].to_vec(),
            "Stream Footer",
        ),
        ("no end", good[..n - 12].to_vec(), ""),
        ("zeros", vec![0u8; 4096], "only zero bytes"),
        ("footer CRC", flip(&good, n - 12), "Stream Footer CRC32"),
        ("backward size", flip(&good, n - 8), "CRC32"),
        ("check type", flip(&good, n - 3), "CRC32"),
        ("index record", flip(&good, n - 12 - 8), "Index CRC32"),
        ("stream header", flip(&good, 7), "Stream Header"),
        ("magic", flip(&good, 0), "Stream Header magic"),
        ("head cut", good[4..].to_vec(), "do not fit"),
    ];
    for (what, bytes, needle) in cases {
        let err = read(&bytes).expect_err(what);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            matches!(err, XzError::Truncated { .. } | XzError::Corrupt { .. }),
            "{what}: {err:?}"
        );
    }
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0x10;
    v
}

#[test]
fn big_blocks_are_refused_with_a_fix() {
    require_xz!("big_blocks_are_refused_with_a_fix");
    let data = make_data(5 * MIB, 41);
    let (_dir, xz) = compressed(&data, &["-T1", "-0"]);
    let opts = XzOptions {
        max_block: 4 * MIB,
        ..XzOptions::default()
    };
    let err = XzDev::open(FileDev::open(&xz), &opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, XzError::BlockTooBig { block: 0, .. }),
        "{err:?}"
    );
    assert!(
        msg.contains(
            "repack with `disksynth pack IN OUT --block-size 16M` or `xz --block-size=16MiB`"
        ),
        "{msg}"
    );
    let dev = XzDev::open(
        FileDev::open(&xz),
        &XzOptions {
            allow_big_blocks: true,
            ..opts
        },
    )
    .unwrap();
    let mut buf = [0u8; 8];
    dev.read_at(&mut buf, 5 * MIB - 8).unwrap();
    assert_eq!(&buf, &data[data.len() - 8..]);
    // Past max_block, the Block streams through a growing buffer, its
    // compressed bytes read a MiB at a time: the same bytes.
    assert!(dev.index().block(0).total_size() > MIB);
    assert!(check_against_xz(&dev, &xz) == data);
}

/// Many connections each reading a different Block at once: decodes in
/// progress count against the budget, so memory stays within it whatever
/// the number of readers (they take turns instead).
#[test]
fn concurrent_decodes_of_different_blocks_stay_within_the_budget() {
    require_xz!("concurrent_decodes_of_different_blocks_stay_within_the_budget");
    let data = make_data(16 * MIB, 53);
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-1"]);
    let budget = 3 * MIB;
    let dev = Arc::new(open(
        &xz,
        &XzOptions {
            cache_bytes: budget,
            readahead: false,
            ..XzOptions::default()
        },
    ));
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let (dev, barrier) = (dev.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                barrier.wait();
                dev.read_at(&mut buf, t * MIB + 777).unwrap();
                (t, buf)
            })
        })
        .collect();
    for h in threads {
        let (t, buf) = h.join().unwrap();
        let at = (t * MIB + 777) as usize;
        assert!(buf == data[at..at + buf.len()], "thread {t}");
    }
    let s = dev.stats();
    assert!(s.decodes >= 16, "{s:?}");
    assert!(
        s.peak_bytes <= budget,
        "peak {} over the budget {budget}: {s:?}",
        s.peak_bytes
    );
    assert!(s.peak_bytes > MIB, "nothing was accounted: {s:?}");
}

#[test]
fn concurrent_readers_decode_once() {
    require_xz!("concurrent_readers_decode_once");
    let data = make_data(8 * MIB, 51);
    let (_dir, xz) = compressed(&data, &["--block-size=4MiB", "-T1", "-1"]);
    let dev = Arc::new(open(
        &xz,
        &XzOptions {
            readahead: false,
            ..XzOptions::default()
        },
    ));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (dev, barrier) = (dev.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                barrier.wait();
                dev.read_at(&mut buf, MIB + t * 100_000).unwrap();
                (t, buf)
            })
        })
        .collect();
    for h in threads {
        let (t, buf) = h.join().unwrap();
        let at = (MIB + t * 100_000) as usize;
        assert!(buf == data[at..at + buf.len()], "thread {t}");
    }
    let s = dev.stats();
    assert_eq!(s.decodes, 1, "{s:?}");
    assert_eq!(s.cache_hits + s.waits, 7, "{s:?}");
    assert_eq!(s.cached_blocks, 1);
    assert_eq!(s.cached_bytes, 4 * MIB);
}

#[test]
fn cache_budget_evicts_lru_and_skips_oversized_blocks() {
    require_xz!("cache_budget_evicts_lru_and_skips_oversized_blocks");
    // Random bytes: no Block is all zeros (those are never cached).
    let mut rng = Rng(61);
    let data: Vec<u8> = (0..4 * MIB).map(|_| rng.next() as u8).collect();
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-0"]);
    // The budget also covers a decode in progress (its compressed input,
    // a little over 1 MiB here, and its 1 MiB output): 3.5 MiB keeps two
    // Blocks while a third is decoded.
    let dev = open(
        &xz,
        &XzOptions {
            cache_bytes: 3 * MIB + MIB / 2,
            readahead: false,
            ..XzOptions::default()
        },
    );
    let mut buf = [0u8; 1];
    let mut read = |block: u64| {
        dev.read_at(&mut buf, block * MIB + 3).unwrap();
        assert_eq!(buf[0], data[(block * MIB + 3) as usize]);
    };
    read(0);
    read(1);
    read(0); // hit; 1 is now the least recently used
    read(2); // evicts 1
    read(0); // hit
    read(1); // decoded again, evicts 2
    let s = dev.stats();
    assert_eq!(s.decodes, 4, "{s:?}");
    assert_eq!(s.cache_hits, 2, "{s:?}");
    assert_eq!(s.evictions, 2, "{s:?}");
    assert_eq!((s.cached_blocks, s.cached_bytes), (2, 2 * MIB));

    // A budget smaller than one Block: served, never kept.
    let dev = open(
        &xz,
        &XzOptions {
            cache_bytes: MIB / 2,
            readahead: false,
            ..XzOptions::default()
        },
    );
    let mut all = vec![0u8; data.len()];
    dev.read_at(&mut all, 0).unwrap();
    assert!(all == data);
    dev.read_at(&mut all[..10], 5).unwrap();
    let s = dev.stats();
    assert_eq!((s.decodes, s.cached_bytes), (5, 0), "{s:?}");
}

#[test]
fn sequential_reads_decode_ahead() {
    require_xz!("sequential_reads_decode_ahead");
    let mut rng = Rng(71);
    let data: Vec<u8> = (0..5 * MIB).map(|_| rng.next() as u8).collect();
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-0"]);
    let dev = open(&xz, &XzOptions::default());
    let mut buf = vec![0u8; 256 << 10];
    // Block 0 then Block 1: Block 2 is decoded in the background.
    for off in (0..2 * MIB).step_by(buf.len()) {
        dev.read_at(&mut buf, off).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while dev.stats().decodes < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = dev.stats();
    assert_eq!((s.readaheads, s.decodes), (1, 3), "{s:?}");
    // Reading Block 2 now decodes nothing more (it may still be in flight:
    // then the read waits for it) and starts the read-ahead of Block 3.
    dev.read_at(&mut buf, 2 * MIB).unwrap();
    assert!(buf == data[2 * MIB as usize..][..buf.len()]);
    let s = dev.stats();
    assert_eq!(s.readaheads, 2, "{s:?}");
    assert_eq!(
        s.cache_hits + s.waits,
        1 + (2 * MIB / buf.len() as u64 - 2),
        "{s:?}"
    );

    // A random read (not following the previous one) reads no further.
    let dev = open(&xz, &XzOptions::default());
    dev.read_at(&mut buf, 3 * MIB).unwrap();
    dev.read_at(&mut buf, MIB).unwrap();
    assert_eq!(dev.stats().readaheads, 0);
}

/// Two clients each reading sequentially, interleaved (as two VMs booting
/// from one image): each stream gets its read-ahead.
#[test]
fn interleaved_sequential_streams_each_decode_ahead() {
    require_xz!("interleaved_sequential_streams_each_decode_ahead");
    let mut rng = Rng(73);
    let data: Vec<u8> = (0..10 * MIB).map(|_| rng.next() as u8).collect();
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-0"]);
    let dev = open(&xz, &XzOptions::default());
    let mut buf = vec![0u8; 4096];
    for (a, b) in [(0, 6), (1, 7)] {
        dev.read_at(&mut buf, a * MIB + 100).unwrap();
        dev.read_at(&mut buf, b * MIB + 100).unwrap();
    }
    assert_eq!(dev.stats().readaheads, 2, "{:?}", dev.stats());
}

#[test]
fn cache_hint_decodes() {
    require_xz!("cache_hint_decodes");
    let mut rng = Rng(81);
    let data: Vec<u8> = (0..3 * MIB).map(|_| rng.next() as u8).collect();
    let (_dir, xz) = compressed(&data, &["--block-size=1MiB", "-T1", "-0"]);
    let dev = open(&xz, &XzOptions::default());
    assert!(dev
        .caps()
        .contains(synth::Caps::CACHE | synth::Caps::EXTENTS));
    assert!(!dev.caps().contains(synth::Caps::WRITE));
    assert_eq!(
        dev.write_at(&[1], 0).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    let bs = dev.block_size();
    assert_eq!((bs.minimum, bs.preferred), (1, MIB as u32));
    dev.cache(MIB - 1, 2).unwrap();
    assert_eq!(dev.stats().decodes, 2);
    let mut buf = [0u8; 2];
    dev.read_at(&mut buf, MIB - 1).unwrap();
    assert_eq!(dev.stats().decodes, 2);
    assert_eq!(&buf, &data[MIB as usize - 1..][..2]);
}

/// `xz -lvv --robot` lines starting with "block".
fn xz_blocks(path: &Path) -> Vec<String> {
    let out = Command::new("xz")
        .args(["-lvv", "--robot"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "xz -lvv");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("block\t"))
        .map(str::to_string)
        .collect()
}

#[test]
fn pack_makes_block_indexed_xz() {
    require_xz!("pack_makes_block_indexed_xz");
    let dir = tempfile::tempdir().unwrap();
    let data = make_data(5 * MIB + 1000, 91);
    let input = dir.path().join("disk.img");
    write(&input, &data);
    let output = dir.path().join("disk.img.xz");
    let opts = PackOptions {
        threads: 2,
        block_size: MIB,
        preset: 1,
        check: Check::Crc32,
    };
    let mut seen = Vec::new();
    let stats = pack(&input, &output, &opts, &mut |n| seen.push(n)).unwrap();
    assert_eq!(stats.input_bytes, data.len() as u64);
    assert_eq!(stats.blocks, 6);
    assert_eq!(
        stats.output_bytes,
        std::fs::metadata(&output).unwrap().len()
    );
    assert_eq!(seen.last(), Some(&(data.len() as u64)));
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let status = Command::new("xz").arg("-t").arg(&output).status().unwrap();
    assert!(status.success(), "xz -t");
    let blocks = xz_blocks(&output);
    assert_eq!(blocks.len(), 6, "{blocks:?}");
    assert!(blocks.iter().all(|l| l.contains("CRC32")), "{blocks:?}");
    assert!(xz_decompress(&output) == data);

    let dev = open(&output, &XzOptions::default());
    assert_eq!(dev.index().blocks().len(), 6);
    check_dev(&dev, &data, &block_starts(&dev));

    // Only the output is left: no temp file.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["disk.img", "disk.img.xz"]);
}

#[test]
fn pack_failures_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.xz");
    let err = pack(
        &dir.path().join("missing"),
        &output,
        &PackOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, XzError::File { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    // Input is a directory: reading it fails after the temp file exists.
    let err = pack(dir.path(), &output, &PackOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, XzError::File { .. }), "{err}");
    let bad = PackOptions {
        block_size: 0,
        ..PackOptions::default()
    };
    assert!(pack(dir.path(), &output, &bad, &mut |_| {}).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn hand_built_empty_stream_and_bad_index() {
    // No `xz` needed: a Stream with no Blocks, built from the spec.
    use super::stream::{encode_footer, encode_header};
    let index = |records: &[(u64, u64)], pad: u8| {
        let mut idx = vec![0u8];
        super::vli::encode(records.len() as u64, &mut idx);
        for &(u, c) in records {
            super::vli::encode(u, &mut idx);
            super::vli::encode(c, &mut idx);
        }
        while !idx.len().is_multiple_of(4) {
            idx.push(pad);
        }
        let crc = crc32fast::hash(&idx);
        idx.extend_from_slice(&crc.to_le_bytes());
        idx
    };
    let image = |idx: &[u8]| {
        let mut f = encode_header(Check::Crc64).to_vec();
        f.extend_from_slice(idx);
        f.extend_from_slice(&encode_footer(Check::Crc64, idx.len() as u64));
        f
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.xz");

    write(&path, &image(&index(&[], 0)));
    let ix = XzIndex::read(&*FileDev::open(&path)).unwrap();
    assert_eq!((ix.blocks().len(), ix.uncompressed_size()), (0, 0));

    // Nonzero Index Padding.
    write(&path, &image(&index(&[], 7)));
    let err = XzIndex::read(&*FileDev::open(&path)).unwrap_err();
    assert!(err.to_string().contains("Index Padding"), "{err}");

    // A Record whose Block would start before the file.
    write(&path, &image(&index(&[(1000, 5000)], 0)));
    let err = XzIndex::read(&*FileDev::open(&path)).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");

    // An Unpadded Size below the minimum of five.
    write(&path, &image(&index(&[(4, 10)], 0)));
    let err = XzIndex::read(&*FileDev::open(&path)).unwrap_err();
    assert!(err.to_string().contains("Unpadded Size"), "{err}");
}

// ---- hostile indexes and Block Headers ---------------------------------------------------------

/// A crafted `.xz` image in memory: `head` at offset 0, `tail` at the end,
/// zeros between. An Index may list millions of Blocks whose bytes are
/// never read: they cost nothing here.
#[derive(Debug)]
struct Crafted {
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    reads: AtomicU64,
    bytes: AtomicU64,
}

impl Crafted {
    fn new(head: Vec<u8>, gap: u64, tail: Vec<u8>) -> Arc<Crafted> {
        Arc::new(Crafted {
            size: head.len() as u64 + gap + tail.len() as u64,
            head,
            tail,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }
}

impl BlockDev for Crafted {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.fill(0);
        let tail_at = self.size - self.tail.len() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            if at < self.head.len() as u64 {
                *b = self.head[at as usize];
            } else if at >= tail_at {
                *b = self.tail[(at - tail_at) as usize];
            }
        }
        Ok(())
    }
}

/// An Index field (§4) listing `records` (Unpadded, Uncompressed Size).
fn index_field(records: impl ExactSizeIterator<Item = (u64, u64)>) -> Vec<u8> {
    let mut idx = vec![0u8];
    super::vli::encode(records.len() as u64, &mut idx);
    for (u, c) in records {
        super::vli::encode(u, &mut idx);
        super::vli::encode(c, &mut idx);
    }
    while !idx.len().is_multiple_of(4) {
        idx.push(0);
    }
    let crc = crc32fast::hash(&idx);
    idx.extend_from_slice(&crc.to_le_bytes());
    idx
}

/// One Stream whose Index lists `records` and whose Blocks are zeros:
/// (Stream Header, bytes of Blocks, Index + Stream Footer).
fn crafted_stream(
    records: impl ExactSizeIterator<Item = (u64, u64)> + Clone,
    check: Check,
) -> (Vec<u8>, u64, Vec<u8>) {
    let blocks: u64 = records.clone().map(|(u, _)| (u + 3) & !3).sum();
    let mut tail = index_field(records);
    let footer = super::stream::encode_footer(check, tail.len() as u64);
    tail.extend_from_slice(&footer);
    (super::stream::encode_header(check).to_vec(), blocks, tail)
}

/// Record `i` of the varied Indexes below: Unpadded Sizes 5 to 23 (every
/// Block Padding), Uncompressed Sizes 0 to 4 (empty Blocks among them).
fn varied(i: u64) -> (u64, u64) {
    (5 + i % 19, i % 5)
}

/// The index of a file listing a million Blocks (two bytes of Index
/// each) holds 16 bytes per Block, and gives back every size exactly.
#[test]
fn index_takes_16_bytes_per_block() {
    const N: u64 = 1_000_000;
    let (head, gap, tail) = crafted_stream((0..N as usize).map(|_| (5, 1)), Check::Crc32);
    assert_eq!(tail.len() as u64, 1 + 3 + 2 * N + 4 + 12);
    let src = Crafted::new(head, gap, tail);
    let index = XzIndex::read_with(&*src, 64 * MIB).unwrap();
    assert_eq!(index.block_count() as u64, N);
    assert_eq!(index.uncompressed_size(), N);
    let per_block = index.heap_bytes() as f64 / N as f64;
    assert!(
        index.heap_bytes() as u64 <= INDEX_BYTES_PER_BLOCK * N + 64,
        "{per_block:.1} bytes per Block"
    );
    // Parsed in windows: the Index is read about once, never held whole.
    assert!(
        src.bytes.load(Ordering::Relaxed) < 2 * N + (1 << 20),
        "{} bytes read",
        src.bytes.load(Ordering::Relaxed)
    );
    let b = index.block(123_456);
    assert_eq!(
        b,
        XzBlock {
            compressed_offset: 12 + 8 * 123_456,
            unpadded_size: 5,
            uncompressed_offset: 123_456,
            uncompressed_size: 1,
            check: Check::Crc32,
            stream: 0,
        }
    );
    assert_eq!(index.block_for(N - 1), Some(N as usize - 1));
    assert_eq!(index.block_for(N), None);
}

/// Several Streams of varied Records (every padding, empty Blocks, empty
/// Streams, Stream Padding): every Block comes back as listed, at the
/// cost of 16 bytes per Block and per Stream.
#[test]
fn compact_index_rebuilds_every_block_of_every_stream() {
    let counts = [5u64, 0, 1, 1000, 0, 37];
    let checks = [Check::Crc64, Check::None, Check::Sha256, Check::Crc32];
    let mut file = Vec::new();
    let mut expected = Vec::new();
    let mut uncompressed = 0;
    let mut i = 0;
    for (s, &n) in counts.iter().enumerate() {
        let check = checks[s % checks.len()];
        let records: Vec<_> = (i..i + n).map(varied).collect();
        i += n;
        let (head, gap, tail) = crafted_stream(records.iter().copied(), check);
        let mut at = file.len() as u64 + 12;
        file.extend(head);
        file.resize(file.len() + gap as usize, 0);
        file.extend(tail);
        file.resize(file.len() + 4 * (s % 3), 0); // Stream Padding (§2.2)
        for (u, c) in records {
            expected.push(XzBlock {
                compressed_offset: at,
                unpadded_size: u,
                uncompressed_offset: uncompressed,
                uncompressed_size: c,
                check,
                stream: s,
            });
            at += (u + 3) & !3;
            uncompressed += c;
        }
    }
    let src = Crafted::new(file, 0, Vec::new());
    let index = XzIndex::read(&*src).unwrap();
    assert_eq!(index.stream_count(), counts.len());
    assert_eq!(index.blocks().collect::<Vec<_>>(), expected);
    assert_eq!(index.uncompressed_size(), uncompressed);
    assert_eq!(index.largest_block(), 4);
    assert!(
        index.heap_bytes() as u64
            <= INDEX_BYTES_PER_BLOCK * expected.len() as u64 + 16 * counts.len() as u64,
        "{} bytes",
        index.heap_bytes()
    );
    // Every byte maps to the one non-empty Block holding it.
    for off in 0..uncompressed {
        let b = index.block(index.block_for(off).unwrap());
        assert!(
            b.uncompressed_offset <= off && off < b.uncompressed_end(),
            "{off}: {b:?}"
        );
    }
}

/// An Index listing more Blocks than the budget holds is refused from its
/// Number of Records (§4.2), before the Records are read or anything is
/// allocated for them, with a message naming both numbers.
#[test]
fn index_over_the_budget_is_refused_before_it_is_read() {
    const N: u64 = 1_000_000;
    let (head, gap, tail) = crafted_stream((0..N as usize).map(|_| (5, 0)), Check::Crc64);
    let src = Crafted::new(head, gap, tail);
    let err = XzIndex::read_with(&*src, MIB).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, XzError::IndexTooBig { blocks: N, .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("1000000 blocks") && msg.contains("1048576-byte index budget"),
        "{msg}"
    );
    assert!(msg.contains("--max-index"), "the fix: {msg}");
    // The footer's window and the first window of the Index: not 2 MB.
    assert!(src.bytes.load(Ordering::Relaxed) <= 2 * (256 << 10));

    // The same through XzDev::open and its option; the default holds it.
    let opts = XzOptions {
        max_index: MIB,
        ..XzOptions::default()
    };
    assert!(matches!(
        XzDev::open(src.clone(), &opts),
        Err(XzError::IndexTooBig { .. })
    ));
    assert_eq!(
        XzDev::open(src, &XzOptions::default())
            .unwrap()
            .index()
            .block_count() as u64,
        N
    );

    // Empty Streams count too: a file of nothing but them is no cheaper.
    let mut file = Vec::new();
    for _ in 0..1000 {
        let (head, _, tail) = crafted_stream(std::iter::empty(), Check::None);
        file.extend(head);
        file.extend(tail);
    }
    let src = Crafted::new(file, 0, Vec::new());
    let err = XzIndex::read_with(&*src, 100 * super::index::INDEX_BYTES_PER_STREAM).unwrap_err();
    assert!(
        matches!(err, XzError::IndexTooBig { streams: 101, .. }),
        "{err:?}"
    );
    assert_eq!(XzIndex::read(&*src).unwrap().stream_count(), 1000);
}

/// A Block Header (§3.1) with one LZMA2 filter (4 KiB dictionary) and,
/// if given, the Compressed and Uncompressed Sizes (§3.1.3, §3.1.4).
fn block_header(compressed: Option<u64>, uncompressed: Option<u64>) -> Vec<u8> {
    let mut h = vec![0u8, 0u8];
    if let Some(c) = compressed {
        h[1] |= 0x40;
        super::vli::encode(c, &mut h);
    }
    if let Some(u) = uncompressed {
        h[1] |= 0x80;
        super::vli::encode(u, &mut h);
    }
    // §3.1.5 Filter Flags: LZMA2 (0x21), one byte of properties.
    h.extend_from_slice(&[0x21, 0x01, 0x00]);
    while !(h.len() + 4).is_multiple_of(4) {
        h.push(0); // §3.1.6 Header Padding
    }
    h[0] = ((h.len() + 4) / 4 - 1) as u8;
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// A one-Block image (Check None) whose Index says the Block decodes to
/// `claimed` bytes: Block Header `header`, then an LZMA2 stream of one
/// 64 KiB uncompressed chunk of 0x55 and the end marker.
fn claiming_image(header: Vec<u8>, claimed: u64) -> Arc<Crafted> {
    let mut block = header;
    block.extend_from_slice(&[0x01, 0xFF, 0xFF]); // uncompressed chunk, dictionary reset
    block.extend(std::iter::repeat_n(0x55, 1 << 16));
    block.push(0x00); // end of LZMA2 data
    let unpadded = block.len() as u64;
    while !block.len().is_multiple_of(4) {
        block.push(0);
    }
    let (mut file, _, tail) = crafted_stream([(unpadded, claimed)].into_iter(), Check::None);
    file.extend(block);
    file.extend(tail);
    Crafted::new(file, 0, Vec::new())
}

/// Blocks allowed past `max_block` whose Index Record claims 4 GiB: the
/// Block Header is checked against the claim, and the output buffer grows
/// with what really decodes, so nothing near 4 GiB is ever allocated.
/// Run alone in a child process under `prlimit --as=1GiB` by the test
/// below (an allocation of the claimed size would fail there, and did:
/// "allocating 4294967296 bytes: Cannot allocate memory").
#[test]
#[ignore = "run by huge_block_claims_are_checked_before_allocating under an address-space limit"]
fn huge_block_claims_child() {
    const CLAIM: u64 = 4 << 30;
    let opts = XzOptions {
        allow_big_blocks: true,
        ..XzOptions::default()
    };
    let read = |src: Arc<Crafted>| {
        let dev = XzDev::open(src, &opts).unwrap();
        assert_eq!(dev.size(), CLAIM);
        let mut buf = vec![0u8; 4096];
        let err = dev.read_at(&mut buf, 0).unwrap_err();
        assert_eq!(dev.stats().decode_failures, 1);
        err.to_string()
    };
    // The header says how big the Block is, and it is not the Index's claim.
    let msg = read(claiming_image(block_header(None, Some(65536)), CLAIM));
    assert!(
        msg.contains("the Block Header says 65536 uncompressed bytes, the Index 4294967296"),
        "{msg}"
    );
    // The header's Compressed Size contradicts the Index's Unpadded Size.
    let msg = read(claiming_image(block_header(Some(7), None), CLAIM));
    assert!(
        msg.contains("contradict the Index's Unpadded Size"),
        "{msg}"
    );
    // The header says nothing: the data ends after 64 KiB.
    let msg = read(claiming_image(block_header(None, None), CLAIM));
    assert!(msg.contains("decoding failed"), "{msg}");
    // The same Block with an honest Index decodes, through the same path.
    let dev = XzDev::open(
        claiming_image(block_header(None, Some(65536)), 65536),
        &XzOptions {
            max_block: 4096,
            ..opts
        },
    )
    .unwrap();
    let mut buf = vec![0u8; 65536];
    dev.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x55));
    println!("CHILD OK");
}

#[test]
fn huge_block_claims_are_checked_before_allocating() {
    let prlimit = Command::new("prlimit").arg("--version").output();
    if !prlimit.is_ok_and(|o| o.status.success()) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("prlimit (util-linux) is missing");
        }
        eprintln!("SKIPPED huge_block_claims_are_checked_before_allocating: no prlimit");
        return;
    }
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "xz::tests::huge_block_claims_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        // Few malloc arenas: each reserves 64 MiB of address space.
        .env("MALLOC_ARENA_MAX", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Block claiming more than [`dev::HARD_MAX_BLOCK`] is refused at open
/// even when `max_block` is set above it (it used to slip past the
/// big-block check, and be allocated whole on the first read).
#[test]
fn blocks_past_the_hard_limit_are_refused_whatever_max_block_says() {
    let src = claiming_image(block_header(None, None), dev::HARD_MAX_BLOCK + 4096);
    for allow_big_blocks in [false, true] {
        let opts = XzOptions {
            max_block: u64::MAX,
            allow_big_blocks,
            ..XzOptions::default()
        };
        let err = XzDev::open(src.clone(), &opts).unwrap_err();
        assert!(
            matches!(
                err,
                XzError::BlockTooBig {
                    max_block: dev::HARD_MAX_BLOCK,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

/// The slice parsers of [`parse`] on damaged and random input: an error
/// or a value, never a panic (the fuzz targets go further).
#[test]
fn parsers_are_total_on_mutated_input() {
    let mut rng = Rng(77);
    let index = index_field((0..50usize).map(|i| varied(i as u64)));
    let footer = super::stream::encode_footer(Check::Crc64, index.len() as u64);
    let header = block_header(Some(100), Some(1000));
    let info = XzBlock {
        compressed_offset: 12,
        unpadded_size: header.len() as u64 + 100,
        uncompressed_offset: 0,
        uncompressed_size: 1000,
        check: Check::None,
        stream: 0,
    };
    assert_eq!(parse::block_header(&header, &info).unwrap(), header.len());
    let mut count = 0;
    assert_eq!(
        parse::parse_index(&index, 0, &mut |_| count += 1)
            .unwrap()
            .records,
        50
    );
    for round in 0..20_000u64 {
        let mutate = |bytes: &[u8], rng: &mut Rng| {
            let mut v = bytes.to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % v.len() as u64) as usize;
                v[at] = rng.next() as u8;
            }
            // Truncated or extended, now and then.
            match rng.next() % 8 {
                0 => v.truncate((rng.next() % v.len() as u64) as usize),
                1 => v.extend((0..rng.next() % 40).map(|_| rng.next() as u8)),
                _ => {}
            }
            v
        };
        let idx = mutate(&index, &mut rng);
        let _ = parse::parse_index(&idx, u64::MAX - round, &mut |_| {});
        let _ = parse::vli(&idx);
        let f = mutate(&footer, &mut rng);
        if let Ok(f) = <[u8; 12]>::try_from(&f[..]) {
            if let Ok(footer) = parse::stream_footer(&f, u64::MAX) {
                let _ = parse::stream_header(&f, u64::MAX, &footer);
            }
        }
        let h = mutate(&header, &mut rng);
        let info = XzBlock {
            unpadded_size: rng.next() >> (rng.next() % 64),
            uncompressed_size: rng.next() >> (rng.next() % 64),
            check: [Check::None, Check::Crc32, Check::Crc64, Check::Sha256][round as usize % 4],
            ..info
        };
        let _ = parse::block_header(&h, &info);
    }
}
