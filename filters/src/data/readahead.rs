//! `readahead[:size=SIZE]`: prefetch ahead of sequential reads, for any
//! source where one big read costs much less than many small ones (HTTP,
//! S3, a compressed image).
//!
//! The design follows the HTTP source's read-ahead (sources' `readahead.rs`)
//! and the Linux page cache's (`mm/readahead.c`), for the same reason: a
//! window started by any read that happens to touch an earlier one's end
//! fetches bytes nobody reads (a boot's scattered reads do that often). So:
//!
//! - A *stream* is a run of reads each starting exactly where the previous
//!   one ended. A read that continues no stream starts one and goes to the
//!   device beneath as it is: scattered reads never start windows.
//! - The first continuation that misses fetches the read plus as much again
//!   ahead; each later one fetches twice the stream's last window ahead, up
//!   to `size` (default 4 MiB).
//! - Reads served from a window still advance their stream, so a reader
//!   walking a window continues it into the next one.
//! - Reads of `size` or more go straight beneath: their cost is already
//!   amortized.
//!
//! Windows are kept in memory, shared by every client of the export (two
//! clients reading one file in turn share one fetch), at most
//! [`KEEP_WINDOWS`] × `size` bytes in at most [`MAX_WINDOWS`] pieces, oldest
//! dropped first, plus at most [`MAX_PENDING`] fetches in flight. A read
//! arriving while a window covering it is being fetched waits for it
//! rather than asking for the same bytes again. No thread is started: the
//! read that needs a window fetches it.
//!
//! Writes, zeroing and trims pass down and drop the windows they touch,
//! before and after; an epoch makes a fetch that overlapped one discard
//! what it read. Changes made to the source by others are seen once the
//! windows holding the old bytes are dropped (they are short-lived).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use synth::{check_range, BlockDev, Client, Layer, LayerFactory, Result};

use super::copies::{Copies, Copying};
use crate::{Below, FilterArgs, FilterError};

/// Default largest window.
const DEFAULT_SIZE: u64 = 4 << 20;
/// Bytes kept, as a multiple of the largest window: a few interleaved
/// streams.
pub const KEEP_WINDOWS: u64 = 4;
/// Windows kept, so a lookup scans a short list.
pub const MAX_WINDOWS: usize = 64;
/// Fetches in flight at once; further continuations read directly.
pub const MAX_PENDING: usize = 4;
/// Streams remembered (least recently continued forgotten first).
const MAX_STREAMS: usize = 16;

/// Read-ahead counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadAheadStats {
    /// Reads served entirely from memory.
    pub hits: u64,
    /// Windows fetched.
    pub windows: u64,
    /// Bytes fetched for windows (the reads themselves included).
    pub fetched: u64,
    /// Reads passed straight beneath.
    pub direct: u64,
}

#[derive(Debug)]
struct Window {
    start: u64,
    data: Arc<Vec<u8>>,
}

impl Window {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Where its next read starts.
    next: u64,
    /// Its last window's read-ahead (0: none yet).
    ahead: u64,
}

#[derive(Debug, Default)]
struct State {
    windows: VecDeque<Window>,
    kept: u64,
    /// Most recently continued last.
    streams: VecDeque<Stream>,
    /// Ranges being fetched.
    pending: Vec<(u64, u64)>,
    epoch: u64,
}

/// The read-ahead of one export: what every client's layer shares.
#[derive(Debug)]
struct ReadAhead {
    cap: u64,
    state: Mutex<State>,
    fetched_cv: Condvar,
    hits: AtomicU64,
    windows: AtomicU64,
    fetched: AtomicU64,
    direct: AtomicU64,
}

/// The next step of a read, decided under the lock.
enum Plan {
    /// Copy from this window, which starts at this offset.
    Copy(Arc<Vec<u8>>, u64),
    /// Wait for a fetch in flight that covers the bytes.
    Wait,
    /// Fetch `[pos, stop)` (registered as pending).
    Fetch(u64),
    /// Read the rest directly.
    Direct,
}

impl ReadAhead {
    fn new(cap: u64) -> Self {
        ReadAhead {
            cap,
            state: Mutex::new(State::default()),
            fetched_cv: Condvar::new(),
            hits: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            direct: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates leave the state consistent at every step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> ReadAheadStats {
        ReadAheadStats {
            hits: self.hits.load(Ordering::Relaxed),
            windows: self.windows.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            direct: self.direct.load(Ordering::Relaxed),
        }
    }

    /// Note a read of `[offset, end)` in the streams: whether it continues
    /// one (whose next read is then expected at `end`).
    fn follow(&self, st: &mut State, offset: u64, end: u64) -> bool {
        match st.streams.iter().position(|s| s.next == offset) {
            Some(i) => {
                let mut s = st.streams.remove(i).expect("found above");
                s.next = end;
                st.streams.push_back(s);
                true
            }
            None => {
                if st.streams.len() >= MAX_STREAMS {
                    st.streams.pop_front();
                }
                st.streams.push_back(Stream {
                    next: end,
                    ahead: 0,
                });
                false
            }
        }
    }

    /// The next step for the bytes `[pos, end)` of a read; `continues`:
    /// the read continues a stream (now expecting `end`).
    fn plan(&self, st: &mut State, pos: u64, end: u64, size: u64, continues: bool) -> Plan {
        if let Some(w) = st.windows.iter().find(|w| w.start <= pos && pos < w.end()) {
            return Plan::Copy(w.data.clone(), w.start);
        }
        if st.pending.iter().any(|&(s, e)| s <= pos && pos < e) {
            return Plan::Wait;
        }
        if !continues || end - pos >= self.cap || st.pending.len() >= MAX_PENDING {
            return Plan::Direct;
        }
        let Some(stream) = st.streams.iter_mut().rev().find(|s| s.next == end) else {
            return Plan::Direct;
        };
        // The first window looks as far ahead as the read was long; each
        // later one twice the last.
        let ahead = if stream.ahead == 0 {
            end - pos
        } else {
            stream.ahead.saturating_mul(2)
        }
        .min(self.cap);
        stream.ahead = ahead;
        // Not into bytes already here or being brought by another fetch
        // (readers in step with each other would fetch them twice).
        let mut stop = end.saturating_add(ahead).min(size);
        let starts = st.pending.iter().map(|p| p.0);
        for ps in starts.chain(st.windows.iter().map(|w| w.start)) {
            if ps >= end && ps < stop {
                stop = ps;
            }
        }
        st.pending.push((pos, stop));
        Plan::Fetch(stop)
    }

    fn read(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = next.size();
        check_range(offset, buf.len() as u64, size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let mut st = self.lock();
        let continues = self.follow(&mut st, offset, end);
        let mut pos = offset;
        let mut from_memory = true;
        while pos < end {
            match self.plan(&mut st, pos, end, size, continues) {
                Plan::Copy(data, start) => {
                    drop(st);
                    let n = (start + data.len() as u64).min(end) - pos;
                    let i = (pos - start) as usize;
                    buf[(pos - offset) as usize..(pos - offset + n) as usize]
                        .copy_from_slice(&data[i..i + n as usize]);
                    pos += n;
                    st = self.lock();
                }
                Plan::Wait => {
                    st = self.fetched_cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                Plan::Fetch(stop) => {
                    from_memory = false;
                    let epoch = st.epoch;
                    drop(st);
                    let mut data = vec![0u8; (stop - pos) as usize];
                    let r = next.read_at(&mut data, pos);
                    st = self.lock();
                    st.pending.retain(|&p| p != (pos, stop));
                    self.fetched_cv.notify_all();
                    if let Err(e) = r {
                        if stop == end {
                            return Err(e);
                        }
                        // The failure may lie only in the bytes ahead,
                        // which nobody asked for: the request's own bytes
                        // are read alone before it is called failed.
                        drop(st);
                        self.direct.fetch_add(1, Ordering::Relaxed);
                        return next.read_at(&mut buf[(pos - offset) as usize..], pos);
                    }
                    self.windows.fetch_add(1, Ordering::Relaxed);
                    self.fetched.fetch_add(stop - pos, Ordering::Relaxed);
                    let n = (end - pos) as usize;
                    buf[(pos - offset) as usize..].copy_from_slice(&data[..n]);
                    // A write that overlapped the fetch may have changed
                    // what it read: the request still gets these bytes (the
                    // two were in flight together), later ones do not.
                    if st.epoch == epoch {
                        self.keep(&mut st, pos, data);
                    }
                    pos = end;
                }
                Plan::Direct => {
                    drop(st);
                    self.direct.fetch_add(1, Ordering::Relaxed);
                    next.read_at(&mut buf[(pos - offset) as usize..], pos)?;
                    return Ok(());
                }
            }
        }
        if from_memory {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Keep a fetched window, dropping the oldest beyond the budget.
    fn keep(&self, st: &mut State, start: u64, data: Vec<u8>) {
        st.kept += data.len() as u64;
        st.windows.push_back(Window {
            start,
            data: Arc::new(data),
        });
        while st.kept > KEEP_WINDOWS * self.cap || st.windows.len() > MAX_WINDOWS {
            let Some(w) = st.windows.pop_front() else {
                break;
            };
            st.kept -= w.data.len() as u64;
        }
    }

    /// Drop the windows `len` bytes at `offset` touch; fetches in flight
    /// discard what they read.
    fn invalidate(&self, offset: u64, len: u64) {
        let mut st = self.lock();
        st.epoch += 1;
        let end = offset.saturating_add(len);
        let before = st.windows.len();
        st.windows.retain(|w| w.end() <= offset || w.start >= end);
        if st.windows.len() != before {
            st.kept = st.windows.iter().map(|w| w.data.len() as u64).sum();
        }
    }
}

/// Makes `readahead` layers, all over one set of streams and windows.
#[derive(Debug)]
pub struct ReadAheadFactory {
    ra: Arc<ReadAhead>,
}

impl ReadAheadFactory {
    /// Windows of at most `cap` bytes.
    pub fn new(cap: u64) -> Self {
        ReadAheadFactory {
            ra: Arc::new(ReadAhead::new(cap)),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ReadAheadStats {
        self.ra.stats()
    }
}

pub(crate) fn build(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    args.allow(&["size"], 0)?;
    let cap = args.size("size")?.unwrap_or(DEFAULT_SIZE);
    if !(64 << 10..=256 << 20).contains(&cap) {
        return Err(args.invalid(format!(
            "size={cap}: between 64K and 256M (the memory kept is {KEEP_WINDOWS} times it)"
        )));
    }
    Ok(Arc::new(ReadAheadFactory::new(cap)))
}

impl LayerFactory for ReadAheadFactory {
    fn name(&self) -> &str {
        "readahead"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        Ok(Arc::new(Layer::new(Copying(self.ra.clone()), next)))
    }
}

impl Copies for ReadAhead {
    fn read(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        ReadAhead::read(self, next, buf, offset)
    }
    fn invalidate(&self, offset: u64, len: u64) {
        ReadAhead::invalidate(self, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use synth::testing::check_dev;
    use synth::{CowOverlay, ErrorKind, OverlayOptions, ZeroFlags};

    use super::*;
    use crate::data::testutil::{
        base, below, race_writes_and_reads, sized, BadRange, Counting, SlowRw,
    };

    fn layer(cap: u64, dev: Arc<dyn BlockDev>) -> (Arc<ReadAheadFactory>, Arc<dyn BlockDev>) {
        let f = Arc::new(ReadAheadFactory::new(cap));
        let l = f.layer(dev, &Client::local()).unwrap();
        (f, l)
    }

    #[test]
    fn conformance() {
        let (dev, expected) = base();
        let (_, l) = layer(64 << 10, dev);
        check_dev(&*l, &expected, &[5_000]);
        // Again, with windows now in memory.
        check_dev(&*l, &expected, &[5_000]);
    }

    #[test]
    fn sequential_reads_are_fetched_in_growing_windows() {
        let (dev, expected) = sized(0, 4 << 20);
        let counting = Counting::new(dev);
        let (f, l) = layer(1 << 20, counting.clone());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        for off in (0..4u64 << 20).step_by(16 << 10) {
            l.read_at(&mut buf, off).unwrap();
            got.extend_from_slice(&buf);
        }
        assert!(got == expected);
        let s = f.stats();
        // 256 reads of 16 KiB reached the device beneath in far fewer
        // reads, and nothing was read twice.
        assert!(counting.reads() < 20, "{} reads: {s:?}", counting.reads());
        assert_eq!(counting.bytes(), 4 << 20, "{s:?}");
        assert!(s.hits > 200, "{s:?}");
        // Windows grew up to the cap: the last ones are 1 MiB ahead.
        assert!(s.windows < 12, "{s:?}");
    }

    #[test]
    fn scattered_reads_never_start_windows() {
        let (dev, expected) = sized(0, 4 << 20);
        let counting = Counting::new(dev);
        let (f, l) = layer(1 << 20, counting.clone());
        let mut buf = vec![0u8; 4096];
        let mut rng = synth::testing::Rng(7);
        for _ in 0..200 {
            let off = rng.below((4 << 20) - 4096);
            l.read_at(&mut buf, off).unwrap();
            assert_eq!(&buf[..], &expected[off as usize..off as usize + 4096]);
        }
        assert_eq!(f.stats().windows, 0);
        assert_eq!(counting.bytes(), 200 * 4096);
    }

    #[test]
    fn windows_stop_at_the_end_and_memory_is_bounded() {
        let (dev, expected) = sized(0, 1_000_000);
        let counting = Counting::new(dev);
        let (f, l) = layer(64 << 10, counting.clone());
        // Four interleaved streams over the whole device, reads crossing
        // window edges (7000 bytes each).
        let starts = [0u64, 250_000, 500_000, 750_000];
        let mut pos = starts;
        let mut buf = vec![0u8; 7000];
        loop {
            let mut any = false;
            for (k, p) in pos.iter_mut().enumerate() {
                let stop = starts.get(k + 1).copied().unwrap_or(1_000_000);
                if *p >= stop {
                    continue;
                }
                any = true;
                let n = (stop - *p).min(7000) as usize;
                l.read_at(&mut buf[..n], *p).unwrap();
                assert_eq!(&buf[..n], &expected[*p as usize..*p as usize + n]);
                *p += n as u64;
            }
            if !any {
                break;
            }
            let st = f.ra.lock();
            assert!(st.kept <= KEEP_WINDOWS * (64 << 10));
            assert!(st.windows.iter().all(|w| w.end() <= 1_000_000));
        }
        assert!(f.stats().hits > 0);
        // The last byte, alone, at the end.
        let mut one = [0u8; 1];
        l.read_at(&mut one, 999_999).unwrap();
        assert_eq!(one[0], expected[999_999]);
        assert_eq!(
            l.read_at(&mut one, 1_000_000).unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
    }

    #[test]
    fn writes_drop_the_windows_they_touch() {
        let (dev, mut expected) = base();
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        let (f, l) = layer(64 << 10, ov);
        let mut buf = vec![0u8; 1000];
        for off in (0..10_000).step_by(1000) {
            l.read_at(&mut buf, off).unwrap();
        }
        assert!(f.stats().windows > 0);
        l.write_at(b"fresh", 10_500).unwrap();
        expected[10_500..10_505].copy_from_slice(b"fresh");
        l.write_zeroes(12_000, 100, ZeroFlags::default()).unwrap();
        expected[12_000..12_100].fill(0);
        l.read_at(&mut buf, 10_000).unwrap();
        assert_eq!(&buf[..], &expected[10_000..11_000]);
        check_dev(&*l, &expected, &[10_500, 12_000]);
    }

    #[test]
    fn concurrent_sequential_readers_share_windows() {
        let (dev, expected) = sized(0, 2 << 20);
        let counting = Counting::new(dev);
        // Room for the whole device: whatever the threads' timing, what is
        // fetched once stays for the others.
        let (f, _) = layer(1 << 20, counting.clone());
        let barrier = Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                // Each client its own layer over the shared read-ahead.
                let l = f.layer(counting.clone(), &Client::local()).unwrap();
                let (barrier, expected) = (&barrier, &expected);
                s.spawn(move || {
                    barrier.wait();
                    let mut buf = vec![0u8; 32 << 10];
                    for off in (0..2u64 << 20).step_by(32 << 10) {
                        l.read_at(&mut buf, off).unwrap();
                        assert!(buf[..] == expected[off as usize..off as usize + (32 << 10)]);
                    }
                });
            }
        });
        // Four readers of 2 MiB each: the windows were shared, so much
        // less than 8 MiB came from beneath.
        assert!(
            counting.bytes() < 6 << 20,
            "{}: {:?}",
            counting.bytes(),
            f.stats()
        );
    }

    #[test]
    fn size_is_bounded() {
        let (dev, _) = base();
        for bad in ["readahead:size=1K", "readahead:size=1G", "readahead:4M"] {
            assert!(crate::build(bad, &below(&dev)).is_err(), "{bad}");
        }
        crate::build("readahead", &below(&dev)).unwrap();
        crate::build("readahead:size=1M", &below(&dev)).unwrap();
    }

    #[test]
    fn a_failure_in_the_bytes_ahead_does_not_fail_the_read() {
        let (dev, expected) = sized(0, 1 << 20);
        let bad: Arc<dyn BlockDev> = Arc::new(BadRange {
            inner: dev,
            bad: (600_000, 600_001),
        });
        let (f, l) = layer(256 << 10, bad);
        let mut buf = vec![0u8; 16 << 10];
        let mut off = 0u64;
        // Every read before the bad byte succeeds, though windows reach it.
        while off + (16 << 10) <= 600_000 {
            l.read_at(&mut buf, off).unwrap();
            assert!(buf[..] == expected[off as usize..off as usize + buf.len()]);
            off += 16 << 10;
        }
        assert!(f.stats().windows > 0);
        assert_eq!(l.read_at(&mut buf, off).unwrap_err().kind(), ErrorKind::Io);
        assert!(f.ra.lock().pending.is_empty());
        // And past it, reading goes on.
        l.read_at(&mut buf, 600_001).unwrap();
        assert!(buf[..] == expected[600_001..600_001 + buf.len()]);
    }

    #[test]
    fn more_streams_than_remembered_and_fetches_than_allowed() {
        let (dev, expected) = sized(0, 4 << 20);
        let (f, _) = layer(64 << 10, dev.clone());
        let n = MAX_STREAMS as u64 + 4;
        let stride = (4u64 << 20) / n;
        std::thread::scope(|s| {
            for k in 0..n {
                let l = f.layer(dev.clone(), &Client::local()).unwrap();
                let expected = &expected;
                s.spawn(move || {
                    let mut buf = vec![0u8; 5000];
                    let mut at = k * stride;
                    while at + 5000 <= (k + 1) * stride {
                        l.read_at(&mut buf, at).unwrap();
                        assert!(buf[..] == expected[at as usize..at as usize + 5000]);
                        at += 5000;
                    }
                });
            }
        });
        let st = f.ra.lock();
        assert!(st.streams.len() <= MAX_STREAMS && st.windows.len() <= MAX_WINDOWS);
        assert!(st.pending.is_empty());
    }

    #[test]
    fn empty_disks_and_reads_as_big_as_the_window() {
        let (empty, _) = sized(0, 0);
        let (_, l) = layer(64 << 10, empty);
        check_dev(&*l, &[], &[]);
        let (dev, expected) = sized(0, 1 << 20);
        let counting = Counting::new(dev);
        let (f, l) = layer(64 << 10, counting.clone());
        let mut buf = vec![0u8; 64 << 10];
        for off in (0..1u64 << 20).step_by(64 << 10) {
            l.read_at(&mut buf, off).unwrap();
            assert!(buf[..] == expected[off as usize..off as usize + buf.len()]);
        }
        // Reads of the window's size gain nothing from one: none fetched.
        assert_eq!(f.stats().windows, 0);
        assert_eq!(counting.bytes(), 1 << 20);
    }

    #[test]
    fn reads_racing_writes_never_keep_old_bytes() {
        let (dev, _) = sized(0, 64 * 4096);
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        let (f, l) = layer(64 << 10, Arc::new(SlowRw(ov)));
        race_writes_and_reads(&l, 4096, 64);
        assert!(f.stats().windows > 0, "{:?}", f.stats());
    }
}
