//! Filters that watch, slow, fail, limit or admit requests and clients
//! without changing a byte: `delay`, `error`, `log`, `stats`, `rate`, `ip`,
//! `limit`.
//!
//! The request filters (`delay`, `error`, `log`, `stats`, `rate`) all do
//! the same two things around a request: something before it goes down
//! (wait, fail it) and something after (record it). So each is a [`Watch`]
//! and one [`Watched`] adapter turns it into a [`Filter`]: the rules about
//! which device call is which request (a zero-copy read is a read, a read
//! the device beneath cannot describe is not counted twice) live in one
//! place instead of five.
//!
//! The client filters (`ip`, `limit`) act in [`synth::LayerFactory::admit`]
//! and put no layer over the device at all.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use synth::{BlockDev, Error, ErrorKind, ExtentList, Filter, ReadChunk, Result, ZeroFlags};

use crate::{Entry, FilterArgs, FilterError};

pub mod delay;
pub mod error;
pub mod log;
pub mod policy;
pub mod rate;
pub mod stats;

/// The service filters.
pub(crate) const FILTERS: &[Entry] = &[
    delay::ENTRY,
    error::ENTRY,
    log::ENTRY,
    stats::ENTRY,
    rate::ENTRY,
    policy::IP_ENTRY,
    policy::LIMIT_ENTRY,
];

pub use synth::Op;

/// A set of ops, from `read|write|zero` (or `all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpSet(u8);

impl OpSet {
    /// Every op.
    pub fn all() -> Self {
        OpSet((1 << Op::ALL.len()) - 1)
    }

    /// The ops that touch the disk's bytes: read, write, zero, trim.
    pub fn data() -> Self {
        [Op::Read, Op::Write, Op::Zero, Op::Trim]
            .into_iter()
            .collect()
    }

    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & (1 << op.index()) != 0
    }

    /// Parse `read|write|…`, `all` or `data`; the error names the bad item.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut set = OpSet::default();
        for item in text.split('|').map(str::trim) {
            match item {
                "all" => set = OpSet::all(),
                "data" => set.0 |= OpSet::data().0,
                _ => {
                    let op = Op::parse(item).ok_or_else(|| {
                        format!(
                            "{item:?} is not an op (there are {}, all, data)",
                            Op::ALL.map(Op::name).join(", ")
                        )
                    })?;
                    set.0 |= 1 << op.index();
                }
            }
        }
        Ok(set)
    }
}

impl FromIterator<Op> for OpSet {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        OpSet(iter.into_iter().fold(0, |m, op| m | 1 << op.index()))
    }
}

/// One request as a service filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Req {
    /// What it is.
    pub op: Op,
    /// Where it starts (0 for a flush).
    pub offset: u64,
    /// How many bytes it concerns (0 for a flush).
    pub len: u64,
    /// The flags of a zero request (default for the others).
    pub zero: ZeroFlags,
}

impl Req {
    fn new(op: Op, offset: u64, len: u64) -> Self {
        Req {
            op,
            offset,
            len,
            zero: ZeroFlags::default(),
        }
    }
}

/// What a request filter does around each request.
pub trait Watch: Send + Sync + fmt::Debug {
    /// Before the request goes down: wait, or fail it (the device beneath
    /// then never sees it).
    fn before(&self, req: &Req) -> Result<()> {
        let _ = req;
        Ok(())
    }
    /// After the device beneath answered (or `before` failed it): the
    /// outcome and how long the device beneath took.
    fn after(&self, req: &Req, outcome: std::result::Result<(), &Error>, took: Duration) {
        let _ = (req, outcome, took);
    }
}

/// A [`Watch`] as a [`Filter`]: every request passes `before`, the device
/// beneath, then `after`; sizes, capabilities and block sizes pass through.
#[derive(Debug)]
pub struct Watched<W>(pub W);

impl<W: Watch> Watched<W> {
    /// `before`, then `call` timed, then `after`.
    fn around<T>(&self, req: Req, call: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Err(e) = self.0.before(&req) {
            self.0.after(&req, Err(&e), Duration::ZERO);
            return Err(e);
        }
        let start = Instant::now();
        let r = call();
        self.0.after(&req, r.as_ref().map(|_| ()), start.elapsed());
        r
    }
}

impl<W: Watch> Filter for Watched<W> {
    fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        let req = Req::new(Op::Read, offset, buf.len() as u64);
        self.around(req, || next.read_at(buf, offset))
    }
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        let req = Req::new(Op::Write, offset, buf.len() as u64);
        self.around(req, || next.write_at(buf, offset))
    }
    fn flush(&self, next: &dyn BlockDev) -> Result<()> {
        self.around(Req::new(Op::Flush, 0, 0), || next.flush())
    }
    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        self.around(Req::new(Op::Trim, offset, len), || next.trim(offset, len))
    }
    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        let req = Req {
            zero: flags,
            ..Req::new(Op::Zero, offset, len)
        };
        self.around(req, || next.write_zeroes(offset, len, flags))
    }
    fn cache(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        self.around(Req::new(Op::Cache, offset, len), || next.cache(offset, len))
    }
    fn extents(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut ExtentList,
    ) -> Result<()> {
        self.around(Req::new(Op::Extents, offset, len), || {
            next.extents(offset, len, out)
        })
    }
    /// The exporter asks for a zero-copy answer first and falls back to
    /// `read_at` when the device says `Ok(false)`. Running `before` first
    /// would run it twice for such reads (two waits, two dice rolls of the
    /// error filter), so the device is asked first: a description of where
    /// the bytes live sends nothing yet, so waiting or failing after it is
    /// the same to the client as doing so before. A fallback is left
    /// entirely to `read_at`, which then is the one request.
    fn read_chunks(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadChunk>,
    ) -> Result<bool> {
        let req = Req::new(Op::Read, offset, len);
        let mark = out.len();
        let start = Instant::now();
        let r = next.read_chunks(offset, len, out);
        let took = start.elapsed();
        if let Ok(false) = r {
            return r;
        }
        if let Err(e) = self.0.before(&req) {
            out.truncate(mark);
            self.0.after(&req, Err(&e), Duration::ZERO);
            return Err(e);
        }
        self.0.after(&req, r.as_ref().map(|_| ()), took);
        r
    }
}

/// The errno a client is sent for an error of `kind`: the NBD server's
/// mapping (nbd-export `errno_of`, proto.md "Error values"), for log lines
/// that say what the client saw.
pub fn errno_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::OutOfBounds | ErrorKind::InvalidInput => "EINVAL",
        ErrorKind::ReadOnly => "EPERM",
        ErrorKind::Unsupported | ErrorKind::NotFast => "ENOTSUP",
        ErrorKind::NoSpace => "ENOSPC",
        _ => "EIO",
    }
}

/// `t` as RFC 3339 UTC with microseconds (`2026-12-03T07:01:02.123456Z`),
/// for log lines and stats headers that people and `jq` read.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date: Howard Hinnant's algorithm ("chrono-Compatible
    // Low-Level Date Algorithms", days_from_civil's inverse).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Reject a zero or absurd rate in bytes per second from a filter's
/// arguments (`50M` = 50 MiB/s).
fn parse_rate(args: &FilterArgs, key: &str) -> std::result::Result<Option<u64>, FilterError> {
    match args.size(key)? {
        Some(0) => Err(args.invalid(format!("{key}: a rate of 0 bytes/s would never finish"))),
        r => Ok(r),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A small device with data and zeros, for the service filters' tests.

    use std::sync::Arc;

    use synth::{Backing, BlockDev, CowOverlay, OverlayOptions, RegionMapBuilder};

    /// A 25,000-byte device (5,000 zeros then a pattern) and its bytes.
    pub fn base() -> (Arc<dyn BlockDev>, Vec<u8>) {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut b = RegionMapBuilder::new();
        b.push("zeros", 5_000, Backing::Zero).unwrap();
        b.push_bytes("data", data.clone()).unwrap();
        let mut expected = vec![0u8; 5_000];
        expected.extend_from_slice(&data);
        (Arc::new(b.finish()), expected)
    }

    /// The same, writable (a copy-on-write overlay over it).
    pub fn writable() -> (Arc<dyn BlockDev>, Vec<u8>) {
        let (dev, expected) = base();
        let ov = CowOverlay::new(dev, OverlayOptions::default()).unwrap();
        (Arc::new(ov), expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_sets_parse_and_refuse_typos() {
        let s = OpSet::parse("read|write").unwrap();
        assert!(s.contains(Op::Read) && s.contains(Op::Write));
        assert!(!s.contains(Op::Flush));
        let all = OpSet::parse("all").unwrap();
        assert!(Op::ALL.iter().all(|&op| all.contains(op)));
        let data = OpSet::parse("data|flush").unwrap();
        assert!(data.contains(Op::Trim) && data.contains(Op::Flush));
        assert!(!data.contains(Op::Extents));
        let e = OpSet::parse("read|wrte").unwrap_err();
        assert!(e.contains("\"wrte\""), "{e}");
        for op in Op::ALL {
            assert_eq!(Op::parse(op.name()), Some(op));
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_281_262_123_456);
        assert_eq!(rfc3339(t), "2026-12-03T07:01:02.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn every_service_filter_is_registered_once() {
        let names: Vec<_> = FILTERS.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            ["delay", "error", "log", "stats", "rate", "ip", "limit"]
        );
        for e in FILTERS {
            assert!(!e.usage.is_empty() && !e.about.is_empty(), "{}", e.name);
        }
    }
}
