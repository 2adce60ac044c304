//! The block-device trait every generator, source and filter implements,
//! and the [`Export`] that hands devices to client connections.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use bitflags::bitflags;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::extent::{ExtentKind, ExtentList};
use crate::filter::{Admission, Client};
use crate::host::ReadCheck;

bitflags! {
    /// What a device can do beyond reading. Exporters advertise these
    /// (NBD transmission flags) and never call what is not set.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Caps: u32 {
        /// `write_at` works.
        const WRITE = 1 << 0;
        /// `flush` makes written data durable (or there is nothing to make durable).
        const FLUSH = 1 << 1;
        /// `trim` may deallocate.
        const TRIM = 1 << 2;
        /// `write_zeroes` is efficient (not just writing a buffer of zeros).
        const ZERO = 1 << 3;
        /// `write_zeroes` with `fast` set can succeed.
        const FAST_ZERO = 1 << 4;
        /// `extents` says something more useful than "all data".
        const EXTENTS = 1 << 5;
        /// `cache` does real prefetching.
        const CACHE = 1 << 6;
        /// Several connections may share this device consistently: a flush
        /// on one covers writes completed on all (NBD `CAN_MULTI_CONN`).
        const MULTI_CONN = 1 << 7;
    }
}

/// Request-size constraints (NBD `INFO_BLOCK_SIZE`, proto.md "Block size
/// constraints"): offsets and lengths are multiples of `minimum`,
/// `preferred` avoids read-modify-write, payloads never exceed `maximum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest addressable unit (a power of two, 1..=64 KiB).
    pub minimum: u32,
    /// Size that avoids read-modify-write cycles.
    pub preferred: u32,
    /// Largest payload of one read or write.
    pub maximum: u32,
}

impl Default for BlockSize {
    fn default() -> Self {
        BlockSize {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }
}

/// Flags for [`BlockDev::write_zeroes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range may be deallocated rather than written (NBD: no `NO_HOLE`).
    pub may_trim: bool,
    /// Fail with [`crate::ErrorKind::NotFast`] unless zeroing is fast (NBD `FAST_ZERO`).
    pub fast: bool,
}

/// A piece of a read answer that an exporter can send without copying.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// This many bytes of zeros.
    Zero(u64),
    /// In-memory bytes (reference-counted, no copy).
    Bytes(Bytes),
    /// A range of a host file (an exporter may `sendfile` it).
    File {
        /// The host file.
        file: Arc<File>,
        /// Where in the file.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// For a host file someone else may change: run it after reading
        /// (or sending) the bytes, and fail the read if it fails.
        check: Option<ReadCheck>,
    },
}

impl ReadChunk {
    /// Bytes covered by this chunk.
    pub fn len(&self) -> u64 {
        match self {
            ReadChunk::Zero(n) => *n,
            ReadChunk::Bytes(b) => b.len() as u64,
            ReadChunk::File { len, .. } => *len,
        }
    }

    /// Whether the chunk covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a range of a device holds, as [`BlockDev::describe`] tells it to
/// people (the web view, `/api/map`): never used to read or write bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Where the range starts on the device asked.
    pub offset: u64,
    /// Its length in bytes (never zero).
    pub len: u64,
    /// What it holds.
    pub holds: Holds,
    /// The component of a composed disk the range lies in (a partition's
    /// region name, "ESP"), when the range belongs to a device inside it.
    pub within: Option<Arc<str>>,
}

/// What lives in a [`Named`] range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// Bytes of a host file, from `offset` in it.
    File {
        /// The host file's path.
        path: Arc<Path>,
        /// Offset in the file of the range's first byte.
        offset: u64,
    },
    /// Something a generator made, by the name it gave it ("boot sector",
    /// "FAT 1", "inode table group 3", "directory /etc").
    Structure(Arc<str>),
    /// Zeros nothing lives in (free space, padding), by its region's name.
    Free(Arc<str>),
    /// The device does not say (a raw image, a remote disk).
    Unknown,
}

/// A virtual block device. Offsets and lengths are bytes.
///
/// All methods take `&self`: devices are shared between connections and
/// worker threads, so state lives behind locks or atomics. Callers check
/// bounds against [`BlockDev::size`] before calling; implementations check
/// again and answer [`crate::ErrorKind::OutOfBounds`] rather than panic.
pub trait BlockDev: Send + Sync + fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Fill all of `buf` with the bytes at `offset`, or fail.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write all of `buf` at `offset`.
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::read_only())
    }

    /// Make completed writes durable.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Advise that `len` bytes at `offset` are no longer needed. Reads of a
    /// trimmed range may return old data or zeros. Default: no-op when
    /// writable (trim is advisory), `ReadOnly` otherwise.
    fn trim(&self, _offset: u64, _len: u64) -> Result<()> {
        if self.caps().contains(Caps::WRITE) {
            Ok(())
        } else {
            Err(Error::read_only())
        }
    }

    /// Make `len` bytes at `offset` read as zeros. Default: write zeros
    /// (never fast).
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        if !self.caps().contains(Caps::WRITE) {
            return Err(Error::read_only());
        }
        if flags.fast {
            return Err(Error::not_fast());
        }
        write_zero_buffers(self, offset, len)
    }

    /// Hint that `len` bytes at `offset` will be read soon.
    fn cache(&self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }

    /// Describe `len` bytes at `offset` into `out` (which starts at
    /// `offset`). May stop early when `out` is full; must cover at least
    /// one byte when `len > 0`. Default: all data (correct, never optimal).
    fn extents(&self, _offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        out.push(len, ExtentKind::Data);
        Ok(())
    }

    /// Describe where the `len` bytes at `offset` live, so an exporter can
    /// send them without copying; the chunks must cover exactly `len`
    /// bytes. Returns `false` (and pushes nothing) when the device has no
    /// such view; the caller then uses `read_at`.
    fn read_chunks(&self, _offset: u64, _len: u64, _out: &mut Vec<ReadChunk>) -> Result<bool> {
        Ok(false)
    }

    /// Say what lives in the `len` bytes at `offset` (within the device),
    /// for people: push pieces covering the range in order, offsets on this
    /// device. Reads nothing and has no side effects. Default: one
    /// [`Holds::Unknown`] piece. A [`RegionMap`](crate::RegionMap) names
    /// its regions and asks its inner devices; layers and the overlay ask
    /// the device beneath.
    fn describe(&self, offset: u64, len: u64, out: &mut Vec<Named>) -> Result<()> {
        crate::error::check_range(offset, len, self.size())?;
        if len > 0 {
            out.push(Named {
                offset,
                len,
                holds: Holds::Unknown,
                within: None,
            });
        }
        Ok(())
    }

    /// What the device can do.
    fn caps(&self) -> Caps {
        Caps::empty()
    }

    /// Request-size constraints.
    fn block_size(&self) -> BlockSize {
        BlockSize::default()
    }
}

/// Write zeros through `write_at`, a bounded buffer at a time.
pub fn write_zero_buffers<D: BlockDev + ?Sized>(dev: &D, mut offset: u64, len: u64) -> Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(ZEROS.len() as u64) as usize;
        dev.write_at(&ZEROS[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

impl<D: BlockDev + ?Sized> BlockDev for Arc<D> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        (**self).trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        (**self).write_zeroes(offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        (**self).cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        (**self).extents(offset, len, out)
    }
    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        (**self).read_chunks(offset, len, out)
    }
    fn describe(&self, offset: u64, len: u64, out: &mut Vec<Named>) -> Result<()> {
        (**self).describe(offset, len, out)
    }
    fn caps(&self) -> Caps {
        (**self).caps()
    }
    fn block_size(&self) -> BlockSize {
        (**self).block_size()
    }
}

/// What an exporter serves: it describes the device without opening it
/// (NBD `INFO` must have no side effects) and opens one per client
/// connection. Most exports share one device between all clients
/// ([`SharedExport`]); tmpdisk hands every client its own.
pub trait Export: Send + Sync + fmt::Debug {
    /// Size every opened device will have.
    fn size(&self) -> u64;
    /// Capabilities every opened device will have, including
    /// [`Caps::MULTI_CONN`] when sharing between connections is consistent.
    fn caps(&self) -> Caps;
    /// Request-size constraints.
    fn block_size(&self) -> BlockSize {
        BlockSize::default()
    }
    /// One line for humans (NBD `INFO_DESCRIPTION`).
    fn description(&self) -> String;
    /// Open the device for one client connection.
    fn open(&self) -> Result<Arc<dyn BlockDev>>;
    /// [`open`](Export::open) for a client that may leave while it waits:
    /// `gone()` says, without blocking, whether it has. An export whose
    /// open can take long (tmpdisk running a command) polls it and gives
    /// up, so a departed client holds nothing; others need not override
    /// this.
    fn open_for(&self, gone: &dyn Fn() -> bool) -> Result<Arc<dyn BlockDev>> {
        let _ = gone;
        self.open()
    }
    /// Whether `client` may connect at all, asked before anything is
    /// opened; `Err(reason)` refuses it (NBD `ERR_POLICY`, reason told).
    /// What the admission holds lasts as long as the client's device.
    fn admit(&self, client: &Client) -> std::result::Result<Admission, String> {
        let _ = client;
        Ok(Admission::default())
    }
    /// [`open_for`](Export::open_for) a known client: what a server calls.
    /// Exports with per-client layers ([`crate::FilteredExport`]) use it.
    fn open_client(&self, client: &Client, gone: &dyn Fn() -> bool) -> Result<Arc<dyn BlockDev>> {
        let _ = client;
        self.open_for(gone)
    }
}

/// An export that hands every client the same device.
#[derive(Debug, Clone)]
pub struct SharedExport {
    dev: Arc<dyn BlockDev>,
    description: String,
}

impl SharedExport {
    /// Share `dev` between all connections.
    pub fn new(dev: Arc<dyn BlockDev>, description: impl Into<String>) -> Self {
        SharedExport {
            dev,
            description: description.into(),
        }
    }

    /// The shared device.
    pub fn device(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }
}

impl Export for SharedExport {
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn caps(&self) -> Caps {
        // One device behind every connection: a flush through any of them
        // reaches everything written through all of them.
        self.dev.caps() | Caps::MULTI_CONN
    }
    fn block_size(&self) -> BlockSize {
        self.dev.block_size()
    }
    fn description(&self) -> String {
        self.description.clone()
    }
    fn open(&self) -> Result<Arc<dyn BlockDev>> {
        Ok(self.dev.clone())
    }
}
