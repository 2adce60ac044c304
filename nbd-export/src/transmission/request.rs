//! Requests in (proto.md "Request message"): a header decoded into a typed
//! [`Request`], a write's payload read under the budget, and the checks a
//! request must pass before the device sees it.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use crate::proto::{self, *};
use crate::stream::Stream;

use super::budget::BudgetGuard;
use super::Connection;

/// Write payloads beyond the maximum block size are read and dropped up to
/// this size (so the connection survives); larger ones end the connection.
const DISCARD_LIMIT: u64 = 1 << 32;

/// A transmission command (proto.md "Request types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// A type this server does not know: refused with `EINVAL`.
    Unknown(u16),
}

impl Command {
    fn from_wire(t: u16) -> Command {
        match t {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disconnect,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// Whether it changes the export (refused on a read-only one, and what
    /// `FUA` makes durable).
    pub(super) fn modifies(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }

    /// The command flags valid with it (proto.md "Command flags"); `None`
    /// for an unknown command.
    fn allowed_flags(self) -> Option<u16> {
        Some(match self {
            Command::Read => CMD_FLAG_FUA | CMD_FLAG_DF,
            Command::Write | Command::Trim | Command::Flush | Command::Cache => CMD_FLAG_FUA,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            Command::Disconnect => 0,
            Command::Unknown(_) => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Command::Read => "READ",
            Command::Write => "WRITE",
            Command::Disconnect => "DISC",
            Command::Flush => "FLUSH",
            Command::Trim => "TRIM",
            Command::Cache => "CACHE",
            Command::WriteZeroes => "WRITE_ZEROES",
            Command::BlockStatus => "BLOCK_STATUS",
            Command::Unknown(t) => return write!(f, "command {t}"),
        };
        write!(f, "NBD_CMD_{name}")
    }
}

/// One request as this connection serves it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request {
    pub command: Command,
    pub flags: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u64,
}

impl Request {
    fn from_wire(w: proto::Request) -> Request {
        Request {
            command: Command::from_wire(w.kind),
            flags: w.flags,
            cookie: w.cookie,
            offset: w.offset,
            len: w.len,
        }
    }

    /// Whether the client set `flag`.
    pub(super) fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}+{}", self.command, self.offset, self.len)
    }
}

/// The connection's read side, owned by whichever worker leads.
pub(super) struct ReaderState {
    pub r: BufReader<SharedStream>,
    /// No more requests will be read (the client left or broke the protocol).
    pub done: bool,
    /// Why reading stopped, when the client broke the protocol: the
    /// connection is cut once the replies already due are sent.
    pub broken: Option<String>,
    /// The last leader found nothing to read for a while: the workers
    /// behind it leave at once instead of each waiting again.
    pub idle: bool,
}

/// A connection's socket as a reader: the one descriptor is shared by the
/// reading and the replying threads.
pub(super) struct SharedStream {
    pub s: std::sync::Arc<Stream>,
    /// Under TLS, reads decrypt through the session.
    pub tls: Option<std::sync::Arc<crate::tls::TlsSession>>,
}

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            Some(t) => t.read(&self.s, buf, &mut || Ok(())),
            None => (&*self.s).read(buf),
        }
    }
}

/// Whether a read error only means that nothing arrived for a while: the
/// socket's receive timeout is the workers' idle time (see `workers.rs`),
/// and a client may rightly pause in the middle of a request.
pub(super) fn pause(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// `read_exact` through pauses: unlike `Read::read_exact`, a timeout in
/// the middle loses none of the bytes already read.
fn read_full(r: &mut BufReader<SharedStream>, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if pause(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a worker got from the reader.
pub(super) enum Next<'a> {
    /// A request; a write's payload is in the worker's buffer, holding
    /// its bytes of the budget.
    Request(Request, Option<BudgetGuard<'a>>),
    /// A request to answer with this error without serving it (its payload,
    /// if any, was read and dropped).
    Refused(Request, u32, &'static str),
    /// Nothing arrived for a while: the worker may leave.
    Idle,
    /// No more requests.
    Stop,
}

impl Connection {
    /// Read the next request, noting in `st` when reading ends.
    pub(super) fn next_request<'a>(&'a self, st: &mut ReaderState, buf: &mut Vec<u8>) -> Next<'a> {
        match self.read_one(&mut st.r, buf) {
            Ok(Next::Stop) => {
                st.done = true;
                Next::Stop
            }
            Ok(n) => n,
            Err(e) => {
                st.done = true;
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    log::warn!("{}: {e}; closing the connection", self.peer);
                    st.broken = Some(e.to_string());
                }
                Next::Stop
            }
        }
    }

    fn read_one<'a>(
        &'a self,
        r: &mut BufReader<SharedStream>,
        buf: &mut Vec<u8>,
    ) -> io::Result<Next<'a>> {
        let wire = if self.style == ReplyStyle::Extended {
            let mut h = [0u8; EXTENDED_REQUEST_LEN];
            read_full(r, &mut h)?;
            proto::Request::decode_extended(&h)
        } else {
            let mut h = [0u8; REQUEST_LEN];
            read_full(r, &mut h)?;
            proto::Request::decode_compact(&h)
        };
        let Some(req) = wire.map(Request::from_wire) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad request magic",
            ));
        };
        match req.command {
            Command::Disconnect => Ok(Next::Stop),
            Command::Write if req.len > self.block.maximum as u64 => {
                // proto.md "Block size constraints": a request past the
                // maximum block size may be refused (EOVERFLOW, as for
                // reads); the payload must still be read to stay in step.
                self.discard(r, req.len)?;
                Ok(Next::Refused(
                    req,
                    EOVERFLOW,
                    "write larger than the maximum block size",
                ))
            }
            Command::Write => {
                let Some(guard) = self.budget.acquire(req.len) else {
                    // Only if the budget is below the advertised maximum,
                    // which `Connection::new` rules out; never wait forever.
                    self.discard(r, req.len)?;
                    return Ok(Next::Refused(
                        req,
                        EOVERFLOW,
                        "write larger than this connection's buffer",
                    ));
                };
                buf.resize(req.len as usize, 0);
                read_full(r, buf)?;
                Ok(Next::Request(req, Some(guard)))
            }
            _ => Ok(Next::Request(req, None)),
        }
    }

    /// Read and drop `len` payload bytes, or give up on a payload so large
    /// that reading it would only serve a denial of service.
    fn discard(&self, r: &mut BufReader<SharedStream>, len: u64) -> io::Result<()> {
        if len > DISCARD_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("write payload of {len} bytes is beyond any limit"),
            ));
        }
        let mut left = len;
        while left > 0 {
            let avail = match r.fill_buf() {
                Ok([]) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(b) => b.len() as u64,
                Err(e) if pause(&e) => continue,
                Err(e) => return Err(e),
            };
            let k = avail.min(left);
            r.consume(k as usize);
            left -= k;
        }
        Ok(())
    }

    /// Check a request; `Err((errno, message))` when it must be refused
    /// (proto.md "Error values"; the connection lives on).
    pub(super) fn validate(&self, req: &Request) -> Result<(), (u32, &'static str)> {
        let Some(allowed) = req.command.allowed_flags() else {
            return Err((EINVAL, "unknown command"));
        };
        if req.flags & !allowed != 0 {
            return Err((EINVAL, "flags not valid for this command"));
        }
        if req.has(CMD_FLAG_DF) && self.style == ReplyStyle::Simple {
            return Err((EINVAL, "DF needs structured replies"));
        }
        if req.command.modifies() && !self.writable {
            return Err((EPERM, "the export is read-only"));
        }
        if req.command == Command::Read && req.len > self.block.maximum as u64 {
            return Err((EOVERFLOW, "read larger than the maximum block size"));
        }
        if req.command == Command::Flush {
            return Ok(());
        }
        let in_range = req
            .offset
            .checked_add(req.len)
            .is_some_and(|end| end <= self.size);
        if !in_range {
            return Err(
                if matches!(req.command, Command::Write | Command::WriteZeroes) {
                    (ENOSPC, "request reaches past the end of the export")
                } else {
                    (EINVAL, "request reaches past the end of the export")
                },
            );
        }
        let min = self.block.minimum as u64;
        if min > 1 && (!req.offset.is_multiple_of(min) || !req.len.is_multiple_of(min)) {
            return Err((EINVAL, "request not aligned to the minimum block size"));
        }
        if req.command == Command::BlockStatus {
            if !self.base_allocation {
                return Err((EINVAL, "no metadata context was negotiated"));
            }
            if req.len == 0 {
                return Err((EINVAL, "block status of zero bytes"));
            }
        }
        if req.command == Command::WriteZeroes && req.has(CMD_FLAG_FAST_ZERO) && !self.fast_zero {
            return Err((ENOTSUP, "fast zeroing is not possible on this export"));
        }
        Ok(())
    }
}
