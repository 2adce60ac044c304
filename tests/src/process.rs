//! Running client commands with a time bound and capturing their output.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Default bound for one client command; every spawned process is bounded in time.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command produced.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            truncate(&self.stdout_str()),
            truncate(&self.stderr_str())
        )
    }
}

fn truncate(s: &str) -> &str {
    const MAX: usize = 8000;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `Command::new(prog).args(args)`.
pub fn command<I, S>(prog: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(prog);
    cmd.args(args);
    cmd
}

/// A printable command line.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '$') {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

pub(crate) fn reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(sleep.min(deadline - now));
        sleep = (sleep * 2).min(Duration::from_millis(50));
    }
}

/// Runs `cmd` (stdin = /dev/null) and captures stdout/stderr. If it has not exited after
/// `timeout` it is killed (by its pid) and the test panics with what it printed so far.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let line = cmdline(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{line}`: {e}"));
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let status = wait_timeout(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let status = child.wait().expect("reaping killed child");
        // Grandchildren may still hold the pipes open; do not wait on the readers forever.
        let output = Output {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
            cmdline: line.clone(),
        };
        panic!(
            "`{line}` timed out after {timeout:?} and was killed\n{}",
            output.describe()
        );
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        cmdline: line,
    }
}

/// [`run`] with [`CMD_TIMEOUT`], panicking unless the command exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "command failed\n{}", out.describe());
    out
}
