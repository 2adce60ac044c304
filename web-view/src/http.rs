//! A minimal HTTP/1.1 server for the view: `GET` (and `HEAD`) of a few
//! paths, one request per connection (`Connection: close`), with strict
//! limits, because whoever reaches the port must not be able to hurt the
//! NBD server in the same process:
//! - at most [`MAX_CONNECTIONS`] connections at once, of which at most
//!   [`MAX_STREAMS`] event streams; the next is answered 503 and closed;
//! - the request head must arrive whole within [`HEAD_TIME`] and fit in
//!   [`HEAD_LIMIT`] bytes (408, 431), a body is never read;
//! - every write must progress within [`WRITE_TIME`] and a whole answer
//!   (the map of a large disk) end within [`ANSWER_TIME`];
//! - bound to loopback, the `Host` header must name an address or
//!   `localhost`: a web page elsewhere cannot use DNS rebinding to read the
//!   view through a visitor's browser.
//!
//! The web threads only read what the collectors and the sampler made;
//! nothing they do takes a lock a request of the NBD server waits for.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::View;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Most event streams open at once (each holds a connection).
pub const MAX_STREAMS: usize = 4;
/// Most bytes of a request head.
pub const HEAD_LIMIT: usize = 8192;
/// Time for the whole request head to arrive.
pub const HEAD_TIME: Duration = Duration::from_secs(5);
/// Time for one write to make progress.
pub const WRITE_TIME: Duration = Duration::from_secs(5);
/// Time for a whole answer (not an event stream).
pub const ANSWER_TIME: Duration = Duration::from_secs(60);
/// An event stream ends after this long; the browser reconnects by itself
/// (EventSource), so no stream is held forever.
pub const STREAM_TIME: Duration = Duration::from_secs(600);

/// A request as far as the view cares.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub head_only: bool,
    /// The path, without the query.
    pub path: String,
    /// The query's `key=value` pairs, percent-decoded.
    pub query: Vec<(String, String)>,
}

impl Request {
    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request is refused, and with what status.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// One line for the body.
    pub why: &'static str,
}

fn refuse(status: u16, why: &'static str) -> Refusal {
    Refusal { status, why }
}

/// The reason phrase of a status.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` and `+` decoded; `None` when the result is not UTF-8 or an escape
/// is cut.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = unhex(*b.get(i + 1)?)?;
                let lo = unhex(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a `Host` header names the loopback view: an IP address or
/// `localhost`, with or without a port.
fn host_is_local(host: &str) -> bool {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((addr, _)) => return addr.parse::<IpAddr>().is_ok(),
            None => return false,
        }
    } else {
        h.rsplit_once(':').map_or(h, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Parse a request head (everything before the blank line).
pub fn parse(head: &[u8], loopback: bool) -> Result<Request, Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| refuse(400, "the request is not text"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "the request line is not METHOD TARGET VERSION"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(refuse(505, "only HTTP/1.0 and HTTP/1.1 are spoken"));
    }
    let mut host = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, "a header line without a colon"));
        };
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(refuse(400, "a malformed header name"));
        }
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(refuse(400, "two Host headers"));
            }
            host = Some(value.trim());
        }
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(refuse(405, "the view is read-only: GET and HEAD only"))
        }
        _ => return Err(refuse(400, "not an HTTP method")),
    };
    if version == "HTTP/1.1" && host.is_none() {
        return Err(refuse(400, "HTTP/1.1 needs a Host header"));
    }
    if !target.starts_with('/') {
        return Err(refuse(400, "the target is not a path"));
    }
    if loopback && !host.is_none_or(host_is_local) {
        return Err(refuse(
            403,
            "the view answers requests for its own address only (Host)",
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(path).ok_or(refuse(400, "a malformed path"))?;
    let mut pairs = Vec::new();
    for item in query.split('&').filter(|s| !s.is_empty()).take(16) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        let k = percent_decode(k).ok_or(refuse(400, "a malformed query"))?;
        let v = percent_decode(v).ok_or(refuse(400, "a malformed query"))?;
        pairs.push((k, v));
    }
    Ok(Request {
        head_only,
        path,
        query: pairs,
    })
}

/// An answer being written to one connection, with its deadline.
pub struct Answer<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
    head_only: bool,
}

impl Answer<'_> {
    /// Write the status line and headers (`len`: Content-Length, if known).
    pub fn head(&mut self, status: u16, ctype: &str, len: Option<usize>) -> io::Result<()> {
        let mut h = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
             Content-Security-Policy: default-src 'self'; img-src 'self' data:\r\n\
             Connection: close\r\n",
            reason(status)
        );
        if status == 405 {
            h.push_str("Allow: GET, HEAD\r\n");
        }
        if let Some(n) = len {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        self.raw(h.as_bytes())
    }

    /// Write body bytes (nothing for `HEAD`), within the deadline.
    pub fn body(&mut self, b: &[u8]) -> io::Result<()> {
        if self.head_only {
            return Ok(());
        }
        self.raw(b)
    }

    /// Write all of `b` by the deadline: each `write` may wait at most
    /// [`WRITE_TIME`] (or what is left), so a client reading a byte now and
    /// then cannot hold the thread past the deadline.
    fn raw(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "answer took too long",
                ));
            }
            self.stream.set_write_timeout(Some(left.min(WRITE_TIME)))?;
            match self.stream.write(b) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A whole answer.
    pub fn whole(&mut self, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
        self.head(status, ctype, Some(body.len()))?;
        self.body(body)
    }

    /// Whether this is a `HEAD` request.
    pub fn head_only(&self) -> bool {
        self.head_only
    }

    /// Allow the answer to last until `deadline` (an event stream).
    pub fn extend(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

/// Read the request head: up to the blank line, within the limits. Bytes
/// after it (a body, pipelined requests) are never read.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Refusal> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = HEAD_TIME.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(refuse(408, "the request head took too long"));
        }
        let _ = stream.set_read_timeout(Some(left));
        // Read no further than the limit allows, so nothing past it is held.
        let room = (HEAD_LIMIT + 4 - buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(refuse(400, "the connection closed mid-request")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(refuse(408, "the request head took too long"))
            }
            Err(_) => return Err(refuse(400, "the connection failed")),
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i;
            if end > HEAD_LIMIT {
                return Err(refuse(431, "the request head is too large"));
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > HEAD_LIMIT {
            return Err(refuse(431, "the request head is too large"));
        }
    }
}

/// Serve `view` on `listener` until the process ends.
pub fn serve(listener: TcpListener, view: Arc<View>) {
    let busy = Arc::new(AtomicUsize::new(0));
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                log::debug!("web view: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::SeqCst);
            // Never wait on a client from the accepting thread.
            let _ = stream.set_nonblocking(true);
            let _ = stream.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let busy = busy.clone();
        let view = view.clone();
        let spawned = std::thread::Builder::new()
            .name("web-view".into())
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                handle(&mut stream, &view, loopback, peer);
                let _ = stream.shutdown(Shutdown::Both);
                busy.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::warn!("web view: cannot start a thread for a connection: {e}");
        }
    }
}

fn handle(stream: &mut TcpStream, view: &View, loopback: bool, peer: Option<SocketAddr>) {
    let _ = stream.set_write_timeout(Some(WRITE_TIME));
    let _ = stream.set_nodelay(true);
    let parsed = read_head(stream).and_then(|h| parse(&h, loopback));
    let head_only = parsed.as_ref().is_ok_and(|r| r.head_only);
    let mut answer = Answer {
        stream,
        deadline: Instant::now() + ANSWER_TIME,
        head_only,
    };
    let result = match parsed {
        Ok(req) => view.answer(&req, &mut answer),
        Err(r) => {
            log::debug!(
                "web view: refused a request from {}: {} {}",
                peer.map_or("?".into(), |p| p.to_string()),
                r.status,
                r.why
            );
            let body = format!("{} {}: {}\n", r.status, reason(r.status), r.why);
            answer.whole(r.status, "text/plain; charset=utf-8", body.as_bytes())
        }
    };
    if let Err(e) = result {
        log::debug!("web view: an answer was cut short: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_get_their_status() {
        let r = parse(
            b"GET /api/map?offset=4096&length=1%30&export=a+b HTTP/1.1\r\nHost: 127.0.0.1:8080",
            true,
        )
        .unwrap();
        assert_eq!(r.path, "/api/map");
        assert_eq!(r.param("offset"), Some("4096"));
        assert_eq!(r.param("length"), Some("10"));
        assert_eq!(r.param("export"), Some("a b"));
        assert!(!r.head_only);
        let status = |head: &[u8]| parse(head, true).map(|_| 200).unwrap_or_else(|r| r.status);
        assert_eq!(status(b"HEAD / HTTP/1.0"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: localhost"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: [::1]:80"), 200);
        assert_eq!(status(b"POST /api/stats HTTP/1.1\r\nHost: localhost"), 405);
        assert_eq!(status(b"DELETE / HTTP/1.1\r\nHost: localhost"), 405);
        assert_eq!(status(b"GET / HTTP/1.1"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: x"), 505);
        assert_eq!(status(b"\x16\x03\x01garbage"), 400);
        assert_eq!(status(b"GET  / HTTP/1.1"), 400);
        assert_eq!(status(b"GET http://x/ HTTP/1.1\r\nHost: x"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b"), 400);
        assert_eq!(status(b"GET /%zz HTTP/1.1\r\nHost: localhost"), 400);
        assert_eq!(status(b"GET /%ff HTTP/1.1\r\nHost: localhost"), 400);
        // DNS rebinding: a name that is not ours.
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: evil.example:8080"), 403);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: evil.example", false).is_ok());
    }
}
