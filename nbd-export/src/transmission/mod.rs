//! The transmission phase (proto.md "Transmission phase"): requests in,
//! replies out, many in flight, answered out of order.
//!
//! - [`workers`]: who reads, who serves, how many threads, when they leave;
//! - [`request`]: request headers decoded into a typed [`request::Request`],
//!   write payloads read, requests checked;
//! - [`dispatch`]: a checked request served on the device;
//! - [`reply`]: replies encoded and sent (or batched);
//! - [`budget`]: the per-connection bound on payload memory.

mod budget;
mod dispatch;
mod reply;
mod request;
mod workers;

use std::io::{self, BufReader};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::debug;
use synth::{BlockDev, BlockSize, Caps, ExtentList, ReadChunk};

use crate::handshake::Negotiated;
use crate::proto::*;
use crate::stream::{wait_readable, Stream};
use crate::tls::TlsSession;

use self::budget::Budget;
use self::reply::SendBufs;
use self::request::{ReaderState, SharedStream};
use self::workers::Pool;

/// Per-thread buffers larger than this are freed after use.
const KEEP_BUFFER: usize = 1 << 20;
/// The read-ahead buffer of a connection while it has workers: a burst of
/// small requests is read with one syscall.
const READ_BUFFER: usize = 64 * 1024;

/// Per-connection tunables.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most worker threads per connection.
    pub max_threads: usize,
    /// Most payload bytes buffered at once per connection.
    pub budget: u64,
    /// Send host-file data with `sendfile`.
    pub sendfile: bool,
    /// A worker that finds nothing to read for this long leaves; an idle
    /// connection keeps no worker at all.
    pub worker_idle: Duration,
}

/// The largest request a connection accepts: the device's maximum block
/// size, lowered to the payload budget so that a request never needs more
/// buffer than the connection may hold (proto.md "Block size constraints":
/// the maximum stays a multiple of the minimum and at least the preferred
/// size). The handshake advertises it; transmission enforces it.
pub fn max_request(bs: BlockSize, budget: u64) -> u32 {
    let min = bs.minimum.max(1) as u64;
    let floor = (bs.preferred as u64).max(min);
    let cap = (budget / min * min).max(floor);
    (bs.maximum as u64).min(cap) as u32
}

/// Per-worker scratch space, reused across requests.
struct Scratch {
    buf: Vec<u8>,
    io: SendBufs,
    chunks: Vec<ReadChunk>,
    head: Vec<u8>,
    extents: ExtentList,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            buf: Vec::new(),
            io: SendBufs {
                bounce: Vec::new(),
                batching: false,
                batch: Vec::new(),
            },
            chunks: Vec::new(),
            head: Vec::new(),
            extents: ExtentList::new(0),
        }
    }

    fn trim(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        if self.io.bounce.capacity() > KEEP_BUFFER {
            self.io.bounce = Vec::new();
        }
        self.chunks.clear();
    }
}

/// One client connection in transmission.
pub struct Connection {
    dev: Arc<dyn BlockDev>,
    size: u64,
    style: ReplyStyle,
    base_allocation: bool,
    writable: bool,
    fast_zero: bool,
    /// The device's block sizes, with the maximum lowered to [`max_request`].
    block: BlockSize,
    /// The socket: one descriptor, read by the leading worker, written
    /// under `writer`, shut down by [`Connection::kill`].
    stream: Arc<Stream>,
    /// The TLS session, if the client started one: every read and write
    /// goes through it (and no `sendfile`).
    tls: Option<Arc<TlsSession>>,
    reader: Mutex<ReaderState>,
    /// Held while a reply is written, so replies never interleave.
    writer: Mutex<()>,
    /// Workers inside [`Connection::lead`], waiting to read.
    waiting: AtomicUsize,
    pool: Pool,
    dead: AtomicBool,
    /// Moving average of device service time (ns), steering inline work.
    service_ns: AtomicU64,
    budget: Budget,
    limits: ConnLimits,
    peer: String,
}

impl Connection {
    /// Set up transmission on `stream` after a successful handshake.
    pub fn new(
        stream: Arc<Stream>,
        neg: Negotiated,
        limits: ConnLimits,
        peer: String,
    ) -> io::Result<Self> {
        // Reads time out after the workers' idle time: a worker blocked in
        // a read with nothing coming leaves (see `workers.rs`). Zero would
        // mean "no timeout" to the kernel and is an error to std: 1 ms.
        stream.set_read_timeout(Some(limits.worker_idle.max(Duration::from_millis(1))))?;
        let caps = neg.dev.caps();
        let mut block = neg.dev.block_size();
        block.maximum = max_request(block, limits.budget);
        // Never less than the largest request accepted, so a request never
        // waits for room that cannot exist.
        let budget = limits.budget.max(block.maximum as u64).max(1);
        Ok(Connection {
            size: neg.dev.size(),
            block,
            writable: neg.flags & TF_READ_ONLY == 0,
            fast_zero: caps.contains(Caps::FAST_ZERO),
            dev: neg.dev,
            style: neg.style,
            base_allocation: neg.base_allocation,
            reader: Mutex::new(ReaderState {
                // Sized when the first worker starts (see `workers`): an
                // idle connection holds no read-ahead buffer.
                r: BufReader::with_capacity(
                    0,
                    SharedStream {
                        s: stream.clone(),
                        tls: neg.tls.clone(),
                    },
                ),
                done: false,
                broken: None,
                idle: false,
            }),
            stream,
            tls: neg.tls,
            writer: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            pool: Pool::new(),
            dead: AtomicBool::new(false),
            service_ns: AtomicU64::new(0),
            budget: Budget::new(budget),
            limits,
            peer,
        })
    }

    /// The connection's socket as a reader.
    fn shared(&self) -> SharedStream {
        SharedStream {
            s: self.stream.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Whether a request can be read within `timeout` (`None`: no limit):
    /// under TLS, bytes already decrypted or read count too.
    fn readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.tls.as_ref().is_some_and(|t| t.buffered()) {
            return Ok(true);
        }
        wait_readable(&*self.stream, timeout)
    }

    /// Cut the connection: both directions, so every worker unblocks (a
    /// worker stuck sending to a client that does not read included).
    fn kill(&self, why: &str) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            debug!("{}: closing: {why}", self.peer);
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }
}
