//! A small read-only NBD client: an export on an NBD server as a
//! [`synth::BlockDev`] (what `disksynth inspect nbd://…` reads through).
//!
//! Fixed newstyle handshake, `NBD_OPT_GO` asking for the size constraints
//! (falling back to `NBD_OPT_EXPORT_NAME` only when the server does not know
//! `NBD_OPT_GO`), then `NBD_CMD_READ` with simple replies, one request at a
//! time on one connection, and `NBD_CMD_DISC` when dropped. No structured
//! replies, no TLS.
//!
//! The server is not trusted: every length it sends is bounded before
//! anything is allocated, every magic and cookie is checked, every wait has
//! a timeout, and anything unexpected is an error saying what the server
//! did, never a panic. After a broken reply the connection is not used again.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use synth::{check_range, BlockDev, BlockSize, Caps, Error, ErrorKind};

use crate::proto::*;
use crate::stream::Stream;
use crate::uri::{Endpoint, NbdUri};

/// Longest option reply accepted during the handshake. Nothing we ask for is
/// longer than a 4 KiB string plus a few bytes (proto.md "Conventions").
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// Largest read request sent: 32 MiB, the payload every server must accept
/// (proto.md "Size constraints"), or less if the server says so.
pub const MAX_READ_REQUEST: u32 = 32 << 20;

/// Most `NBD_REP_INFO` replies accepted before the final reply to `NBD_OPT_GO`.
const MAX_INFO_REPLIES: usize = 64;

/// Longest server message kept for an error (the rest is cut).
const MAX_MESSAGE_CHARS: usize = 512;

/// How to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Bound on establishing a TCP connection (per address).
    pub connect_timeout: Duration,
    /// Bound on every wait for the server afterwards (socket read and write
    /// timeouts): each handshake reply, each read reply.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why connecting to an NBD export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URI does not parse.
    #[error("invalid NBD URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `nbds://` or `nbds+unix://`.
    #[error("{uri}: TLS is not supported yet (nbds:// and nbds+unix:// need it); use nbd:// or nbd+unix://")]
    TlsUnsupported {
        /// The URI as given.
        uri: String,
    },
    /// No connection to the endpoint.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Host and port, or the socket.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// The server did not answer in time.
    #[error("NBD server at {endpoint}: no answer within {secs} s ({during})")]
    Timeout {
        /// Host and port, or the socket.
        endpoint: String,
        /// What we were waiting for.
        during: String,
        /// The timeout.
        secs: u64,
    },
    /// The server hung up.
    #[error("NBD server at {endpoint}: the connection was closed ({during})")]
    Closed {
        /// Host and port, or the socket.
        endpoint: String,
        /// What we were doing.
        during: String,
    },
    /// Another socket error.
    #[error("NBD server at {endpoint}: I/O error ({during}): {source}")]
    Io {
        /// Host and port, or the socket.
        endpoint: String,
        /// What we were doing.
        during: String,
        /// The error.
        source: io::Error,
    },
    /// The server broke the protocol (or is not an NBD server).
    #[error("NBD server at {endpoint}: {reason}")]
    Protocol {
        /// Host and port, or the socket.
        endpoint: String,
        /// What it did.
        reason: String,
    },
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    #[error("NBD server at {endpoint} has no export named {export:?}{}", says(.message))]
    NoSuchExport {
        /// Host and port, or the socket.
        endpoint: String,
        /// The name asked for.
        export: String,
        /// The server's message (may be empty).
        message: String,
    },
    /// The server hung up on `NBD_OPT_EXPORT_NAME` (which cannot fail politely).
    #[error(
        "NBD server at {endpoint} closed the connection when asked for export {export:?} \
         (NBD_OPT_EXPORT_NAME): no such export, or it refused it"
    )]
    ExportNameRefused {
        /// Host and port, or the socket.
        endpoint: String,
        /// The name asked for.
        export: String,
    },
    /// `NBD_REP_ERR_TLS_REQD`.
    #[error("NBD server at {endpoint} requires TLS for export {export:?}, which is not supported yet{}", says(.message))]
    TlsRequired {
        /// Host and port, or the socket.
        endpoint: String,
        /// The name asked for.
        export: String,
        /// The server's message (may be empty).
        message: String,
    },
    /// Another error reply to `NBD_OPT_GO`.
    #[error("NBD server at {endpoint} refused export {export:?} with {code}{}", says(.message))]
    Refused {
        /// Host and port, or the socket.
        endpoint: String,
        /// The name asked for.
        export: String,
        /// The reply type, e.g. `NBD_REP_ERR_POLICY`.
        code: String,
        /// The server's message (may be empty).
        message: String,
    },
}

fn says(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" (the server says: {message})")
    }
}

/// A server's message as one printable line of bounded length.
fn message_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out.trim().to_owned()
}

/// Bytes for an error message: quoted text when printable, hex otherwise.
fn show_bytes(b: &[u8]) -> String {
    if b.iter().all(|c| (0x20..0x7f).contains(c)) {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        let hex: Vec<String> = b.iter().map(|c| format!("{c:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The name of an option reply type, for messages (proto.md "Option reply types").
fn reply_name(kind: u32) -> String {
    match kind {
        REP_ACK => "NBD_REP_ACK".into(),
        REP_SERVER => "NBD_REP_SERVER".into(),
        REP_INFO => "NBD_REP_INFO".into(),
        REP_META_CONTEXT => "NBD_REP_META_CONTEXT".into(),
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP".into(),
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY".into(),
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID".into(),
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM".into(),
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD".into(),
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN".into(),
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN".into(),
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD".into(),
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG".into(),
        REP_ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD".into(),
        k if k & REP_ERR != 0 => format!("error reply {k:#x}"),
        k => format!("reply type {k}"),
    }
}

/// An NBD error value as its name and the host errno it stands for
/// (proto.md "Error values"; an unknown value is treated as `NBD_EINVAL`).
fn nbd_errno(e: u32) -> (String, i32) {
    use rustix::io::Errno;
    let (name, errno) = match e {
        EPERM => ("NBD_EPERM", Errno::PERM),
        EIO => ("NBD_EIO", Errno::IO),
        ENOMEM => ("NBD_ENOMEM", Errno::NOMEM),
        EINVAL => ("NBD_EINVAL", Errno::INVAL),
        ENOSPC => ("NBD_ENOSPC", Errno::NOSPC),
        EOVERFLOW => ("NBD_EOVERFLOW", Errno::OVERFLOW),
        ENOTSUP => ("NBD_ENOTSUP", Errno::NOTSUP),
        ESHUTDOWN => ("NBD_ESHUTDOWN", Errno::SHUTDOWN),
        other => {
            return (
                format!("unknown NBD error {other}"),
                Errno::INVAL.raw_os_error(),
            )
        }
    };
    (format!("{name} ({e})"), errno.raw_os_error())
}

/// The 28-byte request header (proto.md "Request message"): magic, command
/// flags, type, cookie, offset, length.
fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&0u16.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The socket during the handshake, with errors that say where we were.
struct Wire<'a> {
    s: &'a mut Stream,
    endpoint: &'a str,
    secs: u64,
}

impl Wire<'_> {
    fn error(&self, e: io::Error, during: &str) -> ClientError {
        let endpoint = self.endpoint.to_owned();
        let during = during.to_owned();
        if is_timeout(&e) {
            ClientError::Timeout {
                endpoint,
                during,
                secs: self.secs,
            }
        } else if is_closed(&e) {
            ClientError::Closed { endpoint, during }
        } else {
            ClientError::Io {
                endpoint,
                during,
                source: e,
            }
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            endpoint: self.endpoint.to_owned(),
            reason: reason.into(),
        }
    }

    fn recv(&mut self, buf: &mut [u8], during: &str) -> Result<(), ClientError> {
        self.s.read_exact(buf).map_err(|e| self.error(e, during))
    }

    /// Send an option (proto.md "Newstyle negotiation"): `IHAVEOPT`, the
    /// 32-bit option, the 32-bit length of its data, the data.
    fn send_option(&mut self, opt: u32, data: &[u8]) -> Result<(), ClientError> {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        let during = format!("sending {}", option_name(opt));
        self.s.write_all(&m).map_err(|e| self.error(e, &during))
    }

    /// One option reply (proto.md "Fixed newstyle negotiation"): the reply
    /// magic, the option it answers, the 32-bit reply type, the 32-bit
    /// length, the data. The length is bounded before anything is read.
    fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>), ClientError> {
        let during = format!("waiting for the reply to {}", option_name(opt));
        let mut h = [0u8; 20];
        self.recv(&mut h, &during)?;
        let magic = be64(&h[0..8]);
        if magic != OPT_REPLY_MAGIC {
            return Err(self.protocol(format!(
                "bad option reply magic {magic:#018x} (expected {OPT_REPLY_MAGIC:#x})"
            )));
        }
        let answered = be32(&h[8..12]);
        if answered != opt {
            return Err(self.protocol(format!(
                "a reply to option {answered} while waiting for the reply to {}",
                option_name(opt)
            )));
        }
        let kind = be32(&h[12..16]);
        let len = be32(&h[16..20]);
        if len > MAX_OPTION_REPLY {
            return Err(self.protocol(format!(
                "an option reply ({}) of {len} bytes, more than the {MAX_OPTION_REPLY}-byte limit",
                reply_name(kind)
            )));
        }
        let mut data = vec![0u8; len as usize];
        self.recv(&mut data, &during)?;
        Ok((kind, data))
    }

    /// Leave option haggling politely (proto.md "Termination of the session
    /// during option haggling": a client ends it with `NBD_OPT_ABORT`).
    fn abort(&mut self) {
        let _ = self.send_option(OPT_ABORT, &[]);
        let _ = self.s.shutdown(Shutdown::Both);
    }
}

fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_GO => "NBD_OPT_GO",
        _ => "an option",
    }
}

/// What the handshake told us about the export.
#[derive(Debug)]
struct Negotiated {
    size: u64,
    flags: u16,
    block: Option<BlockSize>,
}

/// The `NBD_INFO_BLOCK_SIZE` payload after its type (proto.md "Option reply
/// types", `NBD_INFO_BLOCK_SIZE`; the rules are in "Size constraints").
fn block_size(w: &Wire<'_>, b: &[u8]) -> Result<BlockSize, ClientError> {
    let bs = BlockSize {
        minimum: be32(&b[0..4]),
        preferred: be32(&b[4..8]),
        maximum: be32(&b[8..12]),
    };
    if !bs.minimum.is_power_of_two() || bs.minimum > 64 * 1024 {
        return Err(w.protocol(format!(
            "a minimum block size of {} (must be a power of two up to 65536)",
            bs.minimum
        )));
    }
    if bs.maximum < bs.minimum {
        return Err(w.protocol(format!(
            "a maximum payload of {} bytes, below the minimum block size of {}",
            bs.maximum, bs.minimum
        )));
    }
    Ok(bs)
}

/// `NBD_OPT_GO` (proto.md "Option types", `NBD_OPT_INFO` and `NBD_OPT_GO`):
/// data is the 32-bit name length, the name, a 16-bit count of information
/// requests and the 16-bit requests (we ask for `NBD_INFO_BLOCK_SIZE` and so
/// promise to honour it). `Ok(None)`: the server does not know the option.
fn go(w: &mut Wire<'_>, export: &str) -> Result<Option<Negotiated>, ClientError> {
    let mut data = Vec::with_capacity(8 + export.len());
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    w.send_option(OPT_GO, &data)?;

    let mut export_info = None;
    let mut block = None;
    for _ in 0..=MAX_INFO_REPLIES {
        let (kind, payload) = w.option_reply(OPT_GO)?;
        match kind {
            REP_INFO => {
                // 16-bit information type, then its payload.
                if payload.len() < 2 {
                    return Err(w.protocol(format!(
                        "an NBD_REP_INFO reply of {} bytes (too short for its type)",
                        payload.len()
                    )));
                }
                let info = be16(&payload);
                match info {
                    // 64-bit size, 16-bit transmission flags; length 12.
                    INFO_EXPORT if payload.len() == 12 => {
                        export_info = Some((be64(&payload[2..10]), be16(&payload[10..12])))
                    }
                    // Minimum, preferred, maximum (32 bits each); length 14.
                    INFO_BLOCK_SIZE if payload.len() == 14 => {
                        block = Some(block_size(w, &payload[2..])?)
                    }
                    INFO_EXPORT | INFO_BLOCK_SIZE => {
                        return Err(w.protocol(format!(
                            "an NBD_REP_INFO of type {info} with {} bytes (must be {})",
                            payload.len(),
                            if info == INFO_EXPORT { 12 } else { 14 }
                        )))
                    }
                    // The client MUST ignore information types it does not know.
                    _ => {}
                }
            }
            REP_ACK => {
                let Some((size, flags)) = export_info else {
                    return Err(w.protocol(
                        "NBD_OPT_GO accepted without NBD_INFO_EXPORT (the size and flags)",
                    ));
                };
                return Ok(Some(Negotiated { size, flags, block }));
            }
            // Too old for NBD_OPT_GO: the caller falls back to NBD_OPT_EXPORT_NAME.
            REP_ERR_UNSUP => return Ok(None),
            k if k & REP_ERR != 0 => {
                w.abort();
                let endpoint = w.endpoint.to_owned();
                let export = export.to_owned();
                let message = message_text(&payload);
                return Err(match k {
                    REP_ERR_UNKNOWN => ClientError::NoSuchExport {
                        endpoint,
                        export,
                        message,
                    },
                    REP_ERR_TLS_REQD => ClientError::TlsRequired {
                        endpoint,
                        export,
                        message,
                    },
                    _ => ClientError::Refused {
                        endpoint,
                        export,
                        code: reply_name(k),
                        message,
                    },
                });
            }
            k => {
                return Err(w.protocol(format!(
                    "an unexpected {} in answer to NBD_OPT_GO",
                    reply_name(k)
                )))
            }
        }
    }
    Err(w.protocol(format!(
        "more than {MAX_INFO_REPLIES} NBD_REP_INFO replies to NBD_OPT_GO"
    )))
}

/// `NBD_OPT_EXPORT_NAME` (proto.md "Newstyle negotiation"): the name is the
/// whole option data; the server answers with the 64-bit size, the 16-bit
/// transmission flags and 124 zero bytes (unless `NO_ZEROES` was agreed),
/// or hangs up if it will not serve that export.
fn export_name(w: &mut Wire<'_>, export: &str, no_zeroes: bool) -> Result<Negotiated, ClientError> {
    w.send_option(OPT_EXPORT_NAME, export.as_bytes())?;
    let mut b = [0u8; 10 + 124];
    let n = if no_zeroes { 10 } else { b.len() };
    match w.recv(&mut b[..n], "waiting for the reply to NBD_OPT_EXPORT_NAME") {
        Ok(()) => Ok(Negotiated {
            size: be64(&b[0..8]),
            flags: be16(&b[8..10]),
            block: None,
        }),
        Err(ClientError::Closed { endpoint, .. }) => Err(ClientError::ExportNameRefused {
            endpoint,
            export: export.to_owned(),
        }),
        Err(e) => Err(e),
    }
}

/// The whole handshake, from the server's greeting to transmission.
fn handshake(w: &mut Wire<'_>, export: &str) -> Result<Negotiated, ClientError> {
    // proto.md "Newstyle negotiation": S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
    let mut g = [0u8; 18];
    w.recv(&mut g[..8], "waiting for its greeting")?;
    if be64(&g[0..8]) != NBDMAGIC {
        return Err(w.protocol(format!(
            "not an NBD server: its greeting starts with {} instead of \"NBDMAGIC\"",
            show_bytes(&g[..8])
        )));
    }
    w.recv(&mut g[8..16], "reading its greeting")?;
    match be64(&g[8..16]) {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(w.protocol(
                "the server uses oldstyle negotiation (no export names), which is not supported",
            ))
        }
        m => {
            return Err(w.protocol(format!(
                "bad magic {m:#018x} in the greeting (expected IHAVEOPT)"
            )))
        }
    }
    w.recv(&mut g[16..], "reading its greeting")?;
    // proto.md "Handshake flags"; the client sets only flags the server
    // offered ("Client flags") and ignores the ones it does not know.
    let hflags = be16(&g[16..18]);
    let fixed = hflags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let mut cflags = 0u32;
    if fixed {
        cflags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cflags |= FLAG_C_NO_ZEROES;
    }
    w.s.write_all(&cflags.to_be_bytes())
        .map_err(|e| w.error(e, "sending the client flags"))?;
    // Non-fixed newstyle knows NBD_OPT_EXPORT_NAME only.
    if fixed {
        if let Some(n) = go(w, export)? {
            return Ok(n);
        }
    }
    export_name(w, export, no_zeroes)
}

fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Some((0, name)) = bytes.split_first() {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return UnixStream::connect_addr(&addr);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract Unix sockets exist on Linux only",
            ));
        }
    }
    UnixStream::connect(path)
}

fn open(endpoint: &Endpoint, opts: &ClientOptions) -> Result<Stream, ClientError> {
    let fail = |source| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => Ok(Stream::Unix(connect_unix(path).map_err(fail)?)),
        Endpoint::Tcp { host, port } => {
            let timeout = opts.connect_timeout.max(Duration::from_millis(1));
            let mut last = None;
            for addr in (host.as_str(), *port).to_socket_addrs().map_err(fail)? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => return Ok(Stream::Tcp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(fail(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the host has no address")
            })))
        }
    }
}

/// The connection in transmission, used by one request at a time.
#[derive(Debug)]
struct Conn {
    s: Stream,
    next_cookie: u64,
    /// Why the connection must not be used any more (a broken reply, a
    /// timeout in the middle of one, a server shutting down).
    dead: Option<String>,
}

impl Conn {
    /// Stop using the connection; the server may be mid-reply.
    fn kill(&mut self, reason: String) {
        let _ = self.s.shutdown(Shutdown::Both);
        self.dead = Some(reason);
    }

    /// Send `NBD_CMD_DISC` (proto.md "Terminating the transmission phase":
    /// offset and length zero, no reply) and close.
    fn disconnect(&mut self) {
        if self.dead.is_none() {
            let req = request(CMD_DISC, self.next_cookie, 0, 0);
            let _ = self.s.write_all(&req);
        }
        let _ = self.s.shutdown(Shutdown::Both);
    }
}

/// An export on an NBD server, read-only, as a block device.
#[derive(Debug)]
pub struct NbdClient {
    endpoint: String,
    export: String,
    size: u64,
    flags: u16,
    block: Option<BlockSize>,
    /// Reads are aligned to this (the server's minimum block size, else 1).
    align: u64,
    /// Largest read request: a multiple of `align`, at most 32 MiB.
    max_request: u64,
    secs: u64,
    conn: Mutex<Conn>,
}

impl NbdClient {
    /// Connect to the export `uri` names (`nbd://…` or `nbd+unix://…`, see
    /// [`NbdUri`]) and negotiate up to transmission.
    pub fn connect(uri: &str, opts: &ClientOptions) -> Result<NbdClient, ClientError> {
        NbdClient::connect_to(&NbdUri::parse(uri)?, opts)
    }

    /// Connect to a parsed URI.
    pub fn connect_to(uri: &NbdUri, opts: &ClientOptions) -> Result<NbdClient, ClientError> {
        let endpoint = uri.endpoint.to_string();
        let mut s = open(&uri.endpoint, opts)?;
        let timeout = opts.timeout.max(Duration::from_millis(1));
        let secs = timeout.as_secs_f64().ceil() as u64;
        let setup = s
            .set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)));
        if let Err(source) = setup {
            return Err(ClientError::Io {
                endpoint,
                during: "setting socket timeouts".into(),
                source,
            });
        }
        s.tune();
        let n = handshake(
            &mut Wire {
                s: &mut s,
                endpoint: &endpoint,
                secs,
            },
            &uri.export,
        )?;
        let align = n.block.map_or(1, |b| b.minimum as u64);
        let cap = n
            .block
            .map_or(MAX_READ_REQUEST, |b| b.maximum.min(MAX_READ_REQUEST)) as u64;
        log::debug!(
            "{endpoint}: export {:?}: {} bytes, flags {:#06x}, block size {:?}",
            uri.export,
            n.size,
            n.flags,
            n.block
        );
        Ok(NbdClient {
            endpoint,
            export: uri.export.clone(),
            size: n.size,
            flags: n.flags,
            block: n.block,
            align,
            max_request: cap - cap % align,
            secs,
            conn: Mutex::new(Conn {
                s,
                next_cookie: 1,
                dead: None,
            }),
        })
    }

    /// The export name asked for.
    pub fn export_name(&self) -> &str {
        &self.export
    }

    /// Where the server is, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The transmission flags the server sent.
    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    /// The size constraints the server advertised, if it did.
    pub fn server_block_size(&self) -> Option<BlockSize> {
        self.block
    }

    /// One `NBD_CMD_READ` of `buf.len()` bytes (at most `max_request`,
    /// aligned as the server asked) at `offset`.
    fn read_request(&self, conn: &mut Conn, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        let ep = &self.endpoint;
        let len = buf.len();
        if let Some(why) = &conn.dead {
            return Err(Error::new(
                ErrorKind::Io,
                format!("NBD server at {ep}: the connection is unusable: {why}"),
            ));
        }
        let cookie = conn.next_cookie;
        conn.next_cookie = conn.next_cookie.wrapping_add(1);
        let what = format!("reading {len} bytes at offset {offset}");
        let secs = self.secs;
        let fail = |conn: &mut Conn, e: io::Error| {
            let e = if is_timeout(&e) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {secs} s"),
                )
            } else if is_closed(&e) {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )
            } else {
                e
            };
            conn.kill(format!("{what}: {e}"));
            Error::io(format!("NBD server at {ep}: {what}"), e)
        };
        let req = request(CMD_READ, cookie, offset, len as u32);
        if let Err(e) = conn.s.write_all(&req) {
            return Err(fail(conn, e));
        }
        // proto.md "Simple reply message": magic, 32-bit error, 64-bit
        // cookie, then the data if the error is zero.
        let mut h = [0u8; 16];
        if let Err(e) = conn.s.read_exact(&mut h) {
            return Err(fail(conn, e));
        }
        let magic = be32(&h[0..4]);
        let broken = |conn: &mut Conn, reason: String| {
            conn.kill(reason.clone());
            Error::new(ErrorKind::Io, format!("NBD server at {ep}: {reason}"))
        };
        if magic != SIMPLE_REPLY_MAGIC {
            let reason = if magic == STRUCTURED_REPLY_MAGIC || magic == EXTENDED_REPLY_MAGIC {
                "a structured reply, though only simple replies were negotiated".to_owned()
            } else {
                format!("bad reply magic {magic:#010x} (expected {SIMPLE_REPLY_MAGIC:#010x})")
            };
            return Err(broken(conn, format!("{reason}, {what}")));
        }
        let got = be64(&h[8..16]);
        if got != cookie {
            return Err(broken(
                conn,
                format!("a reply with cookie {got} to the request with cookie {cookie}, {what}"),
            ));
        }
        let errno = be32(&h[4..8]);
        if errno != 0 {
            // NBD_CMD_READ: no payload follows an error (proto.md "Request types").
            let (name, host) = nbd_errno(errno);
            if errno == ESHUTDOWN {
                // The client MUST then initiate a soft disconnect (proto.md
                // "Terminating the transmission phase").
                conn.disconnect();
                conn.dead = Some("the server is shutting down".into());
            }
            return Err(Error::io(
                format!("NBD server at {ep} failed {what} with {name}"),
                io::Error::from_raw_os_error(host),
            ));
        }
        if let Err(e) = conn.s.read_exact(buf) {
            return Err(fail(conn, e));
        }
        Ok(())
    }
}

impl BlockDev for NbdClient {
    fn size(&self) -> u64 {
        self.size
    }

    /// Reads in requests of at most `max_request` bytes; a range that does
    /// not start or end on the server's minimum block size reads the
    /// covering blocks and keeps the bytes asked for (proto.md "Size
    /// constraints": offsets and lengths are multiples of the minimum).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        let len = buf.len() as u64;
        check_range(offset, len, self.size)?;
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let end = offset + len;
        let align = self.align;
        let mut scratch = Vec::new();
        let mut pos = offset;
        while pos < end {
            let done = (pos - offset) as usize;
            if pos.is_multiple_of(align) && end - pos >= align {
                let n = ((end - pos) - (end - pos) % align).min(self.max_request);
                self.read_request(&mut conn, &mut buf[done..done + n as usize], pos)?;
                pos += n;
            } else {
                let start = pos - pos % align;
                let stop = start.saturating_add(align).min(self.size);
                scratch.resize((stop - start) as usize, 0);
                self.read_request(&mut conn, &mut scratch, start)?;
                let take = end.min(stop);
                buf[done..done + (take - pos) as usize]
                    .copy_from_slice(&scratch[(pos - start) as usize..(take - start) as usize]);
                pos = take;
            }
        }
        Ok(())
    }

    fn caps(&self) -> Caps {
        Caps::empty()
    }

    fn block_size(&self) -> BlockSize {
        match self.block {
            Some(b) => BlockSize {
                maximum: self.max_request as u32,
                ..b
            },
            None => BlockSize::default(),
        }
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.conn
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .disconnect();
    }
}

#[cfg(test)]
mod tests {
    //! The client against scripted servers that follow or break proto.md.

    use std::os::unix::net::UnixListener;
    use std::thread::{self, JoinHandle};

    use super::*;

    const QUICK: ClientOptions = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    };

    /// A one-connection server on a Unix socket running `script`.
    struct Fake<T> {
        _dir: tempfile::TempDir,
        uri: String,
        handle: JoinHandle<io::Result<T>>,
    }

    fn fake<T: Send + 'static>(
        export: &str,
        script: impl FnOnce(&mut UnixStream) -> io::Result<T> + Send + 'static,
    ) -> Fake<T> {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            script(&mut s)
        });
        Fake {
            uri: format!("nbd+unix:///{export}?socket={}", sock.display()),
            _dir: dir,
            handle,
        }
    }

    fn greet(s: &mut UnixStream, flags: u16) -> io::Result<u32> {
        let mut g = Vec::new();
        g.extend_from_slice(&NBDMAGIC.to_be_bytes());
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&flags.to_be_bytes());
        s.write_all(&g)?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn read_option(s: &mut UnixStream) -> io::Result<(u32, Vec<u8>)> {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        assert_eq!(be64(&h[0..8]), IHAVEOPT);
        let mut data = vec![0u8; be32(&h[12..16]) as usize];
        s.read_exact(&mut data)?;
        Ok((be32(&h[8..12]), data))
    }

    fn reply(s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        let mut m = Vec::new();
        m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m)
    }

    fn info_export(size: u64) -> Vec<u8> {
        let mut m = INFO_EXPORT.to_be_bytes().to_vec();
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&(TF_HAS_FLAGS | TF_READ_ONLY).to_be_bytes());
        m
    }

    fn info_block(min: u32, pref: u32, max: u32) -> Vec<u8> {
        let mut m = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [min, pref, max] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m
    }

    /// Greeting, client flags, `NBD_OPT_GO` answered with these infos and an ACK.
    /// Returns the export name the client asked for.
    fn go_ok(s: &mut UnixStream, infos: &[Vec<u8>]) -> io::Result<String> {
        let cflags = greet(s, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)?;
        assert_eq!(cflags, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        let (opt, data) = read_option(s)?;
        assert_eq!(opt, OPT_GO);
        let n = be32(&data) as usize;
        let name = String::from_utf8(data[4..4 + n].to_vec()).unwrap();
        // One information request: NBD_INFO_BLOCK_SIZE.
        assert_eq!(&data[4 + n..], &[0, 1, 0, 3]);
        for i in infos {
            reply(s, OPT_GO, REP_INFO, i)?;
        }
        reply(s, OPT_GO, REP_ACK, &[])?;
        Ok(name)
    }

    /// A request header; `None` when the client hung up.
    fn read_request(s: &mut UnixStream) -> io::Result<Option<(u16, u64, u64, u32)>> {
        let mut b = [0u8; REQUEST_LEN];
        match s.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let r = Request::decode_compact(&b).expect("request magic");
        assert_eq!(r.flags, 0);
        Ok(Some((r.kind, r.cookie, r.offset, r.len as u32)))
    }

    fn simple(s: &mut UnixStream, error: u32, cookie: u64, data: &[u8]) -> io::Result<()> {
        let mut m = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&error.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m)
    }

    fn byte_at(off: u64) -> u8 {
        (off % 251) as u8
    }

    /// Serve reads of the `byte_at` pattern until `NBD_CMD_DISC`; returns
    /// the (offset, length) of every read.
    fn serve_reads(s: &mut UnixStream) -> io::Result<Vec<(u64, u32)>> {
        let mut seen = Vec::new();
        while let Some((kind, cookie, off, len)) = read_request(s)? {
            if kind == CMD_DISC {
                assert_eq!((off, len), (0, 0));
                return Ok(seen);
            }
            assert_eq!(kind, CMD_READ);
            seen.push((off, len));
            let data: Vec<u8> = (off..off + len as u64).map(byte_at).collect();
            simple(s, 0, cookie, &data)?;
        }
        panic!("the client hung up without NBD_CMD_DISC");
    }

    fn expect(off: u64, len: usize) -> Vec<u8> {
        (off..off + len as u64).map(byte_at).collect()
    }

    #[test]
    fn unaligned_reads_cover_whole_minimum_blocks_and_split_at_the_maximum() {
        let f = fake("blocky", |s| {
            let name = go_ok(
                s,
                &[info_export(1 << 20), info_block(512, 4096, 65536 + 512)],
            )?;
            assert_eq!(name, "blocky");
            serve_reads(s)
        });
        let c = NbdClient::connect(&f.uri, &QUICK).unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.transmission_flags(), TF_HAS_FLAGS | TF_READ_ONLY);
        assert_eq!(c.block_size().minimum, 512);
        assert_eq!(c.block_size().maximum, 65536 + 512);
        for (off, len) in [
            (100u64, 200_000usize),
            (0, 512),
            (511, 2),
            (1000, 1),
            (0, 1 << 20),
        ] {
            let mut buf = vec![0u8; len];
            c.read_at(&mut buf, off).unwrap();
            assert!(buf == expect(off, len), "{len} at {off}");
        }
        assert!(c.read_at(&mut [0u8; 2], (1 << 20) - 1).is_err());
        drop(c);
        let seen = f.handle.join().unwrap().unwrap();
        for &(off, len) in &seen {
            assert_eq!(off % 512, 0, "{seen:?}");
            assert_eq!(len % 512, 0, "{seen:?}");
            assert!(len <= 65536 + 512, "{seen:?}");
        }
        // 100..200100: the head block, aligned bulk in pieces, the tail block.
        assert_eq!(
            &seen[..5],
            &[
                (0, 512),
                (512, 66048),
                (66560, 66048),
                (132608, 66048),
                (198656, 1024)
            ]
        );
        assert_eq!(seen[5], (199_680, 512));
    }

    #[test]
    fn without_size_constraints_reads_split_at_32_mib() {
        let size = (32 << 20) + 4096;
        let f = fake("", move |s| {
            go_ok(s, &[info_export(size)])?;
            serve_reads(s)
        });
        let c = NbdClient::connect(&f.uri, &QUICK).unwrap();
        assert_eq!(c.block_size(), BlockSize::default());
        let mut buf = vec![0u8; size as usize - 1];
        c.read_at(&mut buf, 1).unwrap();
        assert!(buf == expect(1, size as usize - 1));
        drop(c);
        let seen = f.handle.join().unwrap().unwrap();
        assert_eq!(seen, [(1, 32 << 20), ((32 << 20) + 1, 4095)]);
    }

    #[test]
    fn go_unsupported_falls_back_to_export_name_with_zeroes() {
        let f = fake("old%20one", |s| {
            // Fixed newstyle, no NO_ZEROES: the client must not ask for it.
            assert_eq!(greet(s, FLAG_FIXED_NEWSTYLE)?, FLAG_C_FIXED_NEWSTYLE);
            let (opt, _) = read_option(s)?;
            assert_eq!(opt, OPT_GO);
            reply(s, OPT_GO, REP_ERR_UNSUP, b"what is GO?")?;
            let (opt, name) = read_option(s)?;
            assert_eq!((opt, name.as_slice()), (OPT_EXPORT_NAME, &b"old one"[..]));
            let mut m = 4096u64.to_be_bytes().to_vec();
            m.extend_from_slice(&TF_HAS_FLAGS.to_be_bytes());
            m.extend_from_slice(&[0u8; 124]);
            s.write_all(&m)?;
            serve_reads(s)
        });
        let c = NbdClient::connect(&f.uri, &QUICK).unwrap();
        assert_eq!(c.size(), 4096);
        assert_eq!(c.export_name(), "old one");
        let mut buf = [0u8; 4096];
        c.read_at(&mut buf, 0).unwrap();
        assert!(buf[..] == expect(0, 4096)[..]);
        drop(c);
        assert_eq!(f.handle.join().unwrap().unwrap(), [(0, 4096)]);
    }

    #[test]
    fn non_fixed_newstyle_goes_straight_to_export_name() {
        let f = fake("x", |s| {
            assert_eq!(greet(s, FLAG_NO_ZEROES)?, FLAG_C_NO_ZEROES);
            let (opt, name) = read_option(s)?;
            assert_eq!((opt, name.as_slice()), (OPT_EXPORT_NAME, &b"x"[..]));
            let mut m = 512u64.to_be_bytes().to_vec();
            m.extend_from_slice(&TF_HAS_FLAGS.to_be_bytes());
            s.write_all(&m)?;
            serve_reads(s)
        });
        let c = NbdClient::connect(&f.uri, &QUICK).unwrap();
        assert_eq!(c.size(), 512);
        drop(c);
        assert!(f.handle.join().unwrap().unwrap().is_empty());
    }

    /// Connect to a server running `script`; the error it causes.
    fn fails(
        script: impl FnOnce(&mut UnixStream) -> io::Result<()> + Send + 'static,
    ) -> ClientError {
        let f = fake("e", script);
        let opts = ClientOptions {
            timeout: Duration::from_millis(300),
            ..QUICK
        };
        let err = NbdClient::connect(&f.uri, &opts).unwrap_err();
        drop(f.handle);
        err
    }

    #[test]
    fn broken_handshakes_are_errors_that_say_what_happened() {
        let e = fails(|s| s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        assert!(
            e.to_string().contains("not an NBD server") && e.to_string().contains("HTTP/1.1"),
            "{e}"
        );
        let e = fails(|s| s.write_all(&NBDMAGIC.to_be_bytes()[..5]));
        assert!(matches!(e, ClientError::Closed { .. }), "{e}");
        let e = fails(|s| {
            s.write_all(&NBDMAGIC.to_be_bytes())?;
            s.write_all(&OLDSTYLE_MAGIC.to_be_bytes())
        });
        assert!(e.to_string().contains("oldstyle"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            // A reply claiming almost 4 GiB of data.
            let mut m = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
            m.extend_from_slice(&OPT_GO.to_be_bytes());
            m.extend_from_slice(&REP_INFO.to_be_bytes());
            m.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
            s.write_all(&m)
        });
        assert!(e.to_string().contains("4294967280 bytes"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_GO, REP_ACK, &[])
        });
        assert!(e.to_string().contains("without NBD_INFO_EXPORT"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_LIST, REP_ACK, &[])
        });
        assert!(e.to_string().contains("reply to option 3"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_GO, REP_INFO, &[0])
        });
        assert!(e.to_string().contains("too short"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_GO, REP_INFO, &info_export(1)[..11])
        });
        assert!(e.to_string().contains("must be 12"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_GO, REP_INFO, &info_block(3, 4096, 1 << 20))
        });
        assert!(e.to_string().contains("minimum block size of 3"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_GO, REP_INFO, &info_block(4096, 4096, 512))
        });
        assert!(e.to_string().contains("maximum payload of 512"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            for _ in 0..100 {
                reply(s, OPT_GO, REP_INFO, &[0, 9])?;
            }
            Ok(())
        });
        assert!(e.to_string().contains("more than 64"), "{e}");
        let e = fails(|s| {
            greet(s, FLAG_FIXED_NEWSTYLE)?;
            read_option(s)?;
            reply(s, OPT_GO, REP_SERVER, &[0, 0, 0, 0])
        });
        assert!(e.to_string().contains("unexpected NBD_REP_SERVER"), "{e}");
        // Says nothing at all.
        let e = fails(|s| {
            thread::sleep(Duration::from_secs(2));
            s.write_all(b"late")
        });
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("no answer within 1 s"), "{e}");
    }

    #[test]
    fn option_errors_carry_the_servers_message_and_end_with_abort() {
        for (code, check) in [
            (REP_ERR_UNKNOWN, "has no export named \"e\""),
            (REP_ERR_TLS_REQD, "requires TLS"),
            (
                REP_ERR_POLICY,
                "refused export \"e\" with NBD_REP_ERR_POLICY",
            ),
            (REP_ERR | 77, "with error reply 0x8000004d"),
        ] {
            let f = fake("e", move |s| {
                greet(s, FLAG_FIXED_NEWSTYLE)?;
                read_option(s)?;
                reply(s, OPT_GO, code, b"go away\n\x1b[31mnow")?;
                // The client leaves politely.
                let (opt, _) = read_option(s)?;
                assert_eq!(opt, OPT_ABORT);
                Ok(())
            });
            let e = NbdClient::connect(&f.uri, &QUICK).unwrap_err().to_string();
            assert!(e.contains(check), "{e}");
            assert!(e.contains("(the server says: go away  [31mnow)"), "{e}");
            f.handle.join().unwrap().unwrap();
        }
        // NBD_OPT_EXPORT_NAME cannot fail politely: the server hangs up.
        let e = fails(|s| {
            greet(s, 0)?;
            read_option(s)?;
            Ok(())
        });
        assert!(
            matches!(&e, ClientError::ExportNameRefused { export, .. } if export == "e"),
            "{e}"
        );
    }

    #[test]
    fn broken_replies_fail_the_read_and_retire_the_connection() {
        // A wrong cookie, a structured reply, a bad magic, a reply cut short.
        type Bad = fn(&mut UnixStream, u64) -> io::Result<()>;
        let cases: [(Bad, &str); 4] = [
            (|s, c| simple(s, 0, c + 1, &[0; 512]), "cookie"),
            (
                |s, c| {
                    let mut m = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
                    m.extend_from_slice(&[0; 4]);
                    m.extend_from_slice(&c.to_be_bytes());
                    m.extend_from_slice(&[0; 4]);
                    s.write_all(&m)
                },
                "structured reply",
            ),
            (
                |s, _| s.write_all(&[0xAA; 16]),
                "bad reply magic 0xaaaaaaaa",
            ),
            (|s, c| simple(s, 0, c, &[0; 100]), "closed the connection"),
        ];
        for (bad, check) in cases {
            let f = fake("", move |s| {
                go_ok(s, &[info_export(4096)])?;
                let (_, cookie, _, _) = read_request(s)?.unwrap();
                bad(s, cookie)
            });
            let c = NbdClient::connect(&f.uri, &QUICK).unwrap();
            let e = c.read_at(&mut [0u8; 512], 0).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Io);
            assert!(format!("{e:#}").contains(check), "{e:#}");
            let again = c.read_at(&mut [0u8; 512], 0).unwrap_err().to_string();
            assert!(again.contains("unusable"), "{again}");
            f.handle.join().unwrap().unwrap();
        }
    }

    #[test]
    fn error_replies_are_errnos_and_the_connection_lives_on() {
        let f = fake("", |s| {
            go_ok(s, &[info_export(4096)])?;
            let (_, cookie, _, _) = read_request(s)?.unwrap();
            simple(s, EIO, cookie, &[])?;
            let (_, cookie, _, _) = read_request(s)?.unwrap();
            simple(s, 9999, cookie, &[])?;
            let (_, cookie, off, len) = read_request(s)?.unwrap();
            simple(s, 0, cookie, &expect(off, len as usize))?;
            let (_, cookie, _, _) = read_request(s)?.unwrap();
            simple(s, ESHUTDOWN, cookie, &[])?;
            // The client disconnects at once (proto.md: it MUST).
            let (kind, _, _, _) = read_request(s)?.unwrap();
            assert_eq!(kind, CMD_DISC);
            Ok(())
        });
        let c = NbdClient::connect(&f.uri, &QUICK).unwrap();
        let mut buf = [0u8; 100];
        let e = c.read_at(&mut buf, 7).unwrap_err();
        assert!(e.to_string().contains("NBD_EIO (5)"), "{e}");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("os error 5"), "{source}");
        let e = c.read_at(&mut buf, 7).unwrap_err();
        assert!(e.to_string().contains("unknown NBD error 9999"), "{e}");
        c.read_at(&mut buf, 7).unwrap();
        assert!(buf[..] == expect(7, 100)[..]);
        let e = c.read_at(&mut buf, 7).unwrap_err();
        assert!(e.to_string().contains("NBD_ESHUTDOWN"), "{e}");
        let e = c.read_at(&mut buf, 7).unwrap_err();
        assert!(e.to_string().contains("shutting down"), "{e}");
        f.handle.join().unwrap().unwrap();
        assert_eq!(c.write_at(&[0], 0).unwrap_err().kind(), ErrorKind::ReadOnly);
    }

    #[test]
    fn connection_failures_name_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("nbd+unix:///?socket={}/none", dir.path().display());
        let e = NbdClient::connect(&uri, &QUICK).unwrap_err().to_string();
        assert!(e.starts_with("cannot connect to Unix socket "), "{e}");
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = NbdClient::connect(&format!("nbd://127.0.0.1:{port}/x"), &QUICK)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
            "{e}"
        );
    }
}
