//! A running NBD server owned by a test: spawned, URI read from stdout, killed by pid on drop.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::process::{cmdline, wait_timeout};

/// How long a server may take to print its URI (or nbdkit to write its pidfile).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server gets after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server process. Dropping it sends SIGTERM to its pid, then SIGKILL after
/// [`STOP_TIMEOUT`], and reaps it.
#[derive(Debug)]
pub struct Server {
    child: Child,
    uri: String,
    extra_stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    cmdline: String,
    exited: Option<ExitStatus>,
}

impl Server {
    /// `disksynth ARGS...`: line 1 of stdout is the URI.
    pub fn disksynth(args: &[&str]) -> Server {
        let mut cmd = crate::disksynth();
        cmd.args(args);
        Server::spawn(cmd)
    }

    /// `disksynth ARGS... -U DIR/sock`.
    pub fn disksynth_unix(dir: &Path, args: &[&str]) -> Server {
        let sock = dir.join("sock");
        let mut cmd = crate::disksynth();
        cmd.args(args).arg("-U").arg(&sock);
        Server::spawn(cmd)
    }

    /// `disksynth ARGS... -p 0` (127.0.0.1, port chosen by the OS).
    pub fn disksynth_tcp(args: &[&str]) -> Server {
        let mut cmd = crate::disksynth();
        cmd.args(args).args(["-p", "0"]);
        Server::spawn(cmd)
    }

    /// Spawns `cmd` and reads line 1 of its stdout as the URI (within [`START_TIMEOUT`]).
    /// Later stdout lines and all of stderr are collected in the background.
    pub fn spawn(mut cmd: Command) -> Server {
        let line = cmdline(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning `{line}`: {e}"));
        let stderr = collect_stderr(&mut child);
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let rest = Arc::clone(&extra_stdout);
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the server never blocks or gets EPIPE on stdout.
            for l in lines.map_while(Result::ok) {
                rest.lock().expect("stdout lock").push(l);
            }
        });
        let mut server = Server {
            child,
            uri: String::new(),
            extra_stdout,
            stderr,
            cmdline: line,
            exited: None,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(uri))) if !uri.trim().is_empty() => server.uri = uri.trim().to_string(),
            other => {
                let status = server.kill_now();
                panic!(
                    "`{}` did not print a URI on stdout line 1 within {START_TIMEOUT:?} \
                     (got {other:?}, status {status:?})\n--- stderr ---\n{}",
                    server.cmdline,
                    server.stderr_text()
                );
            }
        }
        server
    }

    /// Reference server: `nbdkit -f --exit-with-parent -U DIR/nbdkit.sock -P DIR/nbdkit.pid ARGS`.
    /// Ready when nbdkit has written its pidfile (it does so after it listens).
    pub fn nbdkit(dir: &Path, args: &[&str]) -> Server {
        let sock = dir.join("nbdkit.sock");
        let pidfile = dir.join("nbdkit.pid");
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(args);
        Server::spawn_ready_file(cmd, &pidfile, crate::unix_uri(&sock))
    }

    /// Reference server: `qemu-nbd -k DIR/qemu-nbd.sock --pid-file ... -f raw [ARGS] FILE`.
    pub fn qemu_nbd(dir: &Path, args: &[&str], file: &Path) -> Server {
        let sock = dir.join("qemu-nbd.sock");
        let pidfile = dir.join("qemu-nbd.pid");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("-k")
            .arg(&sock)
            .arg("--pid-file")
            .arg(&pidfile)
            .args(["-f", "raw", "-t"])
            .args(args)
            .arg(file);
        Server::spawn_ready_file(cmd, &pidfile, crate::unix_uri(&sock))
    }

    /// Spawns a server that signals readiness by creating `ready`.
    pub fn spawn_ready_file(mut cmd: Command, ready: &Path, uri: String) -> Server {
        let line = cmdline(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning `{line}`: {e}"));
        let stderr = collect_stderr(&mut child);
        let mut server = Server {
            child,
            uri,
            extra_stdout: Arc::new(Mutex::new(Vec::new())),
            stderr,
            cmdline: line,
            exited: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                server.exited = Some(status);
                panic!(
                    "`{}` exited with {status} before it was ready\n{}",
                    server.cmdline,
                    server.stderr_text()
                );
            }
            if Instant::now() > deadline {
                server.kill_now();
                panic!("`{}` not ready after {START_TIMEOUT:?}", server.cmdline);
            }
            thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// The NBD URI the server printed.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout lines after line 1 received so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.extra_stdout.lock().expect("stdout lock").clone()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Waits (bounded) until stderr contains `needle`; returns whether it did.
    pub fn wait_stderr_contains(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_text().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until stdout has at least `n` lines after line 1.
    pub fn wait_stdout_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.stdout_lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the server's pid (only while it has not been reaped).
    pub fn signal(&mut self, sig: Signal) {
        if self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32).expect("child pid is positive");
        let _ = kill_process(pid, sig);
    }

    /// Whether the server is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            _ => true,
        }
    }

    /// Waits up to `timeout` for the server to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        self.exited = wait_timeout(&mut self.child, timeout);
        self.exited
    }

    /// Sends `sig` and waits up to [`STOP_TIMEOUT`] for the exit status. Panics (after
    /// SIGKILL) if the server does not exit.
    pub fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                self.kill_now();
                panic!(
                    "`{}` did not exit within {STOP_TIMEOUT:?} of signal {sig:?}\n{}",
                    self.cmdline,
                    self.stderr_text()
                );
            }
        }
    }

    fn kill_now(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.signal(Signal::TERM);
        if self.wait_exit(STOP_TIMEOUT).is_none() {
            self.kill_now();
        }
    }
}

fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("stderr lock")
                .extend_from_slice(&chunk[..n]);
        }
    });
    buf
}
