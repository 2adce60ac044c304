//! The NBD server: accepts connections, runs the handshake, then serves
//! each connection on its own thread (and workers while it has requests)
//! until the client leaves or the server is told to stop.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rustix::event::{poll, PollFd, PollFlags};
use synth::Export;

use crate::handshake::negotiate;
use crate::stream::{Listener, Stream};
use crate::transmission::{ConnLimits, Connection};

/// Stack of a connection's own thread. It runs the handshake and then
/// waits for requests; device code (opening the export, serving requests)
/// runs on threads with the default stack. Small, so that thousands of
/// idle clients reserve little address space (what they touch is a few
/// KiB either way).
const CONN_STACK: usize = 256 * 1024;

/// How a server serves its export.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Export name (`""` always reaches the export too).
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
    /// A connection's worker thread that finds nothing to read for this
    /// long leaves (the next request starts one again).
    pub worker_idle: Duration,
    /// Send host-file data with `sendfile` (zero copy).
    pub sendfile: bool,
    /// On stop, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
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
            worker_idle: Duration::from_secs(3),
            sendfile: true,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handshake needs to know.
#[derive(Debug)]
pub struct ServerConfig {
    /// The export.
    pub export: Arc<dyn Export>,
    /// Its name.
    pub export_name: String,
    /// Forced read-only.
    pub readonly: bool,
    /// Per-connection payload budget: caps the maximum block size advertised.
    pub budget: u64,
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

/// An NBD server for one export.
#[derive(Debug)]
pub struct Server {
    cfg: ServerConfig,
    opts: ServerOptions,
    wake_rx: UnixStream,
    wake_tx: Arc<UnixStream>,
    /// Every connection's socket, to shut down when the server stops.
    conns: Mutex<HashMap<u64, Arc<Stream>>>,
    next_id: AtomicU64,
}

impl Server {
    /// A server for `export`.
    pub fn new(export: Arc<dyn Export>, opts: ServerOptions) -> io::Result<Arc<Server>> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let cfg = ServerConfig {
            export,
            export_name: opts.export_name.clone(),
            readonly: opts.readonly,
            budget: opts.conn_budget,
        };
        Ok(Arc::new(Server {
            cfg,
            opts,
            wake_rx: rx,
            wake_tx: Arc::new(tx),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
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
        let peer = format!("client {id} ({})", stream.peer());
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
            self.serve_stream(stream.clone(), &peer)
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

    fn serve_stream(&self, stream: Arc<Stream>, peer: &str) {
        match negotiate(&stream, &self.cfg, peer, self.opts.handshake_limit) {
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
        loop {
            let mut fds = [
                PollFd::new(&listener, PollFlags::IN),
                PollFd::new(&self.wake_rx, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let wake = !fds[1].revents().is_empty();
            let incoming = !fds[0].revents().is_empty();
            if wake && self.stop_requested() {
                break;
            }
            if !incoming {
                continue;
            }
            match listener.accept() {
                Ok(stream) => {
                    // Accepted sockets may inherit non-blocking mode on some
                    // platforms; transmission wants blocking I/O.
                    set_blocking(&stream)?;
                    let me = self.clone();
                    let h = std::thread::Builder::new()
                        .name("nbd-conn".into())
                        .stack_size(CONN_STACK)
                        .spawn(move || me.serve_connection(stream));
                    match h {
                        Ok(h) => handles.push(h),
                        Err(e) => warn!("cannot start a connection thread: {e}"),
                    }
                    handles.retain(|h| !h.is_finished());
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE, ECONNABORTED...: log, breathe, keep serving.
                    warn!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        info!("stopping: no new connections; finishing in-flight requests");
        self.drain(handles);
        Ok(())
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

fn set_blocking(s: &Stream) -> io::Result<()> {
    match s {
        Stream::Tcp(t) => t.set_nonblocking(false),
        Stream::Unix(u) => u.set_nonblocking(false),
    }
}
