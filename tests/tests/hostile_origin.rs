//! `disksynth http URL` against hostile origins (issue 14): one that drips ranges at a byte a
//! second, one that announces absurd sizes, one that ignores `Range`. The origin here is a small
//! HTTP/1.1 server on a loopback thread (the fault server of `disksynth_tests::httpd` answers
//! whole responses only; a drip and a fake size need their own). Clients are real: nbdsh
//! (python3-libnbd) and nbdinfo.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use disksynth_tests::httpd::{Fault, FaultServer};
use disksynth_tests::{random_bytes, require_tool, run, tempdir, Output, Server};

/// How the origin answers.
#[derive(Clone)]
enum Mode {
    /// Serve `data` with ranges; a range starting below `slow_below` is sent at one byte a
    /// second (headers at once, as a throttled or overloaded origin would).
    Drip { data: Arc<Vec<u8>>, slow_below: u64 },
    /// `HEAD` announces `Content-Length: SIZE` (and ranges); nothing else is served.
    HeadSize(String),
    /// `HEAD` is refused; `GET bytes=0-0` gets `206` with `Content-Range: bytes 0-0/SIZE`.
    RangeSize(String),
}

struct Shared {
    mode: Mode,
    stop: AtomicBool,
    slow_gets: AtomicUsize,
    fast_gets: AtomicUsize,
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

/// The origin: stopped on drop (every socket shut down, every thread joined).
struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Origin {
    fn start(mode: Mode) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        // Polled, so the accept loop sees the stop flag.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            mode,
            stop: AtomicBool::new(false),
            slow_gets: AtomicUsize::new(0),
            fast_gets: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let Ok(clone) = stream.try_clone() else {
                            continue;
                        };
                        let conn_sh = sh.clone();
                        let h = thread::spawn(move || serve(stream, &conn_sh));
                        sh.conns.lock().unwrap().push((clone, h));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Origin {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/disk.img", self.addr)
    }

    fn slow_gets(&self) -> usize {
        self.shared.slow_gets.load(Ordering::SeqCst)
    }

    fn fast_gets(&self) -> usize {
        self.shared.fast_gets.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        for (s, _) in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
    }
}

/// Answer requests on one connection until it closes (keep-alive).
fn serve(stream: TcpStream, sh: &Shared) {
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let method = line.split_whitespace().next().unwrap_or("").to_owned();
        let mut range = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                if n.eq_ignore_ascii_case("range") {
                    range = v.trim().strip_prefix("bytes=").and_then(|s| {
                        let (a, b) = s.split_once('-')?;
                        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
                    });
                }
            }
        }
        if respond(&mut w, sh, &method, range).is_err() {
            return;
        }
    }
}

fn respond(
    w: &mut TcpStream,
    sh: &Shared,
    method: &str,
    range: Option<(u64, u64)>,
) -> std::io::Result<()> {
    const COMMON: &str = "ETag: \"fixed\"\r\nAccept-Ranges: bytes\r\n";
    match (&sh.mode, method) {
        (Mode::HeadSize(size), "HEAD") => write!(
            w,
            "HTTP/1.1 200 OK\r\n{COMMON}Content-Length: {size}\r\n\r\n"
        ),
        (Mode::RangeSize(_), "HEAD") => {
            write!(
                w,
                "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
            )
        }
        (Mode::RangeSize(size), "GET") => write!(
            w,
            "HTTP/1.1 206 Partial Content\r\n{COMMON}Content-Range: bytes 0-0/{size}\r\n\
             Content-Length: 1\r\n\r\n\0"
        ),
        (Mode::Drip { data, .. }, "HEAD") => write!(
            w,
            "HTTP/1.1 200 OK\r\n{COMMON}Content-Length: {}\r\n\r\n",
            data.len()
        ),
        (Mode::Drip { data, slow_below }, "GET") => {
            let Some((first, last)) = range.filter(|&(a, b)| a <= b && b < data.len() as u64)
            else {
                return write!(
                    w,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n"
                );
            };
            let body = &data[first as usize..=last as usize];
            write!(
                w,
                "HTTP/1.1 206 Partial Content\r\n{COMMON}Content-Range: bytes {first}-{last}/{}\r\n\
                 Content-Length: {}\r\n\r\n",
                data.len(),
                body.len()
            )?;
            if first >= *slow_below {
                sh.fast_gets.fetch_add(1, Ordering::SeqCst);
                return w.write_all(body);
            }
            sh.slow_gets.fetch_add(1, Ordering::SeqCst);
            w.flush()?;
            for b in body {
                // One byte a second, waking every 100 ms to notice a stop.
                for _ in 0..10 {
                    if sh.stop.load(Ordering::SeqCst) {
                        return Err(std::io::ErrorKind::Interrupted.into());
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                w.write_all(std::slice::from_ref(b))?;
            }
            Ok(())
        }
        _ => write!(
            w,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
        ),
    }
}

/// nbdsh (`python3 -m nbd`): read `len` bytes at `off`, printed as hex.
fn pread_cmd(uri: &str, off: u64, len: u64) -> std::process::Command {
    let mut cmd = disksynth_tests::command(
        disksynth_tests::PYTHON,
        [
            "-m",
            "nbd",
            "-u",
            uri,
            "-c",
            &format!("import sys; sys.stdout.write(h.pread({len}, {off}).hex())"),
        ],
    );
    cmd.env("LC_ALL", "C");
    cmd
}

fn pread(uri: &str, off: u64, len: u64, timeout: Duration) -> Output {
    run(&mut pread_cmd(uri, off, len), timeout)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Poll `cond` every 50 ms for up to `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Clients killed (by pid) and reaped on drop, however the test ends.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const SIZE: usize = 4 << 20;
/// Ranges starting below this drip.
const SLOW: u64 = 1 << 20;

fn drip_origin() -> (Origin, Arc<Vec<u8>>) {
    let data = Arc::new(random_bytes(14, SIZE));
    let origin = Origin::start(Mode::Drip {
        data: data.clone(),
        slow_below: SLOW,
    });
    (origin, data)
}

#[test]
fn a_dripping_origin_hits_the_speed_limit_and_is_retried() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let (origin, _) = drip_origin();
    let server = Server::disksynth_unix(
        dir.path(),
        &[
            "http",
            &origin.url(),
            "--readahead",
            "0",
            "--speed-time",
            "2",
            "--retries",
            "1",
        ],
    );
    // 4 KiB at 1 byte/s would take over an hour; under 1 KiB/s for 2 s it is abandoned, tried
    // once more, then the read fails.
    let t = Instant::now();
    let out = pread(server.uri(), 4096, 4096, Duration::from_secs(40));
    let took = t.elapsed();
    assert!(
        !out.status.success(),
        "the read succeeded?\n{}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains("Input/output error"),
        "not EIO: {}",
        out.describe()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(origin.slow_gets(), 2, "one attempt and one retry");
    let log = server.stderr_text();
    assert!(
        log.contains("low-speed limit of 1024 bytes/s over 2 s") && log.contains("retry 1/1"),
        "no speed-limit retry in the log:\n{log}"
    );
}

#[test]
fn a_request_past_its_deadline_is_abandoned() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let (origin, _) = drip_origin();
    // No speed limit: only the deadline (2 s for a range of up to 4 MiB) can end the drip.
    let server = Server::disksynth_unix(
        dir.path(),
        &[
            "http",
            &origin.url(),
            "--readahead",
            "0",
            "--speed-limit",
            "0",
            "--request-timeout",
            "2",
            "--retries",
            "0",
        ],
    );
    let t = Instant::now();
    let out = pread(server.uri(), 0, 512, Duration::from_secs(40));
    let took = t.elapsed();
    assert!(
        !out.status.success(),
        "the read succeeded?\n{}",
        out.describe()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let log = server.stderr_text();
    assert!(log.contains("request deadline of 2 s"), "{log}");
}

#[test]
fn stalled_ranges_do_not_starve_a_fast_one() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let (origin, data) = drip_origin();
    // Defaults: 8 connections, speed limit 1 KiB/s over 15 s, read-ahead on.
    let server = Server::disksynth_unix(dir.path(), &["http", &origin.url()]);
    let uri = server.uri().to_owned();
    // Ten clients each stuck on a dripping range: more than the 8 slots.
    let mut stuck = Clients(Vec::new());
    for k in 0..10u64 {
        let child = pread_cmd(&uri, 4096 + k * 65536, 4096)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nbdsh");
        stuck.0.push(child);
    }
    assert!(
        wait_for(Duration::from_secs(20), || origin.slow_gets() >= 8),
        "the stalled reads did not reach the origin ({})",
        origin.slow_gets()
    );
    // A new client reads a region the origin serves at full speed: at once, not after the
    // stalled ones (which would take over an hour, or 15 s each to be abandoned).
    let off = 3 * SLOW + 12_345;
    let t = Instant::now();
    let out = pread(&uri, off, 65536, Duration::from_secs(30));
    let took = t.elapsed();
    assert!(out.status.success(), "fast read failed\n{}", out.describe());
    assert!(
        out.stdout_str() == hex(&data[off as usize..off as usize + 65536]),
        "WRONG BYTES"
    );
    eprintln!("the fast read took {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the fast read waited {took:?}"
    );
    assert!(origin.fast_gets() >= 1);
    // The two reads past the cap reached the origin too: stalled requests do not count.
    assert!(
        wait_for(Duration::from_secs(10), || origin.slow_gets() >= 10),
        "only {} of 10 stalled reads reached the origin",
        origin.slow_gets()
    );
    drop(stuck);
    drop(server);
}

/// Start `disksynth http URL`; it must refuse at once with one line naming the size.
fn assert_refused(origin: &Origin, size: &str, field: &str) {
    let dir = tempdir();
    let sock = dir.path().join("sock");
    let out = run(
        disksynth_tests::disksynth()
            .args(["http", &origin.url(), "--retries", "0", "-U"])
            .arg(&sock),
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "served {size} bytes\n{}",
        out.describe()
    );
    let err = out.stderr_str();
    let line = err
        .lines()
        .find(|l| l.contains("announces"))
        .unwrap_or_else(|| panic!("no clear error\n{}", out.describe()));
    assert!(
        line.contains(size) && line.contains(field) && line.contains("2^63-1"),
        "{line}"
    );
    assert!(
        out.stdout.is_empty(),
        "a URI was printed\n{}",
        out.describe()
    );
}

#[test]
fn absurd_sizes_are_refused_at_start_up() {
    require_tool!("nbdinfo");
    for size in [
        "18446744073709551615", // 2^64-1
        "9223372036854775808",  // 2^63
        "18446744073709551616", // 2^64: not even a u64
    ] {
        let origin = Origin::start(Mode::HeadSize(size.into()));
        assert_refused(&origin, size, "Content-Length");
        let origin = Origin::start(Mode::RangeSize(size.into()));
        assert_refused(&origin, size, "Content-Range");
    }
    // 2^63-1 is the largest size NBD and qemu take: served (only the size is asked).
    let max = "9223372036854775807";
    let origin = Origin::start(Mode::HeadSize(max.into()));
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["http", &origin.url()]);
    let info = run(
        &mut disksynth_tests::command("nbdinfo", ["--size", server.uri()]),
        Duration::from_secs(30),
    );
    assert!(
        info.status.success() && info.stdout_str().trim() == max,
        "{}",
        info.describe()
    );
}

#[test]
fn an_origin_answering_200_to_a_range_is_said_to_ignore_ranges() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let data = random_bytes(15, 1 << 20);
    let web = FaultServer::start(data.clone());
    let server = Server::disksynth_unix(dir.path(), &["http", &web.url(), "--readahead", "0"]);
    let uri = server.uri().to_owned();
    // The whole file with the same ETag: Range was ignored; the file was not replaced.
    web.fail_next(1, Fault::Status200Full);
    let out = pread(&uri, 4096, 4096, Duration::from_secs(30));
    assert!(!out.status.success(), "{}", out.describe());
    let log = server.stderr_text();
    assert!(
        log.contains("ignored the Range header") && log.contains("does not support range requests"),
        "{log}"
    );
    assert!(!log.contains("replaced"), "blamed on a replacement:\n{log}");
    // And later reads are served.
    let out = pread(&uri, 4096, 4096, Duration::from_secs(30));
    assert!(
        out.status.success() && out.stdout_str() == hex(&data[4096..8192]),
        "{}",
        out.describe()
    );
    // A 200 with a new ETag is a replacement.
    web.replace(data.clone());
    let out = pread(&uri, 0, 512, Duration::from_secs(30));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(server.stderr_text().contains("replaced"));
}
