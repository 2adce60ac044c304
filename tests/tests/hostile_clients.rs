//! Clients that attack the server's resources rather than its parsing: a handshake dribbled out
//! option by option, a thousand idle connections, more clients than the server may take, too
//! few descriptors, a request larger than a connection's buffer. Each attack gets a raw client
//! here (a few lines of proto.md over a Unix socket) and a real client (nbdinfo, qemu-img) checks
//! that everybody else is still served.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use disksynth_tests::{disksynth, require_tool, run, tempdir, Output, Server};

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_POLICY: u32 = (1 << 31) | 2;
const INFO_BLOCK_SIZE: u16 = 3;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const EOVERFLOW: u32 = 75;

/// What a server said to `NBD_OPT_GO`.
#[derive(Debug)]
enum Go {
    /// In transmission, with the block sizes it advertised (min, preferred, max).
    Served { block: Option<(u32, u32, u32)> },
    /// An error reply: its type and message.
    Refused { kind: u32, message: String },
}

/// A raw NBD client: just enough of proto.md to misbehave on purpose.
struct Raw {
    s: UnixStream,
}

impl Raw {
    fn connect(sock: &Path) -> io::Result<Raw> {
        let s = UnixStream::connect(sock)?;
        // Every read of these tests is bounded: a server that hangs fails the test.
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Raw { s })
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Read the greeting, send the client flags (fixed newstyle, no zeroes).
    fn greet(&mut self) -> io::Result<()> {
        let mut g = [0u8; 18];
        self.s.read_exact(&mut g)?;
        assert_eq!(
            &g[8..16],
            &IHAVEOPT.to_be_bytes(),
            "not a newstyle greeting"
        );
        self.s.write_all(&3u32.to_be_bytes())
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m)
    }

    /// One option reply: (option, type, payload).
    fn option_reply(&mut self) -> io::Result<(u32, u32, Vec<u8>)> {
        let magic = self.u64()?;
        assert_eq!(magic, OPT_REPLY_MAGIC, "bad option reply magic");
        let opt = self.u32()?;
        let kind = self.u32()?;
        let len = self.u32()?;
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data)?;
        Ok((opt, kind, data))
    }

    /// `NBD_OPT_GO` for the default export, asking for block sizes; simple replies.
    fn go(&mut self) -> io::Result<Go> {
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(OPT_GO, &data)?;
        let mut block = None;
        loop {
            let (_, kind, data) = self.option_reply()?;
            match kind {
                REP_ACK => return Ok(Go::Served { block }),
                REP_INFO if data.len() == 14 && data[..2] == INFO_BLOCK_SIZE.to_be_bytes() => {
                    let at = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
                    block = Some((at(2), at(6), at(10)));
                }
                REP_INFO => {}
                k if k & (1 << 31) != 0 => {
                    return Ok(Go::Refused {
                        kind: k,
                        message: String::from_utf8_lossy(&data).into_owned(),
                    })
                }
                k => panic!("unexpected option reply type {k:#x}"),
            }
        }
    }

    /// Greeting and GO: a client in transmission, or why not.
    fn open(sock: &Path) -> io::Result<(Raw, Go)> {
        let mut c = Raw::connect(sock)?;
        c.greet()?;
        let go = c.go()?;
        Ok((c, go))
    }

    fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).expect("sending a request");
    }

    /// A simple reply header: (error, cookie).
    fn simple_reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32().expect("reply"), SIMPLE_REPLY_MAGIC);
        (self.u32().expect("error"), self.u64().expect("cookie"))
    }

    /// Whether the server closes the connection within `t` (nothing else is expected to come).
    fn closed_within(&mut self, t: Duration) -> bool {
        let _ = self.s.set_read_timeout(Some(t));
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }
}

/// `disksynth memory 64M -U DIR/sock ARGS...` with info logging.
fn memory_server(dir: &Path, args: &[&str]) -> Server {
    let mut a = vec!["memory", "64M", "-v"];
    a.extend_from_slice(args);
    Server::disksynth_unix(dir, &a)
}

fn sock(dir: &Path) -> PathBuf {
    dir.join("sock")
}

/// A field of /proc/PID/status, in its unit (kB for memory).
fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    Duration::from_millis((f[11] + f[12]) * 10)
}

fn nbdinfo_size(uri: &str) -> Output {
    run(
        Command::new("nbdinfo").args(["--size", uri]),
        Duration::from_secs(30),
    )
}

/// nbdinfo, retried for a few seconds: the server learns of clients leaving asynchronously.
fn served_soon(uri: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = nbdinfo_size(uri);
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Raise this test process's soft descriptor limit to its hard limit; returns the new limit.
fn raise_own_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[test]
fn a_dribbled_handshake_is_cut_at_the_total_deadline() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = memory_server(dir.path(), &["--handshake-limit", "2"]);
    let t0 = Instant::now();
    let mut c = Raw::connect(&sock(dir.path())).unwrap();
    c.greet().unwrap();
    // One unknown option every 0.5 s, each answered: every read is quick, the whole is not.
    let mut answered = 0;
    let cut = loop {
        thread::sleep(Duration::from_millis(500));
        let sent = c.send_option(999, b"");
        if sent.is_err() || c.option_reply().is_err() {
            break t0.elapsed();
        }
        answered += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "still negotiating after {answered} options and {:?}",
            t0.elapsed()
        );
    };
    assert!(answered >= 1, "cut before the first option");
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(8),
        "cut after {cut:?}, expected about 2 s"
    );
    assert!(
        server.wait_stderr_contains("--handshake-limit", Duration::from_secs(5)),
        "no log line names the limit\n{}",
        server.stderr_text()
    );

    // A client that finishes in time is served, and may then stay idle past the limit.
    let (mut c, go) = Raw::open(&sock(dir.path())).unwrap();
    assert!(matches!(go, Go::Served { .. }), "{go:?}");
    thread::sleep(Duration::from_secs(3));
    c.request(CMD_READ, 1, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 1));
    let out = nbdinfo_size(server.uri());
    assert!(out.status.success(), "{}", out.describe());
}

#[test]
fn a_thousand_idle_clients_cost_one_small_thread_each() {
    require_tool!("nbdinfo");
    const IDLE: usize = 1000;
    let limit = raise_own_fd_limit();
    if limit < 2 * IDLE as u64 + 200 {
        eprintln!("SKIPPED: the descriptor limit ({limit}) is too low for {IDLE} clients");
        return;
    }
    let dir = tempdir();
    let server = memory_server(dir.path(), &[]);
    let pid = server.pid();
    let mut clients = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let (mut c, go) = Raw::open(&sock(dir.path())).expect("connecting an idle client");
        assert!(matches!(go, Go::Served { .. }), "client {i}: {go:?}");
        // A tenth were busy once: their workers must leave once they go quiet.
        if i % 10 == 0 {
            c.request(CMD_READ, i as u64, 0, 65536, &[]);
            assert_eq!(c.simple_reply(), (0, i as u64));
            let mut data = vec![0u8; 65536];
            c.s.read_exact(&mut data).unwrap();
        }
        clients.push(c);
    }

    // A new client is served at once.
    let t0 = Instant::now();
    let out = nbdinfo_size(server.uri());
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_str().trim(), "67108864");
    assert!(
        took < Duration::from_secs(10),
        "a new client waited {took:?}"
    );

    // One thread per idle client plus a few (main, signals), once the workers have left.
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads = loop {
        let n = proc_status(pid, "Threads");
        if n <= IDLE as u64 + 8 || Instant::now() > deadline {
            break n;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        threads <= IDLE as u64 + 8,
        "{threads} threads for {IDLE} idle clients"
    );
    let rss_kib = proc_status(pid, "VmRSS");
    assert!(
        rss_kib < 200 * 1024,
        "{} MiB resident for {IDLE} idle clients",
        rss_kib / 1024
    );
    eprintln!(
        "{IDLE} idle clients: {threads} threads, {} MiB resident, new client served in {took:?}",
        rss_kib / 1024
    );
    // Every idle client is still served.
    for (i, c) in clients.iter_mut().enumerate().step_by(97) {
        c.request(CMD_READ, 7, 4096, 512, &[]);
        assert_eq!(c.simple_reply(), (0, 7), "client {i}");
        let mut data = [0u8; 512];
        c.s.read_exact(&mut data).unwrap();
    }
}

#[test]
fn past_max_connections_clients_are_refused_with_the_reason() {
    require_tool!("nbdinfo", "qemu-img");
    let dir = tempdir();
    let server = memory_server(dir.path(), &["--max-connections", "5"]);
    let uri = server.uri().to_string();
    let held: Vec<Raw> = (0..5)
        .map(|i| {
            let (c, go) = Raw::open(&sock(dir.path())).unwrap();
            assert!(matches!(go, Go::Served { .. }), "client {i}: {go:?}");
            c
        })
        .collect();

    // The sixth, raw: greeted, then NBD_REP_ERR_POLICY with the reason.
    let (_, go) = Raw::open(&sock(dir.path())).unwrap();
    let Go::Refused { kind, message } = go else {
        panic!("the sixth client was served: {go:?}");
    };
    assert_eq!(kind, REP_ERR_POLICY);
    assert!(message.contains("--max-connections"), "{message}");
    // qemu prints the server's message; libnbd 1.14 names the policy (the text is in its debug log).
    let out = run(
        Command::new("qemu-img").args(["info", &uri]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("server busy") && out.stderr_str().contains("--max-connections"),
        "{}",
        out.describe()
    );
    let out = nbdinfo_size(&uri);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stderr_str().contains("policy"), "{}", out.describe());
    assert!(
        server.wait_stderr_contains("refusing new clients", Duration::from_secs(5)),
        "{}",
        server.stderr_text()
    );

    // Once the five leave, clients are served again.
    drop(held);
    let out = served_soon(&uri);
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        server.wait_stderr_contains("accepting clients again", Duration::from_secs(5)),
        "{}",
        server.stderr_text()
    );
}

/// `prlimit --nofile=64:64 disksynth memory 64M -U DIR/sock -v ARGS...`
fn server_with_64_descriptors(dir: &Path, args: &[&str]) -> Server {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:64")
        .arg(disksynth_tests::disksynth_bin())
        .args(["memory", "64M", "-v", "-U"])
        .arg(sock(dir))
        .args(args);
    Server::spawn(cmd)
}

#[test]
fn with_64_descriptors_the_excess_is_refused_and_nothing_spins() {
    require_tool!("nbdinfo", "prlimit");
    let dir = tempdir();
    let server = server_with_64_descriptors(dir.path(), &[]);
    let pid = server.pid();
    // The default cap fits the limit: some clients are served, the rest refused, none hang.
    let mut served = Vec::new();
    let mut refused = 0;
    for i in 0..12 {
        let (c, go) = Raw::open(&sock(dir.path())).unwrap_or_else(|e| panic!("client {i}: {e}"));
        match go {
            Go::Served { .. } => served.push(c),
            Go::Refused { kind, message } => {
                assert_eq!(kind, REP_ERR_POLICY, "{message}");
                refused += 1;
            }
        }
    }
    assert!(
        !served.is_empty() && refused > 0,
        "{} served, {refused} refused",
        served.len()
    );
    let cpu0 = cpu_time(pid);
    thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(pid) - cpu0;
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU while idle"
    );
    // Some leave: a new client is served.
    served.truncate(served.len() - 1);
    let out = served_soon(server.uri());
    assert!(out.status.success(), "{}", out.describe());
    assert!(!server.stderr_text().contains("Too many open files"));
}

#[test]
fn out_of_descriptors_connections_are_shed_without_spinning() {
    require_tool!("nbdinfo", "prlimit");
    let dir = tempdir();
    // A cap the limit cannot hold: accept itself runs out of descriptors.
    let server = server_with_64_descriptors(dir.path(), &["--max-connections", "1000"]);
    assert!(
        server.wait_stderr_contains("needs about", Duration::from_secs(5)),
        "no warning about a cap the limit cannot hold\n{}",
        server.stderr_text()
    );
    let pid = server.pid();
    let mut held = Vec::new();
    let mut shed = 0;
    for _ in 0..100 {
        match Raw::open(&sock(dir.path())) {
            Ok((c, Go::Served { .. })) => held.push(c),
            Ok((_, go)) => panic!("{go:?}"),
            // Closed unserved (before or after the greeting).
            Err(_) => shed += 1,
        }
    }
    assert!(
        shed > 0 && held.len() > 10,
        "{} held, {shed} shed",
        held.len()
    );
    let cpu0 = cpu_time(pid);
    thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(pid) - cpu0;
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU while idle"
    );
    let log = server.stderr_text();
    assert_eq!(
        log.matches("closing new connections until descriptors free up")
            .count(),
        1,
        "the shortage is logged once per burst\n{log}"
    );
    held.truncate(held.len() - 5);
    let out = served_soon(server.uri());
    assert!(out.status.success(), "{}", out.describe());
}

#[test]
fn a_request_larger_than_the_connection_memory_is_refused_and_the_connection_lives() {
    let dir = tempdir();
    let _server = memory_server(dir.path(), &["--connection-memory", "1M"]);
    let (mut c, go) = Raw::open(&sock(dir.path())).unwrap();
    let Go::Served { block } = go else {
        panic!("{go:?}")
    };
    // The advertised maximum block size is lowered to the connection's memory.
    assert_eq!(block.map(|b| b.2), Some(1 << 20));

    // A 2 MiB write: refused, its payload read and dropped.
    let payload = vec![0xabu8; 2 << 20];
    c.request(CMD_WRITE, 1, 0, 2 << 20, &payload);
    assert_eq!(c.simple_reply(), (EOVERFLOW, 1));
    // A 2 MiB read: refused.
    c.request(CMD_READ, 2, 0, 2 << 20, &[]);
    assert_eq!(c.simple_reply(), (EOVERFLOW, 2));
    // The connection still works, and the refused write changed nothing.
    c.request(CMD_WRITE, 3, 4096, 4, b"ok!!");
    assert_eq!(c.simple_reply(), (0, 3));
    c.request(CMD_READ, 4, 0, 8192, &[]);
    assert_eq!(c.simple_reply(), (0, 4));
    let mut data = vec![0u8; 8192];
    c.s.read_exact(&mut data).unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert_eq!(&data[4096..4100], b"ok!!");
    // A request of exactly the limit is served.
    c.request(CMD_READ, 5, 0, 1 << 20, &[]);
    assert_eq!(c.simple_reply(), (0, 5));
    let mut data = vec![0u8; 1 << 20];
    c.s.read_exact(&mut data).unwrap();
    assert!(!c.closed_within(Duration::from_millis(100)));
}

#[test]
fn the_export_flags_are_documented_in_help() {
    let out = run(
        disksynth().args(["memory", "--help"]),
        Duration::from_secs(30),
    );
    let help = out.stdout_str();
    for flag in [
        "--max-connections",
        "--handshake-limit",
        "--connection-memory",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help\n{help}");
    }
}
