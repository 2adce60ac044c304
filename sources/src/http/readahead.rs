//! Sequential read-ahead shared by every connection of a device.
//!
//! NBD clients read in small pieces (often 64 KiB to 2 MiB); one HTTP
//! request per piece wastes a round trip each. When a read starts where an
//! earlier one ended, one larger range (the window) is fetched and the
//! following reads are served from memory. Reads arriving while a window is
//! being fetched wait for it instead of asking for the same bytes. Reads of
//! [`DIRECT_READ`] or more go straight to the origin. Memory is
//! bounded per device: at most [`MAX_WINDOWS`] windows kept plus
//! [`MAX_PENDING`] being fetched, whatever the number of clients.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::HttpError;

/// Windows kept (oldest dropped first): a few interleaved sequential streams.
const MAX_WINDOWS: usize = 4;
/// Windows being fetched at once; further sequential reads go direct.
const MAX_PENDING: usize = 4;
/// Reads this big go straight to the origin: their round trip is already
/// amortized, and passing them through a window costs a copy per byte
/// (measured: sequential 256 KiB reads ran ~20% faster direct).
const DIRECT_READ: u64 = 128 << 10;
/// Recent read ends remembered to recognise a continuation.
const MAX_ENDS: usize = 32;

/// Where bytes come from below the read-ahead (the disk cache or the origin).
pub(crate) type Fill<'a> = dyn Fn(u64, &mut [u8]) -> Result<(), HttpError> + 'a;

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

#[derive(Debug, Default)]
struct State {
    windows: VecDeque<Window>,
    /// `[start, end)` of windows being fetched.
    pending: Vec<(u64, u64)>,
    ends: VecDeque<u64>,
}

/// The read-ahead of one device.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    window: u64,
    size: u64,
    state: Mutex<State>,
    fetched: Condvar,
}

impl ReadAhead {
    /// Windows of `window` bytes (0 disables) on a device of `size` bytes.
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

    /// Fill `buf` with the bytes at `offset` (in range), from windows where
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
        let sequential = st.ends.contains(&offset);
        // Noted on arrival, not completion: a pipelining client has the next
        // request in flight before this one is answered.
        if !st.ends.contains(&end) {
            if st.ends.len() == MAX_ENDS {
                st.ends.pop_front();
            }
            st.ends.push_back(end);
        }
        let mut done = 0usize;
        loop {
            let pos = offset + done as u64;
            if pos == end {
                return Ok(());
            }
            if let Some(w) = st.windows.iter().find(|w| w.start <= pos && pos < w.end()) {
                let from = (pos - w.start) as usize;
                let n = (w.data.len() - from).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&w.data[from..from + n]);
                done += n;
                continue;
            }
            if st.pending.iter().any(|&(s, e)| s <= pos && pos < e) {
                st = self.fetched.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            break;
        }
        let pos = offset + done as u64;
        let rest = &mut buf[done..];
        // A read that ran off the end of a window continues a sequential
        // stream too.
        let start_window = (sequential || done > 0)
            && (rest.len() as u64) < self.window.min(DIRECT_READ)
            && st.pending.len() < MAX_PENDING;
        if !start_window {
            drop(st);
            return fill(pos, rest);
        }
        let wend = (pos + self.window).min(self.size);
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
            st.windows.push_back(Window {
                start: pos,
                data: Arc::new(data),
            });
            while st.windows.len() > MAX_WINDOWS {
                st.windows.pop_front();
            }
        }
        drop(st);
        // Waiters re-check; after a failed fetch they go direct.
        self.fetched.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn byte(off: u64) -> u8 {
        (off % 251) as u8
    }

    fn source(calls: &AtomicUsize) -> impl Fn(u64, &mut [u8]) -> Result<(), HttpError> + '_ {
        move |off, buf| {
            calls.fetch_add(1, Ordering::SeqCst);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = byte(off + i as u64);
            }
            Ok(())
        }
    }

    #[test]
    fn sequential_reads_use_windows() {
        let calls = AtomicUsize::new(0);
        let fill = source(&calls);
        let ra = ReadAhead::new(1 << 20, 10 << 20);
        let mut buf = vec![0u8; 65536];
        for i in 0..64u64 {
            ra.read(&mut buf, i * 65536, &fill).unwrap();
            assert!(buf
                .iter()
                .enumerate()
                .all(|(j, &b)| b == byte(i * 65536 + j as u64)));
        }
        // One direct read, then one window per MiB.
        assert_eq!(calls.load(Ordering::SeqCst), 1 + 4);
        // Covered reads make no call.
        ra.read(&mut buf, 3 << 20, &fill).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn random_reads_go_direct_and_windows_stop_at_the_end() {
        let calls = AtomicUsize::new(0);
        let fill = source(&calls);
        let size = (1 << 20) + 100;
        let ra = ReadAhead::new(1 << 20, size);
        let mut buf = vec![0u8; 4096];
        ra.read(&mut buf, 500_000, &fill).unwrap();
        ra.read(&mut buf, 100, &fill).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        ra.read(&mut buf, 4196, &fill).unwrap();
        let mut tail = vec![0u8; 100];
        ra.read(&mut tail, 1 << 20, &fill).unwrap();
        assert!(tail
            .iter()
            .enumerate()
            .all(|(j, &b)| b == byte((1 << 20) + j as u64)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn failed_window_fails_the_read() {
        let ra = ReadAhead::new(1 << 20, 4 << 20);
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
        ra.read(&mut buf, 1024, &source(&calls)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
