//! Layers that keep copies of the bytes beneath them (the cache's slots,
//! read-ahead windows): reads go through the copies, and every change drops
//! the copies it touches both before it goes down (no read that starts
//! after it sees old bytes) and after (a fetch that raced it, which read
//! old bytes beneath, is not kept).

use std::fmt;
use std::sync::Arc;

use synth::{BlockDev, Caps, Filter, ReadChunk, Result, ZeroFlags};

/// Something that holds copies of a device's bytes.
pub(crate) trait Copies: Send + Sync + fmt::Debug {
    /// Fill `buf` with the bytes at `offset`, from the copies or through
    /// `next`.
    fn read(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Drop the copies of `len` bytes at `offset`; fetches in flight
    /// discard what they read.
    fn invalidate(&self, offset: u64, len: u64);
    /// A client's hint that a range will be read soon.
    fn hint(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        next.cache(offset, len)
    }
    /// The capabilities over a device with `next`.
    fn caps(&self, next: Caps) -> Caps {
        next
    }
}

/// A client's view through shared copies.
#[derive(Debug)]
pub(crate) struct Copying<C>(pub(crate) Arc<C>);

impl<C: Copies> Copying<C> {
    /// Run a change of `len` bytes at `offset` with the copies dropped
    /// around it (see the module docs for why both sides).
    fn changing(&self, offset: u64, len: u64, change: impl FnOnce() -> Result<()>) -> Result<()> {
        self.0.invalidate(offset, len);
        let r = change();
        self.0.invalidate(offset, len);
        r
    }
}

impl<C: Copies> Filter for Copying<C> {
    fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read(next, buf, offset)
    }
    fn read_chunks(
        &self,
        _next: &dyn BlockDev,
        _offset: u64,
        _len: u64,
        _out: &mut Vec<ReadChunk>,
    ) -> Result<bool> {
        // Reads must go through the copies (a read-ahead stream is seen
        // only there), and a copy may be reused before an exporter would
        // send a view of it: the exporter reads into its own buffer.
        Ok(false)
    }
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        self.changing(offset, buf.len() as u64, || next.write_at(buf, offset))
    }
    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        self.changing(offset, len, || next.write_zeroes(offset, len, flags))
    }
    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        self.changing(offset, len, || next.trim(offset, len))
    }
    fn cache(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        self.0.hint(next, offset, len)
    }
    fn caps(&self, next: &dyn BlockDev) -> Caps {
        self.0.caps(next.caps())
    }
}
