//! Refusing clients politely when the server is full: the client is
//! greeted, every option it sends is answered with `NBD_REP_ERR_POLICY`
//! and the reason (proto.md "Option reply types": "server-side policy
//! forbids the server to allow the option"; clients show the text, e.g.
//! libnbd's "server replied with error to opt_go request: ..."), and the
//! connection is closed when it gives up, after [`MAX_ANSWERS`] options, or
//! after a short time. All of it happens on the accept loop with
//! non-blocking sockets: a refused client costs no thread.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::debug;

use crate::handshake::greeting;
use crate::limits::MAX_REFUSING;
use crate::proto::*;
use crate::stream::Stream;

/// How long a refused client may take to read its refusal.
pub const REFUSE_TIME: Duration = Duration::from_secs(2);
/// Options answered before the connection is closed anyway.
const MAX_ANSWERS: u32 = 16;
/// Option payloads are skipped, not read; one larger than this ends it.
const MAX_SKIP: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 32-bit client flags.
    Flags,
    /// Waiting for an option header (magic, option, length).
    Options,
}

/// One client being refused.
#[derive(Debug)]
struct Refusal {
    s: Stream,
    deadline: Instant,
    state: State,
    /// The part of the flags or option header read so far.
    buf: Vec<u8>,
    /// Payload bytes of the last option still to skip.
    skip: u64,
    answered: u32,
}

/// The clients being refused, served by the accept loop.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    list: Vec<Refusal>,
}

impl Refusals {
    /// Start refusing `s`: greet it and keep it until it has read why.
    /// When [`MAX_REFUSING`] are in progress already, it is greeted and
    /// closed at once (it learns nothing, but costs nothing either).
    pub(crate) fn add(&mut self, s: Stream, now: Instant, limit: Duration) {
        if s.set_nonblocking(true).is_err() {
            return;
        }
        // A fresh socket's buffer takes 18 bytes; if not, the client is gone.
        if (&s).write_all(&greeting()).is_err() || self.list.len() >= MAX_REFUSING {
            return;
        }
        self.list.push(Refusal {
            s,
            deadline: now + limit.min(REFUSE_TIME),
            state: State::Flags,
            buf: Vec::with_capacity(16),
            skip: 0,
            answered: 0,
        });
    }

    /// Clients being refused.
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Their sockets, in order, to poll for input.
    pub(crate) fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.list.iter().map(|r| &r.s)
    }

    /// The earliest deadline, to bound the accept loop's wait.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|r| r.deadline).min()
    }

    /// Answer the clients whose sockets are `ready` (same order as
    /// [`Refusals::streams`]), and drop those that are done or out of time.
    pub(crate) fn serve(&mut self, ready: &[bool], why: &str, now: Instant) {
        let mut i = 0;
        self.list.retain_mut(|r| {
            let is_ready = ready.get(i).copied().unwrap_or(false);
            i += 1;
            if now >= r.deadline {
                return false;
            }
            !is_ready || r.pump(why)
        });
    }
}

impl Refusal {
    /// Read what the client sent and answer it; `false` when done with it.
    fn pump(&mut self, why: &str) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match (&self.s).read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    if !self.feed(&chunk[..n], why) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Consume client bytes; `false` when the connection should close.
    fn feed(&mut self, mut data: &[u8], why: &str) -> bool {
        loop {
            if self.skip > 0 {
                let k = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= k as u64;
                data = &data[k..];
            }
            if data.is_empty() {
                return true;
            }
            let need = match self.state {
                State::Flags => 4,
                State::Options => 16,
            };
            let take = (need - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < need {
                return true;
            }
            if self.state == State::Flags {
                // Whatever the flags: the answer is the same.
                self.state = State::Options;
                self.buf.clear();
                continue;
            }
            let magic = u64::from_be_bytes(field(&self.buf, 0));
            let opt = u32::from_be_bytes(field(&self.buf, 8));
            let len = u32::from_be_bytes(field(&self.buf, 12)) as u64;
            self.buf.clear();
            if magic != IHAVEOPT || len > MAX_SKIP {
                return false;
            }
            self.skip = len;
            match opt {
                // proto.md: the server MUST reply to NBD_OPT_ABORT with an ACK.
                OPT_ABORT => {
                    let _ = self.reply(opt, REP_ACK, "");
                    return false;
                }
                // proto.md: NBD_OPT_EXPORT_NAME cannot fail politely; the
                // server must terminate the session.
                OPT_EXPORT_NAME => return false,
                _ => {
                    debug!("refusing option {opt}: {why}");
                    if self.reply(opt, REP_ERR_POLICY, why).is_err() {
                        return false;
                    }
                    self.answered += 1;
                    if self.answered >= MAX_ANSWERS {
                        return false;
                    }
                }
            }
        }
    }

    /// An option reply (proto.md "Option reply message"), all or nothing:
    /// a client that does not read its refusal is not waited for.
    fn reply(&mut self, opt: u32, kind: u32, msg: &str) -> io::Result<()> {
        let msg = &msg.as_bytes()[..msg.len().min(4096)];
        let mut m = Vec::with_capacity(20 + msg.len());
        m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        m.extend_from_slice(msg);
        let n = (&self.s).write(&m)?;
        if n < m.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn opt(o: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&o.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn every_option_gets_the_reason_and_abort_ends_it() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut refusals = Refusals::default();
        let now = Instant::now();
        refusals.add(Stream::Unix(b), now, Duration::from_secs(10));
        let mut a = a;
        let mut g = [0u8; 18];
        a.read_exact(&mut g).unwrap();
        assert_eq!(g, greeting());
        // Flags, then GO with a payload, split at awkward places.
        let mut msg = 3u32.to_be_bytes().to_vec();
        msg.extend(opt(OPT_GO, b"\0\0\0\0\0\0"));
        msg.extend(opt(OPT_ABORT, b""));
        for part in msg.chunks(5) {
            a.write_all(part).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            refusals.serve(&[true], "server full", now);
        }
        let mut reply = Vec::new();
        a.read_to_end(&mut reply).unwrap();
        // The ERR_POLICY reply with the reason, then the ACK, then EOF.
        assert_eq!(&reply[8..12], &OPT_GO.to_be_bytes());
        assert_eq!(&reply[12..16], &REP_ERR_POLICY.to_be_bytes());
        assert_eq!(&reply[16..20], &11u32.to_be_bytes());
        assert_eq!(&reply[20..31], b"server full");
        assert_eq!(&reply[43..47], &REP_ACK.to_be_bytes());
        assert_eq!(reply.len(), 31 + 20);
        assert_eq!(refusals.len(), 0);
    }

    #[test]
    fn a_silent_client_is_dropped_at_its_deadline() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut refusals = Refusals::default();
        let now = Instant::now();
        refusals.add(Stream::Unix(b), now, Duration::from_secs(1));
        assert_eq!(refusals.len(), 1);
        refusals.serve(&[false], "x", now + Duration::from_secs(2));
        assert_eq!(refusals.len(), 0);
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 18);
    }
}
