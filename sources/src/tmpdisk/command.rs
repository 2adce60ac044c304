//! A tmpdisk `--command`: run under `/bin/sh` in a process group of its
//! own, bounded in time, stopped when its client leaves, and never
//! outliving the open that started it.
//!
//! The group is what makes "stopped" mean stopped: `sh -c` runs mkfs (and
//! mkfs may run helpers) as children, and killing `sh` alone would leave
//! them running, writing to a disk nobody will use and holding the output
//! pipe open. So the whole group is signalled: SIGTERM, then SIGKILL after
//! [`GRACE`]. It gets SIGKILL even after a normal exit, for anything the
//! script left running in the background.
//!
//! The group's id is its leader's (`sh`'s) pid, and the leader is reaped
//! only after the last signal: a zombie keeps its pid, so the id cannot
//! have been reused by an unrelated process when the group is signalled.
//! (Hence `waitid(WNOWAIT)` to see the leader exit without reaping it.)

use std::io::{BufRead, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use synth::{Error, ErrorKind, Result};

/// How long the command's processes get between SIGTERM and SIGKILL: a
/// mkfs on a disk that is about to be deleted has nothing to save.
const GRACE: Duration = Duration::from_secs(1);

/// How often, at most, the command, its deadline and the client are
/// checked while the command runs (the first checks come sooner: most
/// commands take a few milliseconds).
const LONGEST_NAP: Duration = Duration::from_millis(50);

/// Run `script` under `/bin/sh` (stdin from `/dev/null`, stdout and stderr
/// logged line by line) until it ends, `timeout` passes or `gone()` says
/// the client has left. Whatever the end, every process of the command's
/// group is gone when this returns. A non-zero exit, the timeout and the
/// client leaving are errors, with the reason and the command's last
/// output line.
pub(super) fn run(script: &str, timeout: Duration, gone: &dyn Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let (mut group, pipe) = Group::spawn(script)?;
    let output = pipe.map(log_output).transpose()?;
    let end = group.wait_leader(deadline, gone);
    let status = group.stop()?;
    // Every writer of the pipe is dead now (unless something left the
    // group on purpose): the logger is at the end of its input.
    let last = output
        .and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
        .unwrap_or_default();
    let last_said = if last.is_empty() {
        String::new()
    } else {
        format!("; its last output: {last}")
    };
    let reason = match end {
        Wait::Exited if status.success() => return Ok(()),
        Wait::Exited => {
            let last = if last.is_empty() {
                "(no error output)"
            } else {
                last.as_str()
            };
            format!("the disk's command failed ({status}): {last}")
        }
        Wait::Deadline => format!(
            "the disk's command did not finish within {} s (--command-timeout) \
             and was killed{last_said}",
            timeout.as_secs_f64()
        ),
        Wait::Gone => format!(
            "the client left before its disk was ready; the disk's command was \
             killed{last_said}"
        ),
    };
    log::warn!("tmpdisk: {reason}");
    Err(Error::new(ErrorKind::Io, reason))
}

/// Why [`Group::wait_leader`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The command (its `sh`) exited.
    Exited,
    /// The timeout passed first.
    Deadline,
    /// The client left first.
    Gone,
}

/// The command's process group, led by its `sh`.
struct Group {
    child: Child,
    /// The group's id: the leader's pid.
    pgid: Pid,
    /// Set once the leader is reaped; until then `pgid` is ours to signal.
    reaped: bool,
}

impl Group {
    /// Start `script` as the leader of a new process group. stdout joins
    /// stderr (`exec 1>&2`): one pipe, returned for logging.
    fn spawn(script: &str) -> Result<(Group, Option<ChildStderr>)> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec 1>&2\n{script}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // setpgid(0, 0) in the child before exec, done by std (no
            // unsafe pre_exec needed); spawn returns after the exec, so the
            // group exists by then.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("running /bin/sh", e))?;
        let pipe = child.stderr.take();
        let pgid = Pid::from_child(&child);
        Ok((
            Group {
                child,
                pgid,
                reaped: false,
            },
            pipe,
        ))
    }

    /// Whether the leader has exited, leaving it unreaped (a zombie).
    fn leader_exited(&self) -> bool {
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match rustix::process::waitid(WaitId::Pid(self.pgid), opts) {
            Ok(status) => status.is_some(),
            Err(rustix::io::Errno::INTR) => false,
            // ECHILD cannot happen while we hold the unreaped child; if it
            // did, waiting longer would not help.
            Err(_) => true,
        }
    }

    /// Wait for the leader to exit, until `deadline` or until `gone()`.
    fn wait_leader(&self, deadline: Instant, gone: &dyn Fn() -> bool) -> Wait {
        let mut nap = Duration::from_millis(1);
        loop {
            if self.leader_exited() {
                return Wait::Exited;
            }
            if gone() {
                return Wait::Gone;
            }
            let now = Instant::now();
            if now >= deadline {
                return Wait::Deadline;
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(LONGEST_NAP);
        }
    }

    /// Stop every process of the group (SIGTERM, SIGKILL after [`GRACE`]
    /// or as soon as the leader is gone) and reap the leader.
    fn stop(&mut self) -> Result<ExitStatus> {
        let _ = rustix::process::kill_process_group(self.pgid, Signal::TERM);
        let _ = self.wait_leader(Instant::now() + GRACE, &|| false);
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        self.reaped = true;
        self.child
            .wait()
            .map_err(|e| Error::io("waiting for /bin/sh", e))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Only on an early return (a failed logger thread): nothing of
        // the command outlives its open.
        if !self.reaped {
            let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

/// Log the command's output line by line on a thread of its own (so that
/// a command that prints nothing cannot block the wait, and one printing
/// megabytes cannot fill the pipe and stall), never keeping more than a
/// line. The receiver gets the last non-empty line at the end of the
/// output.
fn log_output(pipe: ChildStderr) -> Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("tmpdisk-command".into())
        .spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            let mut last = String::new();
            // Lines are capped at 4 KiB each; the rest of a longer one is
            // dropped.
            while reader
                .by_ref()
                .take(4096)
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if line.last() != Some(&b'\n') && line.len() == 4096 {
                    let _ = reader.skip_until(b'\n');
                }
                if !text.trim().is_empty() {
                    log::info!("tmpdisk command: {text}");
                    last = text;
                }
                line.clear();
            }
            let _ = tx.send(last);
        })
        .map_err(|e| Error::io("starting a thread for the command's output", e))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether any process is still in group `pgid`.
    fn group_alive(pgid: i32) -> bool {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .any(|stat| {
                // pid (comm) state ppid pgrp ...: comm may hold spaces.
                let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
                let fields: Vec<&str> = after.split_whitespace().collect();
                fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z")
            })
    }

    /// SIGKILL is certain but not instant: a killed process still shows in
    /// /proc until the kernel has run its exit, which on a loaded machine
    /// takes a moment. Give it up to 10 s.
    fn group_dies(pgid: i32) -> bool {
        let t0 = Instant::now();
        while group_alive(pgid) {
            if t0.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Run `script`, which writes its group id to `$pidfile` first.
    fn run_recording(
        script: &str,
        timeout: Duration,
        gone: &dyn Fn() -> bool,
    ) -> (Result<()>, i32, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pgid");
        let full = format!("echo $$ > '{}'\n{script}", pidfile.display());
        let t0 = Instant::now();
        let r = run(&full, timeout, gone);
        let took = t0.elapsed();
        let pgid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (r, pgid, took)
    }

    #[test]
    fn a_hung_command_is_killed_at_the_timeout_with_its_children() {
        // `trap '' TERM` makes sh and its sleep ignore SIGTERM: only the
        // SIGKILL after the grace period ends them.
        for script in [
            "sleep 1000",
            "trap '' TERM; echo starting; sleep 1000; echo never",
        ] {
            let (r, pgid, took) = run_recording(script, Duration::from_millis(500), &|| false);
            let e = r.unwrap_err().to_string();
            assert!(e.contains("within 0.5 s (--command-timeout)"), "{e}");
            assert!(took < Duration::from_secs(20), "{script}: took {took:?}");
            assert!(
                group_dies(pgid),
                "{script}: group {pgid} still has processes"
            );
            if script.contains("echo starting") {
                assert!(e.ends_with("its last output: starting"), "{e}");
            }
        }
    }

    #[test]
    fn a_departed_client_stops_the_command() {
        let t0 = Instant::now();
        let left = AtomicBool::new(false);
        let gone = || {
            if t0.elapsed() > Duration::from_millis(300) {
                left.store(true, Ordering::Relaxed);
            }
            left.load(Ordering::Relaxed)
        };
        let (r, pgid, took) = run_recording("sleep 1000", Duration::from_secs(600), &gone);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("client left"), "{e}");
        assert!(took < Duration::from_secs(20), "took {took:?}");
        assert!(group_dies(pgid));
    }

    #[test]
    fn background_leftovers_are_killed_after_a_normal_exit() {
        let (r, pgid, took) =
            run_recording("sleep 1000 & echo done", Duration::from_secs(60), &|| false);
        r.unwrap();
        assert!(took < Duration::from_secs(20), "took {took:?}");
        assert!(group_dies(pgid));
    }
}
