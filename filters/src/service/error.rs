//! `error`: fault injection, as nbdkit's error filter — to prove that
//! clients and guests see and survive failing disks. Requests of the listed
//! ops (default: the data ops read, write, zero, trim) that overlap the
//! range (default: the whole disk; a flush has no range and always
//! qualifies) fail with the errno, each with probability `rate` (default
//! 1): `error:rate=0.01,ops=read,range=1M-2M,errno=EIO`.
//!
//! The dice are a splitmix64 sequence from `seed` (default 0), never the
//! clock: the same requests in the same order fail the same way on every
//! run, so a test (or a bug report) can be replayed. Clients share one
//! sequence, so with several clients the order of their requests decides
//! which fail — deterministic per run only for one client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use synth::{BlockDev, Client, Error, ErrorKind, Layer, LayerFactory, Result};

use super::{Op, OpSet, Req, Watch, Watched};
use crate::{Below, Entry, FilterArgs, FilterError};

pub(crate) const ENTRY: Entry = Entry {
    name: "error",
    usage: "error:rate=P,ops=OP|…,range=OFF-END,errno=E,seed=N",
    about: "fail requests (fraction P, default 1; ops default read|write|zero|trim; \
            errno EIO, ENOSPC, EPERM, EINVAL or ENOTSUP) reproducibly from a seed",
    build,
};

/// The errnos a client can be made to see. The NBD server turns a
/// [`synth::ErrorKind`] into an NBD error value (nbd-export `errno_of`,
/// proto.md "Error values"), so only errnos a kind maps to are offered:
/// asking for ENOMEM would silently send EIO.
const ERRNOS: &[(&str, ErrorKind)] = &[
    ("EIO", ErrorKind::Io),
    ("ENOSPC", ErrorKind::NoSpace),
    ("EPERM", ErrorKind::ReadOnly),
    ("EINVAL", ErrorKind::InvalidInput),
    ("ENOTSUP", ErrorKind::Unsupported),
    ("EOPNOTSUPP", ErrorKind::Unsupported),
];

/// What fails, how often, and the dice.
#[derive(Debug)]
pub struct Faults {
    ops: OpSet,
    /// `[start, end)` on the device beneath.
    range: Option<(u64, u64)>,
    /// Probability of failing a qualifying request, 0..=1.
    rate: f64,
    errno: &'static str,
    kind: ErrorKind,
    /// splitmix64 state: advanced once per qualifying request.
    dice: AtomicU64,
    injected: AtomicU64,
}

/// splitmix64's increment (Steele, Lea, Flood: "Fast splittable
/// pseudorandom number generators", 2014).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Faults {
    /// Whether `req` is one the filter may fail (op and range).
    fn qualifies(&self, req: &Req) -> bool {
        if !self.ops.contains(req.op) {
            return false;
        }
        match self.range {
            None => true,
            Some(_) if req.op == Op::Flush => true,
            Some((start, end)) => req.offset < end && start < req.offset.saturating_add(req.len),
        }
    }

    /// The next roll of the dice, uniform in `[0, 1)`. splitmix64 over an
    /// atomic counter: lock-free, and each request gets its own number.
    fn roll(&self) -> f64 {
        let mut z = self
            .dice
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits: every double in [0, 1) this can give is exact.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How many requests have been failed.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

impl Watch for Arc<Faults> {
    fn before(&self, req: &Req) -> Result<()> {
        if !self.qualifies(req) {
            return Ok(());
        }
        // rate=1 fails without rolling, so `rate=1` needs no seed at all
        // and a rate below 1 is the only thing the dice decide.
        if self.rate < 1.0 && self.roll() >= self.rate {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        let what = match req.op {
            Op::Flush => "flush".to_string(),
            op => format!("{op} of {} bytes at offset {}", req.len, req.offset),
        };
        Err(Error::new(
            self.kind,
            format!("{} injected by --filter error on {what}", self.errno),
        )
        .at(req.offset))
    }
}

/// The `error` factory: one set of faults (and one sequence of dice) for
/// all clients.
#[derive(Debug)]
pub struct ErrorFactory(Arc<Faults>);

impl ErrorFactory {
    /// The faults of the filter's arguments over a device of `size` bytes.
    pub fn from_args(args: &FilterArgs, size: u64) -> std::result::Result<Self, FilterError> {
        args.allow(&["rate", "ops", "range", "errno", "seed"], 0)?;
        let rate = match args.get("rate") {
            None => 1.0,
            Some(v) => parse_probability(v).map_err(|e| args.invalid(format!("rate: {e}")))?,
        };
        let ops = match args.get("ops") {
            None => OpSet::data(),
            Some(v) => OpSet::parse(v).map_err(|e| args.invalid(format!("ops: {e}")))?,
        };
        let range = match args.get("range") {
            None => None,
            Some(v) => {
                let (a, b) = v
                    .split_once('-')
                    .ok_or_else(|| args.invalid(format!("range: {v:?} is not OFF-END")))?;
                let start = args.parse_size("range start", a)?;
                let end = args.parse_size("range end", b)?;
                if end <= start {
                    return Err(args.invalid(format!("range: {v:?} is empty (END <= OFF)")));
                }
                if start >= size {
                    return Err(args.invalid(format!(
                        "range: {v:?} starts past the end of the disk ({size} bytes)"
                    )));
                }
                Some((start, end))
            }
        };
        let errno_text = args.get("errno").unwrap_or("EIO");
        let (errno, kind) = ERRNOS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(errno_text))
            .copied()
            .ok_or_else(|| {
                args.invalid(format!(
                    "errno: {errno_text:?} is not one a client can be sent (there are {})",
                    ERRNOS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let seed = args.number::<u64>("seed")?.unwrap_or(0);
        Ok(ErrorFactory(Arc::new(Faults {
            ops,
            range,
            rate,
            errno,
            kind,
            dice: AtomicU64::new(seed),
            injected: AtomicU64::new(0),
        })))
    }

    /// The faults (shared by every client's layer).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.0
    }
}

/// `0.01`, `1`, or `5%`.
fn parse_probability(text: &str) -> std::result::Result<f64, String> {
    let (num, scale) = match text.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (text, 1.0),
    };
    let p = num
        .trim()
        .parse::<f64>()
        .map(|p| p * scale)
        .map_err(|_| format!("{text:?} is not a probability (e.g. 0.01 or 1%)"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{text:?} is not between 0 and 1"));
    }
    Ok(p)
}

impl LayerFactory for ErrorFactory {
    fn name(&self) -> &str {
        "error"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        Ok(Arc::new(Layer::new(Watched(self.0.clone()), next)))
    }
}

fn build(
    args: &FilterArgs,
    below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(ErrorFactory::from_args(args, below.size)?))
}

#[cfg(test)]
mod tests {
    use synth::testing::check_dev;
    use synth::{ExtentList, ZeroFlags};

    use super::*;
    use crate::service::testutil;

    fn factory(text: &str) -> ErrorFactory {
        ErrorFactory::from_args(&FilterArgs::parse(text).unwrap(), 25_000).unwrap()
    }

    #[test]
    fn rate_zero_changes_no_byte() {
        let (dev, expected) = testutil::base();
        let f = factory("error:rate=0");
        let top = f.layer(dev, &Client::local()).unwrap();
        check_dev(&*top, &expected, &[5_000]);
        assert_eq!(f.faults().injected(), 0);
    }

    #[test]
    fn every_qualifying_request_fails_with_the_errno_at_rate_one() {
        let (dev, _) = testutil::writable();
        let f = factory("error:ops=write|flush,errno=ENOSPC");
        let top = f.layer(dev, &Client::local()).unwrap();
        let mut buf = [0u8; 100];
        top.read_at(&mut buf, 0).unwrap();
        let e = top.write_at(&buf, 4096).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.to_string().contains("ENOSPC"), "{e}");
        assert!(e.to_string().contains("4096"), "{e}");
        assert_eq!(e.offset(), Some(4096));
        assert_eq!(top.flush().unwrap_err().kind(), ErrorKind::NoSpace);
        // Not listed: passes.
        top.write_zeroes(0, 10, ZeroFlags::default()).unwrap();
        top.trim(0, 10).unwrap();
        let mut ext = ExtentList::new(0);
        top.extents(0, 100, &mut ext).unwrap();
        assert_eq!(f.faults().injected(), 2);
    }

    #[test]
    fn only_requests_overlapping_the_range_fail() {
        let (dev, _) = testutil::base();
        let top = factory("error:range=8K-12K,errno=eio")
            .layer(dev, &Client::local())
            .unwrap();
        let mut buf = [0u8; 1024];
        // Ends exactly at the range's start; starts exactly at its end.
        top.read_at(&mut buf, 8192 - 1024).unwrap();
        top.read_at(&mut buf, 12288).unwrap();
        // Straddling either edge, inside.
        for at in [8192 - 1023, 8192, 10_000, 12288 - 1] {
            let mut one = [0u8; 1024];
            let len = one.len().min(25_000 - at);
            let e = top.read_at(&mut one[..len], at as u64).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Io, "{at}");
        }
        // The zero-copy path fails the same requests, once each.
        let mut chunks = Vec::new();
        assert!(top.read_chunks(9000, 100, &mut chunks).is_err());
        assert!(chunks.is_empty());
        let mut chunks = Vec::new();
        let ok = top.read_chunks(0, 100, &mut chunks);
        assert!(ok.is_ok());
    }

    /// The fraction failed is near the rate, and the very same requests
    /// fail again with the same seed (and others with another).
    #[test]
    fn a_fixed_seed_fails_the_same_requests_at_about_the_rate() {
        let pattern = |seed: u64| -> Vec<bool> {
            let (dev, _) = testutil::base();
            let top = factory(&format!("error:rate=0.1,seed={seed}"))
                .layer(dev, &Client::local())
                .unwrap();
            let mut buf = [0u8; 16];
            (0..5000)
                .map(|i| top.read_at(&mut buf, i * 4).is_err())
                .collect()
        };
        let a = pattern(42);
        let failed = a.iter().filter(|&&f| f).count();
        // 5000 draws at p = 0.1: mean 500, sd ~21; ±100 is ~5 sd.
        assert!((400..=600).contains(&failed), "{failed}");
        assert_eq!(a, pattern(42));
        assert_ne!(a, pattern(43));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            "error:rate=2",
            "error:rate=-0.1",
            "error:rate=often",
            "error:ops=reads",
            "error:range=5-5",
            "error:range=1M",
            "error:range=30000-40000",
            "error:errno=ENOMEM",
            "error:seed=x",
            "error:EIO",
            "error:rates=1",
        ] {
            let args = FilterArgs::parse(bad).unwrap();
            let e = ErrorFactory::from_args(&args, 25_000).unwrap_err();
            assert!(e.to_string().starts_with("filter error"), "{bad}: {e}");
        }
        assert!((parse_probability("5%").unwrap() - 0.05).abs() < 1e-12);
    }
}
