//! Replies out (proto.md "Simple reply message", "Structured reply chunk
//! message", "Extended reply chunk message"): headers encoded into the
//! worker's scratch space, sent at once or batched, and the plan of a
//! structured read's data and hole chunks.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;

use log::{debug, warn};
use synth::ErrorKind;

use crate::proto::*;
use crate::send::{send_pieces, Piece, SendOutcome};
use crate::tls::TlsSession;

use super::request::Request;
use super::{Connection, Scratch, KEEP_BUFFER};

/// Reads smaller than this inside a data run are sent as zero bytes rather
/// than split into a hole chunk (a chunk header costs 20-32 bytes and a
/// client round of parsing).
const HOLE_MIN: u64 = 4096;

/// Longest error message sent (proto.md: strings are at most 4096 bytes).
const MAX_MESSAGE: usize = 4096;

/// Where replies go: straight to the socket, or into a batch that is
/// sent in one syscall when the burst of requests ends.
pub(super) struct SendBufs {
    pub bounce: Vec<u8>,
    pub batching: bool,
    pub batch: Vec<u8>,
}

/// One chunk of a structured read reply: a run of data pieces, or a hole.
struct Run {
    hole: bool,
    /// The body pieces it carries (none for a hole).
    pieces: Range<usize>,
    /// Where it starts in the export, and its length.
    offset: u64,
    len: u64,
    /// Its header (chunk header and fixed payload) in the header buffer.
    header: Range<usize>,
}

impl Connection {
    /// Append a chunk header for `req` to the worker's header buffer.
    pub(super) fn push_header(
        &self,
        head: &mut Vec<u8>,
        flags: u16,
        kind: u16,
        req: &Request,
        payload: u64,
    ) {
        let mut h = [0u8; MAX_REPLY_HEADER];
        let n = chunk_header(
            &mut h, self.style, flags, kind, req.cookie, req.offset, payload,
        );
        head.extend_from_slice(&h[..n]);
    }

    /// Send a reply now, or append it to the batch when batching.
    pub(super) fn write_pieces(
        &self,
        pieces: &[Piece<'_>],
        io: &mut SendBufs,
    ) -> io::Result<SendOutcome> {
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
            return Ok(SendOutcome::default());
        }
        if let Some(t) = &self.tls {
            // File pieces are read before the writer lock (in parallel
            // with other workers' replies going out); only encryption and
            // sending are serialized.
            let (slices, out) = TlsSession::stage(pieces, &mut io.bounce);
            let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if self.dead.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            return t.send_staged(&self.stream, &slices).map(|()| out);
        }
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        send_pieces(&self.stream, pieces, self.limits.sendfile, &mut io.bounce)
    }

    /// Send the batched replies, if any.
    pub(super) fn flush_batch(&self, io: &mut SendBufs) -> io::Result<()> {
        if io.batch.is_empty() {
            return Ok(());
        }
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let r = if self.dead.load(Ordering::SeqCst) {
            Err(io::ErrorKind::BrokenPipe.into())
        } else if let Some(t) = &self.tls {
            t.write_all(&self.stream, &io.batch)
                .map(|()| SendOutcome::default())
        } else {
            send_pieces(
                &self.stream,
                &[Piece::Mem(&io.batch)],
                false,
                &mut io.bounce,
            )
        };
        drop(w);
        io.batch.clear();
        if io.batch.capacity() > KEEP_BUFFER {
            io.batch = Vec::new();
        }
        r.map(drop)
    }

    /// Send the header buffer as one reply.
    fn send_head(&self, sc: &mut Scratch) -> io::Result<()> {
        let head = std::mem::take(&mut sc.head);
        let r = self.write_pieces(&[Piece::Mem(&head)], &mut sc.io);
        sc.head = head;
        r.map(drop)
    }

    /// Success without data: a simple reply, or a `NONE` chunk with `DONE`.
    pub(super) fn send_ok(&self, req: &Request, sc: &mut Scratch) -> io::Result<()> {
        sc.head.clear();
        if self.style == ReplyStyle::Simple {
            let mut h = [0u8; MAX_REPLY_HEADER];
            let n = simple_reply(&mut h, 0, req.cookie);
            sc.head.extend_from_slice(&h[..n]);
        } else {
            self.push_header(&mut sc.head, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req, 0);
        }
        self.send_head(sc)
    }

    /// Refuse a request the client got wrong (logged at debug level).
    pub(super) fn send_error(
        &self,
        req: &Request,
        errno: u32,
        msg: &'static str,
        sc: &mut Scratch,
    ) -> io::Result<()> {
        debug!("{}: refusing {req}: {msg}", self.peer);
        self.send_error_string(req, errno, msg, sc)
    }

    /// Answer a request the device failed, and log it: failures of the
    /// backing store (a host file that changed, an I/O error) are the
    /// operator's business and logged as warnings; errors the client caused
    /// (out of range, read-only) only at debug level.
    pub(super) fn send_device_error(
        &self,
        req: &Request,
        e: &synth::Error,
        sc: &mut Scratch,
    ) -> io::Result<()> {
        match e.kind() {
            ErrorKind::Io | ErrorKind::Corrupt | ErrorKind::NoSpace => {
                warn!("{}: {req}: {e:#}", self.peer)
            }
            _ => debug!("{}: {req}: {e:#}", self.peer),
        }
        self.send_error_string(req, errno_of(e.kind()), &format!("{e:#}"), sc)
    }

    /// An error reply: a simple reply carries the errno only; a structured
    /// one an `ERROR` chunk with the message too.
    pub(super) fn send_error_string(
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
            let msg = truncate(msg);
            self.push_header(
                &mut sc.head,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                req,
                6 + msg.len() as u64,
            );
            sc.head.extend_from_slice(&errno.to_be_bytes());
            sc.head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            sc.head.extend_from_slice(msg);
        }
        self.send_head(sc)
    }

    /// End a read whose file data came up short at `offset` with an
    /// `ERROR_OFFSET` chunk: no chunk before it carried `DONE`, so the
    /// client never took the padding zeros for data.
    pub(super) fn send_short_read(
        &self,
        req: &Request,
        offset: u64,
        sc: &mut Scratch,
    ) -> io::Result<()> {
        sc.head.clear();
        let msg = b"the backing file shrank during the read";
        self.push_header(
            &mut sc.head,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR_OFFSET,
            req,
            6 + msg.len() as u64 + 8,
        );
        sc.head.extend_from_slice(&EIO.to_be_bytes());
        sc.head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        sc.head.extend_from_slice(msg);
        sc.head.extend_from_slice(&offset.to_be_bytes());
        self.send_head(sc)
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
    pub(super) fn structured_read(
        &self,
        req: &Request,
        body: &[Piece<'_>],
        df: bool,
        head: &mut Vec<u8>,
        io: &mut SendBufs,
    ) -> io::Result<Option<u64>> {
        if req.len == 0 || body.is_empty() {
            return self.send_done(req, io).map(|()| None);
        }
        let mut runs = plan_runs(req.offset, body, df);
        let has_file = body.iter().any(|p| matches!(p, Piece::File { .. }));
        // A chunk may only be marked final once no error can follow it;
        // file pieces can still come up short, so end with a NONE chunk.
        let last = runs.len().saturating_sub(1);
        for (k, r) in runs.iter_mut().enumerate() {
            let flags = if k == last && !has_file {
                REPLY_FLAG_DONE
            } else {
                0
            };
            let start = head.len();
            if r.hole {
                self.push_header(
                    head,
                    flags,
                    REPLY_TYPE_OFFSET_HOLE,
                    req,
                    OFFSET_HOLE_PAYLOAD as u64,
                );
                head.extend_from_slice(&r.offset.to_be_bytes());
                // Holes come from one read, at most the maximum block size
                // (a u32), so the 32-bit hole size holds them.
                head.extend_from_slice(&(r.len as u32).to_be_bytes());
            } else {
                self.push_header(
                    head,
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    req,
                    OFFSET_DATA_PREFIX as u64 + r.len,
                );
                head.extend_from_slice(&r.offset.to_be_bytes());
            }
            r.header = start..head.len();
        }
        // Interleave headers and bodies.
        let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(body.len() + runs.len() + 1);
        for r in &runs {
            pieces.push(Piece::Mem(&head[r.header.clone()]));
            if !r.hole {
                pieces.extend_from_slice(&body[r.pieces.clone()]);
            }
        }
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
            wire += r.header.len() as u64;
            if !r.hole {
                if wire_at < wire + r.len {
                    return Ok(Some(r.offset - req.offset + wire_at.saturating_sub(wire)));
                }
                wire += r.len;
            }
        }
        Ok(Some(req.len.saturating_sub(1)))
    }
}

/// Group a read's pieces into chunks: zero runs of at least [`HOLE_MIN`]
/// become holes (none when `df`), everything else joins the data run
/// around it.
fn plan_runs(mut offset: u64, body: &[Piece<'_>], df: bool) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::with_capacity(4);
    for (i, p) in body.iter().enumerate() {
        let len = match p {
            Piece::Mem(b) => b.len() as u64,
            Piece::Zeros(n) => *n,
            Piece::File { len, .. } => *len,
        };
        let hole = !df && matches!(p, Piece::Zeros(n) if *n >= HOLE_MIN);
        match runs.last_mut() {
            Some(r) if !hole && !r.hole => {
                r.pieces.end = i + 1;
                r.len += len;
            }
            _ => runs.push(Run {
                hole,
                pieces: i..i + 1,
                offset,
                len,
                header: 0..0,
            }),
        }
        offset += len;
    }
    runs
}

/// At most [`MAX_MESSAGE`] bytes of `msg`.
fn truncate(msg: &str) -> &[u8] {
    let b = msg.as_bytes();
    &b[..b.len().min(MAX_MESSAGE)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_data_and_small_zeros_and_split_out_holes() {
        let data = [1u8; 512];
        let body = [
            Piece::Mem(&data),
            Piece::Zeros(100),
            Piece::Mem(&data),
            Piece::Zeros(8192),
            Piece::Mem(&data),
        ];
        let runs = plan_runs(1000, &body, false);
        let shape: Vec<_> = runs
            .iter()
            .map(|r| (r.hole, r.pieces.clone(), r.offset, r.len))
            .collect();
        assert_eq!(
            shape,
            vec![
                (false, 0..3, 1000, 1124),
                (true, 3..4, 2124, 8192),
                (false, 4..5, 10316, 512),
            ]
        );
        // DF: one data chunk.
        let runs = plan_runs(0, &body, true);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].len, 512 * 3 + 100 + 8192);
    }
}
