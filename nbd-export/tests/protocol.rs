//! In-process protocol tests: a raw NBD client (written here, able to
//! misbehave) talks to `Server::serve_connection` over a socketpair.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nbd_export::proto::*;
use nbd_export::{Server, ServerOptions, Stream};
use synth::{BlockDev, Caps, Export, SharedExport};

/// An export that counts how often it was opened (INFO must not open).
#[derive(Debug)]
struct Counting {
    inner: SharedExport,
    opens: AtomicUsize,
}

impl Export for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> Caps {
        self.inner.caps()
    }
    fn description(&self) -> String {
        self.inner.description()
    }
    fn open(&self) -> synth::Result<Arc<dyn BlockDev>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.inner.open()
    }
}

struct Harness {
    server: Arc<Server>,
    export: Arc<Counting>,
}

impl Harness {
    fn new(dev: Arc<dyn BlockDev>, readonly: bool) -> Self {
        let export = Arc::new(Counting {
            inner: SharedExport::new(dev, "test export"),
            opens: AtomicUsize::new(0),
        });
        let opts = ServerOptions {
            export_name: "disk".into(),
            readonly,
            ..ServerOptions::default()
        };
        Harness {
            server: Server::new(export.clone(), opts).unwrap(),
            export,
        }
    }

    fn memory() -> Self {
        let dev = sources::memory(64 << 20).unwrap();
        dev.write_at(&[0xAB; 65536], 1 << 20).unwrap();
        Self::new(Arc::new(dev), false)
    }

    fn connect(&self) -> (Client, JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = self.server.clone();
        let h = std::thread::spawn(move || server.serve_connection(Stream::Unix(b)));
        a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (
            Client {
                s: a,
                style: ReplyStyle::Simple,
            },
            h,
        )
    }
}

struct Client {
    s: UnixStream,
    style: ReplyStyle,
}

#[derive(Debug)]
struct OptReply {
    kind: u32,
    data: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum Chunk {
    Data { offset: u64, data: Vec<u8> },
    Hole { offset: u64, len: u32 },
    Status { id: u32, extents: Vec<(u64, u64)> },
    Error { errno: u32 },
    None,
}

impl Client {
    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.s.read_exact(&mut b).unwrap();
        u32::from_be_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b).unwrap();
        u64::from_be_bytes(b)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v).unwrap();
        v
    }

    /// Read the greeting and send client flags.
    fn greet(&mut self, cflags: u32) -> u16 {
        assert_eq!(self.u64(), NBDMAGIC);
        assert_eq!(self.u64(), IHAVEOPT);
        let mut f = [0u8; 2];
        self.s.read_exact(&mut f).unwrap();
        self.s.write_all(&cflags.to_be_bytes()).unwrap();
        u16::from_be_bytes(f)
    }

    fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    fn opt_reply(&mut self, opt: u32) -> OptReply {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC);
        assert_eq!(self.u32(), opt);
        let kind = self.u32();
        let len = self.u32() as usize;
        OptReply {
            kind,
            data: self.bytes(len),
        }
    }

    /// Send an option and collect replies up to the final one.
    fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_opt(opt, data);
        let mut v = Vec::new();
        loop {
            let r = self.opt_reply(opt);
            let last = r.kind == REP_ACK || r.kind & (1 << 31) != 0;
            v.push(r);
            if last {
                return v;
            }
        }
    }

    fn info_payload(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Full handshake to transmission with the given reply style.
    fn go(&mut self, style: ReplyStyle, meta: bool) -> u16 {
        self.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        match style {
            ReplyStyle::Simple => {}
            ReplyStyle::Structured => {
                assert_eq!(self.opt(OPT_STRUCTURED_REPLY, &[])[0].kind, REP_ACK)
            }
            ReplyStyle::Extended => {
                assert_eq!(self.opt(OPT_EXTENDED_HEADERS, &[])[0].kind, REP_ACK)
            }
        }
        self.style = style;
        if meta {
            let r = self.opt(
                OPT_SET_META_CONTEXT,
                &Self::meta_payload("disk", &["base:allocation"]),
            );
            assert_eq!(r[0].kind, REP_META_CONTEXT);
            assert_eq!(&r[0].data[0..4], &META_BASE_ALLOCATION_ID.to_be_bytes());
        }
        let r = self.opt(OPT_GO, &Self::info_payload("disk", &[]));
        assert_eq!(r.last().unwrap().kind, REP_ACK);
        let export = r
            .iter()
            .find(|r| r.data[0..2] == INFO_EXPORT.to_be_bytes())
            .unwrap();
        u16::from_be_bytes([export.data[10], export.data[11]])
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) {
        let mut m = Vec::with_capacity(32 + payload.len());
        if self.style == ReplyStyle::Extended {
            m.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        } else {
            m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        if self.style == ReplyStyle::Extended {
            m.extend_from_slice(&len.to_be_bytes());
        } else {
            m.extend_from_slice(&(len as u32).to_be_bytes());
        }
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// Read one simple reply: (errno, cookie).
    fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        let e = self.u32();
        (e, self.u64())
    }

    /// Read one structured/extended chunk (or a simple reply, mapped).
    fn reply(&mut self) -> (u64, u16, Chunk) {
        let magic = self.u32();
        if magic == SIMPLE_REPLY_MAGIC {
            let e = self.u32();
            let c = self.u64();
            return (
                c,
                REPLY_FLAG_DONE,
                if e == 0 {
                    Chunk::None
                } else {
                    Chunk::Error { errno: e }
                },
            );
        }
        let mut fb = [0u8; 4];
        self.s.read_exact(&mut fb).unwrap();
        let flags = u16::from_be_bytes([fb[0], fb[1]]);
        let kind = u16::from_be_bytes([fb[2], fb[3]]);
        let cookie = self.u64();
        let len = if magic == EXTENDED_REPLY_MAGIC {
            let _offset = self.u64();
            self.u64() as usize
        } else {
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "bad reply magic");
            self.u32() as usize
        };
        let body = self.bytes(len);
        let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
        let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
        let chunk = match kind {
            REPLY_TYPE_NONE => Chunk::None,
            REPLY_TYPE_OFFSET_DATA => Chunk::Data {
                offset: be64(&body),
                data: body[8..].to_vec(),
            },
            REPLY_TYPE_OFFSET_HOLE => Chunk::Hole {
                offset: be64(&body),
                len: be32(&body[8..]),
            },
            REPLY_TYPE_BLOCK_STATUS => Chunk::Status {
                id: be32(&body),
                extents: body[4..]
                    .chunks(8)
                    .map(|d| (be32(d) as u64, be32(&d[4..]) as u64))
                    .collect(),
            },
            REPLY_TYPE_BLOCK_STATUS_EXT => {
                let n = be32(&body[4..]) as usize;
                assert_eq!(body.len(), 8 + 16 * n);
                Chunk::Status {
                    id: be32(&body),
                    extents: body[8..]
                        .chunks(16)
                        .map(|d| (be64(d), be64(&d[8..])))
                        .collect(),
                }
            }
            REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => Chunk::Error { errno: be32(&body) },
            other => panic!("unknown chunk type {other}"),
        };
        (cookie, flags, chunk)
    }

    /// All chunks of the reply to `cookie` (which must be the next one).
    fn full_reply(&mut self, cookie: u64) -> Vec<Chunk> {
        let mut v = Vec::new();
        loop {
            let (c, flags, ch) = self.reply();
            assert_eq!(c, cookie);
            v.push(ch);
            if flags & REPLY_FLAG_DONE != 0 {
                return v;
            }
        }
    }

    /// A simple-mode read of `len` bytes.
    fn simple_read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, 0, cookie, offset, len as u64, &[]);
        let (e, c) = self.simple();
        assert_eq!(c, cookie);
        if e != 0 {
            return Err(e);
        }
        Ok(self.bytes(len as usize))
    }

    /// True when the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn flatten(chunks: &[Chunk], offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0x5A; len];
    for c in chunks {
        match c {
            Chunk::Data { offset: o, data } => {
                let i = (o - offset) as usize;
                out[i..i + data.len()].copy_from_slice(data);
            }
            Chunk::Hole { offset: o, len } => {
                let i = (o - offset) as usize;
                out[i..i + *len as usize].fill(0);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn handshake_greets_and_haggles() {
    let h = Harness::memory();
    let (mut c, t) = h.connect();
    let flags = c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    // Unknown option: ERR_UNSUP, and the handshake goes on.
    assert_eq!(c.opt(0x7777, b"junk")[0].kind, REP_ERR_UNSUP);
    assert_eq!(c.opt(OPT_STARTTLS, &[])[0].kind, REP_ERR_POLICY);
    let list = c.opt(OPT_LIST, &[]);
    assert_eq!(list[0].kind, REP_SERVER);
    assert_eq!(&list[0].data[4..8], b"disk");
    assert_eq!(list[1].kind, REP_ACK);
    // INFO for a name we do not have.
    assert_eq!(
        c.opt(OPT_INFO, &Client::info_payload("nope", &[]))[0].kind,
        REP_ERR_UNKNOWN
    );
    // Malformed INFO payload.
    assert_eq!(
        c.opt(OPT_INFO, &[0, 0, 0, 9, b'x'])[0].kind,
        REP_ERR_INVALID
    );
    // INFO with name, description and block size: no device opened.
    let info = c.opt(
        OPT_INFO,
        &Client::info_payload("", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
    );
    assert_eq!(
        h.export.opens.load(Ordering::SeqCst),
        0,
        "INFO must not open the device"
    );
    let find = |t: u16| {
        info.iter()
            .find(|r| r.kind == REP_INFO && r.data[0..2] == t.to_be_bytes())
            .unwrap()
    };
    assert_eq!(
        u64::from_be_bytes(find(INFO_EXPORT).data[2..10].try_into().unwrap()),
        64 << 20
    );
    assert_eq!(&find(INFO_NAME).data[2..], b"disk");
    assert_eq!(&find(INFO_DESCRIPTION).data[2..], b"test export");
    let bs = &find(INFO_BLOCK_SIZE).data[2..];
    assert_eq!(
        bs,
        [
            1u32.to_be_bytes(),
            4096u32.to_be_bytes(),
            (32u32 << 20).to_be_bytes()
        ]
        .concat()
    );
    // Meta contexts need structured replies first.
    assert_eq!(
        c.opt(OPT_LIST_META_CONTEXT, &Client::meta_payload("", &[]))[0].kind,
        REP_ERR_INVALID
    );
    assert_eq!(c.opt(OPT_STRUCTURED_REPLY, &[])[0].kind, REP_ACK);
    let lm = c.opt(OPT_LIST_META_CONTEXT, &Client::meta_payload("", &["base:"]));
    assert_eq!(lm[0].kind, REP_META_CONTEXT);
    assert_eq!(&lm[0].data[4..], b"base:allocation");
    let none = c.opt(
        OPT_SET_META_CONTEXT,
        &Client::meta_payload("", &["qemu:dirty-bitmap:x"]),
    );
    assert_eq!(none.len(), 1, "unknown contexts are not selected");
    c.send_opt(OPT_ABORT, &[]);
    assert_eq!(c.opt_reply(OPT_ABORT).kind, REP_ACK);
    t.join().unwrap();
    assert_eq!(h.export.opens.load(Ordering::SeqCst), 0);
}

#[test]
fn export_name_option_enters_transmission() {
    let h = Harness::memory();
    let (mut c, t) = h.connect();
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    c.send_opt(OPT_EXPORT_NAME, b"disk");
    assert_eq!(c.u64(), 64 << 20);
    let mut f = [0u8; 2];
    c.s.read_exact(&mut f).unwrap();
    assert_eq!(
        c.bytes(124),
        vec![0u8; 124],
        "124 zero bytes without NO_ZEROES"
    );
    assert_eq!(c.simple_read(1, 1 << 20, 16).unwrap(), vec![0xAB; 16]);
    c.request(CMD_DISC, 0, 2, 0, 0, &[]);
    t.join().unwrap();
    assert_eq!(h.export.opens.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_client_flags_or_magic_close_only_that_connection() {
    let h = Harness::memory();
    let (mut bad, t1) = h.connect();
    bad.greet(0x8000_0000);
    assert!(bad.closed());
    t1.join().unwrap();

    let (mut bad2, t2) = h.connect();
    bad2.greet(FLAG_C_FIXED_NEWSTYLE);
    bad2.s.write_all(b"GARBAGE!GARBAGE!").unwrap();
    assert!(bad2.closed());
    t2.join().unwrap();

    let (mut good, t3) = h.connect();
    good.go(ReplyStyle::Simple, false);
    good.request(CMD_READ, 0, 1, 0, 8, &[]);
    // Bad request magic mid-transmission closes this connection only.
    good.s.write_all(&[0u8; 28]).unwrap();
    assert_eq!(good.simple(), (0, 1));
    good.bytes(8);
    assert!(good.closed());
    t3.join().unwrap();

    let (mut again, t4) = h.connect();
    again.go(ReplyStyle::Simple, false);
    assert!(again.simple_read(1, 0, 4).is_ok());
    drop(again);
    t4.join().unwrap();
}

#[test]
fn bad_requests_get_errors_and_the_connection_lives() {
    let h = Harness::new(Arc::new(sources::PatternDev::new(1 << 20)), false);
    let (mut c, t) = h.connect();
    let flags = c.go(ReplyStyle::Simple, false);
    assert_ne!(flags & TF_READ_ONLY, 0, "pattern is read-only");
    assert_eq!(
        c.simple_read(1, (1 << 20) - 4, 8),
        Err(EINVAL),
        "read past the end"
    );
    assert_eq!(
        c.simple_read(2, u64::MAX - 2, 8),
        Err(EINVAL),
        "offset overflow"
    );
    assert_eq!(
        c.simple_read(3, 0, (32 << 20) + 1),
        Err(EOVERFLOW),
        "read over the maximum"
    );
    c.request(CMD_WRITE, 0, 4, 0, 4, b"abcd");
    assert_eq!(c.simple(), (EPERM, 4));
    c.request(CMD_TRIM, 0, 5, 0, 4096, &[]);
    assert_eq!(c.simple(), (EPERM, 5));
    c.request(99, 0, 6, 0, 0, &[]);
    assert_eq!(c.simple(), (EINVAL, 6), "unknown command");
    c.request(CMD_READ, CMD_FLAG_DF, 7, 0, 8, &[]);
    assert_eq!(c.simple(), (EINVAL, 7), "DF without structured replies");
    c.request(CMD_BLOCK_STATUS, 0, 8, 0, 4096, &[]);
    assert_eq!(
        c.simple(),
        (EINVAL, 8),
        "block status without a meta context"
    );
    assert_eq!(
        c.simple_read(9, 0, 0),
        Ok(vec![]),
        "zero-length read is harmless"
    );
    let data = c.simple_read(10, 4096, 16).unwrap();
    assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), 4096);
    c.request(CMD_DISC, 0, 11, 0, 0, &[]);
    t.join().unwrap();
}

#[test]
fn oversized_write_is_refused_and_discarded() {
    let h = Harness::memory();
    let (mut c, t) = h.connect();
    c.go(ReplyStyle::Simple, false);
    let big = vec![0x11u8; (32 << 20) + 512];
    c.request(CMD_WRITE, 0, 1, 0, big.len() as u64, &big);
    assert_eq!(c.simple(), (EOVERFLOW, 1));
    // The payload was consumed: the stream is still in step.
    c.request(CMD_WRITE, CMD_FLAG_FUA, 2, 4096, 4, b"wxyz");
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(c.simple_read(3, 4096, 4).unwrap(), b"wxyz");
    assert_eq!(
        c.simple_read(4, 0, 4).unwrap(),
        vec![0; 4],
        "the refused write changed nothing"
    );
    c.request(CMD_WRITE, 0, 5, (64 << 20) - 2, 4, b"over");
    assert_eq!(c.simple(), (ENOSPC, 5), "write past the end");
    drop(c);
    t.join().unwrap();
}

#[test]
fn structured_reads_are_sparse_and_df_is_one_chunk() {
    let h = Harness::memory();
    let (mut c, t) = h.connect();
    c.go(ReplyStyle::Structured, true);
    let (off, len) = ((1 << 20) - 65536, 3 * 65536u32);
    c.request(CMD_READ, 0, 1, off, len as u64, &[]);
    let chunks = c.full_reply(1);
    assert!(
        matches!(chunks[0], Chunk::Hole { offset, len: 65536 } if offset == off),
        "{:?}",
        chunks[0]
    );
    assert!(
        matches!(&chunks[1], Chunk::Data { offset, data } if *offset == 1 << 20 && data.len() == 65536)
    );
    assert!(matches!(chunks[2], Chunk::Hole { len: 65536, .. }));
    let mut want = vec![0u8; len as usize];
    want[65536..131072].fill(0xAB);
    assert!(flatten(&chunks, off, len as usize) == want);

    c.request(CMD_READ, CMD_FLAG_DF, 2, off, len as u64, &[]);
    let df = c.full_reply(2);
    assert_eq!(df.len(), 1, "DF: exactly one chunk");
    assert!(flatten(&df, off, len as usize) == want);

    // Errors in structured mode come as error chunks.
    c.request(CMD_READ, 0, 3, 64 << 20, 1, &[]);
    assert_eq!(c.full_reply(3), vec![Chunk::Error { errno: EINVAL }]);
    drop(c);
    t.join().unwrap();
}

#[test]
fn block_status_reports_holes_and_honours_req_one() {
    let h = Harness::memory();
    let (mut c, t) = h.connect();
    c.go(ReplyStyle::Structured, true);
    c.request(CMD_BLOCK_STATUS, 0, 1, 0, 4 << 20, &[]);
    let r = c.full_reply(1);
    let Chunk::Status { id, extents } = &r[0] else {
        panic!("{r:?}")
    };
    assert_eq!(*id, META_BASE_ALLOCATION_ID);
    let hz = (STATE_HOLE | STATE_ZERO) as u64;
    assert_eq!(
        extents,
        &vec![(1 << 20, hz), (65536, 0), ((3 << 20) - 65536, hz)]
    );
    c.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 2, 0, 4 << 20, &[]);
    let Chunk::Status { extents, .. } = &c.full_reply(2)[0] else {
        panic!()
    };
    assert_eq!(extents.len(), 1);
    drop(c);
    t.join().unwrap();
}

#[test]
fn extended_headers_carry_64_bit_lengths() {
    // An 8 GiB zero device: one block status request covers it whole.
    let h = Harness::new(Arc::new(sources::ZeroDev::new(8 << 30)), false);
    let (mut c, t) = h.connect();
    c.go(ReplyStyle::Extended, true);
    c.request(CMD_BLOCK_STATUS, 0, 1, 0, 8 << 30, &[]);
    let r = c.full_reply(1);
    let Chunk::Status { extents, .. } = &r[0] else {
        panic!("{r:?}")
    };
    assert_eq!(
        extents,
        &vec![(8u64 << 30, (STATE_HOLE | STATE_ZERO) as u64)]
    );
    // Success of a non-read command is a NONE chunk, never a simple reply.
    c.request(CMD_CACHE, 0, 2, 0, 4096, &[]);
    assert_eq!(c.full_reply(2), vec![Chunk::None]);
    c.request(CMD_READ, 0, 3, (8 << 30) - 8192, 8192, &[]);
    let rd = c.full_reply(3);
    assert!(flatten(&rd, (8 << 30) - 8192, 8192) == vec![0u8; 8192]);
    drop(c);
    t.join().unwrap();
}

#[test]
fn many_requests_in_flight_all_answered() {
    let h = Harness::new(Arc::new(sources::PatternDev::new(64 << 20)), false);
    let (mut c, t) = h.connect();
    c.go(ReplyStyle::Structured, false);
    for i in 0..64u64 {
        c.request(CMD_READ, 0, 1000 + i, i * 65536 + 8, 4096, &[]);
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 64 {
        let (cookie, flags, ch) = c.reply();
        let Chunk::Data { offset, data } = ch else {
            panic!("{ch:?}")
        };
        assert_eq!(offset, (cookie - 1000) * 65536 + 8);
        assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), offset);
        if flags & REPLY_FLAG_DONE != 0 {
            assert!(seen.insert(cookie), "cookie {cookie} answered twice");
        }
    }
    drop(c);
    t.join().unwrap();
}

#[test]
fn client_vanishing_mid_write_harms_nobody() {
    let h = Harness::memory();
    let (mut other, t_other) = h.connect();
    other.go(ReplyStyle::Simple, false);
    let (mut c, t) = h.connect();
    c.go(ReplyStyle::Simple, false);
    // Header for a 1 MiB write, then only part of the payload, then gone.
    c.request(CMD_WRITE, 0, 1, 0, 1 << 20, &[0x77; 1000]);
    drop(c);
    t.join().unwrap();
    assert_eq!(
        other.simple_read(1, 0, 1000).unwrap(),
        vec![0u8; 1000],
        "half a write must not land"
    );
    assert_eq!(other.simple_read(2, 1 << 20, 4).unwrap(), vec![0xAB; 4]);
    drop(other);
    t_other.join().unwrap();
}

#[test]
fn write_zeroes_trim_flush_and_fast_zero() {
    let h = Harness::memory();
    let (mut c, t) = h.connect();
    let flags = c.go(ReplyStyle::Structured, true);
    for f in [
        TF_SEND_FLUSH,
        TF_SEND_FUA,
        TF_SEND_TRIM,
        TF_SEND_WRITE_ZEROES,
        TF_SEND_FAST_ZERO,
        TF_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x}");
    }
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 1, 1 << 20, 65536, &[]);
    assert_eq!(c.full_reply(1), vec![Chunk::None]);
    c.request(CMD_FLUSH, 0, 2, 0, 0, &[]);
    assert_eq!(c.full_reply(2), vec![Chunk::None]);
    c.request(CMD_BLOCK_STATUS, 0, 3, 1 << 20, 65536, &[]);
    let Chunk::Status { extents, .. } = &c.full_reply(3)[0] else {
        panic!()
    };
    assert_eq!(extents, &vec![(65536, (STATE_HOLE | STATE_ZERO) as u64)]);
    c.request(CMD_WRITE, 0, 4, 0, 8, b"12345678");
    assert_eq!(c.full_reply(4), vec![Chunk::None]);
    c.request(CMD_TRIM, CMD_FLAG_FUA, 5, 0, 32768, &[]);
    assert_eq!(c.full_reply(5), vec![Chunk::None]);
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 6, 10, 10, &[]);
    assert_eq!(c.full_reply(6), vec![Chunk::None]);
    drop(c);
    t.join().unwrap();
}

#[test]
fn handshake_timeout_drops_silent_clients() {
    let export = Arc::new(SharedExport::new(
        Arc::new(sources::ZeroDev::new(4096)),
        "z",
    ));
    let opts = ServerOptions {
        handshake_limit: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let server = Server::new(export, opts).unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server.serve_connection(Stream::Unix(b)));
    let mut greeting = [0u8; 18];
    a.read_exact(&mut greeting).unwrap();
    // Say nothing: the server must give up on us.
    t.join().unwrap();
    let mut rest = Vec::new();
    assert_eq!(a.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn handshake_limit_covers_the_whole_negotiation() {
    let export = Arc::new(SharedExport::new(
        Arc::new(sources::ZeroDev::new(4096)),
        "z",
    ));
    let opts = ServerOptions {
        handshake_limit: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = Server::new(export, opts).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server.serve_connection(Stream::Unix(b)));
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client {
        s: a,
        style: ReplyStyle::Simple,
    };
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    // Each option comes well within the limit and is answered; all of
    // them together do not, and the server hangs up.
    let t0 = std::time::Instant::now();
    let mut answered = 0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&999u32.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        let mut head = [0u8; 20];
        if c.s.write_all(&m).is_err() || c.s.read_exact(&mut head).is_err() {
            break;
        }
        answered += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still negotiating after {answered} options"
        );
    }
    assert!(answered >= 2, "cut after {answered} options");
    t.join().unwrap();
}

#[test]
fn requests_larger_than_the_connection_budget_are_refused_not_waited_for() {
    let dev = sources::memory(64 << 20).unwrap();
    let export = Arc::new(SharedExport::new(Arc::new(dev), "m"));
    let opts = ServerOptions {
        conn_budget: 1 << 20,
        ..ServerOptions::default()
    };
    let server = Server::new(export, opts).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server.serve_connection(Stream::Unix(b)));
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client {
        s: a,
        style: ReplyStyle::Simple,
    };
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    // The advertised maximum block size is the budget.
    let r = c.opt(OPT_GO, &Client::info_payload("", &[INFO_BLOCK_SIZE]));
    let bs = r
        .iter()
        .find(|r| r.kind == REP_INFO && r.data[0..2] == INFO_BLOCK_SIZE.to_be_bytes())
        .expect("block size info");
    assert_eq!(&bs.data[10..14], &(1u32 << 20).to_be_bytes());
    assert_eq!(r.last().unwrap().kind, REP_ACK);
    // A write of twice the budget: refused (payload dropped), not a hang.
    let big = vec![0x22u8; 2 << 20];
    c.request(CMD_WRITE, 0, 1, 0, big.len() as u64, &big);
    assert_eq!(c.simple(), (EOVERFLOW, 1));
    c.request(CMD_READ, 0, 2, 0, 2 << 20, &[]);
    assert_eq!(c.simple(), (EOVERFLOW, 2));
    // Up to the budget is served.
    let full = vec![0x33u8; 1 << 20];
    c.request(CMD_WRITE, 0, 3, 0, full.len() as u64, &full);
    assert_eq!(c.simple(), (0, 3));
    assert_eq!(
        c.simple_read(4, (1 << 20) - 4, 8).unwrap(),
        b"\x33\x33\x33\x33\0\0\0\0"
    );
    drop(c);
    t.join().unwrap();
}

#[test]
fn a_quiet_connection_lets_its_workers_go_and_is_served_again() {
    let dev = sources::memory(1 << 20).unwrap();
    let export = Arc::new(SharedExport::new(Arc::new(dev), "m"));
    let opts = ServerOptions {
        export_name: "disk".into(),
        worker_idle: Duration::from_millis(20),
        ..ServerOptions::default()
    };
    let server = Server::new(export, opts).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server.serve_connection(Stream::Unix(b)));
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client {
        s: a,
        style: ReplyStyle::Simple,
    };
    c.go(ReplyStyle::Structured, false);
    // Bursts separated by more than the idle time: every burst starts the
    // workers again (from the connection's own thread), and none is lost.
    for round in 0..5u64 {
        for i in 0..8u64 {
            let cookie = round * 100 + i;
            c.request(CMD_WRITE, 0, cookie, i * 4096, 8, &cookie.to_be_bytes());
        }
        let mut done: Vec<u64> = (0..8).map(|_| c.reply().0).collect();
        done.sort();
        assert_eq!(done, (0..8).map(|i| round * 100 + i).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last round's writes are all there.
    c.request(CMD_READ, 0, 1000, 4 * 4096, 8, &[]);
    let chunks = c.full_reply(1000);
    assert_eq!(flatten(&chunks, 4 * 4096, 8), 404u64.to_be_bytes());
    drop(c);
    t.join().unwrap();
}

/// A device with a bug: reading its second block panics.
#[derive(Debug)]
struct Buggy;

impl BlockDev for Buggy {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        assert!(offset < 4096, "a bug in the device");
        buf.fill(7);
        Ok(())
    }
}

#[test]
fn a_panicking_device_ends_its_connection_not_the_server() {
    let export = Arc::new(SharedExport::new(Arc::new(Buggy), "buggy"));
    let server = Server::new(export, ServerOptions::default()).unwrap();
    for _ in 0..2 {
        let (a, b) = UnixStream::pair().unwrap();
        let s = server.clone();
        let t = std::thread::spawn(move || s.serve_connection(Stream::Unix(b)));
        a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client {
            s: a,
            style: ReplyStyle::Simple,
        };
        c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        let r = c.opt(OPT_GO, &Client::info_payload("", &[]));
        assert_eq!(r.last().unwrap().kind, REP_ACK);
        assert_eq!(c.simple_read(1, 0, 512).unwrap(), vec![7; 512]);
        c.request(CMD_READ, 0, 2, 8192, 512, &[]);
        assert!(c.closed(), "the connection outlived the panic");
        t.join().expect("serve_connection returned normally");
    }
}
