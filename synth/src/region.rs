//! The region map: a device assembled from ordered regions, each backed by
//! zeros, in-memory bytes, a range of a host file, or a range of another
//! device. Every generator returns one; this file holds the only read loop.
//!
//! ```text
//!  0            512          1 MiB                      1 MiB + len(file)      size
//!  | Bytes(mbr) | Zero (pad) | File { file, offset: 0 } | Dev { dev, offset } |
//! ```
//! Lookup is a binary search on region starts. Extents, zero-copy chunks,
//! sparse `-o` output and NBD block status all come from the backings.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use crate::dev::{BlockDev, Caps, Holds, Named, ReadChunk};
use crate::error::{check_range, Error, ErrorKind, Result};
use crate::extent::{ExtentKind, ExtentList};
use crate::host::HostFile;

/// Where the bytes of a region come from.
#[derive(Clone)]
pub enum Backing {
    /// Zeros (reported as a hole).
    Zero,
    /// In-memory bytes; the region's length equals their length.
    Bytes(Bytes),
    /// A host file, starting at `offset` in it.
    File {
        /// The host file (shared; read with `pread`, never seeked).
        file: Arc<File>,
        /// Offset within the file of the region's first byte.
        offset: u64,
    },
    /// A lazily opened host file from a [`FilePool`](crate::FilePool),
    /// starting at `offset` in it; every read checks the file still has the
    /// size and mtime the layout was computed for.
    Host {
        /// The host file.
        file: Arc<HostFile>,
        /// Offset within the file of the region's first byte.
        offset: u64,
    },
    /// Another device, starting at `offset` in it.
    Dev {
        /// The inner device.
        dev: Arc<dyn BlockDev>,
        /// Offset within `dev` of the region's first byte.
        offset: u64,
    },
}

impl Backing {
    /// A host file from its start.
    pub fn file(file: Arc<File>, offset: u64) -> Self {
        Backing::File { file, offset }
    }
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Zero => f.write_str("zero"),
            Backing::Bytes(b) => write!(f, "bytes[{}]", b.len()),
            Backing::File { offset, .. } => write!(f, "file@{offset}"),
            Backing::Host { file, offset } => write!(f, "{}@{offset}", file.path().display()),
            Backing::Dev { dev, offset } => write!(f, "dev@{offset} {dev:?}"),
        }
    }
}

/// One region of a [`RegionMap`].
#[derive(Clone, Debug)]
pub struct Region {
    /// Offset of the first byte in the device.
    pub start: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    /// Where the bytes come from.
    pub backing: Backing,
    /// What the region is, for `--debug regions` style listings.
    pub name: Arc<str>,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A read-only device made of ordered, contiguous regions.
#[derive(Clone)]
pub struct RegionMap {
    regions: Vec<Region>,
    size: u64,
    caps: Caps,
}

impl fmt::Debug for RegionMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RegionMap({} regions, {} bytes)",
            self.regions.len(),
            self.size
        )
    }
}

/// Builds a [`RegionMap`] front to back.
#[derive(Default)]
pub struct RegionMapBuilder {
    regions: Vec<Region>,
    pos: u64,
    recent: Vec<Arc<str>>,
}

impl RegionMapBuilder {
    /// An empty builder at offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current end offset.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Append a region of `len` bytes. Zero-length regions are dropped;
    /// `Bytes` backings must hold exactly `len` bytes.
    pub fn push(&mut self, name: &str, len: u64, backing: Backing) -> Result<&mut Self> {
        if let Backing::Bytes(b) = &backing {
            if b.len() as u64 != len {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "region {name}: {} bytes given for a {len}-byte region",
                        b.len()
                    ),
                ));
            }
        }
        if let Backing::Dev { dev, offset } = &backing {
            check_range(*offset, len, dev.size())
                .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("region {name}: {e}")))?;
        }
        if len == 0 {
            return Ok(self);
        }
        let end = self.pos.checked_add(len).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("region {name}: device size overflows 64 bits"),
            )
        })?;
        let name = self.intern(name);
        self.regions.push(Region {
            start: self.pos,
            len,
            backing,
            name,
        });
        self.pos = end;
        Ok(self)
    }

    /// The shared name for `name`: generators push the same few names
    /// (padding, file data) for every file, and 100,000 files should not
    /// mean 200,000 small allocations.
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.recent.iter().find(|n| &***n == name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        if self.recent.len() == 4 {
            self.recent.remove(0);
        }
        self.recent.push(n.clone());
        n
    }

    /// Append in-memory bytes.
    pub fn push_bytes(&mut self, name: &str, bytes: impl Into<Bytes>) -> Result<&mut Self> {
        let b: Bytes = bytes.into();
        let len = b.len() as u64;
        self.push(name, len, Backing::Bytes(b))
    }

    /// Pad with zeros up to `offset` (no-op if already there or past it).
    pub fn pad_to(&mut self, offset: u64) -> Result<&mut Self> {
        if offset > self.pos {
            let len = offset - self.pos;
            self.push("padding", len, Backing::Zero)?;
        }
        Ok(self)
    }

    /// Pad with zeros up to the next multiple of `alignment`.
    pub fn align(&mut self, alignment: u64) -> Result<&mut Self> {
        if alignment > 1 {
            let target = self.pos.div_ceil(alignment) * alignment;
            self.pad_to(target)?;
        }
        Ok(self)
    }

    /// The finished map.
    pub fn finish(self) -> RegionMap {
        RegionMap::from_regions(self.regions)
    }
}

impl RegionMap {
    /// A map from regions that are already contiguous from offset 0.
    fn from_regions(regions: Vec<Region>) -> Self {
        let size = regions.last().map_or(0, Region::end);
        debug_assert!(regions.windows(2).all(|w| w[0].end() == w[1].start));
        let mut caps = Caps::EXTENTS | Caps::MULTI_CONN;
        for r in &regions {
            if let Backing::Dev { dev, .. } = &r.backing {
                if !dev.caps().contains(Caps::MULTI_CONN) {
                    caps.remove(Caps::MULTI_CONN);
                }
            }
        }
        RegionMap {
            regions,
            size,
            caps,
        }
    }

    /// The regions in order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Index of the region holding `offset` (`offset < size`).
    fn find(&self, offset: u64) -> usize {
        self.regions.partition_point(|r| r.end() <= offset)
    }

    /// Visit the regions overlapping `len` bytes at `offset`, each with the
    /// offset into the region and the length inside it.
    fn for_each<F>(&self, offset: u64, len: u64, mut f: F) -> Result<()>
    where
        F: FnMut(&Region, u64, u64) -> Result<bool>,
    {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let mut pos = offset;
        let mut i = self.find(offset);
        while pos < end {
            let r = &self.regions[i];
            let inner = pos - r.start;
            let n = (r.end() - pos).min(end - pos);
            if !f(r, inner, n)? {
                break;
            }
            pos += n;
            i += 1;
        }
        Ok(())
    }
}

/// `pread` all of `dst` from a host file; a short read means the file
/// shrank under us, which is reported as the file having changed.
fn read_host(host: &HostFile, f: &std::fs::File, dst: &mut [u8], at: u64) -> Result<()> {
    let mut done = 0;
    while done < dst.len() {
        match f.read_at(&mut dst[done..], at + done as u64) {
            Ok(0) => return Err(host.changed(format!("it ended before byte {}", at + done as u64))),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::io(
                    format!("reading host file {}", host.path().display()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

impl BlockDev for RegionMap {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        self.for_each(offset, buf.len() as u64, |r, inner, n| {
            let dst = &mut buf[done..done + n as usize];
            match &r.backing {
                Backing::Zero => dst.fill(0),
                Backing::Bytes(b) => dst.copy_from_slice(&b[inner as usize..(inner + n) as usize]),
                Backing::File { file, offset: base } => {
                    file.read_exact_at(dst, base + inner).map_err(|e| {
                        Error::io(format!("reading region {}", r.name), e).at(r.start + inner)
                    })?;
                }
                Backing::Host { file, offset: base } => {
                    let (f, check) = file.open_for_read().map_err(|e| e.at(r.start + inner))?;
                    read_host(file, &f, dst, base + inner).map_err(|e| e.at(r.start + inner))?;
                    check.verify(&f).map_err(|e| e.at(r.start + inner))?;
                }
                Backing::Dev { dev, offset: base } => dev.read_at(dst, base + inner)?,
            }
            done += n as usize;
            Ok(true)
        })
    }

    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        self.for_each(offset, len, |r, inner, n| {
            match &r.backing {
                Backing::Zero => out.push(n, ExtentKind::Hole),
                Backing::Bytes(_) | Backing::File { .. } | Backing::Host { .. } => {
                    out.push(n, ExtentKind::Data)
                }
                Backing::Dev { dev, offset: base } => {
                    // The inner device may answer short; ask until covered.
                    let mut sub = ExtentList::new(base + inner);
                    while sub.covered() < n && !out.is_full() && !sub.is_full() {
                        let at = sub.end();
                        let before = sub.covered();
                        dev.extents(at, n - sub.covered(), &mut sub)?;
                        if sub.covered() == before {
                            sub.push(n - before, ExtentKind::Data);
                        }
                    }
                    sub.truncate_to(base + inner + n);
                    for e in sub.as_slice() {
                        out.push(e.len, e.kind);
                    }
                    if sub.covered() < n {
                        // A partial answer: what follows must not be
                        // appended as if it were contiguous.
                        out.close();
                    }
                }
            }
            Ok(!out.is_full())
        })
    }

    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        self.for_each(offset, len, |r, inner, n| {
            match &r.backing {
                Backing::Zero => out.push(ReadChunk::Zero(n)),
                Backing::Bytes(b) => out.push(ReadChunk::Bytes(
                    b.slice(inner as usize..(inner + n) as usize),
                )),
                Backing::File { file, offset: base } => out.push(ReadChunk::File {
                    file: file.clone(),
                    offset: base + inner,
                    len: n,
                    check: None,
                }),
                Backing::Host { file, offset: base } => {
                    let (f, check) = file.open_for_read().map_err(|e| e.at(r.start + inner))?;
                    out.push(ReadChunk::File {
                        file: f,
                        offset: base + inner,
                        len: n,
                        check: Some(check),
                    })
                }
                Backing::Dev { dev, offset: base } => {
                    if !dev.read_chunks(base + inner, n, out)? {
                        let mut buf = vec![0u8; n as usize];
                        dev.read_at(&mut buf, base + inner)?;
                        out.push(ReadChunk::Bytes(buf.into()));
                    }
                }
            }
            Ok(true)
        })?;
        Ok(true)
    }

    /// Each region by its name (a host file by its path); an inner
    /// device's own pieces, moved to this map's offsets and marked as
    /// lying within the region (a partition, a component).
    fn describe(&self, offset: u64, len: u64, out: &mut Vec<Named>) -> Result<()> {
        self.for_each(offset, len, |r, inner, n| {
            let at = r.start + inner;
            let holds = match &r.backing {
                Backing::Zero => Holds::Free(r.name.clone()),
                Backing::Bytes(_) | Backing::File { .. } => Holds::Structure(r.name.clone()),
                Backing::Host { file, offset: base } => Holds::File {
                    path: file.path().into(),
                    offset: base + inner,
                },
                Backing::Dev { dev, offset: base } => {
                    let mark = out.len();
                    dev.describe(base + inner, n, out)?;
                    for piece in &mut out[mark..] {
                        piece.offset = (piece.offset.saturating_sub(base + inner) + at).min(at + n);
                        piece.within.get_or_insert_with(|| r.name.clone());
                    }
                    return Ok(true);
                }
            };
            out.push(Named {
                offset: at,
                len: n,
                holds,
                within: None,
            });
            Ok(true)
        })
    }

    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        self.for_each(offset, len, |r, inner, n| {
            if let Backing::Dev { dev, offset: base } = &r.backing {
                dev.cache(base + inner, n)?;
            }
            Ok(true)
        })
    }

    fn caps(&self) -> Caps {
        self.caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_dev;

    fn sample() -> (RegionMap, Vec<u8>) {
        let mut tmp = tempfile::tempfile().unwrap();
        let file_bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8 + 1).collect();
        std::io::Write::write_all(&mut tmp, &file_bytes).unwrap();
        let file = Arc::new(tmp);
        let inner: Arc<dyn BlockDev> = {
            let mut b = RegionMapBuilder::new();
            b.push_bytes("inner", vec![9u8; 300]).unwrap();
            b.pad_to(700).unwrap();
            Arc::new(b.finish())
        };
        let mut b = RegionMapBuilder::new();
        b.push_bytes("header", vec![0xAAu8; 512]).unwrap();
        b.align(1024).unwrap();
        b.push("file", 4000, Backing::file(file, 1000)).unwrap();
        b.push(
            "dev",
            600,
            Backing::Dev {
                dev: inner,
                offset: 100,
            },
        )
        .unwrap();
        b.push("tail", 3, Backing::Zero).unwrap();
        let map = b.finish();

        let mut expected = vec![0xAAu8; 512];
        expected.resize(1024, 0);
        expected.extend_from_slice(&file_bytes[1000..5000]);
        expected.extend_from_slice(&[9u8; 200]);
        expected.extend_from_slice(&[0u8; 400]);
        expected.extend_from_slice(&[0u8; 3]);
        (map, expected)
    }

    #[test]
    fn region_map_passes_conformance() {
        let (map, expected) = sample();
        assert_eq!(map.size(), expected.len() as u64);
        let bounds: Vec<u64> = map.regions().iter().map(|r| r.start).collect();
        check_dev(&map, &expected, &bounds);
    }

    #[test]
    fn extents_follow_backings() {
        let (map, _) = sample();
        let mut out = ExtentList::new(0);
        map.extents(0, map.size(), &mut out).unwrap();
        let kinds: Vec<(u64, ExtentKind)> = out.iter_offsets().map(|(o, e)| (o, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, ExtentKind::Data),
                (512, ExtentKind::Hole),
                (1024, ExtentKind::Data),
                (5224, ExtentKind::Hole)
            ]
        );
    }

    #[test]
    fn describe_names_regions_and_inner_devices_at_map_offsets() {
        let (map, _) = sample();
        let mut out = Vec::new();
        map.describe(0, map.size(), &mut out).unwrap();
        let pieces: Vec<(u64, u64, String, Option<&str>)> = out
            .iter()
            .map(|p| {
                let what = match &p.holds {
                    Holds::Structure(n) => format!("structure {n}"),
                    Holds::Free(n) => format!("free {n}"),
                    Holds::File { path, offset } => format!("file {} @{offset}", path.display()),
                    Holds::Unknown => "unknown".into(),
                };
                (p.offset, p.len, what, p.within.as_deref())
            })
            .collect();
        assert_eq!(
            pieces,
            vec![
                (0, 512, "structure header".into(), None),
                (512, 512, "free padding".into(), None),
                (1024, 4000, "structure file".into(), None),
                // The inner map from its byte 100: 200 bytes of "inner",
                // then its padding, at this map's offsets.
                (5024, 200, "structure inner".into(), Some("dev")),
                (5224, 400, "free padding".into(), Some("dev")),
                (5624, 3, "free tail".into(), None),
            ]
        );
        // A range inside one region is that region's part only.
        let mut out = Vec::new();
        map.describe(5100, 200, &mut out).unwrap();
        let spans: Vec<(u64, u64)> = out.iter().map(|p| (p.offset, p.len)).collect();
        assert_eq!(spans, vec![(5100, 124), (5224, 76)]);
        // Past the end: out of bounds, as a read.
        let err = map
            .describe(map.size() - 1, 2, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    }

    #[test]
    fn a_window_describes_its_part_at_its_own_offsets() {
        let (map, _) = sample();
        let map: Arc<dyn BlockDev> = Arc::new(map);
        // Bytes 1000..1100 of the map: the end of the padding, the file's start.
        let w = crate::view::SliceDev::window(map, 1000, 100).unwrap();
        let mut out = Vec::new();
        w.describe(0, 100, &mut out).unwrap();
        let spans: Vec<(u64, u64)> = out.iter().map(|p| (p.offset, p.len)).collect();
        assert_eq!(spans, vec![(0, 24), (24, 76)]);
        assert_eq!(out[1].holds, Holds::Structure("file".into()));
        assert!(w.describe(50, 51, &mut out).is_err());
    }

    #[test]
    fn bytes_length_mismatch_is_rejected() {
        let mut b = RegionMapBuilder::new();
        let err = b
            .push("x", 10, Backing::Bytes(Bytes::from_static(b"abc")))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn read_past_end_is_out_of_bounds() {
        let (map, _) = sample();
        let mut buf = [0u8; 8];
        let err = map.read_at(&mut buf, map.size() - 4).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    }
}
