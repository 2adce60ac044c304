//! The fixed newstyle handshake (proto.md "Newstyle negotiation" and
//! "Option types"): the server greets, the client haggles options, and
//! `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME` moves to transmission.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use synth::{BlockDev, Caps, Client};

use crate::catalog::CatalogEntry;
use crate::proto::*;
use crate::server::ServerConfig;
use crate::stream::Stream;
use crate::tls::{TlsMode, TlsSession, TlsSetup};
use crate::transmission::max_request;

/// Option payloads longer than this are refused (`ERR_TOO_BIG`) and,
/// past [`DISCARD_LIMIT`], end the connection: strings are at most 4 KiB
/// and nothing we accept needs more.
const MAX_OPTION_LEN: u32 = 64 * 1024;
const DISCARD_LIMIT: u32 = 16 << 20;

/// What the handshake agreed on.
#[derive(Debug)]
pub struct Negotiated {
    /// Reply framing.
    pub style: ReplyStyle,
    /// Whether `base:allocation` was selected (block status allowed).
    pub base_allocation: bool,
    /// The opened device.
    pub dev: Arc<dyn BlockDev>,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// The TLS session, when the client sent `NBD_OPT_STARTTLS`: every
    /// byte from now on goes through it.
    pub(crate) tls: Option<Arc<TlsSession>>,
}

/// Transmission flags for an export with `caps`.
pub fn transmission_flags(caps: Caps, readonly: bool, style: ReplyStyle) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_CACHE;
    if style != ReplyStyle::Simple {
        // DF only means something with structured replies (proto.md).
        f |= TF_SEND_DF;
    }
    if readonly || !caps.contains(Caps::WRITE) {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
        if caps.contains(Caps::FAST_ZERO) {
            f |= TF_SEND_FAST_ZERO;
        }
    }
    if caps.contains(Caps::MULTI_CONN) {
        f |= TF_CAN_MULTI_CONN;
    }
    f
}

/// The socket under one deadline for the whole negotiation: every read
/// and write may block only for what is left of it, so a client that
/// dribbles an option now and then is still cut when the time is up
/// (as qemu-nbd's `--handshake-limit`).
struct Timed<'a> {
    s: &'a Stream,
    deadline: Instant,
    limit: Duration,
    /// After `NBD_OPT_STARTTLS`: reads and writes go through it (no
    /// downgrade: it is never taken away).
    tls: Option<Arc<TlsSession>>,
}

impl Timed<'_> {
    /// Bound the next blocking call by the time left; an error once none is.
    fn arm(&self, read: bool) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.expired());
        }
        if read {
            self.s.set_read_timeout(Some(left))
        } else {
            self.s.set_write_timeout(Some(left))
        }
    }

    fn expired(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the handshake did not finish within {:?} (--handshake-limit)",
                self.limit
            ),
        )
    }

    /// A socket timeout (`EAGAIN` under `SO_RCVTIMEO`) is the deadline.
    fn check<T>(&self, r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.expired(),
            _ => e,
        })
    }
}

impl Timed<'_> {
    /// The TLS handshake after `NBD_OPT_STARTTLS` was acknowledged, under
    /// the same deadline as the rest (a client that stalls it is cut off
    /// like one that stalls an option).
    fn start_tls(&self, setup: &TlsSetup) -> io::Result<rustls::ServerConnection> {
        let mut c = setup.session()?;
        let mut plain = Timed {
            s: self.s,
            deadline: self.deadline,
            limit: self.limit,
            tls: None,
        };
        while c.is_handshaking() {
            c.complete_io(&mut plain).map_err(|e| {
                let kind = e.kind();
                io::Error::new(kind, format!("TLS handshake: {e}"))
            })?;
        }
        Ok(c)
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match self.tls.clone() {
            // Several socket reads may make one record: each is bounded
            // by what is left of the deadline.
            Some(t) => t.read(self.s, buf, &mut || self.arm(true)),
            None => {
                self.arm(true)?;
                { self.s }.read(buf)
            }
        };
        self.check(r)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(false)?;
        let r = match &self.tls {
            Some(t) => t.write_all(self.s, buf).map(|()| buf.len()),
            None => { self.s }.write(buf),
        };
        self.check(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Handshake<'a> {
    s: Timed<'a>,
    cfg: &'a ServerConfig,
    no_zeroes: bool,
    style: ReplyStyle,
    base_allocation: bool,
    /// The client, for the export's admission and per-client layers; its
    /// `export` is filled in with the name asked for when it opens.
    client: Client,
    peer: String,
    /// Why every option is refused after TLS came up: the client's
    /// certificate subject is not allowed (`--tls-allow-subject`).
    denied: Option<String>,
    /// TLS came up and no option has come through it yet.
    tls_fresh: bool,
}

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A cursor over an option payload that never reads past its end.
struct Payload<'a>(&'a [u8]);

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes(field(b, 0)))
    }
    fn string(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        if n > 4096 {
            return None;
        }
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> Handshake<'a> {
    fn reply(&mut self, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        let mut m = Vec::with_capacity(20 + data.len());
        m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m)
    }

    fn error(&mut self, opt: u32, kind: u32, msg: &str) -> io::Result<()> {
        debug!("{}: option {opt} refused: {msg}", self.peer);
        self.reply(opt, kind, msg.as_bytes())
    }

    /// Open the export for this client. Device code gets a thread with a
    /// full stack (the connection's own thread has a small one; opening a
    /// tmpdisk builds a filesystem), and the time it takes is the server's,
    /// not the client's: the deadline moves by as much.
    /// The export is told who the client is (`open_client`: its layers
    /// may refuse it or act per client) and how to see that it left, so a
    /// slow open (a tmpdisk `--command`) stops for a client that is gone.
    fn open(&mut self, entry: &CatalogEntry, name: &str) -> synth::Result<Arc<dyn BlockDev>> {
        let t0 = Instant::now();
        let export = &*entry.export;
        let stream: &Stream = self.s.s;
        self.client.export = name.to_owned();
        let client = &self.client;
        let opened = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("nbd-open".into())
                .spawn_scoped(scope, || export.open_client(client, &|| stream.peer_gone()))
                .map_err(|e| synth::Error::io("starting a thread to open the export", e))
                .and_then(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(synth::Error::new(
                            synth::ErrorKind::Io,
                            "opening the export failed (the opening thread panicked)",
                        ))
                    })
                })
        });
        self.s.deadline += t0.elapsed();
        opened
    }

    /// The export a client asking for `name` gets (the empty name: the
    /// default one).
    fn lookup(&self, name: &str) -> Option<&'a CatalogEntry> {
        let cfg: &'a ServerConfig = self.cfg;
        cfg.catalog.lookup(name)
    }

    /// Why `name` is not served, naming what is (proto.md lets the error
    /// carry a message for humans).
    fn unknown(&self, name: &str) -> String {
        format!(
            "no export named {name:?} (this server has {})",
            self.cfg.catalog.names()
        )
    }

    fn flags(&self, entry: &CatalogEntry) -> u16 {
        let readonly = self.cfg.readonly || entry.readonly;
        transmission_flags(entry.export.caps(), readonly, self.style)
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`. Returns the device and its
    /// transmission flags on a successful GO.
    fn info_or_go(
        &mut self,
        opt: u32,
        data: &[u8],
    ) -> io::Result<Option<(Arc<dyn BlockDev>, u16)>> {
        let mut p = Payload(data);
        let parsed = (|| {
            let name = p.string()?;
            let n = p.u16()? as usize;
            let mut reqs = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                reqs.push(p.u16()?);
            }
            p.is_empty().then_some((name, reqs))
        })();
        let Some((name, reqs)) = parsed else {
            self.error(opt, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO payload")?;
            return Ok(None);
        };
        let Some(entry) = self.lookup(name) else {
            let msg = self.unknown(name);
            self.error(opt, REP_ERR_UNKNOWN, &msg)?;
            return Ok(None);
        };
        // INFO must have no side effects: everything below comes from the
        // export's description, not from an opened device.
        let dev = if opt == OPT_GO {
            match self.open(entry, name) {
                Ok(d) => Some(d),
                Err(e) if e.kind() == synth::ErrorKind::Refused => {
                    info!("{}: refused: {e}", self.peer);
                    self.error(opt, REP_ERR_POLICY, &format!("refused: {e}"))?;
                    return Ok(None);
                }
                Err(e) => {
                    warn!("{}: opening the export failed: {e:#}", self.peer);
                    self.error(
                        opt,
                        open_error_reply(e.kind()),
                        &format!("cannot open the export: {e:#}"),
                    )?;
                    return Ok(None);
                }
            }
        } else {
            // INFO opens nothing, but a client the export would refuse
            // learns nothing about it either (an address policy); what
            // the admission holds is let go at once.
            self.client.export = name.to_owned();
            if let Err(why) = entry.export.admit(&self.client) {
                info!("{}: refused: {why}", self.peer);
                self.error(opt, REP_ERR_POLICY, &format!("refused: {why}"))?;
                return Ok(None);
            }
            None
        };
        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        let flags = self.flags(entry);
        export.extend_from_slice(&entry.export.size().to_be_bytes());
        export.extend_from_slice(&flags.to_be_bytes());
        self.reply(opt, REP_INFO, &export)?;
        if reqs.contains(&INFO_NAME) {
            let mut m = INFO_NAME.to_be_bytes().to_vec();
            // The export's own name, also when the default was asked for
            // by the empty name (proto.md "NBD_INFO_NAME").
            m.extend_from_slice(entry.name.as_bytes());
            self.reply(opt, REP_INFO, &m)?;
        }
        if reqs.contains(&INFO_DESCRIPTION) {
            let mut m = INFO_DESCRIPTION.to_be_bytes().to_vec();
            m.extend_from_slice(entry.description().as_bytes());
            self.reply(opt, REP_INFO, &m)?;
        }
        // Always sent: clients that did not ask still benefit, and the
        // spec allows it (proto.md "Block size constraints").
        let mut bs = entry.export.block_size();
        bs.maximum = max_request(bs, self.cfg.budget);
        let mut m = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [bs.minimum, bs.preferred, bs.maximum] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        self.reply(opt, REP_INFO, &m)?;
        self.reply(opt, REP_ACK, &[])?;
        Ok(dev.map(|d| (d, flags)))
    }

    /// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        if self.style == ReplyStyle::Simple {
            return self.error(
                opt,
                REP_ERR_INVALID,
                "negotiate structured replies before meta contexts",
            );
        }
        let mut p = Payload(data);
        let parsed = (|| {
            let name = p.string()?;
            let n = p.u32()? as usize;
            let mut queries = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                queries.push(p.string()?);
            }
            p.is_empty().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            return self.error(opt, REP_ERR_INVALID, "malformed meta context payload");
        };
        if self.lookup(name).is_none() {
            let msg = self.unknown(name);
            return self.error(opt, REP_ERR_UNKNOWN, &msg);
        }
        let set = opt == OPT_SET_META_CONTEXT;
        let wanted = if set {
            queries.contains(&META_BASE_ALLOCATION)
        } else {
            // LIST: no queries lists everything; "base:" lists the namespace.
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| *q == "base:" || *q == META_BASE_ALLOCATION)
        };
        if set {
            self.base_allocation = wanted;
        }
        if wanted {
            let id = if set { META_BASE_ALLOCATION_ID } else { 0 };
            let mut m = id.to_be_bytes().to_vec();
            m.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
            self.reply(opt, REP_META_CONTEXT, &m)?;
        }
        self.reply(opt, REP_ACK, &[])
    }

    /// `NBD_OPT_STARTTLS` (proto.md "TLS support"): acknowledged, then the
    /// TLS handshake, then the haggling starts over inside TLS.
    fn starttls(&mut self, data: &[u8]) -> io::Result<()> {
        let opt = OPT_STARTTLS;
        let setup = match (&self.cfg.tls, self.cfg.tls_mode) {
            (Some(t), TlsMode::On | TlsMode::Require) => t.clone(),
            _ => {
                info!("{}: NBD_OPT_STARTTLS refused (--tls off)", self.peer);
                return self.error(
                    opt,
                    REP_ERR_POLICY,
                    "TLS is not enabled on this server (--tls off)",
                );
            }
        };
        if !data.is_empty() {
            return self.error(opt, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no payload");
        }
        if self.s.tls.is_some() {
            return self.error(
                opt,
                REP_ERR_INVALID,
                "TLS is already negotiated on this connection",
            );
        }
        self.reply(opt, REP_ACK, &[])?;
        let conn = self.s.start_tls(&setup)?;
        let session = Arc::new(TlsSession::new(conn));
        let subject = session.peer_subject();
        info!(
            "{}: TLS established ({}){}",
            self.peer,
            session.describe(),
            subject
                .as_deref()
                .map_or(String::new(), |s| format!(", client certificate {s:?}"))
        );
        if let Err(why) = setup.admit_subject(subject.as_deref()) {
            warn!("{}: refused: {why}", self.peer);
            self.denied = Some(why);
        }
        self.s.tls = Some(session);
        self.tls_fresh = true;
        // What was agreed in the clear could have been injected by a man
        // in the middle: it is forgotten, and clients negotiate reply
        // styles and meta contexts after STARTTLS (libnbd and qemu do).
        self.style = ReplyStyle::Simple;
        self.base_allocation = false;
        Ok(())
    }

    /// Why `opt` is refused before it is looked at: TLS is required and
    /// not up yet (`NBD_REP_ERR_TLS_REQD`), or the client's certificate
    /// is not allowed (`NBD_REP_ERR_POLICY`). `NBD_OPT_EXPORT_NAME`
    /// cannot be refused politely: `Err`, the connection closes.
    fn gate(&mut self, opt: u32) -> io::Result<bool> {
        if opt == OPT_ABORT {
            return Ok(false);
        }
        let (kind, why) = if let Some(why) = &self.denied {
            (REP_ERR_POLICY, format!("refused: {why}"))
        } else if self.s.tls.is_none()
            && self.cfg.tls_mode == TlsMode::Require
            && opt != OPT_STARTTLS
        {
            (
                REP_ERR_TLS_REQD,
                "this server requires TLS (--tls require): negotiate NBD_OPT_STARTTLS first \
                 (an nbds:// URI, or qemu's tls-creds)"
                    .to_string(),
            )
        } else {
            return Ok(false);
        };
        if opt == OPT_EXPORT_NAME {
            return Err(invalid(format!(
                "NBD_OPT_EXPORT_NAME refused, hanging up: {why}"
            )));
        }
        if kind == REP_ERR_TLS_REQD {
            info!(
                "{}: option {opt} before TLS refused (--tls require)",
                self.peer
            );
        }
        self.error(opt, kind, &why)?;
        Ok(true)
    }

    /// Haggle until transmission (`Some`) or until the client leaves (`None`).
    fn run(&mut self) -> io::Result<Option<Negotiated>> {
        self.s.write_all(&greeting())?;
        let cflags = read_u32(&mut self.s)?;
        if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(invalid(format!("unknown client flags {cflags:#x}")));
        }
        self.no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;

        loop {
            let magic = match read_u64(&mut self.s) {
                Ok(m) => m,
                // Under TLS 1.3 the server's side of the handshake ends
                // before the client has checked the server's certificate:
                // a client that does not trust it just leaves (GnuTLS
                // often without an alert). Say what that most likely means.
                Err(e)
                    if self.tls_fresh
                        && matches!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                        ) =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!(
                            "the client left right after the TLS handshake ({e}): does it \
                             trust this server's certificate (expired, signed by another CA, \
                             for another name)?"
                        ),
                    ));
                }
                Err(e) => return Err(e),
            };
            self.tls_fresh = false;
            if magic != IHAVEOPT {
                return Err(invalid(format!("bad option magic {magic:#x}")));
            }
            let opt = read_u32(&mut self.s)?;
            let len = read_u32(&mut self.s)?;
            if len > MAX_OPTION_LEN {
                if opt == OPT_EXPORT_NAME || len > DISCARD_LIMIT {
                    return Err(invalid(format!("option {opt} with a {len}-byte payload")));
                }
                io::copy(&mut (&mut self.s).take(len as u64), &mut io::sink())?;
                self.error(opt, REP_ERR_TOO_BIG, "option payload too large")?;
                continue;
            }
            let mut data = vec![0u8; len as usize];
            self.s.read_exact(&mut data)?;
            if self.gate(opt)? {
                continue;
            }
            match opt {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data);
                    let Some(entry) = self.lookup(&name) else {
                        // This option cannot fail politely: hang up (proto.md).
                        return Err(invalid(format!(
                            "{} via NBD_OPT_EXPORT_NAME",
                            self.unknown(&name)
                        )));
                    };
                    // This option has no way to say why either: the
                    // connection closes, and the log says why.
                    let name = name.into_owned();
                    let dev = match self.open(entry, &name) {
                        Ok(d) => d,
                        Err(e) if e.kind() == synth::ErrorKind::Refused => {
                            info!("{}: refused: {e}", self.peer);
                            return Ok(None);
                        }
                        Err(e) => return Err(invalid(format!("opening the export: {e:#}"))),
                    };
                    let flags = self.flags(entry);
                    let mut m = Vec::with_capacity(134);
                    m.extend_from_slice(&entry.export.size().to_be_bytes());
                    m.extend_from_slice(&flags.to_be_bytes());
                    if !self.no_zeroes {
                        m.extend_from_slice(&[0u8; 124]);
                    }
                    self.s.write_all(&m)?;
                    return Ok(Some(self.done(dev, flags, &entry.name)));
                }
                OPT_ABORT => {
                    let _ = self.reply(opt, REP_ACK, &[]);
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        self.error(opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no payload")?;
                        continue;
                    }
                    // One NBD_REP_SERVER per export: the name's length,
                    // the name, then the description filling the rest
                    // (proto.md "NBD_REP_SERVER").
                    let cfg: &ServerConfig = self.cfg;
                    for e in cfg.catalog.entries() {
                        let mut m = (e.name.len() as u32).to_be_bytes().to_vec();
                        m.extend_from_slice(e.name.as_bytes());
                        m.extend_from_slice(e.description().as_bytes());
                        self.reply(opt, REP_SERVER, &m)?;
                    }
                    self.reply(opt, REP_ACK, &[])?;
                }
                OPT_STARTTLS => self.starttls(&data)?,
                OPT_INFO | OPT_GO => {
                    if let Some((dev, flags)) = self.info_or_go(opt, &data)? {
                        return Ok(Some(self.done(dev, flags, &self.client.export.clone())));
                    }
                }
                OPT_STRUCTURED_REPLY | OPT_EXTENDED_HEADERS => {
                    let ext = opt == OPT_EXTENDED_HEADERS;
                    if !data.is_empty() {
                        self.error(opt, REP_ERR_INVALID, "this option takes no payload")?;
                    } else if self.style == ReplyStyle::Extended
                        || (!ext && self.style == ReplyStyle::Structured)
                    {
                        self.error(opt, REP_ERR_INVALID, "reply style already negotiated")?;
                    } else {
                        self.style = if ext {
                            ReplyStyle::Extended
                        } else {
                            ReplyStyle::Structured
                        };
                        // Changing the header style forgets meta contexts (proto.md).
                        self.base_allocation = false;
                        self.reply(opt, REP_ACK, &[])?;
                    }
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(opt, &data)?,
                _ => self.error(opt, REP_ERR_UNSUP, "unknown option")?,
            }
        }
    }

    fn done(&self, dev: Arc<dyn BlockDev>, flags: u16, name: &str) -> Negotiated {
        let style = match self.style {
            ReplyStyle::Simple => "simple replies",
            ReplyStyle::Structured => "structured replies",
            ReplyStyle::Extended => "extended headers (structured replies, 64-bit)",
        };
        info!(
            "{}: handshake done: export {name:?}, {style}{}, flags {flags:#06x}",
            self.peer,
            if self.base_allocation {
                ", base:allocation"
            } else {
                ""
            }
        );
        Negotiated {
            style: self.style,
            base_allocation: self.base_allocation,
            dev,
            flags,
            tls: self.s.tls.clone(),
        }
    }
}

/// The server's greeting (proto.md "Newstyle negotiation"): magic,
/// `IHAVEOPT`, fixed newstyle and no zeroes.
pub(crate) fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Run the handshake on `s`, all of it within `limit` (proto.md "Newstyle
/// negotiation" sets no limit; a server must, or a client that never
/// finishes holds a connection forever). `Ok(None)`: the client aborted or
/// left politely. On success the socket is back to blocking without
/// timeouts, for transmission, where a client may rightly stay idle.
pub fn negotiate(
    s: &Stream,
    cfg: &ServerConfig,
    client: Client,
    peer: &str,
    limit: Duration,
) -> io::Result<Option<Negotiated>> {
    let peer = peer.to_owned();
    let result = Handshake {
        s: Timed {
            s,
            deadline: Instant::now() + limit,
            limit,
            tls: None,
        },
        cfg,
        no_zeroes: false,
        style: ReplyStyle::Simple,
        base_allocation: false,
        client,
        peer,
        denied: None,
        tls_fresh: false,
    }
    .run();
    if let Ok(Some(_)) = result {
        s.set_read_timeout(None)?;
        s.set_write_timeout(None)?;
    }
    result
}

/// The option reply for an export that cannot be opened (proto.md "Option
/// reply types"): a resource limit (tmpdisk's `--max-clients`, no space for
/// a disk) or a layer's refusal (an address policy) is `NBD_REP_ERR_POLICY`, a request the device cannot serve
/// `NBD_REP_ERR_PLATFORM`, anything else `NBD_REP_ERR_UNKNOWN` ("the
/// requested export is not available"). The error's text goes with it
/// (qemu shows it as "server reported: ...").
fn open_error_reply(kind: synth::ErrorKind) -> u32 {
    match kind {
        synth::ErrorKind::NoSpace | synth::ErrorKind::Refused => REP_ERR_POLICY,
        synth::ErrorKind::Unsupported => REP_ERR_PLATFORM,
        _ => REP_ERR_UNKNOWN,
    }
}
