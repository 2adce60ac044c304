//! `--fuse DIR`: the disk as the file DIR/disk through FUSE (the
//! `fuse-export` crate), alone or beside the NBD server.
//!
//! Alone, it serves until SIGINT/SIGTERM or until the `--run` command
//! exits, then unmounts. A mount still in use then (a loop device left
//! attached, a reader holding the file open) is detached: it leaves the
//! namespace at once. After a signal this process keeps serving its users
//! until they let go (a second signal stops at once: they get errors);
//! after `--run`, whose command's end is the disk's end, it waits
//! [`RUN_GRACE`] at most, so a script that left a loop device attached
//! does not hang.
//! Beside an NBD server (`-U`, `--serve`) it is one more client of the same
//! export, unmounted when the server stops.

use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fuse_export::{FuseMount, Options, Unmounted};
use signal_hook::consts::{SIGINT, SIGTERM};
use synth::{Admission, Caps, Client, Export};

use crate::args::{ExportArgs, TlsArg};
use crate::service::{self, PidFile};

/// How long a mount still in use after `--run` ended is served.
const RUN_GRACE: Duration = Duration::from_secs(5);

/// A mount and what its client holds; the mount goes first when dropped.
#[derive(Debug)]
pub struct Fuse {
    mount: FuseMount,
    _admission: Admission,
}

impl Fuse {
    /// The file's absolute path.
    pub fn file(&self) -> &Path {
        self.mount.file()
    }
}

/// Mount `export` (one client: opened once) as `a.fuse`/`a.fuse_name`;
/// writable when the export is and neither `-r` nor `readonly` says no.
/// `beside`: an NBD server serves the same export.
fn mount(
    export: &Arc<dyn Export>,
    a: &ExportArgs,
    readonly: bool,
    beside: bool,
    on_end: Box<dyn FnOnce() + Send>,
) -> Result<Option<Fuse>> {
    let Some(dir) = &a.fuse else {
        return Ok(None);
    };
    let mut client = Client::local();
    client.export = a.export_name.clone();
    let admission = export
        .admit(&client)
        .map_err(|why| anyhow!("--fuse {}: refused: {why}", dir.display()))?;
    let dev = export
        .open_client(&client, &|| false)
        .with_context(|| format!("--fuse {}: opening the disk", dir.display()))?;
    let writable = export.caps().contains(Caps::WRITE) && !a.readonly && !readonly;
    let opts = Options {
        name: a.fuse_name.clone(),
        writable,
        threads: usize::from(a.threads).min(32),
        // NBD clients' writes must not hide behind this file's page cache.
        uncached: writable && beside,
    };
    let m = fuse_export::mount(dev, dir, &opts, on_end)
        .with_context(|| format!("--fuse {}", dir.display()))?;
    log::info!(
        "{} ({}) is the disk",
        m.file().display(),
        if opts.writable {
            "read-write"
        } else {
            "read-only"
        }
    );
    Ok(Some(Fuse {
        mount: m,
        _admission: admission,
    }))
}

/// `--fuse` beside an NBD server: the mount, unmounted when dropped.
pub fn beside(export: &Arc<dyn Export>, a: &ExportArgs, readonly: bool) -> Result<Option<Fuse>> {
    mount(export, a, readonly, true, Box::new(|| {}))
}

/// What the waiting loop hears.
enum Event {
    Signal(i32),
    /// The request loops ended (unmounted, by us or from outside).
    Ended,
    /// The `--run` command ended.
    Exited(std::io::Result<ExitStatus>),
}

/// `--fuse` alone: mount, run `run` if given, and wait (see the module doc).
pub fn serve_alone(
    export: Arc<dyn Export>,
    a: &ExportArgs,
    readonly: bool,
    run: Option<&str>,
) -> Result<ExitCode> {
    refuse_nbd_only(a)?;
    let (tx, rx) = mpsc::channel();
    // Caught before mounting, so that none is lost in between.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for s in signals.forever() {
                    if tx.send(Event::Signal(s)).is_err() {
                        return;
                    }
                }
            })
            .context("starting the signal thread")?;
    }
    let notify_socket = service::take_notify_socket();
    if let Some(p) = &a.pid_file {
        PidFile::check(p)?;
    }
    if a.exit_with_parent {
        // The parent's death becomes our SIGTERM, handled as any other
        // (prctl(2) PR_SET_PDEATHSIG).
        #[cfg(target_os = "linux")]
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
            .context("--exit-with-parent: prctl(PR_SET_PDEATHSIG)")?;
    }
    let ended = tx.clone();
    let on_end = Box::new(move || {
        let _ = ended.send(Event::Ended);
    });
    let mut fuse = mount(&export, a, readonly, false, on_end)?.context("--fuse is not set")?;
    let _pid_file = a.pid_file.as_deref().map(PidFile::write).transpose()?;
    if let Some(s) = &notify_socket {
        let ready = format!("READY=1\nMAINPID={}", std::process::id());
        if let Err(e) = service::notify(s, &ready) {
            log::warn!("sd_notify: {e:#}");
        }
    }

    let mut child = None;
    if let Some(cmd) = run {
        let mut c = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("fuse", fuse.file())
            .spawn()
            .with_context(|| format!("cannot run {cmd:?} with /bin/sh"))?;
        child = Some(c.id());
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("run".into())
            .spawn(move || {
                let _ = tx.send(Event::Exited(c.wait()));
            })
            .context("starting the thread that waits for --run")?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", fuse.file().display());
        let _ = out.flush();
    }
    drop(tx);

    let mut code = ExitCode::SUCCESS;
    let mut status = None;
    // Until something says stop; after a signal, the users of a busy mount
    // are served until they let go.
    let mut patient = false;
    match rx.recv() {
        Ok(Event::Signal(s)) => {
            log::info!("signal {s}: unmounting {}", fuse.file().display());
            patient = true;
        }
        Ok(Event::Exited(st)) => status = Some(st),
        Ok(Event::Ended) => log::warn!(
            "{} was unmounted from outside; stopping",
            fuse.mount.mountpoint().display()
        ),
        Err(_) => {}
    }
    // The command goes before the mount it may be using.
    if let (Some(pid), None) = (child, &status) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        loop {
            match rx.recv() {
                Ok(Event::Exited(st)) => {
                    status = Some(st);
                    break;
                }
                Ok(Event::Signal(_)) | Err(_) => {
                    log::warn!("second signal: stopping without waiting for the command");
                    return Ok(ExitCode::from(1));
                }
                Ok(Event::Ended) => {}
            }
        }
    }
    if let Some(st) = status {
        code = exit_code(st.context("waiting for the command")?);
    }
    match fuse.mount.unmount() {
        Ok(Unmounted::Detached) if patient => log::warn!(
            "{} is in use (a loop device? an open file?): detached; serving its users until \
             they close it (signal again to stop now)",
            fuse.file().display()
        ),
        Ok(Unmounted::Detached) => log::warn!(
            "{} is still in use after the command ended (a loop device left attached?): \
             detached; serving its users {}s more",
            fuse.file().display(),
            RUN_GRACE.as_secs()
        ),
        Ok(_) => {}
        Err(e) => return Err(e).context("--fuse"),
    }
    let deadline = std::time::Instant::now() + RUN_GRACE;
    while !fuse.mount.ended() {
        if !patient && std::time::Instant::now() >= deadline {
            log::warn!(
                "stopping: users of the detached {} get errors from now on",
                fuse.file().display()
            );
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Signal(_)) => {
                log::warn!("second signal: stopping; users of the detached file get errors");
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
    if let Some(s) = &notify_socket {
        let _ = service::notify(s, "STOPPING=1");
    }
    Ok(code)
}

/// Options that only the NBD server uses would be ignored without one:
/// refused, saying how to get the server.
fn refuse_nbd_only(a: &ExportArgs) -> Result<()> {
    let tls = a.tls != TlsArg::Off || a.tls_certificates.is_some() || a.tls_cert.is_some();
    for (given, name) in [
        (tls, "--tls"),
        (a.exit_last, "--exit-last"),
        (a.max_connections.is_some(), "--max-connections"),
    ] {
        if given {
            anyhow::bail!(
                "{name} is for the NBD server, and --fuse alone starts none: add -U PATH or --serve"
            );
        }
    }
    Ok(())
}

/// A command's status as ours: its code, or 128 + the signal that ended it.
fn exit_code(st: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
