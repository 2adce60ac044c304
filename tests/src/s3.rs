//! A real S3-compatible server on 127.0.0.1 for the `s3://` tests: moto's server mode (moto
//! from PyPI), one process per test with its own port and log, stopped by its pid when dropped.
//!
//! moto lives in a virtualenv outside the checkout that `scripts/test.sh` makes (Debian's
//! `/usr/bin/python3 -m venv`, `pip install 'moto[server]'`) and exports as
//! `DISKSYNTH_MOTO_VENV`; without that variable the default place is
//! `${DISKSYNTH_TEST_CACHE:-/var/cache/disksynth-tests}/venv-moto`. [`require_moto!`] skips a
//! test when it is missing (a failure under `CI=true`).
//!
//! With `enforce_auth`, moto checks every request after the three that create an
//! administrator (`INITIAL_NO_AUTH_ACTION_COUNT=3`): the access key must exist, the SigV4
//! signature is recomputed (with botocore) and must match, and IAM policies apply. moto does
//! not support query-string (presigned) authentication in that mode (it fails such requests
//! with a 500), so presigned URLs are tested against a server with `enforce_auth` off.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long moto may take to accept connections (Python start-up and imports).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable naming the virtualenv that has moto and boto3.
pub const VENV_VAR: &str = "DISKSYNTH_MOTO_VENV";

/// The moto virtualenv: `$DISKSYNTH_MOTO_VENV`, else
/// `${DISKSYNTH_TEST_CACHE:-/var/cache/disksynth-tests}/venv-moto`.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os(VENV_VAR).filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let cache = std::env::var_os("DISKSYNTH_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/disksynth-tests"));
    cache.join("venv-moto")
}

/// The virtualenv's interpreter.
pub fn python() -> PathBuf {
    venv().join("bin").join("python")
}

/// Whether the virtualenv imports moto's server and boto3 (checked once per process).
pub fn moto_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        python().exists()
            && crate::run(
                Command::new(python()).args(["-c", "import moto.server, boto3"]),
                Duration::from_secs(60),
            )
            .status
            .success()
    })
}

/// Skips the calling test (returns early) when moto is not installed; under `CI=true` it
/// panics.
#[macro_export]
macro_rules! require_moto {
    () => {
        if !$crate::s3::moto_available() {
            if $crate::in_ci() {
                panic!(
                    "moto is missing from {} (CI=true makes this a failure; scripts/test.sh \
                     installs it)",
                    $crate::s3::venv().display()
                );
            }
            eprintln!(
                "SKIPPED: moto is not installed in {} (scripts/test.sh installs it)",
                $crate::s3::venv().display()
            );
            return;
        }
    };
}

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    work: PathBuf,
    /// The CA that signed its certificate, when it serves HTTPS.
    ca: Option<PathBuf>,
}

/// What [`Moto::fill`] made: keys of an administrator and of a user with no permissions,
/// temporary credentials of a reading role, and presigned GET URLs.
#[derive(Debug, Clone)]
pub struct Filled {
    /// The administrator's access key id (may do anything).
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// A user without any policy: authenticates, may read nothing.
    pub nobody_access_key_id: String,
    /// Its secret.
    pub nobody_secret_access_key: String,
    /// Temporary credentials of a role that may read objects: key id…
    pub session_access_key_id: String,
    /// …secret…
    pub session_secret_access_key: String,
    /// …and session token (sent as `x-amz-security-token`).
    pub session_token: String,
    /// Presigned GET URLs (an hour) by key.
    pub presigned: Vec<(String, String)>,
}

impl Moto {
    /// Starts moto on a free loopback port, its log in `work/moto.log`.
    pub fn start(work: &Path, enforce_auth: bool) -> Moto {
        Self::start_with(work, enforce_auth, None)
    }

    /// Starts moto serving HTTPS with `cert` and `key` (a certificate for 127.0.0.1 that `ca`
    /// signed).
    pub fn start_tls(work: &Path, enforce_auth: bool, cert: &Path, key: &Path, ca: &Path) -> Moto {
        Self::start_with(work, enforce_auth, Some((cert, key, ca)))
    }

    fn start_with(work: &Path, enforce_auth: bool, tls: Option<(&Path, &Path, &Path)>) -> Moto {
        fs::create_dir_all(work).unwrap();
        // A free port: bind, read it, release (moto binds it a moment later).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(work.join("moto.log")).unwrap();
        let mut cmd = Command::new(python());
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        if let Some((cert, key, _)) = tls {
            cmd.arg("-c").arg(cert).arg("-k").arg(key);
        }
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if enforce_auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        } else {
            cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
        }
        let child = cmd.spawn().expect("starting moto");
        let mut moto = Moto {
            child,
            port,
            work: work.to_path_buf(),
            ca: tls.map(|(_, _, ca)| ca.to_path_buf()),
        };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited ({status}) before listening:\n{}", moto.log());
            }
            if t0.elapsed() > START_TIMEOUT {
                panic!(
                    "moto did not listen on port {port} within {START_TIMEOUT:?}:\n{}",
                    moto.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `path_and_query` as werkzeug writes it in the log (`uri_to_iri`: UTF-8 and reserved
    /// characters decoded), to find requests there.
    pub fn as_logged(&self, path_and_query: &str) -> String {
        let out = crate::run_ok(Command::new(python()).args([
            "-c",
            "import sys; from werkzeug.urls import uri_to_iri; print(uri_to_iri(sys.argv[1]))",
            path_and_query,
        ]));
        out.stdout_str().trim_end_matches('\n').to_owned()
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far (werkzeug's request lines and any traceback), without the
    /// colour escapes werkzeug puts around request lines.
    pub fn log(&self) -> String {
        let raw = fs::read_to_string(self.work.join("moto.log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(i) = rest.find("\u{1b}[") {
            out.push_str(&rest[..i]);
            rest = &rest[i + 2..];
            let end = rest.find('m').map_or(rest.len(), |e| e + 1);
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// Make the administrator (the three unauthenticated actions when auth is enforced), a
    /// user without permissions, a private `bucket` with `objects` (key, local file), and
    /// presigned GET URLs for the keys in `presign` (tests/scripts/s3_setup.py, with boto3).
    pub fn fill(&self, bucket: &str, objects: &[(&str, &Path)], presign: &[&str]) -> Filled {
        let objects: serde_json::Map<String, serde_json::Value> = objects
            .iter()
            .map(|(k, p)| (k.to_string(), p.display().to_string().into()))
            .collect();
        let spec = serde_json::json!({ "objects": objects, "presign": presign });
        let spec_path = self.work.join("spec.json");
        fs::write(&spec_path, spec.to_string()).unwrap();
        let mut cmd = Command::new(python());
        if let Some(ca) = &self.ca {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        let out = crate::run_ok(
            cmd.env("PYTHONDONTWRITEBYTECODE", "1")
                .arg(crate::script("s3_setup.py"))
                .arg(self.endpoint())
                .arg(bucket)
                .arg(&spec_path),
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout_str())
            .unwrap_or_else(|e| panic!("s3_setup.py printed no JSON ({e}):\n{}", out.describe()));
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k}")).to_owned();
        let presigned = v["presigned"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, u)| (k.clone(), u.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Filled {
            access_key_id: s("access_key_id"),
            secret_access_key: s("secret_access_key"),
            nobody_access_key_id: s("nobody_access_key_id"),
            nobody_secret_access_key: s("nobody_secret_access_key"),
            session_access_key_id: s("session_access_key_id"),
            session_secret_access_key: s("session_secret_access_key"),
            session_token: s("session_token"),
            presigned,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A canned answer [`FaultProxy`] gives instead of forwarding a request.
#[derive(Debug, Clone, Default)]
pub struct Canned {
    /// Only requests with this method get it (`GET`, `HEAD`).
    pub method: &'static str,
    /// The status line's code and reason, e.g. `503 Slow Down`.
    pub status: &'static str,
    /// Extra header lines, `Name: value` each.
    pub headers: Vec<String>,
    /// The body (an S3 error document).
    pub body: String,
    /// Send the body one byte per this long (a server dripping it), instead of at once.
    pub drip: Option<Duration>,
}

/// One request as the proxy saw it: the request line and the header fields (names
/// lower-cased).
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET /bucket/key HTTP/1.1`.
    pub line: String,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// Whether a canned answer was given.
    pub canned: bool,
}

impl Seen {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP proxy in front of a real server (moto) that answers chosen requests itself
/// (an S3 `503 SlowDown`, a wrong-region `301`...) and forwards the rest unchanged, one
/// upstream connection per request (closed after it). It records every request's headers.
/// Dropping it stops the accept loop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct ProxyState {
    plan: std::collections::VecDeque<Canned>,
    seen: Vec<Seen>,
}

impl FaultProxy {
    /// Proxy to `upstream` (`127.0.0.1:PORT`), answering the first requests that match
    /// `plan`'s entries in order with them.
    pub fn start(upstream: u16, plan: Vec<Canned>) -> FaultProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(ProxyState {
            plan: plan.into(),
            seen: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let accept = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = Arc::clone(&st);
                        std::thread::spawn(move || proxy_one(conn, upstream, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultProxy {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serve one client connection: one request, answered (canned or forwarded), then closed.
fn proxy_one(mut conn: TcpStream, upstream: u16, state: &std::sync::Mutex<ProxyState>) {
    use std::io::{Read, Write};
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) if head.len() < 64 << 10 => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let method = line.split(' ').next().unwrap_or("").to_owned();
    let canned = {
        let mut st = state.lock().unwrap();
        let pos = st.plan.iter().position(|c| c.method == method);
        let c = pos.and_then(|p| st.plan.remove(p));
        st.seen.push(Seen {
            line: line.clone(),
            headers: headers.clone(),
            canned: c.is_some(),
        });
        c
    };
    if let Some(c) = canned {
        let mut resp = format!("HTTP/1.1 {}\r\nConnection: close\r\n", c.status);
        for h in &c.headers {
            resp.push_str(h);
            resp.push_str("\r\n");
        }
        resp.push_str(&format!("Content-Length: {}\r\n\r\n", c.body.len()));
        if conn.write_all(resp.as_bytes()).is_err() || method == "HEAD" {
            return;
        }
        match c.drip {
            None => {
                let _ = conn.write_all(c.body.as_bytes());
            }
            Some(pause) => {
                // Until the client hangs up (a write fails) or the body ends.
                for b in c.body.as_bytes() {
                    if conn.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(pause);
                }
            }
        }
        return;
    }
    // Forward unchanged but for `Connection: close`, then relay the answer to its end.
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let mut fwd = format!("{line}\r\n");
    for (n, v) in headers.iter().filter(|(n, _)| n != "connection") {
        fwd.push_str(&format!("{n}: {v}\r\n"));
    }
    fwd.push_str("Connection: close\r\n\r\n");
    if up.write_all(fwd.as_bytes()).is_err() {
        return;
    }
    let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
    // The answer's head with `Connection: close` (this connection ends with it), then the
    // body as it comes.
    let mut resp_head = Vec::new();
    while !resp_head.ends_with(b"\r\n\r\n") {
        match up.read(&mut byte) {
            Ok(1) if resp_head.len() < 64 << 10 => resp_head.push(byte[0]),
            _ => return,
        }
    }
    let resp_text = String::from_utf8_lossy(&resp_head).into_owned();
    let mut out = String::new();
    for (i, l) in resp_text.trim_end_matches("\r\n").split("\r\n").enumerate() {
        if i > 0 && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
        if i == 0 {
            out.push_str("Connection: close\r\n");
        }
    }
    out.push_str("\r\n");
    if conn.write_all(out.as_bytes()).is_err() {
        return;
    }
    let _ = std::io::copy(&mut up, &mut conn);
}
