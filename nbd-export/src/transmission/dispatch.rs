//! Serving one checked request on the device (proto.md "Request types"):
//! reads gathered into chunks and sent zero-copy where they can be, writes
//! and the other commands answered with success or the device's error.

use std::io;
use std::time::Instant;

use synth::{ExtentKind, ExtentList, ReadChunk, ZeroFlags};

use crate::proto::*;
use crate::send::Piece;

use super::budget::BudgetGuard;
use super::request::{Command, Request};
use super::{Connection, Scratch};

/// Largest number of block-status descriptors in one reply.
const MAX_DESCRIPTORS: usize = 16 * 1024;
/// Reads up to this size copy host-file data instead of using sendfile.
const SMALL_READ: u64 = 32 * 1024;

impl Connection {
    /// Serve one request. `payload` is the budget held by a write's
    /// payload: it is released as soon as the device has the data, before
    /// the reply is sent (a client slow to read replies must not stall the
    /// reading of further writes).
    pub(super) fn handle(
        &self,
        req: &Request,
        sc: &mut Scratch,
        payload: Option<BudgetGuard<'_>>,
    ) -> io::Result<()> {
        // -vv: a line per request (a level check otherwise: one atomic load).
        if !log::log_enabled!(log::Level::Debug) {
            return self.serve(req, sc, payload);
        }
        let t0 = Instant::now();
        let r = self.serve(req, sc, payload);
        let took = t0.elapsed();
        match &r {
            Ok(()) => log::debug!("{}: {req}: replied in {took:.1?}", self.peer),
            Err(e) => log::debug!("{}: {req}: sending the reply failed: {e}", self.peer),
        }
        r
    }

    fn serve(
        &self,
        req: &Request,
        sc: &mut Scratch,
        payload: Option<BudgetGuard<'_>>,
    ) -> io::Result<()> {
        if let Err((errno, msg)) = self.validate(req) {
            return self.send_error(req, errno, msg, sc);
        }
        let result = match req.command {
            Command::Read => return self.read(req, sc),
            Command::BlockStatus => return self.block_status(req, sc),
            // Validation refuses both; answer rather than trust that here.
            Command::Disconnect | Command::Unknown(_) => {
                return self.send_error(req, EINVAL, "unknown command", sc)
            }
            Command::Flush => self.dev.flush(),
            _ if req.len == 0 => Ok(()),
            Command::Write => {
                let t0 = Instant::now();
                let r = match sc.buf.get(..req.len as usize) {
                    Some(data) => self.dev.write_at(data, req.offset),
                    None => {
                        return self.send_error(req, EIO, "write payload went missing", sc);
                    }
                };
                self.note_service(t0.elapsed());
                drop(payload);
                r
            }
            Command::Trim => self.dev.trim(req.offset, req.len),
            Command::Cache => self.dev.cache(req.offset, req.len),
            Command::WriteZeroes => {
                let flags = ZeroFlags {
                    may_trim: !req.has(CMD_FLAG_NO_HOLE),
                    fast: req.has(CMD_FLAG_FAST_ZERO),
                };
                self.dev.write_zeroes(req.offset, req.len, flags)
            }
        };
        // FUA (proto.md "Command flags"): the change is durable before the
        // reply says it is done.
        let result = result.and_then(|()| {
            if req.has(CMD_FLAG_FUA) && req.command.modifies() {
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

    fn read(&self, req: &Request, sc: &mut Scratch) -> io::Result<()> {
        // Gather the answer before sending anything, so device errors
        // become clean error replies.
        sc.chunks.clear();
        let t0 = Instant::now();
        let zero_copy = match self.dev.read_chunks(req.offset, req.len, &mut sc.chunks) {
            Ok(z) => z,
            Err(e) => return self.send_device_error(req, &e, sc),
        };
        if zero_copy {
            // Chunks that do not add up to the request would make a reply
            // that lies about the data (and slices that do not fit): a
            // broken device gets an error reply, not a wrong answer.
            let total = sc
                .chunks
                .iter()
                .try_fold(0u64, |t, c| t.checked_add(c.len()));
            if total != Some(req.len) {
                let msg = format!(
                    "the device answered a read of {} bytes with {total:?} bytes",
                    req.len
                );
                log::warn!("{}: {req}: {msg}", self.peer);
                return self.send_error_string(req, EIO, &msg, sc);
            }
        }
        let _guard;
        if !zero_copy {
            let Some(g) = self.budget.acquire(req.len) else {
                return self.send_error(
                    req,
                    EOVERFLOW,
                    "read larger than this connection's buffer",
                    sc,
                );
            };
            _guard = g;
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
        // data (proto.md "Simple reply message"), and all reads over TLS,
        // where there is no sendfile and the copy is needed anyway: read
        // here, before the writer lock, the data chunk carries `DONE` (no
        // extra record for a `NONE` chunk). Plain files (`disksynth file`,
        // overlay pages) keep sendfile otherwise; if one comes up short, an
        // error chunk ends the reply.
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
            && (req.len <= SMALL_READ
                || checked
                || self.style == ReplyStyle::Simple
                || self.tls.is_some());
        let _inline_guard;
        if inline_files {
            if req.len > SMALL_READ {
                let Some(g) = self.budget.acquire(req.len) else {
                    return self.send_error(
                        req,
                        EOVERFLOW,
                        "read larger than this connection's buffer",
                        sc,
                    );
                };
                _inline_guard = g;
            }
            sc.buf.resize(req.len as usize, 0);
            let mut rel = 0usize;
            for c in &sc.chunks {
                if let ReadChunk::File {
                    file, offset, len, ..
                } = c
                {
                    // In range: the chunks add up to the request (checked above).
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
        if self.style == ReplyStyle::Simple {
            let mut h = [0u8; MAX_REPLY_HEADER];
            let n = simple_reply(&mut h, 0, req.cookie);
            head.extend_from_slice(&h[..n]);
            let mut pieces = Vec::with_capacity(body.len() + 1);
            pieces.push(Piece::Mem(&head));
            pieces.extend_from_slice(&body);
            let out = self.write_pieces(&pieces, &mut sc.io);
            sc.head = head;
            if out?.short_at.is_some() {
                // A simple reply cannot carry a late error: hang up rather
                // than let zeros pass for data (proto.md "Simple reply
                // message"). (Never reached: file pieces were copied above.)
                self.kill("a file shrank under a read");
            }
            return Ok(());
        }
        let df = req.has(CMD_FLAG_DF);
        let outcome = self.structured_read(req, &body, df, &mut head, &mut sc.io);
        drop(body);
        sc.head = head;
        match outcome? {
            Some(at) => self.send_short_read(req, req.offset + at, sc),
            None => Ok(()),
        }
    }

    fn block_status(&self, req: &Request, sc: &mut Scratch) -> io::Result<()> {
        let limit = if req.has(CMD_FLAG_REQ_ONE) {
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
        self.push_header(&mut sc.head, REPLY_FLAG_DONE, kind, req, payload);
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
