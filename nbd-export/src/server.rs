//! The NBD server: accepts connections, runs the handshake, then serves
//! each connection until the client leaves or the server is told to stop.
//!
//! What a client may cost is bounded: the handshake has one deadline for
//! all of it (`handshake_limit`), at most `max_connections` clients are
//! served at once (the rest are refused politely, see `refuse.rs`), an idle
//! client holds one small thread and one descriptor, and running out of
//! descriptors sheds new connections instead of spinning on `accept`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use synth::Export;

use crate::catalog::{Catalog, CatalogError};
use crate::handshake::negotiate;
use crate::limits::default_max_connections;
use crate::refuse::Refusals;
use crate::stream::{Listener, Stream};
use crate::tls::{TlsMode, TlsSetup};
use crate::transmission::{ConnLimits, Connection};

/// Stack of a connection's own thread. It runs the handshake and then
/// waits for requests; device code (opening the export, serving requests)
/// runs on threads with the default stack. Small, so that thousands of
/// idle clients reserve little address space (what they touch is a few
/// KiB either way).
const CONN_STACK: usize = 256 * 1024;
/// After `accept` fails for want of descriptors or memory, the listener
/// rests this long before it is tried again, doubling up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How a server serves its export.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Export name (`""` always reaches the export too); for
    /// [`Server::new`] only: a [`Catalog`] names its exports itself.
    pub export_name: String,
    /// Refuse writes even if the device takes them.
    pub readonly: bool,
    /// Most worker threads per connection.
    pub max_threads: usize,
    /// Most payload bytes buffered per connection; also the largest request
    /// accepted (the maximum block size advertised is lowered to it).
    pub conn_budget: u64,
    /// A client must finish the whole handshake within this time.
    pub handshake_limit: Duration,
    /// Most clients served at once (handshake or transmission); more are
    /// refused with `NBD_REP_ERR_POLICY` and the reason.
    pub max_connections: usize,
    /// A connection's worker thread that finds nothing to read for this
    /// long leaves (the next request starts one again).
    pub worker_idle: Duration,
    /// Send host-file data with `sendfile` (zero copy).
    pub sendfile: bool,
    /// On stop, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
    /// Stop once the last client leaves, after at least one came (nbdkit's
    /// `exitlast` filter, `--exit-last`): a server started for one job.
    pub exit_last: bool,
    /// Whether `NBD_OPT_STARTTLS` is answered, and required.
    pub tls_mode: TlsMode,
    /// The credentials, needed unless `tls_mode` is `Off`.
    pub tls: Option<Arc<TlsSetup>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            export_name: String::new(),
            readonly: false,
            max_threads: 16,
            conn_budget: 64 << 20,
            // As qemu-nbd's --handshake-limit.
            handshake_limit: Duration::from_secs(10),
            max_connections: default_max_connections(),
            worker_idle: Duration::from_secs(3),
            sendfile: true,
            drain_timeout: Duration::from_secs(30),
            exit_last: false,
            tls_mode: TlsMode::Off,
            tls: None,
        }
    }
}

/// What the handshake needs to know.
#[derive(Debug)]
pub struct ServerConfig {
    /// The exports, by name.
    pub catalog: Catalog,
    /// Forced read-only (every export).
    pub readonly: bool,
    /// Per-connection payload budget: caps the maximum block size advertised.
    pub budget: u64,
    /// Whether `NBD_OPT_STARTTLS` is answered, and required.
    pub tls_mode: TlsMode,
    /// The credentials (always there unless `tls_mode` is `Off`).
    pub tls: Option<Arc<TlsSetup>>,
}

/// Wakes a running server's accept loop and makes it stop.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<UnixStream>,
}

impl ShutdownHandle {
    /// Ask the server to stop (safe to call many times, from any thread).
    pub fn trigger(&self) {
        let _ = (&*self.tx).write_all_nonblocking();
    }

    /// The socket that wakes the server, for a signal handler to write to
    /// (`signal_hook::low_level::pipe::register`).
    pub fn wake_socket(&self) -> io::Result<UnixStream> {
        self.tx.try_clone()
    }
}

trait WriteByte {
    fn write_all_nonblocking(self) -> io::Result<()>;
}

impl WriteByte for &UnixStream {
    fn write_all_nonblocking(self) -> io::Result<()> {
        use std::io::Write;
        let mut s = self;
        s.write(&[1]).map(drop)
    }
}

/// An NBD server for one export or a [`Catalog`] of them.
#[derive(Debug)]
pub struct Server {
    cfg: ServerConfig,
    opts: ServerOptions,
    wake_rx: UnixStream,
    wake_tx: Arc<UnixStream>,
    /// Every connection's socket, to shut down when the server stops.
    conns: Mutex<HashMap<u64, Arc<Stream>>>,
    next_id: AtomicU64,
    /// Connections accepted by [`Server::run`] and not yet finished.
    active: AtomicUsize,
}

impl From<CatalogError> for io::Error {
    fn from(e: CatalogError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Counts a connection as active until its thread ends.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The accept loop's bookkeeping beyond the listener.
#[derive(Default)]
struct AcceptState {
    refusals: Refusals,
    /// Clients refused since the server last had room (0: not full).
    refused: u64,
    /// Connections closed unserved since descriptors last ran out (0: none).
    shed: u64,
    /// A descriptor held in reserve: closed to make room to accept (and
    /// close) a connection when the limit is reached, so the backlog is
    /// shed rather than left to make `poll` return at once forever.
    spare: Option<File>,
    /// The listener is not polled until then, after a failed `accept`.
    resting_until: Option<Instant>,
    backoff: Duration,
}

impl Server {
    /// A server for `export`, named `opts.export_name`.
    pub fn new(export: Arc<dyn Export>, opts: ServerOptions) -> io::Result<Arc<Server>> {
        let name = opts.export_name.clone();
        if name.len() > crate::catalog::MAX_NAME {
            return Err(CatalogError::TooLong(name.len()).into());
        }
        Self::with_catalog(Catalog::single(name, export), opts)
    }

    /// A server for several named exports (`opts.export_name` is unused).
    pub fn with_catalog(catalog: Catalog, opts: ServerOptions) -> io::Result<Arc<Server>> {
        if opts.tls_mode != TlsMode::Off && opts.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS needs a certificate and its key (--tls-certificates DIR, or --tls-cert and --tls-key)",
            ));
        }
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let cfg = ServerConfig {
            catalog,
            readonly: opts.readonly,
            budget: opts.conn_budget,
            tls_mode: opts.tls_mode,
            tls: opts.tls.clone(),
        };
        Ok(Arc::new(Server {
            cfg,
            opts,
            wake_rx: rx,
            wake_tx: Arc::new(tx),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            active: AtomicUsize::new(0),
        }))
    }

    /// A handle that stops [`Server::run`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.wake_tx.clone(),
        }
    }

    fn limits(&self) -> ConnLimits {
        ConnLimits {
            max_threads: self.opts.max_threads.max(1),
            budget: self.opts.conn_budget,
            sendfile: self.opts.sendfile,
            worker_idle: self.opts.worker_idle,
        }
    }

    /// Serve one connected client to the end (handshake + transmission).
    /// Never panics on client input; errors end only this connection.
    pub fn serve_connection(&self, stream: Stream) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let who = stream.client_peer();
        let peer = format!("client {id} ({who})");
        stream.tune();
        let stream = Arc::new(stream);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stream.clone());
        debug!("{peer}: connected");
        // A panic is a bug (in a device, most likely); it ends this
        // connection, never the server, and the bookkeeping below still runs.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.serve_stream(stream.clone(), id, who, &peer)
        }));
        if served.is_err() {
            warn!("{peer}: closing after a panic (a bug: please report it)");
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn serve_stream(&self, stream: Arc<Stream>, id: u64, who: synth::Peer, peer: &str) {
        let client = synth::Client {
            id,
            peer: who,
            export: String::new(),
        };
        match negotiate(&stream, &self.cfg, client, peer, self.opts.handshake_limit) {
            Ok(Some(neg)) => match Connection::new(stream, neg, self.limits(), peer.to_string()) {
                Ok(conn) => conn.run(),
                Err(e) => warn!("{peer}: {e}"),
            },
            Ok(None) => debug!("{peer}: left during the handshake"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!("{peer}: hung up during the handshake")
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => warn!("{peer}: {e}; closing"),
            Err(e) => warn!("{peer}: handshake failed: {e}"),
        }
    }

    fn stop_requested(&self) -> bool {
        let mut b = [0u8; 16];
        matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0)
    }

    /// Accept and serve clients until [`ShutdownHandle::trigger`]; then
    /// stop accepting, let in-flight requests finish, and return.
    pub fn run(self: &Arc<Self>, listener: Listener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut handles = Vec::new();
        let why = self.full_message();
        let mut st = AcceptState {
            spare: open_spare(),
            backoff: BACKOFF_MIN,
            ..AcceptState::default()
        };
        loop {
            let now = Instant::now();
            if st.resting_until.is_some_and(|t| now >= t) {
                st.resting_until = None;
            }
            let listen = st.resting_until.is_none();
            let wake_at = [st.resting_until, st.refusals.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            let timeout = wake_at.map(|t| {
                Timespec::try_from(t.saturating_duration_since(now)).unwrap_or(Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                })
            });
            let mut fds = Vec::with_capacity(2 + st.refusals.len());
            fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
            if listen {
                fds.push(PollFd::new(&listener, PollFlags::IN));
            }
            fds.extend(st.refusals.streams().map(|s| PollFd::new(s, PollFlags::IN)));
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            let (wake, rest) = ready.split_first().unwrap_or((&false, &[]));
            let (incoming, refusing) = if listen {
                rest.split_first().map_or((false, rest), |(l, r)| (*l, r))
            } else {
                (false, rest)
            };
            if *wake && self.stop_requested() {
                break;
            }
            let now = Instant::now();
            st.refusals.serve(refusing, &why, now);
            if incoming {
                if let Some(h) = self.accept_one(&listener, &mut st, now) {
                    handles.retain(|h: &std::thread::JoinHandle<()>| !h.is_finished());
                    handles.push(h);
                }
            }
        }
        info!("stopping: no new connections; finishing in-flight requests");
        self.drain(handles);
        Ok(())
    }

    /// Why a client is refused when the server is full.
    fn full_message(&self) -> String {
        format!(
            "server busy: {} clients connected, the most it serves at once (--max-connections); \
             try again later",
            self.opts.max_connections
        )
    }

    /// Accept one connection and start serving it, or refuse it.
    fn accept_one(
        self: &Arc<Self>,
        listener: &Listener,
        st: &mut AcceptState,
        now: Instant,
    ) -> Option<std::thread::JoinHandle<()>> {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                self.accept_failed(listener, st, e, now);
                return None;
            }
        };
        if st.shed > 0 {
            info!(
                "descriptors are available again; {} connections were closed unserved",
                st.shed
            );
            st.shed = 0;
        }
        st.backoff = BACKOFF_MIN;
        if st.spare.is_none() {
            st.spare = open_spare();
        }
        // Accepted sockets may inherit non-blocking mode on some platforms;
        // transmission wants blocking I/O.
        if let Err(e) = stream.set_nonblocking(false) {
            debug!("accepted a connection that is already broken: {e}");
            return None;
        }
        let active = self.active.load(Ordering::SeqCst);
        if active >= self.opts.max_connections {
            if st.refused == 0 {
                warn!(
                    "{active} clients connected, the most --max-connections allows: \
                     refusing new clients until some leave"
                );
            }
            st.refused += 1;
            debug!("refusing {}: server full", stream.peer());
            st.refusals.add(stream, now, self.opts.handshake_limit);
            return None;
        }
        if st.refused > 0 {
            info!(
                "accepting clients again ({} refused while full)",
                st.refused
            );
            st.refused = 0;
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                {
                    let _active = Active(&me.active);
                    me.serve_connection(stream);
                }
                // Whoever leaves last stops the server; a client arriving
                // meanwhile is drained like any other at a stop.
                if me.opts.exit_last && me.active.load(Ordering::SeqCst) == 0 {
                    info!("the last client left: stopping (--exit-last)");
                    me.shutdown_handle().trigger();
                }
            });
        match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                // The closure (and its stream) is gone with the error: the
                // client sees the connection close.
                self.active.fetch_sub(1, Ordering::SeqCst);
                warn!("cannot start a connection thread: {e}; closing the connection");
                None
            }
        }
    }

    /// `accept` failed. Out of descriptors (`EMFILE`, `ENFILE`) or memory:
    /// close the spare descriptor, accept and close the waiting connection
    /// (it would otherwise keep the listener readable and the loop
    /// spinning), take the spare back; if that is not possible, rest the
    /// listener for a while. Logged once per shortage, not once per client.
    fn accept_failed(&self, listener: &Listener, st: &mut AcceptState, e: io::Error, now: Instant) {
        use rustix::io::Errno;
        let shortage = matches!(
            Errno::from_io_error(&e),
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
        );
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return,
            io::ErrorKind::ConnectionAborted => return,
            _ => {}
        }
        if !shortage {
            warn!("accept: {e}");
            self.rest(st, now);
            return;
        }
        if st.shed == 0 {
            warn!(
                "accept: {e}, with {} clients connected: closing new connections until \
                 descriptors free up (raise the limit with `ulimit -n`, or lower --max-connections)",
                self.active.load(Ordering::SeqCst)
            );
        }
        st.shed += 1;
        if st.spare.take().is_some() {
            if let Ok(s) = listener.accept() {
                drop(s);
            }
            st.spare = open_spare();
        }
        if st.spare.is_none() {
            self.rest(st, now);
        }
    }

    fn rest(&self, st: &mut AcceptState, now: Instant) {
        st.resting_until = Some(now + st.backoff);
        st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
    }

    /// Stop reading new requests on every connection; in-flight ones finish
    /// and are answered, then the connections close.
    fn drain(&self, handles: Vec<std::thread::JoinHandle<()>>) {
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = s.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + self.opts.drain_timeout;
        for h in handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The descriptor held in reserve for [`Server::accept_failed`].
fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}
