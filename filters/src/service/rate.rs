//! `rate:read=50M,write=10M,per-connection=5M`: bandwidth limits in bytes
//! per second — to try a client over a slow link, or to keep one export
//! from taking a host's whole disk or network. `read` and `write` limit
//! all clients together; `per-connection` limits each client's reads and
//! writes together. Only reads and writes move data; zero, trim and the
//! rest are not limited.
//!
//! Each limit is a token bucket holding a tenth of a second's worth: a
//! request takes its bytes from it and, when that leaves the bucket in
//! debt, sleeps until the debt is paid before going down. So a request is
//! never split (a device call of part of a write would change what a
//! failure leaves behind); it just waits longer when it is large, and later
//! requests wait behind it — fair in order of arrival. A request under
//! several limits waits for the slowest.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synth::{BlockDev, Client, Layer, LayerFactory, Result};

use super::{parse_rate, Op, Req, Watch, Watched};
use crate::{Below, Entry, FilterArgs, FilterError};

pub(crate) const ENTRY: Entry = Entry {
    name: "rate",
    usage: "rate:read=BPS,write=BPS,per-connection=BPS",
    about: "limit read and write bandwidth (bytes/s, e.g. 50M), all clients or each",
    build,
};

/// How much a bucket holds: this long at its rate. Short, so that a burst
/// after a pause is small; long enough that a request of a few KiB does not
/// sleep for microseconds at a time.
const BURST: Duration = Duration::from_millis(100);

/// A token bucket of `rate` bytes per second.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    capacity: f64,
    /// Tokens (bytes; negative: debt) as of an instant.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket of `rate` bytes/s.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = rate * BURST.as_secs_f64();
        Bucket {
            rate,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Take `bytes`; how long to wait before using them.
    pub fn take(&self, bytes: u64) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.saturating_duration_since(st.1).as_secs_f64() * self.rate;
        st.0 = (st.0 + refill).min(self.capacity) - bytes as f64;
        st.1 = now;
        if st.0 >= 0.0 {
            return Duration::ZERO;
        }
        // At most a day (a 32 MiB request at 400 bytes/s): keeps the
        // conversion finite whatever the numbers.
        Duration::from_secs_f64((-st.0 / self.rate).min(86_400.0))
    }
}

/// The limits one client's layer honours.
#[derive(Debug)]
struct Limits {
    read: Option<Arc<Bucket>>,
    write: Option<Arc<Bucket>>,
    conn: Option<Bucket>,
}

impl Watch for Limits {
    fn before(&self, req: &Req) -> Result<()> {
        let shared = match req.op {
            Op::Read => &self.read,
            Op::Write => &self.write,
            _ => return Ok(()),
        };
        debug_assert!(req.op.moves_data());
        let wait = [shared.as_deref(), self.conn.as_ref()]
            .into_iter()
            .flatten()
            .map(|b| b.take(req.len))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(())
    }
}

/// The `rate` factory: the shared buckets, and the per-connection rate.
#[derive(Debug)]
pub struct RateFactory {
    read: Option<Arc<Bucket>>,
    write: Option<Arc<Bucket>>,
    per_connection: Option<u64>,
}

impl RateFactory {
    /// The limits of the filter's arguments.
    pub fn from_args(args: &FilterArgs) -> std::result::Result<Self, FilterError> {
        args.allow(&["read", "write", "per-connection"], 0)?;
        let f = RateFactory {
            read: parse_rate(args, "read")?.map(|r| Arc::new(Bucket::new(r))),
            write: parse_rate(args, "write")?.map(|r| Arc::new(Bucket::new(r))),
            per_connection: parse_rate(args, "per-connection")?,
        };
        if f.read.is_none() && f.write.is_none() && f.per_connection.is_none() {
            return Err(args.invalid("no limit given (e.g. rate:read=50M)"));
        }
        Ok(f)
    }
}

impl LayerFactory for RateFactory {
    fn name(&self) -> &str {
        "rate"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        let limits = Limits {
            read: self.read.clone(),
            write: self.write.clone(),
            conn: self.per_connection.map(Bucket::new),
        };
        Ok(Arc::new(Layer::new(Watched(limits), next)))
    }
}

fn build(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(RateFactory::from_args(args)?))
}

#[cfg(test)]
mod tests {
    use synth::testing::check_dev;
    use synth::ZeroFlags;

    use super::*;
    use crate::service::testutil;

    fn factory(text: &str) -> RateFactory {
        RateFactory::from_args(&FilterArgs::parse(text).unwrap()).unwrap()
    }

    /// A 2 MiB zero device.
    fn zeros() -> Arc<dyn BlockDev> {
        let mut b = synth::RegionMapBuilder::new();
        b.push("zeros", 2 << 20, synth::Backing::Zero).unwrap();
        Arc::new(b.finish())
    }

    #[test]
    fn changes_no_byte() {
        let (dev, expected) = testutil::base();
        let top = factory("rate:read=1G")
            .layer(dev, &Client::local())
            .unwrap();
        check_dev(&*top, &expected, &[5_000]);
    }

    /// Loose bounds only: a MiB at a MiB/s cannot take less than 0.9 s
    /// (the burst is a tenth of a second's worth); no upper bound.
    #[test]
    fn reads_are_held_to_the_rate() {
        let top = factory("rate:read=1M")
            .layer(zeros(), &Client::local())
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let t = Instant::now();
        for i in 0..16 {
            top.read_at(&mut buf, i * (64 << 10)).unwrap();
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
    }

    #[test]
    fn only_data_moving_ops_are_limited() {
        let (dev, _) = testutil::writable();
        let top = factory("rate:write=1K")
            .layer(dev, &Client::local())
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        top.read_at(&mut buf, 0).unwrap();
        top.write_zeroes(0, 20_000, ZeroFlags::default()).unwrap();
        top.trim(0, 20_000).unwrap();
        top.flush().unwrap();
        // 4 KiB at 1 KiB/s would be about 4 s; none of those is a write.
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn a_shared_limit_holds_for_all_clients_and_per_connection_for_each() {
        let f = factory("rate:read=1M");
        let dev = zeros();
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let top = f.layer(dev.clone(), &Client::local()).unwrap();
                s.spawn(move || {
                    let mut buf = vec![0u8; 32 << 10];
                    for i in 0..16 {
                        top.read_at(&mut buf, i * (32 << 10)).unwrap();
                    }
                });
            }
        });
        // Two clients, 512 KiB each, one MiB/s between them.
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");

        let f = factory("rate:per-connection=1M");
        let took: Vec<Duration> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let top = f.layer(dev.clone(), &Client::local()).unwrap();
                    s.spawn(move || {
                        let t = Instant::now();
                        let mut buf = vec![0u8; 32 << 10];
                        for i in 0..16 {
                            top.read_at(&mut buf, i * (32 << 10)).unwrap();
                        }
                        t.elapsed()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Each client's 512 KiB at its own MiB/s: at least 0.4 s each.
        for d in took {
            assert!(d >= Duration::from_millis(350), "{d:?}");
        }
    }

    /// The bucket's arithmetic at its edges, without sleeping: a full
    /// bucket lends a tenth of a second, debt queues later requests behind
    /// earlier ones, and no size or rate makes an endless wait.
    #[test]
    fn bucket_debts_queue_and_stay_finite() {
        let near = |d: Duration, secs: f64| (d.as_secs_f64() - secs).abs() < 0.05;
        let b = Bucket::new(1000);
        assert_eq!(b.take(100), Duration::ZERO);
        let first = b.take(1000);
        assert!(near(first, 1.0), "{first:?}");
        let second = b.take(500);
        assert!(near(second, 1.5), "{second:?}");
        let tiny = Bucket::new(1);
        assert!(near(tiny.take(1), 0.9));
        assert_eq!(tiny.take(u64::MAX), Duration::from_secs(86_400));
        // A rate so high no request waits.
        let huge = Bucket::new(u64::MAX);
        assert_eq!(huge.take(32 << 20), Duration::ZERO);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            "rate",
            "rate:read=0",
            "rate:read=fast",
            "rate:50M",
            "rate:reads=1M",
        ] {
            let args = FilterArgs::parse(bad).unwrap();
            assert!(RateFactory::from_args(&args).is_err(), "{bad}");
        }
    }
}
