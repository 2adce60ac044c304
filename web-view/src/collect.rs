//! The collector: what the view shows, counted as requests pass the layer
//! at the top of an export's stack. Every count is a relaxed atomic add on
//! a table sized at start (per op, per cell of the map, per piece of the
//! map, per connection), so a request never waits for a lock and memory
//! never grows with traffic. The web threads only read these counters;
//! the one lock (the list of connections) is taken when a client comes.
//!
//! The counters a connection's worker threads all add to (per op, per
//! connection, per cell) are kept in [`SHARDS`] copies on their own cache
//! lines, a thread adding to its own and the sampler summing them: one
//! table shared by every thread made each request move several cache lines
//! between cores, which measured 200 ns a request on two cores
//! (`examples/cost.rs`), 5 to 10 % of a 4 KiB-request read.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use synth::{
    Admission, BlockDev, Client, ExtentList, Filter, Layer, LayerFactory, Peer, ReadChunk, Result,
    ZeroFlags,
};

use crate::map::DiskMap;

pub use synth::latency::{percentile, BUCKETS};
pub use synth::Op;

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
    synth::latency::bucket(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))
}

/// Copies of the counters many threads add to (see the module's comment).
pub const SHARDS: usize = 8;

/// One request in this many has its latency measured (the first of each
/// thread too): reading the clock twice cost more than all the counting
/// (80 of 145 ns a request, `examples/cost.rs`), and percentiles of a
/// log2 histogram are as good from a fair sample.
pub const TIME_ONE_IN: u32 = 8;

/// Whether the calling thread's next request is timed.
fn timed_now() -> bool {
    thread_local! {
        static COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    COUNT.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n % TIME_ONE_IN == 0
    })
}

/// The copy the calling thread adds to: threads take them in turn as they
/// first count, so a connection's workers spread over all of them.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|m| *m)
}

/// One shard of the per-op counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct OpShard([OpCounts; 7]);

/// One shard of a connection's counters, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ConnShard {
    read: AtomicU64,
    written: AtomicU64,
    requests: AtomicU64,
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
    shards: [ConnShard; SHARDS],
}

impl Conn {
    fn sum(&self, f: impl Fn(&ConnShard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }
    /// Bytes read.
    pub fn read(&self) -> u64 {
        self.sum(|s| &s.read)
    }
    /// Bytes written (writes and zeroes).
    pub fn written(&self) -> u64 {
        self.sum(|s| &s.written)
    }
    /// Requests.
    pub fn requests(&self) -> u64 {
        self.sum(|s| &s.requests)
    }
}

/// An op's counters, summed over the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTotals {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Bytes of the successful ones.
    pub bytes: u64,
    /// Latency histogram (see [`BUCKETS`]).
    pub hist: [u64; BUCKETS],
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
    /// Per shard, per op in [`Op::ALL`] order.
    ops: Box<[OpShard]>,
    /// Per shard, per cell of the map (shard `s`, cell `c` at
    /// `s * cells + c`).
    cells: Box<[CellCounts]>,
    /// Cells in the map.
    ncells: usize,
    /// Per piece of the map.
    pub pieces: Box<[PieceCounts]>,
    /// Connections so far.
    pub connections: AtomicU64,
    live: Mutex<Vec<Weak<Conn>>>,
    /// Milliseconds since `started`, plus one, as the sampler last set it
    /// (every [`CLOCK_STEP`]): what "read last" is stamped with, without a
    /// clock read per request.
    clock: AtomicU64,
}

/// How often the sampler moves the collectors' clock.
pub const CLOCK_STEP: Duration = Duration::from_millis(50);

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Collector({:?}, {} cells)", self.name, self.ncells)
    }
}

impl Collector {
    /// A collector for the disk `map` describes.
    pub fn new(name: impl Into<String>, map: DiskMap) -> Self {
        let ncells = map.cells().len();
        let cells = (0..ncells * SHARDS)
            .map(|_| CellCounts::default())
            .collect();
        let pieces = (0..map.pieces().len())
            .map(|_| PieceCounts::default())
            .collect();
        Collector {
            name: name.into(),
            map: Arc::new(map),
            started: Instant::now(),
            ops: (0..SHARDS).map(|_| OpShard::default()).collect(),
            cells,
            ncells,
            pieces,
            connections: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            clock: AtomicU64::new(1),
        }
    }

    /// Move the clock requests are stamped with to now (the sampler does,
    /// every [`CLOCK_STEP`]).
    pub fn set_clock(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.clock.store(ms + 1, Ordering::Relaxed);
    }

    /// Op `op`'s counters so far.
    pub fn op(&self, op: Op) -> OpTotals {
        let mut t = OpTotals {
            requests: 0,
            errors: 0,
            bytes: 0,
            hist: [0; BUCKETS],
        };
        for s in self.ops.iter() {
            let o = &s.0[op as usize];
            t.requests += o.requests.load(Ordering::Relaxed);
            t.errors += o.errors.load(Ordering::Relaxed);
            t.bytes += o.bytes.load(Ordering::Relaxed);
            for (b, h) in t.hist.iter_mut().zip(o.hist.iter()) {
                *b += h.load(Ordering::Relaxed);
            }
        }
        t
    }

    /// Cells in the map.
    pub fn cell_count(&self) -> usize {
        self.ncells
    }

    /// Cell `c`'s bytes read, written and trimmed so far.
    pub fn cell(&self, c: usize) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for s in 0..SHARDS {
            if let Some(k) = self.cells.get(s * self.ncells + c) {
                t.0 += k.read.load(Ordering::Relaxed);
                t.1 += k.written.load(Ordering::Relaxed);
                t.2 += k.trimmed.load(Ordering::Relaxed);
            }
        }
        t
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
            shards: Default::default(),
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

    /// Whether to time the calling thread's next request of `op`: one in
    /// [`TIME_ONE_IN`], and every one until the thread's shard has counted a
    /// few (so a short session has percentiles too).
    fn should_time(&self, op: Op) -> bool {
        let early = self
            .ops
            .get(shard())
            .is_some_and(|s| s.0[op as usize].requests.load(Ordering::Relaxed) < 64);
        timed_now() || early
    }

    /// Count one request: `len` bytes at `offset`, its outcome and, when it
    /// was timed, how long it took (no clock is read here).
    fn record(&self, conn: &Conn, op: Op, offset: u64, len: u64, ok: bool, took: Option<Duration>) {
        let shard = shard();
        let Some(o) = self.ops.get(shard).map(|s| &s.0[op as usize]) else {
            return;
        };
        let k = &conn.shards[shard];
        o.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            o.hist[bucket(took)].fetch_add(1, Ordering::Relaxed);
        }
        k.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            o.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        o.bytes.fetch_add(len, Ordering::Relaxed);
        match op {
            Op::Read => k.read.fetch_add(len, Ordering::Relaxed),
            Op::Write | Op::Zero => k.written.fetch_add(len, Ordering::Relaxed),
            _ => 0,
        };
        if len == 0 || !matches!(op, Op::Read | Op::Write | Op::Zero | Op::Trim) {
            return;
        }
        // The cells it touched: at most all of them (MAX_CELLS), however
        // long the request.
        let cell = self.map.cell_size();
        let end = offset.saturating_add(len).min(self.map.size());
        let cells = self.cells.get(shard * self.ncells..).unwrap_or_default();
        let mut at = offset;
        while at < end {
            let c = (at / cell) as usize;
            let next = ((c as u64 + 1) * cell).min(end);
            if let Some(counts) = cells.get(c) {
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
            let now = self.clock.load(Ordering::Relaxed);
            for (i, p) in self.map.overlapping(offset, end - offset.min(end)) {
                let n = p.end().min(end) - p.offset.max(offset);
                if let Some(counts) = self.pieces.get(i) {
                    counts.read.fetch_add(n, Ordering::Relaxed);
                    // Stored once a millisecond at most: a line many threads
                    // only read stays in every core's cache.
                    if counts.last.load(Ordering::Relaxed) != now {
                        counts.last.store(now, Ordering::Relaxed);
                    }
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
        let start = self.collector.should_time(op).then(Instant::now);
        let r = call();
        let took = start.map(|s| s.elapsed());
        self.collector
            .record(&self.conn, op, offset, len, r.is_ok(), took);
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
        let start = self.collector.should_time(Op::Read).then(Instant::now);
        let r = next.read_chunks(offset, len, out);
        if !matches!(r, Ok(false)) {
            self.collector.record(
                &self.conn,
                Op::Read,
                offset,
                len,
                r.is_ok(),
                start.map(|s| s.elapsed()),
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
        let cells: Vec<(u64, u64, u64)> = (0..collector.cell_count())
            .map(|c| collector.cell(c))
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
        let read = collector.op(Op::Read);
        assert_eq!(read.requests, 2);
        assert_eq!(read.errors, 1);
        assert_eq!(read.bytes, 6000);
        // The first requests are all timed.
        assert_eq!(read.hist.iter().sum::<u64>(), 2);
        // The superblock piece and the free piece were read, and when.
        assert_eq!(collector.pieces[0].read.load(Ordering::Relaxed), 3996);
        assert_eq!(collector.pieces[1].read.load(Ordering::Relaxed), 2004);
        assert!(collector.pieces[0].last.load(Ordering::Relaxed) > 0);
        let live = collector.live();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].read(), 6000);
        assert_eq!(live[0].written(), 4096);
        drop((top, live));
        assert!(collector.live().is_empty());
    }
}
