//! The HTTP device against an origin whose every response comes from the fuzzer: status lines,
//! `Content-Length`, `Accept-Ranges`, `Content-Range`, `ETag`, `Last-Modified`, `Retry-After`,
//! bodies. The device's own header parsers are private to `sources::http`, so this goes through
//! its public entry points, `HttpDev::open` (HEAD, then the `bytes=0-0` probe) and `read_at`
//! (validated ranged GETs), over a loopback origin.
//!
//! Input (see [`Script`]): a first line of reads and settings, then the raw responses the origin
//! sends, one per request in the order the requests come, separated by [`SEPARATOR`]:
//!
//! ```text
//! 0+512 4096+10 ra retry
//! HTTP/1.1 200 OK\r\nContent-Length: 8192\r\nAccept-Ranges: bytes\r\n\r\n
//! =====
//! HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-511/8192\r\n...
//! ```
//!
//! - `OFFSET+LEN`: a read (at most [`MAX_READS`], `LEN` at most [`MAX_READ`]);
//! - `ra`: read-ahead on (64 KiB windows); `retry`: one retry per request (1 ms backoff).
//!
//! Each response is written whole and the connection closed, so no request waits for a
//! timeout; a request beyond the last response finds its connection closed. `Location` fields
//! are rewritten to a path on the same origin: a redirect must never leave the machine.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sources::http::{HttpDev, HttpOptions};
use synth::BlockDev;

/// Between two responses.
pub const SEPARATOR: &[u8] = b"\n=====\n";
/// Reads per input.
pub const MAX_READS: usize = 8;
/// Bytes per read.
pub const MAX_READ: u64 = 1 << 20;

/// A decoded input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Script {
    /// `(offset, len)` of each read.
    pub reads: Vec<(u64, u64)>,
    /// Read-ahead on.
    pub readahead: bool,
    /// One retry per request.
    pub retry: bool,
    /// The origin's responses, in order.
    pub responses: Vec<Vec<u8>>,
}

impl Script {
    /// Decode an input; anything unrecognised in the first line is ignored.
    pub fn parse(input: &[u8]) -> Script {
        let (first, rest) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (&input[..i], &input[i + 1..]),
            None => (input, &[][..]),
        };
        let mut s = Script::default();
        for tok in String::from_utf8_lossy(first).split_ascii_whitespace() {
            match tok {
                "ra" => s.readahead = true,
                "retry" => s.retry = true,
                _ => {
                    if let Some((o, l)) = tok.split_once('+') {
                        if let (Ok(o), Ok(l)) = (o.parse::<u64>(), l.parse::<u64>()) {
                            if s.reads.len() < MAX_READS {
                                s.reads.push((o, l.min(MAX_READ)));
                            }
                        }
                    }
                }
            }
        }
        if !rest.is_empty() {
            s.responses = split(rest, SEPARATOR);
        }
        s
    }

    /// Encode (the inverse of [`Script::parse`] for the scripts it returns).
    pub fn to_input(&self) -> Vec<u8> {
        let mut first: Vec<String> = self.reads.iter().map(|(o, l)| format!("{o}+{l}")).collect();
        if self.readahead {
            first.push("ra".into());
        }
        if self.retry {
            first.push("retry".into());
        }
        let mut v = first.join(" ").into_bytes();
        v.push(b'\n');
        for (i, r) in self.responses.iter().enumerate() {
            if i > 0 {
                v.extend_from_slice(SEPARATOR);
            }
            v.extend_from_slice(r);
        }
        v
    }
}

fn split(mut s: &[u8], sep: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(i) = s.windows(sep.len()).position(|w| w == sep) {
        out.push(s[..i].to_vec());
        s = &s[i + sep.len()..];
    }
    out.push(s.to_vec());
    out
}

/// `Location` fields point back at this origin (relative path), so redirects are followed
/// (and fuzzed) without reaching any other host.
fn contain_redirects(resp: &[u8]) -> Vec<u8> {
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |i| i + 4);
    let (head, body) = resp.split_at(head_end);
    let mut out = Vec::with_capacity(resp.len());
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let is_location = line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"location:");
        if is_location {
            out.extend_from_slice(b"Location: /moved");
            if line.ends_with(b"\r") {
                out.push(b'\r');
            }
        } else {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

/// Read one request head (HEAD and GET have no body); false at EOF, timeout or garbage.
fn read_request(conn: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 << 10 {
            return false;
        }
    }
    true
}

/// The loopback origin: answers requests with the scripted responses, in order.
struct Origin {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Origin {
    fn start(responses: Vec<Vec<u8>>) -> std::io::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut next = responses.into_iter();
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                    if !read_request(&mut conn) {
                        continue;
                    }
                    if let Some(resp) = next.next() {
                        let _ = conn.write_all(&contain_redirects(&resp));
                    }
                    let _ = conn.shutdown(Shutdown::Both);
                }
            })
        };
        Ok(Origin {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The device's options for a script: short timeouts, no waiting between retries.
pub fn options(s: &Script) -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        retries: u32::from(s.retry),
        retry_base: Duration::from_millis(1),
        retry_cap: Duration::from_millis(1),
        retry_after_cap: Duration::from_millis(1),
        max_in_flight: 2,
        readahead: if s.readahead { 64 << 10 } else { 0 },
        ..HttpOptions::default()
    }
}

/// Open the device against the scripted origin and do the reads. Errors are expected;
/// panics are bugs.
pub fn run(input: &[u8]) {
    let _ = session(input);
}

/// [`run`], saying what happened: the open's outcome, then each read's.
pub fn session(input: &[u8]) -> Vec<String> {
    let s = Script::parse(input);
    let opts = options(&s);
    let Ok(origin) = Origin::start(s.responses) else {
        return vec!["no loopback origin".into()];
    };
    let url = format!("http://127.0.0.1:{}/disk.img", origin.port);
    let mut out = Vec::new();
    match HttpDev::open(&url, &opts) {
        Err(e) => out.push(format!("open: {e}")),
        Ok(dev) => {
            let size = dev.size();
            out.push(format!("open: {size} bytes"));
            for &(offset, len) in &s.reads {
                // In range, like the NBD server's requests (it checks them first).
                let offset = if size == 0 { 0 } else { offset % size };
                let len = len.min(size - offset);
                let mut buf = vec![0u8; len as usize];
                out.push(match dev.read_at(&mut buf, offset) {
                    Ok(()) => format!("read {offset}+{len}: ok"),
                    Err(e) => format!("read {offset}+{len}: {e}"),
                });
            }
            let _ = dev.cache(0, size.min(4096));
            out.push(format!("{:?}", dev.stats()));
        }
    }
    drop(origin);
    out
}
