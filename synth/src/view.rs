//! Slice views: a window of another device, shifted to start at zero.

use std::sync::Arc;

use crate::dev::{BlockDev, BlockSize, Caps, ReadChunk, ZeroFlags};
use crate::error::{check_range, Error, ErrorKind, Result};
use crate::extent::ExtentList;

/// `len` bytes of `inner` starting at `offset`, seen as a device of its own
/// (a partition, a component of a composed disk).
#[derive(Debug, Clone)]
pub struct SliceDev {
    inner: Arc<dyn BlockDev>,
    offset: u64,
    len: u64,
}

impl SliceDev {
    /// The window `[offset, offset + len)` of `inner`.
    pub fn new(inner: Arc<dyn BlockDev>, offset: u64, len: u64) -> Result<Self> {
        check_range(offset, len, inner.size()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "slice of {len} bytes at {offset} does not fit a {}-byte device",
                    inner.size()
                ),
            )
        })?;
        Ok(SliceDev { inner, offset, len })
    }

    /// Everything of `inner` from `offset` on.
    pub fn from_offset(inner: Arc<dyn BlockDev>, offset: u64) -> Result<Self> {
        let len = inner.size().saturating_sub(offset);
        Self::new(inner, offset, len)
    }

    fn map(&self, offset: u64, len: u64) -> Result<u64> {
        check_range(offset, len, self.len)?;
        Ok(self.offset + offset)
    }
}

impl BlockDev for SliceDev {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let at = self.map(offset, buf.len() as u64)?;
        self.inner.read_at(buf, at)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let at = self.map(offset, buf.len() as u64)?;
        self.inner.write_at(buf, at)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        let at = self.map(offset, len)?;
        self.inner.trim(at, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        let at = self.map(offset, len)?;
        self.inner.write_zeroes(at, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        let at = self.map(offset, len)?;
        self.inner.cache(at, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        let at = self.map(offset, len)?;
        let mut inner = ExtentList::new(at);
        self.inner.extents(at, len, &mut inner)?;
        inner.truncate_to(at + len);
        for e in inner.as_slice() {
            out.push(e.len, e.kind);
        }
        Ok(())
    }
    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        let at = self.map(offset, len)?;
        self.inner.read_chunks(at, len, out)
    }
    fn caps(&self) -> Caps {
        self.inner.caps()
    }
    fn block_size(&self) -> BlockSize {
        self.inner.block_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Backing, RegionMapBuilder};
    use crate::testing::check_dev;
    use crate::{CowOverlay, OverlayOptions, ZeroFlags};

    fn base() -> (Arc<dyn BlockDev>, Vec<u8>) {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut b = RegionMapBuilder::new();
        b.push("zeros", 5_000, Backing::Zero).unwrap();
        b.push_bytes("data", data.clone()).unwrap();
        let mut expected = vec![0u8; 5_000];
        expected.extend_from_slice(&data);
        (Arc::new(b.finish()), expected)
    }

    #[test]
    fn slice_passes_conformance() {
        let (dev, expected) = base();
        let slice = SliceDev::new(dev, 4_000, 12_000).unwrap();
        check_dev(&slice, &expected[4_000..16_000], &[1_000]);
    }

    #[test]
    fn slice_writes_land_at_the_shifted_offset() {
        let (dev, mut expected) = base();
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        let slice = SliceDev::from_offset(ov.clone(), 10_000).unwrap();
        slice.write_at(b"abc", 5).unwrap();
        slice.write_zeroes(100, 50, ZeroFlags::default()).unwrap();
        expected[10_005..10_008].copy_from_slice(b"abc");
        expected[10_100..10_150].fill(0);
        check_dev(&*ov, &expected, &[10_000]);
        assert_eq!(
            slice.write_at(b"x", 15_000).unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
    }

    #[test]
    fn slice_outside_the_device_is_refused() {
        let (dev, _) = base();
        assert_eq!(
            SliceDev::new(dev, 24_000, 2_000).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
