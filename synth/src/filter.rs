//! Layers: a [`Filter`] changes some answers of the device beneath it and
//! passes everything else down unchanged, like nbdkit's filters calling
//! `next->pread`. A filter implements only the methods it changes; the
//! defaults forward to `next`. [`Layer`] puts a filter over a device and is
//! itself a [`BlockDev`], so layers stack: the outermost filter sees a
//! request first.
//!
//! Some filters act per client rather than per device (a log naming the
//! connection, a per-connection rate): [`FilteredExport`] builds its stack
//! for each client as it is opened, from [`LayerFactory`]s that share their
//! state (counters, caches, budgets) between the clients. A factory can
//! also refuse a client before anything is opened ([`LayerFactory::admit`]),
//! which is how address policies and client limits are layers too.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::dev::{BlockDev, BlockSize, Caps, Export, Holds, Named, ReadChunk, ZeroFlags};
use crate::error::{Error, ErrorKind, Result};
use crate::extent::ExtentList;

/// A change to some of a device's answers. Every method gets the device
/// beneath (`next`) and by default passes the call to it unchanged.
pub trait Filter: Send + Sync + fmt::Debug {
    /// Size in bytes.
    fn size(&self, next: &dyn BlockDev) -> u64 {
        next.size()
    }
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
        next.read_at(buf, offset)
    }
    /// Write `buf` at `offset`.
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        next.write_at(buf, offset)
    }
    /// Make completed writes durable.
    fn flush(&self, next: &dyn BlockDev) -> Result<()> {
        next.flush()
    }
    /// Advise that a range is no longer needed.
    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        next.trim(offset, len)
    }
    /// Make a range read as zeros.
    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        next.write_zeroes(offset, len, flags)
    }
    /// Hint that a range will be read soon.
    fn cache(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        next.cache(offset, len)
    }
    /// Describe a range (see [`BlockDev::extents`]).
    fn extents(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut ExtentList,
    ) -> Result<()> {
        next.extents(offset, len, out)
    }
    /// Where a range's bytes live (see [`BlockDev::read_chunks`]). A filter
    /// that changes the bytes read must override this too (answering
    /// `Ok(false)` is always correct): the exporter prefers it to `read_at`.
    fn read_chunks(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadChunk>,
    ) -> Result<bool> {
        next.read_chunks(offset, len, out)
    }
    /// What lives in a range (see [`BlockDev::describe`]). By default the
    /// device beneath says, for the part of the range it has (a layer that
    /// makes the disk longer adds what it does not know); a filter that
    /// moves offsets ([`crate::Window`]) translates them.
    fn describe(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        out: &mut Vec<Named>,
    ) -> Result<()> {
        let below = next.size().saturating_sub(offset).min(len);
        if below > 0 {
            next.describe(offset, below, out)?;
        }
        if len > below {
            out.push(Named {
                offset: offset + below,
                len: len - below,
                holds: Holds::Unknown,
                within: None,
            });
        }
        Ok(())
    }
    /// What the device can do.
    fn caps(&self, next: &dyn BlockDev) -> Caps {
        next.caps()
    }
    /// Request-size constraints.
    fn block_size(&self, next: &dyn BlockDev) -> BlockSize {
        next.block_size()
    }
}

/// A [`Filter`] over a device: a device itself.
pub struct Layer<F> {
    filter: F,
    next: Arc<dyn BlockDev>,
}

impl<F: Filter> Layer<F> {
    /// `filter` over `next`.
    pub fn new(filter: F, next: Arc<dyn BlockDev>) -> Self {
        Layer { filter, next }
    }

    /// The filter.
    pub fn filter(&self) -> &F {
        &self.filter
    }

    /// The device beneath.
    pub fn next(&self) -> &Arc<dyn BlockDev> {
        &self.next
    }
}

impl<F: Filter> fmt::Debug for Layer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("filter", &self.filter)
            .field("next", &self.next)
            .finish()
    }
}

impl<F: Filter> BlockDev for Layer<F> {
    fn size(&self) -> u64 {
        self.filter.size(&*self.next)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.filter.read_at(&*self.next, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.filter.write_at(&*self.next, buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.filter.flush(&*self.next)
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.filter.trim(&*self.next, offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        self.filter.write_zeroes(&*self.next, offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        self.filter.cache(&*self.next, offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        self.filter.extents(&*self.next, offset, len, out)
    }
    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        self.filter.read_chunks(&*self.next, offset, len, out)
    }
    fn describe(&self, offset: u64, len: u64, out: &mut Vec<Named>) -> Result<()> {
        crate::error::check_range(offset, len, self.size())?;
        self.filter.describe(&*self.next, offset, len, out)
    }
    fn caps(&self) -> Caps {
        self.filter.caps(&*self.next)
    }
    fn block_size(&self) -> BlockSize {
        self.filter.block_size(&*self.next)
    }
}

/// Where a client connects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A Unix-socket client, with its credentials when the kernel told them
    /// (`SO_PEERCRED`).
    Unix {
        /// The client process's user id.
        uid: Option<u32>,
        /// The client process's group id.
        gid: Option<u32>,
    },
    /// Anything else (a socket passed in, a test).
    Other,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix {
                uid: Some(u),
                gid: Some(g),
            } => write!(f, "unix:uid={u},gid={g}"),
            Peer::Unix { .. } => write!(f, "unix"),
            Peer::Other => write!(f, "local"),
        }
    }
}

/// The client a device is opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The connection's number (1, 2, … in order of arrival, per server).
    pub id: u64,
    /// Where it connects from.
    pub peer: Peer,
    /// The export name it asked for.
    pub export: String,
}

impl Client {
    /// A client for tests and local use (`-o`): number 0, no address.
    pub fn local() -> Self {
        Client {
            id: 0,
            peer: Peer::Other,
            export: String::new(),
        }
    }
}

/// Makes one layer of a stack, per client or once for all.
pub trait LayerFactory: Send + Sync + fmt::Debug {
    /// The filter's name, as given on the command line.
    fn name(&self) -> &str;
    /// Put this layer over `next` for `client`.
    fn layer(&self, next: Arc<dyn BlockDev>, client: &Client) -> Result<Arc<dyn BlockDev>>;
    /// Whether `client` may connect at all (before anything is opened).
    /// `Err(reason)` refuses it; the reason is told to the client and logged.
    fn admit(&self, client: &Client) -> std::result::Result<Admission, String> {
        let _ = client;
        Ok(Admission::default())
    }
    /// The size the layer has over a device of `next` bytes (for `INFO`,
    /// answered without opening anything).
    fn size(&self, next: u64) -> Result<u64> {
        Ok(next)
    }
    /// The capabilities the layer has over a device with `next`.
    fn caps(&self, next: Caps) -> Caps {
        next
    }
    /// The block-size constraints the layer has over `next`.
    fn block_size(&self, next: BlockSize) -> BlockSize {
        next
    }
}

/// What an admitted client holds while it is connected (a place in a
/// client limit): dropped when its device is.
#[derive(Debug, Default)]
pub struct Admission {
    held: Vec<Box<dyn fmt::Debug + Send + Sync>>,
}

impl Admission {
    /// An admission holding `token` until the client's device is dropped.
    pub fn holding(token: impl fmt::Debug + Send + Sync + 'static) -> Self {
        Admission {
            held: vec![Box::new(token)],
        }
    }
}

/// An [`Export`] with a stack of layers over what it opens; the first
/// factory is the outermost layer.
#[derive(Debug)]
pub struct FilteredExport {
    inner: Arc<dyn Export>,
    stack: Vec<Arc<dyn LayerFactory>>,
    size: u64,
}

impl FilteredExport {
    /// `stack` (outermost first) over every device `inner` opens. Fails
    /// when a layer does not fit the export (a window past its end).
    pub fn new(inner: Arc<dyn Export>, stack: Vec<Arc<dyn LayerFactory>>) -> Result<Self> {
        let mut size = inner.size();
        for f in stack.iter().rev() {
            size = f
                .size(size)
                .map_err(|e| Error::new(e.kind(), format!("filter {}: {e}", f.name())))?;
        }
        Ok(FilteredExport { inner, stack, size })
    }

    /// The layers, outermost first.
    pub fn stack(&self) -> &[Arc<dyn LayerFactory>] {
        &self.stack
    }

    /// The admission of this stack's layers (not of the export beneath,
    /// which its own `open_client` asks for).
    fn own_admission(&self, client: &Client) -> std::result::Result<Admission, String> {
        let mut held = Vec::new();
        for f in &self.stack {
            held.extend(f.admit(client)?.held);
        }
        Ok(Admission { held })
    }
}

/// What a client's admission holds, kept as long as its device is.
#[derive(Debug)]
struct Holding {
    _admission: Admission,
}

impl Filter for Holding {}

impl Export for FilteredExport {
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        let multi = self.inner.caps() & Caps::MULTI_CONN;
        let mut caps = self.inner.caps();
        for f in self.stack.iter().rev() {
            caps = f.caps(caps);
        }
        // A layer keeps MULTI_CONN only if it says so (a per-client cache
        // would break it): the factories pass it through by default.
        caps & (!Caps::MULTI_CONN | multi)
    }
    fn block_size(&self) -> BlockSize {
        let mut b = self.inner.block_size();
        for f in self.stack.iter().rev() {
            b = f.block_size(b);
        }
        b
    }
    fn description(&self) -> String {
        self.inner.description()
    }
    fn open(&self) -> Result<Arc<dyn BlockDev>> {
        self.open_client(&Client::local(), &|| false)
    }
    fn open_for(&self, gone: &dyn Fn() -> bool) -> Result<Arc<dyn BlockDev>> {
        self.open_client(&Client::local(), gone)
    }
    fn admit(&self, client: &Client) -> std::result::Result<Admission, String> {
        let mut own = self.own_admission(client)?;
        own.held.extend(self.inner.admit(client)?.held);
        Ok(own)
    }
    fn open_client(&self, client: &Client, gone: &dyn Fn() -> bool) -> Result<Arc<dyn BlockDev>> {
        let admission = self
            .own_admission(client)
            .map_err(|why| Error::new(ErrorKind::Refused, why))?;
        let mut dev = self.inner.open_client(client, gone)?;
        for f in self.stack.iter().rev() {
            dev = f
                .layer(dev, client)
                .map_err(|e| Error::new(e.kind(), format!("filter {}: {e}", f.name())))?;
        }
        if admission.held.is_empty() {
            return Ok(dev);
        }
        Ok(Arc::new(Layer::new(
            Holding {
                _admission: admission,
            },
            dev,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;
    use crate::region::{Backing, RegionMapBuilder};
    use crate::testing::check_dev;
    use crate::{CowOverlay, OverlayOptions, SharedExport};

    fn base() -> (Arc<dyn BlockDev>, Vec<u8>) {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut b = RegionMapBuilder::new();
        b.push("zeros", 5_000, Backing::Zero).unwrap();
        b.push_bytes("data", data.clone()).unwrap();
        let mut expected = vec![0u8; 5_000];
        expected.extend_from_slice(&data);
        (Arc::new(b.finish()), expected)
    }

    /// Passes everything down; counts reads.
    #[derive(Debug, Default)]
    struct Counting(AtomicU64);

    impl Filter for Counting {
        fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            next.read_at(buf, offset)
        }
    }

    #[test]
    fn stacked_pass_through_layers_are_the_device() {
        let (dev, expected) = base();
        let mut top: Arc<dyn BlockDev> = dev.clone();
        for _ in 0..5 {
            top = Arc::new(Layer::new(Counting::default(), top));
        }
        check_dev(&*top, &expected, &[5_000]);
        assert_eq!(top.caps(), dev.caps());
        assert_eq!(top.block_size(), dev.block_size());
        // Writes pass down too: over an overlay they land.
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        let layered = Layer::new(Counting::default(), ov.clone());
        layered.write_at(b"xyz", 7_000).unwrap();
        let mut buf = [0u8; 3];
        ov.read_at(&mut buf, 7_000).unwrap();
        assert_eq!(&buf, b"xyz");
        assert_eq!(layered.filter().0.load(Ordering::Relaxed), 0);
        layered.read_at(&mut buf, 7_000).unwrap();
        assert_eq!(layered.filter().0.load(Ordering::Relaxed), 1);
    }

    /// Refuses odd-numbered clients; holds a count of admitted ones; its
    /// layer shrinks the disk by 1000 bytes and remembers the client.
    #[derive(Debug, Default)]
    struct EvenOnly(Arc<AtomicUsize>);

    #[derive(Debug)]
    struct Seat(Arc<AtomicUsize>);

    impl Drop for Seat {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[derive(Debug)]
    struct Shrink;

    impl Filter for Shrink {
        fn size(&self, next: &dyn BlockDev) -> u64 {
            next.size() - 1000
        }
        fn read_at(&self, next: &dyn BlockDev, buf: &mut [u8], offset: u64) -> Result<()> {
            crate::check_range(offset, buf.len() as u64, next.size() - 1000)?;
            next.read_at(buf, offset)
        }
    }

    impl LayerFactory for EvenOnly {
        fn name(&self) -> &str {
            "even-only"
        }
        fn layer(&self, next: Arc<dyn BlockDev>, client: &Client) -> Result<Arc<dyn BlockDev>> {
            assert_eq!(client.id % 2, 0, "only admitted clients get a layer");
            Ok(Arc::new(Layer::new(Shrink, next)))
        }
        fn admit(&self, client: &Client) -> std::result::Result<Admission, String> {
            if client.id % 2 == 1 {
                return Err(format!("client {} is odd", client.id));
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Admission::holding(Seat(self.0.clone())))
        }
        fn size(&self, next: u64) -> Result<u64> {
            Ok(next - 1000)
        }
        fn caps(&self, next: Caps) -> Caps {
            next - Caps::EXTENTS
        }
    }

    fn client(id: u64) -> Client {
        Client {
            id,
            peer: Peer::Other,
            export: String::new(),
        }
    }

    #[test]
    fn filtered_export_admits_layers_and_releases_per_client() {
        let (dev, expected) = base();
        let seats = Arc::new(AtomicUsize::new(0));
        let inner: Arc<dyn Export> = Arc::new(SharedExport::new(dev, "test"));
        let ex = FilteredExport::new(inner, vec![Arc::new(EvenOnly(seats.clone()))]).unwrap();
        assert_eq!(ex.size(), expected.len() as u64 - 1000);
        assert!(!ex.caps().contains(Caps::EXTENTS));
        assert!(ex.caps().contains(Caps::MULTI_CONN));
        let err = ex.open_client(&client(1), &|| false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("client 1 is odd"), "{err}");
        assert_eq!(seats.load(Ordering::SeqCst), 0);
        let a = ex.open_client(&client(2), &|| false).unwrap();
        let b = ex.open_client(&client(4), &|| false).unwrap();
        assert_eq!(seats.load(Ordering::SeqCst), 2);
        assert_eq!(a.size(), ex.size());
        check_dev(&*b, &expected[..expected.len() - 1000], &[5_000]);
        drop(a);
        assert_eq!(seats.load(Ordering::SeqCst), 1);
        drop(b);
        assert_eq!(seats.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_layer_that_does_not_fit_is_refused_at_build() {
        let mut b = RegionMapBuilder::new();
        b.push("zeros", 500, Backing::Zero).unwrap();
        let dev: Arc<dyn BlockDev> = Arc::new(b.finish());
        let inner: Arc<dyn Export> = Arc::new(SharedExport::new(dev, "small"));
        #[derive(Debug)]
        struct TooBig;
        impl LayerFactory for TooBig {
            fn name(&self) -> &str {
                "too-big"
            }
            fn layer(&self, next: Arc<dyn BlockDev>, _: &Client) -> Result<Arc<dyn BlockDev>> {
                Ok(next)
            }
            fn size(&self, next: u64) -> Result<u64> {
                next.checked_sub(1000)
                    .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "smaller than 1000"))
            }
        }
        let err = FilteredExport::new(inner, vec![Arc::new(TooBig)]).unwrap_err();
        assert!(err.to_string().contains("too-big"), "{err}");
    }
}
