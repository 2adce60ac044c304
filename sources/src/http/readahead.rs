//! Read-ahead shared by every connection of a device, grown only by reads
//! that really continue one another.
//!
//! NBD clients read in small pieces (often 4 KiB to 2 MiB); one HTTP request
//! per piece costs a round trip each. A fixed window started whenever a read
//! began where an earlier one ended did not earn its keep: a Linux boot's
//! small scattered reads often touch an earlier read's end by chance, and
//! each such touch pulled a 4 MiB window that went unread (a boot fetched
//! 193–253 MiB where one request per read fetched 92 MiB). So, like the
//! Linux page cache's read-ahead (`mm/readahead.c`: an initial window sized
//! by the request, doubled on each confirmed sequential hit):
//!
//! - A *stream* is a run of reads each starting exactly where the previous
//!   one ended. A read that continues no stream starts one and goes to the
//!   origin as it is: scattered reads never start windows.
//! - The first continuation fetches a window the size of the read; each later
//!   one that runs past the stream's window fetches one twice as big, up to
//!   the `--readahead` cap.
//! - When a window is dropped with bytes no client read, those bytes are
//!   counted as wasted and the stream's next window is half the dropped one.
//! - Small reads (up to [`DIRECT_READ`]) are kept too, in the same byte
//!   budget: firmware and boot loaders read the same sectors (GPT, FAT,
//!   directories) again and again, and a re-read served from memory is a
//!   request saved.
//!
//! Reads arriving while a window (or a small read that will be kept) that
//! covers them is being fetched wait for it instead of asking for the same
//! bytes, and a window stops where a read in flight begins. Reads of [`DIRECT_READ`] or more
//! go straight to the origin (without a window). Memory is bounded per device whatever the
//! number of clients: at most [`KEEP_WINDOWS`] times the cap kept (in at
//! most [`MAX_ENTRIES`] pieces) plus [`MAX_PENDING`] windows being fetched.
//! No thread is started: the read that needs a window fetches it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::HttpError;

/// Bytes kept, as a multiple of the cap: a few interleaved streams' windows
/// plus the small reads a boot repeats (measured on a Linux UEFI boot: with
/// 4 the repeats were evicted before they came back, and 6 fetched 25 %
/// fewer requests; 8 saved no more).
const KEEP_WINDOWS: u64 = 6;
/// Pieces kept (windows and small reads), so a lookup scans a short list.
const MAX_ENTRIES: usize = 128;
/// Windows being fetched at once; further reads go direct.
const MAX_PENDING: usize = 4;
/// Reads this big go straight to the origin, and are not kept past it: their
/// round trip is already amortized, and several of them run in parallel where a
/// window's fetch makes the reads behind it wait (measured: sequential
/// 256 KiB reads ran ~20% faster direct).
const DIRECT_READ: u64 = 128 << 10;
/// Streams remembered (least recently continued dropped first).
const MAX_STREAMS: usize = 32;
/// Granularity at which a window's read bytes are tracked.
const PAGE: u64 = 4096;

/// Where bytes come from below the read-ahead (the disk cache or the origin).
pub(crate) type Fill<'a> = dyn Fn(u64, &mut [u8]) -> Result<(), HttpError> + 'a;

/// Read-ahead counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReadAheadStats {
    /// Client reads served entirely from memory.
    pub(crate) hits: u64,
    /// Bytes fetched ahead of the reads and dropped before any client read
    /// them.
    pub(crate) wasted: u64,
}

/// A piece of the file kept in memory.
#[derive(Debug)]
struct Entry {
    start: u64,
    data: Arc<Vec<u8>>,
    /// The stream whose read-ahead fetched it (`None`: a small read kept).
    stream: Option<u64>,
    /// One bit per [`PAGE`]: read by a client.
    read: Vec<u64>,
}

impl Entry {
    fn new(start: u64, data: Vec<u8>, stream: Option<u64>) -> Self {
        let pages = (data.len() as u64).div_ceil(PAGE);
        let words = if stream.is_some() {
            pages.div_ceil(64) as usize
        } else {
            0
        };
        Entry {
            start,
            data: Arc::new(data),
            stream,
            read: vec![0; words],
        }
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn end(&self) -> u64 {
        self.start + self.len()
    }

    /// Note `[from, to)` (absolute offsets inside the entry) as read.
    fn mark(&mut self, from: u64, to: u64) {
        if self.read.is_empty() || from >= to {
            return;
        }
        for page in (from - self.start) / PAGE..=(to - 1 - self.start) / PAGE {
            self.read[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Bytes of pages no client read (read-ahead entries only).
    fn unread(&self) -> u64 {
        if self.read.is_empty() {
            return 0;
        }
        let len = self.len();
        (0..len.div_ceil(PAGE))
            .filter(|&p| self.read[(p / 64) as usize] & (1 << (p % 64)) == 0)
            .map(|p| (len - p * PAGE).min(PAGE))
            .sum()
    }
}

/// A run of reads each starting where the previous one ended.
#[derive(Debug, Clone, Copy)]
struct Stream {
    id: u64,
    /// Where its next read starts (noted on arrival, not completion: a
    /// pipelining client has the next request in flight before this one is
    /// answered).
    next: u64,
    /// Size of its next window (0: the size of the read that needs it).
    window: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Least recently used first.
    entries: VecDeque<Entry>,
    /// Bytes in `entries`.
    kept: u64,
    /// `[start, end)` of windows being fetched.
    pending: Vec<(u64, u64)>,
    /// `[start, end)` of reads gone to the origin without a window and not
    /// yet answered, and whether they will be kept: a window started
    /// meanwhile stops where one begins, and a read of bytes one will keep
    /// waits for it, so no byte is asked for twice (two clients booting the
    /// same image read the same sectors at the same moment).
    direct: Vec<(u64, u64, bool)>,
    /// Least recently continued first.
    streams: VecDeque<Stream>,
    next_id: u64,
    stats: ReadAheadStats,
}

impl State {
    /// The stream a read of `[offset, end)` belongs to, moved to the back
    /// (a new one if none), and whether the read may start a window there.
    ///
    /// A read continues a stream when it starts exactly at the stream's
    /// `next`. A pipelining client's reads of one stream also reach the
    /// server out of order (its worker threads race), so once a stream is
    /// confirmed (it has a window size) a read up to one window ahead of
    /// `next` continues it too, and `next` moves to its end; a read at most
    /// one window behind is a straggler of the stream: it belongs to it but
    /// starts no window (the bytes after it are already asked for). Reads
    /// near no confirmed stream must match exactly: scattered reads never
    /// grow anything.
    fn stream(&mut self, offset: u64, end: u64) -> (u64, bool) {
        let near = |s: &Stream| {
            s.window > 0
                && offset <= s.next.saturating_add(s.window)
                && s.next <= end.saturating_add(s.window)
        };
        let found = match self.streams.iter().position(|s| s.next == offset) {
            Some(i) => Some(i),
            None => self.streams.iter().rposition(near),
        };
        let (mut s, cont) = match found.and_then(|i| self.streams.remove(i)) {
            Some(s) => {
                let ahead = offset >= s.next;
                (s, ahead)
            }
            None => {
                self.next_id += 1;
                let s = Stream {
                    id: self.next_id,
                    next: end,
                    window: 0,
                };
                (s, false)
            }
        };
        s.next = s.next.max(end);
        if self.streams.len() == MAX_STREAMS {
            self.streams.pop_front();
        }
        self.streams.push_back(s);
        (s.id, cont)
    }

    fn stream_mut(&mut self, id: u64) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// Keep `entry`, dropping the least recently used ones past the budget.
    /// A dropped read-ahead window with unread bytes counts them as wasted
    /// and halves its stream's next window.
    fn keep(&mut self, entry: Entry, budget: u64) {
        while !self.entries.is_empty()
            && (self.kept + entry.len() > budget || self.entries.len() >= MAX_ENTRIES)
        {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.kept -= old.len();
            let unread = old.unread();
            if unread > 0 {
                self.stats.wasted += unread;
                if let Some(s) = old.stream.and_then(|id| self.stream_mut(id)) {
                    s.window = old.len() / 2;
                }
            }
        }
        if entry.len() <= budget {
            self.kept += entry.len();
            self.entries.push_back(entry);
        }
    }
}

/// The read-ahead of one device.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    /// The cap on a window (0 disables read-ahead and keeping).
    window: u64,
    size: u64,
    state: Mutex<State>,
    fetched: Condvar,
}

impl ReadAhead {
    /// Windows of at most `window` bytes (0 disables) on a device of `size`
    /// bytes.
    pub(crate) fn new(window: u64, size: u64) -> Self {
        ReadAhead {
            window,
            size,
            state: Mutex::new(State::default()),
            fetched: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn budget(&self) -> u64 {
        self.window.saturating_mul(KEEP_WINDOWS)
    }

    pub(crate) fn stats(&self) -> ReadAheadStats {
        self.lock().stats
    }

    /// Fill `buf` with the bytes at `offset` (in range), from memory where
    /// possible, else through `fill`.
    pub(crate) fn read(
        &self,
        buf: &mut [u8],
        offset: u64,
        fill: &Fill<'_>,
    ) -> Result<(), HttpError> {
        if self.window == 0 {
            return fill(offset, buf);
        }
        let end = offset + buf.len() as u64;
        let mut st = self.lock();
        let (stream, mut sequential) = st.stream(offset, end);
        let mut done = 0usize;
        loop {
            let pos = offset + done as u64;
            if pos == end {
                st.stats.hits += 1;
                return Ok(());
            }
            // The most recently kept piece first: the freshest bytes.
            if let Some(i) = st
                .entries
                .iter()
                .rposition(|e| e.start <= pos && pos < e.end())
            {
                if let Some(mut e) = st.entries.remove(i) {
                    let from = (pos - e.start) as usize;
                    let n = (e.data.len() - from).min(buf.len() - done);
                    buf[done..done + n].copy_from_slice(&e.data[from..from + n]);
                    e.mark(pos, pos + n as u64);
                    // Reading into a stream's window continues it.
                    sequential |= e.stream.is_some();
                    st.entries.push_back(e);
                    done += n;
                }
                continue;
            }
            if st.pending.iter().any(|&(s, e)| s <= pos && pos < e)
                || st
                    .direct
                    .iter()
                    .any(|&(s, e, kept)| kept && s <= pos && pos < e)
            {
                st = self.fetched.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            break;
        }
        let pos = offset + done as u64;
        let rest = &mut buf[done..];
        let rest_len = rest.len() as u64;
        // A read that ran off the end of a kept piece continues a stream
        // too (the piece was its previous read).
        let start_window =
            (sequential || done > 0) && rest_len < DIRECT_READ && st.pending.len() < MAX_PENDING;
        if !start_window {
            // Reads of DIRECT_READ exactly are kept too: the Linux page
            // cache's own read-ahead unit, which a boot's firmware and
            // loader stages re-read. Reads of a stream are not: a
            // sequential reader does not come back, and its pieces would
            // push out the windows it is reading.
            let kept = rest_len <= DIRECT_READ && !sequential;
            st.direct.push((pos, end, kept));
            drop(st);
            let result = fill(pos, rest);
            let mut st = self.lock();
            if let Some(i) = st.direct.iter().position(|&d| d == (pos, end, kept)) {
                st.direct.swap_remove(i);
            }
            if kept {
                if result.is_ok() {
                    st.keep(Entry::new(pos, rest.to_vec(), None), self.budget());
                }
                drop(st);
                // Waiters find the bytes kept, or (failed) fetch them.
                self.fetched.notify_all();
            }
            return result;
        }
        let mut size = rest_len;
        if let Some(s) = st.stream_mut(stream) {
            size = s.window.clamp(rest_len, self.window.max(rest_len));
            s.window = size.saturating_mul(2).min(self.window);
        }
        // Stop where bytes already asked for begin (a window or a direct
        // read in flight further on: a pipelining client's later reads can
        // reach the origin before the read that continues the stream), but
        // never short of this read.
        let asked = st
            .pending
            .iter()
            .copied()
            .chain(st.direct.iter().map(|&(s, e, _)| (s, e)))
            .map(|(s, _)| s)
            .filter(|&s| s > pos)
            .min()
            .unwrap_or(u64::MAX);
        let wend = (pos + size).min(self.size).min(asked.max(end));
        st.pending.push((pos, wend));
        drop(st);

        let mut data = vec![0u8; (wend - pos) as usize];
        let result = fill(pos, &mut data);
        if result.is_ok() {
            rest.copy_from_slice(&data[..rest.len()]);
        }
        let mut st = self.lock();
        if let Some(i) = st.pending.iter().position(|&p| p == (pos, wend)) {
            st.pending.swap_remove(i);
        }
        if result.is_ok() {
            let mut e = Entry::new(pos, data, Some(stream));
            e.mark(pos, pos + rest_len);
            st.keep(e, self.budget());
        }
        drop(st);
        // Waiters re-check; after a failed fetch they go direct.
        self.fetched.notify_all();
        result
    }

    /// Bytes kept and being fetched (for the memory-bound tests).
    #[cfg(test)]
    fn memory(&self) -> (u64, u64) {
        let st = self.lock();
        let pending = st.pending.iter().map(|&(s, e)| e - s).sum();
        (st.kept, pending)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    fn byte(off: u64) -> u8 {
        (off % 251) as u8
    }

    fn check(buf: &[u8], off: u64) {
        assert!(
            buf.iter()
                .enumerate()
                .all(|(j, &b)| b == byte(off + j as u64)),
            "wrong bytes at {off}"
        );
    }

    /// An origin that records the size of every fetch.
    #[derive(Default)]
    struct Origin {
        fetches: Mutex<Vec<(u64, u64)>>,
        in_flight: AtomicU64,
        max_in_flight: AtomicU64,
    }

    impl Origin {
        fn fill(&self) -> impl Fn(u64, &mut [u8]) -> Result<(), HttpError> + '_ {
            move |off, buf| {
                let now =
                    self.in_flight.fetch_add(buf.len() as u64, Ordering::SeqCst) + buf.len() as u64;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                self.fetches.lock().unwrap().push((off, buf.len() as u64));
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = byte(off + i as u64);
                }
                std::thread::yield_now();
                self.in_flight.fetch_sub(buf.len() as u64, Ordering::SeqCst);
                Ok(())
            }
        }

        fn sizes(&self) -> Vec<u64> {
            self.fetches.lock().unwrap().iter().map(|f| f.1).collect()
        }

        fn bytes(&self) -> u64 {
            self.sizes().iter().sum()
        }
    }

    /// A [`Fill`] several threads may call.
    type SyncFill<'a> = dyn Fn(u64, &mut [u8]) -> Result<(), HttpError> + Sync + 'a;

    /// A read on its own thread (its result; bytes checked when it
    /// succeeded), and the gate that lets its fetch go.
    type HeldRead<'scope> = (
        std::thread::ScopedJoinHandle<'scope, Result<(), HttpError>>,
        Arc<std::sync::Barrier>,
    );

    /// Starts a read of `len` bytes at `off` on a thread of `scope` whose
    /// fetch from `fill` is held until the returned gate opens, and returns
    /// once that fetch is at the origin (so the test knows it is in flight).
    fn read_held<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        ra: &'env ReadAhead,
        fill: &'env SyncFill<'env>,
        off: u64,
        len: u64,
    ) -> HeldRead<'scope> {
        let entered = Arc::new(std::sync::Barrier::new(2));
        let release = Arc::new(std::sync::Barrier::new(2));
        let (e, r) = (entered.clone(), release.clone());
        let reader = scope.spawn(move || {
            let held = |o: u64, b: &mut [u8]| {
                e.wait();
                r.wait();
                fill(o, b)
            };
            let mut buf = vec![0u8; len as usize];
            ra.read(&mut buf, off, &held)?;
            check(&buf, off);
            Ok(())
        });
        entered.wait();
        (reader, release)
    }

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;

    #[test]
    fn a_sequential_stream_grows_its_window_to_the_cap() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(M, 64 * M);
        let mut buf = vec![0u8; 64 * K as usize];
        for i in 0..128u64 {
            ra.read(&mut buf, i * 64 * K, &fill).unwrap();
            check(&buf, i * 64 * K);
        }
        // The first read goes as it is (nothing to continue), the second
        // confirms the stream (a window of its own size), then each window
        // doubles up to the cap.
        let sizes = origin.sizes();
        assert_eq!(
            sizes[..6],
            [64 * K, 64 * K, 128 * K, 256 * K, 512 * K, M],
            "{sizes:?}"
        );
        assert!(sizes[6..].iter().all(|&s| s == M), "{sizes:?}");
        assert_eq!(
            origin.bytes(),
            8 * M,
            "nothing fetched twice or past the reads"
        );
        assert_eq!(sizes.len(), 6 + 6, "{sizes:?}");
        // Reads inside windows made no request.
        assert_eq!(ra.stats().hits, 128 - 12);
        assert_eq!(ra.stats().wasted, 0);
    }

    #[test]
    fn reordered_reads_of_a_stream_keep_it_growing() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(M, 64 * M);
        let mut buf = vec![0u8; 64 * K as usize];
        let step = 64 * K;
        // As a pipelining client's reads reach the server when its worker
        // threads race: every pair swapped once the stream is confirmed.
        let mut order = vec![0, 1, 2];
        for i in (3..128u64).step_by(2) {
            order.extend([i + 1, i].into_iter().filter(|&j| j < 128));
        }
        for &i in &order {
            ra.read(&mut buf, i * step, &fill).unwrap();
            check(&buf, i * step);
        }
        let sizes = origin.sizes();
        // Without the tolerance every swap restarts the stream at one read per
        // request (about 60 requests); with it the windows still reach the cap.
        assert!(sizes.len() <= 20, "{sizes:?}");
        assert!(sizes.contains(&M), "{sizes:?}");
        assert!(origin.bytes() <= 8 * M + M, "{sizes:?}");
    }

    #[test]
    fn scattered_small_reads_never_start_windows() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(4 * M, 1 << 30);
        let mut buf = vec![0u8; 4096];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut offsets = Vec::new();
        for _ in 0..500 {
            // Reads near one another (as a filesystem's metadata reads
            // are), each ending where no later one starts.
            let off = rng.u64(0..(64 * M)) / 512 * 512;
            offsets.push(off);
        }
        offsets.sort_unstable();
        offsets.dedup_by(|a, b| *a < *b + 8192);
        for &off in &offsets {
            ra.read(&mut buf, off, &fill).unwrap();
            check(&buf, off);
        }
        let sizes = origin.sizes();
        assert_eq!(sizes.len(), offsets.len());
        assert!(sizes.iter().all(|&s| s == 4096), "{sizes:?}");
        assert_eq!(ra.stats().wasted, 0);
    }

    #[test]
    fn repeated_small_reads_are_served_from_memory() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(4 * M, 1 << 30);
        let mut buf = vec![0u8; 512];
        for _ in 0..10 {
            for off in [0, 64 * M, 200 * M + 512] {
                ra.read(&mut buf, off, &fill).unwrap();
                check(&buf, off);
            }
        }
        assert_eq!(origin.sizes(), [512, 512, 512]);
        assert_eq!(ra.stats().hits, 27);
    }

    #[test]
    fn interleaved_streams_each_grow() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(M, 64 * M);
        let mut buf = vec![0u8; 32 * K as usize];
        let starts = [0, 20 * M, 40 * M];
        for i in 0..128u64 {
            for &s in &starts {
                let off = s + i * 32 * K;
                ra.read(&mut buf, off, &fill).unwrap();
                check(&buf, off);
            }
        }
        // Each stream: one plain read, then windows 32K, 64K, ... 1M (6),
        // then 4 MiB - 2 MiB + 32K left over in 1 MiB windows (2 whole,
        // and one that runs past the last read).
        let sizes = origin.sizes();
        assert_eq!(sizes.len(), 3 * (1 + 6 + 2), "{sizes:?}");
        assert!(origin.bytes() <= 3 * (4 * M + M), "{sizes:?}");
        assert_eq!(ra.stats().wasted, 0, "all three streams fit in memory");
    }

    #[test]
    fn wasted_bytes_are_counted_and_shrink_the_stream_window() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(M, 256 * M);
        let mut buf = vec![0u8; 64 * K as usize];
        // Stream A grows to the cap: 64K, 64K, 128K, 256K, 512K, 1M; its
        // next read starts a 1 MiB window of which it reads 64 KiB.
        let mut a = 0;
        while origin.sizes().last() != Some(&M) {
            ra.read(&mut buf, a, &fill).unwrap();
            check(&buf, a);
            a += 64 * K;
        }
        assert_eq!(a, M + 64 * K);
        // Stream B reads 16 MiB elsewhere: its windows push A's out.
        for i in 0..256u64 {
            let off = 128 * M + i * 64 * K;
            ra.read(&mut buf, off, &fill).unwrap();
            check(&buf, off);
        }
        let wasted = ra.stats().wasted;
        assert_eq!(wasted, M - 64 * K, "A's unread 960 KiB");
        // A continues where it left off: its window is gone, and the next
        // one is half the one that went unread.
        ra.read(&mut buf, a, &fill).unwrap();
        check(&buf, a);
        assert_eq!(origin.fetches.lock().unwrap().last(), Some(&(a, M / 2)));
    }

    #[test]
    fn memory_stays_bounded_under_concurrent_streams() {
        let origin = Origin::default();
        let cap = M;
        let ra = ReadAhead::new(cap, 1 << 30);
        let budget = KEEP_WINDOWS * cap;
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let (ra, origin) = (&ra, &origin);
                scope.spawn(move || {
                    let fill = origin.fill();
                    let mut rng = fastrand::Rng::with_seed(t);
                    let mut off = t * 64 * M;
                    let mut buf = vec![0u8; 48 * K as usize];
                    for _ in 0..400 {
                        // Mostly sequential, sometimes a jump.
                        if rng.u8(..) < 20 {
                            off = t * 64 * M + rng.u64(0..32 * M);
                        }
                        let len = [4 * K, 16 * K, 48 * K][rng.usize(..3)] as usize;
                        ra.read(&mut buf[..len], off, &fill).unwrap();
                        check(&buf[..len], off);
                        let (kept, pending) = ra.memory();
                        assert!(kept <= budget, "{kept} kept");
                        assert!(pending <= MAX_PENDING as u64 * cap, "{pending} pending");
                        off += len as u64;
                    }
                });
            }
        });
        // Fetches in flight at once: the pending windows plus one direct
        // read per thread.
        let max = origin.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= MAX_PENDING as u64 * cap + 8 * 48 * K, "{max}");
        assert!(ra.lock().entries.len() <= MAX_ENTRIES);
    }

    #[test]
    fn large_reads_go_direct_and_windows_stop_at_the_end() {
        let origin = Origin::default();
        let fill = origin.fill();
        let size = M + 100;
        let ra = ReadAhead::new(M, size);
        let mut big = vec![0u8; DIRECT_READ as usize];
        ra.read(&mut big, 0, &fill).unwrap();
        ra.read(&mut big, DIRECT_READ, &fill).unwrap();
        assert_eq!(origin.sizes(), [DIRECT_READ, DIRECT_READ]);
        // Small reads continuing them grow windows that stop at the end.
        let mut buf = vec![0u8; 64 * K as usize];
        let mut off = 2 * DIRECT_READ;
        while off + 64 * K <= size {
            ra.read(&mut buf, off, &fill).unwrap();
            check(&buf, off);
            off += 64 * K;
        }
        let mut tail = vec![0u8; (size - off) as usize];
        ra.read(&mut tail, off, &fill).unwrap();
        check(&tail, off);
        let f = origin.fetches.lock().unwrap();
        assert!(f.iter().all(|&(o, n)| o + n <= size), "{f:?}");
        assert_eq!(f.iter().map(|x| x.1).sum::<u64>(), size);
    }

    #[test]
    fn reads_up_to_direct_read_are_kept_bigger_ones_not() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(4 * M, 64 * M);
        let mut buf = vec![0u8; DIRECT_READ as usize];
        let mut big = vec![0u8; 2 * DIRECT_READ as usize];
        for _ in 0..3 {
            ra.read(&mut buf, 0, &fill).unwrap();
            check(&buf, 0);
            ra.read(&mut big, 8 * M, &fill).unwrap();
            check(&big, 8 * M);
        }
        assert_eq!(
            origin.sizes(),
            [
                DIRECT_READ,
                2 * DIRECT_READ,
                2 * DIRECT_READ,
                2 * DIRECT_READ
            ]
        );
        assert_eq!(ra.stats().hits, 2);
    }

    #[test]
    fn failed_window_fails_the_read() {
        let ra = ReadAhead::new(M, 4 * M);
        let ok = |_: u64, _: &mut [u8]| Ok(());
        let mut buf = vec![0u8; 512];
        ra.read(&mut buf, 0, &ok).unwrap();
        let bad = |_: u64, _: &mut [u8]| {
            Err(HttpError::NoSize {
                url: "http://x/".into(),
            })
        };
        assert!(ra.read(&mut buf, 512, &bad).is_err());
        // Nothing was kept: the next read asks again.
        let calls = AtomicUsize::new(0);
        let counting = |off: u64, b: &mut [u8]| {
            calls.fetch_add(1, Ordering::SeqCst);
            b.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = byte(off + i as u64));
            Ok(())
        };
        ra.read(&mut buf, 512, &counting).unwrap();
        check(&buf, 512);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_window_stops_where_a_direct_read_in_flight_begins() {
        // A pipelining client: the read at 24 KiB reaches the origin while
        // the stream is still short (it continues nothing: it goes direct),
        // then the stream's reads catch up and the window they start would
        // cover it. The window must not ask for bytes already asked for.
        let ra = ReadAhead::new(M, 4 * M);
        let origin = Origin::default();
        let fill = origin.fill();
        let mut buf = vec![0u8; 4 * K as usize];
        ra.read(&mut buf, 0, &fill).unwrap();
        ra.read(&mut buf, 4 * K, &fill).unwrap(); // a window of 4 KiB; next one 8 KiB
        std::thread::scope(|s| {
            // The direct read of [24K, 28K) is in flight.
            let (far, release) = read_held(s, &ra, &fill, 24 * K, 4 * K);
            let mut near = vec![0u8; 4 * K as usize];
            for off in [8 * K, 12 * K, 16 * K, 20 * K] {
                ra.read(&mut near, off, &fill).unwrap();
                check(&near, off);
            }
            release.wait();
            far.join().unwrap().unwrap();
        });
        let fetches = origin.fetches.lock().unwrap().clone();
        // The window at 16 KiB would be 16 KiB long; it stops at 24 KiB.
        assert_eq!(
            fetches,
            [
                (0, 4 * K),
                (4 * K, 4 * K),
                (8 * K, 8 * K),
                (16 * K, 8 * K),
                (24 * K, 4 * K)
            ],
            "{fetches:?}"
        );
    }

    #[test]
    fn the_same_small_read_at_once_is_fetched_once() {
        // Two clients booting one image read its GPT at the same moment:
        // the second waits for the first's bytes instead of asking again.
        let ra = ReadAhead::new(M, 4 * M);
        let origin = Origin::default();
        let fill = origin.fill();
        std::thread::scope(|s| {
            // The first read is at the origin.
            let (first, release) = read_held(s, &ra, &fill, 512, 16 * K);
            let (ra, fill) = (&ra, &fill);
            let second = s.spawn(move || {
                // Starts inside the first read: served from its bytes, and
                // the part past them from the origin.
                let mut b = vec![0u8; 16 * K as usize];
                ra.read(&mut b, 4608, fill).unwrap();
                check(&b, 4608);
            });
            // Let the second read reach its wait before the first ends (if
            // it came later it would find the bytes kept: the same fetches).
            std::thread::sleep(std::time::Duration::from_millis(100));
            release.wait();
            first.join().unwrap().unwrap();
            second.join().unwrap();
        });
        let fetches = origin.fetches.lock().unwrap().clone();
        assert_eq!(
            fetches,
            [(512, 16 * K), (512 + 16 * K, 4 * K)],
            "{fetches:?}"
        );
        assert_eq!(ra.stats().hits, 0);
    }

    #[test]
    fn a_read_waiting_on_a_failed_fetch_asks_for_itself() {
        // The origin fails the first read while a second waits for its
        // bytes: the first gets the error, the second fetches and succeeds.
        let ra = ReadAhead::new(M, 4 * M);
        let origin = Origin::default();
        let fill = origin.fill();
        let failing = |_: u64, _: &mut [u8]| {
            Err(HttpError::NoSize {
                url: "http://x/".into(),
            })
        };
        std::thread::scope(|s| {
            let (first, release) = read_held(s, &ra, &failing, 0, 8 * K);
            let (ra, fill) = (&ra, &fill);
            let second = s.spawn(move || {
                let mut b = vec![0u8; 4 * K as usize];
                ra.read(&mut b, 4 * K, fill).unwrap();
                check(&b, 4 * K);
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            release.wait();
            assert!(first.join().unwrap().is_err());
            second.join().unwrap();
        });
        assert_eq!(*origin.fetches.lock().unwrap(), [(4 * K, 4 * K)]);
        // Nothing of the failed read was kept.
        assert_eq!(ra.memory().0, 4 * K);
    }

    #[test]
    fn disabled_reads_go_through() {
        let origin = Origin::default();
        let fill = origin.fill();
        let ra = ReadAhead::new(0, 4 * M);
        let mut buf = vec![0u8; 4096];
        for i in 0..4 {
            ra.read(&mut buf, i * 4096, &fill).unwrap();
            ra.read(&mut buf, i * 4096, &fill).unwrap();
        }
        assert_eq!(origin.sizes().len(), 8);
        assert_eq!(ra.stats(), ReadAheadStats::default());
    }
}
