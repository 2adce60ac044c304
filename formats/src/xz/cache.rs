//! Decoded Blocks shared by every reader of one [`super::XzDev`].
//!
//! A [`crate::cache::SharedCache`] keyed by Block number (byte budget, LRU,
//! single flight). Blocks found to decode to all zeros keep no buffer at
//! all: a flag per Block remembers them for good (they read as zeros and
//! are holes in `extents`).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

pub(super) use crate::cache::Failure;
use crate::cache::{Counters, SharedCache, Weigh};

/// A decoded Block.
#[derive(Debug, Clone)]
pub(super) enum Decoded {
    /// Every byte is zero.
    Zero,
    /// The bytes (exactly the Block's Uncompressed Size).
    Data(Bytes),
}

impl Weigh for Decoded {
    fn weight(&self) -> u64 {
        match self {
            Decoded::Zero => 0,
            Decoded::Data(d) => d.len() as u64,
        }
    }
}

/// A snapshot of what the cache holds.
pub(super) struct Usage {
    pub bytes: u64,
    pub peak: u64,
    pub blocks: usize,
    pub zero_blocks: usize,
}

#[derive(Debug)]
pub(super) struct BlockCache {
    cache: SharedCache<usize, Decoded>,
    /// One bit per Block: known to decode to zeros. A bit, not a byte:
    /// the index itself takes 16 bytes per Block and a crafted one lists
    /// millions.
    zero: Vec<AtomicU64>,
}

/// Whether `data` is all zeros (4 KiB at a time, so the OR vectorizes).
pub(crate) fn all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

impl BlockCache {
    /// A cache of at most `budget` bytes for `blocks` Blocks.
    pub fn new(budget: u64, blocks: usize) -> Self {
        BlockCache {
            cache: SharedCache::new(budget),
            zero: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The counters (decodes, hits, waits, evictions, failures).
    pub fn counters(&self) -> &Counters {
        &self.cache.counters
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.cache.budget()
    }

    /// Whether Block `block` is known to decode to zeros.
    pub fn is_zero(&self, block: usize) -> bool {
        self.zero
            .get(block / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (block % 64)) != 0)
    }

    fn set_zero(&self, block: usize) {
        if let Some(w) = self.zero.get(block / 64) {
            w.fetch_or(1 << (block % 64), Ordering::Relaxed);
        }
    }

    /// Whether Block `block` is cached, being decoded, or known zero (so a
    /// read-ahead of it would be wasted).
    pub fn is_present(&self, block: usize) -> bool {
        self.is_zero(block) || self.cache.contains(block)
    }

    /// Whether a decode of `cost` bytes could start now without waiting for
    /// others to finish (cached Blocks can always be evicted).
    pub fn has_room(&self, cost: u64) -> bool {
        self.cache.has_room(cost)
    }

    /// Block `block`: from the cache, from a decode another thread is
    /// running, or decoded here by `decode` within a reservation of `cost`
    /// bytes.
    pub fn get(
        &self,
        block: usize,
        cost: u64,
        decode: impl FnOnce() -> Result<Decoded, Failure>,
    ) -> Result<Decoded, Failure> {
        if self.is_zero(block) {
            self.cache.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Decoded::Zero);
        }
        // A zero Block sets its flag (under the cache's lock, before the
        // waiters wake) instead of taking a slot.
        self.cache.get(block, cost, decode, |d| match d {
            Decoded::Zero => {
                self.set_zero(block);
                false
            }
            Decoded::Data(_) => true,
        })
    }

    /// What the cache holds now.
    pub fn usage(&self) -> Usage {
        let u = self.cache.usage();
        Usage {
            bytes: u.bytes,
            peak: u.peak,
            blocks: u.entries,
            zero_blocks: self
                .zero
                .iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
                .sum(),
        }
    }
}
