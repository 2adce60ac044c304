//! qcow2 images from the fuzzer: the header, extensions and feature checks, the L1 table, L2
//! entries (standard, extended, compressed) and the deflate/zstd decoders, through
//! `QcowDev::open` and reads of a few ranges.
//!
//! Input: the whole image file. An image naming a backing file gets a small backing device
//! (so unallocated clusters read through it).

use std::sync::Arc;

use formats::qcow2::{QcowDev, QcowError, QcowOptions};
use synth::{BlockDev, ExtentList, RegionMap, RegionMapBuilder};

fn bytes(name: &str, data: Vec<u8>) -> RegionMap {
    let mut b = RegionMapBuilder::new();
    b.push_bytes(name, data).expect("bytes as a region");
    b.finish()
}

/// Open the image and read from it. Errors are expected; panics are bugs.
pub fn run(input: &[u8]) {
    let _ = formats::qcow2::parse_first_cluster(input);
    let file: Arc<dyn BlockDev> = Arc::new(bytes("qcow2 file", input.to_vec()));
    // Small budgets: memory must stay bounded whatever the header says.
    let mut opts = QcowOptions {
        cache_bytes: 4 << 20,
        backing: None,
        max_l1: 1 << 20,
    };
    let dev = match QcowDev::open(file.clone(), &opts) {
        Ok(dev) => dev,
        Err(QcowError::BackingNeeded { .. }) => {
            opts.backing = Some(Arc::new(bytes("backing", vec![0x5A; 96 << 10])));
            match QcowDev::open(file, &opts) {
                Ok(dev) => dev,
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    let _ = (dev.info(), dev.stats(), dev.block_size());
    let size = dev.size();
    let mut extents = ExtentList::with_limit(0, 64);
    let _ = dev.extents(0, size.min(1 << 30), &mut extents);
    // The start, the end, the middle, and all of it when small.
    let mut buf = vec![0u8; size.min(256 << 10) as usize];
    let _ = dev.read_at(&mut buf, 0);
    let tail = size.min(4096);
    let mut buf = vec![0u8; tail as usize];
    let _ = dev.read_at(&mut buf, size - tail);
    let mut one = [0u8; 1];
    if size > 0 {
        let _ = dev.read_at(&mut one, size / 2);
        let mut mid = ExtentList::new(size / 2);
        let _ = dev.extents(size / 2, (size - size / 2).min(1 << 20), &mut mid);
    }
    if size <= 1 << 20 {
        let mut all = vec![0u8; size as usize];
        let _ = dev.read_at(&mut all, 0);
    }
}
