//! Expected data and extent maps.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use crate::process::run_ok;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day number since 1970-01-01 (the inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Bytes `[offset, offset + len)` of a `pattern` disk: every 8-byte big-endian word holds its own
/// byte offset (the same layout as `nbdkit pattern`).
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    let start = offset & !7;
    let end = offset + len as u64;
    let mut out = Vec::with_capacity(len + 16);
    let mut word = start;
    while word < end {
        out.extend_from_slice(&word.to_be_bytes());
        word += 8;
    }
    let skip = (offset - start) as usize;
    out.drain(..skip);
    out.truncate(len);
    out
}

/// Deterministic pseudo-random bytes (xorshift64*), distinct per `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Makes a sparse file of `size` bytes with `truncate`, then writes random data with `dd` at each
/// `(offset, len)` (both multiples of 64 KiB) without truncating.
pub fn write_sparse_file(path: &Path, size: u64, data: &[(u64, u64)]) {
    run_ok(
        Command::new("truncate")
            .arg("-s")
            .arg(size.to_string())
            .arg(path),
    );
    for &(offset, len) in data {
        const BS: u64 = 64 * 1024;
        assert!(
            offset % BS == 0 && len % BS == 0,
            "sparse layout must be 64K aligned"
        );
        run_ok(
            Command::new("dd")
                .arg("if=/dev/urandom")
                .arg(format!("of={}", path.display()))
                .arg(format!("bs={BS}"))
                .arg(format!("seek={}", offset / BS))
                .arg(format!("count={}", len / BS))
                .args(["conv=notrunc", "status=none"]),
        );
    }
}

/// One extent of a block-status map: `kind` is the NBD base:allocation flags
/// (0 = data, 1 = hole, 2 = zero, 3 = hole+zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// base:allocation flags.
    pub kind: u32,
}

impl Extent {
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Parses `nbdinfo --map` output (`offset length type description` per line).
pub fn parse_map(text: &str) -> Vec<Extent> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let mut num = |what: &str| -> u64 {
                f.next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad nbdinfo --map line (no {what}): {l:?}"))
            };
            Extent {
                offset: num("offset"),
                len: num("length"),
                kind: num("type") as u32,
            }
        })
        .collect()
}

/// Merges adjacent extents of the same kind; panics if the extents are not contiguous.
pub fn coalesce(extents: &[Extent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for e in extents.iter().copied().filter(|e| e.len > 0) {
        match out.last_mut() {
            Some(last) => {
                assert_eq!(last.end(), e.offset, "extents not contiguous: {extents:?}");
                if last.kind == e.kind {
                    last.len += e.len;
                } else {
                    out.push(e);
                }
            }
            None => out.push(e),
        }
    }
    out
}

/// The data/hole layout of a host file per `lseek(SEEK_DATA/SEEK_HOLE)`: data is kind 0,
/// holes are kind 3.
pub fn seek_map(path: &Path) -> Vec<Extent> {
    use rustix::fs::{seek, SeekFrom};
    let file = File::open(path).expect("opening file for seek_map");
    let size = file.metadata().expect("stat").len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = seek(&file, SeekFrom::Data(pos)).unwrap_or(size).min(size);
        if data > pos {
            out.push(Extent {
                offset: pos,
                len: data - pos,
                kind: 3,
            });
        }
        if data >= size {
            break;
        }
        let hole = seek(&file, SeekFrom::Hole(data)).unwrap_or(size).min(size);
        out.push(Extent {
            offset: data,
            len: hole - data,
            kind: 0,
        });
        pos = hole;
    }
    coalesce(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_words_hold_their_offsets() {
        let p = pattern(8, 16);
        assert_eq!(p, [0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 16]);
    }

    #[test]
    fn pattern_unaligned_start_matches_aligned_slice() {
        assert_eq!(pattern(4093, 100), pattern(4088, 105)[5..]);
    }

    #[test]
    fn parse_map_reads_nbdinfo_lines() {
        let text = "         0     1048576    3  hole,zero\n   1048576     1048576    0  data\n";
        let map = parse_map(text);
        assert_eq!(
            map,
            [
                Extent {
                    offset: 0,
                    len: 1 << 20,
                    kind: 3
                },
                Extent {
                    offset: 1 << 20,
                    len: 1 << 20,
                    kind: 0
                },
            ]
        );
    }

    #[test]
    fn coalesce_merges_same_kind_neighbours() {
        let map = [
            Extent {
                offset: 0,
                len: 10,
                kind: 3,
            },
            Extent {
                offset: 10,
                len: 5,
                kind: 3,
            },
            Extent {
                offset: 15,
                len: 5,
                kind: 0,
            },
        ];
        assert_eq!(
            coalesce(&map),
            [
                Extent {
                    offset: 0,
                    len: 15,
                    kind: 3
                },
                Extent {
                    offset: 15,
                    len: 5,
                    kind: 0
                }
            ]
        );
    }
}
