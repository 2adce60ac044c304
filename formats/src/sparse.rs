//! Host files in the generators' region maps: the lazily opened
//! [`HostFile`] behind a tree node, and its data ranges, so holes of sparse
//! files stay holes. Ranges come from `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)`,
//! asked only of files whose allocated blocks (`st_blocks`) are fewer than
//! their size, so a tree of ordinary files opens nothing at start-up.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use synth::{Backing, FilePool, HostFile, RegionMapBuilder, ScannedFile};

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// Hole granularity: whole 4 KiB blocks (ext4's block size; whole
/// sectors for ISO 9660 and whole clusters' worth of 512-byte sectors for FAT).
const BLOCK: u64 = 4096;

/// Whether `meta` describes a file that may have holes of a whole block.
pub(crate) fn maybe_sparse(meta: &tree::Meta) -> bool {
    meta.size > BLOCK && meta.blocks.saturating_mul(512) < meta.size
}

/// The lazily opened host file behind a tree node, expected to stay the
/// file the scan saw (device, inode, size, mtime).
pub(crate) fn host_file(pool: &Arc<FilePool>, node: &tree::Node) -> Arc<HostFile> {
    let m = &node.meta;
    HostFile::new(
        pool,
        node.path.clone(),
        ScannedFile {
            dev: m.dev,
            ino: m.ino,
            size: m.size,
            mtime: (m.mtime.secs, i64::from(m.mtime.nanos)),
            ctime: (m.ctime.secs, i64::from(m.ctime.nanos)),
            follow_link: node.followed_link,
        },
    )
}

/// Push a whole host file's contents at `start` (the builder's position):
/// `Host` regions for its data, `Zero` for the holes of a sparse file, so
/// block status, nbdcopy and `-o` skip them. Ends at the last data byte;
/// the caller pads to its own block size.
pub(crate) fn push_host_data(
    b: &mut RegionMapBuilder,
    pool: &Arc<FilePool>,
    node: &tree::Node,
    start: u64,
) -> synth::Result<()> {
    debug_assert_eq!(b.position(), start);
    let host = host_file(pool, node);
    for (off, len) in host_ranges(node) {
        b.pad_to(start + off)?;
        // The backing names the host file; the region name is shared.
        b.push(
            "file data",
            len,
            Backing::Host {
                file: host.clone(),
                offset: off,
            },
        )?;
    }
    Ok(())
}

/// The ranges of a host file to map as data: its data ranges when it may be
/// sparse, else the whole file. If the holes cannot be found the whole file
/// is data (correct, only less sparse) and a warning says so.
fn host_ranges(node: &tree::Node) -> Vec<(u64, u64)> {
    let m = &node.meta;
    if !maybe_sparse(m) {
        return vec![(0, m.size)];
    }
    data_ranges(&node.path, m.size).unwrap_or_else(|e| {
        log::warn!(
            "{}: cannot find its holes ({e}); serving it as all data",
            node.path.display()
        );
        vec![(0, m.size)]
    })
}

/// The data ranges `(offset, len)` of the file at `path` of `size` bytes,
/// widened to whole 4 KiB blocks (the last one ends at `size`), sorted and
/// disjoint. Everything outside them reads as zeros.
pub(crate) fn data_ranges(path: &Path, size: u64) -> io::Result<Vec<(u64, u64)>> {
    // O_NONBLOCK: a FIFO swapped in since the scan must not hang start-up.
    // (What is served is checked again, inode and all, by `HostFile`.)
    let file = File::from(rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?);
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    let mut raw = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(&file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: the whole file is data.
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(&file, SeekFrom::Hole(start))?.min(size);
        raw.push((start, end));
        pos = end;
    }
    Ok(widen(&raw, size))
}

/// Round `[start, end)` ranges out to block boundaries (clamped to
/// `size`) and merge what then touches.
fn widen(raw: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in raw {
        let s = s / BLOCK * BLOCK;
        let e = e.div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
        match out.last_mut() {
            Some((ls, ll)) if *ls + *ll >= s => *ll = e.max(*ls + *ll) - *ls,
            _ => out.push((s, e - s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ranges = &'static [(u64, u64)];

    #[test]
    fn widen_rounds_to_blocks_and_merges() {
        #[rustfmt::skip]
        let cases: &[(Ranges, u64, Ranges)] = &[
            (&[], 10_000, &[]),
            (&[(0, 10_000)], 10_000, &[(0, 10_000)]),
            (&[(100, 200)], 10_000, &[(0, 4096)]),
            (&[(8192, 10_000)], 10_000, &[(8192, 1808)]),
            (&[(0, 10), (4100, 4200)], 10_000, &[(0, 8192)]),
            (&[(0, 10), (8192, 8200)], 1 << 20, &[(0, 4096), (8192, 4096)]),
        ];
        for (raw, size, want) in cases {
            assert_eq!(widen(raw, *size), *want, "{raw:?} of {size}");
        }
    }
}
