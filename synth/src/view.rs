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
