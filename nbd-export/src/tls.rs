//! NBD over TLS (proto.md "TLS support"): the server's X.509 credentials,
//! reloadable while clients stay connected, and one connection's TLS
//! session shared by the thread that reads requests and the threads that
//! write replies.
//!
//! A rustls session is one state machine; reads and writes both need it.
//! It sits under a mutex held only to decrypt what was read or to encrypt
//! a piece of a reply, never across a socket call: the reader blocks on
//! the socket without it, and a writer sends the records it produced
//! while still holding the connection's writer lock (so records reach the
//! wire in the order of their sequence numbers) but not the session. A
//! client that does not read its replies thus cannot stop its requests
//! from being read, as with a plain socket.
//!
//! Pre-shared keys (`--tls-psk`, psktool's format, which qemu and libnbd
//! also speak) are not supported: rustls implements no TLS-PSK cipher
//! suites (RFC 4279) and TLS 1.3 external PSKs only for resumption.

use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConnection};

use crate::send::{Piece, SendOutcome, ZEROS};
use crate::stream::Stream;

/// When TLS is offered and whether it is required (nbdkit's `--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// `NBD_OPT_STARTTLS` is refused (`NBD_REP_ERR_POLICY`).
    #[default]
    Off,
    /// Plain and TLS clients are both served.
    On,
    /// Every option but `STARTTLS` and `ABORT` is refused with
    /// `NBD_REP_ERR_TLS_REQD` until TLS is up.
    Require,
}

/// Where the credentials are read from (again on [`TlsSetup::reload`]).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must be signed by;
    /// needed for `verify_peer`.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// nbdkit's and qemu's layout of a credentials directory:
    /// `server-cert.pem`, `server-key.pem`, and `ca-cert.pem` if present.
    pub fn from_dir(dir: &Path) -> TlsFiles {
        let ca = dir.join("ca-cert.pem");
        TlsFiles {
            cert: dir.join("server-cert.pem"),
            key: dir.join("server-key.pem"),
            ca: ca.exists().then_some(ca),
        }
    }
}

/// Why TLS credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// Client verification without a CA.
    #[error(
        "--tls-verify-peer needs the CA that signs client certificates \
         (ca-cert.pem in --tls-certificates, or --tls-ca)"
    )]
    NoCa,
    /// rustls refused the configuration (a key not matching the
    /// certificate, an unusable CA).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The server's TLS settings: credentials (swapped on reload), client
/// verification and the subject pattern.
#[derive(Debug)]
pub struct TlsSetup {
    files: TlsFiles,
    verify_peer: bool,
    allow_subject: Option<String>,
    /// What new connections use. A reload replaces it; sessions already
    /// set up keep the configuration they started with.
    current: Mutex<Arc<rustls::ServerConfig>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn file_err(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate (BEGIN CERTIFICATE) in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_err(path, format!("no usable private key in it: {e}")))
}

impl TlsSetup {
    /// Read the credentials and check that they fit together.
    pub fn load(
        files: TlsFiles,
        verify_peer: bool,
        allow_subject: Option<String>,
    ) -> Result<TlsSetup, TlsError> {
        let config = Self::build(&files, verify_peer)?;
        Ok(TlsSetup {
            files,
            verify_peer,
            allow_subject,
            current: Mutex::new(Arc::new(config)),
        })
    }

    /// Read the files again (after a certificate was renewed). On an
    /// error the credentials in use stay; connected clients are never
    /// touched either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.files, self.verify_peer)?;
        *lock(&self.current) = Arc::new(config);
        Ok(())
    }

    /// The common name (CN) in the server certificate's subject, read from
    /// its file now: what a client over a Unix socket, which has no host
    /// name, must be told to expect (qemu's `tls-hostname`).
    pub fn server_common_name(&self) -> Option<String> {
        let certs = read_certs(&self.files.cert).ok()?;
        let subject = subject_of(certs.first()?.as_ref())?;
        subject
            .split(',')
            .find_map(|kv| kv.strip_prefix("CN="))
            .map(str::to_owned)
    }

    /// The files in use, for logs.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn build(files: &TlsFiles, verify_peer: bool) -> Result<rustls::ServerConfig, TlsError> {
        let certs = read_certs(&files.cert)?;
        let key = read_key(&files.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if verify_peer {
            let ca = files.ca.as_ref().ok_or(TlsError::NoCa)?;
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_err(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder.with_single_cert(certs, key).map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "the private key does not belong to the certificate".to_string()
                }
                e => e.to_string(),
            };
            TlsError::Config(format!(
                "{} with {}: {why}",
                files.cert.display(),
                files.key.display()
            ))
        })
    }

    /// A session for a client that sent `NBD_OPT_STARTTLS`, not yet
    /// through its handshake.
    pub(crate) fn session(&self) -> io::Result<ServerConnection> {
        let config = lock(&self.current).clone();
        let mut c = ServerConnection::new(config).map_err(io::Error::other)?;
        // Bounds what a connection buffers for sending (each reply is
        // encrypted and sent piece by piece; see `TlsSession::send`).
        c.set_buffer_limit(Some(SEND_LIMIT));
        Ok(c)
    }

    /// Whether a verified client with certificate subject `subject` may
    /// go on (`--tls-allow-subject`); `Err` says why not.
    pub(crate) fn admit_subject(&self, subject: Option<&str>) -> Result<(), String> {
        let Some(pattern) = &self.allow_subject else {
            return Ok(());
        };
        match subject {
            Some(s) if glob(pattern.as_bytes(), s.as_bytes()) => Ok(()),
            Some(s) => Err(format!(
                "client certificate subject {s:?} does not match --tls-allow-subject {pattern:?}"
            )),
            None => Err(format!(
                "no client certificate, and --tls-allow-subject {pattern:?} needs one"
            )),
        }
    }
}

/// Plaintext encrypted at once, whose records are then written to the
/// socket together.
const SEND_CHUNK: usize = 64 * 1024;
/// What rustls may hold for sending (bounded memory whatever the reply's
/// size: it never holds more than one step's records).
const SEND_LIMIT: usize = 4 * SEND_CHUNK;
/// Ciphertext read from the socket at once.
const RECV_CHUNK: usize = 16 * 1024 + 512;

/// One connection's TLS session, after its handshake.
#[derive(Debug)]
pub(crate) struct TlsSession {
    conn: Mutex<ServerConnection>,
    /// Ciphertext read from the socket and not yet given to rustls; used
    /// only by the reading thread (one at a time).
    rx: Mutex<Vec<u8>>,
}

impl TlsSession {
    pub(crate) fn new(conn: ServerConnection) -> TlsSession {
        TlsSession {
            conn: Mutex::new(conn),
            rx: Mutex::new(Vec::new()),
        }
    }

    /// Whether a read would find something without touching the socket
    /// (decrypted data, or ciphertext not yet decrypted): a thread waiting
    /// for the socket to be readable must not wait then.
    pub(crate) fn buffered(&self) -> bool {
        if !lock(&self.rx).is_empty() {
            return true;
        }
        let mut c = lock(&self.conn);
        c.process_new_packets().map_or(true, |st| {
            st.plaintext_bytes_to_read() > 0 || st.peer_has_closed()
        })
    }

    /// Read decrypted bytes. `before_read` runs before every socket read
    /// (the handshake arms its deadline there). `Ok(0)`: the client closed
    /// the session (close_notify).
    pub(crate) fn read(
        &self,
        s: &Stream,
        buf: &mut [u8],
        before_read: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<usize> {
        let mut rx = lock(&self.rx);
        loop {
            {
                let mut c = lock(&self.conn);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The socket ended without close_notify (truncation):
                    // UnexpectedEof, as a plain socket's end mid-request.
                    Err(e) => return Err(e),
                }
                if !rx.is_empty() {
                    let mut slice = &rx[..];
                    let n = c.read_tls(&mut slice)?;
                    if n == 0 {
                        return Err(io::Error::other("TLS: rustls took none of the bytes read"));
                    }
                    rx.drain(..n);
                    if rx.is_empty() {
                        *rx = Vec::new();
                    }
                    if let Err(e) = c.process_new_packets() {
                        // Tell the client why (an alert), best effort.
                        let mut alert = Vec::new();
                        let _ = c.write_tls(&mut alert);
                        drop(c);
                        let _ = (&*s).write_all(&alert);
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS: {e}"),
                        ));
                    }
                    continue;
                }
            }
            before_read()?;
            // On the stack: an idle connection keeps no receive buffer;
            // only what rustls does not take at once (rare) is kept in `rx`.
            let mut tmp = [0u8; RECV_CHUNK];
            let n = { s }.read(&mut tmp)?;
            rx.extend_from_slice(&tmp[..n]);
            if n == 0 {
                // The end of the socket, with or without close_notify: the
                // end of the stream, as on a plain socket (NBD's framing
                // tells a request cut short; the server's own shutdown at
                // a stop sends no close_notify either).
                return Ok(0);
            }
        }
    }

    /// Encrypt `plain` and send it. The caller is the only writer (it
    /// holds the connection's writer lock, or it is the handshake).
    pub(crate) fn write_all(&self, s: &Stream, plain: &[u8]) -> io::Result<()> {
        self.send_staged(s, &[IoSlice::new(plain)])
    }

    /// The first half of sending a reply over TLS, done before the writer
    /// lock so that workers do it in parallel: file pieces are read into
    /// `bounce` (no `sendfile` through TLS), and the reply becomes
    /// plaintext slices for [`TlsSession::send_staged`]. (Reads copy their
    /// file pieces earlier still, in `dispatch`, so that their data chunk
    /// can be final.) `bounce` grows to the reply's file bytes, which the
    /// request limits bound (`--connection-memory`).
    pub(crate) fn stage<'a>(
        pieces: &[Piece<'a>],
        bounce: &'a mut Vec<u8>,
    ) -> (Vec<IoSlice<'a>>, SendOutcome) {
        let mut out = SendOutcome::default();
        let file_bytes: u64 = pieces
            .iter()
            .map(|p| match *p {
                Piece::File { len, .. } => len,
                _ => 0,
            })
            .sum();
        // Grown, never shrunk here (the worker's scratch trims it after a
        // large reply): zeroing a buffer that is overwritten anyway cost
        // 4 % of a TLS read's CPU when it was done before every read.
        if bounce.len() < file_bytes as usize {
            bounce.resize(file_bytes as usize, 0);
        }
        let mut at = 0usize;
        let mut pos = 0u64;
        for p in pieces {
            match *p {
                Piece::File { file, offset, len } => {
                    let dst = &mut bounce[at..at + len as usize];
                    if let Err(e) = std::os::unix::fs::FileExt::read_exact_at(file, dst, offset) {
                        // Zeros keep the stream in step; the caller reports
                        // the error (as `send_pieces` does).
                        if out.short_at.is_none() {
                            log::warn!("reading a file piece for a reply: {e}");
                        }
                        out.short_at.get_or_insert(pos);
                        dst.fill(0);
                    }
                    at += len as usize;
                    pos += len;
                }
                Piece::Mem(b) => pos += b.len() as u64,
                Piece::Zeros(n) => pos += n,
            }
        }
        let bounce: &'a [u8] = bounce;
        let mut slices = Vec::with_capacity(pieces.len() + 1);
        let mut at = 0usize;
        for p in pieces {
            match *p {
                Piece::Mem(b) if !b.is_empty() => slices.push(IoSlice::new(b)),
                Piece::Mem(_) => {}
                Piece::Zeros(mut n) => {
                    while n > 0 {
                        let k = n.min(ZEROS.len() as u64) as usize;
                        slices.push(IoSlice::new(&ZEROS[..k]));
                        n -= k as u64;
                    }
                }
                Piece::File { len, .. } => {
                    slices.push(IoSlice::new(&bounce[at..at + len as usize]));
                    at += len as usize;
                }
            }
        }
        (slices, out)
    }

    /// The second half, under the connection's writer lock (records reach
    /// the wire in the order of their sequence numbers): rustls encrypts
    /// the slices [`SEND_CHUNK`] of plaintext at a time (a header and its
    /// data share records: RFC 8446 §5.1 fragments across them, and no
    /// staging copy is made), and the records of each step are written to
    /// the socket. The session lock is held only to encrypt, never across
    /// a socket call: a client that does not read its replies cannot stop
    /// its requests from being read.
    pub(crate) fn send_staged(&self, s: &Stream, slices: &[IoSlice<'_>]) -> io::Result<()> {
        // Grows to one step's records (a simple reply's 16 bytes do not
        // cost a 64 KiB allocation).
        let mut wire = Vec::new();
        // Where the next step starts: a slice and an offset in it.
        let (mut i, mut off) = (0usize, 0usize);
        loop {
            let mut step: Vec<&[u8]> = Vec::with_capacity(4);
            let mut room = SEND_CHUNK;
            let (mut j, mut o) = (i, off);
            while room > 0 && j < slices.len() {
                let k = (slices[j].len() - o).min(room);
                if k > 0 {
                    step.push(&slices[j][o..o + k]);
                }
                room -= k;
                o += k;
                if o == slices[j].len() {
                    j += 1;
                    o = 0;
                }
            }
            let mut step: Vec<IoSlice<'_>> = step.into_iter().map(IoSlice::new).collect();
            {
                let mut c = lock(&self.conn);
                let mut rest: &mut [IoSlice<'_>] = &mut step;
                while !rest.is_empty() {
                    let n = c.writer().write_vectored(rest)?;
                    while c.wants_write() {
                        c.write_tls(&mut wire)?;
                    }
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    IoSlice::advance_slices(&mut rest, n);
                }
                // Anything rustls queued on its own (a KeyUpdate answer,
                // RFC 8446 §4.6.3) goes out with the records.
                while c.wants_write() {
                    c.write_tls(&mut wire)?;
                }
            }
            (i, off) = (j, o);
            if !wire.is_empty() {
                { s }.write_all(&wire)?;
                wire.clear();
            }
            if i >= slices.len() {
                return Ok(());
            }
        }
    }

    /// The protocol version and cipher suite, for logs.
    pub(crate) fn describe(&self) -> String {
        let c = lock(&self.conn);
        let v = c
            .protocol_version()
            .map_or_else(|| "TLS".into(), |v| format!("{v:?}"));
        match c.negotiated_cipher_suite() {
            Some(cs) => format!("{v}, {:?}", cs.suite()),
            None => v,
        }
    }

    /// The verified client certificate's subject, if the client sent one.
    pub(crate) fn peer_subject(&self) -> Option<String> {
        let c = lock(&self.conn);
        let cert = c.peer_certificates()?.first()?;
        Some(subject_of(cert.as_ref()).unwrap_or_else(|| "(unparsable subject)".into()))
    }
}

/// `*` and `?` wildcards, as a shell's case patterns (no classes).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// One DER element (X.690 §8.1): tag, contents, and what follows it.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (l0 as usize, rest)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A certificate's subject as `CN=...,O=...` (RFC 5280 §4.1.2.6: the
/// sixth field of TBSCertificate, after the optional `[0]` version). Only
/// for logs and `--tls-allow-subject`: the certificate was verified by
/// rustls before this is asked.
fn subject_of(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (_, mut name, _) = der(rest)?;
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (_, set, next) = der(name)?;
        name = next;
        let mut set = set;
        while !set.is_empty() {
            let (_, atv, next) = der(set)?;
            set = next;
            let (_, oid, after) = der(atv)?;
            let (_, value, _) = der(after)?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                other => other.iter().map(|b| format!("{b:02x}")).collect(),
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
        }
    }
    Some(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell_case() {
        assert!(glob(b"CN=*,O=Example", b"CN=client1,O=Example"));
        assert!(glob(b"*", b""));
        assert!(glob(b"CN=c?", b"CN=c1"));
        assert!(!glob(b"CN=c?", b"CN=c12"));
        assert!(!glob(b"CN=client", b"CN=client2"));
        assert!(glob(b"*O=Ex*", b"CN=a,O=Example"));
        assert!(!glob(b"a*b", b"acbc"));
    }

    #[test]
    fn der_never_reads_past_the_end() {
        assert_eq!(subject_of(&[]), None);
        assert_eq!(subject_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_of(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
