//! `delay`: latency before each request goes down, per op — to see how a
//! client or guest behaves over a slow disk or a long link (as nbdkit's
//! delay filter). `delay:10ms` delays every op; keys set one op each and
//! win over the bare value: `delay:read=10ms,write=50ms`.

use std::sync::Arc;
use std::time::Duration;

use synth::{BlockDev, Client, Layer, LayerFactory, Result};

use super::{Op, Req, Watch, Watched};
use crate::{Below, Entry, FilterArgs, FilterError};

pub(crate) const ENTRY: Entry = Entry {
    name: "delay",
    usage: "delay:[TIME,]read=TIME,write=…,flush=…",
    about: "wait TIME (10ms) before each request of an op (read, write, zero, trim, flush, cache, extents) goes down",
    build,
};

/// How long each op waits, indexed by [`Op::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delays([Duration; Op::ALL.len()]);

impl Delays {
    /// The wait of `op`.
    pub fn of(&self, op: Op) -> Duration {
        self.0[op.index()]
    }
}

impl Watch for Delays {
    fn before(&self, req: &Req) -> Result<()> {
        let d = self.of(req.op);
        if !d.is_zero() {
            std::thread::sleep(d);
        }
        Ok(())
    }
}

/// The `delay` factory: the same delays for every client.
#[derive(Debug)]
pub struct DelayFactory(Delays);

impl DelayFactory {
    /// Delays from the filter's arguments.
    pub fn from_args(args: &FilterArgs) -> std::result::Result<Self, FilterError> {
        let keys = Op::ALL.map(Op::name);
        args.allow(&keys, 1)?;
        let all = match args.positional(0) {
            Some(v) => crate::args::parse_duration(v).map_err(|e| args.invalid(e))?,
            None => Duration::ZERO,
        };
        let mut d = Delays([all; Op::ALL.len()]);
        for op in Op::ALL {
            if let Some(v) = args.duration(op.name())? {
                d.0[op.index()] = v;
            }
        }
        if d == Delays::default() {
            return Err(args.invalid("no delay given (e.g. delay:10ms or delay:read=10ms)"));
        }
        Ok(DelayFactory(d))
    }

    /// The delays.
    pub fn delays(&self) -> Delays {
        self.0
    }
}

impl LayerFactory for DelayFactory {
    fn name(&self) -> &str {
        "delay"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        Ok(Arc::new(Layer::new(Watched(self.0), next)))
    }
}

fn build(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(DelayFactory::from_args(args)?))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use synth::testing::check_dev;
    use synth::ZeroFlags;

    use super::*;
    use crate::service::testutil;

    fn factory(text: &str) -> DelayFactory {
        DelayFactory::from_args(&FilterArgs::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn keys_win_over_the_bare_value() {
        let d = factory("delay:5ms,read=1ms,flush=0").delays();
        assert_eq!(d.of(Op::Read), Duration::from_millis(1));
        assert_eq!(d.of(Op::Write), Duration::from_millis(5));
        assert_eq!(d.of(Op::Flush), Duration::ZERO);
        for bad in [
            "delay",
            "delay:read=fast",
            "delay:reed=1ms",
            "delay:1ms,2ms",
            "delay:0",
        ] {
            let args = FilterArgs::parse(bad).unwrap();
            assert!(DelayFactory::from_args(&args).is_err(), "{bad}");
        }
    }

    #[test]
    fn changes_no_byte() {
        let (dev, expected) = testutil::base();
        let top = factory("delay:read=1us")
            .layer(dev, &Client::local())
            .unwrap();
        check_dev(&*top, &expected, &[5_000]);
    }

    #[test]
    fn delays_only_the_ops_named() {
        let (dev, _) = testutil::writable();
        let top = factory("delay:write=300ms,zero=300ms")
            .layer(dev, &Client::local())
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 512];
        for _ in 0..5 {
            top.read_at(&mut buf, 0).unwrap();
        }
        let reads = t.elapsed();
        let t = Instant::now();
        top.write_at(&buf, 0).unwrap();
        top.write_zeroes(0, 512, ZeroFlags::default()).unwrap();
        let writes = t.elapsed();
        // Loose: two delayed ops take at least their delays; the five
        // undelayed reads (microseconds each) far less than one of them.
        assert!(writes >= Duration::from_millis(600), "{writes:?}");
        assert!(reads < Duration::from_millis(300), "{reads:?}");
    }
}
