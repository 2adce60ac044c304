//! The threads of a connection.
//!
//! The connection's own thread (small stack, see `server.rs`) does no
//! device work: while the client is quiet it waits for the socket to become
//! readable, then starts a worker and waits for the workers to be gone. An
//! idle client thus costs one small thread and no buffers.
//!
//! Workers follow the leader/follower pattern: a worker takes the reader
//! lock, reads one request (and a write's payload), lets go, serves it and
//! sends the reply under the writer lock. Small requests on a fast device
//! are served by the leader itself, replies batched into one send per
//! burst. The pool grows (up to `max_threads`) only when a request arrives
//! while no worker is waiting to read, so a QD1 client costs one worker and
//! a QD64 client gets parallelism; a worker that finds nothing to read for
//! `worker_idle` leaves, and the ones behind it follow at once.

use std::io::{BufRead, BufReader};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::thread::Scope;
use std::time::Duration;

use log::{debug, warn};

use super::request::{pause, Command, Next, ReaderState, Request};
use super::{Connection, Scratch, READ_BUFFER};

/// Requests up to this size may be served inline by the reading thread...
const INLINE_MAX: u64 = 64 * 1024;
/// ...while the device answers within this time on average (page cache,
/// memory); slower devices (remote, cold disks) get parallel workers.
const INLINE_MAX_NS: u64 = 30_000;
/// Batched replies are sent once they reach this size.
const BATCH_MAX: usize = 256 * 1024;

/// How many workers a connection has, and a way to wait until it has none.
pub(super) struct Pool {
    threads: Mutex<usize>,
    gone: Condvar,
}

impl Pool {
    pub(super) fn new() -> Pool {
        Pool {
            threads: Mutex::new(0),
            gone: Condvar::new(),
        }
    }

    fn count(&self) -> usize {
        *self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join(&self) {
        *self.threads.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn leave(&self) {
        let mut n = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.gone.notify_all();
        }
    }

    fn wait_empty(&self) {
        let mut n = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.gone.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Takes a worker off the count when it ends, however it ends: a worker
/// that panicked (a device bug) must not leave the connection's thread
/// waiting forever, nor the client waiting for a reply that will not come.
struct Leaving<'a>(&'a Connection);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.kill("a worker thread panicked");
        }
        self.0.pool.leave();
    }
}

impl Connection {
    /// Serve requests until the client disconnects (or is cut off).
    pub fn run(&self) {
        std::thread::scope(|s| loop {
            if !self.await_request() {
                break;
            }
            self.size_read_buffer(READ_BUFFER);
            if !self.spawn_worker(s) {
                self.kill("no worker thread to serve it");
                break;
            }
            self.pool.wait_empty();
            if self.finished() {
                break;
            }
            // Quiet again: give the read-ahead buffer back until the next request.
            self.size_read_buffer(0);
        });
        debug!("{}: connection closed", self.peer);
    }

    fn finished(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
            || self.reader.lock().unwrap_or_else(|p| p.into_inner()).done
    }

    /// With no worker: wait (on this small thread) until the client sends
    /// something or hangs up. `false`: the connection is over.
    fn await_request(&self) -> bool {
        if self.finished() {
            return false;
        }
        let buffered = !self
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .r
            .buffer()
            .is_empty();
        if buffered {
            return true;
        }
        match self.readable(None) {
            // Readable, at end of file or in error: a worker's read tells which.
            Ok(_) => true,
            Err(e) => {
                self.kill(&format!("waiting for requests: {e}"));
                false
            }
        }
    }

    /// Give the reader a read-ahead buffer of `cap` bytes, if it holds no
    /// unread bytes (it never does between bursts: workers leave only when
    /// it is empty).
    fn size_read_buffer(&self, cap: usize) {
        let mut st = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if st.r.capacity() != cap && st.r.buffer().is_empty() {
            st.r = BufReader::with_capacity(cap, self.shared());
        }
    }

    /// Start one more worker; `false` (logged) if the system refuses a thread.
    fn spawn_worker<'s>(&'s self, s: &'s Scope<'s, '_>) -> bool {
        self.pool.join();
        // The default stack: device code (decompression, filesystem
        // planners, TLS) runs here.
        let spawned = std::thread::Builder::new()
            .name("nbd-worker".into())
            .spawn_scoped(s, move || self.worker(s));
        match spawned {
            Ok(_) => true,
            Err(e) => {
                self.pool.leave();
                warn!("{}: cannot start a worker thread: {e}", self.peer);
                false
            }
        }
    }

    fn worker<'s>(&'s self, s: &'s Scope<'s, '_>) {
        let _leaving = Leaving(self);
        let mut sc = Scratch::new();
        loop {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let next = self.lead(&mut sc);
            let idle = self
                .waiting
                .fetch_sub(1, Ordering::SeqCst)
                .saturating_sub(1);
            let result = match next {
                Next::Stop | Next::Idle => break,
                Next::Request(req, guard) => {
                    if idle == 0 && self.pool.count() < self.limits.max_threads {
                        // A failure is logged; this worker serves on alone.
                        self.spawn_worker(s);
                    }
                    self.handle(&req, &mut sc, guard)
                }
                Next::Refused(req, errno, msg) => self.send_error(&req, errno, msg, &mut sc),
            };
            sc.trim();
            if let Err(e) = result {
                self.kill(&format!("sending a reply failed: {e}"));
                break;
            }
        }
    }

    /// Hold the reader: serve small requests inline while the device is
    /// fast (no hand-off between threads, replies batched into one send
    /// per burst), and return the first request that should be served
    /// outside the reader lock, in parallel with further reading.
    fn lead<'a>(&'a self, sc: &mut Scratch) -> Next<'a> {
        let mut st = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let header = self.style.request_len();
        sc.io.batching = true;
        let next = loop {
            if st.done || self.dead.load(Ordering::SeqCst) {
                break Next::Stop;
            }
            // About to block for more input: send what this burst produced.
            if st.r.buffer().len() < header || sc.io.batch.len() >= BATCH_MAX {
                if let Err(e) = self.flush_batch(&mut sc.io) {
                    self.kill(&format!("sending replies failed: {e}"));
                    break Next::Stop;
                }
            }
            // Nothing buffered: leave rather than wait on if nothing comes
            // for a while. Something buffered: the client is busy again.
            if st.r.buffer().is_empty() {
                if !self.await_input(&mut st) {
                    break Next::Idle;
                }
            } else {
                st.idle = false;
            }
            match self.next_request(&mut st, &mut sc.buf) {
                Next::Request(req, guard) if self.inline_ok(&req) => {
                    if let Err(e) = self.handle(&req, sc, guard) {
                        self.kill(&format!("sending a reply failed: {e}"));
                        break Next::Stop;
                    }
                }
                other => break other,
            }
        };
        sc.io.batching = false;
        let flushed = self.flush_batch(&mut sc.io);
        if let Some(why) = st.broken.take() {
            self.kill(&why);
        }
        drop(st);
        if let Err(e) = flushed {
            self.kill(&format!("sending replies failed: {e}"));
            return Next::Stop;
        }
        next
    }

    /// With nothing buffered: fill the buffer, waiting at most the idle
    /// time (the socket's receive timeout, set by `Connection::new`: no
    /// extra system call on the busy path, where this read is needed
    /// anyway). `false` when nothing came: the worker should leave, and
    /// the ones behind it leave at once unless input is there already.
    fn await_input(&self, st: &mut ReaderState) -> bool {
        if st.idle {
            return match self.readable(Some(Duration::ZERO)) {
                Ok(false) => false,
                _ => {
                    st.idle = false;
                    true
                }
            };
        }
        loop {
            match st.r.fill_buf() {
                // Data, or the end of the stream for the read to find.
                Ok(_) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if pause(&e) => {
                    st.idle = true;
                    return false;
                }
                // The read meets it again, or the end of the stream.
                Err(_) => return true,
            }
        }
    }

    /// Whether `req` is cheap enough to serve while holding the reader.
    fn inline_ok(&self, req: &Request) -> bool {
        let cheap_kind = match req.command {
            Command::Read | Command::Write => {
                req.len <= INLINE_MAX && !req.has(crate::proto::CMD_FLAG_FUA)
            }
            Command::BlockStatus => true,
            _ => false,
        };
        cheap_kind && self.service_ns.load(Ordering::Relaxed) <= INLINE_MAX_NS
    }

    /// Fold one device service time into the moving average.
    pub(super) fn note_service(&self, t: Duration) {
        let sample = t.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.service_ns.load(Ordering::Relaxed);
        self.service_ns
            .store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }
}
