//! Data ranges of sparse host files, found with `lseek(SEEK_DATA)` and
//! `lseek(SEEK_HOLE)`. Only files whose allocated blocks (`st_blocks`) are
//! fewer than their size are asked, so a tree of ordinary files opens
//! nothing at start-up.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// ext4 block size: holes are whole absent blocks.
const BLOCK: u64 = 4096;

/// Whether `meta` describes a file that may have holes of a whole block.
pub(crate) fn maybe_sparse(meta: &tree::Meta) -> bool {
    meta.size > BLOCK && meta.blocks.saturating_mul(512) < meta.size
}

/// The ranges of a host file to map as data: its data ranges when it may be
/// sparse, else the whole file. If the holes cannot be found the whole file
/// is data (correct, only less sparse) and a warning says so.
pub(crate) fn host_ranges(node: &tree::Node) -> Vec<(u64, u64)> {
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
    let file = File::open(path)?;
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
