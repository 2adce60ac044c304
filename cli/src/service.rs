//! The habits of a service that nbdkit and qemu-nbd users expect: a pid
//! file, readiness told to systemd (`sd_notify`), and stopping with the
//! process that started the server.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nbd_export::ShutdownHandle;

/// Most bytes of a pid file read (a pid is at most 10 digits): a huge
/// file at that path is not ours, and is not read whole.
const PID_FILE_MAX: u64 = 64;

/// A pid file written by this process, removed when dropped (if it still
/// names this process).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

/// What an existing pid file says.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    /// None there, empty, or naming a process that is gone: replace it.
    Stale,
    /// A running process (another server, most likely).
    Live(i32),
    /// Not a pid file at all (a typo'd path to something that matters).
    Foreign,
}

fn existing(path: &Path) -> Result<Existing> {
    use std::io::Read;
    let what = || format!("reading the pid file {}", path.display());
    // Looked at before it is opened: opening a FIFO would block.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(Existing::Foreign),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Stale),
        Err(e) => return Err(e).with_context(what),
    }
    let file = std::fs::File::open(path).with_context(what)?;
    let mut text = String::new();
    if file
        .take(PID_FILE_MAX + 1)
        .read_to_string(&mut text)
        .is_err()
        || text.len() as u64 > PID_FILE_MAX
    {
        return Ok(Existing::Foreign);
    }
    let text = text.trim();
    if text.is_empty() {
        return Ok(Existing::Stale);
    }
    let Ok(pid) = text.parse::<i32>() else {
        return Ok(Existing::Foreign);
    };
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Ok(Existing::Foreign);
    };
    if pid as u32 == std::process::id() {
        return Ok(Existing::Stale);
    }
    // Signal 0 checks that the process exists without disturbing it;
    // EPERM means it exists but is someone else's.
    Ok(match rustix::process::test_kill_process(p) {
        Ok(()) | Err(rustix::io::Errno::PERM) => Existing::Live(pid),
        Err(_) => Existing::Stale,
    })
}

impl PidFile {
    /// Refuse `path` now, before listening, if it names a running process
    /// or is not a pid file; a stale one will be replaced.
    pub fn check(path: &Path) -> Result<()> {
        match existing(path)? {
            Existing::Stale => Ok(()),
            Existing::Live(pid) => bail!(
                "the pid file {} names process {pid}, which is running (another server?); \
                 stop it or choose another --pid-file",
                path.display()
            ),
            Existing::Foreign => bail!(
                "{} exists and is not a pid file; not replacing it (choose another --pid-file)",
                path.display()
            ),
        }
    }

    /// Write this process's pid to `path`, atomically (a reader sees the
    /// old file or the whole new one, never a partial pid).
    pub fn write(path: &Path) -> Result<PidFile> {
        Self::check(path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let what = || format!("writing the pid file {}", path.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".disksynth-pid")
            .tempfile_in(dir)
            .with_context(what)?;
        writeln!(tmp, "{}", std::process::id()).with_context(what)?;
        use std::os::unix::fs::PermissionsExt;
        // Readable by all, as pid files are (tempfile creates 0600).
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(what)?;
        tmp.persist(path).map_err(|e| e.error).with_context(what)?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a server started after us with the same file (after
        // ours looked stale to it) keeps its.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// systemd's notification socket (`$NOTIFY_SOCKET`, sd_notify(3)), taken
/// out of the environment so that commands this process runs (`--run`,
/// tmpdisk's `--command`) do not report for it.
pub fn take_notify_socket() -> Option<OsString> {
    let s = std::env::var_os("NOTIFY_SOCKET")?;
    std::env::remove_var("NOTIFY_SOCKET");
    (!s.is_empty()).then_some(s)
}

/// Send `msg` (`READY=1`, `STOPPING=1`) to the notification socket: one
/// datagram to a path, or to an abstract name for a leading `@`
/// (sd_notify(3)).
pub fn notify(socket: &std::ffi::OsStr, msg: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::SocketAddr;
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..])
            }
            #[cfg(not(target_os = "linux"))]
            bail!("abstract socket names (NOTIFY_SOCKET=@...) exist only on Linux")
        }
        Some(b'/') => SocketAddr::from_pathname(Path::new(socket)),
        _ => bail!(
            "NOTIFY_SOCKET={} is neither a path nor an abstract name (@...)",
            socket.to_string_lossy()
        ),
    }
    .with_context(|| format!("NOTIFY_SOCKET={}", socket.to_string_lossy()))?;
    let sock = UnixDatagram::unbound().context("making a socket for sd_notify")?;
    sock.send_to_addr(msg.as_bytes(), &addr)
        .with_context(|| format!("telling {} {msg:?}", socket.to_string_lossy()))?;
    Ok(())
}

/// Stop the server (through `stop`) when the process that started this
/// one exits. On Linux the kernel sends SIGTERM then (`PR_SET_PDEATHSIG`,
/// prctl(2)), which the server's SIGTERM handling turns into an orderly
/// stop; the signal is tied to the parent *thread*, as in nbdkit. Call it
/// after the SIGTERM handler is installed. Elsewhere a thread checks the
/// parent's pid every second.
pub fn exit_with_parent(stop: ShutdownHandle) -> Result<()> {
    let parent = rustix::process::getppid();
    #[cfg(target_os = "linux")]
    {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
            .context("--exit-with-parent: prctl(PR_SET_PDEATHSIG)")?;
        // The parent may have gone before the signal was asked for.
        if rustix::process::getppid() != parent {
            log::info!("the parent process is gone: stopping (--exit-with-parent)");
            stop.trigger();
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::thread::Builder::new()
            .name("exit-with-parent".into())
            .spawn(move || loop {
                if rustix::process::getppid() != parent {
                    log::info!("the parent process is gone: stopping (--exit-with-parent)");
                    stop.trigger();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            })
            .context("--exit-with-parent: starting the watching thread")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pid_files_of_live_processes_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        PidFile::check(&p).unwrap();
        // Our parent (cargo's test runner or a shell) is running.
        let parent = rustix::process::getppid().unwrap().as_raw_nonzero().get();
        std::fs::write(&p, format!("{parent}\n")).unwrap();
        let e = PidFile::check(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("names process {parent}")), "{e}");
        std::fs::write(&p, "important notes\n").unwrap();
        let e = PidFile::check(&p).unwrap_err().to_string();
        assert!(e.contains("is not a pid file"), "{e}");
        std::fs::write(&p, "").unwrap();
        PidFile::check(&p).unwrap();
        // pid_max is at most 2^22 on Linux: this one cannot be running.
        std::fs::write(&p, "2147483647\n").unwrap();
        PidFile::check(&p).unwrap();
        {
            let _f = PidFile::write(&p).unwrap();
            let text = std::fs::read_to_string(&p).unwrap();
            assert_eq!(text, format!("{}\n", std::process::id()));
        }
        assert!(!p.exists(), "removed when dropped");
        // A directory or a FIFO is not ours to replace (and a FIFO is not opened: that
        // would block).
        std::fs::create_dir(&p).unwrap();
        assert!(PidFile::check(&p).is_err());
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = PidFile::check(&fifo).unwrap_err().to_string();
        assert!(e.contains("is not a pid file"), "{e}");
    }

    #[test]
    fn notify_reaches_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("disksynth-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let rx = UnixDatagram::bind_addr(&addr).unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            notify(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").unwrap();
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
        assert!(notify(std::ffi::OsStr::new("relative"), "READY=1").is_err());
    }
}
