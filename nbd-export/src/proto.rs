//! NBD wire constants and header layouts, from the NBD protocol
//! specification (proto.md). Everything on the wire is big-endian.

// --- Handshake (proto.md "Newstyle negotiation") ---------------------------
/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// The second magic of oldstyle negotiation (proto.md "Oldstyle negotiation").
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic that starts every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server): fixed newstyle, and no 124 zero bytes.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options (proto.md "Option types").
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply (proto.md "Option reply types").
pub const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_ERR | 10;

// Info types for OPT_INFO / OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags (proto.md "Transmission flags").
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_CACHE: u16 = 1 << 10;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

// --- Transmission (proto.md "Transmission phase") ---------------------------
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

// base:allocation status bits (proto.md "base:allocation metadata context").
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context we serve, and the id we give it.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
pub const META_BASE_ALLOCATION_ID: u32 = 1;

// Errors (proto.md "Error values"): fixed numbers, not the host's errno.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Compact request header size (magic, flags, type, cookie, offset, u32 length).
pub const REQUEST_LEN: usize = 28;
/// Extended request header size (64-bit length).
pub const EXTENDED_REQUEST_LEN: usize = 32;

/// Map a device error to an NBD error value.
pub fn errno_of(kind: synth::ErrorKind) -> u32 {
    use synth::ErrorKind as K;
    match kind {
        K::OutOfBounds | K::InvalidInput => EINVAL,
        K::ReadOnly => EPERM,
        K::Unsupported | K::NotFast => ENOTSUP,
        K::NoSpace => ENOSPC,
        _ => EIO,
    }
}

/// A request as read off the wire (either header style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u64,
}

impl Request {
    /// Decode a compact (28-byte) request; `None` on bad magic.
    pub fn decode_compact(b: &[u8; REQUEST_LEN]) -> Option<Request> {
        if u32::from_be_bytes(field(b, 0)) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: u16::from_be_bytes(field(b, 4)),
            kind: u16::from_be_bytes(field(b, 6)),
            cookie: u64::from_be_bytes(field(b, 8)),
            offset: u64::from_be_bytes(field(b, 16)),
            len: u32::from_be_bytes(field(b, 24)) as u64,
        })
    }

    /// Decode an extended (32-byte) request; `None` on bad magic.
    pub fn decode_extended(b: &[u8; EXTENDED_REQUEST_LEN]) -> Option<Request> {
        if u32::from_be_bytes(field(b, 0)) != EXTENDED_REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: u16::from_be_bytes(field(b, 4)),
            kind: u16::from_be_bytes(field(b, 6)),
            cookie: u64::from_be_bytes(field(b, 8)),
            offset: u64::from_be_bytes(field(b, 16)),
            len: u64::from_be_bytes(field(b, 24)),
        })
    }
}

/// The `N` bytes of `b` at `at`, as an array for `from_be_bytes`. Zeros
/// where `b` is too short, which the fixed-size headers above never are:
/// no slice-to-array `unwrap` left to reason about.
pub fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = at.checked_add(N).and_then(|end| b.get(at..end)) {
        out.copy_from_slice(src);
    }
    out
}

/// How replies are framed on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStyle {
    /// Simple replies only.
    Simple,
    /// Structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    Structured,
    /// Extended headers (`NBD_OPT_EXTENDED_HEADERS`): 64-bit everything.
    Extended,
}

impl ReplyStyle {
    /// Bytes of one chunk header under this style (proto.md "Structured
    /// reply chunk message": 20; "Extended reply chunk message": 32).
    /// Simple replies have no chunks; their header is [`SIMPLE_REPLY_LEN`].
    pub fn chunk_header_len(self) -> usize {
        match self {
            ReplyStyle::Extended => EXTENDED_CHUNK_HEADER_LEN,
            ReplyStyle::Simple | ReplyStyle::Structured => STRUCTURED_CHUNK_HEADER_LEN,
        }
    }

    /// Bytes of one request header under this style (proto.md "Request
    /// message": 28 bytes, 32 with extended headers).
    pub fn request_len(self) -> usize {
        match self {
            ReplyStyle::Extended => EXTENDED_REQUEST_LEN,
            ReplyStyle::Simple | ReplyStyle::Structured => REQUEST_LEN,
        }
    }
}

/// A simple reply header: magic, error, cookie.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// A structured reply chunk header (32-bit payload length).
pub const STRUCTURED_CHUNK_HEADER_LEN: usize = 20;
/// An extended reply chunk header (offset and 64-bit payload length).
pub const EXTENDED_CHUNK_HEADER_LEN: usize = 32;
/// Longest reply header: an extended chunk header.
pub const MAX_REPLY_HEADER: usize = EXTENDED_CHUNK_HEADER_LEN;
/// The fixed part of an `OFFSET_DATA` chunk's payload: the offset.
pub const OFFSET_DATA_PREFIX: usize = 8;
/// An `OFFSET_HOLE` chunk's whole payload: offset and 32-bit hole size.
pub const OFFSET_HOLE_PAYLOAD: usize = 12;

/// Encode a simple reply header into `out`; returns its length (16).
pub fn simple_reply(out: &mut [u8; MAX_REPLY_HEADER], error: u32, cookie: u64) -> usize {
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    SIMPLE_REPLY_LEN
}

/// Encode a structured (20-byte) or extended (32-byte) chunk header.
/// `offset` is the request's offset (extended headers only carry it).
pub fn chunk_header(
    out: &mut [u8; MAX_REPLY_HEADER],
    style: ReplyStyle,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    payload_len: u64,
) -> usize {
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    if style == ReplyStyle::Extended {
        out[0..4].copy_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
        out[16..24].copy_from_slice(&offset.to_be_bytes());
        out[24..32].copy_from_slice(&payload_len.to_be_bytes());
        EXTENDED_CHUNK_HEADER_LEN
    } else {
        debug_assert!(payload_len <= u32::MAX as u64);
        out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[16..20].copy_from_slice(&(payload_len as u32).to_be_bytes());
        STRUCTURED_CHUNK_HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_request_round_trip() {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::decode_compact(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: 1,
                kind: 1,
                cookie: 7,
                offset: 4096,
                len: 512
            }
        );
        b[0] ^= 1;
        assert!(Request::decode_compact(&b).is_none());
    }

    #[test]
    fn extended_chunk_header_layout() {
        let mut out = [0u8; MAX_REPLY_HEADER];
        let n = chunk_header(
            &mut out,
            ReplyStyle::Extended,
            1,
            REPLY_TYPE_NONE,
            9,
            4096,
            0,
        );
        assert_eq!(n, 32);
        assert_eq!(&out[0..4], &EXTENDED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(u64::from_be_bytes(out[16..24].try_into().unwrap()), 4096);
    }
}
