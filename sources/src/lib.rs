//! Plain disksynth sources: the devices behind `disksynth file|memory|zero|pattern`.
//!
//! - [`FileDev`]: a host file or block device (`pread`/`pwrite`, holes via
//!   `SEEK_DATA`/`SEEK_HOLE`, trim and zeroing via `fallocate`).
//! - [`memory`]: a sparse writable RAM disk.
//! - [`ZeroDev`]: all zeros.
//! - [`PatternDev`]: every 8-byte big-endian word holds its own offset.
//! - [`http::HttpDev`]: a remote file read with HTTP(S) range requests.
//! - [`tmpdisk::TmpdiskExport`]: a fresh throwaway disk for every client.
//!
//! ```
//! use synth::BlockDev;
//! let dev = sources::PatternDev::new(1 << 20);
//! let mut word = [0u8; 8];
//! dev.read_at(&mut word, 4096)?;
//! assert_eq!(u64::from_be_bytes(word), 4096);
//! # Ok::<(), synth::Error>(())
//! ```

mod file;
pub mod http;
mod plain;
pub mod tmpdisk;

pub use file::{FileDev, FileSourceError};
pub use plain::{memory, PatternDev, ZeroDev};
