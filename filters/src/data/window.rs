//! `offset` and `truncate`: the disk seen through a window, or resized.
//!
//! `offset:OFF[,len=LEN]` is synth's [`Window`] as a layer: the bytes
//! `[OFF, OFF+LEN)` of the device beneath, shifted to start at zero (what
//! nbdkit's offset filter does).
//!
//! `truncate` changes the size, like nbdkit's truncate filter: shrinking
//! hides the tail; growing appends bytes that read as zeros and are holes
//! in the extents. Those bytes exist nowhere, so a write there can only
//! succeed when it writes zeros (which they already are); anything else
//! fails with "no space" rather than being silently dropped, since a
//! client must never believe data is stored that is not. `round-up=N`
//! is the usual reason to grow: a client (qemu with 4 KiB sectors, a
//! guest's block layer) that cannot address a ragged tail.

use std::sync::Arc;

use synth::{
    check_range, BlockDev, Client, Error, ErrorKind, ExtentKind, ExtentList, Filter, Layer,
    LayerFactory, ReadChunk, Result, Window, ZeroFlags,
};

use crate::{Below, FilterArgs, FilterError};

/// Makes `offset` layers.
#[derive(Debug)]
pub struct OffsetFactory {
    offset: u64,
    /// `None`: to the end of the device beneath.
    len: Option<u64>,
}

impl OffsetFactory {
    /// The window of `len` bytes (`None`: the rest) from `offset`.
    pub fn new(offset: u64, len: Option<u64>) -> Self {
        OffsetFactory { offset, len }
    }

    fn window(&self, size: u64) -> Result<Window> {
        let len = match self.len {
            Some(l) => l,
            None => size.checked_sub(self.offset).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "offset {} is past the end of the {size}-byte disk beneath",
                        self.offset
                    ),
                )
            })?,
        };
        Window::new(self.offset, len, size)
    }
}

pub(crate) fn build_offset(
    args: &FilterArgs,
    below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    args.allow(&["len"], 1)?;
    let offset = args
        .positional(0)
        .ok_or_else(|| args.invalid("give the window's start: offset:OFF[,len=LEN]"))?;
    let offset = args.parse_size("the offset", offset)?;
    let f = OffsetFactory::new(offset, args.size("len")?);
    // Refuse a window that does not fit now, with the sizes, rather than
    // at the first client.
    f.window(below.size)
        .map_err(|e| args.invalid(e.to_string()))?;
    Ok(Arc::new(f))
}

impl LayerFactory for OffsetFactory {
    fn name(&self) -> &str {
        "offset"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        let w = self.window(next.size())?;
        Ok(Arc::new(Layer::new(w, next)))
    }
    fn size(&self, next: u64) -> Result<u64> {
        Ok(self.window(next)?.len())
    }
}

/// How `truncate` picks the new size from the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewSize {
    Exactly(u64),
    RoundUp(u64),
    RoundDown(u64),
}

impl NewSize {
    fn of(self, old: u64) -> Result<u64> {
        let too_big = || {
            Error::new(
                ErrorKind::InvalidInput,
                format!("rounding {old} bytes up overflows the largest disk size"),
            )
        };
        let size = match self {
            NewSize::Exactly(s) => s,
            NewSize::RoundUp(n) => old.div_ceil(n).checked_mul(n).ok_or_else(too_big)?,
            NewSize::RoundDown(n) => old / n * n,
        };
        if size > synth::size::MAX {
            return Err(too_big());
        }
        Ok(size)
    }
}

/// Makes `truncate` layers.
#[derive(Debug)]
pub struct TruncateFactory {
    new: NewSize,
}

pub(crate) fn build_truncate(
    args: &FilterArgs,
    below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    args.allow(&["round-up", "round-down"], 1)?;
    let exact = args
        .positional(0)
        .map(|v| args.parse_size("the size", v))
        .transpose()?;
    let up = args.size("round-up")?;
    let down = args.size("round-down")?;
    let new = match (exact, up, down) {
        (Some(s), None, None) => NewSize::Exactly(s),
        (None, Some(n), None) => NewSize::RoundUp(n),
        (None, None, Some(n)) => NewSize::RoundDown(n),
        _ => {
            return Err(args.invalid(
                "give exactly one of SIZE, round-up=N, round-down=N (truncate:1G, \
                 truncate:round-up=4K)",
            ))
        }
    };
    if let NewSize::RoundUp(0) | NewSize::RoundDown(0) = new {
        return Err(args.invalid("cannot round to a multiple of 0"));
    }
    new.of(below.size)
        .map_err(|e| args.invalid(e.to_string()))?;
    Ok(Arc::new(TruncateFactory { new }))
}

impl LayerFactory for TruncateFactory {
    fn name(&self) -> &str {
        "truncate"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        let size = self.new.of(next.size())?;
        Ok(Arc::new(Layer::new(Truncate { size }, next)))
    }
    fn size(&self, next: u64) -> Result<u64> {
        self.new.of(next)
    }
}

/// The device beneath cut or extended to `size` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Truncate {
    size: u64,
}

impl Truncate {
    /// A disk of `size` bytes over whatever is beneath.
    pub fn new(size: u64) -> Self {
        Truncate { size }
    }

    /// The part of `len` bytes at `offset` that the device beneath holds
    /// (its length; it starts at `offset`), after checking the range.
    fn split(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<u64> {
        check_range(offset, len, self.size)?;
        let real = next.size();
        Ok(real.saturating_sub(offset).min(len))
    }
}

impl Filter for Truncate {
    fn size(&self, _next: &dyn BlockDev) -> u64 {
        self.size
    }
    fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self.split(next, offset, buf.len() as u64)? as usize;
        let (real, grown) = buf.split_at_mut(n);
        if !real.is_empty() {
            next.read_at(real, offset)?;
        }
        grown.fill(0);
        Ok(())
    }
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        let n = self.split(next, offset, buf.len() as u64)? as usize;
        let (real, grown) = buf.split_at(n);
        // Checked before anything is written, so a refused write changes
        // nothing.
        if let Some(i) = grown.iter().position(|&b| b != 0) {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "truncate: byte {} lies past the end of the disk beneath ({} bytes); the \
                     bytes added there read as zeros and cannot store data",
                    offset + (n + i) as u64,
                    next.size()
                ),
            ));
        }
        if real.is_empty() {
            return Ok(());
        }
        next.write_at(real, offset)
    }
    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        match self.split(next, offset, len)? {
            0 => Ok(()),
            n => next.trim(offset, n),
        }
    }
    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        // The added bytes already read as zeros: only the real part has
        // anything to do.
        match self.split(next, offset, len)? {
            0 => Ok(()),
            n => next.write_zeroes(offset, n, flags),
        }
    }
    fn cache(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        match self.split(next, offset, len)? {
            0 => Ok(()),
            n => next.cache(offset, n),
        }
    }
    fn extents(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut ExtentList,
    ) -> Result<()> {
        let n = self.split(next, offset, len)?;
        if n > 0 {
            let mut inner = ExtentList::new(offset);
            next.extents(offset, n, &mut inner)?;
            inner.truncate_to(offset + n);
            for e in inner.as_slice() {
                out.push(e.len, e.kind);
            }
            if inner.covered() < n {
                // The device beneath answered part of it: stop there (the
                // list must stay one contiguous, true run).
                return Ok(());
            }
        }
        out.push(len - n, ExtentKind::Hole);
        Ok(())
    }
    fn read_chunks(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadChunk>,
    ) -> Result<bool> {
        let n = self.split(next, offset, len)?;
        if n > 0 && !next.read_chunks(offset, n, out)? {
            return Ok(false);
        }
        if len > n {
            out.push(ReadChunk::Zero(len - n));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use synth::testing::check_dev;
    use synth::Caps;

    use super::*;
    use crate::data::testutil::{base, below, writable};
    use crate::{stack, Base};

    fn make(text: &str, dev: &Arc<dyn BlockDev>) -> Arc<dyn BlockDev> {
        let f = crate::build(text, &below(dev)).unwrap();
        f.layer(dev.clone(), &Client::local()).unwrap()
    }

    fn refused(text: &str, dev: &Arc<dyn BlockDev>) -> String {
        crate::build(text, &below(dev)).unwrap_err().to_string()
    }

    #[test]
    fn offset_windows_pass_conformance() {
        let (dev, expected) = base();
        check_dev(
            &*make("offset:4000,len=12000", &dev),
            &expected[4000..16000],
            &[1000],
        );
        // Without len: to the end; a window at the very end; an empty one.
        check_dev(&*make("offset:4999", &dev), &expected[4999..], &[1]);
        check_dev(&*make("offset:24999", &dev), &expected[24999..], &[]);
        check_dev(&*make("offset:25000", &dev), &[], &[]);
        check_dev(&*make("offset:0,len=0", &dev), &[], &[]);
    }

    #[test]
    fn offset_that_does_not_fit_is_refused_with_the_sizes() {
        let (dev, _) = base();
        let e = refused("offset:25001", &dev);
        assert!(e.contains("25001") && e.contains("25000"), "{e}");
        let e = refused("offset:20000,len=5001", &dev);
        assert!(e.contains("5001") && e.contains("25000"), "{e}");
        assert!(refused("offset", &dev).contains("OFF"));
        assert!(refused("offset:1,size=3", &dev).contains("size"));
        assert!(refused("offset:1x", &dev).contains("not a size"));
    }

    #[test]
    fn offset_writes_land_shifted() {
        let (dev, mut expected) = writable();
        let w = make("offset:10000,len=100", &dev);
        w.write_at(b"abc", 97).unwrap();
        expected[10097..10100].copy_from_slice(b"abc");
        assert_eq!(
            w.write_at(b"abcd", 97).unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
        check_dev(&*dev, &expected, &[10000]);
    }

    #[test]
    fn truncate_shrinks_and_grows() {
        let (dev, expected) = base();
        check_dev(&*make("truncate:12345", &dev), &expected[..12345], &[5000]);
        check_dev(&*make("truncate:0", &dev), &[], &[]);
        let mut grown = expected.clone();
        grown.resize(40_000, 0);
        let g = make("truncate:40000", &dev);
        check_dev(&*g, &grown, &[5000, 25000]);
        // The added tail is a hole, reported as one extent after the data.
        let mut l = ExtentList::new(20_000);
        g.extents(20_000, 20_000, &mut l).unwrap();
        let kinds: Vec<_> = l.iter_offsets().map(|(o, e)| (o, e.len, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (20_000, 5_000, ExtentKind::Data),
                (25_000, 15_000, ExtentKind::Hole)
            ]
        );
        // An extents list of one entry stops at the old end, then goes on.
        let mut l = ExtentList::with_limit(24_000, 1);
        g.extents(24_000, 16_000, &mut l).unwrap();
        assert_eq!(l.end(), 25_000);
    }

    #[test]
    fn truncate_rounds() {
        let (dev, expected) = base();
        let up = make("truncate:round-up=4K", &dev);
        assert_eq!(up.size(), 28_672);
        let mut grown = expected.clone();
        grown.resize(28_672, 0);
        check_dev(&*up, &grown, &[25_000]);
        let down = make("truncate:round-down=4K", &dev);
        check_dev(&*down, &expected[..24_576], &[]);
        // Already a multiple: unchanged.
        assert_eq!(make("truncate:round-up=1000", &dev).size(), 25_000);
        for bad in [
            "truncate",
            "truncate:1K,round-up=4K",
            "truncate:round-up=0",
            "truncate:round-down=0",
            "truncate:round-up=8E",
        ] {
            assert!(!refused(bad, &dev).is_empty(), "{bad}");
        }
        // Rounding a huge disk up past the largest size NBD allows.
        let e = NewSize::RoundUp(4096).of(synth::size::MAX).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        assert!(NewSize::RoundUp(3).of(u64::MAX).is_err());
    }

    #[test]
    fn truncate_writes_past_the_old_end_only_as_zeros() {
        let (dev, mut expected) = writable();
        let t = make("truncate:30000", &dev);
        // Spanning the old end: refused whole, nothing written beneath.
        let err = t.write_at(&[7u8; 100], 24_950).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        assert!(err.to_string().contains("25000"), "{err}");
        let mut buf = [0u8; 50];
        dev.read_at(&mut buf, 24_950).unwrap();
        assert_eq!(&buf[..], &expected[24_950..25_000]);
        // Zeros there are what the bytes already are: accepted.
        let mut w = vec![9u8; 50];
        w.resize(100, 0);
        t.write_at(&w, 24_950).unwrap();
        expected[24_950..25_000].fill(9);
        t.write_zeroes(24_000, 6_000, ZeroFlags::default()).unwrap();
        expected[24_000..25_000].fill(0);
        t.trim(26_000, 1_000).unwrap();
        let mut grown = expected.clone();
        grown.resize(30_000, 0);
        check_dev(&*t, &grown, &[25_000]);
        check_dev(&*dev, &expected, &[]);
        // Out of range of the new size.
        assert_eq!(
            t.write_at(&[0], 30_000).unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
    }

    #[test]
    fn stacked_through_the_registry() {
        // partition-like: a window of a window, then grown.
        let (dev, expected) = base();
        let ex = stack(
            &[
                "truncate:round-up=4096".to_string(),
                "offset:1000,len=8000".to_string(),
                "offset:3000".to_string(),
            ],
            Base::Shared(dev.clone(), "test".into()),
        )
        .unwrap();
        assert_eq!(ex.size(), 8192);
        assert!(ex.caps().contains(Caps::MULTI_CONN));
        let d = ex.open().unwrap();
        let mut want = expected[4000..12000].to_vec();
        want.resize(8192, 0);
        check_dev(&*d, &want, &[1000]);
    }
}
