//! The serving modes: TCP, Unix socket, captive `--run`, systemd socket
//! activation; signals; the start-up banner.

use std::env;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use log::info;
use nbd_export::{
    Catalog, CatalogEntry, FdLimit, Listener, Server, ServerOptions, TlsMode, TlsSetup,
};
use synth::Export;

use crate::args::ExportArgs;
use crate::service::{self, PidFile};

/// Where to listen.
#[derive(Debug)]
pub enum Endpoint {
    /// TCP on this address.
    Tcp(SocketAddr),
    /// A Unix socket at this path (`None`: a private temporary one).
    Unix(Option<PathBuf>),
    /// A command to run against the server: on this endpoint (TCP or
    /// Unix), or on a private Unix socket.
    Run(String, Option<Box<Endpoint>>),
    /// A listening socket passed by systemd.
    Systemd,
}

/// Default NBD port (IANA).
pub const NBD_PORT: u16 = 10809;

/// Where `-i HOST -p PORT` listens: an address as given (`::1` or
/// `[::1]`), or a host name resolved now; a name with several addresses
/// listens on the first, and says which.
pub fn tcp_endpoint(host: Option<&str>, port: Option<u16>) -> Result<Endpoint> {
    let port = port.unwrap_or(NBD_PORT);
    let Some(host) = host else {
        return Ok(Endpoint::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    };
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(Endpoint::Tcp(SocketAddr::new(ip, port)));
    }
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve -i {host}"))?
    {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let Some(&first) = addrs.first() else {
        bail!("-i {host} resolves to no address");
    };
    if addrs.len() > 1 {
        let all: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        log::warn!(
            "{host} has {} addresses ({}); listening on the first, {} (give -i an address to \
             choose)",
            addrs.len(),
            all.join(", "),
            first.ip()
        );
    }
    Ok(Endpoint::Tcp(first))
}

/// Percent-encode an export name for a URI path (RFC 3986 unreserved kept).
fn encode_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tcp_uri(addr: SocketAddr, name: &str) -> String {
    let host = match addr {
        // A zone (scope) is `%25` then its id inside the brackets (RFC 6874).
        SocketAddr::V6(a) if a.scope_id() != 0 => format!("[{}%25{}]", a.ip(), a.scope_id()),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
        SocketAddr::V4(a) => a.ip().to_string(),
    };
    let path = if name.is_empty() {
        String::new()
    } else {
        format!("/{}", encode_name(name))
    };
    format!("nbd://{host}:{}{path}", addr.port())
}

/// The URI of a Unix socket export. The socket path is percent-encoded
/// (all but RFC 3986 unreserved characters and `/`, byte by byte): a space,
/// `&`, `#`, `%` or `?` in it would otherwise end or split the query, and
/// nbdinfo, qemu and our own parser decode it back.
fn unix_uri(path: &Path, name: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut socket = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            socket.push(b as char);
        } else {
            socket.push_str(&format!("%{b:02X}"));
        }
    }
    format!("nbd+unix:///{}?socket={socket}", encode_name(name))
}

/// Listen on `addr`, saying what a failure most likely means: only a port
/// in use points at another server; an address this host does not have is
/// a wrong -i, not a busy port.
fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    use std::io::ErrorKind;
    TcpListener::bind(addr).map_err(|e| {
        let ip = addr.ip();
        let why = match e.kind() {
            ErrorKind::AddrInUse => "the port is in use (is another NBD server running there? \
                                     choose another with -p PORT, or -p 0 for a free one)"
                .to_string(),
            ErrorKind::AddrNotAvailable => format!(
                "{ip} is not an address of this host (give one of its addresses with -i, \
                 or {} for all of them)",
                if ip.is_ipv6() { "::" } else { "0.0.0.0" }
            ),
            ErrorKind::PermissionDenied if addr.port() < 1024 => {
                "ports below 1024 need privileges (choose another with -p PORT)".to_string()
            }
            _ => String::new(),
        };
        let context = if why.is_empty() {
            format!("cannot listen on {addr}")
        } else {
            format!("cannot listen on {addr}: {why}")
        };
        anyhow::Error::new(e).context(context)
    })
}

/// The `-drive` value that gives qemu the export: the URI, except for a
/// socket path holding `&` or `%`. qemu (10.0) decodes a URI's query twice,
/// so no encoding of those reaches it intact (libnbd, which decodes once,
/// is right); its own option syntax needs no URI.
fn qemu_drive(uri: &str, socket: Option<&Path>, name: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let comma = |s: &str| s.replace(',', ",,");
    match socket {
        Some(p) if p.as_os_str().as_bytes().iter().any(|b| b"&%".contains(b)) => {
            let export = if name.is_empty() {
                String::new()
            } else {
                format!(",file.export={}", comma(name))
            };
            format!(
                "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={}{export},\
                 if=virtio",
                comma(&p.display().to_string())
            )
        }
        _ => format!("file={},format=raw,if=virtio", comma(uri)),
    }
}

/// qemu's options for a server that requires TLS: qemu takes no `nbds://`
/// URI, only its own option syntax with a `tls-creds-x509` object, whose
/// directory holds ca-cert.pem (and client-cert.pem, client-key.pem for
/// --tls-verify-peer). The server's own --tls-certificates directory is
/// printed when given (it works on this host); else a placeholder. Over a
/// Unix socket qemu must be told the name to check the certificate
/// against: the certificate's CN (`cn`).
fn qemu_tls_drive(
    listener: &Listener,
    name: &str,
    dir: Option<&Path>,
    cn: Option<&str>,
) -> Option<String> {
    let comma = |s: &str| s.replace(',', ",,");
    let server = match listener {
        Listener::Tcp(l) => {
            let a = l.local_addr().ok()?;
            let host = if a.ip().is_unspecified() {
                "HOST".to_string()
            } else {
                a.ip().to_string()
            };
            format!(
                "file.server.type=inet,file.server.host={host},file.server.port={}",
                a.port()
            )
        }
        Listener::Unix(l) => {
            let a = l.local_addr().ok()?;
            let p = a.as_pathname()?;
            format!(
                "file.server.type=unix,file.server.path={},file.tls-hostname={}",
                comma(&p.display().to_string()),
                comma(cn.unwrap_or("NAME-IN-THE-CERTIFICATE"))
            )
        }
    };
    let export = if name.is_empty() {
        String::new()
    } else {
        format!(",file.export={}", comma(name))
    };
    let dir = dir.map_or_else(
        || "DIR-WITH-ca-cert.pem".to_string(),
        |d| comma(&d.display().to_string()),
    );
    Some(format!(
        "-object tls-creds-x509,id=tls0,dir={dir},endpoint=client \
         -drive driver=raw,file.driver=nbd,{server}{export},file.tls-creds=tls0,if=virtio"
    ))
}

/// Bind a Unix socket at `path`, replacing a stale socket left by a dead
/// server but never a live one or a non-socket file.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; choose another path for -U",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use by another server; choose another path for -U",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))
}

/// Mark every descriptor this process inherited beyond 0-2 close-on-exec,
/// so that no command it starts (`--run`, tmpdisk's `--command`) gets them:
/// a job server's pipes, a shell's saved descriptors, a passed socket. Our
/// own descriptors are close-on-exec already (std and rustix open them so).
/// Call first thing in `main`, while the process has one thread.
pub fn inherited_fds_close_on_exec() {
    use std::os::fd::BorrowedFd;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&n| n > 2)
        .collect();
    for fd in fds {
        // The listing's own descriptor was among them and is closed now.
        if std::fs::read_link(format!("/proc/self/fd/{fd}")).is_err() {
            continue;
        }
        // SAFETY: `fd` is open (just checked) and stays open while borrowed:
        // the process has a single thread here, and nothing between the
        // check and the two fcntl calls closes descriptors. fcntl(F_GETFD /
        // F_SETFD) only changes the close-on-exec flag of the descriptor; it
        // touches no memory and takes no ownership.
        #[allow(unsafe_code)]
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = rustix::io::fcntl_getfd(borrowed) {
            let _ = rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC);
        }
    }
}

/// Take the listening socket systemd passed as fd 3, if it is ours
/// (sd_listen_fds(3): `LISTEN_PID` names this process, `LISTEN_FDS` >= 1).
pub fn systemd_listener() -> Result<Option<Listener>> {
    let ours = env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !ours || count == 0 {
        return Ok(None);
    }
    // Children (the --run command) must not think the socket is theirs.
    env::remove_var("LISTEN_PID");
    env::remove_var("LISTEN_FDS");
    env::remove_var("LISTEN_FDNAMES");
    if count > 1 {
        log::warn!("systemd passed {count} sockets; serving the first (fd 3)");
    }
    // Check fd 3 is an open socket before taking ownership of it
    // (stat through /proc needs no unsafe code).
    let meta =
        std::fs::metadata("/proc/self/fd/3").context("LISTEN_FDS is set but fd 3 is not open")?;
    if !meta.file_type().is_socket() {
        bail!("LISTEN_FDS is set but fd 3 is not a socket");
    }
    // SAFETY: sd_listen_fds(3) hands fd 3 to the process named by
    // LISTEN_PID (checked above to be us) and nothing else in this process
    // opens or owns fd 3 (we have not opened any file yet besides std's
    // 0-2, and fstat showed fd 3 is the passed socket). We take ownership
    // exactly once, since the environment variables are removed above.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let family = rustix::net::getsockname(&fd)
        .context("inspecting the socket systemd passed")?
        .address_family();
    Ok(Some(if family == rustix::net::AddressFamily::UNIX {
        Listener::Unix(UnixListener::from(fd))
    } else {
        Listener::Tcp(TcpListener::from(fd))
    }))
}

/// Serve `export` on `endpoint` until a signal (or the --run command ends).
pub fn serve(
    export: Arc<dyn Export>,
    endpoint: Endpoint,
    opts: ServerOptions,
    a: &ExportArgs,
    listener: Option<Listener>,
    fds: FdLimit,
) -> Result<ExitCode> {
    let catalog = Catalog::new(vec![CatalogEntry::new(opts.export_name.clone(), export)])
        .context("the export name (-e)")?;
    serve_catalog(catalog, endpoint, opts, a, listener, fds)
}

/// A bound listener and how clients reach it.
struct Bound {
    listener: Listener,
    /// The default export's URI (`None` for a socket from systemd).
    uri: Option<String>,
    /// The Unix socket's path.
    socket: Option<PathBuf>,
    /// The TCP port.
    port: Option<u16>,
    cleanup: SocketFile,
}

/// The socket file a server made, removed when dropped (also when serving
/// fails), with the private directory holding it.
struct SocketFile {
    unlink: Option<PathBuf>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = &self.unlink {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A private socket in a fresh temporary directory (for `--run` and `-U -`).
fn private_socket() -> Result<(PathBuf, tempfile::TempDir)> {
    let d = tempfile::Builder::new()
        .prefix("disksynth-")
        .tempdir()
        .context("making a directory for the private socket")?;
    Ok((d.path().join("nbd.sock"), d))
}

fn bind(endpoint: Endpoint, name: &str, systemd: Option<Listener>) -> Result<Bound> {
    let bound = |listener, uri, socket, port, unlink, tempdir| Bound {
        listener,
        uri,
        socket,
        port,
        cleanup: SocketFile {
            unlink,
            _tempdir: tempdir,
        },
    };
    Ok(match endpoint {
        Endpoint::Systemd => {
            let l = systemd.context("no socket from systemd")?;
            info!("serving the socket passed by systemd");
            bound(l, None, None, None, None, None)
        }
        Endpoint::Tcp(addr) => {
            let l = bind_tcp(addr)?;
            let real = l.local_addr()?;
            let uri = tcp_uri(real, name);
            bound(
                Listener::Tcp(l),
                Some(uri),
                None,
                Some(real.port()),
                None,
                None,
            )
        }
        Endpoint::Unix(path) => {
            let (path, tempdir) = match path {
                Some(p) => (p, None),
                None => {
                    let (p, d) = private_socket()?;
                    (p, Some(d))
                }
            };
            let l = bind_unix(&path)?;
            let uri = unix_uri(&path, name);
            bound(
                Listener::Unix(l),
                Some(uri),
                Some(path.clone()),
                None,
                Some(path),
                tempdir,
            )
        }
        Endpoint::Run(_, Some(on)) => bind(*on, name, systemd)?,
        Endpoint::Run(_, None) => bind(Endpoint::Unix(None), name, systemd)?,
    })
}

/// Serve the exports of `catalog` on `endpoint` until a signal (or the
/// --run command ends, or with --exit-last the last client leaves), with
/// the service habits `a` asks for: --pid-file, --exit-with-parent, and
/// readiness told to systemd when `$NOTIFY_SOCKET` is set.
pub fn serve_catalog(
    catalog: Catalog,
    endpoint: Endpoint,
    opts: ServerOptions,
    a: &ExportArgs,
    listener: Option<Listener>,
    fds: FdLimit,
) -> Result<ExitCode> {
    let name = catalog.default_entry().name.clone();
    // One line per export when there are several (one export is named by
    // the URI printed below); quoted, as a description may hold newlines.
    if catalog.entries().len() > 1 {
        for e in catalog.entries() {
            info!("export {:?}: {:?}", e.name, e.description());
        }
    }
    // Taken now, before any command is started, so none inherits it.
    let notify_socket = service::take_notify_socket();
    if let Some(p) = &a.pid_file {
        // Before listening: a second server is refused before it binds.
        PidFile::check(p)?;
    }
    let tls_mode = opts.tls_mode;
    let tls_dir = a.tls_certificates.clone();
    let tls_name = opts.tls.as_ref().and_then(|t| t.server_common_name());
    if let Some(setup) = opts.tls.clone() {
        reload_on_sighup(setup)?;
    }
    let server = Server::with_catalog(catalog, opts).context("starting the server")?;
    let stop = server.shutdown_handle();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, stop.wake_socket()?)
            .context("installing signal handlers")?;
    }
    {
        // `--filter exitlast`: its export's last client leaving stops the server.
        let stop = stop.clone();
        filters::when_last_client_leaves(Box::new(move || stop.trigger()));
    }
    if a.exit_with_parent {
        service::exit_with_parent(stop.clone())?;
    }

    let run_cmd = match &endpoint {
        Endpoint::Run(cmd, _) => Some(cmd.clone()),
        _ => None,
    };
    let Bound {
        listener,
        uri,
        socket,
        port,
        cleanup,
    } = bind(endpoint, &name, listener)?;
    warn_if_exposed(&listener, tls_mode);
    // nbdkit's habit: a server that requires TLS prints the TLS scheme.
    let uri = uri.map(|u| match tls_mode {
        TlsMode::Require => {
            u.replacen("nbd://", "nbds://", 1)
                .replacen("nbd+unix://", "nbds+unix://", 1)
        }
        _ => u,
    });
    // Listening: clients may connect from here on, so say so now.
    let _pid_file = a.pid_file.as_deref().map(PidFile::write).transpose()?;
    if let Some(s) = &notify_socket {
        let ready = format!("READY=1\nMAINPID={}", std::process::id());
        if let Err(e) = service::notify(s, &ready) {
            log::warn!("sd_notify: {e:#}");
        }
    }

    let code = if let Some(cmd) = &run_cmd {
        let env = RunEnv {
            uri: uri.as_deref().unwrap_or_default(),
            name: &name,
            socket: socket.as_deref(),
            port,
            tls: match tls_mode {
                TlsMode::Off => "0",
                TlsMode::On => "1",
                TlsMode::Require => "2",
            },
            fuse: a
                .fuse
                .as_ref()
                .and_then(|d| std::path::absolute(d.join(&a.fuse_name)).ok()),
        };
        run_captive(&server, listener, cmd, &env, fds.raised_from)?
    } else {
        if let Some(uri) = &uri {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{uri}");
            let drive = match tls_mode {
                TlsMode::Require => {
                    qemu_tls_drive(&listener, &name, tls_dir.as_deref(), tls_name.as_deref())
                }
                _ => None,
            };
            let drive = drive
                .unwrap_or_else(|| format!("-drive {}", qemu_drive(uri, socket.as_deref(), &name)));
            let _ = writeln!(out, "qemu-system-x86_64 {drive}");
            let _ = out.flush();
            info!("serving {uri}");
        }
        server.run(listener).context("serving")?;
        ExitCode::SUCCESS
    };
    if let Some(s) = &notify_socket {
        let _ = service::notify(s, "STOPPING=1");
    }
    drop(cleanup);
    Ok(code)
}

/// What a `--run` command is told (nbdkit's captive-mode variables).
struct RunEnv<'a> {
    uri: &'a str,
    name: &'a str,
    socket: Option<&'a Path>,
    port: Option<u16>,
    /// nbdkit's `$tls`: 0 off, 1 on, 2 require.
    tls: &'static str,
    /// `--fuse`'s file, mounted beside the server.
    fuse: Option<PathBuf>,
}

/// SIGHUP re-reads the TLS certificate, key and CA files (a renewed
/// certificate): new connections use them, connected clients keep their
/// sessions. A file that no longer parses keeps the old credentials.
fn reload_on_sighup(setup: Arc<TlsSetup>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match setup.reload() {
                    Ok(()) => info!(
                        "SIGHUP: TLS credentials reloaded from {}",
                        setup.files().cert.display()
                    ),
                    Err(e) => log::warn!("SIGHUP: keeping the TLS credentials in use: {e}"),
                }
            }
        })
        .context("starting the SIGHUP thread")?;
    Ok(())
}

/// Say so at start when clients on other hosts can connect in the clear.
fn warn_if_exposed(listener: &Listener, mode: TlsMode) {
    let Listener::Tcp(l) = listener else {
        return;
    };
    let Ok(addr) = l.local_addr() else {
        return;
    };
    if addr.ip().is_loopback() {
        return;
    }
    match mode {
        TlsMode::Off => log::warn!(
            "listening on {addr} without TLS: anyone who can reach it reads (and may write) \
             the disk in the clear; use --tls require with --tls-certificates"
        ),
        TlsMode::On => log::warn!(
            "listening on {addr} with --tls on: clients may still connect without TLS; \
             --tls require refuses them"
        ),
        TlsMode::Require => {}
    }
}

/// Captive mode: run `cmd` against the served socket; stop when it ends.
fn run_captive(
    server: &Arc<Server>,
    listener: Listener,
    cmd: &str,
    env: &RunEnv<'_>,
    fd_soft_limit: Option<u64>,
) -> Result<ExitCode> {
    let mut command = Command::new("/bin/sh");
    if let Some(soft) = fd_soft_limit {
        // The server raised its soft descriptor limit for its clients; the
        // command gets the limit it would have had (programs using
        // select() or closing every possible descriptor expect a small one).
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let restored = rustix::process::Rlimit {
            current: Some(soft),
            maximum: lim.maximum,
        };
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec, where
        // only async-signal-safe calls are sound. It makes one setrlimit
        // system call (rustix's direct syscall wrapper: no allocation, no
        // lock, no libc state) on values computed before the fork, and
        // touches nothing else. A failure is ignored (the child keeps the
        // raised limit, which is harmless for most programs).
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, restored);
                Ok(())
            });
        }
    }
    let mut child = command
        .arg("-c")
        .arg(cmd)
        .env("uri", env.uri)
        .env("nbd", env.uri)
        .env("exportname", env.name)
        .env(
            "unixsocket",
            env.socket
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_default(),
        )
        .env("port", env.port.map(|p| p.to_string()).unwrap_or_default())
        .env("tls", env.tls)
        .envs(env.fuse.iter().map(|f| ("fuse", f)))
        .spawn()
        .with_context(|| format!("cannot run {cmd:?} with /bin/sh"))?;
    let pid = child.id();
    let status = Arc::new(Mutex::new(None));
    let waiter = {
        let status = status.clone();
        let stop = server.shutdown_handle();
        std::thread::spawn(move || {
            let st = child.wait();
            *status.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
            stop.trigger();
        })
    };
    server.run(listener).context("serving")?;
    if status.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
        // Stopped by a signal while the command still runs: pass it on.
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    let _ = waiter.join();
    let st = status.lock().unwrap_or_else(|p| p.into_inner()).take();
    let st = st
        .context("the command's status was lost")?
        .context("waiting for the command")?;
    use std::os::unix::process::ExitStatusExt;
    let code = match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn addr(e: Endpoint) -> SocketAddr {
        match e {
            Endpoint::Tcp(a) => a,
            other => panic!("not TCP: {other:?}"),
        }
    }

    #[test]
    fn addresses_are_taken_as_given_and_names_resolved() {
        assert_eq!(
            addr(tcp_endpoint(None, None).unwrap()),
            "127.0.0.1:10809".parse().unwrap()
        );
        assert_eq!(
            addr(tcp_endpoint(Some("::1"), Some(7)).unwrap()),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            addr(tcp_endpoint(Some("[::]"), Some(0)).unwrap()),
            "[::]:0".parse().unwrap()
        );
        let a = addr(tcp_endpoint(Some("localhost"), Some(99)).unwrap());
        assert!(a.ip().is_loopback() && a.port() == 99, "{a}");
        let e = tcp_endpoint(Some("no-such-host.invalid"), None).unwrap_err();
        assert!(format!("{e:#}").contains("cannot resolve -i no-such-host.invalid"));
    }

    #[test]
    fn every_printed_uri_is_percent_encoded() {
        let v4: SocketAddr = "127.0.0.1:10809".parse().unwrap();
        assert_eq!(tcp_uri(v4, ""), "nbd://127.0.0.1:10809");
        assert_eq!(
            tcp_uri(v4, "a b/ü?#%"),
            "nbd://127.0.0.1:10809/a%20b%2F%C3%BC%3F%23%25"
        );
        let zoned = SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            10809,
            0,
            3,
        ));
        assert_eq!(tcp_uri(zoned, "d"), "nbd://[fe80::1%253]:10809/d");
        assert_eq!(
            unix_uri(Path::new("/tmp/a b&c%/s.sock"), "x y"),
            "nbd+unix:///x%20y?socket=/tmp/a%20b%26c%25/s.sock"
        );
    }
}
