//! Putting a reply on the wire in as few syscalls as possible: in-memory
//! pieces go out together in one `sendmsg` (header + payload, no copy into
//! a staging buffer), host-file pieces go out with `sendfile` straight from
//! the page cache, preceded by the pending pieces sent with `MSG_MORE`.

use std::fs::File;
use std::io::{self, IoSlice};

use rustix::io::Errno;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};

use crate::stream::Stream;

/// Zeros to point iovecs at (payload zeros are never materialised).
pub(crate) static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Most iovecs handed to one `sendmsg` (Linux `UIO_MAXIOV` is 1024).
const MAX_IOV: usize = 512;

/// One piece of a reply.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// Bytes in memory (headers, buffers, shared pages).
    Mem(&'a [u8]),
    /// Zero bytes.
    Zeros(u64),
    /// A host-file range.
    File {
        /// The host file.
        file: &'a File,
        /// Offset in it.
        offset: u64,
        /// Bytes to send.
        len: u64,
    },
}

/// What happened to the file ranges of a reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Bytes of file pieces that could not be read (the file shrank); they
    /// were sent as zeros so the stream stays in step, and the caller must
    /// report an error for them. `Some(offset in the reply payload)`.
    pub short_at: Option<u64>,
}

fn send_iov(s: &Stream, iov: &mut Vec<IoSlice<'_>>, more: bool) -> io::Result<()> {
    let mut flags = SendFlags::NOSIGNAL;
    if more {
        flags |= SendFlags::MORE;
    }
    let mut slices: &mut [IoSlice<'_>] = &mut iov[..];
    while !slices.is_empty() {
        let n = match sendmsg(s, slices, &mut SendAncillaryBuffer::default(), flags) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    iov.clear();
    Ok(())
}

fn send_file(s: &Stream, file: &File, mut offset: u64, len: u64) -> io::Result<u64> {
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        match rustix::fs::sendfile(s, file, Some(&mut offset), want) {
            Ok(0) => break, // the file is shorter than it was
            Ok(n) => left -= n as u64,
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(len - left)
}

/// Send `pieces` in order. `use_sendfile = false` reads file pieces into
/// `bounce` instead (for measuring, and for sockets that refuse sendfile).
pub fn send_pieces(
    s: &Stream,
    pieces: &[Piece<'_>],
    use_sendfile: bool,
    bounce: &mut Vec<u8>,
) -> io::Result<SendOutcome> {
    let mut out = SendOutcome::default();
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(pieces.len().min(MAX_IOV) + 4);
    let mut payload_pos = 0u64;
    for (i, p) in pieces.iter().enumerate() {
        match p {
            Piece::Mem(b) => {
                if !b.is_empty() {
                    iov.push(IoSlice::new(b));
                }
                payload_pos += b.len() as u64;
            }
            Piece::Zeros(n) => {
                let mut left = *n;
                while left > 0 {
                    let k = left.min(ZEROS.len() as u64) as usize;
                    iov.push(IoSlice::new(&ZEROS[..k]));
                    left -= k as u64;
                    if iov.len() >= MAX_IOV {
                        send_iov(s, &mut iov, true)?;
                    }
                }
                payload_pos += n;
            }
            Piece::File { file, offset, len } => {
                if use_sendfile {
                    if !iov.is_empty() {
                        send_iov(s, &mut iov, true)?;
                    }
                    let sent = send_file(s, file, *offset, *len)?;
                    if sent < *len {
                        out.short_at.get_or_insert(payload_pos + sent);
                        let mut z = vec![Piece::Zeros(len - sent)];
                        z.extend_from_slice(&pieces[i + 1..]);
                        let rest = send_pieces(s, &z, use_sendfile, bounce)?;
                        return Ok(SendOutcome {
                            short_at: out.short_at.or(rest.short_at),
                        });
                    }
                } else {
                    if !iov.is_empty() {
                        send_iov(s, &mut iov, true)?;
                    }
                    bounce.resize(*len as usize, 0);
                    if let Err(e) =
                        std::os::unix::fs::FileExt::read_exact_at(*file, bounce, *offset)
                    {
                        log::warn!("reading a file piece for a reply: {e}");
                        out.short_at.get_or_insert(payload_pos);
                        bounce.fill(0);
                    }
                    let mut one = vec![IoSlice::new(bounce)];
                    send_iov(s, &mut one, i + 1 < pieces.len())?;
                }
                payload_pos += len;
            }
        }
        if iov.len() >= MAX_IOV {
            send_iov(s, &mut iov, true)?;
        }
    }
    if !iov.is_empty() {
        send_iov(s, &mut iov, false)?;
    }
    Ok(out)
}
