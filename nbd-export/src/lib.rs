//! Exporters for disksynth: an NBD server and raw image output.
//!
//! - [`Server`]: NBD per proto.md, one export or a [`Catalog`] of named
//!   ones: fixed newstyle handshake, structured
//!   replies with sparse reads, extended headers, `base:allocation`
//!   block status, many requests in flight and answered out of order.
//! - [`NbdClient`]: a small read-only NBD client (an export as a
//!   [`synth::BlockDev`]) for `nbd://` and `nbd+unix://` URIs ([`NbdUri`]).
//! - [`write_raw`]: the whole device as a sparse raw image (or to stdout).
//!
//! ```no_run
//! use std::sync::Arc;
//! use nbd_export::{Listener, Server, ServerOptions};
//! use synth::SharedExport;
//!
//! let dev = Arc::new(sources::PatternDev::new(64 << 20));
//! let export = Arc::new(SharedExport::new(dev, "pattern"));
//! let server = Server::new(export, ServerOptions::default())?;
//! let listener = Listener::Tcp(std::net::TcpListener::bind("127.0.0.1:10809")?);
//! server.run(listener)?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod catalog;
mod client;
mod handshake;
mod limits;
pub mod proto;
mod raw;
mod refuse;
mod send;
mod server;
mod stream;
mod tls;
mod transmission;
mod uri;

pub use catalog::{Catalog, CatalogEntry, CatalogError};
pub use client::{ClientError, ClientOptions, NbdClient, MAX_OPTION_REPLY, MAX_READ_REQUEST};
pub use handshake::transmission_flags;
pub use limits::{
    connections_for, default_max_connections, descriptors_for, fd_limit, raise_fd_limit, FdLimit,
    FDS_PER_CONNECTION,
};
pub use raw::{
    temp_prefix, write_raw, write_raw_until, writes_in_place, RawError, RawOutput, RawStats,
};
pub use server::{Server, ServerConfig, ServerOptions, ShutdownHandle};
pub use stream::{Listener, Stream};
pub use tls::{TlsError, TlsFiles, TlsMode, TlsSetup};
pub use uri::{is_nbd_uri, Endpoint, NbdUri, DEFAULT_PORT};
