//! The block-device model of disksynth.
//!
//! - [`BlockDev`]: a thread-safe virtual block device (`&self`, `Send + Sync`):
//!   exact reads, writes, flush, trim, write-zeroes, cache hints, extents,
//!   capability flags and block-size constraints. No NBD types here.
//! - [`Export`]: what an exporter serves; it opens a device per connection
//!   ([`SharedExport`] hands every client the same one).
//! - [`RegionMap`]: a device assembled from regions backed by zeros, bytes,
//!   host-file ranges or other devices; every generator returns one.
//! - [`CowOverlay`]: copy-on-write writes over any device, or a blank sparse disk.
//! - [`SliceDev`]: a window of another device.
//! - [`Filter`] and [`Layer`]: a change to some of a device's answers over the
//!   device beneath (everything else passes through); [`FilteredExport`]
//!   stacks layers per client.
//! - [`testing::check_dev`]: the conformance check every device runs.
//!
//! ```
//! use std::sync::Arc;
//! use synth::{Backing, BlockDev, CowOverlay, OverlayOptions, RegionMapBuilder};
//!
//! let mut b = RegionMapBuilder::new();
//! b.push_bytes("boot sector", vec![0x55u8; 512])?;
//! b.pad_to(4096)?;
//! let map: Arc<dyn BlockDev> = Arc::new(b.finish());
//! let disk = CowOverlay::new(map, OverlayOptions::default())?;
//! disk.write_at(b"hello", 1000)?;
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 1000)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), synth::Error>(())
//! ```

pub mod dev;
pub mod error;
pub mod extent;
pub mod filter;
pub mod host;
pub mod latency;
pub mod op;
pub mod overlay;
pub mod region;
pub mod size;
pub mod testing;
pub mod view;

pub use dev::{
    write_zero_buffers, BlockDev, BlockSize, Caps, Export, Holds, Named, ReadChunk, SharedExport,
    ZeroFlags,
};
pub use error::{check_range, Error, ErrorKind, Result};
pub use extent::{Extent, ExtentKind, ExtentList};
pub use filter::{Admission, Client, Filter, FilteredExport, Layer, LayerFactory, Peer};
pub use host::{FilePool, FileStamp, HostFile, ReadCheck, ScannedFile, DEFAULT_POOL_FDS};
pub use op::Op;
pub use overlay::{CowOverlay, OverlayOptions, OverlayStore, SpaceQuota};
pub use region::{Backing, Region, RegionMap, RegionMapBuilder};
pub use size::Size;
pub use view::{SliceDev, Window};
