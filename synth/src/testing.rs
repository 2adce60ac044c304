//! The conformance check every [`BlockDev`] runs in its tests.
//!
//! `check_dev(&dev, &expected, &boundaries)` compares the device with a
//! flattened reference: random reads, reads straddling each boundary,
//! zero-copy chunks, extents tiling `[0, size)` exactly with every
//! zero/hole extent really reading zeros, and out-of-range reads failing.

use crate::dev::{BlockDev, ReadChunk};
use crate::error::ErrorKind;
use crate::extent::ExtentList;

/// SplitMix64: a tiny deterministic generator, so failures reproduce (and
/// test data is the same every run).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn check_read(dev: &dyn BlockDev, expected: &[u8], offset: u64, len: u64) {
    let mut buf = vec![0x5Au8; len as usize];
    dev.read_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {len}@{offset}: {e:#}"));
    let want = &expected[offset as usize..(offset + len) as usize];
    if buf != want {
        let first = buf.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "read {len}@{offset}: first difference at device offset {}",
            offset + first as u64
        );
    }
    let mut chunks = Vec::new();
    if dev
        .read_chunks(offset, len, &mut chunks)
        .unwrap_or_else(|e| panic!("chunks {len}@{offset}: {e:#}"))
    {
        let mut flat = Vec::with_capacity(len as usize);
        for c in &chunks {
            match c {
                ReadChunk::Zero(n) => flat.resize(flat.len() + *n as usize, 0),
                ReadChunk::Bytes(b) => flat.extend_from_slice(b),
                ReadChunk::File {
                    file,
                    offset,
                    len,
                    check,
                } => {
                    let mut v = vec![0u8; *len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&**file, &mut v, *offset).unwrap();
                    if let Some(c) = check {
                        c.verify(file).expect("host file unchanged");
                    }
                    flat.extend_from_slice(&v);
                }
            }
        }
        assert_eq!(
            flat.len() as u64,
            len,
            "chunks {len}@{offset}: wrong total length"
        );
        assert!(
            flat == want,
            "chunks {len}@{offset}: bytes differ from the reference"
        );
    }
}

/// Check `dev` against `expected` (its whole content). `boundaries` lists
/// offsets where the device switches backing (region starts, page edges);
/// reads straddling each are checked.
pub fn check_dev(dev: &dyn BlockDev, expected: &[u8], boundaries: &[u64]) {
    let size = dev.size();
    assert_eq!(size, expected.len() as u64, "device size");

    // Reads straddling every boundary, and the very ends.
    for &b in boundaries.iter().chain([0, size].iter()) {
        for (back, fwd) in [(1u64, 1u64), (0, 1), (1, 0), (7, 9), (513, 4096)] {
            let start = b.saturating_sub(back);
            let end = (b + fwd).min(size);
            if end > start {
                check_read(dev, expected, start, end - start);
            }
        }
    }

    // Random reads, biased towards small ones.
    let mut rng = Rng(size ^ 0xD15C_5EED);
    for _ in 0..300 {
        if size == 0 {
            break;
        }
        let offset = rng.below(size);
        let max = (size - offset).min(if rng.below(4) == 0 { 1 << 20 } else { 9000 });
        let len = 1 + rng.below(max);
        check_read(dev, expected, offset, len);
    }
    if size > 0 && size <= 64 << 20 {
        check_read(dev, expected, 0, size);
    }

    // Zero-length reads are harmless.
    dev.read_at(&mut [], size)
        .expect("zero-length read at the end");

    // Out of range reads fail cleanly.
    let mut buf = [0u8; 2];
    let err = dev
        .read_at(&mut buf, size.saturating_sub(1))
        .expect_err("read past the end must fail");
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    let err = dev
        .read_at(&mut buf, u64::MAX - 1)
        .expect_err("read at u64::MAX must fail");
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);

    // Extents tile [0, size) exactly, from any starting point, under every
    // entry limit (1 is NBD's REQ_ONE): each zero or hole extent reads as
    // zeros, whole, both in the reference and from the device itself.
    let mut starts = vec![0, size / 3, size.saturating_sub(1)];
    starts.extend((0..4).map(|_| rng.below(size.max(1))));
    // From every backing switch too (at most 64 of them): a walk that starts
    // in a hole and runs into data is where a full list used to lie.
    let step = boundaries.len().div_ceil(64).max(1);
    starts.extend(boundaries.iter().step_by(step).filter(|&&b| b < size));
    for limit in [1, 2, ExtentList::DEFAULT_LIMIT] {
        for &start in &starts {
            check_extent_walk(dev, expected, start, limit);
        }
    }
}

/// Walk `dev` from `start` to its end asking for at most `limit` extents
/// at a time, checking that every zero or hole extent really reads zeros.
fn check_extent_walk(dev: &dyn BlockDev, expected: &[u8], start: u64, limit: usize) {
    let size = dev.size();
    let mut covered = start;
    let mut buf = Vec::new();
    while covered < size {
        let mut list = ExtentList::with_limit(covered, limit);
        dev.extents(covered, size - covered, &mut list)
            .unwrap_or_else(|e| panic!("extents at {covered} (limit {limit}): {e:#}"));
        assert_eq!(list.start(), covered);
        assert!(
            list.covered() > 0,
            "extents at {covered} (limit {limit}) made no progress"
        );
        assert!(
            list.end() <= size,
            "extents at {covered} (limit {limit}) run past the end"
        );
        assert!(
            list.as_slice().len() <= limit,
            "extents at {covered}: {} entries over the limit {limit}",
            list.as_slice().len()
        );
        for (off, e) in list.iter_offsets() {
            assert!(e.len > 0);
            if e.kind.reads_zero() {
                let want = &expected[off as usize..(off + e.len) as usize];
                if let Some(i) = want.iter().position(|&b| b != 0) {
                    panic!(
                        "extent {off}+{} ({:?}, limit {limit}, walk from {start}) says zero \
                         but byte {} holds data",
                        e.len,
                        e.kind,
                        off + i as u64
                    );
                }
                // The device agrees (in pieces: an extent may be huge).
                let mut at = off;
                while at < off + e.len {
                    let n = (off + e.len - at).min(1 << 20);
                    buf.resize(n as usize, 0x5A);
                    dev.read_at(&mut buf, at)
                        .unwrap_or_else(|err| panic!("read {n}@{at}: {err:#}"));
                    assert!(
                        buf.iter().all(|&b| b == 0),
                        "extent {off}+{} says zero but the device reads data at {at}+{n}",
                        e.len
                    );
                    at += n;
                }
            }
        }
        covered = list.end();
    }
    assert_eq!(covered, size);
}
