//! Windows: a range of another device, shifted to start at zero, as a layer.

use std::sync::Arc;

use crate::dev::{BlockDev, Named, ReadChunk, ZeroFlags};
use crate::error::{check_range, Error, ErrorKind, Result};
use crate::extent::ExtentList;
use crate::filter::{Filter, Layer};

/// `len` bytes of the device beneath starting at `offset`, seen as a
/// device of its own (a partition, a component of a composed disk).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    offset: u64,
    len: u64,
}

impl Window {
    /// The window `[offset, offset + len)` of a device of `size` bytes, or
    /// why it does not fit.
    pub fn new(offset: u64, len: u64, size: u64) -> Result<Self> {
        check_range(offset, len, size).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("a window of {len} bytes at {offset} does not fit a {size}-byte device"),
            )
        })?;
        Ok(Window { offset, len })
    }

    /// Where the window starts on the device beneath.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn map(&self, offset: u64, len: u64) -> Result<u64> {
        check_range(offset, len, self.len)?;
        Ok(self.offset + offset)
    }
}

/// A window of another device: [`Window`] as a layer.
pub type SliceDev = Layer<Window>;

impl Layer<Window> {
    /// The window `[offset, offset + len)` of `inner`.
    pub fn window(inner: Arc<dyn BlockDev>, offset: u64, len: u64) -> Result<Self> {
        let w = Window::new(offset, len, inner.size())?;
        Ok(Layer::new(w, inner))
    }

    /// Everything of `inner` from `offset` on.
    pub fn from_offset(inner: Arc<dyn BlockDev>, offset: u64) -> Result<Self> {
        let len = inner.size().saturating_sub(offset);
        Self::window(inner, offset, len)
    }
}

impl Filter for Window {
    fn size(&self, _next: &dyn BlockDev) -> u64 {
        self.len
    }
    fn describe(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<Named>,
    ) -> Result<()> {
        let at = self.map(offset, len)?;
        let mark = out.len();
        next.describe(at, len, out)?;
        for n in &mut out[mark..] {
            n.offset = n.offset.saturating_sub(self.offset);
        }
        Ok(())
    }
    fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        let at = self.map(offset, buf.len() as u64)?;
        next.read_at(buf, at)
    }
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        let at = self.map(offset, buf.len() as u64)?;
        next.write_at(buf, at)
    }
    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        let at = self.map(offset, len)?;
        next.trim(at, len)
    }
    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        let at = self.map(offset, len)?;
        next.write_zeroes(at, len, flags)
    }
    fn cache(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        let at = self.map(offset, len)?;
        next.cache(at, len)
    }
    fn extents(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut ExtentList,
    ) -> Result<()> {
        let at = self.map(offset, len)?;
        let mut inner = ExtentList::new(at);
        next.extents(at, len, &mut inner)?;
        inner.truncate_to(at + len);
        for e in inner.as_slice() {
            out.push(e.len, e.kind);
        }
        Ok(())
    }
    fn read_chunks(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadChunk>,
    ) -> Result<bool> {
        let at = self.map(offset, len)?;
        next.read_chunks(at, len, out)
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
        let slice = SliceDev::window(dev, 4_000, 12_000).unwrap();
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
            SliceDev::window(dev, 24_000, 2_000).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
