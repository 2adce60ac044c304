//! A small fault-injecting HTTP/1.1 server for the HTTP source's tests.
//!
//! [`FaultServer`] serves one in-memory file at `/disk.img` (and a redirect to it at `/redirect`)
//! on `127.0.0.1:0`, with what a range-reading client relies on: `HEAD`, `GET` with a single
//! `bytes=` range (RFC 9110 §14.2) answered `206` with `Content-Range` (§14.4, §15.3.7), `ETag`
//! and `Last-Modified` validators, `If-Range` (§13.1.5) and keep-alive. The file can be replaced
//! while serving ([`FaultServer::replace`]: new bytes, new `ETag`, newer `Last-Modified`), and a
//! fault plan makes chosen `GET`s misbehave ([`Fault`]): wrong status, wrong `Content-Range`,
//! truncated bodies, dropped connections, stalls. Every request is logged, and the server
//! counts how many it was answering at once.
//!
//! Only the standard library is used. Dropping the server stops it: the accept loop and every
//! connection thread are woken (sockets shut down, stalls interrupted) and joined, so a test
//! never leaks threads or hangs on a stalled response. Client disconnects are never a panic.
//!
//! ```no_run
//! use disksynth_tests::httpd::{Fault, FaultServer};
//! let server = FaultServer::start(vec![7u8; 4096]);
//! server.fail_next(1, Fault::Status503);
//! // ... point a client at server.url() ...
//! assert!(server.requests() >= 1);
//! ```

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The path the file is served at.
pub const PATH: &str = "/disk.img";
/// A path answered with `302 Found` pointing at [`PATH`].
pub const REDIRECT_PATH: &str = "/redirect";

/// How a faulted `GET` misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally (useful in a plan to let some requests through).
    Ok,
    /// `200 OK` with the whole file, as a server ignoring `Range` would.
    Status200Full,
    /// `206` whose `Content-Range` (and body) is one byte further than asked.
    WrongContentRange,
    /// `206` with the right headers but only half the body, then the connection is closed.
    TruncatedBody,
    /// The request is read, then the connection is closed without any response.
    ResetConnection,
    /// `503 Service Unavailable` (keep-alive).
    Status503,
    /// `429 Too Many Requests` with this `Retry-After` value (RFC 9110 §10.2.3), if any.
    Status429 {
        /// The header value, e.g. `"1"` or an HTTP-date.
        retry_after: Option<String>,
    },
    /// Wait this long before answering normally (interrupted when the server stops).
    Stall(Duration),
    /// Answer with this status and a short text body.
    Status(u16),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target, e.g. `/disk.img`.
    pub path: String,
    /// Header fields in arrival order (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The fault applied, when the request was faulted.
    pub fault: Option<Fault>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The served file and how the server behaves.
struct State {
    data: Arc<Vec<u8>>,
    version: u64,
    etag: bool,
    last_modified: bool,
    head: bool,
    accept_ranges: bool,
    honour_if_range: bool,
    auth: Option<String>,
    delay: Duration,
    next: VecDeque<(Fault, usize)>,
    every: Option<(usize, Fault)>,
    gets: usize,
}

impl State {
    fn etag_value(&self) -> String {
        format!("\"v{}-{}\"", self.version, self.data.len())
    }

    fn last_modified_value(&self) -> String {
        // 2024-01-01T00:00:00Z plus one hour per version: replacing always moves it forward.
        http_date(1_704_067_200 + self.version * 3600)
    }

    /// The fault for the next `GET`, advancing the plan.
    fn take_fault(&mut self) -> Option<Fault> {
        self.gets += 1;
        if let Some((fault, left)) = self.next.front_mut() {
            let fault = fault.clone();
            *left -= 1;
            if *left == 0 {
                self.next.pop_front();
            }
            return Some(fault);
        }
        match &self.every {
            Some((k, fault)) if self.gets.is_multiple_of(*k) => Some(fault.clone()),
            _ => None,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    /// Woken on stop, so stalls end at once.
    wake: Condvar,
    log: Mutex<Vec<Request>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleep up to `d`, returning early (false) when the server stops.
    fn pause(&self, d: Duration) -> bool {
        let st = self.state();
        let (_st, _) = self
            .wake
            .wait_timeout_while(st, d, |_| !self.stop.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        !self.stop.load(Ordering::SeqCst)
    }
}

/// A threaded HTTP/1.1 server of one in-memory file, with a fault plan. Stops on drop.
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FaultServer {
    /// Serve `data` at [`PATH`] on a fresh loopback port.
    pub fn start(data: Vec<u8>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                data: Arc::new(data),
                version: 1,
                etag: true,
                last_modified: true,
                head: true,
                accept_ranges: true,
                honour_if_range: true,
                auth: None,
                delay: Duration::ZERO,
                next: VecDeque::new(),
                every: None,
                gets: 0,
            }),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name("httpd-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawning the accept thread");
        FaultServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT/disk.img`.
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash), for other paths (404s, the redirect).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the file, as if it were rewritten on the origin: new bytes, a new `ETag` and a
    /// later `Last-Modified`.
    pub fn replace(&self, data: Vec<u8>) {
        let mut st = self.shared.state();
        st.data = Arc::new(data);
        st.version += 1;
    }

    /// The current `ETag` value (with its quotes).
    pub fn etag(&self) -> String {
        self.shared.state().etag_value()
    }

    /// Send `ETag` and/or `Last-Modified` (both by default).
    pub fn set_validators(&self, etag: bool, last_modified: bool) {
        let mut st = self.shared.state();
        st.etag = etag;
        st.last_modified = last_modified;
    }

    /// Answer `HEAD` (default) or refuse it with `405 Method Not Allowed`.
    pub fn set_head(&self, allowed: bool) {
        self.shared.state().head = allowed;
    }

    /// Send `Accept-Ranges: bytes` (default) or not.
    pub fn set_accept_ranges(&self, on: bool) {
        self.shared.state().accept_ranges = on;
    }

    /// Evaluate `If-Range` (default), or ignore it as some servers do (ranges are then served
    /// from whatever the file is now).
    pub fn set_honour_if_range(&self, on: bool) {
        self.shared.state().honour_if_range = on;
    }

    /// Require this exact `Authorization` value (`401` otherwise), or nothing.
    pub fn require_auth(&self, value: Option<&str>) {
        self.shared.state().auth = value.map(str::to_owned);
    }

    /// Wait this long before every response (to make requests overlap).
    pub fn set_delay(&self, d: Duration) {
        self.shared.state().delay = d;
    }

    /// Apply `fault` to the next `n` `GET`s (after any faults queued before).
    pub fn fail_next(&self, n: usize, fault: Fault) {
        if n > 0 {
            self.shared.state().next.push_back((fault, n));
        }
    }

    /// Apply `fault` to every `k`th `GET` (counted from the server's start) when no queued fault
    /// applies; `None` clears it.
    pub fn fail_every(&self, rule: Option<(usize, Fault)>) {
        self.shared.state().every = rule.filter(|(k, _)| *k > 0);
    }

    /// Drop every queued and periodic fault.
    pub fn clear_faults(&self) {
        let mut st = self.shared.state();
        st.next.clear();
        st.every = None;
    }

    /// Every request received so far.
    pub fn log(&self) -> Vec<Request> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests were received so far.
    pub fn requests(&self) -> usize {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// How many `GET`s were received so far.
    pub fn gets(&self) -> usize {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    }

    /// The most requests ever being answered at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forget the log and the concurrency peak.
    pub fn reset_counters(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders the store before any stall's predicate check.
            let _st = self.shared.state();
            self.shared.wake.notify_all();
        }
        // Wake the blocking accept() with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns =
            std::mem::take(&mut *self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, _) in &conns {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let sh = shared.clone();
        let Ok(handle) = thread::Builder::new()
            .name("httpd-conn".into())
            .spawn(move || serve_connection(stream, &sh))
        else {
            continue;
        };
        let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished connections so a long test does not accumulate handles.
        let mut i = 0;
        while i < conns.len() {
            if conns[i].1.is_finished() {
                let (_, h) = conns.swap_remove(i);
                let _ = h.join();
            } else {
                i += 1;
            }
        }
        conns.push((clone, handle));
    }
}

/// What one parsed request head asks for.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
    body_len: usize,
}

/// Read one request head; `None` on EOF, errors, or a stop.
fn read_head(reader: &mut BufReader<TcpStream>, shared: &Shared) -> Option<Head> {
    let mut line = String::new();
    // Skip empty lines between requests (RFC 9112 §2.2 allows a leading CRLF).
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) if line.trim().is_empty() => continue,
            Ok(_) => break,
            Err(e) if is_timeout(&e) && !shared.stop.load(Ordering::SeqCst) => continue,
            Err(_) => return None,
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let version = parts.next().unwrap_or("HTTP/1.0").to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if is_timeout(&e) && !shared.stop.load(Ordering::SeqCst) => continue,
            Err(_) => return None,
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let conn = get("connection").unwrap_or("").to_ascii_lowercase();
    let close = conn.contains("close") || (version == "HTTP/1.0" && !conn.contains("keep-alive"));
    let body_len = get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Head {
        method,
        path,
        headers,
        close,
        body_len,
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    // A short read timeout lets an idle keep-alive connection notice the stop flag.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while !shared.stop.load(Ordering::SeqCst) {
        let Some(head) = read_head(&mut reader, shared) else {
            return;
        };
        if head.body_len > 0 {
            let mut sink = io::sink();
            if io::copy(&mut (&mut reader).take(head.body_len as u64), &mut sink).is_err() {
                return;
            }
        }
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let keep = respond(&mut writer, &head, shared).unwrap_or(false);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep || head.close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// A parsed `Range: bytes=...` (one range only; RFC 9110 §14.1.2).
enum Range {
    /// `first-last` or `first-` (last clamped by the caller).
    From(u64, Option<u64>),
    /// `-suffix`.
    Suffix(u64),
}

fn parse_range(v: &str) -> Option<Range> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(Range::Suffix(b.parse().ok()?));
    }
    let first = a.parse().ok()?;
    let last = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    Some(Range::From(first, last))
}

/// Answer one request; `Ok(false)` closes the connection.
fn respond(w: &mut TcpStream, head: &Head, shared: &Shared) -> io::Result<bool> {
    let get = |name: &str| {
        head.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let is_get = head.method == "GET";
    let (data, etag, last_modified, delay, fault, st_head, accept_ranges, honour, auth) = {
        let mut st = shared.state();
        let fault = if is_get && head.path == PATH {
            st.take_fault()
        } else {
            None
        };
        (
            st.data.clone(),
            st.etag.then(|| st.etag_value()),
            st.last_modified.then(|| st.last_modified_value()),
            st.delay,
            fault,
            st.head,
            st.accept_ranges,
            st.honour_if_range,
            st.auth.clone(),
        )
    };
    shared
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Request {
            method: head.method.clone(),
            path: head.path.clone(),
            headers: head.headers.clone(),
            fault: fault.clone(),
        });
    if !delay.is_zero() && !shared.pause(delay) {
        return Ok(false);
    }

    let mut common = format!("Date: {}\r\n", http_date(unix_now()));
    if let Some(e) = &etag {
        common += &format!("ETag: {e}\r\n");
    }
    if let Some(lm) = &last_modified {
        common += &format!("Last-Modified: {lm}\r\n");
    }
    if accept_ranges {
        common += "Accept-Ranges: bytes\r\n";
    }

    if head.path == REDIRECT_PATH {
        let loc = format!("Location: {PATH}\r\n");
        return simple(w, 302, "Found", &loc, head.method == "HEAD");
    }
    if head.path != PATH {
        return simple(w, 404, "Not Found", "", head.method == "HEAD");
    }
    if let Some(want) = &auth {
        if get("authorization").as_deref() != Some(want.as_str()) {
            let extra = "WWW-Authenticate: Basic realm=\"disk\"\r\n";
            return simple(w, 401, "Unauthorized", extra, head.method == "HEAD");
        }
    }
    let len = data.len() as u64;
    match head.method.as_str() {
        "HEAD" if st_head => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\n{common}Content-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )?;
            w.flush()?;
            return Ok(true);
        }
        "HEAD" => return simple(w, 405, "Method Not Allowed", "Allow: GET\r\n", true),
        "GET" => {}
        _ => return simple(w, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", false),
    }

    match fault.unwrap_or(Fault::Ok) {
        Fault::Ok => {}
        Fault::Status200Full => return full(w, &common, &data),
        Fault::ResetConnection => return Ok(false),
        Fault::Status503 => return simple(w, 503, "Service Unavailable", "", false),
        Fault::Status429 { retry_after } => {
            let extra = retry_after
                .map(|v| format!("Retry-After: {v}\r\n"))
                .unwrap_or_default();
            return simple(w, 429, "Too Many Requests", &extra, false);
        }
        Fault::Status(code) => return simple(w, code, "Fault", "", false),
        Fault::Stall(d) => {
            if !shared.pause(d) {
                return Ok(false);
            }
        }
        f @ (Fault::WrongContentRange | Fault::TruncatedBody) => {
            let Some((first, last)) = get("range")
                .and_then(|r| parse_range(&r))
                .and_then(|r| resolve(r, len))
            else {
                return full(w, &common, &data);
            };
            if f == Fault::WrongContentRange {
                // The bytes one further (or one back at the end) than asked; a one-byte file
                // has no other range, so its total is misstated instead.
                return if last + 1 < len {
                    partial(w, &common, &data, (first + 1, last + 1), len, false)
                } else if first > 0 {
                    partial(w, &common, &data, (first - 1, last - 1), len, false)
                } else {
                    partial(w, &common, &data, (first, last), len + 1, false)
                };
            }
            return partial(w, &common, &data, (first, last), len, true);
        }
    }

    // If-Range (RFC 9110 §13.1.5): serve the range only when the validator still matches,
    // otherwise the whole current representation with 200.
    let range = get("range");
    let if_range_ok = match get("if-range") {
        None => true,
        Some(_) if !honour => true,
        Some(v) if v.starts_with('"') => etag.as_deref() == Some(v.as_str()),
        Some(v) => last_modified.as_deref() == Some(v.as_str()),
    };
    let Some(range) = range.filter(|_| if_range_ok) else {
        return full(w, &common, &data);
    };
    let Some(parsed) = parse_range(&range) else {
        // Unparseable ranges are ignored (RFC 9110 §14.2).
        return full(w, &common, &data);
    };
    match resolve(parsed, len) {
        Some((first, last)) => partial(w, &common, &data, (first, last), len, false),
        None => {
            let extra = format!("Content-Range: bytes */{len}\r\n");
            simple(w, 416, "Range Not Satisfiable", &extra, false)
        }
    }
}

/// Clamp a range to a file of `len` bytes; `None` when unsatisfiable (RFC 9110 §14.1.2).
fn resolve(r: Range, len: u64) -> Option<(u64, u64)> {
    match r {
        Range::From(first, last) if first < len => {
            let last = last.unwrap_or(len - 1).min(len - 1);
            (last >= first).then_some((first, last))
        }
        Range::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len - 1)),
        _ => None,
    }
}

fn simple(
    w: &mut TcpStream,
    code: u16,
    reason: &str,
    extra: &str,
    head_only: bool,
) -> io::Result<bool> {
    let body = format!("{code} {reason}\n");
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        w.write_all(body.as_bytes())?;
    }
    w.flush()?;
    Ok(true)
}

fn full(w: &mut TcpStream, common: &str, data: &[u8]) -> io::Result<bool> {
    write!(
        w,
        "HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        data.len()
    )?;
    w.write_all(data)?;
    w.flush()?;
    Ok(true)
}

/// A 206 of bytes `first..=last` (in range), claiming a complete length of `total`.
fn partial(
    w: &mut TcpStream,
    common: &str,
    data: &[u8],
    (first, last): (u64, u64),
    total: u64,
    truncate: bool,
) -> io::Result<bool> {
    let body = &data[first as usize..=last as usize];
    write!(
        w,
        "HTTP/1.1 206 Partial Content\r\n{common}Content-Range: bytes {first}-{last}/{total}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        body.len()
    )?;
    if truncate {
        w.write_all(&body[..body.len() / 2])?;
        w.flush()?;
        return Ok(false);
    }
    w.write_all(body)?;
    w.flush()?;
    Ok(true)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = crate::civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_matches_rfc_example() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(1_704_067_200), "Mon, 01 Jan 2024 00:00:00 GMT");
    }

    #[test]
    fn serves_ranges_and_stops_quickly() {
        let server = FaultServer::start((0..100u8).collect());
        let mut s = TcpStream::connect(server.addr()).unwrap();
        write!(
            s,
            "GET {PATH} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(&[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]) {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "server closed early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 206"), "{text}");
        assert!(text.contains("Content-Range: bytes 10-19/100"), "{text}");
        server.fail_next(1, Fault::Stall(Duration::from_secs(60)));
        write!(s, "GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = std::time::Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
