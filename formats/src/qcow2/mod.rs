//! A read-only view of the guest disk of a qcow2 image (QEMU's
//! `docs/interop/qcow2.txt`, versions 2 and 3) over any [`synth::BlockDev`]:
//! a host file, an HTTP resource, another view.
//!
//! - [`header`]: the header, its feature bits and what is refused;
//! - [`extensions`]: header extensions (backing format, feature names,
//!   external data file, encryption pointer) and the backing file name;
//! - [`l1`]: the active L1 table, within a memory budget;
//! - [`l2`]: standard, extended (subcluster) and compressed L2 entries;
//! - `compressed`: deflate and zstd clusters;
//! - [`mod@dev`]: [`QcowDev`], L2 tables and compressed clusters in a
//!   shared byte-budgeted single-flight cache, runs of clusters read from
//!   the file in one request.
//!
//! ```
//! use std::sync::Arc;
//! use formats::qcow2::{QcowDev, QcowOptions};
//! use synth::BlockDev;
//!
//! fn first_sector(image: Arc<dyn BlockDev>) -> Result<[u8; 512], Box<dyn std::error::Error>> {
//!     let disk = QcowDev::open(image, &QcowOptions::default())?;
//!     let mut sector = [0u8; 512];
//!     disk.read_at(&mut sector, 0)?;
//!     Ok(sector)
//! }
//! ```

mod compressed;
pub mod dev;
mod error;
pub mod extensions;
pub mod header;
pub mod l1;
pub mod l2;

#[cfg(test)]
mod tests;

pub use dev::{QcowDev, QcowInfo, QcowOptions, QcowStats};
pub use error::QcowError;
pub use header::{Compression, Header, MAGIC};

/// Whether `bytes` (the start of a file) is a qcow2 image.
pub fn is_qcow2(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..4] == MAGIC
}

/// Parse the header and extensions of `first` (the first cluster of an
/// image) and check its features, as [`QcowDev::open`] does before reading
/// any table. For fuzzing.
pub fn parse_first_cluster(first: &[u8]) -> Result<(Header, extensions::Extensions), QcowError> {
    let h = Header::parse(first)?;
    let ext = extensions::parse(&h, first)?;
    h.check_features(&ext)?;
    h.compression()?;
    extensions::backing_file(&h, first)?;
    Ok((h, ext))
}
