//! The collector: what the view shows, counted as requests pass the layer
//! at the top of an export's stack. Every count is a relaxed atomic add on
//! a table sized at start (per op, per cell of the map, per piece of the
//! map, per connection), so a request never waits for a lock and memory
//! never grows with traffic. The web threads only read these counters;
//! the one lock (the list of connections) is taken when a client comes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use synth::{
    Admission, BlockDev, Client, ExtentList, Filter, Layer, LayerFactory, Peer, ReadChunk, Result,
    ZeroFlags,
};

use crate::map::DiskMap;

/// Latency histogram buckets: bucket `b` holds latencies needing `b` bits
/// in microseconds, `[2^(b-1), 2^b)`; the last takes anything longer.
pub const BUCKETS: usize = 40;

/// The ops the view counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `read_at` or a zero-copy read.
    Read,
    /// `write_at`.
    Write,
    /// `trim`.
    Trim,
    /// `write_zeroes`.
    Zero,
    /// `flush`.
    Flush,
    /// `cache`.
    Cache,
    /// `extents` (block status).
    Extents,
}

impl Op {
    /// Every op, in table order.
    pub const ALL: [Op; 7] = [
        Op::Read,
        Op::Write,
        Op::Trim,
        Op::Zero,
        Op::Flush,
        Op::Cache,
        Op::Extents,
    ];

    /// Its name in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Trim => "trim",
            Op::Zero => "zero",
            Op::Flush => "flush",
            Op::Cache => "cache",
            Op::Extents => "extents",
        }
    }
}

/// One op's counters.
#[derive(Debug)]
pub struct OpCounts {
    /// Requests.
    pub requests: AtomicU64,
    /// Failed requests.
    pub errors: AtomicU64,
    /// Bytes of the successful ones.
    pub bytes: AtomicU64,
    /// Latency histogram (see [`BUCKETS`]).
    pub hist: [AtomicU64; BUCKETS],
}

impl Default for OpCounts {
    fn default() -> Self {
        OpCounts {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The histogram bucket of a latency.
fn bucket(took: Duration) -> usize {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// The latency (µs, the bucket's upper bound) under which a fraction `p` of
/// the requests counted in `hist` completed: within a factor of two, what
/// a log2 histogram can say.
pub fn percentile(hist: &[u64; BUCKETS], p: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(1u64 << b);
        }
    }
    Some(1u64 << (BUCKETS - 1))
}

/// One connection's counters.
#[derive(Debug)]
pub struct Conn {
    /// Its number on the server.
    pub id: u64,
    /// Where it comes from.
    pub peer: String,
    /// When it came (since the collector started).
    pub since: Duration,
    /// Bytes read.
    pub read: AtomicU64,
    /// Bytes written (writes and zeroes).
    pub written: AtomicU64,
    /// Requests.
    pub requests: AtomicU64,
}

/// Per-cell activity, bytes.
#[derive(Debug, Default)]
pub struct CellCounts {
    /// Bytes read.
    pub read: AtomicU64,
    /// Bytes written (writes and zeroes).
    pub written: AtomicU64,
    /// Bytes trimmed.
    pub trimmed: AtomicU64,
}

/// Per-piece reads: what "most read" and "read last" are made of.
#[derive(Debug, Default)]
pub struct PieceCounts {
    /// Bytes read.
    pub read: AtomicU64,
    /// When last read: milliseconds since the collector started, plus one
    /// (0: never).
    pub last: AtomicU64,
}

/// Everything counted for one export.
pub struct Collector {
    /// The export's name (several exports: the page's choice).
    pub name: String,
    /// The disk's map.
    pub map: Arc<DiskMap>,
    /// When counting started.
    pub started: Instant,
    /// Per op, in [`Op::ALL`] order.
    pub ops: [OpCounts; 7],
    /// Per cell of the map.
    pub cells: Box<[CellCounts]>,
    /// Per piece of the map.
    pub pieces: Box<[PieceCounts]>,
    /// Connections so far.
    pub connections: AtomicU64,
    live: Mutex<Vec<Weak<Conn>>>,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Collector({:?}, {} cells)", self.name, self.cells.len())
    }
}

impl Collector {
    /// A collector for the disk `map` describes.
    pub fn new(name: impl Into<String>, map: DiskMap) -> Self {
        let cells = (0..map.cells().len())
            .map(|_| CellCounts::default())
            .collect();
        let pieces = (0..map.pieces().len())
            .map(|_| PieceCounts::default())
            .collect();
        Collector {
            name: name.into(),
            map: Arc::new(map),
            started: Instant::now(),
            ops: Default::default(),
            cells,
            pieces,
            connections: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        }
    }

    /// The open connections' counters.
    pub fn live(&self) -> Vec<Arc<Conn>> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().filter_map(Weak::upgrade).collect()
    }

    fn connect(&self, client: &Client) -> Arc<Conn> {
        let c = Arc::new(Conn {
            id: client.id,
            peer: client.peer.to_string(),
            since: self.started.elapsed(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        // The local client (a probe while the stack is built) is not a
        // connection.
        if !(client.id == 0 && client.peer == Peer::Other) {
            self.connections.fetch_add(1, Ordering::Relaxed);
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            // Closed connections go when the next one comes: the list is as
            // long as the number open.
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&c));
        }
        c
    }

    /// Count one request: `len` bytes at `offset`, started at `start`, its
    /// outcome and how long it took (no clock is read here).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        conn: &Conn,
        op: Op,
        offset: u64,
        len: u64,
        ok: bool,
        start: Instant,
        took: Duration,
    ) {
        let o = &self.ops[op as usize];
        o.requests.fetch_add(1, Ordering::Relaxed);
        o.hist[bucket(took)].fetch_add(1, Ordering::Relaxed);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            o.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        o.bytes.fetch_add(len, Ordering::Relaxed);
        match op {
            Op::Read => conn.read.fetch_add(len, Ordering::Relaxed),
            Op::Write | Op::Zero => conn.written.fetch_add(len, Ordering::Relaxed),
            _ => 0,
        };
        if len == 0 || !matches!(op, Op::Read | Op::Write | Op::Zero | Op::Trim) {
            return;
        }
        // The cells it touched: at most all of them (MAX_CELLS), however
        // long the request.
        let cell = self.map.cell_size();
        let end = offset.saturating_add(len).min(self.map.size());
        let mut at = offset;
        while at < end {
            let c = (at / cell) as usize;
            let next = ((c as u64 + 1) * cell).min(end);
            if let Some(counts) = self.cells.get(c) {
                let n = next - at;
                let counter = match op {
                    Op::Read => &counts.read,
                    Op::Trim => &counts.trimmed,
                    _ => &counts.written,
                };
                counter.fetch_add(n, Ordering::Relaxed);
            }
            at = next;
        }
        if op == Op::Read {
            // The pieces it read: as many as lie in the range (a large read
            // over small files touches each once).
            let now = (start.saturating_duration_since(self.started) + took).as_millis() as u64 + 1;
            for (i, p) in self.map.overlapping(offset, end - offset.min(end)) {
                let n = p.end().min(end) - p.offset.max(offset);
                if let Some(counts) = self.pieces.get(i) {
                    counts.read.fetch_add(n, Ordering::Relaxed);
                    counts.last.store(now, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The layer at the top of an export's stack that feeds a [`Collector`],
/// one per client.
#[derive(Debug)]
pub struct Watch {
    collector: Arc<Collector>,
    conn: Arc<Conn>,
}

impl Watch {
    fn timed<T>(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        call: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let r = call();
        let took = start.elapsed();
        self.collector
            .record(&self.conn, op, offset, len, r.is_ok(), start, took);
        r
    }
}

impl Filter for Watch {
    fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.timed(Op::Read, offset, len, || next.read_at(buf, offset))
    }
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.timed(Op::Write, offset, len, || next.write_at(buf, offset))
    }
    fn flush(&self, next: &dyn BlockDev) -> Result<()> {
        self.timed(Op::Flush, 0, 0, || next.flush())
    }
    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        self.timed(Op::Trim, offset, len, || next.trim(offset, len))
    }
    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        self.timed(Op::Zero, offset, len, || {
            next.write_zeroes(offset, len, flags)
        })
    }
    fn cache(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        self.timed(Op::Cache, offset, len, || next.cache(offset, len))
    }
    fn extents(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut ExtentList,
    ) -> Result<()> {
        self.timed(Op::Extents, offset, len, || next.extents(offset, len, out))
    }
    /// A zero-copy read is the read; a device that cannot describe it
    /// (`Ok(false)`) is read with `read_at` next, which is then counted,
    /// so it is not counted here too.
    fn read_chunks(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadChunk>,
    ) -> Result<bool> {
        let start = Instant::now();
        let r = next.read_chunks(offset, len, out);
        if !matches!(r, Ok(false)) {
            self.collector.record(
                &self.conn,
                Op::Read,
                offset,
                len,
                r.is_ok(),
                start,
                start.elapsed(),
            );
        }
        r
    }
}

/// Makes a [`Watch`] layer for each client of an export.
#[derive(Debug)]
pub struct WatchFactory {
    /// The export's collector.
    pub collector: Arc<Collector>,
}

impl LayerFactory for WatchFactory {
    fn name(&self) -> &str {
        "web"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, client: &Client) -> Result<Arc<dyn BlockDev>> {
        let conn = self.collector.connect(client);
        Ok(Arc::new(Layer::new(
            Watch {
                collector: self.collector.clone(),
                conn,
            },
            next,
        )))
    }
    fn admit(&self, _client: &Client) -> std::result::Result<Admission, String> {
        Ok(Admission::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synth::{Backing, CowOverlay, OverlayOptions, RegionMapBuilder};

    #[test]
    fn reads_writes_and_trims_light_their_cells_and_pieces() {
        let mut b = RegionMapBuilder::new();
        b.push_bytes("superblock", vec![1u8; 4096]).unwrap();
        b.push("free blocks", 7 * 4096, Backing::Zero).unwrap();
        let map: Arc<dyn BlockDev> = Arc::new(b.finish());
        let dev: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(map.clone(), OverlayOptions::default()).unwrap());
        let collector = Arc::new(Collector::new("", DiskMap::of(&*map)));
        let f = WatchFactory {
            collector: collector.clone(),
        };
        let client = Client {
            id: 1,
            peer: Peer::Other,
            export: String::new(),
        };
        let top = f.layer(dev, &client).unwrap();
        let mut buf = vec![0u8; 6000];
        top.read_at(&mut buf, 100).unwrap();
        top.write_at(&[7u8; 4096], 3 * 4096).unwrap();
        top.trim(5 * 4096, 8192).unwrap();
        // Out of bounds: an error, counted as one, lighting nothing.
        assert!(top.read_at(&mut buf, 8 * 4096 - 10).is_err());
        let cells: Vec<(u64, u64, u64)> = collector
            .cells
            .iter()
            .map(|c| {
                (
                    c.read.load(Ordering::Relaxed),
                    c.written.load(Ordering::Relaxed),
                    c.trimmed.load(Ordering::Relaxed),
                )
            })
            .collect();
        assert_eq!(
            cells,
            vec![
                (3996, 0, 0),
                (2004, 0, 0),
                (0, 0, 0),
                (0, 4096, 0),
                (0, 0, 0),
                (0, 0, 4096),
                (0, 0, 4096),
                (0, 0, 0)
            ]
        );
        let read = &collector.ops[Op::Read as usize];
        assert_eq!(read.requests.load(Ordering::Relaxed), 2);
        assert_eq!(read.errors.load(Ordering::Relaxed), 1);
        assert_eq!(read.bytes.load(Ordering::Relaxed), 6000);
        // The superblock piece and the free piece were read, and when.
        assert_eq!(collector.pieces[0].read.load(Ordering::Relaxed), 3996);
        assert_eq!(collector.pieces[1].read.load(Ordering::Relaxed), 2004);
        assert!(collector.pieces[0].last.load(Ordering::Relaxed) > 0);
        let live = collector.live();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].read.load(Ordering::Relaxed), 6000);
        assert_eq!(live[0].written.load(Ordering::Relaxed), 4096);
        drop((top, live));
        assert!(collector.live().is_empty());
    }

    #[test]
    fn percentiles_read_off_the_histogram() {
        let mut h = [0u64; BUCKETS];
        assert_eq!(percentile(&h, 0.5), None);
        h[3] = 90; // [4, 8) µs
        h[10] = 10; // [512, 1024) µs
        assert_eq!(percentile(&h, 0.5), Some(8));
        assert_eq!(percentile(&h, 0.9), Some(8));
        assert_eq!(percentile(&h, 0.99), Some(1024));
    }
}
