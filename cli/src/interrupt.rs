//! SIGINT/SIGTERM while `-o` or `pack` writes: stop soon, clean up, say so
//! on one line, exit 128 + the signal (130, 143).
//!
//! The handler only raises a flag; the copy loops check it every few MiB and
//! return `Interrupted`, so the temp file is dropped (removed) on the normal
//! path. If the work does not stop within [`GRACE`] (a read stuck on the
//! network, an `open` of a FIFO nobody reads) or a second signal comes, the
//! signal thread removes our temp file itself (named `.NAME.PID.*`), prints
//! the same line and exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long the work may take to stop after a signal.
const GRACE: Duration = Duration::from_secs(3);

/// What is being written, for the message and the cleanup.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file that appears only when complete; `temp` is the directory and
    /// name prefix of its hidden temp file.
    File {
        path: PathBuf,
        temp: (PathBuf, String),
    },
    /// A device or FIFO written in place.
    InPlace(PathBuf),
    /// Standard output.
    Stdout,
}

impl Target {
    fn message(&self) -> String {
        match self {
            Target::File { path, .. } => format!("interrupted; {} not written", path.display()),
            Target::InPlace(path) => format!(
                "interrupted; {} is incomplete (it is written in place)",
                path.display()
            ),
            Target::Stdout => "interrupted; the output on stdout is incomplete".into(),
        }
    }

    /// Remove our temp file (only for the forced exit: otherwise dropping
    /// it did).
    fn remove_temp(&self) {
        let Target::File {
            temp: (dir, prefix),
            ..
        } = self
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix.as_str()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Signals caught for one `-o` or `pack` run.
pub struct Interrupt {
    stop: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
    /// Held by whoever reports the interruption (main or the signal
    /// thread), so it is reported once.
    reported: Arc<Mutex<bool>>,
    target: Target,
}

impl Interrupt {
    /// Catch SIGINT and SIGTERM from now on, while writing `target`.
    pub fn catch(target: Target) -> Result<Interrupt> {
        let stop = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        let reported = Arc::new(Mutex::new(false));
        let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
        let (t_stop, t_signal, t_reported, t_target) = (
            stop.clone(),
            signal.clone(),
            reported.clone(),
            target.clone(),
        );
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let Some(sig) = signals.forever().next() else {
                    return;
                };
                t_signal.store(sig, Ordering::SeqCst);
                t_stop.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + GRACE;
                while Instant::now() < deadline && signals.pending().next().is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Stuck (or asked twice): clean up and leave now.
                let mut done = t_reported.lock().unwrap_or_else(|p| p.into_inner());
                if *done {
                    return;
                }
                *done = true;
                t_target.remove_temp();
                eprintln!("disksynth: {}", t_target.message());
                std::process::exit(128 + sig);
            })
            .context("starting the signal thread")?;
        Ok(Interrupt {
            stop,
            signal,
            reported,
            target,
        })
    }

    /// The flag the copy loop checks.
    pub fn stop(&self) -> &AtomicBool {
        &self.stop
    }

    /// Whether a signal came.
    pub fn signalled(&self) -> bool {
        self.signal.load(Ordering::SeqCst) != 0
    }

    /// After the work returned because of a signal (its temp file is gone):
    /// the one-line message and the exit status, 128 + the signal.
    pub fn report(&self) -> ExitCode {
        let sig = self.signal.load(Ordering::SeqCst);
        let mut done = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if !*done {
            *done = true;
            eprintln!("disksynth: {}", self.target.message());
        }
        ExitCode::from((128 + sig).clamp(0, 255) as u8)
    }
}

/// The exit status for a write to a closed pipe (`-o - | head -c 1M`): what
/// `cat` gets, killed by SIGPIPE (128 + 13), but quietly and after cleanup.
pub const BROKEN_PIPE: u8 = 141;

/// `path` as a [`Target`]: stdout for `-`, in place for an existing device
/// or FIFO, else a file written through a temp file named by `temp`.
pub fn target_of(path: &Path, temp: impl Fn(&Path) -> (PathBuf, String)) -> Target {
    if path.as_os_str() == "-" {
        Target::Stdout
    } else if nbd_export::writes_in_place(path) {
        Target::InPlace(path.to_owned())
    } else {
        Target::File {
            path: path.to_owned(),
            temp: temp(path),
        }
    }
}
