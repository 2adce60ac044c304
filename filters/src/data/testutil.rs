//! Devices the data filters' tests run over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use synth::{
    Backing, BlockDev, Caps, CowOverlay, ExtentList, OverlayOptions, RegionMapBuilder, Result,
};

use crate::Below;

/// 5000 bytes of zeros (a hole), then 20000 bytes of data: a device with
/// two extents, and the same bytes flat.
pub(crate) fn base() -> (Arc<dyn BlockDev>, Vec<u8>) {
    sized(5_000, 20_000)
}

/// `zeros` bytes of hole then `data` bytes of a pattern.
pub(crate) fn sized(zeros: u64, data: usize) -> (Arc<dyn BlockDev>, Vec<u8>) {
    let bytes: Vec<u8> = (0..data as u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut b = RegionMapBuilder::new();
    if zeros > 0 {
        b.push("zeros", zeros, Backing::Zero).unwrap();
    }
    if data > 0 {
        b.push_bytes("data", bytes.clone()).unwrap();
    }
    let mut expected = vec![0u8; zeros as usize];
    expected.extend_from_slice(&bytes);
    (Arc::new(b.finish()), expected)
}

/// `base()` under a writable overlay (writes land in memory).
pub(crate) fn writable() -> (Arc<dyn BlockDev>, Vec<u8>) {
    let (dev, expected) = base();
    let ov: Arc<dyn BlockDev> = Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
    (ov, expected)
}

/// What a filter is built over, for a shared device.
pub(crate) fn below(dev: &Arc<dyn BlockDev>) -> Below {
    Below {
        size: dev.size(),
        caps: dev.caps() | Caps::MULTI_CONN,
        block_size: dev.block_size(),
        shared: Some(dev.clone()),
    }
}

/// A device that counts the reads (and bytes) that reach it: what a cache
/// or read-ahead must save.
#[derive(Debug)]
pub(crate) struct Counting {
    pub(crate) inner: Arc<dyn BlockDev>,
    pub(crate) reads: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

impl Counting {
    pub(crate) fn new(inner: Arc<dyn BlockDev>) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

impl BlockDev for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: synth::ZeroFlags) -> Result<()> {
        self.inner.write_zeroes(offset, len, flags)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        self.inner.extents(offset, len, out)
    }
    fn caps(&self) -> Caps {
        self.inner.caps()
    }
}

/// A device whose reads fail where they touch `[bad.0, bad.1)` (a bad
/// sector, an origin that fails one range).
#[derive(Debug)]
pub(crate) struct BadRange {
    pub(crate) inner: Arc<dyn BlockDev>,
    pub(crate) bad: (u64, u64),
}

impl BlockDev for BadRange {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        if offset < self.bad.1 && self.bad.0 < end {
            return Err(synth::Error::new(synth::ErrorKind::Io, "bad range").at(offset));
        }
        self.inner.read_at(buf, offset)
    }
}

/// Writers and readers racing over `layer` (whose device beneath is
/// writable): each writer owns some blocks of `block` bytes and, after
/// every write returns, must read back what it wrote, however many
/// readers are fetching (and caching) the same bytes meanwhile.
pub(crate) fn race_writes_and_reads(layer: &Arc<dyn BlockDev>, block: u64, blocks: u64) {
    use std::sync::atomic::AtomicBool;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for r in 0..3u64 {
            let (layer, stop) = (layer.clone(), &stop);
            s.spawn(move || {
                // Sequential readers (each from its own start, wrapping):
                // what starts read-ahead windows and fills caches.
                let len = block / 2 + 1000;
                let room = block * blocks;
                let mut at = r * room / 3;
                let mut buf = vec![0u8; len as usize];
                while !stop.load(Ordering::Relaxed) {
                    if at + len > room {
                        at = 0;
                    }
                    layer.read_at(&mut buf, at).unwrap();
                    at += len;
                }
            });
        }
        // Readers stop when the writers are done, or when one fails (a
        // panic must fail the test, not leave readers spinning forever).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let layer = layer.clone();
                s.spawn(move || {
                    for round in 1..=40u8 {
                        for b in (w..blocks).step_by(2) {
                            let fill = round.wrapping_mul(2).wrapping_add(w as u8);
                            let at = b * block + 100;
                            layer.write_at(&vec![fill; 300], at).unwrap();
                            let mut got = vec![0u8; 300];
                            layer.read_at(&mut got, at).unwrap();
                            assert!(
                                got.iter().all(|&x| x == fill),
                                "block {b} round {round}: a read after the write returned \
                                 old bytes"
                            );
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
    });
}

/// A writable device whose reads pause after reading: what they return
/// may be overwritten before they return it, the window in which a cache
/// could keep old bytes.
#[derive(Debug)]
pub(crate) struct SlowRw(pub(crate) Arc<dyn BlockDev>);

impl BlockDev for SlowRw {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let r = self.0.read_at(buf, offset);
        std::thread::sleep(std::time::Duration::from_micros(300));
        r
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.0.write_at(buf, offset)
    }
    fn caps(&self) -> Caps {
        self.0.caps()
    }
}
