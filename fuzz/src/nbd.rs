//! The NBD server over an in-memory stream: everything a client sends, from the first byte of the
//! handshake to the last request, comes from the fuzzer.
//!
//! Input: one byte of server settings, then the bytes the client sends. They are written to one
//! end of a `UnixStream::pair()`, which is then shut down for writing, and the other end is
//! served by `Server::serve_connection`, the code every real connection runs; the client's end is
//! drained concurrently so replies never block the server. The server must end when the input
//! ends.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use nbd_export::{Server, ServerOptions, Stream};
use synth::{BlockDev, SharedExport};

/// Size of the exported device: small, so reads stay cheap, but more than one overlay page.
pub const EXPORT_SIZE: u64 = 1 << 20;

/// The small per-connection budget: the largest payload a request may carry (the default maximum
/// block size, 32 MiB), so that a few requests in flight already wait for each other. (Below
/// that, one request larger than the whole budget waits forever, issue 14: the fuzzer finds that
/// at once and would stop there; see `crashes/README.md`. Once that is fixed, make this 64 KiB.)
/// `DISKSYNTH_FUZZ_NBD_SMALL_BUDGET=BYTES` overrides it, to reproduce those inputs.
pub fn small_budget() -> u64 {
    static BUDGET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("DISKSYNTH_FUZZ_NBD_SMALL_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::from(synth::BlockSize::default().maximum))
    })
}

/// Server settings from the first input byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bit 0: refuse writes.
    pub readonly: bool,
    /// Bit 1: a read-only pattern device instead of a writable sparse memory disk.
    pub pattern: bool,
    /// Bit 2: the export is named `disk` (otherwise the empty name).
    pub named: bool,
    /// Bit 3: one worker thread per connection (otherwise the default).
    pub one_thread: bool,
    /// Bit 4: a per-connection payload budget of [`small_budget`] bytes (otherwise the
    /// default).
    pub small_budget: bool,
}

impl Settings {
    /// Decode the settings byte.
    pub fn from_byte(b: u8) -> Settings {
        Settings {
            readonly: b & 1 != 0,
            pattern: b & 2 != 0,
            named: b & 4 != 0,
            one_thread: b & 8 != 0,
            small_budget: b & 16 != 0,
        }
    }

    /// Encode the settings byte.
    pub fn to_byte(self) -> u8 {
        u8::from(self.readonly)
            | u8::from(self.pattern) << 1
            | u8::from(self.named) << 2
            | u8::from(self.one_thread) << 3
            | u8::from(self.small_budget) << 4
    }
}

/// Serve one connection whose client sends `input[1..]` (settings in `input[0]`); return what
/// the server sent back.
pub fn session(input: &[u8]) -> Vec<u8> {
    let Some((&settings, client_bytes)) = input.split_first() else {
        return Vec::new();
    };
    let s = Settings::from_byte(settings);
    let dev: Arc<dyn BlockDev> = if s.pattern {
        Arc::new(sources::PatternDev::new(EXPORT_SIZE))
    } else {
        Arc::new(sources::memory(EXPORT_SIZE).expect("a memory disk"))
    };
    let export = Arc::new(SharedExport::new(dev, "fuzz"));
    let defaults = ServerOptions::default();
    let opts = ServerOptions {
        export_name: if s.named {
            "disk".into()
        } else {
            String::new()
        },
        readonly: s.readonly,
        max_threads: if s.one_thread {
            1
        } else {
            defaults.max_threads
        },
        conn_budget: if s.small_budget {
            small_budget()
        } else {
            defaults.conn_budget
        },
        ..defaults
    };
    let server = Server::new(export, opts).expect("a server");
    let (client, served) = UnixStream::pair().expect("a socket pair");

    let writer = {
        let mut client = client.try_clone().expect("a second handle");
        let bytes = client_bytes.to_vec();
        thread::spawn(move || {
            // The server may stop reading (a bad handshake ends the connection): then the
            // write fails, which is fine.
            let _ = client.write_all(&bytes);
            let _ = client.shutdown(Shutdown::Write);
        })
    };
    let reader = {
        let mut client = client;
        thread::spawn(move || {
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out);
            out
        })
    };
    server.serve_connection(Stream::Unix(served));
    writer.join().expect("the writer thread");
    reader.join().expect("the reader thread")
}

/// Client-side bytes of an NBD session, for seeds and tests (fixed newstyle, big-endian).
#[derive(Debug, Default, Clone)]
pub struct ClientScript {
    /// The bytes so far.
    pub bytes: Vec<u8>,
    /// Extended headers were negotiated (requests are 32 bytes, lengths 64-bit).
    pub extended: bool,
}

impl ClientScript {
    /// Start with the client flags of the handshake.
    pub fn new(client_flags: u32) -> ClientScript {
        ClientScript {
            bytes: client_flags.to_be_bytes().to_vec(),
            extended: false,
        }
    }

    /// An option with its payload.
    pub fn option(&mut self, opt: u32, payload: &[u8]) -> &mut Self {
        self.bytes
            .extend_from_slice(&nbd_export::proto::IHAVEOPT.to_be_bytes());
        self.bytes.extend_from_slice(&opt.to_be_bytes());
        self.bytes
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(payload);
        self
    }

    /// `NBD_OPT_GO` / `NBD_OPT_INFO` payload: name and info requests.
    pub fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }

    /// `NBD_OPT_{LIST,SET}_META_CONTEXT` payload.
    pub fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        p
    }

    /// A transmission request (compact or extended header as negotiated).
    pub fn request(
        &mut self,
        flags: u16,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u64,
    ) -> &mut Self {
        use nbd_export::proto::{EXTENDED_REQUEST_MAGIC, REQUEST_MAGIC};
        if self.extended {
            self.bytes
                .extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        } else {
            self.bytes.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        self.bytes.extend_from_slice(&flags.to_be_bytes());
        self.bytes.extend_from_slice(&cmd.to_be_bytes());
        self.bytes.extend_from_slice(&handle.to_be_bytes());
        self.bytes.extend_from_slice(&offset.to_be_bytes());
        if self.extended {
            self.bytes.extend_from_slice(&len.to_be_bytes());
        } else {
            self.bytes.extend_from_slice(&(len as u32).to_be_bytes());
        }
        self
    }

    /// Raw bytes (a write's payload).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    /// The fuzz input: settings byte, then the client's bytes.
    pub fn input(&self, settings: Settings) -> Vec<u8> {
        let mut v = vec![settings.to_byte()];
        v.extend_from_slice(&self.bytes);
        v
    }
}
