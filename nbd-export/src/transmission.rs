//! The transmission phase (proto.md "Transmission phase"): requests in,
//! replies out, many in flight, answered out of order.
//!
//! Threads follow the leader/follower pattern: a worker takes the reader
//! lock, reads one request (and a write's payload), lets go, serves it and
//! sends the reply under the writer lock. A connection starts with one
//! worker and grows (up to `max_threads`) only when a request arrives while
//! no worker is waiting to read, so a QD1 client costs two threads and a
//! QD64 client gets parallelism. Payload memory is bounded per connection
//! by a byte budget; zero-copy reads need none.

use std::io::{self, BufReader, Read};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::Scope;
use std::time::Instant;

use log::{debug, warn};
use synth::{BlockDev, BlockSize, Caps, ErrorKind, ExtentKind, ExtentList, ReadChunk, ZeroFlags};

use crate::handshake::Negotiated;
use crate::proto::*;
use crate::send::{send_pieces, Piece};
use crate::stream::Stream;

/// Reads smaller than this inside a data run are sent as zero bytes rather
/// than split into a hole chunk (a chunk header costs 20-32 bytes and a
/// client round of parsing).
const HOLE_MIN: u64 = 4096;
/// Largest number of block-status descriptors in one reply.
const MAX_DESCRIPTORS: usize = 16 * 1024;
/// Write payloads beyond the maximum block size are read and dropped up to
/// this size (so the connection survives); larger ones end the connection.
const DISCARD_LIMIT: u64 = 1 << 32;
/// Requests up to this size may be served inline by the reading thread...
const INLINE_MAX: u64 = 64 * 1024;
/// ...while the device answers within this time on average (page cache,
/// memory); slower devices (remote, cold disks) get parallel workers.
const INLINE_MAX_NS: u64 = 30_000;
/// Batched replies are sent once they reach this size.
const BATCH_MAX: usize = 256 * 1024;
/// Reads up to this size copy host-file data instead of using sendfile.
const SMALL_READ: u64 = 32 * 1024;
/// Per-thread buffers larger than this are freed after use.
const KEEP_BUFFER: usize = 1 << 20;

/// Per-connection tunables.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most worker threads per connection.
    pub max_threads: usize,
    /// Most payload bytes buffered at once per connection.
    pub budget: u64,
    /// Send host-file data with `sendfile`.
    pub sendfile: bool,
}

/// A counting semaphore over payload bytes.
struct Budget {
    avail: Mutex<u64>,
    cv: Condvar,
}

impl Budget {
    fn acquire(&self, n: u64) -> BudgetGuard<'_> {
        let mut a = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        while *a < n {
            a = self.cv.wait(a).unwrap_or_else(|p| p.into_inner());
        }
        *a -= n;
        BudgetGuard { b: self, n }
    }
}

struct BudgetGuard<'a> {
    b: &'a Budget,
    n: u64,
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        *self.b.avail.lock().unwrap_or_else(|p| p.into_inner()) += self.n;
        self.b.cv.notify_all();
    }
}

struct ReaderState {
    r: BufReader<Stream>,
    done: bool,
    /// Why reading stopped, when the client broke the protocol: the
    /// connection is cut once the replies already due are sent.
    broken: Option<String>,
}

/// What a worker got from the reader.
enum Next<'a> {
    /// A request; a write's payload is in the worker's buffer.
    Request(Request, Option<BudgetGuard<'a>>),
    /// A request already answered with this error (e.g. an oversized write
    /// whose payload was discarded).
    Refused(Request, u32, &'static str),
    /// No more requests.
    Stop,
}

/// Where replies go: straight to the socket, or into a batch that is
/// sent in one syscall when the burst of requests ends.
struct SendBufs {
    bounce: Vec<u8>,
    batching: bool,
    batch: Vec<u8>,
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
    dev: std::sync::Arc<dyn BlockDev>,
    size: u64,
    style: ReplyStyle,
    base_allocation: bool,
    writable: bool,
    fast_zero: bool,
    block: BlockSize,
    reader: Mutex<ReaderState>,
    writer: Mutex<Stream>,
    waiting: AtomicUsize,
    threads: AtomicUsize,
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
        stream: Stream,
        neg: Negotiated,
        limits: ConnLimits,
        peer: String,
    ) -> io::Result<Self> {
        let writer = stream.try_clone()?;
        let caps = neg.dev.caps();
        Ok(Connection {
            size: neg.dev.size(),
            block: neg.dev.block_size(),
            writable: neg.flags & TF_READ_ONLY == 0,
            fast_zero: caps.contains(Caps::FAST_ZERO),
            dev: neg.dev,
            style: neg.style,
            base_allocation: neg.base_allocation,
            reader: Mutex::new(ReaderState {
                r: BufReader::with_capacity(64 * 1024, stream),
                done: false,
                broken: None,
            }),
            writer: Mutex::new(writer),
            waiting: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            service_ns: AtomicU64::new(0),
            budget: Budget {
                avail: Mutex::new(limits.budget.max(limits.max_threads as u64)),
                cv: Condvar::new(),
            },
            limits,
            peer,
        })
    }

    /// Serve requests until the client disconnects (or is cut off).
    pub fn run(&self) {
        std::thread::scope(|s| {
            self.spawn_worker(s);
        });
        debug!("{}: connection closed", self.peer);
    }

    fn spawn_worker<'s>(&'s self, s: &'s Scope<'s, '_>) {
        self.threads.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("nbd-worker".into())
            .spawn_scoped(s, move || self.worker(s));
        if let Err(e) = spawned {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            warn!("{}: cannot start a worker thread: {e}", self.peer);
        }
    }

    fn worker<'s>(&'s self, s: &'s Scope<'s, '_>) {
        let mut sc = Scratch::new();
        loop {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let next = self.lead(&mut sc);
            let idle = self.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            let result = match next {
                Next::Stop => break,
                Next::Request(req, guard) => {
                    if idle == 0 && self.threads.load(Ordering::SeqCst) < self.limits.max_threads {
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
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// Hold the reader: serve small requests inline while the device is
    /// fast (no hand-off between threads, replies batched into one send
    /// per burst), and return the first request that should be served
    /// outside the reader lock, in parallel with further reading.
    fn lead<'a>(&'a self, sc: &mut Scratch) -> Next<'a> {
        let mut st = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let header = if self.style == ReplyStyle::Extended {
            EXTENDED_REQUEST_LEN
        } else {
            REQUEST_LEN
        };
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

    /// Whether `req` is cheap enough to serve while holding the reader.
    fn inline_ok(&self, req: &Request) -> bool {
        let cheap_kind = match req.kind {
            CMD_READ | CMD_WRITE => req.len <= INLINE_MAX && req.flags & CMD_FLAG_FUA == 0,
            CMD_BLOCK_STATUS => true,
            _ => false,
        };
        cheap_kind && self.service_ns.load(Ordering::Relaxed) <= INLINE_MAX_NS
    }

    /// Fold one device service time into the moving average.
    fn note_service(&self, t: std::time::Duration) {
        let sample = t.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.service_ns.load(Ordering::Relaxed);
        self.service_ns
            .store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }

    /// Cut the connection: both directions, so every worker unblocks.
    fn kill(&self, why: &str) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            debug!("{}: closing: {why}", self.peer);
            let _ = self
                .writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shutdown(Shutdown::Both);
        }
    }

    fn next_request<'a>(&'a self, st: &mut ReaderState, buf: &mut Vec<u8>) -> Next<'a> {
        match self.read_one(&mut st.r, buf) {
            Ok(Next::Stop) => {
                st.done = true;
                Next::Stop
            }
            Ok(n) => n,
            Err(e) => {
                st.done = true;
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    warn!("{}: {e}; closing the connection", self.peer);
                    st.broken = Some(e.to_string());
                }
                Next::Stop
            }
        }
    }

    fn read_one<'a>(
        &'a self,
        r: &mut BufReader<Stream>,
        buf: &mut Vec<u8>,
    ) -> io::Result<Next<'a>> {
        let req = if self.style == ReplyStyle::Extended {
            let mut h = [0u8; EXTENDED_REQUEST_LEN];
            r.read_exact(&mut h)?;
            Request::decode_extended(&h)
        } else {
            let mut h = [0u8; REQUEST_LEN];
            r.read_exact(&mut h)?;
            Request::decode_compact(&h)
        };
        let Some(req) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad request magic",
            ));
        };
        match req.kind {
            CMD_DISC => Ok(Next::Stop),
            CMD_WRITE if req.len > self.block.maximum as u64 => {
                if req.len > DISCARD_LIMIT {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("write payload of {} bytes is beyond any limit", req.len),
                    ));
                }
                io::copy(&mut r.take(req.len), &mut io::sink())?;
                Ok(Next::Refused(
                    req,
                    EOVERFLOW,
                    "write larger than the maximum block size",
                ))
            }
            CMD_WRITE => {
                let guard = self.budget.acquire(req.len);
                buf.resize(req.len as usize, 0);
                r.read_exact(buf)?;
                Ok(Next::Request(req, Some(guard)))
            }
            _ => Ok(Next::Request(req, None)),
        }
    }

    /// Check a request; `Err((errno, message))` when it must be refused.
    fn validate(&self, req: &Request) -> Result<(), (u32, &'static str)> {
        let allowed = match req.kind {
            CMD_READ => CMD_FLAG_FUA | CMD_FLAG_DF,
            CMD_WRITE | CMD_TRIM | CMD_FLUSH | CMD_CACHE => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => return Err((EINVAL, "unknown command")),
        };
        if req.flags & !allowed != 0 {
            return Err((EINVAL, "flags not valid for this command"));
        }
        if req.flags & CMD_FLAG_DF != 0 && self.style == ReplyStyle::Simple {
            return Err((EINVAL, "DF needs structured replies"));
        }
        let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && !self.writable {
            return Err((EPERM, "the export is read-only"));
        }
        if req.kind == CMD_READ && req.len > self.block.maximum as u64 {
            return Err((EOVERFLOW, "read larger than the maximum block size"));
        }
        if req.kind == CMD_FLUSH {
            return Ok(());
        }
        let in_range = req
            .offset
            .checked_add(req.len)
            .is_some_and(|end| end <= self.size);
        if !in_range {
            return Err(if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
                (ENOSPC, "request reaches past the end of the export")
            } else {
                (EINVAL, "request reaches past the end of the export")
            });
        }
        let min = self.block.minimum as u64;
        if min > 1 && (!req.offset.is_multiple_of(min) || !req.len.is_multiple_of(min)) {
            return Err((EINVAL, "request not aligned to the minimum block size"));
        }
        if req.kind == CMD_BLOCK_STATUS {
            if !self.base_allocation {
                return Err((EINVAL, "no metadata context was negotiated"));
            }
            if req.len == 0 {
                return Err((EINVAL, "block status of zero bytes"));
            }
        }
        if req.kind == CMD_WRITE_ZEROES && req.flags & CMD_FLAG_FAST_ZERO != 0 && !self.fast_zero {
            return Err((ENOTSUP, "fast zeroing is not possible on this export"));
        }
        Ok(())
    }

    /// Serve one request. `payload` is the budget held by a write's
    /// payload: it is released as soon as the device has the data, before
    /// the reply is sent (a client slow to read replies must not stall the
    /// reading of further writes).
    fn handle(
        &self,
        req: &Request,
        sc: &mut Scratch,
        payload: Option<BudgetGuard<'_>>,
    ) -> io::Result<()> {
        if let Err((errno, msg)) = self.validate(req) {
            return self.send_error(req, errno, msg, sc);
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let result = match req.kind {
            CMD_READ => return self.read(req, sc),
            CMD_BLOCK_STATUS => return self.block_status(req, sc),
            _ if req.len == 0 && req.kind != CMD_FLUSH => Ok(()),
            CMD_WRITE => {
                let t0 = Instant::now();
                let r = self.dev.write_at(&sc.buf[..req.len as usize], req.offset);
                self.note_service(t0.elapsed());
                drop(payload);
                r
            }
            CMD_FLUSH => self.dev.flush(),
            CMD_TRIM => self.dev.trim(req.offset, req.len),
            CMD_CACHE => self.dev.cache(req.offset, req.len),
            CMD_WRITE_ZEROES => {
                let flags = ZeroFlags {
                    may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                    fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
                };
                self.dev.write_zeroes(req.offset, req.len, flags)
            }
            _ => unreachable!("validate() refuses unknown commands"),
        };
        let result = result.and_then(|()| {
            if fua && matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
                self.dev.flush()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => self.send_ok(req, sc),
            Err(e) => self.send_device_error(req, &e, sc),
        }
    }

    fn header(&self, sc: &mut Scratch, flags: u16, kind: u16, req: &Request, payload: u64) {
        let mut h = [0u8; MAX_REPLY_HEADER];
        let n = chunk_header(
            &mut h, self.style, flags, kind, req.cookie, req.offset, payload,
        );
        sc.head.extend_from_slice(&h[..n]);
    }

    /// Send a reply now, or append it to the batch when batching.
    fn write_pieces(
        &self,
        pieces: &[Piece<'_>],
        io: &mut SendBufs,
    ) -> io::Result<crate::send::SendOutcome> {
        if io.batching {
            let batch = &mut io.batch;
            for p in pieces {
                match p {
                    Piece::Mem(b) => batch.extend_from_slice(b),
                    Piece::Zeros(n) => batch.resize(batch.len() + *n as usize, 0),
                    Piece::File { file, offset, len } => {
                        let at = batch.len();
                        batch.resize(at + *len as usize, 0);
                        if std::os::unix::fs::FileExt::read_exact_at(
                            *file,
                            &mut batch[at..],
                            *offset,
                        )
                        .is_err()
                        {
                            // Only small reads are batched and those never
                            // carry file pieces; fail safe all the same.
                            return Err(io::Error::other("host file read failed while batching"));
                        }
                    }
                }
            }
            return Ok(crate::send::SendOutcome::default());
        }
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        send_pieces(&w, pieces, self.limits.sendfile, &mut io.bounce)
    }

    /// Send the batched replies, if any.
    fn flush_batch(&self, io: &mut SendBufs) -> io::Result<()> {
        if io.batch.is_empty() {
            return Ok(());
        }
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let r = send_pieces(&w, &[Piece::Mem(&io.batch)], false, &mut io.bounce);
        io.batch.clear();
        if io.batch.capacity() > KEEP_BUFFER {
            io.batch = Vec::new();
        }
        r.map(drop)
    }

    fn send_ok(&self, req: &Request, sc: &mut Scratch) -> io::Result<()> {
        sc.head.clear();
        if self.style == ReplyStyle::Extended {
            self.header(sc, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req, 0);
        } else {
            let mut h = [0u8; MAX_REPLY_HEADER];
            let n = simple_reply(&mut h, 0, req.cookie);
            sc.head.extend_from_slice(&h[..n]);
        }
        let head = std::mem::take(&mut sc.head);
        let r = self.write_pieces(&[Piece::Mem(&head)], &mut sc.io);
        sc.head = head;
        r.map(drop)
    }

    fn send_error(
        &self,
        req: &Request,
        errno: u32,
        msg: &'static str,
        sc: &mut Scratch,
    ) -> io::Result<()> {
        debug!(
            "{}: refusing command {} at {}+{}: {msg}",
            self.peer, req.kind, req.offset, req.len
        );
        self.send_error_string(req, errno, msg, sc)
    }

    /// Answer a request the device failed, and log it: failures of the
    /// backing store (a host file that changed, an I/O error) are the
    /// operator's business and logged as warnings; errors the client caused
    /// (out of range, read-only) only at debug level.
    fn send_device_error(
        &self,
        req: &Request,
        e: &synth::Error,
        sc: &mut Scratch,
    ) -> io::Result<()> {
        match e.kind() {
            ErrorKind::Io | ErrorKind::Corrupt | ErrorKind::NoSpace => warn!(
                "{}: command {} at {}+{}: {e:#}",
                self.peer, req.kind, req.offset, req.len
            ),
            _ => debug!(
                "{}: command {} at {}+{}: {e:#}",
                self.peer, req.kind, req.offset, req.len
            ),
        }
        self.send_error_string(req, errno_of(e.kind()), &format!("{e:#}"), sc)
    }

    fn send_error_string(
        &self,
        req: &Request,
        errno: u32,
        msg: &str,
        sc: &mut Scratch,
    ) -> io::Result<()> {
        sc.head.clear();
        if self.style == ReplyStyle::Simple {
            let mut h = [0u8; MAX_REPLY_HEADER];
            let n = simple_reply(&mut h, errno, req.cookie);
            sc.head.extend_from_slice(&h[..n]);
        } else {
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            self.header(
                sc,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                req,
                6 + msg.len() as u64,
            );
            sc.head.extend_from_slice(&errno.to_be_bytes());
            sc.head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            sc.head.extend_from_slice(msg);
        }
        let head = std::mem::take(&mut sc.head);
        let r = self.write_pieces(&[Piece::Mem(&head)], &mut sc.io);
        sc.head = head;
        r.map(drop)
    }

    fn read(&self, req: &Request, sc: &mut Scratch) -> io::Result<()> {
        // Gather the answer before sending anything, so device errors
        // become clean error replies.
        sc.chunks.clear();
        let t0 = Instant::now();
        let zero_copy = match self.dev.read_chunks(req.offset, req.len, &mut sc.chunks) {
            Ok(z) => z,
            Err(e) => return self.send_device_error(req, &e, sc),
        };
        let _guard;
        if !zero_copy {
            _guard = self.budget.acquire(req.len);
            sc.buf.resize(req.len as usize, 0);
            if let Err(e) = self.dev.read_at(&mut sc.buf, req.offset) {
                return self.send_device_error(req, &e, sc);
            }
        }
        // Host-tree files (chunks with a check) are copied, not sent with
        // sendfile: sendfile hands the socket references to page-cache pages,
        // which the client reads later, so a file truncated or rewritten
        // after the last check would reach the client as zeros or torn bytes
        // in a reply already marked good. Copied, the bytes are a snapshot,
        // checked ([`synth::ReadCheck`]) before the first byte of the reply
        // goes out; a file that changed is a clean error reply. Small reads
        // of any file are copied too: one pread plus one sendmsg carrying
        // header and data, and the data chunk can be final. So are all
        // reads under simple replies, which cannot carry an error after the
        // data (proto.md "Simple reply message"). Plain files (`disksynth
        // file`, overlay pages) keep sendfile otherwise; if one comes up
        // short, an error chunk ends the reply.
        let has_file = sc
            .chunks
            .iter()
            .any(|c| matches!(c, ReadChunk::File { .. }));
        let checked = sc
            .chunks
            .iter()
            .any(|c| matches!(c, ReadChunk::File { check: Some(_), .. }));
        let inline_files = zero_copy
            && has_file
            && (req.len <= SMALL_READ || checked || self.style == ReplyStyle::Simple);
        let _inline_guard;
        if inline_files {
            if req.len > SMALL_READ {
                _inline_guard = self.budget.acquire(req.len);
            }
            sc.buf.resize(req.len as usize, 0);
            let mut rel = 0usize;
            for c in &sc.chunks {
                if let ReadChunk::File {
                    file, offset, len, ..
                } = c
                {
                    let dst = &mut sc.buf[rel..rel + *len as usize];
                    if let Err(e) = std::os::unix::fs::FileExt::read_exact_at(&**file, dst, *offset)
                    {
                        let msg = format!("reading the host file: {e}");
                        return self.send_error_string(req, EIO, &msg, sc);
                    }
                }
                rel += c.len() as usize;
            }
            // Only once every piece is read: a file that changed while it
            // was read fails the whole request, before anything is sent.
            for c in &sc.chunks {
                if let ReadChunk::File {
                    file,
                    check: Some(check),
                    ..
                } = c
                {
                    if let Err(e) = check.verify(file) {
                        return self.send_device_error(req, &e, sc);
                    }
                }
            }
        }
        self.note_service(t0.elapsed());
        let mut body: Vec<Piece<'_>> = Vec::with_capacity(sc.chunks.len() + 1);
        if zero_copy {
            let mut rel = 0usize;
            for c in &sc.chunks {
                let n = c.len() as usize;
                body.push(match c {
                    ReadChunk::Zero(n) => Piece::Zeros(*n),
                    ReadChunk::Bytes(b) => Piece::Mem(b),
                    ReadChunk::File { .. } if inline_files => Piece::Mem(&sc.buf[rel..rel + n]),
                    ReadChunk::File {
                        file, offset, len, ..
                    } => Piece::File {
                        file,
                        offset: *offset,
                        len: *len,
                    },
                });
                rel += n;
            }
        } else {
            body.push(Piece::Mem(&sc.buf[..req.len as usize]));
        }

        let mut head = std::mem::take(&mut sc.head);
        head.clear();
        let outcome = if self.style == ReplyStyle::Simple {
            let mut h = [0u8; MAX_REPLY_HEADER];
            let n = simple_reply(&mut h, 0, req.cookie);
            head.extend_from_slice(&h[..n]);
            let mut pieces = Vec::with_capacity(body.len() + 1);
            pieces.push(Piece::Mem(&head));
            pieces.extend_from_slice(&body);
            let out = self.write_pieces(&pieces, &mut sc.io)?;
            if out.short_at.is_some() {
                // A simple reply cannot carry a late error: hang up rather
                // than let zeros pass for data (proto.md "Simple reply
                // message"). (Never reached: file pieces were copied above.)
                self.kill("a file shrank under a read");
            }
            sc.head = head;
            return Ok(());
        } else {
            let df = req.flags & CMD_FLAG_DF != 0;
            self.structured_read(req, &body, df, &mut head, &mut sc.io)?
        };
        sc.head = head;
        if let Some(at) = outcome {
            sc.head.clear();
            let msg = b"the backing file shrank during the read";
            self.header(
                sc,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR_OFFSET,
                req,
                6 + msg.len() as u64 + 8,
            );
            sc.head.extend_from_slice(&EIO.to_be_bytes());
            sc.head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            sc.head.extend_from_slice(msg);
            sc.head.extend_from_slice(&(req.offset + at).to_be_bytes());
            let head = std::mem::take(&mut sc.head);
            let r = self.write_pieces(&[Piece::Mem(&head)], &mut sc.io);
            sc.head = head;
            r?;
        }
        Ok(())
    }

    /// End a structured reply with an empty `NONE` chunk carrying `DONE`.
    fn send_done(&self, req: &Request, io: &mut SendBufs) -> io::Result<()> {
        let mut h = [0u8; MAX_REPLY_HEADER];
        let n = chunk_header(
            &mut h,
            self.style,
            REPLY_FLAG_DONE,
            REPLY_TYPE_NONE,
            req.cookie,
            req.offset,
            0,
        );
        self.write_pieces(&[Piece::Mem(&h[..n])], io).map(drop)
    }

    /// Send a structured read reply: `OFFSET_DATA` chunks for data,
    /// `OFFSET_HOLE` chunks for zero runs (sparse reads; a single data
    /// chunk when `df`). Returns the payload offset of a short file read
    /// that still needs its error chunk.
    fn structured_read(
        &self,
        req: &Request,
        body: &[Piece<'_>],
        df: bool,
        head: &mut Vec<u8>,
        io: &mut SendBufs,
    ) -> io::Result<Option<u64>> {
        if req.len == 0 {
            return self.send_done(req, io).map(|()| None);
        }
        // Plan the chunks: (is_hole, start index in body, end index, offset, len).
        let is_hole = |p: &Piece<'_>| !df && matches!(p, Piece::Zeros(n) if *n >= HOLE_MIN);
        let mut runs: Vec<(bool, usize, usize, u64, u64)> = Vec::with_capacity(4);
        let mut off = req.offset;
        for (i, p) in body.iter().enumerate() {
            let len = match p {
                Piece::Mem(b) => b.len() as u64,
                Piece::Zeros(n) => *n,
                Piece::File { len, .. } => *len,
            };
            let hole = is_hole(p);
            match runs.last_mut() {
                Some(r) if !hole && !r.0 => {
                    r.2 = i + 1;
                    r.4 += len;
                }
                _ => runs.push((hole, i, i + 1, off, len)),
            }
            off += len;
        }
        let has_file = body.iter().any(|p| matches!(p, Piece::File { .. }));
        // A chunk may only be marked final once no error can follow it;
        // file pieces can still come up short, so end with a NONE chunk.
        let last = runs.len() - 1;
        for (k, r) in runs.iter().enumerate() {
            let flags = if k == last && !has_file {
                REPLY_FLAG_DONE
            } else {
                0
            };
            let mut h = [0u8; MAX_REPLY_HEADER];
            if r.0 {
                let n = chunk_header(
                    &mut h,
                    self.style,
                    flags,
                    REPLY_TYPE_OFFSET_HOLE,
                    req.cookie,
                    req.offset,
                    12,
                );
                head.extend_from_slice(&h[..n]);
                head.extend_from_slice(&r.3.to_be_bytes());
                head.extend_from_slice(&(r.4 as u32).to_be_bytes());
            } else {
                let n = chunk_header(
                    &mut h,
                    self.style,
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    req.cookie,
                    req.offset,
                    8 + r.4,
                );
                head.extend_from_slice(&h[..n]);
                head.extend_from_slice(&r.3.to_be_bytes());
            }
        }
        // Interleave headers and bodies.
        let hsize = if self.style == ReplyStyle::Extended {
            32
        } else {
            20
        };
        let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(body.len() + 2 * runs.len() + 1);
        let mut pos = 0usize;
        let mut file_seen_at = None;
        let mut payload = 0u64;
        for r in &runs {
            let hlen = hsize + if r.0 { 12 } else { 8 };
            pieces.push(Piece::Mem(&head[pos..pos + hlen]));
            pos += hlen;
            payload += hlen as u64;
            if !r.0 {
                for p in &body[r.1..r.2] {
                    if matches!(p, Piece::File { .. }) && file_seen_at.is_none() {
                        file_seen_at = Some(payload);
                    }
                    pieces.push(*p);
                }
                payload += r.4;
            }
        }
        debug_assert_eq!(pos, head.len());
        // A short file piece is padded with zeros (the chunk lengths are
        // already promised), and the caller then ends the reply with an
        // error chunk: no chunk before it carried DONE, so the client never
        // accepted the zeros as the answer.
        let out = self.write_pieces(&pieces, io)?;
        let Some(wire_at) = out.short_at else {
            if has_file {
                // Every file piece arrived whole: now the reply may end.
                self.send_done(req, io)?;
            }
            return Ok(None);
        };
        // Translate the wire position back into a read offset: find the
        // data run containing it.
        let mut wire = 0u64;
        for r in &runs {
            let hlen = (hsize + if r.0 { 12 } else { 8 }) as u64;
            wire += hlen;
            if !r.0 {
                if wire_at < wire + r.4 {
                    return Ok(Some(r.3 - req.offset + wire_at.saturating_sub(wire)));
                }
                wire += r.4;
            }
        }
        Ok(Some(req.len.saturating_sub(1)))
    }

    fn block_status(&self, req: &Request, sc: &mut Scratch) -> io::Result<()> {
        let limit = if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_DESCRIPTORS
        };
        let mut list = std::mem::replace(&mut sc.extents, ExtentList::new(0));
        list.reset(req.offset, limit);
        let r = self.dev.extents(req.offset, req.len, &mut list);
        if let Err(e) = r {
            sc.extents = list;
            return self.send_device_error(req, &e, sc);
        }
        if list.is_empty() {
            list.push(req.len, ExtentKind::Data);
        }
        list.truncate_to(req.offset + req.len);
        let ext = self.style == ReplyStyle::Extended;
        let n = list.as_slice().len();
        sc.head.clear();
        let payload = if ext { 8 + 16 * n } else { 4 + 8 * n } as u64;
        let kind = if ext {
            REPLY_TYPE_BLOCK_STATUS_EXT
        } else {
            REPLY_TYPE_BLOCK_STATUS
        };
        self.header(sc, REPLY_FLAG_DONE, kind, req, payload);
        sc.head
            .extend_from_slice(&META_BASE_ALLOCATION_ID.to_be_bytes());
        if ext {
            sc.head.extend_from_slice(&(n as u32).to_be_bytes());
        }
        for e in list.as_slice() {
            let flags = match e.kind {
                ExtentKind::Data => 0,
                ExtentKind::Zero => STATE_ZERO,
                ExtentKind::Hole => STATE_HOLE | STATE_ZERO,
            };
            if ext {
                sc.head.extend_from_slice(&e.len.to_be_bytes());
                sc.head.extend_from_slice(&(flags as u64).to_be_bytes());
            } else {
                // A compact request is under 4 GiB, so every extent fits.
                sc.head.extend_from_slice(&(e.len as u32).to_be_bytes());
                sc.head.extend_from_slice(&flags.to_be_bytes());
            }
        }
        sc.extents = list;
        let head = std::mem::take(&mut sc.head);
        let r = self.write_pieces(&[Piece::Mem(&head)], &mut sc.io);
        sc.head = head;
        r.map(drop)
    }
}
