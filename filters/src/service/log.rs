//! `log:file=PATH`: one JSON line per request, and one per connect and
//! disconnect, appended to PATH — to see what a client really asks for
//! (`jq` reads it; nbdkit's log filter writes a text format of its own).
//!
//! Lines (every one has `time`, RFC 3339 UTC, and `event`):
//! - `{"event":"connect","conn":1,"peer":"127.0.0.1:4711","export":""}`
//! - `{"event":"request","conn":1,"op":"read","offset":0,"length":4096,
//!   "flags":[],"result":"ok","duration_us":12}`; a failed request has
//!   `"result":"error","errno":"EIO","error":"…"` (the errno the client is
//!   sent); a zero request's flags are `fast` and `may-trim`. The time is
//!   when the request arrived, the duration what the layers beneath took.
//!   NBD's FUA flag does not reach devices: the server follows such a
//!   write with a flush (nbd-export's dispatch), which is logged as the
//!   `flush` line after it.
//! - `{"event":"disconnect","conn":1,"peer":…,"requests":N,"duration_s":…}`
//!
//! Lines go through one buffered writer behind a mutex, each line whole, so
//! concurrent clients' lines never interleave within a line and a request
//! waits only for a memory copy (and, about once a second, a write). The
//! buffer is flushed at each disconnect, within a second of a line being
//! buffered (by the next request, or by a small thread for an idle log, so
//! that `tail -f` shows a quiet client's last request), and when the
//! filter is dropped. A failing log file is reported once and
//! never fails a request: the log watches the disk, it is not the disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use synth::{BlockDev, Client, Error, Layer, LayerFactory, Peer, Result};

use super::{errno_name, rfc3339, Op, Req, Watch, Watched};
use crate::{Below, Entry, FilterArgs, FilterError};

pub(crate) const ENTRY: Entry = Entry {
    name: "log",
    usage: "log:file=PATH",
    about: "append one JSON line per request (and per connect, disconnect) to PATH",
    build,
};

/// How often a busy log is written out at the latest.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The log file, shared by every client.
#[derive(Debug)]
pub struct LogSink {
    path: PathBuf,
    out: Mutex<Out>,
    /// Set once a write failed (reported once, then lines are dropped).
    failed: AtomicBool,
}

#[derive(Debug)]
struct Out {
    w: BufWriter<File>,
    last_flush: Instant,
}

impl LogSink {
    /// Append to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogSink {
            path: path.to_path_buf(),
            out: Mutex::new(Out {
                w: BufWriter::with_capacity(64 << 10, f),
                last_flush: Instant::now(),
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// Write `line` as one JSON line (stamped with the time now unless it
    /// has one); `flush` forces it out now.
    fn write(&self, mut line: Value, flush: bool) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Value::Object(m) = &mut line {
            m.entry("time")
                .or_insert_with(|| Value::String(rfc3339(SystemTime::now())));
        }
        // Serialized before taking the lock: concurrent requests wait for
        // each other's memory copies only.
        let mut text = line.to_string();
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut r = out.w.write_all(text.as_bytes());
        if r.is_ok() && (flush || out.last_flush.elapsed() >= FLUSH_EVERY) {
            r = out.w.flush();
            out.last_flush = Instant::now();
        }
        if let Err(e) = r {
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "--filter log: writing {} failed, logging stops: {e}",
                    self.path.display()
                );
            }
        }
    }
}

impl LogSink {
    /// Write out lines that have waited a second or more.
    fn flush_stale(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.w.buffer().is_empty() || out.last_flush.elapsed() < FLUSH_EVERY {
            return;
        }
        let r = out.w.flush();
        out.last_flush = Instant::now();
        drop(out);
        if let Err(e) = r {
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "--filter log: writing {} failed, logging stops: {e}",
                    self.path.display()
                );
            }
        }
    }

    /// Flush an idle log once a second until the sink is dropped (the
    /// thread holds it weakly, so it never keeps the file open).
    fn flush_when_idle(sink: &Arc<LogSink>) {
        let weak = Arc::downgrade(sink);
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                match weak.upgrade() {
                    Some(s) => s.flush_stale(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            // Lines still go out at the next request, disconnect or exit.
            log::warn!("--filter log: no idle-flush thread: {e}");
        }
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        let out = self.out.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = out.w.flush();
    }
}

/// One client's log: its connection number and peer on every line.
#[derive(Debug)]
pub struct ConnLog {
    sink: Arc<LogSink>,
    client: Client,
    started: Instant,
    /// Whether the connect line was written (see [`ConnLog::announce`]).
    announced: AtomicBool,
    requests: AtomicU64,
}

impl ConnLog {
    fn new(sink: Arc<LogSink>, client: &Client) -> Self {
        let log = ConnLog {
            sink,
            client: client.clone(),
            started: Instant::now(),
            announced: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        };
        // A real client is announced at once. The local client (`-o`, and
        // the probe layer the stack is built with) only when it makes a
        // request: a probe must not log a phantom connection.
        if !is_local(client) {
            log.announce();
        }
        log
    }

    fn announce(&self) {
        if self.announced.swap(true, Ordering::Relaxed) {
            return;
        }
        self.sink.write(
            json!({
                "event": "connect",
                "conn": self.client.id,
                "peer": self.client.peer.to_string(),
                "export": self.client.export,
            }),
            true,
        );
    }
}

fn is_local(c: &Client) -> bool {
    c.id == 0 && c.peer == Peer::Other
}

impl Watch for ConnLog {
    fn after(&self, req: &Req, outcome: std::result::Result<(), &Error>, took: Duration) {
        self.announce();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut flags = Vec::new();
        if req.op == Op::Zero {
            if req.zero.fast {
                flags.push("fast");
            }
            if req.zero.may_trim {
                flags.push("may-trim");
            }
        }
        // When it arrived: now, less what the device beneath took.
        let arrived = SystemTime::now()
            .checked_sub(took)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut line = json!({
            "time": rfc3339(arrived),
            "event": "request",
            "conn": self.client.id,
            "op": req.op.name(),
            "offset": req.offset,
            "length": req.len,
            "flags": flags,
            "duration_us": u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        });
        if let Value::Object(m) = &mut line {
            match outcome {
                Ok(()) => {
                    m.insert("result".into(), "ok".into());
                }
                Err(e) => {
                    m.insert("result".into(), "error".into());
                    m.insert("errno".into(), errno_name(e.kind()).into());
                    m.insert("error".into(), format!("{e:#}").into());
                }
            }
        }
        self.sink.write(line, false);
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        if !self.announced.load(Ordering::Relaxed) {
            return;
        }
        self.sink.write(
            json!({
                "event": "disconnect",
                "conn": self.client.id,
                "peer": self.client.peer.to_string(),
                "requests": self.requests.load(Ordering::Relaxed),
                "duration_s": self.started.elapsed().as_secs_f64(),
            }),
            true,
        );
    }
}

/// The `log` factory: one file for all clients, a [`ConnLog`] per client.
#[derive(Debug)]
pub struct LogFactory(Arc<LogSink>);

impl LogFactory {
    /// The log of the filter's arguments (opens the file now, so that a
    /// bad path fails at start-up, not at the first client).
    pub fn from_args(args: &FilterArgs) -> std::result::Result<Self, FilterError> {
        args.allow(&["file"], 1)?;
        let path = args
            .get("file")
            .or(args.positional(0))
            .ok_or_else(|| args.invalid("give the file to log to: log:file=PATH"))?;
        let sink = LogSink::open(Path::new(path)).map_err(|e| FilterError::Setup {
            filter: "log".into(),
            source: Error::io(format!("opening the log file {path}"), e),
        })?;
        let sink = Arc::new(sink);
        LogSink::flush_when_idle(&sink);
        Ok(LogFactory(sink))
    }
}

impl LayerFactory for LogFactory {
    fn name(&self) -> &str {
        "log"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, client: &Client) -> Result<Arc<dyn BlockDev>> {
        let conn = ConnLog::new(self.0.clone(), client);
        Ok(Arc::new(Layer::new(Watched(conn), next)))
    }
}

fn build(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(LogFactory::from_args(args)?))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use synth::testing::check_dev;
    use synth::{ErrorKind, ZeroFlags};

    use super::*;
    use crate::service::testutil;

    fn factory(path: &Path) -> LogFactory {
        let text = format!("log:file={}", path.display());
        LogFactory::from_args(&FilterArgs::parse(&text).unwrap()).unwrap()
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    fn tcp_client(id: u64) -> Client {
        Client {
            id,
            peer: Peer::Tcp("127.0.0.1:4711".parse::<SocketAddr>().unwrap()),
            export: "disk".into(),
        }
    }

    #[test]
    fn changes_no_byte_and_a_probe_logs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (dev, expected) = testutil::base();
        let f = factory(&path);
        drop(f.layer(dev.clone(), &Client::local()).unwrap());
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let f = factory(&path);
        let top = f.layer(dev, &Client::local()).unwrap();
        check_dev(&*top, &expected, &[5_000]);
        drop(top);
        let l = lines(&path);
        assert!(l.len() > 300, "{}", l.len());
        assert_eq!(l[0]["event"], "connect");
        assert_eq!(l[l.len() - 1]["event"], "disconnect");
    }

    #[test]
    fn one_line_per_request_with_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (dev, _) = testutil::writable();
        let f = factory(&path);
        let top = f.layer(dev, &tcp_client(7)).unwrap();
        let mut buf = [0u8; 512];
        top.read_at(&mut buf, 1000).unwrap();
        top.write_at(&buf, 2048).unwrap();
        top.write_zeroes(
            4096,
            8192,
            ZeroFlags {
                may_trim: true,
                fast: true,
            },
        )
        .unwrap();
        top.flush().unwrap();
        let e = top.read_at(&mut buf, 24_900).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        // Lines are out by the disconnect at the latest.
        drop(top);
        let l = lines(&path);
        let events: Vec<_> = l.iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(
            events,
            [
                "connect",
                "request",
                "request",
                "request",
                "request",
                "request",
                "disconnect"
            ]
        );
        assert_eq!(l[0]["peer"], "127.0.0.1:4711");
        assert_eq!(l[0]["export"], "disk");
        for v in &l {
            assert_eq!(v["conn"], 7);
            let t = v["time"].as_str().unwrap();
            assert!(t.len() == 27 && t.ends_with('Z'), "{t}");
        }
        let r = &l[1];
        assert_eq!(
            (&r["op"], &r["offset"], &r["length"], &r["result"]),
            (&json!("read"), &json!(1000), &json!(512), &json!("ok"))
        );
        assert!(r["duration_us"].is_u64());
        assert_eq!(l[2]["op"], "write");
        assert_eq!(l[3]["op"], "zero");
        assert_eq!(l[3]["flags"], json!(["fast", "may-trim"]));
        assert_eq!(l[2]["flags"], json!([]));
        assert_eq!(l[4]["op"], "flush");
        assert_eq!(l[5]["result"], "error");
        assert_eq!(l[5]["errno"], "EINVAL");
        assert!(l[5]["error"].as_str().unwrap().contains("past the end"));
        assert_eq!(l[6]["requests"], 5);
        assert!(l[6]["duration_s"].is_f64());
    }

    #[test]
    fn concurrent_clients_write_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (dev, _) = testutil::base();
        let f = factory(&path);
        std::thread::scope(|s| {
            for id in 1..=4 {
                let top = f.layer(dev.clone(), &tcp_client(id)).unwrap();
                s.spawn(move || {
                    let mut buf = [0u8; 64];
                    for i in 0..500 {
                        top.read_at(&mut buf, i * 8).unwrap();
                    }
                });
            }
        });
        let l = lines(&path);
        assert_eq!(l.len(), 4 * 502);
        for id in 1..=4 {
            let n = l.iter().filter(|v| v["conn"] == id).count();
            assert_eq!(n, 502, "conn {id}");
        }
    }

    /// A quiet client's last line reaches the file within about a second,
    /// without a disconnect or another request.
    #[test]
    fn an_idle_log_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (dev, _) = testutil::base();
        let f = factory(&path);
        let top = f.layer(dev, &tcp_client(3)).unwrap();
        let mut buf = [0u8; 8];
        top.read_at(&mut buf, 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines(&path).len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the request line was never written"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(lines(&path)[1]["op"], "read");
        drop(top);
    }

    /// A log that cannot be written (a full disk: /dev/full fails every
    /// write with ENOSPC) stops logging; the requests still succeed.
    #[test]
    fn a_failing_log_never_fails_a_request() {
        let dev_full = Path::new("/dev/full");
        if !dev_full.exists() {
            eprintln!("SKIPPED: no /dev/full");
            return;
        }
        let (dev, expected) = testutil::base();
        let f = factory(dev_full);
        let top = f.layer(dev, &tcp_client(1)).unwrap();
        check_dev(&*top, &expected, &[5_000]);
        assert!(f.0.failed.load(Ordering::Relaxed));
    }

    #[test]
    fn an_unwritable_path_fails_at_start_up() {
        let args = FilterArgs::parse("log:file=/nonexistent/dir/log").unwrap();
        let e = LogFactory::from_args(&args).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/log"), "{e}");
        assert!(LogFactory::from_args(&FilterArgs::parse("log").unwrap()).is_err());
    }
}
