//! `stats[:file=PATH]`: per-op request counts, errors, bytes and latency
//! (log2 histogram of microseconds, with p50/p90/p99 read off it), for
//! every client of the export together, plus the connections open now.
//! The table is printed to stderr (or appended to PATH) when the export is
//! dropped (the server exits) and whenever the process gets SIGUSR1 — a
//! long-running server is asked, not stopped (nbdkit's stats filter prints
//! at exit only).
//!
//! Counting is a few relaxed atomic adds per request, no lock: the table
//! must not slow down the requests it measures. Latency is what the layers
//! beneath took (a zero-copy read: until its bytes were located, not sent).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use synth::latency::{bucket, bucket_limit, percentile, BUCKETS};
use synth::{BlockDev, Client, Error, Layer, LayerFactory, Peer, Result};

use super::{rfc3339, Op, Req, Watch, Watched};
use crate::{Below, Entry, FilterArgs, FilterError};

pub(crate) const ENTRY: Entry = Entry {
    name: "stats",
    usage: "stats[:file=PATH]",
    about: "count requests, bytes and latency per op; print at exit and on SIGUSR1",
    build,
};

/// One op's counters.
#[derive(Debug)]
struct OpStats {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
    hist: [AtomicU64; BUCKETS],
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl OpStats {
    fn record(&self, len: u64, ok: bool, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.hist[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    fn hist(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|b| self.hist[b].load(Ordering::Relaxed))
    }
}

/// One open connection's counters.
#[derive(Debug)]
struct ConnStats {
    client: Client,
    requests: AtomicU64,
    errors: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

/// The table of one export: shared by its clients' layers.
#[derive(Debug)]
pub struct Table {
    started: Instant,
    ops: [OpStats; Op::ALL.len()],
    connections: AtomicU64,
    live: Mutex<Vec<Weak<ConnStats>>>,
    /// The export name the first client asked for: with several exports
    /// each with its own stats, this says whose table it is.
    export: OnceLock<String>,
    /// Where reports go: `None` is stderr.
    file: Option<PathBuf>,
}

impl Table {
    fn new(file: Option<PathBuf>) -> Self {
        Table {
            started: Instant::now(),
            ops: Default::default(),
            connections: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            export: OnceLock::new(),
            file,
        }
    }

    /// Requests of `op` counted so far.
    pub fn requests(&self, op: Op) -> u64 {
        self.ops[op.index()].requests.load(Ordering::Relaxed)
    }

    /// Bytes of successful `op` requests so far.
    pub fn bytes(&self, op: Op) -> u64 {
        self.ops[op.index()].bytes.load(Ordering::Relaxed)
    }

    /// Failed `op` requests so far.
    pub fn errors(&self, op: Op) -> u64 {
        self.ops[op.index()].errors.load(Ordering::Relaxed)
    }

    fn connect(&self, client: &Client) -> Arc<ConnStats> {
        let c = Arc::new(ConnStats {
            client: client.clone(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        // The local client (`-o`, the stack's probe layer) is not a
        // connection.
        if !(client.id == 0 && client.peer == Peer::Other) {
            self.connections.fetch_add(1, Ordering::Relaxed);
            let _ = self.export.set(client.export.clone());
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            // Closed connections' entries go when the next one opens: the
            // list stays as long as the number open, not ever-growing.
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&c));
        }
        c
    }

    /// The table as text, `why` saying what asked for it.
    pub fn report(&self, why: &str) -> String {
        let live: Vec<Arc<ConnStats>> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut s = String::new();
        let of = match self.export.get() {
            Some(name) if !name.is_empty() => format!(" of export {name:?}"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "disksynth --filter stats ({why}){of} at {}: {:.3} s, {} connections ({} open)",
            rfc3339(SystemTime::now()),
            self.started.elapsed().as_secs_f64(),
            self.connections.load(Ordering::Relaxed),
            live.len(),
        );
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>7} {:>14} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "op", "requests", "errors", "bytes", "mean_us", "p50_us", "p90_us", "p99_us", "max_us"
        );
        let mut all = [0u64; BUCKETS];
        for op in Op::ALL {
            let o = &self.ops[op.index()];
            let n = o.requests.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let h = o.hist();
            for (a, b) in all.iter_mut().zip(h) {
                *a += b;
            }
            let p = |q| percentile(&h, q).map_or("-".into(), |v: u64| format!("<{v}"));
            let _ = writeln!(
                s,
                "{:<8} {:>10} {:>7} {:>14} {:>9} {:>9} {:>9} {:>9} {:>10}",
                op.name(),
                n,
                o.errors.load(Ordering::Relaxed),
                o.bytes.load(Ordering::Relaxed),
                o.total_us.load(Ordering::Relaxed) / n,
                p(0.5),
                p(0.9),
                p(0.99),
                o.max_us.load(Ordering::Relaxed),
            );
        }
        if all.iter().any(|&n| n > 0) {
            let _ = writeln!(s, "latency, all ops (us): requests");
            let peak = all.iter().copied().max().unwrap_or(1).max(1);
            for (b, &n) in all.iter().enumerate().filter(|(_, &n)| n > 0) {
                let lo = if b == 0 { 0 } else { bucket_limit(b - 1) };
                let bar = "#".repeat(((n * 40).div_ceil(peak)) as usize);
                let _ = writeln!(s, "  [{lo:>8}, {:>8}) {n:>10} {bar}", bucket_limit(b));
            }
        }
        for c in live {
            let _ = writeln!(
                s,
                "  conn {} from {}{}: {} requests, {} errors, {} bytes read, {} written",
                c.client.id,
                c.client.peer,
                if c.client.export.is_empty() {
                    String::new()
                } else {
                    format!(" (export {:?})", c.client.export)
                },
                c.requests.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                c.read.load(Ordering::Relaxed),
                c.written.load(Ordering::Relaxed),
            );
        }
        s
    }

    /// Print the report to stderr or append it to the file.
    pub fn print(&self, why: &str) {
        let text = self.report(why);
        match &self.file {
            None => {
                // One write of the whole table: lines of other threads'
                // logging cannot land inside it.
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            Some(path) => {
                let r = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(text.as_bytes()));
                if let Err(e) = r {
                    log::warn!("--filter stats: writing {}: {e}", path.display());
                }
            }
        }
    }
}

/// One client's layer: counts into the export's table and its own.
#[derive(Debug)]
struct ConnWatch {
    table: Arc<Table>,
    conn: Arc<ConnStats>,
}

impl Watch for ConnWatch {
    fn after(&self, req: &Req, outcome: std::result::Result<(), &Error>, took: Duration) {
        let ok = outcome.is_ok();
        self.table.ops[req.op.index()].record(req.len, ok, took);
        let c = &self.conn;
        c.requests.fetch_add(1, Ordering::Relaxed);
        match (ok, req.op) {
            (false, _) => c.errors.fetch_add(1, Ordering::Relaxed),
            (true, Op::Read) => c.read.fetch_add(req.len, Ordering::Relaxed),
            (true, Op::Write) => c.written.fetch_add(req.len, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// Every table alive, for the SIGUSR1 thread.
fn tables() -> &'static Mutex<Vec<Weak<Table>>> {
    static TABLES: Mutex<Vec<Weak<Table>>> = Mutex::new(Vec::new());
    &TABLES
}

/// Start (once per process) the thread that prints every table on
/// SIGUSR1. signal-hook's iterator does the async-signal-safe part (a
/// self-pipe); the printing happens on an ordinary thread. Before any stats
/// filter exists, SIGUSR1 keeps its default (terminate), as without one.
fn watch_sigusr1() -> std::result::Result<(), String> {
    static STARTED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
                .map_err(|e| format!("installing the SIGUSR1 handler: {e}"))?;
            std::thread::Builder::new()
                .name("stats-sigusr1".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        let live: Vec<Arc<Table>> = tables()
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .filter_map(Weak::upgrade)
                            .collect();
                        for t in live {
                            t.print("SIGUSR1");
                        }
                    }
                })
                .map(|_| ())
                .map_err(|e| format!("starting the SIGUSR1 thread: {e}"))
        })
        .clone()
}

/// The `stats` factory: owns the export's table and prints it when
/// dropped (the export is dropped when the server exits).
#[derive(Debug)]
pub struct StatsFactory(Arc<Table>);

impl StatsFactory {
    /// The table of the filter's arguments, registered for SIGUSR1.
    pub fn from_args(args: &FilterArgs) -> std::result::Result<Self, FilterError> {
        args.allow(&["file"], 0)?;
        let file = args.get("file").map(PathBuf::from);
        watch_sigusr1().map_err(|why| FilterError::Setup {
            filter: "stats".into(),
            source: Error::new(synth::ErrorKind::Io, why),
        })?;
        let table = Arc::new(Table::new(file));
        let mut all = tables().lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&table));
        Ok(StatsFactory(table))
    }

    /// The table.
    pub fn table(&self) -> &Arc<Table> {
        &self.0
    }
}

impl Drop for StatsFactory {
    fn drop(&mut self) {
        self.0.print("exit");
    }
}

impl LayerFactory for StatsFactory {
    fn name(&self) -> &str {
        "stats"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, client: &Client) -> Result<Arc<dyn BlockDev>> {
        let w = ConnWatch {
            table: self.0.clone(),
            conn: self.0.connect(client),
        };
        Ok(Arc::new(Layer::new(Watched(w), next)))
    }
}

fn build(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(StatsFactory::from_args(args)?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use synth::testing::check_dev;
    use synth::ZeroFlags;

    use super::*;
    use crate::service::testutil;

    fn factory(file: &Path) -> StatsFactory {
        let text = format!("stats:file={}", file.display());
        StatsFactory::from_args(&FilterArgs::parse(&text).unwrap()).unwrap()
    }

    fn client(id: u64) -> Client {
        Client {
            id,
            peer: Peer::Unix {
                uid: Some(1000),
                gid: Some(100),
            },
            export: "pat".into(),
        }
    }

    #[test]
    fn counts_every_op_and_changes_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stats.txt");
        let (dev, expected) = testutil::base();
        let f = factory(&out);
        let top = f.layer(dev, &Client::local()).unwrap();
        check_dev(&*top, &expected, &[5_000]);
        let reads = f.table().requests(Op::Read);
        assert!(reads > 300, "{reads}");
        // Every byte it read was counted (it reads the whole disk once).
        assert!(f.table().bytes(Op::Read) >= expected.len() as u64);

        let (wdev, _) = testutil::writable();
        let a = f.layer(wdev.clone(), &client(1)).unwrap();
        let b = f.layer(wdev, &client(2)).unwrap();
        a.write_at(&[1; 1000], 0).unwrap();
        b.write_at(&[2; 500], 0).unwrap();
        b.write_zeroes(0, 4096, ZeroFlags::default()).unwrap();
        a.flush().unwrap();
        assert!(a.write_at(&[0; 10], 24_995).is_err());
        let t = f.table();
        assert_eq!(t.requests(Op::Write), 3);
        assert_eq!(t.errors(Op::Write), 1);
        assert_eq!(t.bytes(Op::Write), 1500);
        assert_eq!(t.requests(Op::Zero), 1);
        assert_eq!(t.bytes(Op::Zero), 4096);
        assert_eq!(t.requests(Op::Flush), 1);
        let text = t.report("test");
        assert!(
            text.starts_with("disksynth --filter stats (test) of export \"pat\" at "),
            "{text}"
        );
        assert!(text.contains("2 connections (2 open)"), "{text}");
        assert!(text.contains("conn 1 from unix:uid=1000,gid=100 (export \"pat\"): 3 requests, 1 errors, 0 bytes read, 1000 written"), "{text}");
        let row = text.lines().find(|l| l.starts_with("write ")).unwrap();
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(cols[1..4], ["3", "1", "1500"], "{row}");
        drop(a);
        assert!(t.report("test").contains("2 connections (1 open)"));
        drop((b, top));
        // Dropping the factory (the export) prints the table.
        drop(f);
        let printed = std::fs::read_to_string(&out).unwrap();
        // (The SIGUSR1 test, in this process too, may have printed it too.)
        assert!(
            printed.contains("disksynth --filter stats (exit)"),
            "{printed}"
        );
        assert!(printed.contains("latency, all ops"), "{printed}");
    }

    #[test]
    fn sigusr1_prints_every_live_table() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stats.txt");
        let f = factory(&out);
        let (dev, _) = testutil::base();
        let top = f.layer(dev, &client(9)).unwrap();
        let mut buf = [0u8; 4096];
        top.read_at(&mut buf, 0).unwrap();
        signal_hook::low_level::raise(signal_hook::consts::SIGUSR1).unwrap();
        // The printing thread answers within moments; wait up to 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("conn 9") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            text.starts_with("disksynth --filter stats (SIGUSR1)"),
            "{text:?}"
        );
        assert!(text.contains("4096"), "{text}");
    }
}
