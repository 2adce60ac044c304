//! `.xz` files from the fuzzer: the Stream Header/Footer, Index and Block Header parsers and
//! the Block decoder, through `XzIndex::read` and an `XzDev` reading a few ranges.
//!
//! Input: the whole `.xz` file.

use std::sync::Arc;

use formats::xz::{XzDev, XzIndex, XzOptions};
use synth::{BlockDev, ExtentList, RegionMap, RegionMapBuilder};

/// Largest Block the device accepts here: decoding is all the work, keep it bounded.
pub const MAX_BLOCK: u64 = 4 << 20;

/// The file as a device.
pub fn file(input: &[u8]) -> RegionMap {
    let mut b = RegionMapBuilder::new();
    b.push_bytes("xz file", input.to_vec())
        .expect("bytes as a region");
    b.finish()
}

/// Parse the index, open the device and read from it. Errors are expected; panics are bugs.
pub fn run(input: &[u8]) {
    let src = file(input);
    let Ok(index) = XzIndex::read(&src) else {
        return;
    };
    // Everything the index answers must be consistent with itself.
    let size = index.uncompressed_size();
    let _ = (
        index.compressed_size(),
        index.stream_count(),
        index.largest_block(),
    );
    for probe in [0, size / 2, size.saturating_sub(1), size, u64::MAX] {
        if let Some(i) = index.block_for(probe) {
            let b = index.block(i);
            assert!(
                b.uncompressed_offset <= probe && probe < b.uncompressed_end(),
                "block_for({probe}) gave block {i} {b:?}"
            );
        }
    }

    let opts = XzOptions {
        cache_bytes: 16 << 20,
        max_block: MAX_BLOCK,
        allow_big_blocks: false,
        readahead: false,
        max_index: formats::xz::DEFAULT_MAX_INDEX,
    };
    let Ok(dev) = XzDev::open(Arc::new(src), &opts) else {
        return;
    };
    let size = dev.size();
    let _ = dev.block_size();
    let mut extents = ExtentList::with_limit(0, 64);
    let _ = dev.extents(0, size, &mut extents);
    // The start, the end, the middle, and all of it when small.
    let mut buf = vec![0u8; size.min(64 << 10) as usize];
    let _ = dev.read_at(&mut buf, 0);
    let tail = size.min(4096);
    let mut buf = vec![0u8; tail as usize];
    let _ = dev.read_at(&mut buf, size - tail);
    let mut one = [0u8; 1];
    if size > 0 {
        let _ = dev.read_at(&mut one, size / 2);
    }
    let mut chunks = Vec::new();
    let _ = dev.read_chunks(0, size.min(MAX_BLOCK), &mut chunks);
    let _ = dev.cache(0, size);
    if size <= 1 << 20 {
        let mut all = vec![0u8; size as usize];
        let _ = dev.read_at(&mut all, 0);
    }
}
